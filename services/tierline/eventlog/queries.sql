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
-- Give every stream of a batch a version row (0 when new), in a fixed order against deadlocks
INSERT INTO consumer_stream_versions (consumer, stream_id, version)
SELECT $1, s, 0 FROM unnest($2::text[]) AS t(s) ORDER BY s
ON CONFLICT DO NOTHING

-- lock_streams --
-- The last applied version per stream of a batch, the rows locked until the batch commits
SELECT stream_id, version FROM consumer_stream_versions
WHERE consumer = $1 AND stream_id = ANY($2::text[]) ORDER BY stream_id FOR UPDATE

-- save_streams --
-- Store the last applied version per stream the batch touched
UPDATE consumer_stream_versions AS c SET version = t.v
FROM unnest($2::text[], $3::int[]) AS t(s, v)
WHERE c.consumer = $1 AND c.stream_id = t.s
