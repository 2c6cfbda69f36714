-- Queries of the inbound adapter: sources (their secrets stored sealed) and the deliveries that
-- arrived for them. Rows are read by column name, so the aliases are the contract.

-- insert_source --
-- Store a new source (the secret comes sealed)
INSERT INTO inbound_sources (id, name, type, vendor_id, mapping, secret)
VALUES ($1, $2, $3, $4, $5::jsonb, $6)
RETURNING id, name, type, vendor_id, mapping::text AS mapping, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- get_source --
-- One source's settings (never its secrets)
SELECT id, name, type, vendor_id, mapping::text AS mapping, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at
FROM inbound_sources WHERE id = $1

-- list_sources --
-- $1: only this vendor's sources (NULL: every source); $2/$3: the keyset cursor
SELECT id, name, type, vendor_id, mapping::text AS mapping, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at
FROM inbound_sources
WHERE ($1::text IS NULL OR vendor_id = $1)
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4

-- update_source --
-- $2 name and $4 mapping: NULL leaves them; $3 vendor_id is set when $5 says it was sent
UPDATE inbound_sources
SET name = coalesce($2, name),
    vendor_id = CASE WHEN $5 THEN $3 ELSE vendor_id END,
    mapping = coalesce($4::jsonb, mapping),
    updated_at = now()
WHERE id = $1
RETURNING id, name, type, vendor_id, mapping::text AS mapping, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- delete_source --
-- Delete a source with its delivery log; no row when there was none
DELETE FROM inbound_sources WHERE id = $1 RETURNING id

-- rotate_source_secret --
-- Replace the secret; the old one keeps verifying for $3 seconds
UPDATE inbound_sources
SET previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => $3),
    secret = $2,
    updated_at = now()
WHERE id = $1
RETURNING id, name, type, vendor_id, mapping::text AS mapping, created_at, updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- source_for_receiving --
-- What verifying a delivery needs: the type, the vendor, the mapping and the live secrets
SELECT id, type, vendor_id, mapping::text AS mapping, secret,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret END AS previous_secret
FROM inbound_sources WHERE id = $1

-- source_secrets_page --
-- Every source's secrets in id order after the cursor, for re-sealing under the newest key
SELECT id, secret, previous_secret FROM inbound_sources
WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2

-- reseal_source_secrets --
-- Compare-and-set: a rotation that committed in between wins
UPDATE inbound_sources s
SET secret = CASE WHEN s.secret = u.old_secret THEN u.new_secret ELSE s.secret END,
    previous_secret = CASE WHEN s.previous_secret IS NOT DISTINCT FROM u.old_previous
                           THEN u.new_previous ELSE s.previous_secret END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS u(id, old_secret, new_secret, old_previous, new_previous)
WHERE s.id = u.id

-- record_rejected --
-- A request whose signature failed; only the newest 50 such rows per source are kept
WITH recorded AS (
    INSERT INTO inbound_deliveries (id, source_id, delivery_id, verified, vendor_id, outcome, error)
    VALUES ($1, $2, $3, false, $4, 'rejected', $5)
    RETURNING id
)
DELETE FROM inbound_deliveries WHERE id IN (
    SELECT id FROM inbound_deliveries
    WHERE source_id = $2 AND NOT verified
    ORDER BY received_at DESC, id DESC OFFSET 49
)

-- claim_delivery --
-- Claim a verified delivery id; no row when it was recorded already (a failed one is run again)
INSERT INTO inbound_deliveries (id, source_id, delivery_id, verified, outcome)
VALUES ($1, $2, $3, true, 'ignored')
ON CONFLICT (source_id, delivery_id) WHERE verified DO UPDATE
    SET received_at = now(), outcome = 'ignored', error = NULL, commands = '[]'::jsonb
    WHERE inbound_deliveries.outcome = 'failed'
RETURNING id

-- complete_delivery --
-- What the delivery turned out to be, in the transaction of its effects
UPDATE inbound_deliveries
SET event = $2, ticket_key = $3, vendor_id = $4, issue_id = $5, outcome = $6,
    commands = $7::jsonb, error = $8
WHERE id = $1

-- delivery_by_key --
-- The record of a verified delivery id
SELECT id, delivery_id, verified, event, ticket_key, vendor_id, issue_id, outcome,
    commands::text AS commands, error, received_at
FROM inbound_deliveries WHERE source_id = $1 AND delivery_id = $2 AND verified

-- list_deliveries --
-- Newest first; $2: only deliveries of this vendor (NULL: all); $3/$4: the keyset cursor
SELECT id, delivery_id, verified, event, ticket_key, vendor_id, issue_id, outcome,
    commands::text AS commands, error, received_at
FROM inbound_deliveries
WHERE source_id = $1
  AND ($2::text IS NULL OR vendor_id = $2)
  AND ($3::timestamptz IS NULL OR (received_at, id) < ($3, $4::uuid))
ORDER BY received_at DESC, id DESC
LIMIT $5

-- count_sources --
-- How many sources there are (the size of a re-seal)
SELECT count(*) FROM inbound_sources
