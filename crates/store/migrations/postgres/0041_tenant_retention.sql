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

CREATE TRIGGER audit_tenant_expiries_append_only BEFORE UPDATE OR DELETE ON audit_tenant_expiries
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_expiries_no_truncate BEFORE TRUNCATE ON audit_tenant_expiries
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();

-- An event row goes only once a statement covers it: the platform's, or
-- its own tenant's.
CREATE OR REPLACE FUNCTION palisade_audit_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM audit_leaves l
        WHERE l.event_seq = OLD.seq
          AND (l.leaf_index < (SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_expiries)
            OR l.leaf_index < (SELECT COALESCE(MAX(x.up_to_leaf), 0) FROM audit_tenant_expiries x
                               WHERE x.tenant_id = OLD.tenant_id))
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
