//! API keys. Only the SHA-256 of a key is stored; during a rotation's grace
//! period the previous hash is kept beside the new one.

use palisade_core::principal::SysadminProof;
use palisade_core::{ApiKeyId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ApiKeyRow {
    pub id: String,
    pub tenant_id: String,
    pub name: String,
    pub prefix: String,
    pub permissions: String,
    pub role: Option<String>,
    pub created_by_type: String,
    pub created_by_id: Option<String>,
    pub owner_user_id: Option<String>,
    pub expires_at: Option<i64>,
    pub allowed_ips: String,
    pub allowed_origins: String,
    pub status: String,
    pub revoked_at: Option<i64>,
    pub last_used_at: Option<i64>,
    pub created_at: i64,
    pub prev_valid_until: Option<i64>,
    /// The key that minted this one, if a key did: it works only while that one does.
    pub parent_key_id: Option<String>,
    /// Filled only by [`find_by_hash`], which authentication uses.
    #[sqlx(default)]
    pub tenant_status: Option<String>,
    /// Filled only by [`find_by_hash`]: the owner's current role if they are still active.
    #[sqlx(default)]
    pub owner_role: Option<String>,
    /// Filled only by [`find_by_hash`]: the tenant's abuse-control overrides.
    #[sqlx(default)]
    pub tenant_limits: Option<String>,
    /// Filled only by [`find_by_hash`]: what `/v1/me` shows of the tenant.
    #[sqlx(default)]
    pub tenant_name: Option<String>,
    /// Filled only by [`find_by_hash`]: 1 when the previous secret (in its
    /// rotation's grace period) matched, not the current one.
    #[sqlx(default)]
    pub by_previous_secret: Option<i64>,
}

const COLS: &str =
    "id, tenant_id, name, prefix, permissions, role, created_by_type, created_by_id, owner_user_id, expires_at, \
    allowed_ips, allowed_origins, status, revoked_at, last_used_at, created_at, prev_valid_until, parent_key_id";

pub struct NewApiKey<'a> {
    pub id: ApiKeyId,
    pub name: &'a str,
    pub prefix: &'a str,
    pub key_hash: &'a str,
    /// JSON array of permission names.
    pub permissions: &'a str,
    pub role: Option<&'a str>,
    pub created_by_type: &'a str,
    pub created_by_id: Option<&'a str>,
    pub owner_user_id: Option<&'a str>,
    pub parent_key_id: Option<&'a str>,
    pub expires_at: Option<i64>,
    /// JSON arrays.
    pub allowed_ips: &'a str,
    pub allowed_origins: &'a str,
    pub now: i64,
}

/// The insert as a statement for [`crate::Db::write_all`], to commit with
/// its audit event.
pub fn insert_stmt(scope: &TenantScope, k: &NewApiKey<'_>) -> crate::Stmt {
    crate::Stmt::new(
        "INSERT INTO api_keys (id, tenant_id, name, prefix, key_hash, permissions, role, created_by_type, \
         created_by_id, owner_user_id, expires_at, allowed_ips, allowed_origins, status, created_at, parent_key_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, 'active', $14, $15)",
    )
    .bind(k.id.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(k.name)
    .bind(k.prefix)
    .bind(k.key_hash)
    .bind(k.permissions)
    .bind(k.role)
    .bind(k.created_by_type)
    .bind(k.created_by_id)
    .bind(k.owner_user_id)
    .bind(k.expires_at)
    .bind(k.allowed_ips)
    .bind(k.allowed_origins)
    .bind(k.now)
    .bind(k.parent_key_id)
}

/// Authentication: finds the key by its hash (current, or previous within
/// the grace period). Tenant scope comes from the row found. On SQLite the
/// read runs on this thread (see `read.rs`): it is on every request's path.
pub async fn find_by_hash(db: &crate::Db, hash: &str, now: i64) -> Result<Option<ApiKeyRow>> {
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {COLS}, (SELECT status FROM tenants t WHERE t.id = k.tenant_id) AS tenant_status, \
               (SELECT role FROM users u WHERE u.id = k.owner_user_id AND u.tenant_id = k.tenant_id \
                  AND u.status = 'active') AS owner_role, \
               (SELECT settings FROM tenant_limits l WHERE l.tenant_id = k.tenant_id) AS tenant_limits, \
               CAST(CASE WHEN k.key_hash = $1 THEN 0 ELSE 1 END AS BIGINT) AS by_previous_secret, \
               (SELECT name FROM tenants t WHERE t.id = k.tenant_id) AS tenant_name \
             FROM api_keys k WHERE key_hash = $1 OR (prev_key_hash = $1 AND prev_valid_until > $2) LIMIT 1"
        )
    });
    if let Some(found) = db.fetch_optional_now(&SQL, &[hash.into(), now.into()]) {
        return found;
    }
    db.fetch_optional_shared(SQL.as_str(), vec![hash.into(), now.into()]).await
}

