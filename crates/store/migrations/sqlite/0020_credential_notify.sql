-- PostgreSQL's 0020 makes the database announce credential changes to
-- every instance (NOTIFY). SQLite serves one instance, which hears of its
-- own changes from the store when they commit: nothing to add here.
SELECT 1;
