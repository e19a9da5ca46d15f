-- Retention: signed statements that records of leaves [0, up_to_leaf) may
-- be removed. The leaves (hashes only) stay, so the tree still verifies;
-- the database lets an event row go only once such a statement covers it.
CREATE TABLE audit_expiries (
    up_to_leaf BIGINT PRIMARY KEY,
    ts BIGINT NOT NULL,
    body TEXT NOT NULL,
    signature TEXT NOT NULL,
    key_id TEXT NOT NULL
);

DROP TRIGGER audit_events_no_delete;
CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events
WHEN NOT EXISTS (
    SELECT 1 FROM audit_leaves l
    WHERE l.event_seq = OLD.seq
      AND l.leaf_index < (SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_expiries)
)
BEGIN
    SELECT RAISE(ABORT, 'audit_events is append-only');
END;

CREATE TRIGGER audit_expiries_no_update BEFORE UPDATE ON audit_expiries
BEGIN
    SELECT RAISE(ABORT, 'audit_expiries is append-only');
END;
CREATE TRIGGER audit_expiries_no_delete BEFORE DELETE ON audit_expiries
BEGIN
    SELECT RAISE(ABORT, 'audit_expiries is append-only');
END;
