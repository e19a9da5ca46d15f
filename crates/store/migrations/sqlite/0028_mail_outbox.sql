-- Mail waiting for the SMTP relay (docs/security.md, mail): written in the
-- request that asks for it, sent by each instance's mail worker, retried
-- on a schedule, deleted once sent or given up. The body holds one-time
-- tokens, so it is sealed (AES-256-GCM, bound to its row).
CREATE TABLE mail_outbox (
    id TEXT PRIMARY KEY,
    recipient TEXT NOT NULL,
    subject TEXT NOT NULL,
    body_sealed TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at BIGINT NOT NULL,
    -- An instance sending it holds it until then.
    lease_until BIGINT NOT NULL DEFAULT 0,
    last_error TEXT,
    created_at BIGINT NOT NULL,
    -- Worthless after this (a sign-in code's mail): dropped, not sent late.
    expires_at BIGINT
);
CREATE INDEX mail_outbox_due ON mail_outbox (next_attempt_at);
