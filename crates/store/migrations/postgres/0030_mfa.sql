-- Second factors (docs/security.md, second factors). A person's TOTP
-- secret is sealed (AES-256-GCM, bound to its row); `last_step` is the
-- newest step whose code was accepted, so a code works once. Wrong codes
-- are counted before they are compared (`tries`), per person, over every
-- challenge and step-up.
CREATE TABLE user_totp (
    user_id TEXT PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    secret_sealed TEXT NOT NULL,
    -- NULL until the first code confirms the enrolment.
    confirmed_at BIGINT,
    last_step BIGINT NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

-- One-time recovery codes, as keyed hashes (HMAC-SHA-256 under a server
-- key, bound to the person).
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    code_hash TEXT NOT NULL,
    used_at BIGINT,
    PRIMARY KEY (user_id, code_hash)
);

-- A sign-in that proved its first factor and waits for the second: the
-- `mfa_token` (SHA-256) names it; it works once, for a few minutes.
CREATE TABLE mfa_challenges (
    token_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    -- How the first factor was proved (`pwd`, `email`).
    first_factor TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);

-- A session remembers how it began and when it last gave a second factor,
-- so that refreshed tokens say the same.
ALTER TABLE token_families ADD COLUMN amr TEXT NOT NULL DEFAULT 'pwd';
ALTER TABLE token_families ADD COLUMN auth_time BIGINT NOT NULL DEFAULT 0;
ALTER TABLE token_families ADD COLUMN mfa_at BIGINT;

-- The tenant's rule: owners and admins must have a second factor.
ALTER TABLE tenants ADD COLUMN mfa_required INTEGER NOT NULL DEFAULT 0;

-- Every instance's credential cache hears of the rule and of enrolments
-- (migration 0020).
CREATE TRIGGER tenants_mfa_credentials AFTER UPDATE OF mfa_required ON tenants FOR EACH ROW
  WHEN (OLD.mfa_required IS DISTINCT FROM NEW.mfa_required) EXECUTE FUNCTION palisade_credentials_changed('id');
CREATE TRIGGER user_totp_credentials AFTER DELETE OR UPDATE OF confirmed_at ON user_totp
  FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');
