//! Sealed columns the re-sealing job (`palisade_keys::reseal`) moves to
//! their tenant's newest data key: values the platform's static key sealed
//! before tenants had keys (webhook secrets, SIP HA1s, TOTP secrets), and
//! values under an older data key version (those and recordings' keys).
//! Table and column names come from the owning crates' constants, never
//! from input.

use palisade_core::principal::SysadminProof;
use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// A column of sealed values, the table's id column, and its tenant's.
#[derive(Debug, Clone, Copy)]
pub struct Column {
    pub table: &'static str,
    pub id: &'static str,
    pub column: &'static str,
}

/// Rows after `after` (by id) whose value is not under its tenant's newest
/// data key version (static-key values, older versions), not empty:
/// `(id, tenant, value)`.
pub async fn after<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    c: &Column,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String, String)>> {
    let Column { table, id, column } = c;
    Ok(sqlx::query_as(&format!(
        "SELECT {id}, tenant_id, {column} FROM {table} t WHERE {id} > $1 AND {column} IS NOT NULL \
         AND {column} <> '' AND {column} NOT LIKE 'pk1:' || COALESCE((SELECT CAST(MAX(k.version) AS TEXT) \
           FROM tenant_keys k WHERE k.tenant_id = t.tenant_id), '0') || ':%' ORDER BY {id} LIMIT $2"
    ))
    .bind(after)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Replaces the value if it is still `old` (a rotation meanwhile wins).
pub async fn replace<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    c: &Column,
    id: &str,
    old: &str,
    new: &str,
) -> Result<bool> {
    let Column { table, id: id_col, column } = c;
    let r = sqlx::query(&format!(
        "UPDATE {table} SET {column} = $1 WHERE tenant_id = $2 AND {id_col} = $3 AND {column} = $4"
    ))
    .bind(new)
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(old)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}
