-- Queries of the write-side store (events, streams, refs, vendors, governance, keys,
-- idempotency, migrations). Rows are read by column name, so the names below are the contract.

-- lock_stream_head --
-- Lock a stream's head row for this transaction
SELECT version, snapshot::text AS snapshot_json FROM streams WHERE stream_id = $1 FOR UPDATE

-- read_stream_head --
-- A stream's version and snapshot, without locking
SELECT version, snapshot::text AS snapshot_json FROM streams WHERE stream_id = $1

-- append_events --
-- One round trip: the events go in with their versions and the head moves with them
WITH appended AS (
    INSERT INTO events
        (event_id, stream_id, stream_type, vendor_id, version, type, time, data, traceparent,
         inbound_source, inbound_delivery)
    SELECT e.event_id, $1, $2, $9, e.version, e.type, e.time, e.data::jsonb, $3, $14, $15
    FROM unnest($4::uuid[], $5::int[], $6::text[], $7::timestamptz[], $8::text[])
        AS e(event_id, version, type, time, data)
    RETURNING 1
)
-- The data-modifying CTE above always runs; the head update below is guarded by the version.
INSERT INTO streams (stream_id, stream_type, vendor_id, version, snapshot, updated_at)
VALUES ($1, $2, $9, $10, $11::jsonb, $12)
ON CONFLICT (stream_id) DO UPDATE
    SET version = EXCLUDED.version, snapshot = EXCLUDED.snapshot, updated_at = EXCLUDED.updated_at
    WHERE streams.version = $13
RETURNING version

-- read_head_unless_at --
-- A stream's version, and its snapshot unless it is at version $2 (which the caller holds)
SELECT version, CASE WHEN version = $2 THEN NULL ELSE snapshot::text END AS snapshot_json
FROM streams WHERE stream_id = $1

-- append_command --
-- A whole command in one statement, with no transaction around it (OneStatementUnitOfWork).
-- The head moves from version $13 only if nobody moved it since it was read; the events go in
-- only if it moved, so the two stay together. The idempotency answer ($16–$21, when a key was
-- sent) goes in with them, or alone for a command that appended nothing; a key taken in the
-- meantime violates its primary key and undoes the whole statement. No move means the caller
-- runs the unit of work again.
WITH moved AS (
    UPDATE streams SET version = $10, snapshot = $11::jsonb, updated_at = $12
    WHERE stream_id = $1 AND version = $13 AND cardinality($4::uuid[]) > 0
    RETURNING version
), claim AS (
    INSERT INTO idempotency_keys (principal, key, request_hash, status, body, headers)
    SELECT $16, $17, $18, $19, $20::jsonb, $21::jsonb
    WHERE $16::text IS NOT NULL
        AND (cardinality($4::uuid[]) = 0 OR EXISTS (SELECT 1 FROM moved))
    RETURNING 1
), appended AS (
    INSERT INTO events
        (event_id, stream_id, stream_type, vendor_id, version, type, time, data, traceparent,
         inbound_source, inbound_delivery)
    SELECT e.event_id, $1, $2, $9, e.version, e.type, e.time, e.data::jsonb, $3, $14, $15
    FROM unnest($4::uuid[], $5::int[], $6::text[], $7::timestamptz[], $8::text[])
        AS e(event_id, version, type, time, data)
    WHERE EXISTS (SELECT 1 FROM moved)
    RETURNING 1
)
SELECT (SELECT count(*) FROM moved) AS moved, (SELECT count(*) FROM appended) AS appended,
    (SELECT count(*) FROM claim) AS claimed

