-- SIP digest credentials of an identity. Only what digest needs is kept:
-- HA1 = H(username:realm:password) for MD5 and for SHA-256, each sealed
-- (AES-256-GCM, bound to its row); never the password. A username names
-- one credential on the whole platform: REGISTER finds its tenant by it.
CREATE TABLE sip_credentials (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    identity_id TEXT NOT NULL,
    username TEXT NOT NULL UNIQUE,
    realm TEXT NOT NULL,
    ha1_md5_sealed TEXT NOT NULL,
    ha1_sha256_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX sip_credentials_identity ON sip_credentials (tenant_id, identity_id);

-- Where an identity's SIP devices can be reached (RFC 3261 §10), in the
-- database so that every instance sees them. A stream contact (TCP/TLS) is
-- reachable only through the instance holding its connection.
CREATE TABLE sip_registrations (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    identity_id TEXT NOT NULL,
    credential_id TEXT NOT NULL,
    contact_uri TEXT NOT NULL,
    transport TEXT NOT NULL,
    source_addr TEXT NOT NULL,
    instance_id TEXT NOT NULL,
    call_id TEXT NOT NULL,
    cseq BIGINT NOT NULL,
    user_agent TEXT,
    expires_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    PRIMARY KEY (identity_id, contact_uri)
);
CREATE INDEX sip_registrations_tenant ON sip_registrations (tenant_id, identity_id);
CREATE INDEX sip_registrations_expiry ON sip_registrations (expires_at);
