-- An agent's verified grant holds its identity's name (`GET /v1/me` is
-- answered from memory): renaming the identity tells every instance too.
DROP TRIGGER identities_credentials ON identities;
CREATE TRIGGER identities_credentials AFTER DELETE OR UPDATE OF
    status, name, agent_token_hash, agent_token_owner_user_id, agent_token_key_id, agent_token_permissions,
    agent_token_allowed_ips, agent_token_allowed_origins, agent_token_expires_at, tenant_id
  ON identities FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');
