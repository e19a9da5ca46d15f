-- Every credential one principal mints for another answers to its minter.
-- A child key records the key that made it: it works only while every
-- key above it works (revoked, expired or frozen above: refused below).
ALTER TABLE api_keys ADD COLUMN parent_key_id TEXT;
UPDATE api_keys SET parent_key_id = created_by_id WHERE created_by_type = 'api_key';
CREATE INDEX api_keys_parent_idx ON api_keys (parent_key_id);

-- An agent token holds at most what its minter held, where and until when
-- the minter could act: the person answerable for it (its role narrows
-- it, their removal ends it), the key that minted it if any (its
-- revocation ends it), its own permissions, addresses and expiry.
ALTER TABLE identities ADD COLUMN agent_token_owner_user_id TEXT;
ALTER TABLE identities ADD COLUMN agent_token_key_id TEXT;
ALTER TABLE identities ADD COLUMN agent_token_permissions TEXT NOT NULL DEFAULT '[]';
ALTER TABLE identities ADD COLUMN agent_token_allowed_ips TEXT NOT NULL DEFAULT '[]';
ALTER TABLE identities ADD COLUMN agent_token_allowed_origins TEXT NOT NULL DEFAULT '[]';
ALTER TABLE identities ADD COLUMN agent_token_expires_at BIGINT;
-- Tokens issued before this answered to nobody and held every agent
-- permission whoever minted them: they are void and must be issued again.
UPDATE identities SET agent_token_hash = NULL, agent_token_prefix = NULL WHERE agent_token_hash IS NOT NULL;