impl crate::FromSqlite for ApiKeyRow {
    /// By position (by name is a scan per column): `COLS`, then the five
    /// columns [`find_by_hash`] adds.
    fn from_sqlite(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(ApiKeyRow {
            id: r.get(0)?,
            tenant_id: r.get(1)?,
            name: r.get(2)?,
            prefix: r.get(3)?,
            permissions: r.get(4)?,
            role: r.get(5)?,
            created_by_type: r.get(6)?,
            created_by_id: r.get(7)?,
            owner_user_id: r.get(8)?,
            expires_at: r.get(9)?,
            allowed_ips: r.get(10)?,
            allowed_origins: r.get(11)?,
            status: r.get(12)?,
            revoked_at: r.get(13)?,
            last_used_at: r.get(14)?,
            created_at: r.get(15)?,
            prev_valid_until: r.get(16)?,
            parent_key_id: r.get(17)?,
            tenant_status: r.get(18)?,
            owner_role: r.get(19)?,
            tenant_limits: r.get(20)?,
            by_previous_secret: r.get(21)?,
            tenant_name: r.get(22)?,
        })
    }
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: ApiKeyId,
) -> Result<Option<ApiKeyRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM api_keys WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?)
}

pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Vec<ApiKeyRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM api_keys WHERE tenant_id = $1 ORDER BY created_at, id"))
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

/// Replaces the key's secret; the old one stays valid until `grace_until`.
/// Only a live key can be rotated.
pub async fn rotate(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: ApiKeyId,
    new_hash: &str,
    new_prefix: &str,
    grace_until: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE api_keys SET prev_key_hash = key_hash, prev_valid_until = $1, key_hash = $2, prefix = $3 \
         WHERE tenant_id = $4 AND id = $5 AND revoked_at IS NULL",
    )
    .bind(grace_until)
    .bind(new_hash)
    .bind(new_prefix)
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// Revokes the key and every key below it (minted by it, or by one of
/// those). False when no such key in the tenant.
pub async fn revoke(tx: &mut crate::Tx, scope: &TenantScope, id: ApiKeyId, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), prev_key_hash = NULL, prev_valid_until = NULL \
         WHERE tenant_id = $2 AND id = $3",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .execute(&mut **tx)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    tx.credentials_changed(&scope.tenant_id().to_string());
    sqlx::query(
        "WITH RECURSIVE below (id, depth) AS ( \
           SELECT id, 1 FROM api_keys WHERE tenant_id = $2 AND parent_key_id = $3 \
           UNION SELECT k.id, b.depth + 1 FROM api_keys k JOIN below b ON k.parent_key_id = b.id \
             WHERE k.tenant_id = $2 AND b.depth < $4) \
         UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1), prev_key_hash = NULL, prev_valid_until = NULL \
         WHERE tenant_id = $2 AND id IN (SELECT id FROM below)",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(MAX_LINEAGE)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// How many keys may stand above one (a child of a child …). Deeper
/// chains are refused at creation; a longer walk means a corrupt chain.
pub const MAX_LINEAGE: i64 = 8;

/// Whether a key and every key above it still work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lineage {
    Live,
    /// One of them is frozen by the operator.
    Frozen,
    /// One of them is revoked, expired, missing, or the chain is too long.
    Ended,
}

#[derive(sqlx::FromRow)]
struct Link {
    parent_key_id: Option<String>,
    status: String,
    revoked_at: Option<i64>,
    expires_at: Option<i64>,
    allowed_ips: String,
    allowed_origins: String,
}

/// The address and origin restrictions of a key on the way up (JSON
/// arrays): what it minted can act only where it could.
#[derive(Debug, Clone)]
pub struct Fence {
    pub allowed_ips: String,
    pub allowed_origins: String,
}

