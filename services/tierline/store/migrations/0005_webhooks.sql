-- Webhooks: subscriptions, the event bodies they are sent, one delivery per
-- (subscription, event), and a log of every attempt.

CREATE TABLE webhook_subscriptions (
    id                          uuid PRIMARY KEY,
    url                         text NOT NULL,
    event_types                 text[] NOT NULL CHECK (cardinality(event_types) > 0),
    vendor_id                   text REFERENCES vendors (id),
    description                 text,
    active                      boolean NOT NULL DEFAULT true,
    disabled_reason             text,
    -- HMAC needs the key itself, so signing secrets are stored as issued (unlike API keys).
    secret                      text NOT NULL,
    -- After a rotation the previous secret keeps signing until it expires (multi-signature).
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_subscriptions_vendor_idx ON webhook_subscriptions (vendor_id, created_at, id);

-- The exact body sent for an event, stored once however many subscriptions receive it, so
-- every attempt signs and sends the same bytes.
CREATE TABLE webhook_events (
    event_id    uuid PRIMARY KEY,
    stream_id   text NOT NULL,
    version     integer NOT NULL,
    type        text NOT NULL,
    time        timestamptz NOT NULL,
    body        text NOT NULL
);

CREATE TABLE webhook_deliveries (
    id               uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    subscription_id  uuid NOT NULL REFERENCES webhook_subscriptions (id) ON DELETE CASCADE,
    event_id         uuid NOT NULL REFERENCES webhook_events (event_id),
    status           text NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'failed', 'delivered', 'dead')),
    attempts         integer NOT NULL DEFAULT 0,
    -- Failed attempts since the delivery was (re)queued: the position in the retry schedule.
    failures         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz DEFAULT now(),
    -- Set while a sender holds the delivery; next_attempt_at is then the lease's expiry, so a
    -- sender that dies mid-attempt hands the delivery to another once the lease runs out.
    lease_token      uuid,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    last_attempt_at  timestamptz,
    delivered_at     timestamptz,
    CONSTRAINT webhook_deliveries_once UNIQUE (subscription_id, event_id)
);
-- The sender's claim: due deliveries per subscription, oldest first.
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (subscription_id, next_attempt_at)
    WHERE status IN ('pending', 'failed');
-- When the next delivery falls due, across subscriptions (how long the sender may sleep).
CREATE INDEX webhook_deliveries_next_idx ON webhook_deliveries (next_attempt_at)
    WHERE status IN ('pending', 'failed');
-- The delivery log, newest first.
CREATE INDEX webhook_deliveries_log_idx ON webhook_deliveries (subscription_id, created_at DESC, id DESC);

CREATE TABLE webhook_attempts (
    delivery_id      uuid NOT NULL REFERENCES webhook_deliveries (id) ON DELETE CASCADE,
    attempt          integer NOT NULL,
    started_at       timestamptz NOT NULL,
    latency_seconds  double precision NOT NULL,
    status_code      integer,
    error            text,
    outcome          text NOT NULL CHECK (outcome IN ('delivered', 'retry', 'dead', 'disabled')),
    PRIMARY KEY (delivery_id, attempt)
);
