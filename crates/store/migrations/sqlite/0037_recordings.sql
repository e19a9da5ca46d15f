-- Recordings: a call placed with `record` is recorded by its carrier. The
-- audio, sealed under a key of its own, lives in storage under the
-- tenant's prefix; that key, sealed under the tenant's data key, lives here.
ALTER TABLE calls ADD COLUMN record BIGINT NOT NULL DEFAULT 0;
CREATE TABLE recordings (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    call_id TEXT NOT NULL,
    identity_id TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    duration_ms BIGINT NOT NULL,
    -- Bytes of the WAV file.
    size BIGINT NOT NULL,
    file_key TEXT NOT NULL
);
CREATE INDEX recordings_tenant ON recordings (tenant_id, id);
CREATE INDEX recordings_age ON recordings (tenant_id, created_at);
-- The tenant's own retention of recordings (NULL: the operator's default).
ALTER TABLE tenants ADD COLUMN retention_recordings_days INTEGER;
