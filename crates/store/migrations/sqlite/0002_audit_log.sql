-- The audit trail as a verifiable log (RFC 9162 style). Events are leaves
-- of a Merkle tree in the order the integrator sequenced them; signed
-- checkpoints commit to (tree size, root hash). Every table here is
-- append-only, enforced by the database itself.

-- Events waiting to be sequenced into the tree (filled by trigger).
CREATE TABLE audit_pending (
    seq BIGINT PRIMARY KEY
);

CREATE TABLE audit_leaves (
    leaf_index BIGINT PRIMARY KEY,
    event_seq BIGINT NOT NULL UNIQUE,
    leaf_hash TEXT NOT NULL
);

-- Roots of complete subtrees (level >= 1; level 0 are the leaves), kept so
-- that inclusion proofs need O(log n) reads.
CREATE TABLE audit_nodes (
    level BIGINT NOT NULL,
    node_index BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (level, node_index)
);

CREATE TABLE audit_checkpoints (
    tree_size BIGINT PRIMARY KEY,
    root_hash TEXT NOT NULL,
    ts BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL
);

-- The integrator's state: tree size and the right border ("frontier").
CREATE TABLE audit_head (
    id BIGINT PRIMARY KEY CHECK (id = 1),
    tree_size BIGINT NOT NULL,
    frontier TEXT NOT NULL
);
INSERT INTO audit_head (id, tree_size, frontier) VALUES (1, 0, '');

CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events
BEGIN
    INSERT INTO audit_pending (seq) VALUES (NEW.seq);
END;

CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;
CREATE TRIGGER audit_leaves_no_update BEFORE UPDATE ON audit_leaves
BEGIN
    SELECT RAISE(ABORT, 'audit_leaves is append-only');
END;
CREATE TRIGGER audit_leaves_no_delete BEFORE DELETE ON audit_leaves
BEGIN
    SELECT RAISE(ABORT, 'audit_leaves is append-only');
END;
CREATE TRIGGER audit_nodes_no_update BEFORE UPDATE ON audit_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_nodes is append-only');
END;
CREATE TRIGGER audit_nodes_no_delete BEFORE DELETE ON audit_nodes
BEGIN
    SELECT RAISE(ABORT, 'audit_nodes is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_update BEFORE UPDATE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
CREATE TRIGGER audit_checkpoints_no_delete BEFORE DELETE ON audit_checkpoints
BEGIN
    SELECT RAISE(ABORT, 'audit_checkpoints is append-only');
END;
