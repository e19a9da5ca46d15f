//! Atomic writes of plain statements, on either database. A unit of work
//! whose statements do not depend on each other's results or effects
//! (insert a row and its audit event, say) is described once as [`Stmt`]s
//! and runs atomically: on SQLite inside the group-commit writer (no round
//! trip per statement), on PostgreSQL as one statement in one round trip.

use crate::{Db, Dialect, Result, StoreError};

/// A bound value. NULLs are typed: PostgreSQL refuses a text NULL for a
/// BIGINT column.
#[derive(Debug, Clone)]
pub enum Val {
    NullInt,
    NullText,
    Int(i64),
    Text(String),
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(v)
    }
}
impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(v)
    }
}
impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(v.to_owned())
    }
}
impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Self {
        v.map_or(Val::NullInt, Val::Int)
    }
}
impl From<Option<String>> for Val {
    fn from(v: Option<String>) -> Self {
        v.map_or(Val::NullText, Val::Text)
    }
}
impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        v.map_or(Val::NullText, Into::into)
    }
}

/// One statement with `$1…$n` placeholders and its values, in order.
#[derive(Debug, Clone)]
pub struct Stmt {
    sql: std::borrow::Cow<'static, str>,
    args: Vec<Val>,
    /// When set, the statement must change exactly one row, or the whole
    /// list is undone and this reason returned (a conditional debit).
    guard: Option<&'static str>,
    /// How PostgreSQL merges it with the same statement of other lists.
    pub(crate) merge: Merge,
    /// SQLite's text, where the dialects differ (JSON functions).
    sqlite: Option<&'static str>,
    /// Planned at each run rather than prepared once per connection.
    replan: bool,
    /// The tenant whose credentials it changes (see [`crate::Db::on_credential_change`]).
    credentials_of: Option<String>,
}

/// How one statement of many concurrent lists becomes one statement on
/// PostgreSQL ([`crate::pg_batch`]). A list merges only if all of its
/// statements do.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Merge {
    /// Runs on its own.
    No,
    /// A plain `INSERT INTO t (…) VALUES (…)`: the rows of all lists go in
    /// one insert.
    Rows,
    /// A guarded update of one row per key: lists with the same key add up
    /// into one row of the merged statement.
    Sum(&'static SumMerge),
}

/// The merged form of an additive, guarded update (a debit).
#[derive(Debug)]
pub struct SumMerge {
    /// Takes every row as `$1`, a JSON array of the statements' values
    /// (each an array, in bind order, after adding up).
    pub sql: &'static str,
    /// The values that name the row (a tenant).
    pub key: &'static [usize],
    /// The value that adds up (an amount); the others come from the last
    /// statement (a timestamp).
    pub add: usize,
}

impl Stmt {
    pub fn new(sql: &'static str) -> Self {
        Stmt::of(sql.into())
    }

    /// A statement whose text is built at run time (multi-row inserts).
    /// Only from fixed fragments: values are always bound.
    pub fn dynamic(sql: String) -> Self {
        Stmt::of(sql.into())
    }

    fn of(sql: std::borrow::Cow<'static, str>) -> Self {
        Stmt { sql, args: Vec::new(), guard: None, merge: Merge::No, sqlite: None, replan: false, credentials_of: None }
    }

    /// A statement written twice: for PostgreSQL and for SQLite.
    pub fn per_dialect(postgres: &'static str, sqlite: &'static str) -> Self {
        Stmt { sqlite: Some(sqlite), ..Stmt::new(postgres) }
    }

    /// PostgreSQL plans it at each run instead of keeping a plan per
    /// connection: for a join whose best plan changes as a table grows. A
    /// plan kept from when the table was small scans all of it later.
    pub fn planned_each_time(mut self) -> Self {
        self.replan = true;
        self
    }

