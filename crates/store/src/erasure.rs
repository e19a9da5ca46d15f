//! A phone number's erasure within one tenant (someone the tenant wrote to
//! or called asks to be forgotten): message bodies blanked and the number
//! replaced by its masked form in messages and calls, the recordings of
//! those calls found for removal. CDRs keep the number: they are immutable
//! billing records and leave by retention.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// Blanks the bodies of up to `limit` of the tenant's messages to or from
/// `number` and puts `masked` in its place; how many.
pub async fn messages(tx: &mut crate::Tx, scope: &TenantScope, number: &str, masked: &str, limit: i64) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE messages SET body = '', \
           to_number = CASE WHEN to_number = $2 THEN $3 ELSE to_number END, \
           from_number = CASE WHEN from_number = $2 THEN $3 ELSE from_number END \
         WHERE id IN (SELECT id FROM messages WHERE tenant_id = $1 AND (to_number = $2 OR from_number = $2) \
           ORDER BY id LIMIT $4)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(number)
    .bind(masked)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Puts `masked` in place of `number` in up to `limit` of the tenant's
/// ended calls; how many. A live call keeps it until it ends.
pub async fn calls(tx: &mut crate::Tx, scope: &TenantScope, number: &str, masked: &str, limit: i64) -> Result<u64> {
    let r = sqlx::query(&format!(
        "UPDATE calls SET \
           to_number = CASE WHEN to_number = $2 THEN $3 ELSE to_number END, \
           from_number = CASE WHEN from_number = $2 THEN $3 ELSE from_number END \
         WHERE id IN (SELECT id FROM calls WHERE tenant_id = $1 AND (to_number = $2 OR from_number = $2) \
           AND status NOT IN {} ORDER BY id LIMIT $4)",
        crate::calls::LIVE
    ))
    .bind(scope.tenant_id().to_string())
    .bind(number)
    .bind(masked)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// The tenant's recordings of calls to or from `number` (before the calls
/// are masked).
pub async fn recordings<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    number: &str,
) -> Result<Vec<crate::recordings::RecordingRow>> {
    crate::recordings::of_calls_with(ex, scope, number).await
}
