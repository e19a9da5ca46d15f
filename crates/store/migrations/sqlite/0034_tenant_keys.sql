-- Each tenant's data keys (envelope encryption), wrapped by the
-- key-encryption key of `kek_version`, which lives in configuration and
-- never here. The newest version seals new values; every version opens.
-- A tenant's erasure deletes its rows: what they sealed no longer opens.
CREATE TABLE tenant_keys (
    tenant_id TEXT NOT NULL,
    version INTEGER NOT NULL,
    kek_version INTEGER NOT NULL,
    wrapped TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, version)
);
CREATE INDEX tenant_keys_kek ON tenant_keys (kek_version);

-- When a tenant was erased (its keys destroyed): no key is made for it again.
ALTER TABLE tenants ADD COLUMN erased_at BIGINT;

-- The KEK versions each running instance holds (comma-separated, newest
-- last): a rotation waits until every instance has the new version, and a
-- version is retired only when no instance still wraps with it.
ALTER TABLE instances ADD COLUMN kek_versions TEXT;
