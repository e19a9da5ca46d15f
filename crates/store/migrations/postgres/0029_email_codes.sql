-- Sign-in codes sent by mail (docs/security.md, email codes). One row per
-- address, keyed by the SHA-256 of its canonical form; the code only as a
-- keyed hash (HMAC-SHA-256: six digits are too few for a bare hash). A try
-- is counted before the code is compared, so parallel guesses get no more
-- than `max_tries` between them.
CREATE TABLE email_codes (
    email_key TEXT PRIMARY KEY,
    -- NULL once used, expired or killed by too many wrong tries.
    code_hash TEXT,
    expires_at BIGINT NOT NULL,
    tries INTEGER NOT NULL DEFAULT 0,
    locked_until BIGINT NOT NULL DEFAULT 0,
    -- Codes sent in the current window, for the per-address limit.
    window_start BIGINT NOT NULL,
    sends INTEGER NOT NULL DEFAULT 0,
    -- Locks since the window began: each waits twice as long.
    locks INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX email_codes_expiry ON email_codes (expires_at);
