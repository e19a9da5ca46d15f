//! Tenants' data keys as stored: wrapped by a key-encryption key that is
//! not here (see `palisade_seal::envelope`). Unwrapping and caching are the
//! keyring's (`palisade-keys`); this module only reads and writes rows.

use palisade_core::principal::SysadminProof;
use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KeyRow {
    pub tenant_id: String,
    pub version: i64,
    pub kek_version: i64,
    /// Base64 of the wrapped key.
    pub wrapped: String,
    pub created_at: i64,
}

const COLS: &str = "tenant_id, version, kek_version, wrapped, created_at";

/// The tenant's keys, oldest version first.
pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Vec<KeyRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM tenant_keys WHERE tenant_id = $1 ORDER BY version"))
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

/// Adds version `version` of the tenant's key unless it exists or the
/// tenant is gone or erased (an erased tenant never gets a key again).
/// True when this call added it; when two instances race, one wins and
/// both then read the winner's.
pub async fn add<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    version: i64,
    kek_version: i64,
    wrapped: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO tenant_keys (tenant_id, version, kek_version, wrapped, created_at) \
         SELECT id, $2, $3, $4, $5 FROM tenants WHERE id = $1 AND erased_at IS NULL \
         ON CONFLICT (tenant_id, version) DO NOTHING",
    )
    .bind(scope.tenant_id().to_string())
    .bind(version)
    .bind(kek_version)
    .bind(wrapped)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Every tenant's keys wrapped under a KEK version other than `newest`
/// (a rotation's work), at most `limit`.
pub async fn wrapped_under_older<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    newest: i64,
    limit: i64,
) -> Result<Vec<KeyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM tenant_keys WHERE kek_version <> $1 ORDER BY tenant_id, version LIMIT $2"
    ))
    .bind(newest)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// The KEK versions keys are wrapped under, with how many each.
pub async fn kek_versions<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
) -> Result<Vec<(i64, i64)>> {
    Ok(sqlx::query_as("SELECT kek_version, COUNT(*) FROM tenant_keys GROUP BY kek_version ORDER BY kek_version")
        .fetch_all(ex)
        .await?)
}

/// Every tenant that has keys (for a new data key version each).
pub async fn tenants<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT DISTINCT tenant_id FROM tenant_keys ORDER BY tenant_id").fetch_all(ex).await?)
}

/// Replaces a key's wrapping, if it is still the one that was read.
pub async fn rewrap<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    row: &KeyRow,
    kek_version: i64,
    wrapped: &str,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE tenant_keys SET kek_version = $1, wrapped = $2 \
         WHERE tenant_id = $3 AND version = $4 AND kek_version = $5 AND wrapped = $6",
    )
    .bind(kek_version)
    .bind(wrapped)
    .bind(&row.tenant_id)
    .bind(row.version)
    .bind(row.kek_version)
    .bind(&row.wrapped)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Crypto-shredding of a frozen tenant: marked erased (first: a key being
/// made waits for this row), its keys destroyed, and what it held in clear
/// or under the platform's static key removed: message bodies, stored
/// answers, TOTP secrets, SIP credentials, webhook secrets and recordings'
/// keys. The
/// number of keys destroyed; `None` when the tenant is not frozen or was
/// erased already (nothing changes).
pub async fn destroy(tx: &mut crate::Tx, scope: &TenantScope, now: i64) -> Result<Option<u64>> {
    let tenant = scope.tenant_id().to_string();
    let marked =
        sqlx::query("UPDATE tenants SET erased_at = $1 WHERE id = $2 AND status = 'frozen' AND erased_at IS NULL")
            .bind(now)
            .bind(&tenant)
            .execute(&mut **tx)
            .await?;
    if marked.rows_affected() != 1 {
        return Ok(None);
    }
    let r = sqlx::query("DELETE FROM tenant_keys WHERE tenant_id = $1").bind(&tenant).execute(&mut **tx).await?;
    for sql in [
        // Sealed bodies no longer open; older ones in clear must go too.
        "UPDATE messages SET body = '' WHERE tenant_id = $1",
        "DELETE FROM user_totp WHERE tenant_id = $1",
        "DELETE FROM idempotency_keys WHERE tenant_id = $1",
        "DELETE FROM sip_credentials WHERE tenant_id = $1",
        // Their audio's keys: the files are removed after the commit.
        "DELETE FROM recordings WHERE tenant_id = $1",
        "UPDATE webhook_endpoints SET secret_sealed = '', previous_secret_sealed = NULL, ed25519_sealed = NULL \
         WHERE tenant_id = $1",
    ] {
        sqlx::query(sql).bind(&tenant).execute(&mut **tx).await?;
    }
    tx.credentials_changed(&tenant);
    Ok(Some(r.rows_affected()))
}

/// When the tenant was erased, if it was.
pub async fn erased_at<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT erased_at FROM tenants WHERE id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?
        .flatten())
}
