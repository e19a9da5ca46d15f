use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyConnection, AnyPool, Executor};
use tokio::sync::{Mutex, OwnedMutexGuard};

use crate::group_commit::GroupCommit;
use crate::{Result, StoreError};

static SQLITE_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");
static POSTGRES_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// A write transaction. On SQLite it also holds the database's write lock,
/// which the group-commit writer takes too, so the two never meet in
/// SQLite's busy handler.
pub struct Tx {
    /// Always `Some` until `commit`, `rollback` or `drop` takes it.
    inner: Option<sqlx::Transaction<'static, Any>>,
    lock: Option<OwnedMutexGuard<()>>,
    hook: HookSlot,
    /// Tenants whose credentials this transaction changed: told to the hook
    /// once it commits (not before: a reader could cache the old rows again).
    changed: Vec<String>,
}

/// Told, after a commit, the tenant whose credentials (keys, tokens,
/// sessions, roles, freezes, limits) changed. Set once, by the server.
pub type CredentialHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Holds the [`CredentialHook`], once set.
#[derive(Clone, Default)]
struct HookSlot(Arc<OnceLock<CredentialHook>>);

impl std::fmt::Debug for HookSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.get().is_some() { "HookSlot(set)" } else { "HookSlot(unset)" })
    }
}

impl Tx {
    /// Only SQLite's transactions hold the write lock.
    pub(crate) fn dialect(&self) -> Dialect {
        if self.lock.is_some() {
            Dialect::Sqlite
        } else {
            Dialect::Postgres
        }
    }

    pub async fn commit(mut self) -> Result<()> {
        let inner = self.inner.take().ok_or(StoreError::Closed)?;
        inner.commit().await?;
        if let Some(hook) = self.hook.0.get() {
            self.changed.iter().for_each(|t| hook(t));
        }
        Ok(())
    }

    /// Marks the tenant's credentials changed by this transaction. Every
    /// store function that writes what authentication reads calls it.
    pub(crate) fn credentials_changed(&mut self, tenant: &str) {
        if !self.changed.iter().any(|t| t == tenant) {
            self.changed.push(tenant.to_owned());
        }
    }

    pub async fn rollback(mut self) -> Result<()> {
        let inner = self.inner.take().ok_or(StoreError::Closed)?;
        Ok(inner.rollback().await?)
    }
}

impl Drop for Tx {
    /// sqlx only queues the rollback of a dropped transaction; keep the lock
    /// until it has really run, or the next writer would meet SQLite's busy
    /// handler.
    fn drop(&mut self) {
        let (Some(inner), lock) = (self.inner.take(), self.lock.take()) else { return };
        match (lock, tokio::runtime::Handle::try_current()) {
            (Some(lock), Ok(rt)) => {
                rt.spawn(async move {
                    let _ = inner.rollback().await;
                    drop(lock);
                });
            }
            (lock, _) => {
                drop(inner);
                drop(lock);
            }
        }
    }
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    #[allow(clippy::expect_used)]
    fn deref(&self) -> &AnyConnection {
        self.inner.as_ref().expect("transaction used after it ended")
    }
}

impl std::ops::DerefMut for Tx {
    #[allow(clippy::expect_used)]
    fn deref_mut(&mut self) -> &mut AnyConnection {
        self.inner.as_mut().expect("transaction used after it ended")
    }
}

/// What only SQLite has: the file, the write lock, the group-commit writer.
#[derive(Debug)]
pub(crate) struct SqliteParts {
    pub(crate) path: PathBuf,
    pub(crate) readers: crate::read::Readers,
    /// Dropping it stops the checkpointer thread.
    _checkpointer: std::sync::mpsc::Sender<()>,
    write_lock: Arc<Mutex<()>>,
    group: GroupCommit,
}

/// The database. SQLite allows one writer at a time, so writes go through a
/// single-connection pool and the group-commit writer there, both behind
/// one lock (no SQLITE_BUSY under load); PostgreSQL uses one pool for all.
#[derive(Clone, Debug)]
pub struct Db {
    read: AnyPool,
    write: AnyPool,
    dialect: Dialect,
    sqlite: Option<Arc<SqliteParts>>,
    /// PostgreSQL's shared durability barrier.
    pub(crate) durable: Arc<crate::durable::Barrier>,
    /// PostgreSQL: merges concurrent write lists into one statement.
    pub(crate) batcher: Arc<crate::pg_batch::Batcher>,
    /// PostgreSQL: reads concurrent point lookups together.
    pub(crate) lookups: Arc<crate::pg_lookup::Lookups>,
    credential_hook: HookSlot,
    /// PostgreSQL: how to open a native connection (bulk export).
    url: Url,
}

