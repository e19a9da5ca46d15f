-- Outbound webhooks. Secrets are sealed (AES-256-GCM, base64) by the
-- application before they reach the database.
CREATE TABLE webhook_endpoints (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    url TEXT NOT NULL,
    description TEXT NOT NULL,
    events TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    previous_secret_sealed TEXT,
    previous_secret_until BIGINT,
    ed25519_sealed TEXT,
    ed25519_public TEXT,
    status TEXT NOT NULL CHECK (status IN ('enabled', 'disabled')),
    disabled_reason TEXT,
    -- First failure since the last success; cleared by a success.
    failing_since BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant_id, id);

-- One row per endpoint and event type (or `*`), so an event is queued by
-- one INSERT … SELECT in the same transaction as the change it reports.
CREATE TABLE webhook_subscriptions (
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    endpoint_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, event_type, endpoint_id)
);

CREATE TABLE webhook_events (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    payload TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

-- The queue: one delivery per endpoint and event. Workers lease due rows
-- (`lease_until`), so several instances share it and a crash mid-attempt
-- only delays the delivery.
CREATE TABLE webhook_deliveries (
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    tenant_id TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts INTEGER NOT NULL,
    next_attempt_at BIGINT NOT NULL,
    lease_until BIGINT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    -- Every lookup names all three; event ids are time-ordered (UUIDv7),
    -- so the key also lists an endpoint's deliveries newest first.
    PRIMARY KEY (tenant_id, endpoint_id, event_id)
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
-- Retention: an event goes once no delivery needs it.
CREATE INDEX webhook_deliveries_event ON webhook_deliveries (event_id);

CREATE TABLE webhook_attempts (
    endpoint_id TEXT NOT NULL,
    event_id TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    tenant_id TEXT NOT NULL,
    attempted_at BIGINT NOT NULL,
    status_code INTEGER,
    latency_ms BIGINT NOT NULL,
    response_excerpt TEXT NOT NULL,
    error_class TEXT,
    outcome TEXT NOT NULL,
    PRIMARY KEY (tenant_id, endpoint_id, event_id, attempt)
);

-- Signed callbacks from carriers and payment providers, verified or not
-- (the rejected ones are kept for forensics).
CREATE TABLE inbound_callbacks (
    id TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    provider_event_id TEXT,
    verified INTEGER NOT NULL,
    failure TEXT,
    headers TEXT NOT NULL,
    payload TEXT NOT NULL,
    outcome TEXT,
    received_at BIGINT NOT NULL
);
CREATE INDEX inbound_callbacks_received ON inbound_callbacks (received_at);

-- A provider's event acts once: the top-up for a payment event id is
-- written with this row, in one transaction.
CREATE TABLE inbound_effects (
    provider TEXT NOT NULL,
    provider_event_id TEXT NOT NULL,
    callback_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (provider, provider_event_id)
);
