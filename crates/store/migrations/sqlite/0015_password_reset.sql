-- Password reset by email: a third purpose of one-time email tokens.
-- SQLite cannot change a CHECK constraint in place; the table is rebuilt
-- (nothing references it).
CREATE TABLE email_tokens_new (
    token_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose TEXT NOT NULL CHECK (purpose IN ('verify', 'invite', 'reset')),
    -- For sign-up: the password of the (only) sign-up request, applied when
    -- the token is verified without choosing one. NULL once the sign-up was
    -- requested again: the password must then be chosen at verification.
    password_hash TEXT,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
INSERT INTO email_tokens_new (token_hash, tenant_id, user_id, purpose, password_hash, expires_at, used_at)
    SELECT token_hash, tenant_id, user_id, purpose, password_hash, expires_at, used_at FROM email_tokens;
DROP TABLE email_tokens;
ALTER TABLE email_tokens_new RENAME TO email_tokens;
CREATE INDEX email_tokens_user_idx ON email_tokens (user_id);
