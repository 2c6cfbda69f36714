-- Queries of the governance board (/board/): the overview, vendor charts and the monthly
-- report, all from the read models. Filters are NULL when absent; $2..$4 are always the
-- vendor, category and priority filters of the overview.

-- open_by_tier_status --
-- Open issues counted by tier and status, within the filters
SELECT tier, status, count(*)::int AS count
FROM read.issues
WHERE status = ANY($1::text[])
  AND ($2::text[] IS NULL OR vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR category = ANY($3::text[]))
  AND ($4::text[] IS NULL OR priority = ANY($4::text[]))
GROUP BY tier, status
ORDER BY tier, status

-- clocks_at_risk --
-- Running clocks (and breached clocks of the current tier of open issues), least time left first
SELECT c.issue_id, c.vendor_id, i.title, i.status, i.priority, c.tier, c.kind, c.state,
       coalesce(c.due_at, c.breached_at) AS due_at, c.started_at, c.target_seconds,
       c.warned
FROM read.sla_clocks AS c
JOIN read.issues AS i USING (issue_id)
WHERE i.status = ANY($1::text[])
  AND ($2::text[] IS NULL OR i.vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR i.category = ANY($3::text[]))
  AND ($4::text[] IS NULL OR i.priority = ANY($4::text[]))
  AND ((c.state = 'running' AND c.due_at IS NOT NULL)
       OR (c.state = 'breached' AND c.tier = i.tier AND c.outcome_at >= i.cycle_started_at))
ORDER BY coalesce(c.due_at, c.breached_at), c.issue_id, c.kind
LIMIT $5

-- breaches_since --
-- SLA breaches recorded since $1, newest first, within the filters
SELECT t.issue_id, t.vendor_id, i.title, i.priority, i.category, t.tier,
       t.data->>'kind' AS kind, t.occurred_at
FROM read.issue_timeline AS t
JOIN read.issues AS i USING (issue_id)
WHERE t.event_type = 'sla_breached' AND t.occurred_at >= $1
  AND ($2::text[] IS NULL OR i.vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR i.category = ANY($3::text[]))
  AND ($4::text[] IS NULL OR i.priority = ANY($4::text[]))
ORDER BY t.occurred_at DESC, t.issue_id
LIMIT $5

-- escalations_since --
-- Upward escalations since $1, newest first, within the filters
SELECT e.issue_id, e.vendor_id, i.title, i.priority, i.category, e.from_tier, e.to_tier,
       e.automatic, e.reason, e.escalated_at
FROM read.escalations AS e
JOIN read.issues AS i USING (issue_id)
WHERE e.direction = 'up' AND e.escalated_at >= $1
  AND ($2::text[] IS NULL OR i.vendor_id = ANY($2::text[]))
  AND ($3::text[] IS NULL OR i.category = ANY($3::text[]))
  AND ($4::text[] IS NULL OR i.priority = ANY($4::text[]))
ORDER BY e.escalated_at DESC, e.issue_id
LIMIT $5

-- weekly_figures --
-- A vendor's figures per ISO week (weeks starting Monday) for the days $2 to $3
SELECT date_trunc('week', day)::date AS week,
       sum(clocks_met)::int AS clocks_met,
       sum(breaches)::int AS breaches,
       sum(acknowledged)::int AS acknowledged,
       sum(ack_seconds_total)::float8 AS ack_seconds,
       sum(resolved)::int AS resolved,
       sum(resolve_seconds_total)::float8 AS resolve_seconds
FROM read.vendor_daily
WHERE vendor_id = $1 AND day BETWEEN $2 AND $3
GROUP BY 1
ORDER BY 1

-- breaches_by_category --
-- A vendor's breached clocks between $2 and $3, by the issue's category
SELECT i.category, count(*)::int AS count
FROM read.sla_clocks AS c
JOIN read.issues AS i USING (issue_id)
WHERE c.vendor_id = $1 AND c.outcome = 'breached' AND c.breached_at >= $2 AND c.breached_at < $3
GROUP BY i.category
ORDER BY count DESC, i.category

-- escalations_to_tier --
-- A vendor's upward escalations that reached tier $2 or above between $3 and $4
SELECT e.issue_id, i.title, e.from_tier, e.to_tier, e.automatic, e.reason, e.escalated_at
FROM read.escalations AS e
JOIN read.issues AS i USING (issue_id)
WHERE e.vendor_id = $1 AND e.direction = 'up' AND e.to_tier >= $2
  AND e.escalated_at >= $3 AND e.escalated_at < $4
ORDER BY e.escalated_at, e.issue_id

-- open_breaches --
-- A vendor's open issues whose current clocks are breached
SELECT issue_id, title, category, priority, status, tier, breach_count, created_at
FROM read.issues
WHERE vendor_id = $1 AND status = ANY($2::text[]) AND sla_breached
ORDER BY created_at, issue_id
