//! Codes that prove control of a number. Bounds live per tenant and
//! number, so deleting an identity and registering the number again
//! resets none of them, and per number across tenants (daily caps on
//! codes sent and tries compared). Each bound is one conditional
//! statement, so two instances racing cannot pass it together. Rows are
//! taken in one order: the tenant's row, the number's totals, then the
//! identity or the balance.

use palisade_core::{IdentityId, TenantScope};

use crate::{Result, Tx};

const DAY_MS: i64 = 24 * 3600 * 1000;

/// How codes are bounded (from `numbers.*` configuration), in ms.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    pub ttl_ms: i64,
    pub resend_ms: i64,
    pub per_day: i64,
    pub attempts: i64,
    pub lock_ms: i64,
    /// Codes one number receives per day, whoever asks.
    pub number_codes_per_day: i64,
    /// Tries compared per number per day, whoever tries.
    pub number_tries_per_day: i64,
}

/// Which code: the tenant's row for the number, bound to one identity.
#[derive(Debug, Clone, Copy)]
pub struct Target<'a> {
    pub scope: &'a TenantScope,
    pub number: &'a str,
    pub identity: IdentityId,
}

/// Records a new code for the identity (replacing any pending one), if
/// the tenant's bounds allow one now and the identity is still active and
/// unverified; `Err(wait_ms)` when they do not (0: the identity changed).
pub async fn record_code(
    tx: &mut Tx,
    t: Target<'_>,
    code_hash: &str,
    b: Bounds,
    now: i64,
) -> Result<std::result::Result<(), i64>> {
    let sent: Option<String> = sqlx::query_scalar(
        "INSERT INTO number_verifications (tenant_id, number, identity_id, code_hash, expires_at, failed_attempts, \
           last_sent_at, window_start, sent_in_window, locked_until) \
         SELECT $1, $2, $3, $4, $5, 0, $6, $6, 1, 0 WHERE EXISTS (SELECT 1 FROM identities i \
           WHERE i.id = $3 AND i.tenant_id = $1 AND i.number = $2 AND i.status = 'active' \
             AND i.number_verified_at IS NULL) \
         ON CONFLICT (tenant_id, number) DO UPDATE SET identity_id = excluded.identity_id, \
           code_hash = excluded.code_hash, expires_at = excluded.expires_at, failed_attempts = 0, \
           last_sent_at = excluded.last_sent_at, \
           sent_in_window = CASE WHEN number_verifications.window_start <= $6 - $7 THEN 1 \
             ELSE number_verifications.sent_in_window + 1 END, \
           window_start = CASE WHEN number_verifications.window_start <= $6 - $7 THEN $6 \
             ELSE number_verifications.window_start END \
         WHERE number_verifications.last_sent_at <= $6 - $8 AND number_verifications.locked_until <= $6 \
           AND (number_verifications.window_start <= $6 - $7 OR number_verifications.sent_in_window < $9) \
         RETURNING number",
    )
    .bind(t.scope.tenant_id().to_string())
    .bind(t.number)
    .bind(t.identity.to_string())
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
    Ok(Err(wait_ms(tx, t, b, now).await?))
}

/// How long until the tenant may send the number a code again, or try one.
async fn wait_ms(tx: &mut Tx, t: Target<'_>, b: Bounds, now: i64) -> Result<i64> {
    let row: Option<(i64, i64, i64, i64)> = sqlx::query_as(
        "SELECT last_sent_at, window_start, sent_in_window, locked_until FROM number_verifications \
         WHERE tenant_id = $1 AND number = $2",
    )
    .bind(t.scope.tenant_id().to_string())
    .bind(t.number)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((last_sent, window_start, sent, locked_until)) = row else { return Ok(0) };
    let mut until = (last_sent + b.resend_ms).max(locked_until);
    if sent >= b.per_day && window_start > now - DAY_MS {
        until = until.max(window_start + DAY_MS);
    }
    Ok((until - now).max(0))
}

/// Counts one code to the number against the platform's daily cap for
/// it; false (and the tenant's code voided) when the cap is reached: the
/// code is then not sent, silently.
pub async fn count_code_to_number(tx: &mut Tx, t: Target<'_>, b: Bounds, now: i64) -> Result<bool> {
    if total(tx, t.number, "codes_sent", b.number_codes_per_day, now).await? {
        return Ok(true);
    }
    void(tx, t).await?;
    Ok(false)
}

