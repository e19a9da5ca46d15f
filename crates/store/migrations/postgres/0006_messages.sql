-- Outbound messages. The body is kept for the tenant to read back; the
-- audit trail never holds it.
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    identity_id TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    to_country TEXT NOT NULL,
    body TEXT NOT NULL,
    segments INTEGER NOT NULL,
    cost BIGINT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'sent', 'delivered', 'failed')),
    error_code TEXT,
    carrier_ref TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX messages_tenant ON messages (tenant_id, id);
CREATE INDEX messages_identity ON messages (identity_id, id);

-- What each identity spent per calendar month (UTC, `YYYY-MM`), kept in
-- the same transaction as the debit so the budget check is one
-- conditional update.
CREATE TABLE identity_spend (
    identity_id TEXT NOT NULL,
    month TEXT NOT NULL,
    spent BIGINT NOT NULL,
    PRIMARY KEY (identity_id, month)
);

-- Idempotency keys of POSTs that cost money: the first response is kept
-- for 24 hours and replayed for the same key and body.
CREATE TABLE idempotency_keys (
    tenant_id TEXT NOT NULL,
    idem_key TEXT NOT NULL,
    request_hash TEXT NOT NULL,
    status INTEGER NOT NULL,
    response TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, idem_key)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
