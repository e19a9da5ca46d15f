-- Which leaves of the log hold each tenant's events. `/v1/events` pages in
-- leaf order: a leaf is given only to a committed event, in the order the
-- integrator sees them, so a client that has read up to some leaf has seen
-- every event before it. (`seq` is drawn at insert: a transaction that
-- commits late makes a lower `seq` visible after higher ones.) Filled by
-- the database as leaves are added, whichever instance adds them.
CREATE TABLE audit_tenant_leaves (
    tenant_id TEXT NOT NULL,
    leaf_index BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, leaf_index)
);

INSERT INTO audit_tenant_leaves (tenant_id, leaf_index)
SELECT e.tenant_id, l.leaf_index FROM audit_leaves l JOIN audit_events e ON e.seq = l.event_seq
WHERE e.tenant_id IS NOT NULL;

CREATE FUNCTION palisade_audit_tenant_leaves() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_tenant_leaves (tenant_id, leaf_index)
    SELECT e.tenant_id, n.leaf_index FROM new_leaves n JOIN audit_events e ON e.seq = n.event_seq
    WHERE e.tenant_id IS NOT NULL;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_leaves_by_tenant AFTER INSERT ON audit_leaves
    REFERENCING NEW TABLE AS new_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_audit_tenant_leaves();

CREATE TRIGGER audit_tenant_leaves_append_only BEFORE UPDATE OR DELETE ON audit_tenant_leaves
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_leaves_no_truncate BEFORE TRUNCATE ON audit_tenant_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
