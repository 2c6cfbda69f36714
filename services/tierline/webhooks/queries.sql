-- Queries of the webhooks adapter: subscriptions (their secrets stored sealed), the delivery
-- queue and its attempt log. Rows are read by column name, so the aliases are the contract.

-- insert_subscription --
-- Store a new, active subscription (the secret comes sealed)
INSERT INTO webhook_subscriptions (id, url, event_types, vendor_id, description, secret)
VALUES ($1, $2, $3, $4, $5, $6)
RETURNING id, url, event_types, vendor_id, description, active, disabled_reason, created_at,
    updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- get_subscription --
-- One subscription's settings
SELECT id, url, event_types, vendor_id, description, active, disabled_reason, created_at,
    updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at
FROM webhook_subscriptions WHERE id = $1

-- list_subscriptions --
-- $1: only this vendor's subscriptions (NULL: every subscription); $2/$3: the keyset cursor
SELECT id, url, event_types, vendor_id, description, active, disabled_reason, created_at,
    updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at
FROM webhook_subscriptions
WHERE ($1::text IS NULL OR vendor_id = $1)
  AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
ORDER BY created_at, id
LIMIT $4

-- delete_subscription --
-- Delete a subscription (its deliveries go with it); no row when there was none
DELETE FROM webhook_subscriptions WHERE id = $1 RETURNING id

-- plaintext_secrets --
-- Rows still holding a plaintext secret ($1: only this subscription; NULL: all of them)
SELECT id, secret, previous_secret FROM webhook_subscriptions
WHERE (secret LIKE 'whsec\_%' OR previous_secret LIKE 'whsec\_%')
  AND ($1::uuid IS NULL OR id = $1)

-- secrets_page --
-- Every row's secrets in id order after the cursor, for re-sealing under the newest key
SELECT id, secret, previous_secret FROM webhook_subscriptions
WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2

-- count_subscriptions --
-- How many subscriptions there are (the size of a re-seal)
SELECT count(*) FROM webhook_subscriptions

-- reseal_secrets --
-- Compare-and-set: a rotation that committed in between wins, the next sweep handles the rest
UPDATE webhook_subscriptions s
SET secret = CASE WHEN s.secret = u.old_secret THEN u.new_secret ELSE s.secret END,
    previous_secret = CASE WHEN s.previous_secret IS NOT DISTINCT FROM u.old_previous
                           THEN u.new_previous ELSE s.previous_secret END
FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::text[])
    AS u(id, old_secret, new_secret, old_previous, new_previous)
WHERE s.id = u.id

-- rotate_secret --
-- Replace the secret; the old one keeps signing for $3 seconds
UPDATE webhook_subscriptions
SET previous_secret = secret,
    previous_secret_expires_at = now() + make_interval(secs => $3),
    secret = $2,
    updated_at = now()
WHERE id = $1
RETURNING id, url, event_types, vendor_id, description, active, disabled_reason, created_at,
    updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- update_subscription --
-- NULL parameters leave a field as it is; re-enabling clears the reason it was disabled
UPDATE webhook_subscriptions
SET url = coalesce($2, url),
    event_types = coalesce($3, event_types),
    description = CASE WHEN $4 THEN $5 ELSE description END,
    active = coalesce($6, active),
    disabled_reason = CASE WHEN coalesce($6, active) THEN NULL ELSE disabled_reason END,
    updated_at = now()
WHERE id = $1
RETURNING id, url, event_types, vendor_id, description, active, disabled_reason, created_at,
    updated_at,
    CASE WHEN previous_secret_expires_at > now() THEN previous_secret_expires_at END
        AS previous_secret_expires_at

