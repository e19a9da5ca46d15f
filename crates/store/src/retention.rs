//! Retention: the tenant's periods; for messages and calls soft deletion
//! past the period, removal past the grace period (counts folded into the
//! hourly usage archive in the same transaction) and the operator's
//! restore. Recordings are removed at once (`recordings`).

use palisade_core::principal::SysadminProof;
use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// What a tenant keeps for a period of its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Messages,
    Calls,
    Recordings,
    /// Finished webhook deliveries, their attempts and events.
    Webhooks,
    /// Ended sessions (token families and their refresh tokens), in hours.
    Sessions,
    /// The tenant's audit records (a period shorter than the platform's).
    Audit,
}

impl Kind {
    fn column(self) -> &'static str {
        match self {
            Kind::Messages => "retention_messages_days",
            Kind::Calls => "retention_calls_days",
            Kind::Recordings => "retention_recordings_days",
            Kind::Webhooks => "retention_webhooks_days",
            Kind::Sessions => "retention_sessions_hours",
            Kind::Audit => "retention_audit_days",
        }
    }
}

/// The tenant's own period for `kind`, if it chose one.
pub async fn days<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, kind: Kind) -> Result<Option<i64>> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(&format!("SELECT {} FROM tenants WHERE id = $1", kind.column()))
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?
        .flatten())
}

