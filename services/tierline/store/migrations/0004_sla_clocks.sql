-- SLA engine: one row per live clock with the time it next needs attention, scanned by any
-- number of workers (FOR UPDATE SKIP LOCKED), and a queue of issues to recompute after a
-- policy change. Rows are derived from the events' `clocks`; the write side stays the truth.

-- Per issue, the stream version whose clocks the rows in sla_clocks reflect. Both the log
-- consumer and the scanner (from a command's result) write clock rows; the newer version wins.
CREATE TABLE sla_issues (
    issue_id    text PRIMARY KEY,
    vendor_id   text NOT NULL,
    version     integer NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE sla_clocks (
    issue_id      text NOT NULL,
    clock_id      text NOT NULL,
    vendor_id     text NOT NULL,
    kind          text NOT NULL CHECK (kind IN ('respond', 'resolve')),
    tier          integer NOT NULL,
    state         text NOT NULL CHECK (state IN ('running', 'paused')),
    due_at        timestamptz,
    -- When the clock next needs an action (a warning threshold or the breach); NULL while paused.
    fire_at       timestamptz,
    -- The warning threshold due at fire_at; NULL means the breach.
    threshold     double precision,
    -- When a scanner looks at the row next: fire_at, pushed back while a worker holds a lease.
    next_fire_at  timestamptz,
    -- Claims since fire_at last changed; the lease grows with it so a stuck row cannot spin.
    attempts      integer NOT NULL DEFAULT 0,
    PRIMARY KEY (issue_id, clock_id)
);
CREATE INDEX sla_clocks_next_fire_idx ON sla_clocks (next_fire_at) WHERE next_fire_at IS NOT NULL;
-- "SLA at risk" dashboards look clocks up by vendor and due time.
CREATE INDEX sla_clocks_vendor_due_idx ON sla_clocks (vendor_id, due_at);

-- Issues whose live clocks must take a changed policy (RecomputeSla), claimed like clocks.
CREATE TABLE sla_recompute (
    issue_id         text PRIMARY KEY,
    policy_version   integer NOT NULL,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    attempts         integer NOT NULL DEFAULT 0
);
CREATE INDEX sla_recompute_next_attempt_idx ON sla_recompute (next_attempt_at);
