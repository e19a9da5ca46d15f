-- Identities: the phone numbers and agent identities a tenant sends and
-- calls as, each with its spending policy.
CREATE TABLE identities (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    kind TEXT NOT NULL CHECK (kind IN ('number', 'agent')),
    -- E.164; a number belongs to one identity on the whole platform.
    number TEXT NOT NULL,
    country TEXT NOT NULL,
    name TEXT NOT NULL,
    rate_per_second INTEGER,
    monthly_budget BIGINT,
    -- JSON array of ISO 3166-1 alpha-2 codes; empty: every country.
    allowed_countries TEXT NOT NULL DEFAULT '[]',
    status TEXT NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'frozen')),
    -- SHA-256 of the identity's one agent token, if issued.
    agent_token_hash TEXT,
    agent_token_prefix TEXT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    CONSTRAINT identities_number_key UNIQUE (number),
    CONSTRAINT identities_agent_token_key UNIQUE (agent_token_hash)
);
CREATE INDEX identities_tenant ON identities (tenant_id, id);

-- Credits, in integer minor units. The CHECK makes a debit that would go
-- below zero fail in the database, whatever the code above it does.
CREATE TABLE balances (
    tenant_id TEXT PRIMARY KEY REFERENCES tenants(id),
    balance BIGINT NOT NULL DEFAULT 0 CHECK (balance >= 0),
    updated_at BIGINT NOT NULL
);

-- Every change of a balance, for usage and reconciliation.
CREATE TABLE credit_ledger (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    amount BIGINT NOT NULL,
    reason TEXT NOT NULL,
    reference TEXT,
    created_at BIGINT NOT NULL
);
CREATE INDEX credit_ledger_tenant ON credit_ledger (tenant_id, created_at);
