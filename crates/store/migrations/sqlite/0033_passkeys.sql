-- Passkeys (WebAuthn): a second factor, and a sign-in of their own. The
-- credential as the relying-party library keeps it (its public key and
-- counter; sealed, bound to its person), looked up by its credential id.
CREATE TABLE passkeys (
    id TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL,
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name TEXT NOT NULL,
    credential_id TEXT NOT NULL UNIQUE,
    passkey_sealed TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    last_used_at BIGINT
);
CREATE INDEX passkeys_user ON passkeys (tenant_id, user_id);

-- A WebAuthn ceremony under way (its challenge and what it expects), kept
-- by the server, taken once, for five minutes.
CREATE TABLE webauthn_ceremonies (
    id_hash TEXT PRIMARY KEY,
    -- `register`, `second_factor`, `step_up` or `sign_in`.
    purpose TEXT NOT NULL,
    tenant_id TEXT,
    user_id TEXT,
    -- What else it is bound to: the sign-in challenge or the session.
    bound_to TEXT,
    state_json TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX webauthn_ceremonies_expiry ON webauthn_ceremonies (expires_at);
