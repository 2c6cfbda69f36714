-- Every issue event names its vendor, so consumers read it from the log (the `vendorid`
-- CloudEvents extension, ADR 0009) instead of the write side's `streams`. An issue never
-- changes vendor, so the head row's vendor is the vendor of every event before this migration.
-- Governance events keep NULL: they belong to no vendor.
ALTER TABLE events ADD COLUMN vendor_id text;

UPDATE events AS e SET vendor_id = s.vendor_id
FROM streams AS s
WHERE s.stream_id = e.stream_id AND s.vendor_id IS NOT NULL;

-- The SLA engine's own record of the vendor changes it has applied. An issue event recorded
-- before (or just after, while API processes still cached the old vendor) a change that the
-- engine reads only later (its partition lagged) computed its deadlines on the old calendar;
-- the engine queues such an issue for recompute when the event arrives.
CREATE TABLE sla_vendor_changes (
    vendor_id       text PRIMARY KEY,
    vendor_version  integer NOT NULL,
    changed_at      timestamptz NOT NULL
);