/// Sets (or with `None` clears) the tenant's period for `kind`.
pub async fn set_days<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    kind: Kind,
    days: Option<i64>,
) -> Result<bool> {
    let r = sqlx::query(&format!("UPDATE tenants SET {} = $1 WHERE id = $2", kind.column()))
        .bind(days)
        .bind(scope.tenant_id().to_string())
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Every tenant with its own period for `kind` (`None`: the default), for
/// the sweeper. A frozen tenant is skipped: its data is held while the
/// operator looks into it (an erased one has nothing left to read).
pub async fn tenants<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    kind: Kind,
) -> Result<Vec<(String, Option<i64>)>> {
    Ok(sqlx::query_as(&format!("SELECT id, {} FROM tenants WHERE status = 'active' ORDER BY id", kind.column()))
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
    // Its fate is known: not queued, and a `sent` one a day older.
    let settled = "status <> 'queued' AND (status <> 'sent' OR created_at < $3 - 86400000)";
    soft_delete(tx, scope, "messages", settled, before, now, limit).await
}

/// Sets `deleted_at` on up to `limit` of the tenant's live rows of `table`
/// made before `$3` (`before`) for which `settled` holds, oldest first.
/// `table` and `settled` are constants of this module. How many.
async fn soft_delete(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    table: &'static str,
    settled: &str,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<u64> {
    let r = sqlx::query(&format!(
        "UPDATE {table} SET deleted_at = $1 WHERE id IN (SELECT id FROM {table} WHERE tenant_id = $2 \
         AND deleted_at IS NULL AND created_at < $3 AND {settled} ORDER BY created_at LIMIT $4)"
    ))
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
    const MESSAGES: Archived = Archived {
        kind: "messages",
        table: "messages",
        hour_of: "created_at",
        units: "segments",
        batch: "SELECT id FROM messages WHERE tenant_id = $1 AND deleted_at IS NOT NULL AND deleted_at < $2 \
                ORDER BY id LIMIT $3",
    };
    archive_and_delete(tx, scope, &MESSAGES, before, limit).await
}

/// Rows removed by retention, counted first in the hourly usage archive.
/// Every field is a constant of this module.
struct Archived {
    /// The usage kind (`messages`, `calls`).
    kind: &'static str,
    table: &'static str,
    /// The column whose hour the row counts in, and its units.
    hour_of: &'static str,
    units: &'static str,
    /// The ids of one batch: `$1` tenant, `$2` before, `$3` limit.
    batch: &'static str,
}

/// Adds one batch's hours to the usage archive, then deletes the batch;
/// how many rows went.
async fn archive_and_delete(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    a: &Archived,
    before: i64,
    limit: i64,
) -> Result<u64> {
    let Archived { kind, table, hour_of, units, batch } = a;
    let tenant = scope.tenant_id().to_string();
    sqlx::query(&format!(
        "INSERT INTO usage_archive (tenant_id, kind, hour, count, units, cost) \
         SELECT tenant_id, '{kind}', ({hour_of} / 3600000) * 3600000, COUNT(*), CAST(SUM({units}) AS BIGINT), \
           CAST(SUM(cost) AS BIGINT) FROM {table} WHERE id IN ({batch}) GROUP BY tenant_id, 3 \
         ON CONFLICT (tenant_id, kind, hour) DO UPDATE SET count = usage_archive.count + excluded.count, \
           units = usage_archive.units + excluded.units, cost = usage_archive.cost + excluded.cost"
    ))
    .bind(&tenant)
    .bind(before)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    let r = sqlx::query(&format!("DELETE FROM {table} WHERE id IN ({batch})"))
        .bind(&tenant)
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

/// Whether the tenant has calls or CDRs due: calls made before
/// `soft_before` not yet soft deleted, or soft deleted before
/// `purge_before`; CDRs that ended before `cdr_hide_before` not hidden yet,
/// or before `cdr_purge_before`.
pub async fn calls_due<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    soft_before: i64,
    purge_before: i64,
    cdr_hide_before: i64,
    cdr_purge_before: i64,
) -> Result<bool> {
    Ok(sqlx::query_scalar::<_, i64>(
        "SELECT CASE WHEN EXISTS (SELECT 1 FROM calls WHERE tenant_id = $1 AND deleted_at IS NULL \
           AND created_at < $2) OR EXISTS (SELECT 1 FROM calls WHERE tenant_id = $1 \
           AND deleted_at IS NOT NULL AND deleted_at < $3) \
           OR EXISTS (SELECT 1 FROM cdrs WHERE tenant_id = $1 AND ended_at < $5) \
           OR EXISTS (SELECT 1 FROM cdrs WHERE tenant_id = $1 AND ended_at < $4 AND ended_at >= \
             COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = $1), 0)) THEN 1 ELSE 0 END",
    )
    .bind(scope.tenant_id().to_string())
    .bind(soft_before)
    .bind(purge_before)
    .bind(cdr_hide_before)
    .bind(cdr_purge_before)
    .fetch_one(ex)
    .await?
        == 1)
}

/// Soft deletes up to `limit` of the tenant's ended calls made before
/// `before`; how many.
pub async fn soft_delete_calls(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    before: i64,
    now: i64,
    limit: i64,
) -> Result<u64> {
    let settled = format!("status NOT IN {}", crate::calls::LIVE);
    soft_delete(tx, scope, "calls", &settled, before, now, limit).await
}

/// Hides the tenant's CDRs that ended before `before` from the API: the
/// mark only moves forward, and each move is kept with its time (the
/// caller rounds `before` to the hour, so there are few). How many were
/// newly hidden.
pub async fn hide_cdrs(tx: &mut crate::Tx, scope: &TenantScope, before: i64, now: i64) -> Result<u64> {
    let tenant = scope.tenant_id().to_string();
    let n: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cdrs WHERE tenant_id = $1 AND ended_at < $2 \
         AND ended_at >= COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = $1), 0)",
    )
    .bind(&tenant)
    .bind(before)
    .fetch_one(&mut **tx)
    .await?;
    let moved = sqlx::query(
        "UPDATE tenants SET cdrs_hidden_before = $2 WHERE id = $1 \
         AND (cdrs_hidden_before IS NULL OR cdrs_hidden_before < $2)",
    )
    .bind(&tenant)
    .bind(before)
    .execute(&mut **tx)
    .await?;
    if moved.rows_affected() == 1 {
        sqlx::query("INSERT INTO cdr_hides (tenant_id, hidden_before, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
            .bind(&tenant)
            .bind(before)
            .bind(now)
            .execute(&mut **tx)
            .await?;
    }
    Ok(u64::try_from(n).unwrap_or(0))
}

