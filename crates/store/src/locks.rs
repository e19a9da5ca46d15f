//! The one order in which writes take the rows that money paths share.
//!
//! Two transactions that take rows in the same order never wait for each
//! other in a cycle; in different orders PostgreSQL aborts one of them as
//! a deadlock (SQLSTATE 40P01). So every write takes, of these, only the
//! ones it needs, in this order, and a write that needs a row later in the
//! order than the first it changes locks it up front ([`spend`],
//! [`balance`]):
//!
//! 1. the request's idempotency key (a concurrent insert of the same key
//!    waits for it);
//! 2. the record the write is about: the call being ended, the message
//!    being failed;
//! 3. the identity's monthly spend (`identity_spend`);
//! 4. the tenant's call slots (`call_slots`);
//! 5. the tenant's balance (`balances`), last: every paid send of the
//!    tenant waits for it, so it is held for as short as can be.
//!
//! Rows that are only inserted with new keys (ledger lines, CDRs, audit
//! events, webhook deliveries) are nobody else's and may come anywhere.
//!
//! | write | rows, in order |
//! |---|---|
//! | message send (one statement; its parts run in list order) | key, spend, balance |
//! | merged sends (one statement) | balances, sorted by tenant |
//! | call placement | key, spend, slots, balance |
//! | call end (hang-up, the carrier, recovery) | call, spend, slots, balance |
//! | a live call's next minute | call, spend, balance |
//! | recovery's refund of an unsent message | message, spend, balance |
//! | top-up (payment, operator) | balance, then an operator's key |
//! | number verification code | the identity's code row, balance |
//!
//! An operator's idempotency keys live apart from tenants' (a prefix a
//! tenant's key cannot have), so the one key taken after a balance is one
//! that no other write takes.
//!
//! SQLite runs one write at a time (the write lock), so there the order
//! costs nothing and the up-front locks are plain reads.
//!
//! Whatever the order, PostgreSQL may still abort a transaction for a
//! conflict (a serialization failure, a lock cycle with a path not listed
//! here): [`retrying`] runs such a transaction again.

use std::future::Future;
use std::time::Duration;

use palisade_core::TenantScope;

use crate::{Dialect, Result, StoreError, Tx};

/// Locks the identity's spend row for `month` (creating it at 0), so a
/// write that changes the balance first can change it later without
/// waiting for it after the balance.
pub async fn spend(tx: &mut Tx, identity: &str, month: &str) -> Result<()> {
    // An upsert, not SELECT … FOR UPDATE: with no row yet, a concurrent
    // first spend of the month would be inserted and waited for later.
    sqlx::query(
        "INSERT INTO identity_spend (identity_id, month, spent) VALUES ($1, $2, 0) \
         ON CONFLICT (identity_id, month) DO UPDATE SET spent = identity_spend.spent",
    )
    .bind(identity)
    .bind(month)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Locks the tenant's balance row and returns the balance (0 without one).
pub async fn balance(tx: &mut Tx, scope: &TenantScope) -> Result<i64> {
    let sql = match tx.dialect() {
        Dialect::Postgres => "SELECT balance FROM balances WHERE tenant_id = $1 FOR UPDATE",
        Dialect::Sqlite => "SELECT balance FROM balances WHERE tenant_id = $1",
    };
    Ok(sqlx::query_scalar(sql).bind(scope.tenant_id().to_string()).fetch_optional(&mut **tx).await?.unwrap_or(0))
}

/// Attempts of a transaction that the database keeps aborting for a
/// conflict, at most.
pub const ATTEMPTS: u32 = 6;

/// Runs `attempt`, a whole transaction (begun and committed inside it),
/// again when the database aborted it for a deadlock (40P01) or a
/// serialization failure (40001): it wrote nothing, so running it again
/// is safe, and the conflict is gone by then. At most [`ATTEMPTS`] times,
/// with a short random pause before each new attempt (so the two sides of
/// a conflict do not meet again in step).
pub async fn retrying<T, F, Fut>(mut attempt: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let mut tried = 1;
    loop {
        match attempt().await {
            Err(e) if e.is_conflict() && tried < ATTEMPTS => {
                tracing::debug!(error = %e, tried, "a write conflicted; running it again");
                tokio::time::sleep(pause(tried)).await;
                tried += 1;
            }
            other => return other,
        }
    }
}

/// Up to 5 ms after the first conflict, doubling each time (at most
/// 160 ms), spread at random over the lower half.
fn pause(tried: u32) -> Duration {
    let most = 5u64 << tried.min(6).saturating_sub(1);
    let jitter = u64::try_from(uuid::Uuid::new_v4().as_u128() % 1000).unwrap_or(0);
    Duration::from_micros(most * 500 + most * jitter / 2)
}

impl StoreError {
    /// The database aborted the transaction for a conflict with another
    /// (a deadlock, a serialization failure): nothing of it was written.
    pub fn is_conflict(&self) -> bool {
        match self {
            StoreError::Sqlx(sqlx::Error::Database(e)) => matches!(e.code().as_deref(), Some("40P01" | "40001")),
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A conflict runs the transaction again, at most [`ATTEMPTS`] times;
    /// any other error is the caller's at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn conflicts_run_again_other_errors_do_not() {
        use std::sync::atomic::{AtomicU32, Ordering::Relaxed};
        let (db, dropper) = crate::pg_batch::tests::test_postgres().await;
        let fail = |code: &'static str| {
            let db = db.clone();
            async move {
                let sql = format!("DO $$ BEGIN RAISE EXCEPTION 'injected' USING ERRCODE = '{code}'; END $$");
                sqlx::query(&sql).execute(db.reader()).await.map(drop).map_err(StoreError::from)
            }
        };
        let tries = AtomicU32::new(0);
        let once = |code| {
            tries.fetch_add(1, Relaxed);
            fail(code)
        };
        assert!(retrying(|| once("40P01")).await.unwrap_err().is_conflict());
        assert_eq!(tries.swap(0, Relaxed), ATTEMPTS);
        assert!(retrying(|| once("40001")).await.unwrap_err().is_conflict());
        assert_eq!(tries.swap(0, Relaxed), ATTEMPTS);
        assert!(!retrying(|| once("23505")).await.unwrap_err().is_conflict());
        assert_eq!(tries.swap(0, Relaxed), 1);
        // Through once the conflict is gone.
        let n = retrying(|| {
            let n = tries.fetch_add(1, Relaxed) + 1;
            let f = fail("40P01");
            async move {
                if n < 3 {
                    f.await.map(|()| n)
                } else {
                    Ok(n)
                }
            }
        })
        .await
        .unwrap();
        assert_eq!(n, 3);
        dropper.drop_db(db).await;
    }

    #[test]
    fn pauses_are_short_and_grow() {
        for tried in 1..ATTEMPTS {
            let p = pause(tried);
            let most = Duration::from_millis(5 << (tried - 1));
            assert!(p >= most / 2 && p <= most, "{p:?} after {tried}");
        }
    }
}
