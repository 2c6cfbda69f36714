-- Queries of the SLA engine: the clock table the log consumer keeps (sla_issues, sla_clocks,
-- sla_vendor_changes), the recompute queue, and the scanner's claims on both.

-- advance_issues --
-- Rows move forward only: a state older than the one stored is ignored
INSERT INTO sla_issues (issue_id, vendor_id, version)
SELECT * FROM unnest($1::text[], $2::text[], $3::int[])
ORDER BY 1
ON CONFLICT (issue_id) DO UPDATE
    SET version = EXCLUDED.version, vendor_id = EXCLUDED.vendor_id, updated_at = now()
    WHERE sla_issues.version < EXCLUDED.version
RETURNING issue_id

-- delete_ended_clocks --
-- Drop the clocks of these issues that their newest state no longer has
DELETE FROM sla_clocks AS c
WHERE c.issue_id = ANY($1::text[])
  AND NOT EXISTS (
      SELECT 1 FROM unnest($2::text[], $3::text[]) AS k(issue_id, clock_id)
      WHERE k.issue_id = c.issue_id AND k.clock_id = c.clock_id
  )

-- upsert_clocks --
-- Store clock rows; a claimed row keeps its lease while its next action is unchanged
-- (so an unrelated event, a comment or an assignment, does not hand the same clock to a second
-- worker).
INSERT INTO sla_clocks (
    issue_id, clock_id, vendor_id, kind, tier, state, due_at, fire_at, threshold, next_fire_at
)
SELECT k.*, k.fire_at
FROM unnest(
    $1::text[], $2::text[], $3::text[], $4::text[], $5::int[], $6::text[],
    $7::timestamptz[], $8::timestamptz[], $9::float8[]
) AS k(issue_id, clock_id, vendor_id, kind, tier, state, due_at, fire_at, threshold)
ORDER BY 1, 2
ON CONFLICT (issue_id, clock_id) DO UPDATE SET
    vendor_id = EXCLUDED.vendor_id,
    kind = EXCLUDED.kind,
    tier = EXCLUDED.tier,
    state = EXCLUDED.state,
    due_at = EXCLUDED.due_at,
    fire_at = EXCLUDED.fire_at,
    threshold = EXCLUDED.threshold,
    next_fire_at = CASE
        WHEN sla_clocks.fire_at IS NOT DISTINCT FROM EXCLUDED.fire_at
         AND sla_clocks.threshold IS NOT DISTINCT FROM EXCLUDED.threshold
        THEN sla_clocks.next_fire_at ELSE EXCLUDED.fire_at END,
    attempts = CASE
        WHEN sla_clocks.fire_at IS NOT DISTINCT FROM EXCLUDED.fire_at
         AND sla_clocks.threshold IS NOT DISTINCT FROM EXCLUDED.threshold
        THEN sla_clocks.attempts ELSE 0 END

-- wake_scanners --
-- Tell the scanners (LISTEN $1) that a clock may fall due sooner than they sleep
SELECT pg_notify($1, '')

-- known_vendors --
-- Only for log records published before events carried `vendorid` (ADR 0009): the vendor
-- this consumer stored when it read the issue's `opened` event.
SELECT issue_id, vendor_id FROM sla_issues WHERE issue_id = ANY($1::text[])

