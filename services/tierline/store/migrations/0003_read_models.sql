-- Read models (schema `read`): built by the projector from the Kafka log, queried by
-- GET /v1/issues, the vendor scorecard and Grafana. Documented in docs/read-models.md.
-- Every table here can be rebuilt from the log by `tierline replay`, which builds copies
-- (CREATE TABLE ... LIKE ... INCLUDING ALL, so comments, defaults and indexes follow) and swaps
-- them in; keep each table's whole definition here.

CREATE SCHEMA read;

-- Order of GET /v1/issues: numbered when the projector first commits an issue, in commit order
-- (projector batches that add issues serialise on an advisory lock), so a cursor never skips an
-- issue that appears later. Not owned by a table: replays swap tables but keep the numbers.
CREATE SEQUENCE read.issue_list_seq;

CREATE TABLE read.issues (
    issue_id          text PRIMARY KEY,
    list_seq          bigint NOT NULL DEFAULT nextval('read.issue_list_seq'),
    vendor_id         text NOT NULL,
    title             text NOT NULL,
    category          text NOT NULL,
    priority          text NOT NULL,
    status            text NOT NULL,
    tier              integer NOT NULL,
    assignee          text,
    external_ref      text,
    reported_by       text,
    version           integer NOT NULL,
    created_at        timestamptz NOT NULL,
    updated_at        timestamptz NOT NULL,
    tier_entered_at   timestamptz NOT NULL,
    cycle_started_at  timestamptz NOT NULL,
    acknowledged_at   timestamptz,
    resolved_at       timestamptz,
    closed_at         timestamptz,
    respond_state     text,
    respond_due_at    timestamptz,
    resolve_state     text,
    resolve_due_at    timestamptz,
    next_due_at       timestamptz,
    sla_breached      boolean NOT NULL DEFAULT false,
    breach_count      integer NOT NULL DEFAULT 0,
    escalation_count  integer NOT NULL DEFAULT 0,
    reopen_count      integer NOT NULL DEFAULT 0,
    comment_count     integer NOT NULL DEFAULT 0,
    clocks            jsonb NOT NULL DEFAULT '[]'
);
CREATE UNIQUE INDEX issues_list_seq_key ON read.issues (list_seq);
CREATE INDEX issues_vendor_list_idx ON read.issues (vendor_id, list_seq);
CREATE INDEX issues_status_list_idx ON read.issues (status, list_seq);
CREATE INDEX issues_next_due_idx ON read.issues (next_due_at) WHERE next_due_at IS NOT NULL;
COMMENT ON TABLE read.issues IS 'Current state of every issue, one row per issue';
COMMENT ON COLUMN read.issues.list_seq IS 'Stable list order (and cursor) of GET /v1/issues';
COMMENT ON COLUMN read.issues.version IS 'Stream version of the last event applied';
COMMENT ON COLUMN read.issues.tier_entered_at IS 'When the issue entered its current tier';
COMMENT ON COLUMN read.issues.cycle_started_at IS 'When the issue was opened or last reopened';
COMMENT ON COLUMN read.issues.acknowledged_at IS 'Last acknowledgement (NULL until acknowledged)';
COMMENT ON COLUMN read.issues.resolved_at IS 'Last resolution (NULL while never resolved)';
COMMENT ON COLUMN read.issues.respond_state IS 'State of the current respond clock (NULL: none)';
COMMENT ON COLUMN read.issues.respond_due_at IS 'Due time of the current respond clock while running';
COMMENT ON COLUMN read.issues.resolve_state IS 'State of the current resolve clock (NULL: none)';
COMMENT ON COLUMN read.issues.resolve_due_at IS 'Due time of the current resolve clock while running';
COMMENT ON COLUMN read.issues.next_due_at IS 'Earliest due time among running clocks';
COMMENT ON COLUMN read.issues.sla_breached IS 'A current clock (this tier and cycle) is breached';
COMMENT ON COLUMN read.issues.breach_count IS 'SLA breaches recorded over the whole life';
COMMENT ON COLUMN read.issues.clocks IS 'Current SLA clocks as the last event carried them';

