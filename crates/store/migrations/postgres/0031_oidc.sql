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

-- The providers a tenant lets its people sign in with (none unless it says).
CREATE TABLE tenant_sso_providers (
    tenant_id TEXT NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    provider TEXT NOT NULL,
    PRIMARY KEY (tenant_id, provider)
);

-- Which account at a provider is which person: set at their first sign-in
-- through it; afterwards another account with the same address is refused.
CREATE TABLE sso_links (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    tenant_id TEXT NOT NULL,
    provider TEXT NOT NULL,
    subject TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (user_id, provider),
    CONSTRAINT sso_links_subject UNIQUE (provider, subject)
);

-- The tenant's rule: its people (owners excepted, for when the provider
-- fails) sign in with single sign-on only.
ALTER TABLE tenants ADD COLUMN sso_required INTEGER NOT NULL DEFAULT 0;
