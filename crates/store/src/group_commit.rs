//! Group commit for SQLite. sqlx runs every statement as a round trip to a
//! driver thread (about 100 µs on a small machine), which caps SQLite near
//! 10,000 statements a second. Hot write paths instead hand a closure to one
//! writer thread that owns its own connection: it runs the closures of all
//! callers waiting at that moment in one transaction, each inside its own
//! savepoint (a failing closure undoes only its own writes), commits once,
//! and only then answers every caller. Nobody hears "done" before the
//! commit that makes it so.

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use rusqlite::Connection;
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::{Result, StoreError};

/// Upper bound of closures per transaction, so one commit never waits on
/// an unbounded amount of work.
const MAX_BATCH: usize = 512;

/// One caller's closure and the way back to the caller.
trait Job: Send {
    /// Runs the closure inside its own savepoint; false when the savepoint
    /// itself could not be handled, so the batch's transaction is suspect.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller once the commit outcome is known.
    fn finish(self: Box<Self>, commit_error: Option<&str>);
}

struct Typed<T, F> {
    f: Option<F>,
    out: Option<Result<T>>,
    reply: oneshot::Sender<Result<T>>,
}

impl<T, F> Job for Typed<T, F>
where
    T: Send + 'static,
    F: FnOnce(&Connection) -> Result<T> + Send + 'static,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let Some(f) = self.f.take() else { return true };
        let (out, healthy) = in_savepoint(conn, f);
        self.out = Some(out);
        healthy
    }

    fn finish(self: Box<Self>, commit_error: Option<&str>) {
        let out = match (commit_error, self.out) {
            (None, Some(out)) => out,
            (Some(e), _) => Err(StoreError::Commit(e.to_owned())),
            (None, None) => Err(StoreError::Commit("the write never ran".into())),
        };
        let _ = self.reply.send(out);
    }
}

pub struct GroupCommit {
    jobs: mpsc::Sender<Box<dyn Job>>,
}

impl std::fmt::Debug for GroupCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("GroupCommit")
    }
}

/// WAL pages after which a committing writer checkpoints by itself.
pub(crate) const WAL_AUTOCHECKPOINT_PAGES: i64 = 16_384;

/// Opens a connection with the pragmas every SQLite connection here uses.
pub(crate) fn open(path: &Path, read_only: bool) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX
    };
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    // The hot paths use a few dozen distinct statements; keep them compiled.
    conn.set_prepared_statement_cache_capacity(128);
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // Checkpoints are the checkpointer thread's job, off the writers'
        // path; this is only the backstop.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)?;
        conn.pragma_update(None, "journal_size_limit", 64 * 1024 * 1024)?;
    }
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // Every job runs in a savepoint, whose undo journal would otherwise be a
    // temporary file written page by page.
    conn.pragma_update(None, "temp_store", "MEMORY")?;
    Ok(conn)
}

impl GroupCommit {
    /// Starts the writer thread. `lock` is the database's write lock, shared
    /// with sqlx write transactions so the two never wait on SQLite's busy
    /// handler for each other.
    pub(crate) fn start(path: &Path, lock: Arc<Mutex<()>>) -> Result<Self> {
        let conn = open(path, false)?;
        // Only to wait on the (fair, async) write lock with a deadline.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .map_err(|e| StoreError::Setup(format!("cannot start the SQLite writer's timer: {e}")))?;
        let (jobs, rx) = mpsc::channel::<Box<dyn Job>>(4096);
        std::thread::Builder::new()
            .name("sqlite-writer".into())
            .spawn(move || run(conn, rx, lock, rt))
            .map_err(|e| StoreError::Setup(format!("cannot start the SQLite writer thread: {e}")))?;
        Ok(Self { jobs })
    }

