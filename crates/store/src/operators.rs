//! Operator accounts: the people who run the platform. Not a tenant's
//! data: an operator acts on tenants they name, through `/sysadmin`.

use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OperatorRow {
    pub id: String,
    pub email: String,
    pub password_hash: String,
    pub totp_sealed: String,
    pub last_step: i64,
    pub created_at: i64,
    pub disabled_at: Option<i64>,
}

const COLUMNS: &str = "id, email, password_hash, totp_sealed, last_step, created_at, disabled_at";

pub async fn insert<'c>(
    ex: impl Executor<'c, Database = Any>,
    id: &str,
    email: &str,
    password_hash: &str,
    totp_sealed: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO operators (id, email, password_hash, totp_sealed, created_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(id)
    .bind(email)
    .bind(password_hash)
    .bind(totp_sealed)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn by_email<'c>(ex: impl Executor<'c, Database = Any>, email: &str) -> Result<Option<OperatorRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM operators WHERE email = $1"))
        .bind(email)
        .fetch_optional(ex)
        .await?)
}

pub async fn list<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<OperatorRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM operators ORDER BY created_at")).fetch_all(ex).await?)
}

/// Operators who can sign in.
pub async fn count_active<'c>(ex: impl Executor<'c, Database = Any>) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM operators WHERE disabled_at IS NULL").fetch_one(ex).await?)
}

/// Disables the operator and ends their sessions: whether one was active.
pub async fn disable(tx: &mut crate::Tx, email: &str, now: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE operators SET disabled_at = $2 WHERE email = $1 AND disabled_at IS NULL")
        .bind(email)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    sqlx::query(
        "UPDATE operator_sessions SET revoked_at = $2 WHERE revoked_at IS NULL \
         AND operator_id IN (SELECT id FROM operators WHERE email = $1)",
    )
    .bind(email)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Counts a TOTP try before the code is compared; the try that uses the
/// last one allowed locks it until `lock_until` (in the same statement,
/// as people's: `mfa::COUNT_TRY`, whose `$4` and `$5` it binds; the id is
/// bound twice to keep those numbers). `None`: locked, disabled or unknown.
pub async fn take_try<'c>(
    ex: impl Executor<'c, Database = Any>,
    id: &str,
    now: i64,
    max_tries: i64,
    lock_until: i64,
) -> Result<Option<OperatorRow>> {
    Ok(sqlx::query_as(&format!(
        "UPDATE operators SET {} \
         WHERE id = $1 AND id = $2 AND locked_until <= $3 AND disabled_at IS NULL \
         RETURNING {COLUMNS}",
        crate::mfa::COUNT_TRY
    ))
    .bind(id)
    .bind(id)
    .bind(now)
    .bind(max_tries)
    .bind(lock_until)
    .fetch_optional(ex)
    .await?)
}

/// Accepts the code of `step` once (newer than every code accepted before).
pub async fn accept_step<'c>(ex: impl Executor<'c, Database = Any>, id: &str, step: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE operators SET last_step = $2, tries = 0, locked_until = 0 \
         WHERE id = $1 AND last_step < $2 AND disabled_at IS NULL",
    )
    .bind(id)
    .bind(step)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn create_session<'c>(
    ex: impl Executor<'c, Database = Any>,
    token_hash: &str,
    operator_id: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO operator_sessions (token_hash, operator_id, created_at, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(token_hash)
    .bind(operator_id)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The operator of a live session (not expired, not revoked, operator
/// not disabled): id and email.
pub async fn session<'c>(
    ex: impl Executor<'c, Database = Any>,
    token_hash: &str,
    now: i64,
) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT o.id, o.email FROM operator_sessions s JOIN operators o ON o.id = s.operator_id \
         WHERE s.token_hash = $1 AND s.expires_at > $2 AND s.revoked_at IS NULL AND o.disabled_at IS NULL",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}

pub async fn revoke_session<'c>(ex: impl Executor<'c, Database = Any>, token_hash: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE operator_sessions SET revoked_at = $2 WHERE token_hash = $1 AND revoked_at IS NULL")
        .bind(token_hash)
        .bind(now)
        .execute(ex)
        .await?;
    Ok(())
}