CREATE TABLE read.issue_timeline (
    issue_id     text NOT NULL,
    version      integer NOT NULL,
    event_id     uuid NOT NULL,
    event_type   text NOT NULL,
    occurred_at  timestamptz NOT NULL,
    vendor_id    text NOT NULL,
    status       text NOT NULL,
    tier         integer NOT NULL,
    priority     text NOT NULL,
    summary      text NOT NULL,
    data         jsonb NOT NULL,
    PRIMARY KEY (issue_id, version)
);
CREATE INDEX issue_timeline_occurred_idx ON read.issue_timeline (occurred_at);
CREATE INDEX issue_timeline_vendor_idx ON read.issue_timeline (vendor_id, occurred_at);
COMMENT ON TABLE read.issue_timeline IS 'Every issue event, one row per event';
COMMENT ON COLUMN read.issue_timeline.event_type IS 'Short event name: opened, escalated, sla_breached, ...';
COMMENT ON COLUMN read.issue_timeline.status IS 'Issue status after the event';
COMMENT ON COLUMN read.issue_timeline.tier IS 'Issue tier after the event';
COMMENT ON COLUMN read.issue_timeline.priority IS 'Issue priority after the event';
COMMENT ON COLUMN read.issue_timeline.summary IS 'One line for people';
COMMENT ON COLUMN read.issue_timeline.data IS 'Event data without the clocks';

CREATE TABLE read.escalations (
    issue_id              text NOT NULL,
    version               integer NOT NULL,
    vendor_id             text NOT NULL,
    direction             text NOT NULL CHECK (direction IN ('up', 'down')),
    from_tier             integer NOT NULL,
    to_tier               integer NOT NULL,
    automatic             boolean NOT NULL,
    reason                text NOT NULL,
    priority              text NOT NULL,
    escalated_at          timestamptz NOT NULL,
    from_tier_entered_at  timestamptz NOT NULL,
    seconds_in_from_tier  double precision NOT NULL,
    PRIMARY KEY (issue_id, version)
);
CREATE INDEX escalations_at_idx ON read.escalations (escalated_at);
CREATE INDEX escalations_vendor_idx ON read.escalations (vendor_id, escalated_at);
COMMENT ON TABLE read.escalations IS 'Every tier change: escalations (up) and de-escalations (down)';
COMMENT ON COLUMN read.escalations.automatic IS 'Caused by an SLA breach under an auto-escalate policy';
COMMENT ON COLUMN read.escalations.seconds_in_from_tier IS 'Wall-clock seconds the issue spent in from_tier';

CREATE TABLE read.sla_clocks (
    issue_id          text NOT NULL,
    clock_id          text NOT NULL,
    vendor_id         text NOT NULL,
    tier              integer NOT NULL,
    kind              text NOT NULL CHECK (kind IN ('respond', 'resolve')),
    priority          text NOT NULL,
    state             text NOT NULL,
    outcome           text CHECK (outcome IN ('met', 'breached', 'stopped')),
    started_at        timestamptz NOT NULL,
    due_at            timestamptz,
    target_seconds    double precision NOT NULL,
    elapsed_seconds   double precision NOT NULL,
    warned            double precision[] NOT NULL DEFAULT '{}',
    breached_at       timestamptz,
    ended_at          timestamptz,
    outcome_at        timestamptz,
    updated_at        timestamptz NOT NULL,
    PRIMARY KEY (issue_id, clock_id)
);
CREATE INDEX sla_clocks_running_due_idx ON read.sla_clocks (due_at) WHERE state = 'running';
CREATE INDEX sla_clocks_outcome_idx ON read.sla_clocks (vendor_id, outcome_at)
    WHERE outcome IS NOT NULL;
COMMENT ON TABLE read.sla_clocks IS 'Every SLA clock of every issue and its outcome';
COMMENT ON COLUMN read.sla_clocks.state IS 'running, paused, met, breached or stopped';
COMMENT ON COLUMN read.sla_clocks.outcome IS 'met, breached or stopped (left by a tier change); NULL while live';
COMMENT ON COLUMN read.sla_clocks.due_at IS 'Due time while running (NULL while paused)';
COMMENT ON COLUMN read.sla_clocks.warned IS 'Warning thresholds already recorded (fractions of the target)';
COMMENT ON COLUMN read.sla_clocks.outcome_at IS 'When the outcome happened: breached_at, else ended_at';
COMMENT ON COLUMN read.sla_clocks.priority IS 'Issue priority when the clock last changed';

