//! Identities: a tenant's phone numbers and agent identities, each with
//! its sending policy and at most one agent token.

use palisade_core::principal::SysadminProof;
use palisade_core::{IdentityId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdentityRow {
    pub id: String,
    pub tenant_id: String,
    pub kind: String,
    pub number: String,
    pub country: String,
    pub name: String,
    pub rate_per_second: Option<i64>,
    pub monthly_budget: Option<i64>,
    /// JSON array of ISO 3166-1 alpha-2 codes.
    pub allowed_countries: String,
    pub status: String,
    pub agent_token_prefix: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Whether the operator holds a freeze on it (1) or not (0).
    pub operator_frozen: i64,
    /// Whether its tenant holds a freeze on it (1) or not (0).
    pub tenant_frozen: i64,
    /// When control of the number was proved, and how (`carrier`: a code
    /// it delivered; `operator`: the operator vouched); none: not yet.
    pub number_verified_at: Option<i64>,
    pub number_verified_by: Option<String>,
    /// Media policy of its SIP calls: `required`, `preferred` or `off`.
    pub srtp: String,
}

const COLS: &str = "id, tenant_id, kind, number, country, name, rate_per_second, monthly_budget, \
    allowed_countries, status, agent_token_prefix, created_at, updated_at, operator_frozen, tenant_frozen, \
    number_verified_at, number_verified_by, srtp";

/// The policy fields, as stored.
pub struct Policy<'a> {
    pub rate_per_second: Option<i64>,
    pub monthly_budget: Option<i64>,
    pub allowed_countries: &'a str,
    pub srtp: &'a str,
}

pub struct NewIdentity<'a> {
    pub id: IdentityId,
    pub kind: &'a str,
    pub number: &'a str,
    pub country: &'a str,
    pub name: &'a str,
    pub policy: Policy<'a>,
    pub now: i64,
}

/// Fails with a unique violation when the tenant has the number already.
/// Other tenants may have registered it too: only a verified number is
/// unique on the platform (see [`verify_number`]).
pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, i: &NewIdentity<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO identities (id, tenant_id, kind, number, country, name, rate_per_second, monthly_budget, \
         allowed_countries, status, created_at, updated_at, srtp) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'active', $10, $10, $11)",
    )
    .bind(i.id.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(i.kind)
    .bind(i.number)
    .bind(i.country)
    .bind(i.name)
    .bind(i.policy.rate_per_second)
    .bind(i.policy.monthly_budget)
    .bind(i.policy.allowed_countries)
    .bind(i.now)
    .bind(i.policy.srtp)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Vec<IdentityRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM identities WHERE tenant_id = $1 ORDER BY id"))
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: IdentityId,
) -> Result<Option<IdentityRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM identities WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?)
}

