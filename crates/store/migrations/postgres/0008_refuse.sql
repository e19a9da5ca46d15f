-- A guarded atomic list runs on PostgreSQL as one statement (see
-- store/src/write.rs); a guard that does not hold aborts it through this
-- function, which raises the guard's reason with SQLSTATE PA001.
CREATE FUNCTION palisade_refuse(reason TEXT) RETURNS BIGINT
LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'PA001', MESSAGE = reason;
END
$$;
