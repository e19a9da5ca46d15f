-- A number is a tenant's to send as only once it proved control of it (a
-- code the carrier delivered to the number) or the operator vouched for
-- it. Until then several tenants may register the same number: a refusal
-- on registration told anyone whether a number was registered elsewhere,
-- and let the first comer squat it. Only proved numbers are unique on the
-- whole platform. Numbers registered before this are not proved.
ALTER TABLE identities DROP CONSTRAINT identities_number_key;
ALTER TABLE identities ADD CONSTRAINT identities_tenant_number_key UNIQUE (tenant_id, number);
-- When and how control of the number was proved: `carrier` (a code) or
-- `operator`; NULL: not proved.
ALTER TABLE identities ADD COLUMN number_verified_at BIGINT;
ALTER TABLE identities ADD COLUMN number_verified_by TEXT CHECK (number_verified_by IN ('carrier', 'operator'));
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
