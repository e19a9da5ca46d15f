-- Who holds a freeze on an identity: the operator, its own tenant, or
-- both. Each lifts only its own; the identity is `frozen` while either
-- holds one (a tenant cannot lift the operator's, and the operator's
-- unfreeze does not lift a freeze the tenant set on a compromised agent).
ALTER TABLE identities ADD COLUMN operator_frozen INTEGER NOT NULL DEFAULT 0;
ALTER TABLE identities ADD COLUMN tenant_frozen INTEGER NOT NULL DEFAULT 0;
UPDATE identities SET operator_frozen = 1 WHERE status = 'frozen';
