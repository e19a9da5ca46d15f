-- A tenant's own retention of its ended sessions (hours) and of its audit
-- records (days); NULL: the operator's default.
ALTER TABLE tenants ADD COLUMN retention_sessions_hours INTEGER;
ALTER TABLE tenants ADD COLUMN retention_audit_days INTEGER;
-- The sweeper finds a tenant's ended sessions by these.
CREATE INDEX token_families_ended ON token_families (tenant_id, expires_at);
CREATE INDEX token_families_revoked ON token_families (tenant_id, revoked_at) WHERE revoked_at IS NOT NULL;

-- Signed statements that one tenant's records among leaves [0, up_to_leaf)
-- may be removed (its period is shorter than the platform's). The leaves
-- and the tenant's tree stay, so both still verify.
CREATE TABLE audit_tenant_expiries (
    tenant_id TEXT NOT NULL,
    up_to_leaf BIGINT NOT NULL,
    ts BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, up_to_leaf)
);

CREATE TRIGGER audit_tenant_expiries_no_update BEFORE UPDATE ON audit_tenant_expiries
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_expiries is append-only');
END;
CREATE TRIGGER audit_tenant_expiries_no_delete BEFORE DELETE ON audit_tenant_expiries
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_expiries is append-only');
END;

-- An event row goes only once a statement covers it: the platform's, or
-- its own tenant's.
DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_leaves l
    WHERE l.event_seq = OLD.seq
      AND (l.leaf_index < (SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_expiries)
        OR l.leaf_index < (SELECT COALESCE(MAX(x.up_to_leaf), 0) FROM audit_tenant_expiries x
                           WHERE x.tenant_id = OLD.tenant_id))
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
