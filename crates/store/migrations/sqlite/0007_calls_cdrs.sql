-- Calls, and how many of a tenant's calls are live (one conditional update
-- admits a call under the concurrent-call quota, whatever runs beside it).
CREATE TABLE calls (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    identity_id TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    to_country TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN (
        'queued', 'ringing', 'in_progress', 'completed', 'busy', 'failed', 'canceled')),
    error_code TEXT,
    -- What admission charged (the first minute).
    prepaid BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX calls_tenant ON calls (tenant_id, id);
CREATE INDEX calls_identity ON calls (identity_id, id);

CREATE TABLE call_slots (
    tenant_id TEXT PRIMARY KEY,
    active INTEGER NOT NULL CHECK (active >= 0)
);

-- Call detail records: one per finished call, written once, never changed.
CREATE TABLE cdrs (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    call_id TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    from_number TEXT NOT NULL,
    to_number TEXT NOT NULL,
    to_country TEXT NOT NULL,
    status TEXT NOT NULL,
    started_at BIGINT NOT NULL,
    answered_at BIGINT,
    ended_at BIGINT NOT NULL,
    duration_secs BIGINT NOT NULL,
    billed_minutes BIGINT NOT NULL,
    cost BIGINT NOT NULL,
    CONSTRAINT cdrs_call_key UNIQUE (call_id)
);
CREATE INDEX cdrs_tenant ON cdrs (tenant_id, id);
CREATE INDEX cdrs_identity ON cdrs (identity_id, id);

CREATE TRIGGER cdrs_no_update BEFORE UPDATE ON cdrs
BEGIN
    SELECT RAISE(ABORT, 'cdrs are immutable');
END;
CREATE TRIGGER cdrs_no_delete BEFORE DELETE ON cdrs
BEGIN
    SELECT RAISE(ABORT, 'cdrs are immutable');
END;
