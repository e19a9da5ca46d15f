-- Every instance keeps the credentials it verified in memory. Whatever
-- changes what one of them may do (revocation, rotation, freeze, role,
-- removal, sessions, limits) tells every instance, on commit, through
-- NOTIFY: the database does it, so no write path (nor an operator's own
-- SQL) can forget to. The payload is the tenant; instances drop all of its
-- cached credentials. Identical notifications in one transaction are sent once.
CREATE FUNCTION palisade_credentials_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  PERFORM pg_notify('palisade_credentials',
    (CASE WHEN TG_OP = 'DELETE' THEN to_jsonb(OLD) ELSE to_jsonb(NEW) END) ->> TG_ARGV[0]);
  RETURN NULL;
END;
$$;

CREATE TRIGGER api_keys_credentials AFTER DELETE OR UPDATE OF
    status, revoked_at, key_hash, prev_key_hash, prev_valid_until, permissions, allowed_ips, allowed_origins,
    expires_at, owner_user_id, parent_key_id, tenant_id
  ON api_keys FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');

CREATE TRIGGER users_credentials AFTER DELETE OR UPDATE OF role, status, password_hash, tenant_id
  ON users FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');

-- `tenants::lock` sets the status to itself: not a change.
CREATE TRIGGER tenants_credentials AFTER UPDATE OF status ON tenants FOR EACH ROW
  WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION palisade_credentials_changed('id');
CREATE TRIGGER tenants_deleted_credentials AFTER DELETE ON tenants
  FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('id');

CREATE TRIGGER tenant_limits_credentials AFTER INSERT OR UPDATE OR DELETE ON tenant_limits
  FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');

CREATE TRIGGER identities_credentials AFTER DELETE OR UPDATE OF
    status, agent_token_hash, agent_token_owner_user_id, agent_token_key_id, agent_token_permissions,
    agent_token_allowed_ips, agent_token_allowed_origins, agent_token_expires_at, tenant_id
  ON identities FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');

CREATE TRIGGER token_families_credentials AFTER DELETE OR UPDATE OF revoked_at, user_id, tenant_id
  ON token_families FOR EACH ROW EXECUTE FUNCTION palisade_credentials_changed('tenant_id');
