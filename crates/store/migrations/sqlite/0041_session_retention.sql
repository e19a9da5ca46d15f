-- A tenant's own retention of its ended sessions, in hours (NULL: the
-- operator's default).
ALTER TABLE tenants ADD COLUMN retention_sessions_hours INTEGER;
-- The sweeper finds a tenant's ended sessions by these.
CREATE INDEX token_families_ended ON token_families (tenant_id, expires_at);
CREATE INDEX token_families_revoked ON token_families (tenant_id, revoked_at) WHERE revoked_at IS NOT NULL;
