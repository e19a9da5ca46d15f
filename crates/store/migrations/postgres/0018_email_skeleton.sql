-- Email addresses are compared on a canonical form and refused when they
-- pass for a registered one (UTS #39). The skeleton of each address finds
-- its look-alikes with one indexed look-up. It is computed by the server
-- (Unicode tables, not SQL): rows from before this migration, or written
-- by an older instance during an upgrade, are filled in at start.
-- Not unique: two ASCII addresses may share a skeleton (`bob1@`, `bobl@`)
-- and still be different people.
ALTER TABLE users ADD COLUMN email_skeleton TEXT;
CREATE INDEX users_email_skeleton_idx ON users (email_skeleton);