/// Replaces name and policy; false when no such identity in the tenant.
pub async fn update(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: IdentityId,
    name: &str,
    policy: &Policy<'_>,
    now: i64,
) -> Result<bool> {
    // The name apart, and only when it changes: an agent's `/v1/me` shows it
    // from the verified grant, so a rename drops the tenant's cached
    // credentials (here and, by migration 0021's trigger, everywhere); a
    // policy edit must not.
    let renamed = sqlx::query("UPDATE identities SET name = $3 WHERE tenant_id = $1 AND id = $2 AND name <> $3")
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .bind(name)
        .execute(&mut **tx)
        .await?;
    if renamed.rows_affected() == 1 {
        tx.credentials_changed(&scope.tenant_id().to_string());
    }
    let r = sqlx::query(
        "UPDATE identities SET rate_per_second = $3, monthly_budget = $4, allowed_countries = $5, updated_at = $6, \
         srtp = $7 WHERE tenant_id = $1 AND id = $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(policy.rate_per_second)
    .bind(policy.monthly_budget)
    .bind(policy.allowed_countries)
    .bind(now)
    .bind(policy.srtp)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Deletes an active identity: false if it is missing or frozen (deleting
/// and registering the number again must not lift a freeze, even one set
/// while the delete runs).
pub async fn delete(tx: &mut crate::Tx, scope: &TenantScope, id: IdentityId) -> Result<bool> {
    let r = sqlx::query("DELETE FROM identities WHERE tenant_id = $1 AND id = $2 AND status = 'active'")
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    if r.rows_affected() == 1 {
        crate::sip::forget_identity(tx, scope, id).await?;
    }
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// A new agent token: its hash, and what it answers to and may do.
pub struct NewAgentToken<'a> {
    pub hash: &'a str,
    pub prefix: &'a str,
    /// The person answerable for it.
    pub owner_user_id: Option<&'a str>,
    /// The key that minted it, if a key did.
    pub key_id: Option<&'a str>,
    /// JSON arrays.
    pub permissions: &'a str,
    pub allowed_ips: &'a str,
    pub allowed_origins: &'a str,
    pub expires_at: Option<i64>,
}

/// Stores a new agent token, replacing (and so revoking) the previous
/// one, `replaces` (its hash; none if there was none): false when the
/// identity is not in the tenant or its token changed since it was read.
pub async fn set_agent_token(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: IdentityId,
    token: &NewAgentToken<'_>,
    replaces: Option<&str>,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE identities SET agent_token_hash = $3, agent_token_prefix = $4, updated_at = $5, \
           agent_token_owner_user_id = $6, agent_token_key_id = $7, agent_token_permissions = $8, \
           agent_token_allowed_ips = $9, agent_token_allowed_origins = $10, agent_token_expires_at = $11 \
         WHERE tenant_id = $1 AND id = $2 AND COALESCE(agent_token_hash, '') = $12",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(token.hash)
    .bind(token.prefix)
    .bind(now)
    .bind(token.owner_user_id)
    .bind(token.key_id)
    .bind(token.permissions)
    .bind(token.allowed_ips)
    .bind(token.allowed_origins)
    .bind(token.expires_at)
    .bind(replaces.unwrap_or(""))
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// The operator's freeze, set or lifted; a freeze its tenant holds stays.
/// The identity's tenant and resulting status, if it exists.
pub async fn set_status(
    tx: &mut crate::Tx,
    _proof: &SysadminProof,
    id: IdentityId,
    frozen: bool,
    now: i64,
) -> Result<Option<(String, String)>> {
    let r: Option<(String, String)> = sqlx::query_as(
        "UPDATE identities SET operator_frozen = $1, updated_at = $3, \
           status = CASE WHEN $1 = 1 OR tenant_frozen = 1 THEN 'frozen' ELSE 'active' END \
         WHERE id = $2 RETURNING tenant_id, status",
    )
    .bind(i64::from(frozen))
    .bind(id.to_string())
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((tenant, _)) = &r {
        tx.credentials_changed(tenant);
    }
    Ok(r)
}

/// The tenant's own freeze, set or lifted; the operator's stays. Lifting
/// is refused (false) while the operator holds one; a frozen identity
/// with neither mark was frozen by the operator before the marks existed.
/// False also if there is no such identity.
pub async fn set_own_status(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: IdentityId,
    frozen: bool,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE identities SET tenant_frozen = $3, updated_at = $4, \
           status = CASE WHEN $3 = 1 OR operator_frozen = 1 THEN 'frozen' ELSE 'active' END \
         WHERE tenant_id = $1 AND id = $2 \
           AND ($3 = 1 OR (operator_frozen = 0 AND (status = 'active' OR tenant_frozen = 1)))",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(i64::from(frozen))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// How control of a number was proved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifiedBy {
    /// The tenant entered the code the carrier delivered to the number.
    Carrier,
    /// The operator assigned the number to the tenant.
    Operator,
}

impl VerifiedBy {
    pub fn as_str(self) -> &'static str {
        match self {
            VerifiedBy::Carrier => "carrier",
            VerifiedBy::Operator => "operator",
        }
    }
}

/// Marks the tenant's identity's number verified. Fails with a unique
/// violation when another identity holds the number verified; false when
/// the identity is gone (or, verified by a code, frozen meanwhile).
pub async fn verify_number<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: IdentityId,
    by: VerifiedBy,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE identities SET number_verified_at = COALESCE(number_verified_at, $3), \
           number_verified_by = COALESCE(number_verified_by, $4), updated_at = $3 \
         WHERE tenant_id = $1 AND id = $2 AND (status = 'active' OR $4 = 'operator')",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(now)
    .bind(by.as_str())
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The tenant an identity belongs to, for the operator.
pub async fn tenant_of<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    id: IdentityId,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT tenant_id FROM identities WHERE id = $1")
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?)
}

/// What the identity's current agent token holds, if it has one.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentTokenBounds {
    /// Its hash, to replace exactly this token.
    pub hash: String,
    /// JSON arrays.
    pub permissions: String,
    pub allowed_ips: String,
    pub allowed_origins: String,
    pub expires_at: Option<i64>,
}

