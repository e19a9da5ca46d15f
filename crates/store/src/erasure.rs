//! A phone number's erasure within one tenant (someone the tenant wrote to
//! or called asks to be forgotten): message bodies blanked and the number
//! replaced by its masked form (`…1234`) in messages, calls (live ones
//! too) and CDRs, and the recordings of calls with a masked number found
//! for removal. A recording is kept only while its call's numbers are not
//! masked (`recordings::insert_unless_erased`). A CDR is otherwise
//! immutable: its trigger lets an update through only when it replaces a
//! number by that number's own mask and changes nothing else.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// Where a number's erasure masks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Masked {
    /// Bodies blanked too.
    Messages,
    /// Live ones too (a live call's CDR is then written masked).
    Calls,
    /// Only the number: the trigger refuses any other change.
    Cdrs,
    /// The payloads kept for the delivery log, as a JSON string only
    /// (`"+34…"` whole, never the start of a longer number); a pending one
    /// goes out masked.
    WebhookEvents,
}

/// Puts `masked` in place of `number` in up to `limit` of the tenant's rows
/// of `table`; how many.
pub async fn mask(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    table: Masked,
    number: &str,
    masked: &str,
    limit: i64,
) -> Result<u64> {
    match table {
        Masked::Messages => mask_numbers(tx, scope, "messages", "body = '', ", number, masked, limit).await,
        Masked::Calls => mask_numbers(tx, scope, "calls", "", number, masked, limit).await,
        Masked::Cdrs => mask_numbers(tx, scope, "cdrs", "", number, masked, limit).await,
        Masked::WebhookEvents => webhook_events(tx, scope, number, masked, limit).await,
    }
}

async fn webhook_events(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    number: &str,
    masked: &str,
    limit: i64,
) -> Result<u64> {
    let (quoted, masked) = (format!("\"{number}\""), format!("\"{masked}\""));
    let r = sqlx::query(
        "UPDATE webhook_events SET payload = REPLACE(payload, $2, $3) \
         WHERE tenant_id = $1 AND id IN (SELECT id FROM webhook_events WHERE tenant_id = $1 \
           AND payload LIKE $4 LIMIT $5)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(&quoted)
    .bind(&masked)
    .bind(format!("%{quoted}%"))
    .bind(limit)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected())
}

/// `table` and `also` (what else to set) are constants of this module.
async fn mask_numbers(
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

#[cfg(test)]
mod tests {
    /// SQLite's CDR trigger lists the columns an update must leave alone:
    /// every column but the two numbers must be on it, or a column added
    /// later could be changed through a "masking" update.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_cdr_trigger_names_every_other_column() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::Db::connect(&format!("sqlite://{}/cdrs.db", dir.path().display()), 2).await.unwrap();
        db.migrate().await.unwrap();
        let columns: Vec<String> =
            sqlx::query_scalar("SELECT name FROM pragma_table_info('cdrs')").fetch_all(db.reader()).await.unwrap();
        let trigger: String =
            sqlx::query_scalar("SELECT sql FROM sqlite_master WHERE type = 'trigger' AND name = 'cdrs_no_update'")
                .fetch_one(db.reader())
                .await
                .unwrap();
        assert!(columns.len() > 10, "{columns:?}");
        for c in columns.iter().filter(|c| !c.ends_with("_number")) {
            assert!(trigger.contains(&format!("NEW.{c} IS OLD.{c}")), "the CDR trigger does not hold {c}");
        }
    }
}
