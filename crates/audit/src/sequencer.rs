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
        if self.set_leading(leading) {
            tracing::info!(leading, "audit log leadership changed");
        }
        leading
    }

    /// Records whether this instance leads; true when that changed.
    fn set_leading(&self, leading: bool) -> bool {
        leading != self.leading.swap(leading, Ordering::Relaxed)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A change of leadership is noted (and logged) once, not at every check.
    #[test]
    fn a_change_of_leadership_is_noted_once() {
        let s = Sequencer::default();
        assert!(!s.set_leading(false));
        assert!(s.set_leading(true));
        assert!(s.leading());
        assert!(!s.set_leading(true));
        assert!(s.set_leading(false));
        assert!(!s.leading());
        assert!(!s.set_leading(false));
    }

    /// On SQLite the one process leads, from the start and after it resigned.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_sqlite_the_one_process_leads() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db_tests::open(dir.path()).await;
        let s = Sequencer::new(&db);
        assert!(s.leading());
        assert!(s.lead(&db).await);
        s.resign().await;
        assert!(!s.leading());
        assert!(s.lead(&db).await);
        assert!(s.leading());
        // Integrations serialise on the sequencer's own mutex.
        let held = s.exclusive(&db).await.unwrap();
        assert!(tokio::time::timeout(Duration::from_millis(200), s.exclusive(&db)).await.is_err());
        held.release().await;
        s.exclusive(&db).await.unwrap().release().await;
    }

    /// The advisory locks this database's sessions hold: (pid, key).
    async fn advisory_locks(db: &Db) -> Vec<(i32, i64)> {
        sqlx::query_as::<_, (i32, i64)>(
            "SELECT pid, (classid::bigint << 32) | objid::bigint FROM pg_locks \
             WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(db.reader())
        .await
        .unwrap()
    }

    /// On PostgreSQL one instance leads, keeps the lead while its session
    /// lives, and hands it over at once when it resigns or loses its
    /// connection.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn on_postgres_one_instance_leads_until_it_resigns() {
        let (db, dropper) = crate::db_tests::postgres().await;
        let (a, b) = (Sequencer::new(&db), Sequencer::new(&db));
        assert!(!a.leading() && !b.leading(), "nobody leads before trying");
        assert!(a.lead(&db).await);
        assert!(a.leading());
        assert!(!b.lead(&db).await, "the lock is taken");
        assert!(!b.leading());
        assert!(a.lead(&db).await, "a leader keeps the lead");
        assert!(!b.lead(&db).await);
        assert_eq!(advisory_locks(&db).await.iter().filter(|l| l.1 == LEADER_LOCK).count(), 1);

        a.resign().await;
        assert!(!a.leading());
        assert!(b.lead(&db).await, "the lead passes at once");
        assert!(b.leading());
        assert!(!a.lead(&db).await);
        assert!(!a.leading());

        // The leader's session ends (its host died, the network failed):
        // its next check finds it lost the lead, and the other takes it.
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid, 10000) FROM pg_locks WHERE locktype = 'advisory' AND granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .fetch_all(db.reader())
        .await
        .unwrap();
        assert_eq!(killed, [true]);
        assert!(!b.lead(&db).await, "a leader whose session ended no longer leads");
        assert!(!b.leading());
        assert!(a.lead(&db).await);
        // The one that lost its session follows, on a new connection.
        assert!(!b.lead(&db).await);
        a.resign().await;
        assert!(b.lead(&db).await);
        b.resign().await;
        dropper.drop_db(db).await;
    }

    /// On PostgreSQL one integration runs at a time across instances; a
    /// released lock leaves its connection open for the next integration,
    /// a dropped one (a cancelled request) closes it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn on_postgres_one_integration_runs_at_a_time() {
        let (db, dropper) = crate::db_tests::postgres().await;
        let (a, b) = (Sequencer::new(&db), Sequencer::new(&db));
        let held = a.exclusive(&db).await.unwrap();
        let waiting = b.exclusive(&db);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err(), "b waits for a");
        held.release().await;
        let held =
            tokio::time::timeout(Duration::from_secs(10), waiting).await.expect("b runs once a is done").unwrap();
        // a's connection is back in its slot, open, holding no lock.
        {
            let mut slot = a.sequence.lock().await;
            let conn = slot.as_mut().expect("the connection is kept for the next integration");
            let pid: i32 = sqlx::query_scalar("SELECT pg_backend_pid()").fetch_one(&mut *conn).await.unwrap();
            let locks = advisory_locks(&db).await;
            assert!(locks.iter().all(|l| l.0 != pid), "{locks:?}");
            assert_eq!(locks.iter().filter(|l| l.1 == SEQUENCE_LOCK).count(), 1, "b holds it");
        }
        held.release().await;
        assert!(advisory_locks(&db).await.is_empty());

        // Dropped without a release: the lock goes with the connection.
        let dropped = a.exclusive(&db).await.unwrap();
        drop(dropped);
        assert!(a.sequence.lock().await.is_none());
        tokio::time::timeout(Duration::from_secs(10), b.exclusive(&db))
            .await
            .expect("not left locked")
            .unwrap()
            .release()
            .await;
        a.exclusive(&db).await.unwrap().release().await;
        dropper.drop_db(db.clone()).await;
    }
}