CREATE TABLE read.vendor_daily (
    vendor_id              text NOT NULL,
    day                    date NOT NULL,
    opened                 integer NOT NULL DEFAULT 0,
    acknowledged           integer NOT NULL DEFAULT 0,
    resolved               integer NOT NULL DEFAULT 0,
    reopened               integer NOT NULL DEFAULT 0,
    closed                 integer NOT NULL DEFAULT 0,
    escalations            integer NOT NULL DEFAULT 0,
    automatic_escalations  integer NOT NULL DEFAULT 0,
    deescalations          integer NOT NULL DEFAULT 0,
    warnings               integer NOT NULL DEFAULT 0,
    breaches               integer NOT NULL DEFAULT 0,
    respond_breaches       integer NOT NULL DEFAULT 0,
    resolve_breaches       integer NOT NULL DEFAULT 0,
    clocks_met             integer NOT NULL DEFAULT 0,
    ack_seconds_total      numeric(20, 6) NOT NULL DEFAULT 0,
    resolve_seconds_total  numeric(20, 6) NOT NULL DEFAULT 0,
    open_delta             integer NOT NULL DEFAULT 0,
    PRIMARY KEY (vendor_id, day)
);
CREATE INDEX vendor_daily_day_idx ON read.vendor_daily (day);
COMMENT ON TABLE read.vendor_daily IS 'Per vendor and UTC day: counts of what happened that day';
-- Exact decimals: sums over batches must not depend on how the log was cut into batches.
COMMENT ON COLUMN read.vendor_daily.ack_seconds_total IS 'Sum over acknowledgements of seconds since (re)opening';
COMMENT ON COLUMN read.vendor_daily.resolve_seconds_total IS 'Sum over resolutions of seconds since (re)opening';
COMMENT ON COLUMN read.vendor_daily.clocks_met IS 'SLA clocks that ended met that day';
COMMENT ON COLUMN read.vendor_daily.open_delta IS 'Change of the open count: opened + reopened - resolved';

-- The daily scorecard with its derived figures; days without activity have no row.
CREATE VIEW read.vendor_scorecard_daily AS
SELECT
    d.vendor_id,
    d.day,
    (d.day::timestamp AT TIME ZONE 'UTC') AS day_start,
    d.opened,
    d.acknowledged,
    d.resolved,
    d.reopened,
    d.closed,
    d.escalations,
    d.automatic_escalations,
    d.deescalations,
    d.warnings,
    d.breaches,
    d.respond_breaches,
    d.resolve_breaches,
    d.clocks_met,
    d.ack_seconds_total,
    d.resolve_seconds_total,
    sum(d.open_delta) OVER (PARTITION BY d.vendor_id ORDER BY d.day)::integer AS open_at_end_of_day,
    CASE WHEN d.acknowledged > 0
        THEN (d.ack_seconds_total / d.acknowledged)::double precision END AS mtta_seconds,
    CASE WHEN d.resolved > 0
        THEN (d.resolve_seconds_total / d.resolved)::double precision END AS mttr_seconds,
    CASE WHEN d.clocks_met + d.breaches > 0
        THEN d.clocks_met::double precision / (d.clocks_met + d.breaches) END
        AS sla_compliance
FROM read.vendor_daily AS d;
COMMENT ON VIEW read.vendor_scorecard_daily IS
    'Vendor daily scorecard: counts, open at end of day, MTTA, MTTR, SLA compliance (0..1)';

-- Running clocks with their issue, soonest due first: the "SLA at risk" question.
CREATE VIEW read.sla_at_risk AS
SELECT
    c.issue_id,
    c.clock_id,
    c.vendor_id,
    i.title,
    i.status,
    i.priority,
    c.tier,
    c.kind,
    c.started_at,
    c.due_at,
    c.target_seconds,
    c.warned,
    i.assignee
FROM read.sla_clocks AS c
JOIN read.issues AS i USING (issue_id)
WHERE c.state = 'running' AND c.due_at IS NOT NULL;
COMMENT ON VIEW read.sla_at_risk IS 'Running SLA clocks with their issue (order by due_at)';

-- One row per finished `tierline replay`; the projector re-reads its offsets when this grows.
CREATE TABLE read.rebuilds (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    projections  text[] NOT NULL,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL,
    events       bigint NOT NULL
);
COMMENT ON TABLE read.rebuilds IS 'Replays that were swapped in (not itself rebuilt)';
