//! Retention of messages: the tenant's period, soft deletion past it,
//! removal past the grace period (its counts folded into the hourly usage
//! archive in the same transaction), and the operator's restore.

use palisade_core::principal::SysadminProof;
use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// The tenant's own period for messages, if it chose one.
pub async fn messages_days<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT retention_messages_days FROM tenants WHERE id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?
        .flatten())
}

/// Sets (or with `None` clears) the tenant's period for messages.
pub async fn set_messages_days<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    days: Option<i64>,
) -> Result<bool> {
    let r = sqlx::query("UPDATE tenants SET retention_messages_days = $1 WHERE id = $2")
        .bind(days)
        .bind(scope.tenant_id().to_string())
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The tenant's own period for recordings, if it chose one.
pub async fn recordings_days<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT retention_recordings_days FROM tenants WHERE id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?
        .flatten())
}

/// Sets (or with `None` clears) the tenant's period for recordings.
pub async fn set_recordings_days<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    days: Option<i64>,
) -> Result<bool> {
    let r = sqlx::query("UPDATE tenants SET retention_recordings_days = $1 WHERE id = $2")
        .bind(days)
        .bind(scope.tenant_id().to_string())
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Every active tenant with its own period for recordings (`None`: the
/// default), for the sweeper; frozen ones are held, as for messages.
pub async fn recording_tenants<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
) -> Result<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query_as("SELECT id, retention_recordings_days FROM tenants WHERE status = 'active' ORDER BY id")
        .fetch_all(ex)
        .await?)
}

/// Every tenant with its own period (`None`: the default), for the sweeper.
/// A frozen tenant is skipped: its data is held while the operator looks
/// into it (an erased one has nothing left to read).
pub async fn tenants<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
) -> Result<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query_as("SELECT id, retention_messages_days FROM tenants WHERE status = 'active' ORDER BY id")
        .fetch_all(ex)
        .await?)
}

/// Whether the tenant has messages to soft delete (sent before
/// `soft_before`) or to remove (soft deleted before `purge_before`): the
/// sweeper opens no transaction for a tenant with neither.
pub async fn messages_due<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    soft_before: i64,
    purge_before: i64,
) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1 AND deleted_at IS NULL \
           AND created_at < $2) OR EXISTS (SELECT 1 FROM messages WHERE tenant_id = $1 \
           AND deleted_at IS NOT NULL AND deleted_at < $3) THEN 1 ELSE 0 END",
    )
    .bind(scope.tenant_id().to_string())
    .bind(soft_before)
    .bind(purge_before)
    .fetch_one(ex)
    .await?
        == 1)
}

/// Soft deletes up to `limit` of the tenant's messages sent before
/// `before` whose fate is known (not queued; a `sent` one waits a day
/// more for its delivery report); how many.
pub async fn soft_delete_messages(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE messages SET deleted_at = $1 WHERE id IN (SELECT id FROM messages WHERE tenant_id = $2 \
         AND deleted_at IS NULL AND created_at < $3 AND status <> 'queued' \
         AND (status <> 'sent' OR created_at < $3 - 86400000) ORDER BY created_at LIMIT $4)",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(before)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Removes up to `limit` of the tenant's messages soft deleted before
/// `before`, their counts first added to the usage archive. The caller
/// holds the tenant's row lock (a restore cannot change the set between
/// the two statements). How many.
pub async fn purge_messages(tx: &mut crate::Tx, scope: &TenantScope, before: i64, limit: i64) -> Result<u64> {
    let batch = "SELECT id FROM messages WHERE tenant_id = $1 AND deleted_at IS NOT NULL AND deleted_at < $2 \
                 ORDER BY id LIMIT $3";
    sqlx::query(&format!(
        "INSERT INTO usage_archive (tenant_id, kind, hour, count, units, cost) \
         SELECT tenant_id, 'messages', (created_at / 3600000) * 3600000, COUNT(*), CAST(SUM(segments) AS BIGINT), \
           CAST(SUM(cost) AS BIGINT) FROM messages WHERE id IN ({batch}) GROUP BY tenant_id, 3 \
         ON CONFLICT (tenant_id, kind, hour) DO UPDATE SET count = usage_archive.count + excluded.count, \
           units = usage_archive.units + excluded.units, cost = usage_archive.cost + excluded.cost"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(before)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    let r = sqlx::query(&format!("DELETE FROM messages WHERE id IN ({batch})"))
        .bind(scope.tenant_id().to_string())
        .bind(before)
        .bind(limit)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}

/// The operator's restore: the tenant's soft-deleted messages visible
/// again (until the sweeper's next pass deletes them again, unless the
/// tenant's period was raised). How many.
pub async fn restore_messages(tx: &mut crate::Tx, scope: &TenantScope) -> Result<u64> {
    let r = sqlx::query("UPDATE messages SET deleted_at = NULL WHERE tenant_id = $1 AND deleted_at IS NOT NULL")
        .bind(scope.tenant_id().to_string())
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}
