-- Nothing on SQLite: guarded lists run statement by statement in the
-- group-commit writer. PostgreSQL gets `palisade_refuse` here (the two
-- dialects keep the same migration numbers).
SELECT 1;
