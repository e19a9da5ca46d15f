//! Tenants. Listing and status changes are operator actions.

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TenantRow {
    pub id: String,
    pub name: String,
    pub status: String,
    pub created_at: i64,
}

pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, id: TenantId, name: &str, now: i64) -> Result<()> {
    sqlx::query("INSERT INTO tenants (id, name, status, created_at) VALUES ($1, $2, 'active', $3)")
        .bind(id.to_string())
        .bind(name)
        .bind(now)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof) -> Result<Vec<TenantRow>> {
    Ok(sqlx::query_as("SELECT id, name, status, created_at FROM tenants ORDER BY created_at, id").fetch_all(ex).await?)
}

pub async fn get<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<TenantRow>> {
    Ok(sqlx::query_as("SELECT id, name, status, created_at FROM tenants WHERE id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?)
}

/// Returns false when no such tenant exists.
pub async fn set_status(tx: &mut crate::Tx, scope: &TenantScope, status: &str) -> Result<bool> {
    // An erased tenant stays frozen.
    let r = sqlx::query("UPDATE tenants SET status = $1 WHERE id = $2 AND ($1 = 'frozen' OR erased_at IS NULL)")
        .bind(status)
        .bind(scope.tenant_id().to_string())
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// Takes the tenant's row lock for the rest of the transaction, so checks of
/// tenant-wide invariants (at least one owner) cannot interleave. On SQLite
/// the single writer already serializes; the statement is harmless there.
pub async fn lock<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<()> {
    sqlx::query("UPDATE tenants SET status = status WHERE id = $1")
        .bind(scope.tenant_id().to_string())
        .execute(ex)
        .await?;
    Ok(())
}

/// The tenant's abuse-control overrides (a JSON document), if any.
pub async fn limits<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT settings FROM tenant_limits WHERE tenant_id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?)
}

/// Sets (or, with `None`, removes) the tenant's overrides.
pub fn set_limits_stmt(scope: &TenantScope, settings: Option<&str>, now: i64) -> crate::Stmt {
    match settings {
        Some(s) => crate::Stmt::new(
            "INSERT INTO tenant_limits (tenant_id, settings, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET settings = excluded.settings, updated_at = excluded.updated_at",
        )
        .bind(scope.tenant_id().to_string())
        .bind(s)
        .bind(now),
        None => crate::Stmt::new("DELETE FROM tenant_limits WHERE tenant_id = $1").bind(scope.tenant_id().to_string()),
    }
    .changes_credentials_of(scope.tenant_id().to_string())
}
