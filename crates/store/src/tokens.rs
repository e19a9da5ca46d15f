//! One-time email tokens, refresh-token families and revoked access tokens.
//! Only SHA-256 hashes of tokens are stored.

use palisade_core::{TenantScope, UserId};
use sqlx::{Any, Executor};

use crate::Result;

pub struct NewEmailToken<'a> {
    pub user_id: UserId,
    pub token_hash: &'a str,
    pub purpose: &'a str,
    pub password_hash: Option<&'a str>,
    pub expires_at: i64,
}

pub async fn insert_email_token<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    t: &NewEmailToken<'_>,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO email_tokens (token_hash, tenant_id, user_id, purpose, password_hash, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(t.token_hash)
    .bind(scope.tenant_id().to_string())
    .bind(t.user_id.to_string())
    .bind(t.purpose)
    .bind(t.password_hash)
    .bind(t.expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// A live token, without using it up.
pub async fn find_email_token<'c>(
    ex: impl Executor<'c, Database = Any>,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<UsedEmailToken>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, user_id, password_hash FROM email_tokens \
         WHERE token_hash = $1 AND purpose = $2 AND used_at IS NULL AND expires_at > $3",
    )
    .bind(token_hash)
    .bind(purpose)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsedEmailToken {
    pub tenant_id: String,
    pub user_id: String,
    /// For a verification token: the password of the sign-up, or `None`
    /// when the password must be chosen at verification.
    pub password_hash: Option<String>,
}

/// Marks the token used if it is live. A single conditional update, so two
/// racing uses cannot both succeed.
pub async fn consume_email_token<'c>(
    ex: impl Executor<'c, Database = Any>,
    token_hash: &str,
    purpose: &str,
    now: i64,
) -> Result<Option<UsedEmailToken>> {
    Ok(sqlx::query_as(
        "UPDATE email_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND purpose = $3 AND used_at IS NULL AND expires_at > $1 \
         RETURNING tenant_id, user_id, password_hash",
    )
    .bind(now)
    .bind(token_hash)
    .bind(purpose)
    .fetch_optional(ex)
    .await?)
}

/// Voids a person's other unused tokens of one purpose once one was used.
pub async fn void_email_tokens<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user_id: UserId,
    purpose: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE email_tokens SET used_at = $1 \
         WHERE tenant_id = $2 AND user_id = $3 AND purpose = $4 AND used_at IS NULL",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .bind(purpose)
    .execute(ex)
    .await?;
    Ok(())
}

