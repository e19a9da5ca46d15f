-- Each tenant's events as a Merkle tree of the tenant's own (see the
-- PostgreSQL migration of the same number).
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

ALTER TABLE audit_head ADD COLUMN tenant_size BIGINT NOT NULL DEFAULT 0;

DROP TRIGGER audit_leaves_by_tenant;

CREATE TRIGGER audit_tenant_tree_no_update BEFORE UPDATE ON audit_tenant_tree
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_tree is append-only');
END;
CREATE TRIGGER audit_tenant_tree_no_delete BEFORE DELETE ON audit_tenant_tree
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_tree is append-only');
END;
CREATE TRIGGER audit_tenant_nodes_no_update BEFORE UPDATE ON audit_tenant_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_nodes is append-only');
END;
CREATE TRIGGER audit_tenant_nodes_no_delete BEFORE DELETE ON audit_tenant_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_nodes is append-only');
END;
CREATE TRIGGER audit_tenant_checkpoints_no_update BEFORE UPDATE ON audit_tenant_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_checkpoints is append-only');
END;
CREATE TRIGGER audit_tenant_checkpoints_no_delete BEFORE DELETE ON audit_tenant_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_tenant_checkpoints is append-only');
END;
