-- PostgreSQL's 0021 adds the identity's name to what announces a
-- credential change; SQLite hears of its own changes from the store.
SELECT 1;
