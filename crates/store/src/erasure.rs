//! A phone number's erasure within one tenant (someone the tenant wrote to
//! or called asks to be forgotten): message bodies blanked and the number
//! replaced by its masked form (`…1234`) in messages and calls, live ones
//! too, and the recordings of calls with a masked number found for
//! removal. A recording is kept only while its call's numbers are not
//! masked (`recordings::insert_unless_erased`). CDRs written before keep
//! the number: they are immutable billing records and leave by retention.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// Blanks the bodies of up to `limit` of the tenant's messages to or from
/// `number` and puts `masked` in its place; how many.
pub async fn messages(tx: &mut crate::Tx, scope: &TenantScope, number: &str, masked: &str, limit: i64) -> Result<u64> {
    mask(tx, scope, "messages", "body = '', ", number, masked, limit).await
}

/// Puts `masked` in place of `number` in up to `limit` of the tenant's
/// calls, live ones too (a live call's CDR is then written with the masked
/// number); how many.
pub async fn calls(tx: &mut crate::Tx, scope: &TenantScope, number: &str, masked: &str, limit: i64) -> Result<u64> {
    mask(tx, scope, "calls", "", number, masked, limit).await
}

/// `table` and `also` (what else to set) are constants of this module.
async fn mask(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    table: &'static str,
    also: &'static str,
    number: &str,
    masked: &str,
    limit: i64,
) -> Result<u64> {
    let r = sqlx::query(&format!(
        "UPDATE {table} SET {also}\
           to_number = CASE WHEN to_number = $2 THEN $3 ELSE to_number END, \
           from_number = CASE WHEN from_number = $2 THEN $3 ELSE from_number END \
         WHERE tenant_id = $1 AND id IN (SELECT id FROM {table} WHERE tenant_id = $1 \
           AND (to_number = $2 OR from_number = $2) LIMIT $4)"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(number)
    .bind(masked)
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// Up to `limit` of the tenant's recordings of calls whose number was
/// masked by an erasure (after the calls are masked: a recording kept
/// meanwhile is found too).
pub async fn recordings<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    limit: i64,
) -> Result<Vec<crate::recordings::RecordingRow>> {
    crate::recordings::of_erased_calls(ex, scope, limit).await
}