-- queue_policy_recompute --
-- Queue every issue with a clock for recompute under policy version $1
INSERT INTO sla_recompute (issue_id, policy_version, next_attempt_at)
SELECT DISTINCT issue_id, $1::int, $2::timestamptz FROM sla_clocks ORDER BY 1
ON CONFLICT (issue_id) DO UPDATE
    SET policy_version = GREATEST(sla_recompute.policy_version, EXCLUDED.policy_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0

-- record_vendor_changes --
-- Remember the newest version and time of each changed vendor
INSERT INTO sla_vendor_changes (vendor_id, vendor_version, changed_at)
SELECT * FROM unnest($1::text[], $2::int[], $3::timestamptz[]) ORDER BY 1
ON CONFLICT (vendor_id) DO UPDATE
    SET vendor_version = EXCLUDED.vendor_version, changed_at = EXCLUDED.changed_at
    WHERE sla_vendor_changes.vendor_version < EXCLUDED.vendor_version

-- queue_vendor_recompute --
-- Queue the changed vendors' issues with a running clock that this consumer has stored
-- Paused clocks have no deadline; resuming sets it on the new calendar. Issues whose events
-- it has not read yet (they may wait on another partition) are queued when they arrive
-- (queue_late_arrivals).
INSERT INTO sla_recompute (issue_id, policy_version, vendor_version, next_attempt_at)
SELECT DISTINCT ON (k.issue_id) k.issue_id, 0, changed.vendor_version, changed.at
FROM unnest($1::text[], $2::int[], $3::timestamptz[]) AS changed(vendor_id, vendor_version, at)
JOIN sla_clocks AS k ON k.vendor_id = changed.vendor_id AND k.state = 'running'
ORDER BY k.issue_id
ON CONFLICT (issue_id) DO UPDATE
    SET vendor_version = GREATEST(sla_recompute.vendor_version, EXCLUDED.vendor_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0

-- queue_late_arrivals --
-- Queue issues whose event was recorded before (or within $4 after) an applied vendor change
-- Their deadlines may be on the old calendar.
INSERT INTO sla_recompute (issue_id, policy_version, vendor_version, next_attempt_at)
SELECT DISTINCT ON (a.issue_id) a.issue_id, 0, v.vendor_version, v.changed_at
FROM unnest($1::text[], $2::text[], $3::timestamptz[]) AS a(issue_id, vendor_id, recorded_at)
JOIN sla_vendor_changes AS v
  ON v.vendor_id = a.vendor_id AND a.recorded_at <= v.changed_at + $4::interval
WHERE EXISTS (
    SELECT 1 FROM sla_clocks AS k WHERE k.issue_id = a.issue_id AND k.state = 'running'
)
ORDER BY a.issue_id
ON CONFLICT (issue_id) DO UPDATE
    SET vendor_version = GREATEST(sla_recompute.vendor_version, EXCLUDED.vendor_version),
        next_attempt_at = EXCLUDED.next_attempt_at, attempts = 0

-- claim_due_clocks --
-- Lease up to $2 clocks due by $1; the lease doubles per claim that did not move the clock on
-- The lease grows up to $4 seconds. The claimed rows are found again by ctid (stable while they
-- are locked), which is a TID scan: joined by key instead, the planner hashes the whole table
-- on every claim.
UPDATE sla_clocks AS c
SET next_fire_at = $1 + make_interval(secs => least($3::float8 * power(2, c.attempts), $4)),
    attempts = c.attempts + 1
WHERE c.ctid = ANY(ARRAY(
    SELECT ctid FROM sla_clocks
    WHERE next_fire_at <= $1
    ORDER BY next_fire_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING c.issue_id, c.clock_id, c.fire_at, c.threshold, c.due_at, c.attempts

-- claim_recompute --
-- Lease up to $2 queued recomputes due by $1, with the vendor this consumer stored
UPDATE sla_recompute AS r
SET next_attempt_at = $1 + make_interval(secs => least($3::float8 * power(2, r.attempts), $4)),
    attempts = r.attempts + 1
WHERE r.ctid = ANY(ARRAY(
    SELECT ctid FROM sla_recompute
    WHERE next_attempt_at <= $1
    ORDER BY next_attempt_at
    LIMIT $2
    FOR UPDATE SKIP LOCKED
))
RETURNING r.issue_id, r.policy_version, r.vendor_version,
    (SELECT i.vendor_id FROM sla_issues AS i WHERE i.issue_id = r.issue_id) AS vendor_id

-- finish_recompute --
-- Only the versions recomputed: a newer policy or vendor change queued meanwhile stays queued
DELETE FROM sla_recompute AS r
USING unnest($1::text[], $2::int[], $3::int[]) AS done(issue_id, policy_version, vendor_version)
WHERE r.issue_id = done.issue_id
  AND r.policy_version <= done.policy_version
  AND r.vendor_version <= done.vendor_version

-- forget_issue_clocks --
-- Drop the clocks of an issue that is gone
DELETE FROM sla_clocks WHERE issue_id = $1

-- nearest_fire_time --
-- When the next clock or queued recompute falls due
SELECT least(
    (SELECT min(next_fire_at) FROM sla_clocks WHERE next_fire_at IS NOT NULL),
    (SELECT min(next_attempt_at) FROM sla_recompute)
)
