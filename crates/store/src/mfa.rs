//! Second factors: a person's TOTP secret (sealed), their recovery codes
//! (keyed hashes) and the challenges of sign-ins waiting for a second
//! factor. Each step is one conditional statement, so two requests racing
//! can neither use a code twice nor guess more than allowed.

use palisade_core::{TenantScope, UserId};
use sqlx::{Any, Executor};

use crate::Result;

/// A person's TOTP enrolment.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct TotpRow {
    pub secret_sealed: String,
    pub confirmed_at: Option<i64>,
    /// The newest step whose code was accepted.
    pub last_step: i64,
    /// Wrong second factors in a row, this one counted.
    pub tries: i64,
    /// Set by the try that used the last one allowed.
    pub locked_until: i64,
}

const COLUMNS: &str = "secret_sealed, confirmed_at, last_step, tries, locked_until";

/// A TOTP try counted before its code is compared (people's and
/// operators'): a lock that has run out starts the count again, and the
/// try that reaches the most allowed (`$4`) locks until `$5`, in the same
/// statement, so parallel guesses get no more.
pub(crate) const COUNT_TRY: &str = "tries = CASE WHEN locked_until <> 0 THEN 1 ELSE tries + 1 END, \
     locked_until = CASE WHEN (CASE WHEN locked_until <> 0 THEN 1 ELSE tries + 1 END) >= $4 THEN $5 ELSE 0 END";

pub async fn totp<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
) -> Result<Option<TotpRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLUMNS} FROM user_totp WHERE tenant_id = $1 AND user_id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(user.to_string())
        .fetch_optional(ex)
        .await?)
}

/// Starts an enrolment with a new secret, replacing one not yet confirmed;
/// `false` (nothing changes) when a confirmed one exists.
pub async fn begin(tx: &mut crate::Tx, scope: &TenantScope, user: UserId, sealed: &str, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO user_totp (user_id, tenant_id, secret_sealed, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (user_id) DO UPDATE SET secret_sealed = $3, created_at = $4, last_step = 0 \
         WHERE user_totp.confirmed_at IS NULL AND user_totp.tenant_id = $2",
    )
    .bind(user.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(sealed)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Counts a try before the factor is compared, unless the second factor is
/// locked: the enrolment with this try counted, or `None` (locked, or no
/// enrolment). The try that reaches `max_tries` locks it until
/// `lock_until` in the same statement, so parallel guesses get no more;
/// a right factor lifts the lock ([`accept_step`], [`reset_tries`]).
pub async fn take_try<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
    now: i64,
    max_tries: i64,
    lock_until: i64,
    confirmed: bool,
) -> Result<Option<TotpRow>> {
    // A lock that has run out starts the count again.
    Ok(sqlx::query_as(&format!(
        "UPDATE user_totp SET {COUNT_TRY} \
         WHERE tenant_id = $1 AND user_id = $2 AND locked_until <= $3 \
           AND (CASE WHEN confirmed_at IS NULL THEN 0 ELSE 1 END) = $6 \
         RETURNING {COLUMNS}"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .bind(now)
    .bind(max_tries)
    .bind(lock_until)
    .bind(i64::from(confirmed))
    .fetch_optional(ex)
    .await?)
}

/// Accepts the code of `step` for a confirmed enrolment if it is newer
/// than every code accepted before (a code works once); the tries start
/// again. `false` if the step was used already.
pub async fn accept_step<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
    step: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE user_totp SET last_step = $3, tries = 0, locked_until = 0 \
         WHERE tenant_id = $1 AND user_id = $2 AND last_step < $3 AND confirmed_at IS NOT NULL",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .bind(step)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Confirms a pending enrolment with the code of `step`: from now on the
/// person has a second factor. `false` if it was confirmed meanwhile.
pub async fn confirm(tx: &mut crate::Tx, scope: &TenantScope, user: UserId, step: i64, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE user_totp SET confirmed_at = $4, last_step = $3, tries = 0, locked_until = 0 \
         WHERE tenant_id = $1 AND user_id = $2 AND confirmed_at IS NULL AND last_step < $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .bind(step)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// The tries start again (a recovery code was accepted).
pub async fn reset_tries<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, user: UserId) -> Result<()> {
    sqlx::query("UPDATE user_totp SET tries = 0, locked_until = 0 WHERE tenant_id = $1 AND user_id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(user.to_string())
        .execute(ex)
        .await?;
    Ok(())
}

/// Removes the person's TOTP and recovery codes; whether there was a TOTP.
pub async fn remove(tx: &mut crate::Tx, scope: &TenantScope, user: UserId) -> Result<bool> {
    let (t, u) = (scope.tenant_id().to_string(), user.to_string());
    sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(&u)
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query("DELETE FROM user_totp WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(&u)
        .execute(&mut **tx)
        .await?;
    // A factor given before is no longer one the person has.
    sqlx::query("UPDATE token_families SET mfa_at = NULL WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(&u)
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&t);
    Ok(r.rows_affected() == 1)
}

/// Replaces the person's recovery codes with these (keyed hashes).
pub async fn replace_recovery_codes(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    user: UserId,
    hashes: &[String],
) -> Result<()> {
    let (t, u) = (scope.tenant_id().to_string(), user.to_string());
    sqlx::query("DELETE FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(&u)
        .execute(&mut **tx)
        .await?;
    for h in hashes {
        sqlx::query("INSERT INTO recovery_codes (user_id, tenant_id, code_hash) VALUES ($1, $2, $3)")
            .bind(&u)
            .bind(&t)
            .bind(h)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// Uses the recovery code with this hash, once: whether it was unused.
pub async fn use_recovery_code<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
    hash: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE recovery_codes SET used_at = $4 \
         WHERE tenant_id = $1 AND user_id = $2 AND code_hash = $3 AND used_at IS NULL",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .bind(hash)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn recovery_codes_left<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
) -> Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT COUNT(*) FROM recovery_codes WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .fetch_one(ex)
    .await?)
}

/// A sign-in waiting for its second factor.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Challenge {
    pub tenant_id: String,
    pub user_id: String,
    pub first_factor: String,
    pub created_at: i64,
}

pub async fn create_challenge<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
    token_hash: &str,
    first_factor: &str,
    now: i64,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO mfa_challenges (token_hash, tenant_id, user_id, first_factor, created_at, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(token_hash)
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .bind(first_factor)
    .bind(now)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// The live challenge named by this token hash (not used, not expired).
pub async fn challenge<'c>(
    ex: impl Executor<'c, Database = Any>,
    token_hash: &str,
    now: i64,
) -> Result<Option<Challenge>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, user_id, first_factor, created_at FROM mfa_challenges \
         WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}

/// Uses the challenge up: whether it was still live (one of two racing
/// answers wins).
pub async fn consume_challenge<'c>(ex: impl Executor<'c, Database = Any>, token_hash: &str, now: i64) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE mfa_challenges SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2",
    )
    .bind(token_hash)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends the person's open challenges (their second factor changed).
pub async fn void_challenges<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
    now: i64,
) -> Result<()> {
    sqlx::query("UPDATE mfa_challenges SET used_at = $3 WHERE tenant_id = $1 AND user_id = $2 AND used_at IS NULL")
        .bind(scope.tenant_id().to_string())
        .bind(user.to_string())
        .bind(now)
        .execute(ex)
        .await?;
    Ok(())
}

