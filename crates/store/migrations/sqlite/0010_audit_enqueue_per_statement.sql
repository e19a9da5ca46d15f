-- Nothing on SQLite: it has no statement-level triggers, and its row
-- trigger is a plain insert in the same writer. PostgreSQL queues audit
-- events once per statement from here (the two dialects keep the same
-- migration numbers).
SELECT 1;
