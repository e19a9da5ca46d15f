-- A phone number's erasure masks it (`…1234`) in the tenant's CDRs too.
-- CDRs stay immutable otherwise: the only update allowed replaces a number
-- by its own mask and changes nothing else (the whole row is compared, so
-- a new column is covered).
CREATE INDEX cdrs_to_number ON cdrs (tenant_id, to_number);
CREATE INDEX cdrs_from_number ON cdrs (tenant_id, from_number);

CREATE OR REPLACE FUNCTION palisade_cdr_guard() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    kept cdrs;
BEGIN
    IF TG_OP = 'DELETE' AND OLD.ended_at < (
        SELECT COALESCE(MAX(ended_before), 0) FROM cdr_expiries WHERE tenant_id = OLD.tenant_id
    ) THEN
        RETURN OLD;
    END IF;
    IF TG_OP = 'UPDATE' THEN
        kept := OLD;
        kept.to_number := NEW.to_number;
        kept.from_number := NEW.from_number;
        IF kept IS NOT DISTINCT FROM NEW
            AND (NEW.to_number = OLD.to_number OR NEW.to_number = '…' || right(OLD.to_number, 4))
            AND (NEW.from_number = OLD.from_number OR NEW.from_number = '…' || right(OLD.from_number, 4))
        THEN
            RETURN NEW;
        END IF;
    END IF;
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME;
END
$$;