-- append_commands --
-- Several commands of append_command in one statement (group commit, store/group_commit.py),
-- numbered $1, one issue each. A number may stand for several commands on one issue decided
-- one after the other: their events in order, the last one's head, the first one's expected
-- version. Per number as in append_command: its head moves only from its version $7, its
-- events go in only if it moved, its idempotency answers with them or alone. Heads are locked
-- in id order first, so two batches (or a batch and the SLA engine's) cannot deadlock on each
-- other's order. A key taken meanwhile undoes the whole statement; the caller then writes
-- each command alone. Returns the numbers whose head moved.
WITH cmd AS (
    SELECT * FROM unnest($1::int[], $2::text[], $3::text[], $4::int[], $5::text[],
        $6::timestamptz[], $7::int[], $8::bool[])
        AS c(n, stream_id, vendor_id, version, snapshot, updated_at, expected, appends)
), locked AS (
    SELECT s.stream_id FROM streams AS s
    WHERE s.stream_id IN (SELECT stream_id FROM cmd WHERE appends)
    ORDER BY s.stream_id
    FOR UPDATE
), moved AS (
    UPDATE streams AS s
    SET version = c.version, snapshot = c.snapshot::jsonb, updated_at = c.updated_at
    FROM cmd AS c
    WHERE c.appends AND s.stream_id = c.stream_id AND s.version = c.expected
        AND s.stream_id IN (SELECT stream_id FROM locked)
    RETURNING c.n
), claim AS (
    INSERT INTO idempotency_keys (principal, key, request_hash, status, body, headers)
    SELECT k.principal, k.key, k.request_hash, k.status, k.body::jsonb, k.headers::jsonb
    FROM unnest($19::int[], $20::text[], $21::text[], $22::text[], $23::int[], $24::text[],
        $25::text[]) AS k(n, principal, key, request_hash, status, body, headers)
    JOIN cmd AS c ON c.n = k.n
    WHERE NOT c.appends OR k.n IN (SELECT n FROM moved)
    RETURNING 1
), appended AS (
    INSERT INTO events
        (event_id, stream_id, stream_type, vendor_id, version, type, time, data, traceparent,
         inbound_source, inbound_delivery)
    SELECT e.event_id, c.stream_id, $9, c.vendor_id, e.version, e.type, e.time, e.data::jsonb,
        e.traceparent, e.inbound_source, e.inbound_delivery
    FROM unnest($10::int[], $11::uuid[], $12::int[], $13::text[], $14::timestamptz[],
        $15::text[], $16::text[], $17::uuid[], $18::text[]) WITH ORDINALITY
        AS e(n, event_id, version, type, time, data, traceparent, inbound_source,
             inbound_delivery, ord)
    JOIN cmd AS c ON c.n = e.n
    WHERE e.n IN (SELECT n FROM moved)
    ORDER BY e.ord
    RETURNING 1
)
-- (Data-modifying CTEs run to completion whether or not the outer query reads them.)
SELECT coalesce(array_agg(n), '{}') FROM moved

-- stream_events --
-- Every event of one stream, in version order
SELECT event_id, stream_id, version, type, time, data::text AS data_json, traceparent, vendor_id,
    inbound_source, inbound_delivery
FROM events WHERE stream_id = $1 ORDER BY version

-- lock_stream_heads --
-- Lock many streams' head rows for this transaction, in id order (two batches cannot deadlock)
SELECT stream_id, version, snapshot::text AS snapshot_json FROM streams
WHERE stream_id = ANY($1::text[])
ORDER BY stream_id
FOR UPDATE

-- append_to_streams --
-- One round trip for a batch: each existing head moves only from its expected version
-- The events of the heads that moved go in, in array order (so positions follow versions); the
-- caller compares the heads moved with the heads given and raises on any difference, which
-- rolls the whole transaction back.
WITH moved AS (
    UPDATE streams AS s
    SET version = h.version, snapshot = h.snapshot::jsonb, updated_at = h.updated_at
    FROM unnest($9::text[], $10::int[], $11::int[], $12::text[], $13::timestamptz[])
        AS h(stream_id, expected, version, snapshot, updated_at)
    WHERE s.stream_id = h.stream_id AND s.version = h.expected
    RETURNING s.stream_id
), appended AS (
    INSERT INTO events (event_id, stream_id, stream_type, vendor_id, version, type, time, data)
    SELECT e.event_id, e.stream_id, $1, e.vendor_id, e.version, e.type, e.time, e.data::jsonb
    FROM unnest(
        $2::uuid[], $3::text[], $4::text[], $5::int[], $6::text[], $7::timestamptz[], $8::text[]
    ) WITH ORDINALITY AS e(event_id, stream_id, vendor_id, version, type, time, data, n)
    WHERE e.stream_id IN (SELECT stream_id FROM moved)
    ORDER BY e.n
    RETURNING 1
)
-- (A data-modifying CTE runs to completion whether or not the outer query reads it.)
SELECT array_agg(stream_id) FROM moved

-- find_external_ref --
-- The issue an external system's key refers to
SELECT stream_id, vendor_id FROM external_refs WHERE system = $1 AND key = $2

-- insert_external_ref --
-- Claim an external key for an issue; no row when the key is taken
INSERT INTO external_refs (system, key, stream_id, vendor_id) VALUES ($1, $2, $3, $4)
ON CONFLICT DO NOTHING RETURNING 1

-- insert_vendor --
-- Register a vendor at version 1; no row when the id is taken
INSERT INTO vendors (id, name, timezone, calendar) VALUES ($1, $2, $3, $4::jsonb)
ON CONFLICT (id) DO NOTHING RETURNING id

-- list_vendors --
-- Every vendor with its version, by id
SELECT id, name, timezone, calendar::text AS calendar, version FROM vendors ORDER BY id

-- get_vendor --
-- One vendor with its version
SELECT id, name, timezone, calendar::text AS calendar, version FROM vendors WHERE id = $1

-- lock_vendor --
-- One vendor with its version, its row locked for this transaction
SELECT id, name, timezone, calendar::text AS calendar, version FROM vendors WHERE id = $1
FOR UPDATE

-- update_vendor --
-- Guarded by the version read under the row lock, so a lost update is impossible either way
UPDATE vendors SET name = $2, timezone = $3, calendar = $4::jsonb, version = version + 1
WHERE id = $1 AND version = $5
RETURNING version

-- current_governance --
-- The governance document in force and its version
SELECT version, document::text AS document FROM governance_versions
ORDER BY version DESC LIMIT 1

-- insert_governance --
-- Store a new governance version
INSERT INTO governance_versions (version, document) VALUES ($1, $2::jsonb)

-- insert_api_key --
-- Store a key's hash and metadata; nothing when the hash is stored already
INSERT INTO api_keys (id, name, role, vendor_id, key_hash, prefix) VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (key_hash) DO NOTHING

-- find_api_key --
-- The live key with this hash
SELECT id, name, role, vendor_id, prefix, created_at, revoked_at FROM api_keys
WHERE key_hash = $1 AND revoked_at IS NULL

-- api_key_revoked --
-- Whether the key with this hash has been revoked (no row when it was never stored)
SELECT revoked_at IS NOT NULL FROM api_keys WHERE key_hash = $1

-- list_api_keys --
-- Every key's metadata, revoked ones included
SELECT id, name, role, vendor_id, prefix, created_at, revoked_at FROM api_keys
ORDER BY created_at, id

-- revoke_api_key --
-- Revoke a live key at once; no row when no live key has this id
UPDATE api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL RETURNING id

-- lock_revocations --
-- Revocations queue on one lock, so two at once cannot each leave the other as the last admin
SELECT pg_advisory_xact_lock(hashtext('tierline.api_keys.revoke'))

-- live_key_role --
-- The role of a live key
SELECT role FROM api_keys WHERE id = $1 AND revoked_at IS NULL

-- live_admin_keys --
-- How many live admin keys there are
SELECT count(*) FROM api_keys WHERE role = 'admin' AND revoked_at IS NULL

-- claim_idempotency_key --
-- Claim a key for a request; no row when it was claimed before
INSERT INTO idempotency_keys (principal, key, request_hash, status)
VALUES ($1, $2, $3, 0) ON CONFLICT DO NOTHING RETURNING 1

-- stored_response --
-- What the first request with this key answered (status 0 while it runs)
SELECT request_hash, status, body::text AS body, headers::text AS headers FROM idempotency_keys
WHERE principal = $1 AND key = $2

-- complete_idempotency_key --
-- Store the response for later retries
UPDATE idempotency_keys SET status = $3, body = $4::jsonb, headers = $5::jsonb
WHERE principal = $1 AND key = $2

-- lock_migrations --
-- Only one role applies migrations at a time
SELECT pg_advisory_xact_lock($1)

-- create_schema_migrations --
-- The table that records applied migrations
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     integer PRIMARY KEY,
    name        text NOT NULL,
    applied_at  timestamptz NOT NULL DEFAULT now()
)

-- applied_migrations --
-- The versions applied so far
SELECT version FROM schema_migrations

-- record_migration --
-- Record a migration as applied
INSERT INTO schema_migrations (version, name) VALUES ($1, $2)
