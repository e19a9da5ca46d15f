-- Nothing on SQLite: its group commit syncs itself. PostgreSQL gets the
-- durability barrier's row here (the two dialects keep the same migration
-- numbers).
SELECT 1;
