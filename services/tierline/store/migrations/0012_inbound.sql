-- Inbound integrations (docs/adr/0012-inbound-webhooks.md): Jira, Zendesk, GitHub and generic
-- Standard Webhooks senders drive issues through their own webhooks.

CREATE TABLE inbound_sources (
    id                          uuid PRIMARY KEY,
    name                        text NOT NULL,
    type                        text NOT NULL CHECK (type IN ('jira', 'zendesk', 'github', 'generic')),
    -- The vendor of the issues the source opens (a mapping may take it from a field instead).
    vendor_id                   text REFERENCES vendors (id),
    -- Per-source overrides of the type's default mapping (priorities, categories, statuses, fields).
    mapping                     jsonb NOT NULL DEFAULT '{}'::jsonb,
    -- Fernet tokens, sealed like webhook secrets (ADR 0007); the previous secret keeps
    -- verifying until previous_secret_expires_at after a rotation.
    secret                      text NOT NULL,
    previous_secret             text,
    previous_secret_expires_at  timestamptz,
    created_at                  timestamptz NOT NULL DEFAULT now(),
    updated_at                  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX inbound_sources_vendor_idx ON inbound_sources (vendor_id, created_at, id);

-- What arrived: one row per verified delivery id (its redeliveries change nothing), and one per
-- request whose signature failed (its claimed id proves nothing, so it claims no id).
CREATE TABLE inbound_deliveries (
    id           uuid PRIMARY KEY,
    source_id    uuid NOT NULL REFERENCES inbound_sources (id) ON DELETE CASCADE,
    delivery_id  text NOT NULL,
    verified     boolean NOT NULL,
    event        text,
    ticket_key   text,
    vendor_id    text,
    issue_id     text,
    outcome      text NOT NULL CHECK (outcome IN ('applied', 'ignored', 'failed', 'rejected')),
    commands     jsonb NOT NULL DEFAULT '[]'::jsonb,
    error        text,
    received_at  timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX inbound_deliveries_once ON inbound_deliveries (source_id, delivery_id)
    WHERE verified;
CREATE INDEX inbound_deliveries_log_idx
    ON inbound_deliveries (source_id, received_at DESC, id DESC);

-- Provenance: an event written for an inbound delivery names its source and the tool's delivery
-- id (CloudEvents extensions `inboundsource`, `inbounddelivery`); NULL for every other event.
ALTER TABLE events ADD COLUMN inbound_source uuid, ADD COLUMN inbound_delivery text;
