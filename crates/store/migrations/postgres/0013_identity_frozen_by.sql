-- Who froze an identity: the operator ('sysadmin') or its own tenant
-- ('tenant'). A tenant may lift only its own freeze, never the operator's.
ALTER TABLE identities ADD COLUMN frozen_by TEXT;
UPDATE identities SET frozen_by = 'sysadmin' WHERE status = 'frozen';
