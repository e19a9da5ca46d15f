//! Credits: each tenant's balance in integer minor units, and the ledger
//! of every change.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// The balance; 0 for a tenant that never had credits.
pub async fn balance<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT balance FROM balances WHERE tenant_id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?
        .unwrap_or(0))
}

/// Adds `amount` (positive) as one atomic list: the balance and its
/// ledger line.
pub fn top_up_stmts(scope: &TenantScope, ledger_id: &str, amount: i64, reference: &str, now: i64) -> Vec<crate::Stmt> {
    let tenant = scope.tenant_id().to_string();
    vec![
        crate::Stmt::new(
            "INSERT INTO balances (tenant_id, balance, updated_at) VALUES ($1, $2, $3) \
             ON CONFLICT (tenant_id) DO UPDATE SET balance = balances.balance + excluded.balance, \
             updated_at = excluded.updated_at",
        )
        .bind(tenant.clone())
        .bind(amount)
        .bind(now),
        crate::Stmt::new(
            "INSERT INTO credit_ledger (id, tenant_id, amount, reason, reference, created_at) \
             VALUES ($1, $2, $3, 'top_up', $4, $5)",
        )
        .bind(ledger_id)
        .bind(tenant)
        .bind(amount)
        .bind(reference)
        .bind(now),
    ]
}

/// The debit: one conditional update, so the balance never goes below zero
/// whatever runs concurrently, and its ledger line (one per `reference`, so
/// a retried write cannot charge twice). False when the credits do not
/// cover `amount`; nothing changes then.
pub async fn debit<E>(
    ex: &mut E,
    scope: &TenantScope,
    amount: i64,
    reason: &str,
    reference: &str,
    now: i64,
) -> Result<bool>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    let tenant = scope.tenant_id().to_string();
    let r = sqlx::query(
        "UPDATE balances SET balance = balance - $2, updated_at = $3 WHERE tenant_id = $1 AND balance >= $2",
    )
    .bind(&tenant)
    .bind(amount)
    .bind(now)
    .execute(&mut *ex)
    .await?;
    if r.rows_affected() != 1 {
        return Ok(false);
    }
    ledger(ex, &tenant, -amount, reason, reference, now).await?;
    Ok(true)
}

/// Gives credits back (a call that was never answered), with its ledger line.
pub async fn refund<E>(ex: &mut E, scope: &TenantScope, amount: i64, reference: &str, now: i64) -> Result<()>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    let tenant = scope.tenant_id().to_string();
    sqlx::query("UPDATE balances SET balance = balance + $2, updated_at = $3 WHERE tenant_id = $1")
        .bind(&tenant)
        .bind(amount)
        .bind(now)
        .execute(&mut *ex)
        .await?;
    ledger(ex, &tenant, amount, "refund", reference, now).await
}

async fn ledger<E>(ex: &mut E, tenant: &str, amount: i64, reason: &str, reference: &str, now: i64) -> Result<()>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    sqlx::query(
        "INSERT INTO credit_ledger (id, tenant_id, amount, reason, reference, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(format!("{reason}-{reference}"))
    .bind(tenant)
    .bind(amount)
    .bind(reason)
    .bind(reference)
    .bind(now)
    .execute(&mut *ex)
    .await?;
    Ok(())
}

/// [`debit`] as statements for [`crate::Db::write_guarded`]: refused with
/// `insufficient_credits` when the balance does not cover `amount`.
pub fn debit_stmts(
    scope: &TenantScope,
    amount: i64,
    reason: &'static str,
    reference: &str,
    now: i64,
) -> Vec<crate::Stmt> {
    let tenant = scope.tenant_id().to_string();
    // The ledger row first: on PostgreSQL the balance row stays locked from
    // its update to the commit, so the update is the last statement.
    vec![
        crate::Stmt::new(
            "INSERT INTO credit_ledger (id, tenant_id, amount, reason, reference, created_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(format!("{reason}-{reference}"))
        .bind(tenant.clone())
        .bind(-amount)
        .bind(reason)
        .bind(reference)
        .bind(now)
        .merged_as_rows(),
        crate::Stmt::new(
            "UPDATE balances SET balance = balance - $2, updated_at = $3 WHERE tenant_id = $1 AND balance >= $2",
        )
        .bind(tenant)
        .bind(amount)
        .bind(now)
        .or_refuse("insufficient_credits")
        .merged_as_sum(&DEBITS),
    ]
}

/// Concurrent debits of one tenant as one (PostgreSQL): the balance must
/// cover their sum, or each runs again alone.
static DEBITS: crate::SumMerge = crate::SumMerge {
    sql: "UPDATE balances AS b SET balance = b.balance - CAST(r->>1 AS BIGINT), updated_at = CAST(r->>2 AS BIGINT) \
          FROM jsonb_array_elements($1::jsonb) AS r \
          WHERE b.tenant_id = (r->>0) AND b.balance >= CAST(r->>1 AS BIGINT)",
    key: &[0],
    add: 1,
};