/// Unbinds the sign-up password from a person's live verification tokens:
/// once a sign-up was requested twice, whoever verifies must choose the
/// password, so neither caller's password is activated by a mere click.
pub async fn unbind_verify_passwords<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user_id: UserId,
) -> Result<()> {
    sqlx::query(
        "UPDATE email_tokens SET password_hash = NULL \
         WHERE tenant_id = $1 AND user_id = $2 AND purpose = 'verify' AND used_at IS NULL",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .execute(ex)
    .await?;
    Ok(())
}

/// How a session began: how the person proved who they are (RFC 8176
/// `amr` values, space-separated), when (ms), and when it last gave a
/// second factor (ms).
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct SessionFactors {
    pub amr: String,
    pub auth_time: i64,
    pub mfa_at: Option<i64>,
}

pub async fn create_family<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    family_id: &str,
    user_id: UserId,
    now: i64,
    expires_at: i64,
    factors: &SessionFactors,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO token_families (id, tenant_id, user_id, created_at, expires_at, amr, auth_time, mfa_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(family_id)
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .bind(now)
    .bind(expires_at)
    .bind(&factors.amr)
    .bind(factors.auth_time)
    .bind(factors.mfa_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// How the session began (for its refreshed tokens).
pub async fn family_factors<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    family_id: &str,
) -> Result<Option<SessionFactors>> {
    Ok(sqlx::query_as("SELECT amr, auth_time, mfa_at FROM token_families WHERE tenant_id = $1 AND id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(family_id)
        .fetch_optional(ex)
        .await?)
}

/// The live session gave a second factor (`amr`, e.g. `otp`) at `now`:
/// its next tokens say so. `None` if the session is not live.
pub async fn family_gave_factor<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    family_id: &str,
    user_id: UserId,
    amr: &str,
    now: i64,
) -> Result<Option<SessionFactors>> {
    // `amr` keeps the first factor and adds the second: "pwd otp mfa".
    Ok(sqlx::query_as(
        "UPDATE token_families SET mfa_at = $4, \
           amr = CASE WHEN amr LIKE '% mfa' THEN amr ELSE amr || ' ' || $5 || ' mfa' END \
         WHERE tenant_id = $1 AND id = $2 AND user_id = $3 AND revoked_at IS NULL \
         RETURNING amr, auth_time, mfa_at",
    )
    .bind(scope.tenant_id().to_string())
    .bind(family_id)
    .bind(user_id.to_string())
    .bind(now)
    .bind(amr)
    .fetch_optional(ex)
    .await?)
}

pub async fn insert_refresh<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    token_hash: &str,
    family_id: &str,
    user_id: UserId,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO refresh_tokens (token_hash, family_id, tenant_id, user_id, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(family_id)
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefreshUse {
    /// First use of a live token: the caller issues the next pair.
    Fresh { tenant_id: String, user_id: String, family_id: String },
    /// A token that was already used: theft is likely, revoke the family.
    Reused { tenant_id: String, family_id: String },
    /// Unknown, expired, or of a revoked family.
    Invalid,
}

pub async fn use_refresh(tx: &mut crate::Tx, token_hash: &str, now: i64) -> Result<RefreshUse> {
    let fresh: Option<(String, String, String)> = sqlx::query_as(
        "UPDATE refresh_tokens SET used_at = $1 \
         WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 \
           AND family_id IN (SELECT id FROM token_families WHERE revoked_at IS NULL) \
         RETURNING tenant_id, user_id, family_id",
    )
    .bind(now)
    .bind(token_hash)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((tenant_id, user_id, family_id)) = fresh {
        return Ok(RefreshUse::Fresh { tenant_id, user_id, family_id });
    }
    let seen: Option<(String, String, Option<i64>)> =
        sqlx::query_as("SELECT tenant_id, family_id, used_at FROM refresh_tokens WHERE token_hash = $1")
            .bind(token_hash)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match seen {
        Some((tenant_id, family_id, Some(_))) => RefreshUse::Reused { tenant_id, family_id },
        _ => RefreshUse::Invalid,
    })
}

pub async fn revoke_family(tx: &mut crate::Tx, scope: &TenantScope, family_id: &str, now: i64) -> Result<()> {
    sqlx::query("UPDATE token_families SET revoked_at = $1 WHERE tenant_id = $2 AND id = $3 AND revoked_at IS NULL")
        .bind(now)
        .bind(scope.tenant_id().to_string())
        .bind(family_id)
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(())
}

/// Ends every session of a person: each refresh family, and with it every
/// access token issued in it (authentication checks the family is live).
pub async fn revoke_user_families(tx: &mut crate::Tx, scope: &TenantScope, user_id: UserId, now: i64) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE token_families SET revoked_at = $1 WHERE tenant_id = $2 AND user_id = $3 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected())
}

/// Ends every session of a person but `keep` (their second factor changed
/// in it): how many ended.
pub async fn revoke_other_families(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    user_id: UserId,
    keep: &str,
    now: i64,
) -> Result<u64> {
    let r = sqlx::query(
        "UPDATE token_families SET revoked_at = $1 \
         WHERE tenant_id = $2 AND user_id = $3 AND id <> $4 AND revoked_at IS NULL",
    )
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(user_id.to_string())
    .bind(keep)
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected())
}

/// Ends the sessions of the tenant's people but owners that did not begin
/// with single sign-on (its rule was turned on), and their sign-ins waiting
/// for a second factor: how many sessions ended.
pub async fn revoke_non_sso_sessions(tx: &mut crate::Tx, scope: &TenantScope, now: i64) -> Result<u64> {
    let t = scope.tenant_id().to_string();
    let people = "SELECT id FROM users WHERE tenant_id = $2 AND role <> 'owner'";
    let r = sqlx::query(&format!(
        "UPDATE token_families SET revoked_at = $1 \
         WHERE tenant_id = $2 AND revoked_at IS NULL AND amr NOT LIKE 'fed%' AND user_id IN ({people})"
    ))
    .bind(now)
    .bind(&t)
    .execute(&mut **tx)
    .await?;
    sqlx::query(&format!(
        "UPDATE mfa_challenges SET used_at = $1 \
         WHERE tenant_id = $2 AND used_at IS NULL AND first_factor <> 'fed' AND user_id IN ({people})"
    ))
    .bind(now)
    .bind(&t)
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&t);
    Ok(r.rows_affected())
}

