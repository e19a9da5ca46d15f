//! Point reads by key on SQLite, run on the calling thread. Through sqlx
//! every query is handed to a connection's own thread and back (two thread
//! wake-ups, more than the read itself costs); an indexed lookup in SQLite
//! takes microseconds, so the hottest reads (authentication, the sending
//! identity) run directly on a small pool of read-only connections.
//! PostgreSQL reads stay on sqlx.

use std::sync::Mutex;

use crate::write::{bind_sqlite, sqlite_fixed, Val};
use crate::{Db, Result};

/// Idle read connections kept for reuse.
const MAX_IDLE: usize = 8;

/// A row type that can be read straight from SQLite, by column name.
pub trait FromSqlite: Sized {
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
}

/// The SQLite side's idle read-only connections.
#[derive(Default)]
pub(crate) struct Readers(Mutex<Vec<rusqlite::Connection>>);

impl std::fmt::Debug for Readers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Readers")
    }
}

impl Readers {
    fn take(&self) -> Option<rusqlite::Connection> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop()
    }

    fn give_back(&self, conn: rusqlite::Connection) {
        let mut idle = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if idle.len() < MAX_IDLE {
            idle.push(conn);
        }
    }
}

impl Db {
    /// SQLite only (`None` on PostgreSQL): the row `sql` selects, if any,
    /// read on this thread. For indexed lookups of one row only.
    pub(crate) fn fetch_optional_now<T: FromSqlite>(
        &self,
        sql: &'static str,
        args: &[Val],
    ) -> Option<Result<Option<T>>> {
        let s = self.sqlite_parts()?;
        let conn = match s.readers.take() {
            Some(c) => c,
            None => match crate::group_commit::open(&s.path, true) {
                Ok(c) => c,
                Err(e) => return Some(Err(e.into())),
            },
        };
        let out = (|| {
            let mut st = conn.prepare_cached(sqlite_fixed(sql))?;
            bind_sqlite(&mut st, args)?;
            let mut rows = st.raw_query();
            match rows.next()? {
                Some(row) => Ok(Some(T::from_sqlite(row)?)),
                None => Ok(None),
            }
        })();
        s.readers.give_back(conn);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Setting(String);
    impl FromSqlite for Setting {
        fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
            Ok(Setting(row.get("value")?))
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_what_was_committed_just_before() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()), 2).await.unwrap();
        db.migrate().await.unwrap();
        let sql = "SELECT value FROM settings WHERE name = $1";
        let get = |n: &str| db.fetch_optional_now::<Setting>(sql, &[Val::from(n)]).unwrap().unwrap().map(|s| s.0);
        assert_eq!(get("a"), None);
        for i in 0..20 {
            let put = crate::Stmt::new(
                "INSERT INTO settings (name, value) VALUES ('a', $1) \
                 ON CONFLICT (name) DO UPDATE SET value = excluded.value",
            )
            .bind(i.to_string());
            db.write_all(vec![put]).await.unwrap();
            // Pooled connections see every commit that finished before the read.
            assert_eq!(get("a"), Some(i.to_string()));
        }
    }
}
