-- Single-use tickets that open a WebSocket stream from a browser (which
-- cannot send an Authorization header on one). Only the ticket's SHA-256
-- is kept. `minter` names the credential that minted it without its
-- secret (a key's or agent token's hash, as their own tables keep it, or a
-- person's session), so that the credential is checked again at use.
CREATE TABLE stream_tickets (
    ticket_hash TEXT PRIMARY KEY,
    tenant_id TEXT NOT NULL REFERENCES tenants(id),
    resource TEXT NOT NULL,
    -- The Origin the ticket may be used from; NULL: a client sending none.
    origin TEXT,
    minter TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT
);
CREATE INDEX stream_tickets_expiry ON stream_tickets (expires_at);