    /// It changes what the tenant's credentials may do: the hook hears of
    /// it once the list commits.
    pub(crate) fn changes_credentials_of(mut self, tenant: String) -> Self {
        self.credentials_of = Some(tenant);
        self
    }

    /// Whether PostgreSQL keeps it prepared (its text is fixed and its plan
    /// does not go stale).
    fn prepared(&self) -> bool {
        !self.is_dynamic() && !self.replan
    }

    /// The text for `dialect`.
    fn text(&self, dialect: Dialect) -> &str {
        match (dialect, self.sqlite) {
            (Dialect::Sqlite, Some(sqlite)) => sqlite,
            _ => &self.sql,
        }
    }

    /// A plain `INSERT INTO t (…) VALUES (…)` that may share one multi-row
    /// insert with the same statement of concurrent lists (PostgreSQL).
    pub fn merged_as_rows(mut self) -> Self {
        self.merge = Merge::Rows;
        self
    }

    /// A guarded update of one row that concurrent lists may apply once,
    /// with their amounts added up (PostgreSQL; see [`SumMerge`]).
    pub fn merged_as_sum(mut self, how: &'static SumMerge) -> Self {
        self.merge = Merge::Sum(how);
        self
    }

    pub(crate) fn sql(&self) -> &str {
        &self.sql
    }

    pub(crate) fn args(&self) -> &[Val] {
        &self.args
    }

    /// The statement (an `UPDATE … WHERE <condition>`) must change exactly
    /// one row; otherwise [`Db::write_guarded`] undoes the list and answers
    /// `Refused(reason)`.
    pub fn or_refuse(mut self, reason: &'static str) -> Self {
        self.guard = Some(reason);
        self
    }

    fn check(&self, rows: u64) -> Result<u64> {
        match self.guard {
            Some(reason) if rows != 1 => Err(StoreError::Refused(reason)),
            _ => Ok(rows),
        }
    }

    /// Built at run time: its text varies, so it is not worth preparing.
    pub(crate) fn is_dynamic(&self) -> bool {
        matches!(self.sql, std::borrow::Cow::Owned(_))
    }

    pub fn bind(mut self, v: impl Into<Val>) -> Self {
        self.args.push(v.into());
        self
    }

    fn run_sqlite(&self, c: &rusqlite::Connection) -> Result<u64> {
        let mut st = match (&self.sql, self.sqlite) {
            (_, Some(fixed)) | (&std::borrow::Cow::Borrowed(fixed), None) => c.prepare_cached(sqlite_fixed(fixed))?,
            (std::borrow::Cow::Owned(built), None) => c.prepare_cached(&sqlite_placeholders(built))?,
        };
        bind_sqlite(&mut st, &self.args)?;
        Ok(st.raw_execute()? as u64)
    }
}

/// [`sqlite_placeholders`] of a fixed statement, converted once: there are
/// a few dozen of them and they live as long as the program.
pub(crate) fn sqlite_fixed(sql: &'static str) -> &'static str {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock, PoisonError};
    static DONE: OnceLock<Mutex<HashMap<(usize, usize), &'static str>>> = OnceLock::new();
    let key = (sql.as_ptr() as usize, sql.len());
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    done.entry(key).or_insert_with(|| match sqlite_placeholders(sql) {
        std::borrow::Cow::Borrowed(same) => same,
        std::borrow::Cow::Owned(converted) => Box::leak(converted.into_boxed_str()),
    })
}

/// Binds `args` to `?1…?n` (see [`sqlite_placeholders`]).
pub(crate) fn bind_sqlite(st: &mut rusqlite::CachedStatement<'_>, args: &[Val]) -> Result<()> {
    if st.parameter_count() != args.len() {
        // SQLite would bind the missing ones as NULL; PostgreSQL refuses.
        return Err(StoreError::Corrupt(format!(
            "statement takes {} values, {} given",
            st.parameter_count(),
            args.len()
        )));
    }
    for (i, v) in args.iter().enumerate() {
        match v {
            Val::NullInt | Val::NullText => st.raw_bind_parameter(i + 1, rusqlite::types::Null)?,
            Val::Int(v) => st.raw_bind_parameter(i + 1, v)?,
            Val::Text(t) => st.raw_bind_parameter(i + 1, t)?,
        }
    }
    Ok(())
}