    /// Runs `f` in the next group transaction and returns its result once
    /// that transaction has committed. An `Err` from `f` rolls back only
    /// what `f` wrote.
    pub async fn write<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel::<Result<T>>();
        let job: Box<dyn Job> = Box::new(Typed { f: Some(f), out: None, reply });
        self.jobs.send(job).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

/// How often the checkpointer copies the WAL into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(25);

/// Starts a thread that checkpoints the WAL every [`CHECKPOINT_EVERY`],
/// until the returned sender is dropped. Small, frequent checkpoints keep
/// each one's sync short: one large checkpoint a second made commits wait
/// behind its sync for up to 300 ms; every 25 ms the waits stay under
/// about 30 ms (measured with the send benchmark).
pub(crate) fn start_checkpointer(path: &Path) -> Result<std::sync::mpsc::Sender<()>> {
    let conn = open(path, false)?;
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    std::thread::Builder::new()
        .name("sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(|e| StoreError::Setup(format!("cannot start the SQLite checkpointer thread: {e}")))?;
    Ok(stop)
}

/// Runs a fixed statement, prepared once per connection.
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(drop)
}

/// The closure's result, and whether the savepoint was handled cleanly.
fn in_savepoint<T>(conn: &Connection, f: impl FnOnce(&Connection) -> Result<T>) -> (Result<T>, bool) {
    if let Err(e) = exec(conn, "SAVEPOINT palisade_job") {
        return (Err(e.into()), false);
    }
    let out = match std::panic::catch_unwind(AssertUnwindSafe(|| f(conn))) {
        Ok(out) => out,
        Err(_) => Err(StoreError::Corrupt("a write closure panicked; its writes were undone".into())),
    };
    if out.is_err() {
        if let Err(e) = exec(conn, "ROLLBACK TO palisade_job") {
            return (Err(e.into()), false);
        }
    }
    match exec(conn, "RELEASE palisade_job") {
        Ok(()) => (out, true),
        Err(e) => (Err(e.into()), false),
    }
}

/// How long a batch waits for the write lock before it fails. A caller that
/// waits for this writer while holding a write transaction would otherwise
/// hang both for good.
const LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(if cfg!(test) { 1 } else { 30 });

fn run(conn: Connection, mut rx: mpsc::Receiver<Box<dyn Job>>, lock: Arc<Mutex<()>>, rt: tokio::runtime::Runtime) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let Ok(guard) = rt.block_on(async { tokio::time::timeout(LOCK_WAIT, lock.clone().lock_owned()).await }) else {
            let error = "timed out waiting for the database write lock";
            tracing::error!(jobs = batch.len(), "{error}");
            for job in batch.drain(..) {
                job.finish(Some(error));
            }
            continue;
        };
        let error = match exec(&conn, "BEGIN IMMEDIATE") {
            Err(e) => Some(e.to_string()),
            Ok(()) => {
                // A savepoint that could not be handled, or a transaction
                // SQLite ended on its own (disk full, I/O error), fails the
                // whole batch: nobody is told "done" for an uncertain write.
                let broken = batch.iter_mut().any(|job| !job.run(&conn) || conn.is_autocommit());
                if broken {
                    Some("the batch's transaction was interrupted".to_owned())
                } else {
                    exec(&conn, "COMMIT").err().map(|e| e.to_string())
                }
            }
        };
        if !conn.is_autocommit() {
            let _ = conn.execute_batch("ROLLBACK");
        }
        drop(guard);
        if let Some(e) = &error {
            tracing::error!(error = %e, jobs = batch.len(), "group commit failed");
        }
        for job in batch.drain(..) {
            job.finish(error.as_deref());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (tempfile::TempDir, GroupCommit, Arc<Mutex<()>>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (k TEXT PRIMARY KEY, v INTEGER NOT NULL)").unwrap();
        let lock = Arc::new(Mutex::new(()));
        let group = GroupCommit::start(&path, lock.clone()).unwrap();
        (dir, group, lock)
    }

    fn count(dir: &tempfile::TempDir) -> i64 {
        let conn = open(&dir.path().join("t.db"), true).unwrap();
        conn.query_row("SELECT COUNT(*) FROM t", [], |r| r.get(0)).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_closure_undoes_only_its_own_writes() {
        let (dir, group, lock) = setup();
        let group = Arc::new(group);
        // Hold the write lock so that every job below lands in one batch.
        let held = lock.clone().lock_owned().await;
        let mut tasks = Vec::new();
        for i in 0..20 {
            let group = group.clone();
            tasks.push(tokio::spawn(async move {
                group
                    .write(move |c| {
                        c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [format!("k{i}")])?;
                        if i % 5 == 0 {
                            // Writes, then fails: its own row must go.
                            c.execute("INSERT INTO t (k, v) VALUES (?1, 2)", [format!("k{i}")])?;
                        }
                        Ok(i)
                    })
                    .await
            }));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        drop(held);
        let mut failed = 0;
        for (i, t) in tasks.into_iter().enumerate() {
            match t.await.unwrap() {
                Ok(n) => assert!(n == i && i % 5 != 0),
                Err(e) => {
                    assert!(e.is_unique_violation(), "{e}");
                    failed += 1;
                }
            }
        }
        assert_eq!(failed, 4);
        assert_eq!(count(&dir), 16);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_held_write_lock_fails_the_batch_instead_of_hanging() {
        let (dir, group, lock) = setup();
        let held = lock.clone().lock_owned().await;
        let r = group.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('a', 1)", [])?)).await;
        assert!(matches!(r, Err(StoreError::Commit(_))), "{r:?}");
        drop(held);
        group.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('b', 1)", [])?)).await.unwrap();
        assert_eq!(count(&dir), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_hear_back_only_after_the_commit() {
        let (dir, group, _lock) = setup();
        for i in 0..50 {
            group
                .write(move |c| Ok(c.execute("INSERT INTO t (k, v) VALUES (?1, 1)", [format!("k{i}")])?))
                .await
                .unwrap();
            // A separate connection sees the row as soon as the call returns.
            assert_eq!(count(&dir), i + 1);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_closure_is_contained() {
        let (dir, group, _lock) = setup();
        let r: Result<()> = group
            .write(|c| {
                c.execute("INSERT INTO t (k, v) VALUES ('a', 1)", [])?;
                panic!("boom")
            })
            .await;
        assert!(r.is_err());
        group.write(|c| Ok(c.execute("INSERT INTO t (k, v) VALUES ('b', 1)", [])?)).await.unwrap();
        assert_eq!(count(&dir), 1);
    }
}
