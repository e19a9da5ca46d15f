//! PostgreSQL: the point lookups on every request's path (the credential,
//! the sending identity), read together when they arrive at the same
//! moment. Each statement costs the server a round trip, a bind and an
//! executor start whatever it reads; many lookups by one statement become
//! one query that runs it once per caller's values (a `LATERAL` join), so
//! each caller gets exactly the row it would have read alone. The query
//! starts after every caller in it asked, so it sees every write that was
//! committed before they did.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::any::AnyRow;
use tokio::sync::oneshot;

use crate::coalesce::Coalescer;
use crate::pg_batch::{int_positions, json_of, values_from_json};
use crate::write::bind_sqlx;
use crate::{Db, Result, StoreError, Val};

/// Lookups per query, at most.
const MAX_LOOKUPS: usize = 64;
/// Queries per statement at once.
const IN_FLIGHT: usize = 1;

struct Lookup {
    args: Vec<Val>,
    reply: oneshot::Sender<Result<Option<AnyRow>>>,
}

/// One queue per lookup statement.
#[derive(Default)]
pub(crate) struct Lookups {
    by_sql: Mutex<HashMap<&'static str, Arc<Coalescer<Lookup>>>>,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lookups")
    }
}

impl Db {
    /// PostgreSQL: the row `sql` selects with `args` (at most one: a
    /// lookup by a unique key), read together with concurrent lookups by
    /// the same statement.
    pub(crate) async fn fetch_optional_shared<T>(&self, sql: &'static str, args: Vec<Val>) -> Result<Option<T>>
    where
        T: for<'r> sqlx::FromRow<'r, AnyRow>,
    {
        let queue = {
            let mut by_sql = self.lookups.by_sql.lock().unwrap_or_else(PoisonError::into_inner);
            by_sql.entry(sql).or_insert_with(|| Arc::new(Coalescer::new(MAX_LOOKUPS, IN_FLIGHT))).clone()
        };
        let (reply, answer) = oneshot::channel();
        let db = self.clone();
        queue.submit(Lookup { args, reply }, move |batch| {
            let db = db.clone();
            async move { look_up(&db, sql, batch).await }
        });
        match answer.await.map_err(|_| StoreError::Closed)?? {
            Some(row) => Ok(Some(T::from_row(&row)?)),
            None => Ok(None),
        }
    }
}

async fn alone(db: &Db, sql: &str, args: &[Val]) -> Result<Option<AnyRow>> {
    let mut q = sqlx::query(sql);
    for v in args {
        q = bind_sqlx(q, v);
    }
    Ok(q.fetch_optional(db.reader()).await?)
}

async fn look_up(db: &Db, sql: &'static str, batch: Vec<Lookup>) {
    if let [one] = batch.as_slice() {
        let found = alone(db, sql, &one.args).await;
        if let Some(one) = batch.into_iter().next() {
            let _ = one.reply.send(found);
        }
        return;
    }
    // Callers asking the same thing share one row of the query.
    let mut distinct: Vec<serde_json::Value> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut asked: Vec<usize> = Vec::with_capacity(batch.len());
    for l in &batch {
        let values = serde_json::Value::Array(l.args.iter().map(json_of).collect());
        let n = *index.entry(values.to_string()).or_insert_with(|| {
            distinct.push(values);
            distinct.len() - 1
        });
        asked.push(n);
    }
    let found = match shared_sql(sql, &batch[0].args) {
        Some(shared) => {
            let rows = serde_json::Value::Array(distinct).to_string();
            sqlx::query(shared).bind(rows).fetch_all(db.reader()).await.map_err(StoreError::from)
        }
        None => Err(StoreError::Corrupt("a lookup without a shared form".into())),
    };
    let rows = match found {
        Ok(rows) => rows,
        Err(e) => {
            tracing::warn!(error = %e, "shared lookup failed; each caller reads alone");
            for l in batch {
                let found = alone(db, sql, &l.args).await;
                let _ = l.reply.send(found);
            }
            return;
        }
    };
    // The first row of each question (a unique key has one at most).
    let mut answers: HashMap<usize, AnyRow> = HashMap::new();
    for row in rows {
        let Ok(n) = sqlx::Row::try_get::<i64, _>(&row, "palisade_lookup") else { continue };
        if let Ok(n) = usize::try_from(n - 1) {
            answers.entry(n).or_insert(row);
        }
    }
    for (l, n) in batch.into_iter().zip(asked) {
        let _ = l.reply.send(Ok(answers.get(&n).cloned()));
    }
}

/// `sql` run once per row of `$1`, a JSON array of value arrays, each of
/// its rows tagged with the question's place (from 1) as `palisade_lookup`.
fn shared_sql(sql: &'static str, args: &[Val]) -> Option<&'static str> {
    type Derived = HashMap<(&'static str, Vec<bool>), Option<&'static str>>;
    static DONE: std::sync::OnceLock<Mutex<Derived>> = std::sync::OnceLock::new();
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    *done.entry((sql, int_positions(args))).or_insert_with_key(|(sql, ints)| {
        let inner = values_from_json(sql, "q.args", ints)?;
        let shared = format!(
            "SELECT q.ord AS palisade_lookup, s.* FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS q(args, ord) \
             CROSS JOIN LATERAL ({inner}) AS s"
        );
        Some(&*Box::leak(shared.into_boxed_str()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lookup_runs_once_per_question() {
        let sql = shared_sql("SELECT a FROM t WHERE k = $1 AND at > $2 LIMIT 1", &[Val::from("x"), Val::from(1)]);
        assert_eq!(
            sql.unwrap(),
            "SELECT q.ord AS palisade_lookup, s.* FROM jsonb_array_elements($1::jsonb) WITH ORDINALITY AS q(args, ord) \
             CROSS JOIN LATERAL (SELECT a FROM t WHERE k = (q.args->>0) AND at > CAST(q.args->>1 AS BIGINT) LIMIT 1) AS s"
        );
    }

    /// Concurrent lookups, some asking the same thing, each get their own
    /// row (or none), also right after a write.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn each_caller_gets_its_own_row() {
        let (db, dropper) = crate::pg_batch::tests::test_postgres().await;
        #[derive(sqlx::FromRow)]
        struct Setting {
            value: String,
        }
        const SQL: &str = "SELECT value FROM settings WHERE name = $1";
        let mut tasks = Vec::new();
        for i in 0..200 {
            let db = db.clone();
            tasks.push(tokio::spawn(async move {
                let name = format!("k{}", i % 50);
                if i % 7 == 0 {
                    let put =
                        crate::Stmt::new("INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
                            .bind(name.clone())
                            .bind(format!("v{}", i % 50));
                    db.write_all(vec![put]).await.unwrap();
                    // Written before the lookup: it must be seen.
                    let got: Option<Setting> = db.fetch_optional_shared(SQL, vec![name.as_str().into()]).await.unwrap();
                    assert_eq!(got.unwrap().value, format!("v{}", i % 50));
                } else {
                    let got: Option<Setting> = db.fetch_optional_shared(SQL, vec![name.as_str().into()]).await.unwrap();
                    if let Some(s) = got {
                        assert_eq!(s.value, format!("v{}", i % 50));
                    }
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let none: Option<Setting> = db.fetch_optional_shared(SQL, vec!["absent".into()]).await.unwrap();
        assert!(none.is_none());
        dropper.drop_db(db).await;
    }
}
