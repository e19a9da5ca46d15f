-- A number is a tenant's to send as only once it proved control of it (a
-- code the carrier delivered to the number) or the operator vouched for
-- it. Until then several tenants may register the same number: a refusal
-- on registration told anyone whether a number was registered elsewhere,
-- and let the first comer squat it. Only proved numbers are unique on the
-- whole platform. Numbers registered before this are not proved.
-- SQLite drops a table constraint only by rebuilding the table (nothing
-- references identities by foreign key).
CREATE TABLE identities_new (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL CHECK (kind IN ('number', 'agent')),
    number TEXT NOT NULL,
    country TEXT NOT NULL,
    name TEXT NOT NULL,
    rate_per_second INTEGER,
    monthly_budget BIGINT,
    allowed_countries TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
    agent_token_hash TEXT,
    agent_token_prefix TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    operator_frozen INTEGER NOT NULL DEFAULT 0,
    tenant_frozen INTEGER NOT NULL DEFAULT 0,
    agent_token_owner_user_id TEXT,
    agent_token_key_id TEXT,
    agent_token_permissions TEXT NOT NULL DEFAULT '[]',
    agent_token_allowed_ips TEXT NOT NULL DEFAULT '[]',
    agent_token_allowed_origins TEXT NOT NULL DEFAULT '[]',
    agent_token_expires_at BIGINT,
    -- When and how control of the number was proved: `carrier` (a code)
    -- or `operator`; NULL: not proved.
    number_verified_at BIGINT,
    number_verified_by TEXT CHECK (number_verified_by IN ('carrier', 'operator')),
    CONSTRAINT identities_tenant_number_key UNIQUE (tenant_id, number),
    CONSTRAINT identities_agent_token_key UNIQUE (agent_token_hash)
);
INSERT INTO identities_new (id, tenant_id, kind, number, country, name, rate_per_second, monthly_budget,
    allowed_countries, status, agent_token_hash, agent_token_prefix, created_at, updated_at, operator_frozen,
    tenant_frozen, agent_token_owner_user_id, agent_token_key_id, agent_token_permissions, agent_token_allowed_ips,
    agent_token_allowed_origins, agent_token_expires_at)
SELECT id, tenant_id, kind, number, country, name, rate_per_second, monthly_budget,
    allowed_countries, status, agent_token_hash, agent_token_prefix, created_at, updated_at, operator_frozen,
    tenant_frozen, agent_token_owner_user_id, agent_token_key_id, agent_token_permissions, agent_token_allowed_ips,
    agent_token_allowed_origins, agent_token_expires_at
FROM identities;
DROP TABLE identities;
ALTER TABLE identities_new RENAME TO identities;
CREATE INDEX identities_tenant ON identities (tenant_id, id);
CREATE UNIQUE INDEX identities_verified_number_key ON identities (number) WHERE number_verified_at IS NOT NULL;

-- Codes that prove control, bounded per tenant and number (not per
-- identity: deleting and registering the number again resets nothing):
-- the pending code (a keyed hash, bound to the identity it proves),
-- spacing, a daily count and a lock after wrong tries.
CREATE TABLE number_verifications (
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    number TEXT NOT NULL,
    identity_id TEXT,
    code_hash TEXT,
    expires_at BIGINT NOT NULL DEFAULT 0,
    failed_attempts INTEGER NOT NULL DEFAULT 0,
    last_sent_at BIGINT NOT NULL,
    window_start BIGINT NOT NULL,
    sent_in_window INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, number)
);

-- What one phone receives and how often its codes are tried, whoever
-- asks, per day: beyond the caps codes are silently not sent and tries
-- not compared (a visible refusal would tell a tenant that others text
-- the number).
CREATE TABLE number_code_totals (
    number TEXT PRIMARY KEY,
    window_start BIGINT NOT NULL,
    codes_sent INTEGER NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0
);
