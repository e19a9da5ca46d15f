//! PostgreSQL durability barrier shared by concurrent writers.
//!
//! Writes commit without waiting for the disk (so row locks are let go at
//! once) and their callers wait here before answering. A barrier is a
//! transaction that takes a transaction id and commits synchronously: the
//! log is flushed up to its commit record, past every commit made before it
//! started. One barrier serves every writer that arrived before it started,
//! so under load there is one barrier per flush rather than one per write.

use std::sync::{Arc, Mutex, PoisonError};

use sqlx::AnyPool;
use tokio::sync::watch;

use crate::Result;

#[derive(Debug)]
pub(crate) struct Barrier {
    state: Mutex<State>,
    done: watch::Sender<Done>,
}

#[derive(Debug, Default)]
struct State {
    /// Number of the next barrier to start.
    next: u64,
    /// Highest barrier number a writer waits for.
    wanted: u64,
    running: bool,
}

#[derive(Debug, Clone, Copy)]
struct Done {
    number: u64,
    ok: bool,
}

impl Barrier {
    pub(crate) fn new() -> Arc<Barrier> {
        let (done, _) = watch::channel(Done { number: 0, ok: true });
        Arc::new(Barrier { state: Mutex::new(State { next: 1, ..State::default() }), done })
    }

    /// Returns once every commit made before this call is on disk.
    pub(crate) async fn wait(self: &Arc<Self>, pool: &AnyPool) -> Result<()> {
        let mut rx = self.done.subscribe();
        let (target, start) = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            // The next barrier has not started: it starts after our commit.
            let target = s.next;
            s.wanted = s.wanted.max(target);
            let start = !s.running;
            s.running = true;
            (target, start)
        };
        if start {
            tokio::spawn(self.clone().run(pool.clone()));
        }
        let done = rx.wait_for(|d| d.number >= target).await.map(|d| *d);
        match done {
            Ok(d) if d.ok => Ok(()),
            // That barrier failed (or the runner is gone): our own.
            _ => flush(pool).await,
        }
    }

    async fn run(self: Arc<Self>, pool: AnyPool) {
        loop {
            let number = {
                let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                if s.wanted < s.next {
                    s.running = false;
                    return;
                }
                s.next += 1;
                s.next - 1
            };
            let ok = flush(&pool).await.is_ok();
            self.done.send_replace(Done { number, ok });
        }
    }
}

/// A transaction that writes WAL (an update of the barrier's row) and
/// commits synchronously: its commit flushes the log past every commit
/// made before it started. Taking a transaction id alone would not do: a
/// transaction that wrote no WAL before its commit record commits without
/// a flush.
async fn flush(pool: &AnyPool) -> Result<()> {
    sqlx::query(
        "WITH sync AS (SELECT set_config('synchronous_commit', 'on', true)) \
         UPDATE palisade_barrier SET n = n + 1 WHERE id = 1 AND EXISTS (SELECT 1 FROM sync)",
    )
    .execute(pool)
    .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Concurrent writers share barriers: fewer barriers than writers, and
    /// each writer returns only after one that started after its call.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn concurrent_waits_share_barriers() {
        let (db, dropper) = crate::pg_batch::tests::test_postgres().await;
        let pool = db.write_pool().clone();
        let barrier = Barrier::new();
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let (b, p) = (barrier.clone(), pool.clone());
            tasks.push(tokio::spawn(async move {
                let before = b.done.borrow().number;
                b.wait(&p).await.unwrap();
                // A barrier numbered after any finished before the call.
                assert!(b.done.borrow().number > before);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let barriers = barrier.done.borrow().number;
        assert!((1..200).contains(&barriers), "{barriers} barriers for 200 writers");
        // Idle again: the next writer starts a new one.
        barrier.wait(&pool).await.unwrap();
        assert_eq!(barrier.done.borrow().number, barriers + 1);
        dropper.drop_db(db).await;
    }

    /// A commit that did not wait for the disk is on disk once a barrier
    /// started after it returns (the log is flushed past it).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn a_barrier_flushes_earlier_commits() {
        let (db, dropper) = crate::pg_batch::tests::test_postgres().await;
        let pool = db.write_pool().clone();
        let barrier = Barrier::new();
        for i in 0..20 {
            let early = "WITH e AS (SELECT set_config('synchronous_commit', 'off', true)) \
                INSERT INTO settings (name, value) SELECT $1, 'x' FROM e";
            sqlx::query(early).bind(format!("k{i}")).execute(&pool).await.unwrap();
            let written: String =
                sqlx::query_scalar("SELECT pg_current_wal_insert_lsn()::text").fetch_one(&pool).await.unwrap();
            barrier.wait(&pool).await.unwrap();
            let flushed: bool = sqlx::query_scalar("SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn")
                .bind(&written)
                .fetch_one(&pool)
                .await
                .unwrap();
            assert!(flushed, "the log was not flushed past {written}");
        }
        dropper.drop_db(db).await;
    }
}
