-- Queries of the projector: the read model's API queries, the projector's locks, and a
-- replay's bookkeeping. Statements that name a schema or table chosen at run time (the
-- read-model writes in tables.py, a replay's clones and swaps in replay.py) stay in code.

-- list_issues --
-- Each filter is NULL when absent; keyset pagination on list_seq (the projector's commit order)
SELECT issue_id, list_seq, vendor_id, title, category, priority, status, tier, assignee,
       external_ref, version, created_at, updated_at, breach_count, escalation_count,
       sla_breached, next_due_at, clocks::text
FROM read.issues
WHERE list_seq > $1
  AND ($2::text[] IS NULL OR vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR status = ANY($3::text[]))
  AND ($4::int[] IS NULL OR tier = ANY($4::int[]))
  AND ($5::text[] IS NULL OR priority = ANY($5::text[]))
  AND ($6::text[] IS NULL OR category = ANY($6::text[]))
  AND ($7::bool IS NULL OR (breach_count > 0) = $7::bool)
ORDER BY list_seq
LIMIT $8

-- scorecard_totals --
-- A vendor's summed daily figures for the days $2 to $3
SELECT coalesce(sum(opened), 0)::int AS opened,
       coalesce(sum(acknowledged), 0)::int AS acknowledged,
       coalesce(sum(resolved), 0)::int AS resolved,
       coalesce(sum(reopened), 0)::int AS reopened,
       coalesce(sum(closed), 0)::int AS closed,
       coalesce(sum(escalations), 0)::int AS escalations,
       coalesce(sum(automatic_escalations), 0)::int AS automatic_escalations,
       coalesce(sum(warnings), 0)::int AS warnings,
       coalesce(sum(breaches), 0)::int AS breaches,
       coalesce(sum(clocks_met), 0)::int AS clocks_met,
       coalesce(sum(ack_seconds_total), 0)::float8 AS ack_seconds_total,
       coalesce(sum(resolve_seconds_total), 0)::float8 AS resolve_seconds_total
FROM read.vendor_daily
WHERE vendor_id = $1 AND day BETWEEN $2 AND $3

-- scorecard_days --
-- A vendor's scorecard day by day, for the days $2 to $3
SELECT day, opened, acknowledged, resolved, reopened, escalations, breaches, clocks_met,
       open_at_end_of_day, mtta_seconds, mttr_seconds, sla_compliance
FROM read.vendor_scorecard_daily
WHERE vendor_id = $1 AND day BETWEEN $2 AND $3
ORDER BY day

-- breaches_by_tier --
-- A vendor's breached clocks between $2 and $3, by tier and kind
SELECT tier, kind, count(*)::int AS count
FROM read.sla_clocks
WHERE vendor_id = $1 AND outcome = 'breached' AND outcome_at >= $2 AND outcome_at < $3
GROUP BY tier, kind
ORDER BY tier, kind

-- escalations_by_tier --
-- A vendor's upward escalations between $2 and $3, by the tier they reached
SELECT to_tier, count(*)::int AS count
FROM read.escalations
WHERE vendor_id = $1 AND direction = 'up' AND escalated_at >= $2 AND escalated_at < $3
GROUP BY to_tier
ORDER BY to_tier

-- open_issues_now --
-- How many of a vendor's issues are in one of the statuses $2
SELECT count(*)::int FROM read.issues WHERE vendor_id = $1 AND status = ANY($2::text[])

-- lock_list_seq --
-- Batches that add issues take this lock until commit, so list_seq order is commit order
SELECT pg_advisory_xact_lock($1)

-- async_commit --
-- A replay's batches need not wait for their commit to reach the disk
SET LOCAL synchronous_commit = off

-- try_enter_gate --
-- The shared side of the swap lock, and the generation of the read model it guards
SELECT pg_try_advisory_lock_shared($1) AS entered,
       (SELECT coalesce(max(id), 0) FROM read.rebuilds) AS generation

-- leave_gate --
-- Let a waiting swap go ahead
SELECT pg_advisory_unlock_shared($1)

-- stored_offsets --
-- A consumer's stored offsets in this log (offsets in a lost log do not count)
SELECT partition, next_offset FROM public.consumer_offsets
WHERE consumer = $1 AND topic = $2 AND log_identity = $3

-- try_run_lock --
-- Only one replay runs at a time
SELECT pg_try_advisory_lock($1)

-- run_unlock --
-- A replay is done (or gave up)
SELECT pg_advisory_unlock($1)

-- take_swap_lock --
-- The exclusive side of the swap lock: the projector waits at its gate while the swap runs
SELECT pg_advisory_xact_lock($1)

-- forget_offsets --
-- Drop a consumer's stored offsets
DELETE FROM public.consumer_offsets WHERE consumer = $1

-- forget_streams --
-- Drop a consumer's applied versions per stream
DELETE FROM public.consumer_stream_versions WHERE consumer = $1

-- forget_topic_offsets --
-- Drop a consumer's stored offsets on one topic
DELETE FROM public.consumer_offsets WHERE consumer = $1 AND topic = $2

-- take_over_offsets --
-- Consumer $1 continues from where consumer $2 got to on topic $3
UPDATE public.consumer_offsets SET consumer = $1 WHERE consumer = $2 AND topic = $3

-- record_replay_streams --
-- The last version per stream a rebuild process applied, written once, when it flushes
INSERT INTO public.consumer_stream_versions (consumer, stream_id, version)
SELECT $1, s, v FROM unnest($2::text[], $3::int[]) AS t(s, v) ORDER BY s
ON CONFLICT (consumer, stream_id) DO UPDATE SET version = EXCLUDED.version

-- take_over_streams --
-- Consumer $1 takes over the applied versions per stream of consumer $2
UPDATE public.consumer_stream_versions SET consumer = $1 WHERE consumer = $2

-- copy_grants --
-- Grants of a live table ($1), as statements re-granting them on its copy in schema $2
SELECT format('GRANT %s ON %I.%I TO %s', a.privilege_type, $2::text, $3::text,
              CASE WHEN a.grantee = 0 THEN 'PUBLIC' ELSE quote_ident(r.rolname) END)
    AS statement
FROM pg_class AS c
CROSS JOIN LATERAL aclexplode(c.relacl) AS a
LEFT JOIN pg_roles AS r ON r.oid = a.grantee
WHERE c.oid = to_regclass($1) AND a.grantee <> c.relowner

-- catalog_search_path --
-- With only pg_catalog on the path, definitions read from the catalog come fully qualified
SET LOCAL search_path = pg_catalog

-- reset_search_path --
-- Back to the connection's search_path
RESET search_path

-- view_definitions --
-- Qualified definitions of the views in `read` (read with search_path = pg_catalog)
SELECT quote_ident(c.relname) AS name, pg_get_viewdef(c.oid, true) AS definition
FROM pg_class AS c JOIN pg_namespace AS n ON n.oid = c.relnamespace
WHERE n.nspname = 'read' AND c.relkind = 'v'
ORDER BY c.oid

-- table_keys --
-- The live table's keys, as statements creating them (same names) on its copy in schema $2
-- Read with search_path = pg_catalog so that every name comes qualified.
SELECT format('ALTER TABLE %I.%I ADD CONSTRAINT %I %s', $2::text, c.relname, k.conname,
              pg_get_constraintdef(k.oid)) AS statement
FROM pg_constraint AS k JOIN pg_class AS c ON c.oid = k.conrelid
WHERE k.conrelid = to_regclass($1) AND k.contype IN ('p', 'u')

-- table_indexes --
-- The live table's other indexes, as their definitions (read with search_path = pg_catalog)
SELECT pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index AS i
WHERE i.indrelid = to_regclass($1)
  AND NOT EXISTS (SELECT 1 FROM pg_constraint AS k WHERE k.conindid = i.indexrelid)

-- carry_list_seq --
-- Issues keep the list position they had, so clients' cursors stay valid across a replay
UPDATE read_replay.issues AS r SET list_seq = l.list_seq
FROM read.issues AS l WHERE l.issue_id = r.issue_id

-- number_new_issues --
-- Issues only the rebuild knows of go after every position handed out so far, in rebuild order
WITH fresh AS (
    SELECT r.issue_id, row_number() OVER (ORDER BY r.list_seq) AS n
    FROM read_replay.issues AS r
    WHERE NOT EXISTS (SELECT 1 FROM read.issues AS l WHERE l.issue_id = r.issue_id)
), base AS MATERIALIZED (
    SELECT nextval('read.issue_list_seq') AS b, (SELECT count(*) FROM fresh) AS n
), reserved AS MATERIALIZED (
    SELECT b, setval('read.issue_list_seq', b + n) AS upto FROM base
)
UPDATE read_replay.issues AS r SET list_seq = reserved.b + fresh.n
FROM fresh, reserved WHERE r.issue_id = fresh.issue_id

-- record_rebuild --
-- Record a finished replay; its id is the read model's new generation
INSERT INTO read.rebuilds (projections, started_at, finished_at, events)
VALUES ($1::text[], to_timestamp($2), now(), $3) RETURNING id

-- store_share_size --
-- How many events the store holds of one rebuild process's share of the streams ($2 of $1)
SELECT count(*) FROM public.events WHERE (hashtext(stream_id) & 2147483647) % $1 = $2

-- store_share_events --
-- One rebuild process's share of the streams in position order, columns as LogEvent's fields
SELECT event_id::text, stream_id, version, type, time, data, traceparent, vendor_id,
       inbound_source::text, inbound_delivery
FROM public.events WHERE (hashtext(stream_id) & 2147483647) % $1 = $2
ORDER BY position

-- events_ahead_of --
-- Events consumer $1 applied and consumer $2 has not, in position order
SELECT e.event_id::text, e.stream_id, e.version, e.type, e.time, e.data, e.traceparent,
       e.vendor_id, e.inbound_source::text, e.inbound_delivery
FROM public.consumer_stream_versions AS r
JOIN public.events AS e ON e.stream_id = r.stream_id AND e.version <= r.version
LEFT JOIN public.consumer_stream_versions AS l ON l.consumer = $2 AND l.stream_id = r.stream_id
WHERE r.consumer = $1 AND e.version > coalesce(l.version, 0)
ORDER BY e.position
