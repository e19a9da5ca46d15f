//! Sign-in codes by mail: one row per address (its SHA-256), the code as a
//! keyed hash. Every step is one conditional statement, so concurrent
//! requests can neither use a code twice nor guess more than allowed.

use sqlx::{Any, Executor};

use crate::Result;

/// The rules, from the configuration.
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub ttl_ms: i64,
    pub max_tries: i64,
    pub lockout_ms: i64,
    pub max_sends: i64,
    pub send_window_ms: i64,
}

/// Stores a new code for the address (the old one dies), unless the
/// address is locked or has had `max_sends` codes in the current window:
/// whether one was issued.
pub async fn issue(tx: &mut crate::Tx, key: &str, code_hash: &str, now: i64, r: Rules) -> Result<bool> {
    // The row first (an upsert that changes nothing): it is locked until
    // the transaction ends, so two requests racing count both their sends.
    sqlx::query(
        "INSERT INTO email_codes (email_key, expires_at, window_start) VALUES ($1, 0, 0) \
         ON CONFLICT (email_key) DO UPDATE SET email_key = email_codes.email_key",
    )
    .bind(key)
    .execute(&mut **tx)
    .await?;
    let (locked_until, start, sends, tries): (i64, i64, i64, i64) =
        sqlx::query_as("SELECT locked_until, window_start, sends, tries FROM email_codes WHERE email_key = $1")
            .bind(key)
            .fetch_one(&mut **tx)
            .await?;
    if locked_until > now {
        return Ok(false);
    }
    // Wrong tries count for the address, not for one code: a new code does
    // not give them back (only the wait after a lock does, or a new window).
    let (start, sends, tries) = if now - start >= r.send_window_ms {
        (now, 1, 0)
    } else if sends >= r.max_sends {
        return Ok(false);
    } else {
        (start, sends + 1, if locked_until != 0 { 0 } else { tries })
    };
    sqlx::query(
        "UPDATE email_codes SET code_hash = $2, expires_at = $3, tries = $4, locked_until = 0, window_start = $5, \
         sends = $6, locks = CASE WHEN $5 = $7 THEN 0 ELSE locks END WHERE email_key = $1",
    )
    .bind(key)
    .bind(code_hash)
    .bind(now + r.ttl_ms)
    .bind(tries)
    .bind(start)
    .bind(sends)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(true)
}

/// Counts a try against the address's live code and returns the code (and
/// the tries so far) to compare; none when there is no live code, it has
/// expired, its tries are spent, or the address is locked.
pub async fn take_try<'c>(
    ex: impl Executor<'c, Database = Any>,
    key: &str,
    now: i64,
    r: Rules,
) -> Result<Option<(String, i64)>> {
    Ok(sqlx::query_as(
        "UPDATE email_codes SET tries = tries + 1 WHERE email_key = $1 AND code_hash IS NOT NULL \
         AND expires_at > $2 AND tries < $3 AND locked_until <= $2 RETURNING code_hash, tries",
    )
    .bind(key)
    .bind(now)
    .bind(r.max_tries)
    .fetch_optional(ex)
    .await?)
}

/// The right code, once: false if it was used meanwhile.
pub async fn consume<'c>(ex: impl Executor<'c, Database = Any>, key: &str, code_hash: &str) -> Result<bool> {
    let r = sqlx::query("UPDATE email_codes SET code_hash = NULL WHERE email_key = $1 AND code_hash = $2")
        .bind(key)
        .bind(code_hash)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Too many wrong tries: the code dies and the address waits, twice as
/// long for each lock since its send window began (at most a day). Until
/// when.
pub async fn lock(tx: &mut crate::Tx, key: &str, now: i64, r: Rules) -> Result<i64> {
    let locks: i64 = sqlx::query_scalar(
        "UPDATE email_codes SET code_hash = NULL, locks = locks + 1 WHERE email_key = $1 RETURNING locks",
    )
    .bind(key)
    .fetch_optional(&mut **tx)
    .await?
    .unwrap_or(1);
    let wait = r.lockout_ms.saturating_mul(1i64 << (locks - 1).clamp(0, 16)).min(86_400_000);
    let until = now + wait;
    sqlx::query("UPDATE email_codes SET locked_until = $2 WHERE email_key = $1")
        .bind(key)
        .bind(until)
        .execute(&mut **tx)
        .await?;
    Ok(until)
}

/// Housekeeping: rows past their code, lock and send window.
pub async fn purge<'c>(ex: impl Executor<'c, Database = Any>, before: i64) -> Result<u64> {
    let r = sqlx::query("DELETE FROM email_codes WHERE expires_at < $1 AND locked_until < $1 AND window_start < $1")
        .bind(before)
        .execute(ex)
        .await?;
    Ok(r.rows_affected())
}
