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

/// The providers the tenant lets its people sign in with.
pub async fn tenant_providers<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &palisade_core::TenantScope,
) -> Result<Vec<String>> {
    Ok(sqlx::query_scalar("SELECT provider FROM tenant_sso_providers WHERE tenant_id = $1 ORDER BY provider")
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

pub async fn set_tenant_providers(
    tx: &mut crate::Tx,
    scope: &palisade_core::TenantScope,
    providers: &[String],
) -> Result<()> {
    let t = scope.tenant_id().to_string();
    sqlx::query("DELETE FROM tenant_sso_providers WHERE tenant_id = $1").bind(&t).execute(&mut **tx).await?;
    for p in providers {
        sqlx::query("INSERT INTO tenant_sso_providers (tenant_id, provider) VALUES ($1, $2)")
            .bind(&t)
            .bind(p)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// What linking a provider's account to a person found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    /// The person's account at the provider is this one (now or before).
    Same,
    /// The person is linked to another account there, or this account to
    /// another person.
    Other,
}

/// Links the provider's `subject` to the person at their first sign-in
/// through it; afterwards only that subject is them.
pub async fn link(
    tx: &mut crate::Tx,
    scope: &palisade_core::TenantScope,
    user: palisade_core::UserId,
    provider: &str,
    subject: &str,
    now: i64,
) -> Result<Link> {
    let inserted = sqlx::query(
        "INSERT INTO sso_links (user_id, tenant_id, provider, subject, created_at) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT DO NOTHING",
    )
    .bind(user.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(provider)
    .bind(subject)
    .bind(now)
    .execute(&mut **tx)
    .await?
    .rows_affected();
    if inserted == 1 {
        return Ok(Link::Same);
    }
    let linked: Option<String> =
        sqlx::query_scalar("SELECT subject FROM sso_links WHERE tenant_id = $1 AND user_id = $2 AND provider = $3")
            .bind(scope.tenant_id().to_string())
            .bind(user.to_string())
            .bind(provider)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(if linked.as_deref() == Some(subject) { Link::Same } else { Link::Other })
}
