//! Codes that prove control of an identity's number: one pending code per
//! identity, stored as a keyed hash, with what bounds them (spacing, a
//! daily count, a lock after wrong tries). Each bound is one conditional
//! statement, so two instances racing cannot pass it together.

use palisade_core::{IdentityId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How codes are bounded (from `numbers.*` configuration), in ms.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub ttl_ms: i64,
    pub resend_ms: i64,
    pub per_day: i64,
    pub attempts: i64,
    pub lock_ms: i64,
}

/// Records a new code for the identity, replacing any pending one, if the
/// bounds allow sending one now; `Err(wait_ms)` when they do not.
pub async fn record_code(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: IdentityId,
    code_hash: &str,
    b: Bounds,
    now: i64,
) -> Result<std::result::Result<(), i64>> {
    let sent: Option<String> = sqlx::query_scalar(
        "INSERT INTO number_verifications (identity_id, tenant_id, code_hash, expires_at, failed_attempts, \
           last_sent_at, window_start, sent_in_window, locked_until) \
         VALUES ($1, $2, $3, $4, 0, $5, $5, 1, 0) \
         ON CONFLICT (identity_id) DO UPDATE SET code_hash = excluded.code_hash, \
           expires_at = excluded.expires_at, failed_attempts = 0, last_sent_at = excluded.last_sent_at, \
           sent_in_window = CASE WHEN number_verifications.window_start <= $5 - $6 THEN 1 \
             ELSE number_verifications.sent_in_window + 1 END, \
           window_start = CASE WHEN number_verifications.window_start <= $5 - $6 THEN $5 \
             ELSE number_verifications.window_start END \
         WHERE number_verifications.tenant_id = $2 AND number_verifications.last_sent_at <= $5 - $7 \
           AND number_verifications.locked_until <= $5 \
           AND (number_verifications.window_start <= $5 - $6 OR number_verifications.sent_in_window < $8) \
         RETURNING identity_id",
    )
    .bind(id.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(code_hash)
    .bind(now + b.ttl_ms)
    .bind(now)
    .bind(DAY_MS)
    .bind(b.resend_ms)
    .bind(b.per_day)
    .fetch_optional(&mut **tx)
    .await?;
    if sent.is_some() {
        return Ok(Ok(()));
    }
    Ok(Err(wait_ms(&mut **tx, scope, id, b, now).await?))
}

/// How long until the identity may be sent a code again (or may try one).
pub async fn wait_ms<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: IdentityId,
    b: Bounds,
    now: i64,
) -> Result<i64> {
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT last_sent_at, window_start, sent_in_window, locked_until FROM number_verifications \
         WHERE tenant_id = $1 AND identity_id = $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .fetch_optional(ex)
    .await?;
    let Some((last_sent, window_start, sent, locked_until)) = row else { return Ok(0) };
    let mut until = (last_sent + b.resend_ms).max(locked_until);
    if sent >= b.per_day && window_start > now - DAY_MS {
        until = until.max(window_start + DAY_MS);
    }
    Ok((until - now).max(0))
}

/// A try at the pending code, taken before the code is compared: however
/// many tries race, no more than `attempts` are ever compared.
pub enum Attempt {
    /// The stored hash to compare with, and whether this is the last try.
    Take { code_hash: String, last: bool },
    /// The identity is locked after wrong tries, this many ms more.
    Locked(i64),
    /// No code is pending, or it expired.
    NoCode,
}

pub async fn take_attempt(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: IdentityId,
    b: Bounds,
    now: i64,
) -> Result<Attempt> {
    let taken: Option<(String, i64)> = sqlx::query_as(
        "UPDATE number_verifications SET failed_attempts = failed_attempts + 1 \
         WHERE tenant_id = $1 AND identity_id = $2 AND code_hash IS NOT NULL AND expires_at > $3 \
           AND locked_until <= $3 AND failed_attempts < $4 \
         RETURNING code_hash, failed_attempts",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(now)
    .bind(b.attempts)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((code_hash, tries)) = taken {
        return Ok(Attempt::Take { code_hash, last: tries >= b.attempts });
    }
    let locked_until: Option<i64> =
        sqlx::query_scalar("SELECT locked_until FROM number_verifications WHERE tenant_id = $1 AND identity_id = $2")
            .bind(scope.tenant_id().to_string())
            .bind(id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match locked_until {
        Some(until) if until > now => Attempt::Locked(until - now),
        _ => Attempt::NoCode,
    })
}

/// After the last wrong try: the code is dead and the identity waits.
pub async fn lock(tx: &mut crate::Tx, scope: &TenantScope, id: IdentityId, b: Bounds, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE number_verifications SET code_hash = NULL, locked_until = $3 \
         WHERE tenant_id = $1 AND identity_id = $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(now + b.lock_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// The code was right: nothing stays pending.
pub async fn clear<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, id: IdentityId) -> Result<()> {
    sqlx::query("DELETE FROM number_verifications WHERE tenant_id = $1 AND identity_id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .execute(ex)
        .await?;
    Ok(())
}
