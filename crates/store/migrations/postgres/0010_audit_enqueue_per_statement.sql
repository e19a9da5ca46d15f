-- Events are queued for the audit tree once per INSERT statement instead of
-- once per row: a merged write inserts dozens of events at once, and a
-- PL/pgSQL call per row cost more than the rows themselves.
DROP TRIGGER audit_events_enqueue ON audit_events;

CREATE FUNCTION palisade_audit_enqueue_all() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO audit_pending (seq) SELECT seq FROM new_events;
    RETURN NULL;
END
$$;
CREATE TRIGGER audit_events_enqueue AFTER INSERT ON audit_events
    REFERENCING NEW TABLE AS new_events
    FOR EACH STATEMENT EXECUTE FUNCTION palisade_audit_enqueue_all();

DROP FUNCTION palisade_audit_enqueue();