/// The database URL; it may hold a password, so it never prints.
#[derive(Clone)]
struct Url(Arc<str>);

impl std::fmt::Debug for Url {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<database url>")
    }
}

impl Db {
    pub async fn connect(url: &str, max_connections: u32) -> Result<Db> {
        sqlx::any::install_default_drivers();
        let dialect = if url.starts_with("sqlite:") {
            Dialect::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Dialect::Postgres
        } else {
            return Err(StoreError::Setup("database.url must start with sqlite:// or postgres://".into()));
        };
        let opts: AnyConnectOptions =
            url.parse().map_err(|e| StoreError::Setup(format!("database.url is not valid: {e}")))?;
        match dialect {
            Dialect::Sqlite => {
                let path = prepare_sqlite_file(url)?;
                let write = sqlite_pool(1).connect_with(opts.clone()).await?;
                let read = sqlite_pool(max_connections.max(2)).connect_with(opts).await?;
                let write_lock = Arc::new(Mutex::new(()));
                let group = GroupCommit::start(&path, write_lock.clone())?;
                let readers = crate::read::Readers::default();
                let _checkpointer = crate::group_commit::start_checkpointer(&path)?;
                let parts = SqliteParts { path, readers, _checkpointer, write_lock, group };
                Ok(Db {
                    read,
                    write,
                    dialect,
                    sqlite: Some(Arc::new(parts)),
                    durable: crate::durable::Barrier::new(),
                    batcher: Arc::default(),
                    lookups: Arc::default(),
                    credential_hook: HookSlot::default(),
                    url: Url(url.into()),
                })
            }
            Dialect::Postgres => {
                let pool = AnyPoolOptions::new()
                    .max_connections(max_connections.max(2))
                    .acquire_timeout(Duration::from_secs(10))
                    // sqlx pings every connection it hands out: a round trip
                    // per query, as costly to the server as a small query.
                    // Only a connection idle for a while is checked (the
                    // server may have restarted); a broken busy one fails
                    // its query and is dropped.
                    .test_before_acquire(false)
                    .before_acquire(|conn, meta| {
                        Box::pin(async move {
                            if meta.idle_for > IDLE_BEFORE_PING {
                                sqlx::Connection::ping(conn).await?;
                            }
                            Ok(true)
                        })
                    })
                    .connect_with(opts)
                    .await?;
                Ok(Db {
                    read: pool.clone(),
                    write: pool,
                    dialect,
                    sqlite: None,
                    durable: crate::durable::Barrier::new(),
                    batcher: Arc::default(),
                    lookups: Arc::default(),
                    credential_hook: HookSlot::default(),
                    url: Url(url.into()),
                })
            }
        }
    }

    pub async fn migrate(&self) -> Result<()> {
        match self.dialect {
            Dialect::Sqlite => SQLITE_MIGRATIONS.run(&self.write).await?,
            Dialect::Postgres => POSTGRES_MIGRATIONS.run(&self.write).await?,
        }
        Ok(())
    }

    pub(crate) fn sqlite_parts(&self) -> Option<&SqliteParts> {
        self.sqlite.as_deref()
    }

    pub fn dialect(&self) -> Dialect {
        self.dialect
    }

    pub(crate) fn write_pool(&self) -> &AnyPool {
        &self.write
    }

    /// Pool for reads that need no transaction.
    pub fn reader(&self) -> &AnyPool {
        &self.read
    }

    /// A write transaction. While it is open, do not wait on
    /// [`Db::write_all`] or the group-commit writer from the same task: on
    /// SQLite they wait for the lock this transaction holds (after 30 s they
    /// give up with an error rather than hang).
    pub async fn begin(&self) -> Result<Tx> {
        let lock = match &self.sqlite {
            Some(s) => Some(
                tokio::time::timeout(Duration::from_secs(30), s.write_lock.clone().lock_owned())
                    .await
                    .map_err(|_| StoreError::Commit("timed out waiting for the database write lock".into()))?,
            ),
            None => None,
        };
        Ok(Tx { inner: Some(self.write.begin().await?), lock, hook: self.credential_hook.clone(), changed: Vec::new() })
    }

    /// Sets the hook told of committed credential changes (once; later
    /// calls are ignored).
    pub fn on_credential_change(&self, hook: CredentialHook) {
        let _ = self.credential_hook.0.set(hook);
    }

    /// Tells the hook a commit changed the tenant's credentials.
    pub(crate) fn credentials_changed(&self, tenant: &str) {
        if let Some(hook) = self.credential_hook.0.get() {
            hook(tenant);
        }
    }