/// `$N` (PostgreSQL's placeholders, a *name* to SQLite, looked up by a
/// scan) as `?N`, which SQLite binds by number. Our statements have no `$`
/// in literals.
pub(crate) fn sqlite_placeholders(sql: &str) -> std::borrow::Cow<'_, str> {
    if !sql.contains('$') {
        return sql.into();
    }
    let mut out = String::with_capacity(sql.len());
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        let numbered = ch == '$' && chars.peek().is_some_and(char::is_ascii_digit);
        out.push(if numbered { '?' } else { ch });
    }
    out.into()
}

/// When a PostgreSQL write's commit waits for the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Commit {
    /// Not: the row locks it takes are let go at once, and the caller waits
    /// for a durability barrier shared with other writers.
    Early,
    /// At the commit, as usual: for a writer that holds no contended lock.
    Durable,
}

impl Commit {
    /// The statement part that sets it for the statement's transaction.
    pub(crate) fn setting(self) -> &'static str {
        match self {
            Commit::Early => "set_config('synchronous_commit', 'off', true)",
            Commit::Durable => "set_config('synchronous_commit', 'on', true)",
        }
    }
}

/// Statements combined into one on PostgreSQL, at most.
pub(crate) const MAX_COMBINED: usize = 16;

pub(crate) type SqlxQuery<'q> = sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>;

pub(crate) fn bind_sqlx<'q>(q: SqlxQuery<'q>, v: &'q Val) -> SqlxQuery<'q> {
    match v {
        Val::NullInt => q.bind(None::<i64>),
        Val::NullText => q.bind(None::<String>),
        Val::Int(n) => q.bind(*n),
        Val::Text(t) => q.bind(t.as_str()),
    }
}

impl crate::Tx {
    /// Runs statements inside this transaction, in order (guards included:
    /// a refused guard returns `StoreError::Refused` and the caller drops the
    /// transaction).
    pub async fn run(&mut self, stmts: &[Stmt]) -> Result<Vec<u64>> {
        let dialect = self.dialect();
        let mut out = Vec::with_capacity(stmts.len());
        for s in stmts {
            let mut q = sqlx::query(s.text(dialect)).persistent(s.prepared());
            for v in &s.args {
                q = bind_sqlx(q, v);
            }
            out.push(s.check(q.execute(&mut **self).await?.rows_affected())?);
            if let Some(t) = &s.credentials_of {
                self.credentials_changed(t);
            }
        }
        Ok(out)
    }
}

/// `$N` as `$(N + offset)`, for one statement among several.
pub(crate) fn renumber(sql: &str, offset: usize) -> String {
    let mut out = String::with_capacity(sql.len() + 16);
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        out.push(ch);
        if ch != '$' {
            continue;
        }
        let mut n = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            n.push(d);
        }
        match n.parse::<usize>() {
            Ok(n) => out.push_str(&(n + offset).to_string()),
            Err(_) => out.push_str(&n),
        }
    }
    out
}

