//! Stream tickets: single use, short-lived, kept as SHA-256 hashes. Using
//! one is one conditional statement, so two instances racing with the same
//! ticket cannot both open a stream.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

pub struct NewTicket<'a> {
    pub ticket_hash: &'a str,
    pub resource: &'a str,
    pub origin: Option<&'a str>,
    /// Which credential minted it, without its secret (JSON).
    pub minter: &'a str,
    pub expires_at: i64,
}

/// Records a ticket (housekeeping deletes it once expired).
pub async fn insert(tx: &mut crate::Tx, scope: &TenantScope, t: &NewTicket<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO stream_tickets (ticket_hash, tenant_id, resource, origin, minter, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(t.ticket_hash)
    .bind(scope.tenant_id().to_string())
    .bind(t.resource)
    .bind(t.origin)
    .bind(t.minter)
    .bind(t.expires_at)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Redeemed {
    pub tenant_id: String,
    pub resource: String,
    pub origin: Option<String>,
    pub minter: String,
}

/// Whether a live, unused ticket has this hash: a read, so that guesses
/// cost no write.
pub async fn live<'c>(ex: impl Executor<'c, Database = Any>, ticket_hash: &str, now: i64) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM stream_tickets WHERE ticket_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(ticket_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?;
    Ok(found.is_some())
}

/// Uses the ticket up, if it is live and unused: `None` otherwise.
pub async fn redeem<'c>(
    ex: impl Executor<'c, Database = Any>,
    ticket_hash: &str,
    now: i64,
) -> Result<Option<Redeemed>> {
    Ok(sqlx::query_as(
        "UPDATE stream_tickets SET used_at = $2 \
         WHERE ticket_hash = $1 AND used_at IS NULL AND expires_at > $2 \
         RETURNING tenant_id, resource, origin, minter",
    )
    .bind(ticket_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}