-- fan_out --
-- Match a batch of events to active subscriptions and insert one delivery per pair, once
-- One statement per consumer batch: match events to active subscriptions (type, vendor, and
-- only events recorded after the subscription was made), store each matched body once, and
-- insert one delivery per (subscription, event); a replayed event inserts nothing. The vendor
-- is the event's own (`vendorid` on the log); an event without one (governance) matches only
-- subscriptions bound to no vendor.
WITH e AS (
    SELECT * FROM unnest($1::uuid[], $2::text[], $3::int[], $4::text[], $5::timestamptz[],
                         $6::text[], $7::text[])
        AS e(event_id, stream_id, version, type, time, body, vendor_id)
), matched AS (
    SELECT s.id AS subscription_id, e.event_id
    FROM e
    JOIN webhook_subscriptions s
      ON s.active
     AND s.created_at <= e.time
     AND ('*' = ANY (s.event_types) OR e.type = ANY (s.event_types))
     AND (s.vendor_id IS NULL OR s.vendor_id = e.vendor_id)
), bodies AS (
    INSERT INTO webhook_events (event_id, stream_id, version, type, time, body)
    SELECT e.event_id, e.stream_id, e.version, e.type, e.time, e.body FROM e
    WHERE e.event_id IN (SELECT event_id FROM matched)
    ON CONFLICT (event_id) DO NOTHING
)
INSERT INTO webhook_deliveries (subscription_id, event_id)
SELECT subscription_id, event_id FROM matched
ON CONFLICT ON CONSTRAINT webhook_deliveries_once DO NOTHING

-- wake_senders --
-- Tell every sender (LISTEN $1) that deliveries may have become due
SELECT pg_notify($1, '')

-- claim_deliveries --
-- Due deliveries, at most `free` per active subscription, oldest first, each leased $5 seconds
-- $1/$3: subscriptions with attempts in flight here and how many; $4: at most this many in all.
WITH slots AS (
    SELECT s.id, greatest($2 - coalesce(b.busy, 0), 0) AS free
    FROM webhook_subscriptions s
    LEFT JOIN unnest($1::uuid[], $3::int[]) AS b(sub, busy) ON b.sub = s.id
    WHERE s.active
), picked AS (
    SELECT due.id FROM slots
    CROSS JOIN LATERAL (
        SELECT d.id, d.next_attempt_at FROM webhook_deliveries d
        WHERE d.subscription_id = slots.id
          AND d.status IN ('pending', 'failed')
          AND d.next_attempt_at <= now()
        ORDER BY d.next_attempt_at
        LIMIT slots.free
        FOR UPDATE SKIP LOCKED
    ) due
    WHERE slots.free > 0
    ORDER BY due.next_attempt_at
    LIMIT $4
)
UPDATE webhook_deliveries d
SET next_attempt_at = now() + make_interval(secs => $5), lease_token = gen_random_uuid()
FROM picked, webhook_subscriptions s, webhook_events e
WHERE d.id = picked.id AND s.id = d.subscription_id AND e.event_id = d.event_id
RETURNING d.id, d.lease_token, d.subscription_id, d.event_id, d.failures, s.url, s.secret,
          CASE WHEN s.previous_secret_expires_at > now() THEN s.previous_secret END
              AS previous_secret,
          e.body, e.time

-- seconds_until_next_due --
-- Those due already are claimed or wait for a free slot, which wakes the sender by itself
SELECT extract(epoch FROM min(next_attempt_at) - now()) FROM webhook_deliveries
WHERE status IN ('pending', 'failed') AND next_attempt_at > now()

-- record_attempts --
-- Results of a batch of attempts; a result whose lease was lost changes nothing
WITH r AS (
    SELECT * FROM unnest($1::uuid[], $2::uuid[], $3::text[], $4::float8[], $5::int[], $6::text[],
                         $7::timestamptz[], $8::float8[], $9::text[])
        AS r(id, token, status, delay, code, error, started_at, latency, outcome)
), d AS (
    UPDATE webhook_deliveries w
    SET status = r.status,
        attempts = w.attempts + 1,
        failures = CASE WHEN r.status = 'delivered' THEN w.failures ELSE w.failures + 1 END,
        next_attempt_at = CASE WHEN r.delay IS NULL THEN NULL
                               ELSE now() + make_interval(secs => r.delay) END,
        lease_token = NULL,
        last_status_code = r.code,
        last_error = r.error,
        last_attempt_at = r.started_at,
        delivered_at = CASE WHEN r.status = 'delivered' THEN now() ELSE w.delivered_at END
    FROM r
    WHERE w.id = r.id AND w.lease_token = r.token
    RETURNING w.id, w.attempts
)
INSERT INTO webhook_attempts
    (delivery_id, attempt, started_at, latency_seconds, status_code, error, outcome)