/// Counts `column` for the number in its daily window; false when the
/// window's cap is reached.
async fn total(tx: &mut Tx, number: &str, column: &str, cap: i64, now: i64) -> Result<bool> {
    let (sent, tries) = if column == "codes_sent" { (1, 0) } else { (0, 1) };
    let counted: Option<String> = sqlx::query_scalar(&format!(
        "INSERT INTO number_code_totals (number, window_start, codes_sent, tries) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (number) DO UPDATE SET \
           codes_sent = CASE WHEN number_code_totals.window_start <= $2 - $5 THEN $3 \
             ELSE number_code_totals.codes_sent + $3 END, \
           tries = CASE WHEN number_code_totals.window_start <= $2 - $5 THEN $4 \
             ELSE number_code_totals.tries + $4 END, \
           window_start = CASE WHEN number_code_totals.window_start <= $2 - $5 THEN $2 \
             ELSE number_code_totals.window_start END \
         WHERE number_code_totals.window_start <= $2 - $5 OR number_code_totals.{column} < $6 \
         RETURNING number"
    ))
    .bind(number)
    .bind(now)
    .bind(sent)
    .bind(tries)
    .bind(DAY_MS)
    .bind(cap)
    .fetch_optional(&mut **tx)
    .await?;
    Ok(counted.is_some())
}

/// A try at the pending code, taken before the code is compared: however
/// many tries race, no more than `attempts` per code, and no more than
/// the number's daily tries, are ever compared.
pub enum Attempt {
    /// The stored hash to compare with, and whether this is the last try.
    Take { code_hash: String, last: bool },
    /// The tenant's tries for the number are locked this many ms more.
    Locked(i64),
    /// No code is pending for this identity, it expired, or the number's
    /// daily tries are spent (said alike).
    NoCode,
}

pub async fn take_attempt(tx: &mut Tx, t: Target<'_>, b: Bounds, now: i64) -> Result<Attempt> {
    let taken: Option<(String, i64)> = sqlx::query_as(
        "UPDATE number_verifications SET failed_attempts = failed_attempts + 1 \
         WHERE tenant_id = $1 AND number = $2 AND identity_id = $3 AND code_hash IS NOT NULL AND expires_at > $4 \
           AND locked_until <= $4 AND failed_attempts < $5 \
         RETURNING code_hash, failed_attempts",
    )
    .bind(t.scope.tenant_id().to_string())
    .bind(t.number)
    .bind(t.identity.to_string())
    .bind(now)
    .bind(b.attempts)
    .fetch_optional(&mut **tx)
    .await?;
    if let Some((code_hash, tries)) = taken {
        if !total(tx, t.number, "tries", b.number_tries_per_day, now).await? {
            return Ok(Attempt::NoCode);
        }
        return Ok(Attempt::Take { code_hash, last: tries >= b.attempts });
    }
    let locked_until: Option<i64> =
        sqlx::query_scalar("SELECT locked_until FROM number_verifications WHERE tenant_id = $1 AND number = $2")
            .bind(t.scope.tenant_id().to_string())
            .bind(t.number)
            .fetch_optional(&mut **tx)
            .await?;
    Ok(match locked_until {
        Some(until) if until > now => Attempt::Locked(until - now),
        _ => Attempt::NoCode,
    })
}

/// After the last wrong try: the code is dead and the tenant waits.
pub async fn lock(tx: &mut Tx, t: Target<'_>, b: Bounds, now: i64) -> Result<()> {
    sqlx::query(
        "UPDATE number_verifications SET code_hash = NULL, locked_until = $3 WHERE tenant_id = $1 AND number = $2",
    )
    .bind(t.scope.tenant_id().to_string())
    .bind(t.number)
    .bind(now + b.lock_ms)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// No code stays pending (it was used, or never reached the phone); the
/// bounds stay.
pub async fn void(tx: &mut Tx, t: Target<'_>) -> Result<()> {
    sqlx::query("UPDATE number_verifications SET code_hash = NULL WHERE tenant_id = $1 AND number = $2")
        .bind(t.scope.tenant_id().to_string())
        .bind(t.number)
        .execute(&mut **tx)
        .await?;
    Ok(())
}
