-- Operator accounts (docs/security.md, operators): the people who run the
-- platform sign in to /sysadmin with a password and a TOTP code, and every
-- action is audited under their id. The TOTP secret is sealed; `last_step`
-- makes each code work once; `tries` are counted before a code is compared.
CREATE TABLE operators (
    id TEXT PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    totp_sealed TEXT NOT NULL,
    last_step BIGINT NOT NULL DEFAULT 0,
    tries INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL,
    disabled_at BIGINT
);

-- An operator's short-lived session: the SHA-256 of its `op_` token.
CREATE TABLE operator_sessions (
    token_hash TEXT PRIMARY KEY,
    operator_id TEXT NOT NULL REFERENCES operators (id) ON DELETE CASCADE,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX operator_sessions_expiry ON operator_sessions (expires_at);