/// How far the tenant's CDRs may be removed: the furthest mark that has
/// hidden them since `hidden_by` (a grace period ago) or earlier. `0`: none.
pub async fn cdrs_removable_before<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    hidden_by: i64,
) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, Option<i64>>(
        "SELECT MAX(hidden_before) FROM cdr_hides WHERE tenant_id = $1 AND at <= $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(hidden_by)
    .fetch_one(ex)
    .await?
    .unwrap_or(0))
}

/// Removes up to `limit` of the tenant's calls soft deleted before
/// `before`; how many.
pub async fn purge_calls(tx: &mut crate::Tx, scope: &TenantScope, before: i64, limit: i64) -> Result<u64> {
    let r = sqlx::query(
        "DELETE FROM calls WHERE id IN (SELECT id FROM calls WHERE tenant_id = $1 AND deleted_at IS NOT NULL \
         AND deleted_at < $2 ORDER BY id LIMIT $3)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(before)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Removes up to `limit` of the tenant's CDRs that ended before `before`
/// (from [`cdrs_removable_before`]): first the expiry that lets the
/// database delete them (append-only, never past the hidden mark), then
/// their hours added to the usage archive, then the rows. The caller holds
/// the tenant's row lock, so two sweepers never archive one batch twice.
/// How many.
pub async fn purge_cdrs(tx: &mut crate::Tx, scope: &TenantScope, before: i64, now: i64, limit: i64) -> Result<u64> {
    let tenant = scope.tenant_id().to_string();
    // Older moves of the mark are covered by this one.
    sqlx::query("DELETE FROM cdr_hides WHERE tenant_id = $1 AND hidden_before < $2")
        .bind(&tenant)
        .bind(before)
        .execute(&mut **tx)
        .await?;
    sqlx::query("INSERT INTO cdr_expiries (tenant_id, ended_before, at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING")
        .bind(&tenant)
        .bind(before)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    const CDRS: Archived = Archived {
        kind: "calls",
        table: "cdrs",
        hour_of: "ended_at",
        units: "billed_minutes",
        batch: "SELECT id FROM cdrs WHERE tenant_id = $1 AND ended_at < $2 ORDER BY id LIMIT $3",
    };
    archive_and_delete(tx, scope, &CDRS, before, limit).await
}

/// The operator's restore of calls: soft-deleted calls and hidden CDRs
/// visible again (those not removed yet). `(calls, cdrs)`.
pub async fn restore_calls(tx: &mut crate::Tx, scope: &TenantScope) -> Result<(u64, u64)> {
    let tenant = scope.tenant_id().to_string();
    let calls = sqlx::query("UPDATE calls SET deleted_at = NULL WHERE tenant_id = $1 AND deleted_at IS NOT NULL")
        .bind(&tenant)
        .execute(&mut **tx)
        .await?
        .rows_affected();
    let cdrs: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM cdrs WHERE tenant_id = $1 \
         AND ended_at < COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = $1), 0)",
    )
    .bind(&tenant)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("UPDATE tenants SET cdrs_hidden_before = NULL WHERE id = $1").bind(&tenant).execute(&mut **tx).await?;
    // Hidden again later, they wait a whole grace period again.
    sqlx::query("DELETE FROM cdr_hides WHERE tenant_id = $1").bind(&tenant).execute(&mut **tx).await?;
    Ok((calls, u64::try_from(cdrs).unwrap_or(0)))
}

/// Removes at most `limit` of the tenant's sessions that ended (signed out,
/// revoked or expired) before `ended_before`, with their refresh tokens.
/// A session gone is a session refused: access tokens check their family.
pub async fn remove_sessions(tx: &mut crate::Tx, scope: &TenantScope, ended_before: i64, limit: i64) -> Result<u64> {
    let due = "SELECT id FROM token_families WHERE tenant_id = $1 AND (revoked_at < $2 OR expires_at < $2) \
               ORDER BY id LIMIT $3";
    sqlx::query(&format!("DELETE FROM refresh_tokens WHERE tenant_id = $1 AND family_id IN ({due})"))
        .bind(scope.tenant_id().to_string())
        .bind(ended_before)
        .bind(limit)
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query(&format!("DELETE FROM token_families WHERE id IN ({due})"))
        .bind(scope.tenant_id().to_string())
        .bind(ended_before)
        .bind(limit)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected())
}
