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

CREATE FUNCTION palisade_audit_enqueue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_pending (seq) VALUES (NEW.seq);
    RETURN NEW;
END
$$;
CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events
    FOR EACH ROW EXECUTE FUNCTION palisade_audit_enqueue();

CREATE FUNCTION palisade_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_events_no_truncate BEFORE TRUNCATE ON audit_events
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_leaves_append_only BEFORE UPDATE OR DELETE ON audit_leaves
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_leaves_no_truncate BEFORE TRUNCATE ON audit_leaves
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_nodes_append_only BEFORE UPDATE OR DELETE ON audit_nodes
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_nodes_no_truncate BEFORE TRUNCATE ON audit_nodes
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_checkpoints_append_only BEFORE UPDATE OR DELETE ON audit_checkpoints
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_checkpoints_no_truncate BEFORE TRUNCATE ON audit_checkpoints
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