SELECT d.id, d.attempts, r.started_at, r.latency, r.code, r.error, r.outcome
FROM d JOIN r ON r.id = d.id

-- release_leases --
-- A sender stopping gracefully hands back what it leased but did not finish
UPDATE webhook_deliveries SET next_attempt_at = now(), lease_token = NULL
WHERE lease_token = ANY($1::uuid[])

-- disable_subscriptions --
-- Deactivate subscriptions (an endpoint answered 410 Gone), with the reason
UPDATE webhook_subscriptions SET active = false, disabled_reason = $2, updated_at = now()
WHERE id = ANY($1::uuid[]) AND active

-- queue_stats --
-- Undelivered deliveries of active subscriptions and the age of the oldest, in seconds
SELECT count(*) AS undelivered,
    extract(epoch FROM now() - min(d.created_at)) AS oldest_seconds
FROM webhook_deliveries d JOIN webhook_subscriptions s ON s.id = d.subscription_id
WHERE s.active AND d.status IN ('pending', 'failed')

-- list_deliveries --
-- A subscription's deliveries, newest first, before the keyset cursor ($4, $5)
SELECT d.id, d.subscription_id, d.event_id, e.type AS event_type, e.stream_id AS subject,
    e.version AS sequence, d.status, d.attempts AS attempt_count,
    d.last_status_code AS response_code, d.last_error,
    CASE WHEN d.status IN ('pending', 'failed') THEN d.next_attempt_at END AS next_attempt_at,
    d.created_at, d.last_attempt_at, d.delivered_at,
    (d.lease_token IS NOT NULL AND d.next_attempt_at > now()) AS in_flight
FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
WHERE d.subscription_id = $1
  AND ($2::text IS NULL OR d.status = $2)
  AND ($3::uuid IS NULL OR d.event_id = $3)
  AND ($4::timestamptz IS NULL OR (d.created_at, d.id) < ($4, $5::uuid))
ORDER BY d.created_at DESC, d.id DESC
LIMIT $6

-- get_delivery --
-- One delivery of a subscription, as the log shows it
SELECT d.id, d.subscription_id, d.event_id, e.type AS event_type, e.stream_id AS subject,
    e.version AS sequence, d.status, d.attempts AS attempt_count,
    d.last_status_code AS response_code, d.last_error,
    CASE WHEN d.status IN ('pending', 'failed') THEN d.next_attempt_at END AS next_attempt_at,
    d.created_at, d.last_attempt_at, d.delivered_at,
    (d.lease_token IS NOT NULL AND d.next_attempt_at > now()) AS in_flight
FROM webhook_deliveries d JOIN webhook_events e ON e.event_id = d.event_id
WHERE d.subscription_id = $1 AND d.id = $2

-- list_attempts --
-- The attempt log of the given deliveries, in order
SELECT delivery_id, attempt, started_at, latency_seconds, status_code, error, outcome
FROM webhook_attempts WHERE delivery_id = ANY($1::uuid[]) ORDER BY delivery_id, attempt

-- requeue_delivery --
-- Back to the queue with a fresh retry schedule, unless an attempt holds a live lease
WITH d AS (
    UPDATE webhook_deliveries
    SET status = 'pending', failures = 0, next_attempt_at = now(), lease_token = NULL
    WHERE subscription_id = $1 AND id = $2 AND status IN ('failed', 'dead')
      AND (lease_token IS NULL OR next_attempt_at <= now())
    RETURNING *
)
SELECT d.id, d.subscription_id, d.event_id, e.type AS event_type, e.stream_id AS subject,
    e.version AS sequence, d.status, d.attempts AS attempt_count,
    d.last_status_code AS response_code, d.last_error,
    CASE WHEN d.status IN ('pending', 'failed') THEN d.next_attempt_at END AS next_attempt_at,
    d.created_at, d.last_attempt_at, d.delivered_at,
    (d.lease_token IS NOT NULL AND d.next_attempt_at > now()) AS in_flight
FROM d JOIN webhook_events e ON e.event_id = d.event_id
