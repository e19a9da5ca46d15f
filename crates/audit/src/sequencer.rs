//! Who sequences the log, when several instances share one database.
//!
//! - One integration at a time in the whole cluster: on PostgreSQL each
//!   integration holds the advisory lock [`SEQUENCE_LOCK`], taken on a
//!   connection of this instance's own (any instance may integrate: the
//!   leader in the background, the others for a reader who must see their
//!   own writes at once); on SQLite the one process serialises itself.
//! - One leader runs the background integrator and keeps the witness file:
//!   the instance whose own connection holds [`LEADER_LOCK`] for as long as
//!   it leads. When that connection drops (the process stopped or died, the
//!   network failed), PostgreSQL releases the lock and another instance
//!   takes it at its next try, within about a second. On SQLite the one
//!   process leads.
//!
//! The head's compare-and-swap stays as the last guard: two instances that
//! both believed they held a lock would still make one chain.

use std::sync::atomic::{AtomicBool, Ordering};

use palisade_store::{Db, Dialect, StoreError};
use sqlx::{AnyConnection, Connection};
use tokio::sync::{Mutex, MutexGuard};

/// Advisory lock keys (scoped to the database by PostgreSQL).
const LEADER_LOCK: i64 = 0x7061_6c69_7361_0001;
const SEQUENCE_LOCK: i64 = 0x7061_6c69_7361_0002;

#[derive(Default)]
pub struct Sequencer {
    /// The connection that holds (or keeps trying for) the leader lock.
    leader: Mutex<Option<AnyConnection>>,
    leading: AtomicBool,
    /// The connection integrations take the sequence lock on.
    sequence: Mutex<Option<AnyConnection>>,
}

/// Held while one integration runs. Dropped without [`Exclusive::release`]
/// (a cancelled request), its connection closes, and PostgreSQL releases the
/// lock with it: a lock is never left behind on a pooled connection.
pub struct Exclusive<'a> {
    slot: MutexGuard<'a, Option<AnyConnection>>,
    conn: Option<AnyConnection>,
}

impl Exclusive<'_> {
    pub async fn release(mut self) {
        if let Some(mut conn) = self.conn.take() {
            let unlocked = sqlx::query("SELECT pg_advisory_unlock($1)").bind(SEQUENCE_LOCK).execute(&mut conn).await;
            if unlocked.is_ok() {
                *self.slot = Some(conn);
            }
        }
    }
}

impl Sequencer {
    /// On SQLite the one process leads from the start.
    pub fn new(db: &Db) -> Self {
        let s = Self::default();
        s.leading.store(db.dialect() == Dialect::Sqlite, Ordering::Relaxed);
        s
    }

    /// Whether this instance leads now; a follower tries to take the lead.
    pub async fn lead(&self, db: &Db) -> bool {
        if db.dialect() == Dialect::Sqlite {
            self.leading.store(true, Ordering::Relaxed);
            return true;
        }
        let mut slot = self.leader.lock().await;
        let conn = match slot.as_mut() {
            Some(c) => c,
            None => match db.dedicated().await {
                Ok(c) => slot.insert(c),
                Err(e) => {
                    tracing::warn!(error = %e, "audit leader election: no connection");
                    self.leading.store(false, Ordering::Relaxed);
                    return false;
                }
            },
        };
        let result = if self.leading.load(Ordering::Relaxed) {
            // The lock lives as long as the session: a live session holds it.
            sqlx::query("SELECT 1").execute(&mut *conn).await.map(|_| true)
        } else {
            sqlx::query_scalar::<_, bool>("SELECT pg_try_advisory_lock($1)")
                .bind(LEADER_LOCK)
                .fetch_one(&mut *conn)
                .await
        };
        let leading = match result {
            Ok(leading) => leading,
            Err(e) => {
                tracing::warn!(error = %e, "audit leader connection lost");
                *slot = None;
                false
            }
        };
        if leading != self.leading.swap(leading, Ordering::Relaxed) {
            tracing::info!(leading, "audit log leadership changed");
        }
        leading
    }

    /// Whether this instance led at its last check.
    pub fn leading(&self) -> bool {
        self.leading.load(Ordering::Relaxed)
    }

    /// Gives up the lead (at shutdown): another instance takes it at once.
    pub async fn resign(&self) {
        if let Some(conn) = self.leader.lock().await.take() {
            let _ = conn.close().await;
        }
        self.leading.store(false, Ordering::Relaxed);
    }

    /// Waits until no other integration runs anywhere, and holds that.
    pub async fn exclusive(&self, db: &Db) -> Result<Exclusive<'_>, StoreError> {
        let mut slot = self.sequence.lock().await;
        if db.dialect() == Dialect::Sqlite {
            return Ok(Exclusive { slot, conn: None });
        }
        let mut conn = match slot.take() {
            Some(c) => c,
            None => {
                let mut c = db.dedicated().await?;
                // A reader waiting to see its own writes waits a bounded
                // time for an integration elsewhere that hangs.
                sqlx::query("SET lock_timeout = '10s'").execute(&mut c).await?;
                c
            }
        };
        sqlx::query("SELECT pg_advisory_lock($1)").bind(SEQUENCE_LOCK).execute(&mut conn).await?;
        Ok(Exclusive { slot, conn: Some(conn) })
    }
}
