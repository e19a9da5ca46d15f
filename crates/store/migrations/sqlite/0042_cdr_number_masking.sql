-- A phone number's erasure masks it (`…1234`) in the tenant's CDRs too.
-- CDRs stay immutable otherwise: the only update allowed replaces a number
-- by its own mask and changes nothing else (a new CDR column must be
-- added to this list; a test compares it with the table).
CREATE INDEX cdrs_to_number ON cdrs (tenant_id, to_number);
CREATE INDEX cdrs_from_number ON cdrs (tenant_id, from_number);

DROP TRIGGER cdrs_no_update;
CREATE TRIGGER cdrs_no_update BEFORE UPDATE ON cdrs
WHEN NOT (
    (NEW.to_number IS OLD.to_number OR NEW.to_number = '…' || substr(OLD.to_number, -4))
    AND (NEW.from_number IS OLD.from_number OR NEW.from_number = '…' || substr(OLD.from_number, -4))
    AND NEW.id IS OLD.id AND NEW.tenant_id IS OLD.tenant_id AND NEW.call_id IS OLD.call_id
    AND NEW.identity_id IS OLD.identity_id AND NEW.to_country IS OLD.to_country
    AND NEW.status IS OLD.status AND NEW.started_at IS OLD.started_at
    AND NEW.answered_at IS OLD.answered_at AND NEW.ended_at IS OLD.ended_at
    AND NEW.duration_secs IS OLD.duration_secs AND NEW.billed_minutes IS OLD.billed_minutes
    AND NEW.cost IS OLD.cost AND NEW.media IS OLD.media AND NEW.direction IS OLD.direction
    AND NEW.verstat IS OLD.verstat AND NEW.verstat_reason IS OLD.verstat_reason
    AND NEW.attestation IS OLD.attestation
)
BEGIN
    SELECT RAISE(ABORT, 'cdrs are immutable');
END;