    /// SQLite only: runs `f` in the group-commit writer (see
    /// [`crate::group_commit`]); `None` on PostgreSQL, where callers use a
    /// [`Tx`] (PostgreSQL runs transactions in parallel).
    pub async fn write_sqlite<T, F>(&self, f: F) -> Option<Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Connection) -> Result<T> + Send + 'static,
    {
        match &self.sqlite {
            Some(s) => Some(s.group.write(f).await),
            None => None,
        }
    }

    /// SQLite only: a read-only connection of its own, for long scans on a
    /// blocking thread (full verification reads millions of rows).
    pub fn open_sqlite_reader(&self) -> Option<Result<rusqlite::Connection>> {
        self.sqlite.as_ref().map(|s| Ok(crate::group_commit::open(&s.path, true)?))
    }

    /// Makes everything committed so far durable. SQLite in WAL mode with
    /// `synchronous = NORMAL` syncs the log only at checkpoints; run one.
    /// (PostgreSQL commits are durable already.)
    pub async fn make_durable(&self) -> Result<()> {
        if self.dialect == Dialect::Sqlite {
            sqlx::query("PRAGMA wal_checkpoint(PASSIVE)").execute(&self.write).await?;
        }
        Ok(())
    }

    /// A connection of the caller's own, out of the pool: it is closed when
    /// dropped, never handed to anyone else. For session state that must
    /// end with its holder (PostgreSQL advisory locks).
    ///
    /// On PostgreSQL the server probes the connection every few seconds
    /// while it is idle, so a holder whose host died or was cut off loses
    /// its session (and its locks) within about 25 s, not the two hours of
    /// the system's keepalive defaults.
    pub async fn dedicated(&self) -> Result<AnyConnection> {
        let mut conn = self.read.acquire().await?.detach();
        if self.dialect == Dialect::Postgres {
            use sqlx::Executor;
            conn.execute("SET tcp_keepalives_idle = 10; SET tcp_keepalives_interval = 5; SET tcp_keepalives_count = 3")
                .await?;
        }
        Ok(conn)
    }

    /// PostgreSQL only: a native connection of the caller's own, for what
    /// the `Any` driver cannot do (`COPY … TO STDOUT`).
    pub async fn native_postgres(&self) -> Option<Result<sqlx::PgConnection>> {
        if self.dialect != Dialect::Postgres {
            return None;
        }
        Some(<sqlx::PgConnection as sqlx::Connection>::connect(&self.url.0).await.map_err(Into::into))
    }

    pub async fn ping(&self) -> bool {
        sqlx::query("SELECT 1").execute(&self.read).await.is_ok()
    }

    pub async fn close(&self) {
        self.write.close().await;
        self.read.close().await;
    }
}

/// A PostgreSQL connection idle longer than this is checked before use.
const IDLE_BEFORE_PING: Duration = Duration::from_secs(10);

fn sqlite_pool(max: u32) -> AnyPoolOptions {
    // A local file does not go away under an open connection: no ping
    // before each use (a hop to the connection's thread and back per query).
    let opts = AnyPoolOptions::new().max_connections(max).acquire_timeout(Duration::from_secs(30));
    opts.test_before_acquire(false).after_connect(|conn, _| {
        Box::pin(async move {
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA synchronous = NORMAL").await?;
            conn.execute("PRAGMA busy_timeout = 5000").await?;
            conn.execute("PRAGMA foreign_keys = ON").await?;
            conn.execute("PRAGMA temp_store = MEMORY").await?;
            let pages = crate::group_commit::WAL_AUTOCHECKPOINT_PAGES;
            conn.execute(format!("PRAGMA wal_autocheckpoint = {pages}").as_str()).await?;
            Ok(())
        })
    })
}

/// Creates the database file with mode 0600 before SQLite does (SQLite's
/// own default is 0644), and tightens an existing one. Returns its path.
fn prepare_sqlite_file(url: &str) -> Result<PathBuf> {
    let rest = url.trim_start_matches("sqlite://").trim_start_matches("sqlite:");
    let path = rest.split('?').next().unwrap_or("");
    if path.is_empty() || path.contains(":memory:") || rest.contains("mode=memory") {
        // The group-commit writer opens the file a second time.
        return Err(StoreError::Setup(
            "database.url must name a SQLite file (in-memory databases are not supported)".into(),
        ));
    }
    let path = Path::new(path);
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        if !parent.exists() {
            create_private_dir(parent)?;
        }
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", path.display())))?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| StoreError::Setup(format!("cannot chmod {}: {e}", path.display())))?;
    }
    Ok(path.to_path_buf())
}

/// Creates a directory (and parents) readable by the owner only.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|e| StoreError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| StoreError::Setup(format!("cannot chmod {}: {e}", dir.display())))?;
    }
    Ok(())
}