impl Db {
    /// Runs the statements atomically, all or none; returns the rows each
    /// affected. On SQLite in order, in the group commit; on PostgreSQL as
    /// one statement ([`Db::write_postgres`]), so the statements must not
    /// depend on each other's effects.
    pub async fn write_all(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>> {
        let changed: Vec<String> = stmts.iter().filter_map(|s| s.credentials_of.clone()).collect();
        let rows = self.write_list(stmts).await?;
        changed.iter().for_each(|t| self.credentials_changed(t));
        Ok(rows)
    }

    async fn write_list(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>> {
        match self.dialect() {
            Dialect::Sqlite => self
                .write_sqlite(move |c| stmts.iter().map(|s| s.run_sqlite(c).and_then(|n| s.check(n))).collect())
                .await
                .unwrap_or(Err(StoreError::Closed)),
            // Lists that can share a statement with concurrent ones do.
            Dialect::Postgres if crate::pg_batch::mergeable(&stmts) => self.batcher.write(self, stmts).await,
            Dialect::Postgres => self.write_postgres(&stmts).await,
        }
    }

    /// PostgreSQL: the list as one statement (each statement a data-modifying
    /// `WITH` part), sent in one round trip and committed on its own. Row
    /// locks (a tenant's balance) are held only while the server runs it and
    /// commits, never across a round trip to this process. The parts see one
    /// snapshot, so a list must not depend on its own effects (an insert
    /// then an update of the same row); guards abort it through
    /// `palisade_refuse` (SQLSTATE PA001, migration 0008).
    pub(crate) async fn write_postgres(&self, stmts: &[Stmt]) -> Result<Vec<u64>> {
        if stmts.len() > MAX_COMBINED {
            return self.write_postgres_tx(stmts).await;
        }
        let rows = self.write_postgres_combined(stmts, Commit::Early).await?;
        self.wait_durable().await?;
        Ok(rows)
    }

    /// [`Db::write_postgres`] of a short list as one statement. With
    /// [`Commit::Early`] it returns before the commit is on disk: the caller
    /// must [`Db::wait_durable`] before it tells anyone the write happened.
    /// A statement the server aborted for a conflict (a deadlock) wrote
    /// nothing and runs again ([`crate::locks::retrying`]).
    pub(crate) async fn write_postgres_combined(&self, stmts: &[Stmt], commit: Commit) -> Result<Vec<u64>> {
        crate::locks::retrying(|| self.write_postgres_combined_once(stmts, commit)).await
    }

    async fn write_postgres_combined_once(&self, stmts: &[Stmt], commit: Commit) -> Result<Vec<u64>> {
        // Committed without waiting for the disk, so the row locks it takes
        // (a tenant's balance) are let go at once instead of after a sync;
        // made durable below before the caller hears "done".
        let mut sql = format!("WITH commit_early AS (SELECT {}), ", commit.setting());
        let mut args: Vec<&Val> = Vec::new();
        let reasons: Vec<Val> = stmts.iter().filter_map(|s| s.guard).map(Val::from).collect();
        for (i, s) in stmts.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!("s{i} AS ({} RETURNING 1)", renumber(&s.sql, args.len())));
            args.extend(&s.args);
        }
        sql.push_str(" SELECT (SELECT count(*) FROM commit_early)");
        let mut guard_no = 0;
        for (i, s) in stmts.iter().enumerate() {
            sql.push_str(", ");
            let count = format!("(SELECT count(*) FROM s{i})");
            if s.guard.is_some() {
                guard_no += 1;
                let reason = args.len() + guard_no;
                sql.push_str(&format!("CASE WHEN {count} = 1 THEN 1::bigint ELSE palisade_refuse(${reason}) END"));
            } else {
                sql.push_str(&count);
            }
        }
        args.extend(&reasons);
        // A list with a built statement makes new text each time: preparing
        // and caching it would only push the fixed statements (a send's)
        // out of the connection's statement cache.
        let mut q = sqlx::query(&sql).persistent(stmts.iter().all(Stmt::prepared));
        for v in args {
            q = bind_sqlx(q, v);
        }
        match q.fetch_one(self.write_pool()).await {
            Ok(row) => (1..=stmts.len())
                .map(|i| Ok(u64::try_from(sqlx::Row::try_get::<i64, _>(&row, i)?).unwrap_or(0)))
                .collect::<Result<Vec<u64>>>(),
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("PA001") => {
                let reason = stmts.iter().filter_map(|s| s.guard).find(|r| *r == e.message());
                Err(StoreError::Refused(reason.unwrap_or("refused")))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// PostgreSQL, long lists (background batches): one transaction,
    /// statement by statement. A statement with hundreds of parts would cost
    /// the server more to plan than the round trips it saves.
    async fn write_postgres_tx(&self, stmts: &[Stmt]) -> Result<Vec<u64>> {
        crate::locks::retrying(|| self.write_postgres_tx_once(stmts)).await
    }

    async fn write_postgres_tx_once(&self, stmts: &[Stmt]) -> Result<Vec<u64>> {
        let mut tx = self.begin().await?;
        let mut out = Vec::with_capacity(stmts.len());
        for s in stmts {
            let mut q = sqlx::query(&s.sql).persistent(s.prepared());
            for v in &s.args {
                q = bind_sqlx(q, v);
            }
            // An early return drops the transaction: rolled back.
            out.push(s.check(q.execute(&mut *tx).await?.rows_affected())?);
        }
        tx.commit().await?;
        Ok(out)
    }

    /// PostgreSQL: returns once every commit so far is on disk. A
    /// transaction that takes a transaction id commits with a flush of the
    /// log up to its own commit record, which covers every earlier commit;
    /// the server serves concurrent flushes with one sync. A crash before
    /// this returns can lose the write, but nobody was told it happened.
    pub(crate) async fn wait_durable(&self) -> Result<()> {
        self.durable.wait(self.write_pool()).await
    }

    /// [`Db::write_all`] with guards: a guarded statement that changes no
    /// row undoes the whole list and its reason comes back as `Err(reason)`.
    pub async fn write_guarded(&self, stmts: Vec<Stmt>) -> Result<std::result::Result<Vec<u64>, &'static str>> {
        match self.write_all(stmts).await {
            Ok(rows) => Ok(Ok(rows)),
            Err(StoreError::Refused(reason)) => Ok(Err(reason)),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn all_or_nothing_with_parameters_bound_by_number() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect(&format!("sqlite://{}", dir.path().join("t.db").display()), 2).await.unwrap();
        db.migrate().await.unwrap();
        // Placeholders out of order in the text still take the n-th value.
        let put = |k: &str, v: &str| {
            Stmt::new("INSERT INTO settings (value, name) VALUES ($2, $1)").bind(k.to_owned()).bind(v.to_owned())
        };
        assert_eq!(db.write_all(vec![put("a", "1"), put("b", "2")]).await.unwrap(), vec![1, 1]);
        // The second statement fails: the first must not stay.
        let err = db.write_all(vec![put("c", "3"), put("a", "again")]).await.unwrap_err();
        assert!(err.is_unique_violation(), "{err}");
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT name, value FROM settings ORDER BY name").fetch_all(db.reader()).await.unwrap();
        assert_eq!(rows, vec![("a".into(), "1".into()), ("b".into(), "2".into())]);
        let n = db
            .write_all(vec![Stmt::new("UPDATE settings SET value = $1 WHERE name <> $2")
                .bind("x")
                .bind(None::<String>)])
            .await
            .unwrap();
        assert_eq!(n, vec![0], "NULL compares as unknown, so nothing is updated");
    }

    #[test]
    fn placeholders_are_renumbered_for_a_combined_statement() {
        assert_eq!(renumber("UPDATE t SET a = $1 WHERE b = $2 AND c$", 3), "UPDATE t SET a = $4 WHERE b = $5 AND c$");
        assert_eq!(renumber("SELECT 1", 3), "SELECT 1");
    }

    #[test]
    fn placeholders_become_numbered_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("SELECT $1, $12, x$ FROM t WHERE a = $2"),
            "SELECT ?1, ?12, x$ FROM t WHERE a = ?2"
        );
        assert_eq!(sqlite_placeholders("SELECT 1"), "SELECT 1");
    }
}