/// A rule a tenant sets for its people's sign-ins.
#[derive(Debug, Clone, Copy)]
enum Rule {
    /// Owners and admins must have a second factor.
    Mfa,
    /// People (owners excepted) sign in with single sign-on only.
    Sso,
}

impl Rule {
    fn column(self) -> &'static str {
        match self {
            Rule::Mfa => "mfa_required",
            Rule::Sso => "sso_required",
        }
    }
}

async fn rule<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, rule: Rule) -> Result<bool> {
    let v: Option<i64> = sqlx::query_scalar(&format!("SELECT {} FROM tenants WHERE id = $1", rule.column()))
        .bind(scope.tenant_id().to_string())
        .fetch_optional(ex)
        .await?;
    Ok(v == Some(1))
}

async fn set_rule(tx: &mut crate::Tx, scope: &TenantScope, rule: Rule, on: bool) -> Result<()> {
    sqlx::query(&format!("UPDATE tenants SET {} = $2 WHERE id = $1", rule.column()))
        .bind(scope.tenant_id().to_string())
        .bind(i64::from(on))
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(())
}

/// Whether the tenant requires a second factor of its owners and admins.
pub async fn tenant_requires<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<bool> {
    rule(ex, scope, Rule::Mfa).await
}

pub async fn set_tenant_requires(tx: &mut crate::Tx, scope: &TenantScope, required: bool) -> Result<()> {
    set_rule(tx, scope, Rule::Mfa, required).await
}

/// Whether the tenant's people (owners excepted) must sign in with single
/// sign-on.
pub async fn tenant_requires_sso<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<bool> {
    rule(ex, scope, Rule::Sso).await
}

pub async fn set_tenant_requires_sso(tx: &mut crate::Tx, scope: &TenantScope, required: bool) -> Result<()> {
    set_rule(tx, scope, Rule::Sso, required).await
}
