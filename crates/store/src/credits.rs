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
