//! Single sign-on: sign-ins sent to a provider and waiting for it to send
//! the browser back. Not a tenant's data yet: nobody is known until the
//! provider answers.

use sqlx::{Any, Executor};

use crate::Result;

/// A sign-in waiting for the provider.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Pending {
    pub provider: String,
    pub nonce: String,
    pub verifier_sealed: String,
    pub browser_hash: String,
}

pub async fn insert<'c>(
    ex: impl Executor<'c, Database = Any>,
    state_hash: &str,
    p: &Pending,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO oidc_logins (state_hash, provider, nonce, verifier_sealed, browser_hash, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(state_hash)
    .bind(&p.provider)
    .bind(&p.nonce)
    .bind(&p.verifier_sealed)
    .bind(&p.browser_hash)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Takes the live sign-in of this state, once: of two callbacks with it,
/// one gets it.
pub async fn take<'c>(ex: impl Executor<'c, Database = Any>, state_hash: &str, now: i64) -> Result<Option<Pending>> {
    Ok(sqlx::query_as(
        "DELETE FROM oidc_logins WHERE state_hash = $1 AND expires_at > $2 \
         RETURNING provider, nonce, verifier_sealed, browser_hash",
    )
    .bind(state_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}