pub async fn agent_token_bounds<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: IdentityId,
) -> Result<Option<AgentTokenBounds>> {
    Ok(sqlx::query_as(
        "SELECT agent_token_hash AS hash, agent_token_permissions AS permissions, agent_token_allowed_ips AS allowed_ips, \
           agent_token_allowed_origins AS allowed_origins, agent_token_expires_at AS expires_at \
         FROM identities WHERE tenant_id = $1 AND id = $2 AND agent_token_hash IS NOT NULL",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?)
}

/// What authentication needs about an agent token and its identity.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub tenant_name: String,
    pub status: String,
    pub tenant_status: String,
    pub tenant_limits: Option<String>,
    pub owner_user_id: Option<String>,
    /// The answerable person's current role, if they are still active.
    pub owner_role: Option<String>,
    pub key_id: Option<String>,
    /// JSON arrays.
    pub permissions: String,
    pub allowed_ips: String,
    pub allowed_origins: String,
    pub expires_at: Option<i64>,
}

/// The identity an agent token (by its SHA-256) acts as.
pub async fn find_by_agent_token<'c>(ex: impl Executor<'c, Database = Any>, hash: &str) -> Result<Option<AgentRow>> {
    Ok(sqlx::query_as(
        "SELECT i.id, i.tenant_id, i.name, t.name AS tenant_name, i.status, t.status AS tenant_status, \
           (SELECT settings FROM tenant_limits l WHERE l.tenant_id = i.tenant_id) AS tenant_limits, \
           i.agent_token_owner_user_id AS owner_user_id, \
           (SELECT role FROM users u WHERE u.id = i.agent_token_owner_user_id AND u.tenant_id = i.tenant_id \
              AND u.status = 'active') AS owner_role, \
           i.agent_token_key_id AS key_id, i.agent_token_permissions AS permissions, \
           i.agent_token_allowed_ips AS allowed_ips, i.agent_token_allowed_origins AS allowed_origins, \
           i.agent_token_expires_at AS expires_at \
         FROM identities i JOIN tenants t ON t.id = i.tenant_id WHERE i.agent_token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(ex)
    .await?)
}

/// The tenant's identity with this number.
/// The identity a send names (its id or its number), read on this thread
/// on SQLite (see `read.rs`): it is on every send's path.
pub async fn find_sender(db: &crate::Db, scope: &TenantScope, from: &str) -> Result<Option<IdentityRow>> {
    static BY_ID: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {COLS} FROM identities WHERE tenant_id = $1 AND id = $2"));
    static BY_NUMBER: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| format!("SELECT {COLS} FROM identities WHERE tenant_id = $1 AND number = $2"));
    let (sql, key) = match <IdentityId as std::str::FromStr>::from_str(from) {
        Ok(id) => (&*BY_ID, id.to_string()),
        Err(_) => (&*BY_NUMBER, from.to_owned()),
    };
    let tenant = scope.tenant_id().to_string();
    if let Some(found) = db.fetch_optional_now(sql, &[tenant.as_str().into(), key.as_str().into()]) {
        return found;
    }
    db.fetch_optional_shared(sql.as_str(), vec![tenant.into(), key.into()]).await
}

impl crate::FromSqlite for IdentityRow {
    /// By position (by name is a scan per column), in `COLS` order.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(IdentityRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            kind: r.get(2)?,
            number: r.get(3)?,
            country: r.get(4)?,
            name: r.get(5)?,
            rate_per_second: r.get(6)?,
            monthly_budget: r.get(7)?,
            allowed_countries: r.get(8)?,
            status: r.get(9)?,
            agent_token_prefix: r.get(10)?,
            created_at: r.get(11)?,
            updated_at: r.get(12)?,
            operator_frozen: r.get(13)?,
            tenant_frozen: r.get(14)?,
            number_verified_at: r.get(15)?,
            number_verified_by: r.get(16)?,
            srtp: r.get(17)?,
        })
    }
}
