-- Queries of the relay: it publishes committed events in position order and marks them.

-- try_relay_lock --
-- Only one relay is active; the others wait for this session lock
SELECT pg_try_advisory_lock($1)

-- unpublished_events --
-- The next batch of unpublished events not already in flight ($2), in position order
SELECT event_id, stream_id, version, type, time, data::text AS data_json, traceparent, vendor_id,
    inbound_source, inbound_delivery, position
FROM events WHERE published_at IS NULL AND position <> ALL($2::bigint[])
ORDER BY position LIMIT $1

-- mark_published --
-- Mark a batch published once the log acked every event of it
UPDATE events SET published_at = $2 WHERE position = ANY($1::bigint[])

-- oldest_unpublished --
-- The time of the oldest event not yet published (NULL when there is none)
SELECT min(time) FROM events WHERE published_at IS NULL

-- recorded_log_identity --
-- The identity of the log the relay last published this topic to
SELECT identity FROM relay_log_identity WHERE topic = $1

-- record_log_identity --
-- Remember which log this topic is published to now
INSERT INTO relay_log_identity (topic, identity) VALUES ($1, $2)
ON CONFLICT (topic) DO UPDATE SET identity = EXCLUDED.identity, recorded_at = now()

-- forget_published --
-- Republish the whole store to a log that is not the one we published to
UPDATE events SET published_at = NULL WHERE published_at IS NOT NULL
