-- The row the durability barrier updates. A transaction that only takes a
-- transaction id writes no WAL before its commit record, so PostgreSQL
-- commits it without flushing; one that changes a row flushes the log up
-- to its commit record, past every commit before it.
CREATE TABLE palisade_barrier (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n BIGINT NOT NULL
);
INSERT INTO palisade_barrier (id, n) VALUES (1, 0);
