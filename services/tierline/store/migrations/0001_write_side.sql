-- Write side: streams, append-only events, idempotency, external refs, vendors, governance, API keys.

CREATE TABLE streams (
    stream_id    text PRIMARY KEY,
    stream_type  text NOT NULL,
    vendor_id    text,
    version      integer NOT NULL,
    snapshot     jsonb NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE events (
    position     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    stream_id    text NOT NULL,
    stream_type  text NOT NULL,
    version      integer NOT NULL,
    type         text NOT NULL,
    time         timestamptz NOT NULL,
    data         jsonb NOT NULL,
    traceparent  text,
    published_at timestamptz,
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, version)
);
-- The relay reads only what it has not published yet.
CREATE INDEX events_unpublished_idx ON events (position) WHERE published_at IS NULL;

CREATE FUNCTION notify_events_appended() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tierline_events', '');
    RETURN NULL;
END $$;
CREATE TRIGGER events_appended AFTER INSERT ON events
    FOR EACH STATEMENT EXECUTE FUNCTION notify_events_appended();

CREATE TABLE external_refs (
    system     text NOT NULL,
    key        text NOT NULL,
    stream_id  text NOT NULL REFERENCES streams (stream_id),
    PRIMARY KEY (system, key)
);

CREATE TABLE idempotency_keys (
    principal     text NOT NULL,
    key           text NOT NULL,
    request_hash  text NOT NULL,
    status        integer NOT NULL,
    body          jsonb,
    headers       jsonb NOT NULL DEFAULT '{}',
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (principal, key)
);

CREATE TABLE vendors (
    id          text PRIMARY KEY,
    name        text NOT NULL,
    timezone    text NOT NULL,
    calendar    jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE governance_versions (
    version     integer PRIMARY KEY,
    document    jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    id          uuid PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL CHECK (role IN ('admin', 'integration', 'vendor', 'viewer')),
    vendor_id   text REFERENCES vendors (id),
    key_hash    bytea NOT NULL UNIQUE,
    prefix      text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz,
    CHECK ((role = 'vendor') = (vendor_id IS NOT NULL))
);

-- The relay's view of the log it publishes to: when the broker's identity changes, it refills.
CREATE TABLE relay_log_identity (
    topic       text PRIMARY KEY,
    identity    text NOT NULL,
    recorded_at timestamptz NOT NULL DEFAULT now()
);

-- Consumer offsets, stored with each consumer's effects (exactly-once effect).
CREATE TABLE consumer_offsets (
    consumer    text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint NOT NULL,
    log_identity text NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
