-- Queries of a log consumer: its offsets and the last version it applied per stream commit in
-- the same transaction as its effects.

-- load_offsets --
-- The stored next offsets (and the log they belong to) of the partitions assigned to us
SELECT partition, next_offset, log_identity FROM consumer_offsets
WHERE consumer = $1 AND topic = $2 AND partition = ANY($3::int[])

-- save_offsets --
-- Store the next offset per partition with the batch's effects
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, log_identity)
SELECT $1, $2, p, o, $5 FROM unnest($3::int[], $4::bigint[]) AS t(p, o)
ON CONFLICT (consumer, topic, partition) DO UPDATE
    SET next_offset = EXCLUDED.next_offset, log_identity = EXCLUDED.log_identity, updated_at = now()

-- claim_streams --
-- The last applied version per stream of a batch (0 for a stream new to this consumer), each
-- row locked until the batch commits, in a fixed order against deadlocks. One statement: the
-- no-op DO UPDATE locks an existing row and returns its version; a row another member inserts
-- meanwhile is waited for and then returned the same way (ON CONFLICT's atomic outcome).
INSERT INTO consumer_stream_versions AS c (consumer, stream_id, version)
SELECT $1, s, 0 FROM unnest($2::text[]) AS t(s) ORDER BY s
ON CONFLICT (consumer, stream_id) DO UPDATE SET version = c.version
RETURNING stream_id, version

-- save_streams --
-- Store the last applied version per stream the batch touched
UPDATE consumer_stream_versions AS c SET version = t.v
FROM unnest($2::text[], $3::int[]) AS t(s, v)
WHERE c.consumer = $1 AND c.stream_id = t.s

-- save_streams_and_offsets --
-- save_streams and save_offsets in one round trip: the batch's applied versions ($6, $7) and
-- its next offsets ($3, $4)
WITH saved AS (
    UPDATE consumer_stream_versions AS c SET version = t.v
    FROM unnest($6::text[], $7::int[]) AS t(s, v)
    WHERE c.consumer = $1 AND c.stream_id = t.s
)
INSERT INTO consumer_offsets (consumer, topic, partition, next_offset, log_identity)
SELECT $1, $2, p, o, $5 FROM unnest($3::int[], $4::bigint[]) AS t(p, o)
ON CONFLICT (consumer, topic, partition) DO UPDATE
    SET next_offset = EXCLUDED.next_offset, log_identity = EXCLUDED.log_identity, updated_at = now()
