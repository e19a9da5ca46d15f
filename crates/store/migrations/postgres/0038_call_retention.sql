-- Retention of calls and CDRs. A call past the tenant's period is soft
-- deleted (hidden, restorable by the operator) and removed after the
-- grace period. CDRs stay immutable: past the period they are hidden by
-- the tenant's mark (`cdrs_hidden_before`, restorable; each move of the
-- mark kept in `cdr_hides` with its time, so removal waits the grace
-- period from when a CDR was hidden), and a CDR row can be deleted only
-- once an append-only expiry of its tenant covers it, after its hour was
-- folded into the usage archive. An expiry never reaches past the mark.
ALTER TABLE calls ADD COLUMN deleted_at BIGINT;
CREATE INDEX calls_live_age ON calls (tenant_id, created_at) WHERE deleted_at IS NULL;
CREATE INDEX calls_deleted ON calls (tenant_id, deleted_at);
ALTER TABLE tenants ADD COLUMN retention_calls_days INTEGER;
ALTER TABLE tenants ADD COLUMN cdrs_hidden_before BIGINT;
CREATE INDEX cdrs_tenant_end ON cdrs (tenant_id, ended_at);
CREATE TABLE cdr_hides (
    tenant_id TEXT NOT NULL,
    hidden_before BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, hidden_before)
);

CREATE TABLE cdr_expiries (
    tenant_id TEXT NOT NULL,
    -- CDRs of the tenant that ended before this may be deleted.
    ended_before BIGINT NOT NULL,
    at BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, ended_before)
);
CREATE FUNCTION palisade_cdr_expiry_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.ended_before > COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = NEW.tenant_id), 0) THEN
        RAISE EXCEPTION 'a CDR expiry reaches past the hidden mark';
    END IF;
    RETURN NEW;
END
$$;
CREATE TRIGGER cdr_expiries_within_the_mark BEFORE INSERT ON cdr_expiries
    FOR EACH ROW EXECUTE FUNCTION palisade_cdr_expiry_guard();
CREATE TRIGGER cdr_expiries_append_only BEFORE UPDATE OR DELETE ON cdr_expiries
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER cdr_expiries_no_truncate BEFORE TRUNCATE ON cdr_expiries
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();

CREATE FUNCTION palisade_cdr_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND OLD.ended_at < (
        SELECT COALESCE(MAX(ended_before), 0) FROM cdr_expiries WHERE tenant_id = OLD.tenant_id
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;

DROP TRIGGER cdrs_append_only ON cdrs;
CREATE TRIGGER cdrs_append_only BEFORE UPDATE OR DELETE ON cdrs
    FOR EACH ROW EXECUTE FUNCTION palisade_cdr_guard();
