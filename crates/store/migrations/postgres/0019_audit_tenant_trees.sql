-- Each tenant's events as a Merkle tree of the tenant's own, so that what a
-- tenant sees (its events' `seq`, proofs, `tree_size`) counts its own
-- events only and reveals nothing of the platform's activity. A tenant's
-- tree holds its events in the log's order; its leaf `i` is the event with
-- tenant sequence number `i + 1`. The integrator places every leaf of the
-- log in its tenant's tree and signs a checkpoint of each tree it grows
-- (origin `<audit.origin>/tenants/<tenant id>`), in the same atomic write
-- as the leaves of the log.
CREATE TABLE audit_tenant_tree (
    tenant_id TEXT NOT NULL,
    tenant_index BIGINT NOT NULL,
    leaf_index BIGINT NOT NULL UNIQUE,
    leaf_hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, tenant_index)
);

CREATE TABLE audit_tenant_nodes (
    tenant_id TEXT NOT NULL,
    level BIGINT NOT NULL,
    node_index BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (tenant_id, level, node_index)
);

CREATE TABLE audit_tenant_heads (
    tenant_id TEXT PRIMARY KEY,
    tree_size BIGINT NOT NULL,
    frontier TEXT NOT NULL
);

CREATE TABLE audit_tenant_checkpoints (
    tenant_id TEXT NOT NULL,
    tree_size BIGINT NOT NULL,
    root_hash TEXT NOT NULL,
    ts BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL,
    PRIMARY KEY (tenant_id, tree_size)
);

-- How many leaves of the log are placed in tenant trees: the leaves of
-- logs written before this migration are placed by the integrator, in
-- order, before it sequences anything new.
ALTER TABLE audit_head ADD COLUMN tenant_size BIGINT NOT NULL DEFAULT 0;

-- The tenant trees replace this index for reading; it is kept, no longer filled.
DROP TRIGGER audit_leaves_by_tenant ON audit_leaves;
DROP FUNCTION palisade_audit_tenant_leaves();

CREATE TRIGGER audit_tenant_tree_append_only BEFORE UPDATE OR DELETE ON audit_tenant_tree
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_tree_no_truncate BEFORE TRUNCATE ON audit_tenant_tree
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_nodes_append_only BEFORE UPDATE OR DELETE ON audit_tenant_nodes
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_nodes_no_truncate BEFORE TRUNCATE ON audit_tenant_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_tenant_checkpoints
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_tenant_checkpoints_no_truncate BEFORE TRUNCATE ON audit_tenant_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
