//! The mail outbox: mail for the SMTP relay, written where it is asked for
//! and sent by the mail worker. No tenant owns a row (mail goes to people
//! signing up as well as to members). A row is claimed with a lease by one
//! conditional update, so two instances never send the same mail at once.

use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MailRow {
    pub id: String,
    pub recipient: String,
    pub subject: String,
    /// Base64 of the sealed body.
    pub body_sealed: String,
    pub attempts: i64,
    pub next_attempt_at: i64,
    pub created_at: i64,
    /// Worthless after this: dropped rather than sent late.
    pub expires_at: Option<i64>,
}

const COLS: &str = "id, recipient, subject, body_sealed, attempts, next_attempt_at, created_at, expires_at";

pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, m: &MailRow) -> Result<()> {
    sqlx::query(&format!("INSERT INTO mail_outbox ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"))
        .bind(&m.id)
        .bind(&m.recipient)
        .bind(&m.subject)
        .bind(&m.body_sealed)
        .bind(m.attempts)
        .bind(m.next_attempt_at)
        .bind(m.created_at)
        .bind(m.expires_at)
        .execute(ex)
        .await?;
    Ok(())
}

/// Up to `limit` mails due now and not held by another instance, oldest
/// first (not claimed yet: see [`claim`]).
pub async fn due<'c>(ex: impl Executor<'c, Database = Any>, now: i64, limit: i64) -> Result<Vec<MailRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM mail_outbox WHERE next_attempt_at <= $1 AND lease_until <= $1 \
         ORDER BY next_attempt_at, id LIMIT $2"
    ))
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Takes the mail until `until`: false when another instance holds it, or
/// it is not due (a stale read).
pub async fn claim<'c>(ex: impl Executor<'c, Database = Any>, id: &str, now: i64, until: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE mail_outbox SET lease_until = $3 WHERE id = $1 AND lease_until <= $2 AND next_attempt_at <= $2",
    )
    .bind(id)
    .bind(now)
    .bind(until)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Sent, or given up: gone.
pub async fn delete<'c>(ex: impl Executor<'c, Database = Any>, id: &str) -> Result<()> {
    sqlx::query("DELETE FROM mail_outbox WHERE id = $1").bind(id).execute(ex).await?;
    Ok(())
}

/// A failed attempt: tried again at `next`, the error's class kept.
pub async fn failed<'c>(ex: impl Executor<'c, Database = Any>, id: &str, next: i64, error: &str) -> Result<()> {
    sqlx::query(
        "UPDATE mail_outbox SET attempts = attempts + 1, next_attempt_at = $2, lease_until = 0, last_error = $3 \
         WHERE id = $1",
    )
    .bind(id)
    .bind(next)
    .bind(error)
    .execute(ex)
    .await?;
    Ok(())
}

/// Mails waiting, for `/readyz` and the metrics.
pub async fn waiting<'c>(ex: impl Executor<'c, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM mail_outbox").fetch_one(ex).await?)
}
