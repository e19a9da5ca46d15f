//! Atomic writes of plain statements, on either database. A unit of work
//! whose statements do not depend on each other's results (insert a row and
//! its audit event, say) is described once as [`Stmt`]s and runs in one
//! transaction: on SQLite inside the group-commit writer (no round trip per
//! statement), on PostgreSQL as an ordinary transaction.

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
}

impl Stmt {
    pub fn new(sql: &'static str) -> Self {
        Stmt { sql: sql.into(), args: Vec::new(), guard: None }
    }

    /// A statement whose text is built at run time (multi-row inserts).
    /// Only from fixed fragments: values are always bound.
    pub fn dynamic(sql: String) -> Self {
        Stmt { sql: sql.into(), args: Vec::new(), guard: None }
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

    pub fn bind(mut self, v: impl Into<Val>) -> Self {
        self.args.push(v.into());
        self
    }

    fn run_sqlite(&self, c: &rusqlite::Connection) -> Result<u64> {
        let mut st = c.prepare_cached(&sqlite_placeholders(&self.sql))?;
        bind_sqlite(&mut st, &self.args)?;
        Ok(st.raw_execute()? as u64)
    }

    async fn run_sqlx(&self, tx: &mut crate::Tx) -> Result<u64> {
        let mut q = sqlx::query(&self.sql);
        for v in &self.args {
            q = match v {
                Val::NullInt => q.bind(None::<i64>),
                Val::NullText => q.bind(None::<String>),
                Val::Int(n) => q.bind(*n),
                Val::Text(t) => q.bind(t.as_str()),
            };
        }
        Ok(q.execute(&mut **tx).await?.rows_affected())
    }
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

impl Db {
    /// Runs the statements in one transaction, all or none; returns the
    /// rows each affected.
    pub async fn write_all(&self, stmts: Vec<Stmt>) -> Result<Vec<u64>> {
        match self.dialect() {
            Dialect::Sqlite => self
                .write_sqlite(move |c| stmts.iter().map(|s| s.run_sqlite(c).and_then(|n| s.check(n))).collect())
                .await
                .unwrap_or(Err(StoreError::Closed)),
            Dialect::Postgres => {
                let mut tx = self.begin().await?;
                let mut out = Vec::with_capacity(stmts.len());
                for s in &stmts {
                    // An early return drops the transaction: rolled back.
                    out.push(s.check(s.run_sqlx(&mut tx).await?)?);
                }
                tx.commit().await?;
                Ok(out)
            }
        }
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
    fn placeholders_become_numbered_for_sqlite() {
        assert_eq!(
            sqlite_placeholders("SELECT $1, $12, x$ FROM t WHERE a = $2"),
            "SELECT ?1, ?12, x$ FROM t WHERE a = ?2"
        );
        assert_eq!(sqlite_placeholders("SELECT 1"), "SELECT 1");
    }
}