/// A key and the keys above it as stored, without the time: what a cache
/// may keep (expiry is judged at each use, by [`Chain::lineage`]).
#[derive(Debug, Clone)]
pub struct Chain {
    /// One of them is revoked or missing, or the chain is too long.
    pub broken: bool,
    /// One of them is frozen by the operator.
    pub frozen: bool,
    /// The earliest expiry among them.
    pub expires_at: Option<i64>,
    /// The fences of every key on the way (the first included).
    pub fences: Vec<Fence>,
}

impl Chain {
    pub fn lineage(&self, now: i64) -> Lineage {
        if self.broken || self.expires_at.is_some_and(|e| e <= now) {
            Lineage::Ended
        } else if self.frozen {
            Lineage::Frozen
        } else {
            Lineage::Live
        }
    }

    /// Roughly what it occupies in memory.
    pub fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self
                .fences
                .iter()
                .map(|f| std::mem::size_of::<Fence>() + f.allowed_ips.len() + f.allowed_origins.len())
                .sum::<usize>()
    }
}

/// Walks from `id` up through the keys that minted it.
pub async fn chain<'c, E>(ex: E, scope: &TenantScope, id: ApiKeyId) -> Result<Chain>
where
    E: Executor<'c, Database = Any> + Copy,
{
    let mut next = Some(id.to_string());
    let mut chain = Chain { broken: false, frozen: false, expires_at: None, fences: Vec::new() };
    // The key, up to MAX_LINEAGE above it, and the look that finds no more.
    for _ in 0..MAX_LINEAGE + 2 {
        let Some(id) = next else { return Ok(chain) };
        let link: Option<Link> = sqlx::query_as(
            "SELECT parent_key_id, status, revoked_at, expires_at, allowed_ips, allowed_origins \
             FROM api_keys WHERE tenant_id = $1 AND id = $2",
        )
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?;
        let Some(link) = link.filter(|l| l.revoked_at.is_none()) else {
            chain.broken = true;
            return Ok(chain);
        };
        chain.frozen |= link.status != "active";
        chain.expires_at = match (chain.expires_at, link.expires_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        next = link.parent_key_id;
        chain.fences.push(Fence { allowed_ips: link.allowed_ips, allowed_origins: link.allowed_origins });
    }
    chain.broken = true;
    Ok(chain)
}

/// Whether `ancestor` stands above `id` (minted it, or minted one that did).
pub async fn is_below<'c, E>(ex: E, scope: &TenantScope, id: ApiKeyId, ancestor: ApiKeyId) -> Result<bool>
where
    E: Executor<'c, Database = Any> + Copy,
{
    let mut next = parent_of(ex, scope, &id.to_string()).await?;
    for _ in 0..MAX_LINEAGE {
        match next {
            Some(p) if p == ancestor.to_string() => return Ok(true),
            Some(p) => next = parent_of(ex, scope, &p).await?,
            None => return Ok(false),
        }
    }
    Ok(false)
}

async fn parent_of<'c, E>(ex: E, scope: &TenantScope, id: &str) -> Result<Option<String>>
where
    E: Executor<'c, Database = Any>,
{
    Ok(sqlx::query_scalar::<_, Option<String>>("SELECT parent_key_id FROM api_keys WHERE tenant_id = $1 AND id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?
        .flatten())
}

/// How many keys stand above this one.
pub async fn depth<'c, E>(ex: E, scope: &TenantScope, id: ApiKeyId) -> Result<i64>
where
    E: Executor<'c, Database = Any> + Copy,
{
    let mut next = Some(id.to_string());
    let mut depth = -1;
    while let Some(id) = next {
        depth += 1;
        if depth > MAX_LINEAGE {
            break;
        }
        next = parent_of(ex, scope, &id).await?;
    }
    Ok(depth)
}

/// Kill-switch; the operator names the key by id alone. Returns the tenant.
pub async fn set_status(
    tx: &mut crate::Tx,
    _proof: &SysadminProof,
    id: ApiKeyId,
    status: &str,
) -> Result<Option<String>> {
    let tenant: Option<String> =
        sqlx::query_scalar("UPDATE api_keys SET status = $1 WHERE id = $2 RETURNING tenant_id")
            .bind(status)
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    if let Some(t) = &tenant {
        tx.credentials_changed(t);
    }
    Ok(tenant)
}

/// Records use, at most once a minute per key so reads stay reads.
pub async fn touch<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: ApiKeyId,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE api_keys SET last_used_at = $1 \
         WHERE tenant_id = $2 AND id = $3 AND (last_used_at IS NULL OR last_used_at < $4)",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(now - 60_000)
    .execute(ex)
    .await?;
    Ok(())
}
