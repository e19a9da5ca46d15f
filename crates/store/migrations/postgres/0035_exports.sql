-- Data exports (GDPR): a tenant's data, or one person's, as a tar archive
-- of JSON lines with a manifest and checksums. The archive is sealed under
-- the tenant's data key and kept until `expires_at`.
CREATE TABLE exports (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    -- `tenant`, or `user` (then `user_id` is the person).
    subject TEXT NOT NULL CHECK (subject IN ('tenant', 'user')),
    user_id TEXT,
    requested_by TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'ready', 'failed')),
    -- A worker holds a pending export until then (another takes it after).
    claimed_until BIGINT,
    -- The claiming worker's token: only it records the outcome.
    claim TEXT,
    archive_sealed TEXT,
    size BIGINT,
    sha256 TEXT,
    error TEXT,
    created_at BIGINT NOT NULL,
    finished_at BIGINT,
    expires_at BIGINT NOT NULL
);
CREATE INDEX exports_tenant ON exports (tenant_id, created_at);
CREATE INDEX exports_pending ON exports (status, claimed_until);
