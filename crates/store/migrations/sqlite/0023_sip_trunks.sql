-- Upstream SIP carriers, configured by the operator. The edge takes a
-- request as a trunk's when its source is in the trunk's CIDRs; towards the
-- trunk it authenticates as a UAC, which needs the password itself, so the
-- password is sealed (AES-256-GCM, AAD `sip_trunks/{id}/auth_password`),
-- never hashed. No tenant owns a trunk.
CREATE TABLE sip_trunks (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    uri TEXT NOT NULL,
    transport TEXT NOT NULL CHECK (transport IN ('udp', 'tcp', 'tls')),
    auth_username TEXT,
    auth_password_sealed TEXT,
    -- JSON array of canonical CIDRs.
    source_cidrs TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 1,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CHECK ((auth_username IS NULL) = (auth_password_sealed IS NULL))
);
