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

CREATE FUNCTION palisade_audit_event_guard() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND EXISTS (
        SELECT 1 FROM audit_leaves l
        WHERE l.event_seq = OLD.seq
          AND l.leaf_index < (SELECT COALESCE(MAX(up_to_leaf), 0) FROM audit_expiries)
    ) THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;

DROP TRIGGER audit_events_append_only ON audit_events;
CREATE TRIGGER audit_events_append_only BEFORE UPDATE OR DELETE ON audit_events
    FOR EACH ROW EXECUTE FUNCTION palisade_audit_event_guard();

CREATE TRIGGER audit_expiries_append_only BEFORE UPDATE OR DELETE ON audit_expiries
    FOR EACH ROW EXECUTE FUNCTION palisade_append_only();
CREATE TRIGGER audit_expiries_no_truncate BEFORE TRUNCATE ON audit_expiries
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_append_only();