/// Denies an access token until it would have expired anyway. It names no
/// tenant: callers revoke its family too ([`revoke_family`]), which tells
/// the credential caches.
pub async fn revoke_jti<'c>(ex: impl Executor<'c, Database = Any>, jti: &str, expires_at: i64) -> Result<()> {
    sqlx::query("INSERT INTO revoked_jtis (jti, expires_at) VALUES ($1, $2) ON CONFLICT (jti) DO NOTHING")
        .bind(jti)
        .bind(expires_at)
        .execute(ex)
        .await?;
    Ok(())
}

/// Deletes what can no longer matter: revocations of expired tokens, expired
/// refresh tokens, email tokens, stream tickets and lapsed SIP
/// registrations. Returns rows removed. An active tenant's ended sessions
/// (token families) go by its retention (`retention::remove_sessions`).
pub async fn purge_expired(db: &crate::Db, now: i64) -> Result<u64> {
    let mut n = 0;
    for sql in [
        "DELETE FROM revoked_jtis WHERE expires_at < $1",
        "DELETE FROM refresh_tokens WHERE expires_at < $1",
        // Active tenants' ended sessions go by their retention; a frozen
        // tenant's (which the sweeper skips) once expired, as always.
        "DELETE FROM token_families WHERE expires_at < $1 \
           AND tenant_id NOT IN (SELECT id FROM tenants WHERE status = 'active')",
        "DELETE FROM email_tokens WHERE expires_at < $1",
        "DELETE FROM mfa_challenges WHERE expires_at < $1",
        "DELETE FROM oidc_logins WHERE expires_at < $1",
        "DELETE FROM operator_sessions WHERE expires_at < $1",
        "DELETE FROM webauthn_ceremonies WHERE expires_at < $1",
        // Stream tickets open nothing once expired, used or not.
        "DELETE FROM stream_tickets WHERE expires_at < $1",
        // SIP contacts whose registration lapsed.
        "DELETE FROM sip_registrations WHERE expires_at < $1",
        // Sign-ups never verified and invitations never accepted free their
        // address once no live token is left for them.
        "DELETE FROM users WHERE status IN ('pending', 'invited') \
           AND created_at < $1 - 86400000 \
           AND NOT EXISTS (SELECT 1 FROM email_tokens e WHERE e.user_id = users.id AND e.expires_at >= $1)",
        // A tenant left without anyone, and with nothing else of its own
        // (limits, identities, credits, traffic, webhooks), is an abandoned sign-up.
        "DELETE FROM tenants WHERE NOT EXISTS (SELECT 1 FROM users u WHERE u.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM api_keys k WHERE k.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM tenant_limits l WHERE l.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM identities i WHERE i.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM balances b WHERE b.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM credit_ledger c WHERE c.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM calls x WHERE x.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM cdrs r WHERE r.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM webhook_endpoints w WHERE w.tenant_id = tenants.id) \
           AND NOT EXISTS (SELECT 1 FROM stream_tickets st WHERE st.tenant_id = tenants.id)",
    ] {
        // One transaction per statement: housekeeping never holds the write
        // lock for long.
        let mut tx = db.begin().await?;
        n += sqlx::query(sql).bind(now).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
    }
    Ok(n)
}

/// Keeps a family alive while it is being refreshed.
pub async fn extend_family<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    family_id: &str,
    expires_at: i64,
) -> Result<()> {
    sqlx::query("UPDATE token_families SET expires_at = $1 WHERE tenant_id = $2 AND id = $3")
        .bind(expires_at)
        .bind(scope.tenant_id().to_string())
        .bind(family_id)
        .execute(ex)
        .await?;
    Ok(())
}
