-- Single sign-on (docs/security.md, single sign-on). A sign-in sent to a
-- provider and not back yet: named by the SHA-256 of its `state`, bound to
-- the browser that started it (the SHA-256 of a cookie's value), with its
-- nonce and its PKCE verifier (sealed). Used once, for ten minutes.
CREATE TABLE oidc_logins (
    state_hash TEXT PRIMARY KEY,
    provider TEXT NOT NULL,
    nonce TEXT NOT NULL,
    verifier_sealed TEXT NOT NULL,
    browser_hash TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX oidc_logins_expiry ON oidc_logins (expires_at);

-- The tenant's rule: its people (owners excepted, for when the provider
-- fails) sign in with single sign-on only.
ALTER TABLE tenants ADD COLUMN sso_required INTEGER NOT NULL DEFAULT 0;
