-- Which leaves of the log hold each tenant's events (see the PostgreSQL
-- migration of the same number): `/v1/events` pages in leaf order.
CREATE TABLE audit_tenant_leaves (
    tenant_id TEXT NOT NULL,
    leaf_index BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, leaf_index)
);

INSERT INTO audit_tenant_leaves (tenant_id, leaf_index)
SELECT e.tenant_id, l.leaf_index FROM audit_leaves l JOIN audit_events e ON e.seq = l.event_seq
WHERE e.tenant_id IS NOT NULL;

CREATE TRIGGER audit_leaves_by_tenant AFTER INSERT ON audit_leaves
BEGIN
    INSERT INTO audit_tenant_leaves (tenant_id, leaf_index)
    SELECT tenant_id, NEW.leaf_index FROM audit_events WHERE seq = NEW.event_seq AND tenant_id IS NOT NULL;
END;

CREATE TRIGGER audit_tenant_leaves_no_update BEFORE UPDATE ON audit_tenant_leaves
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_leaves is append-only');
END;
CREATE TRIGGER audit_tenant_leaves_no_delete BEFORE DELETE ON audit_tenant_leaves
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_leaves is append-only');
END;
