//! PostgreSQL group commit: write lists that wait at the same moment become
//! one statement and one commit.
//!
//! A send is a short list of writes (its record, its audit event, its
//! ledger row, the debit). Run as a statement and a commit of its own, the
//! server spends far more on the statement than on the rows (parse,
//! executor start, commit, the round trip): on a 2-core machine about 3,800
//! sends a second with nothing else running. Merged, the rows of each
//! insert go in one multi-row insert and the debits of one tenant add up
//! into one guarded update.
//!
//! The merged statement is all or nothing. When it fails on the server (a
//! guard refuses, a duplicate key), nothing was written and every list runs
//! again on its own, so each caller gets exactly the answer it would have
//! had alone: a balance that covers only some of the batch pays for those
//! and refuses the rest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::coalesce::Coalescer;

use serde_json::Value as Json;
use tokio::sync::oneshot;

use crate::write::{bind_sqlx, renumber, Commit, Merge, MAX_COMBINED};
use crate::{Db, Result, Stmt, StoreError, Val};

/// Lists per merged statement, at most.
const MAX_LISTS: usize = 64;

/// Merged statements running at once. One: the lists of one tenant would
/// wait for each other's debit anyway, and lists queue up into the next
/// batch while one is written.
const IN_FLIGHT: usize = 1;

/// Whether the list can share a statement with others.
pub(crate) fn mergeable(stmts: &[Stmt]) -> bool {
    !stmts.is_empty()
        && stmts.len() <= MAX_COMBINED
        && stmts.iter().all(|s| !matches!(s.merge, Merge::No) && !s.is_dynamic())
}

struct Pending {
    stmts: Vec<Stmt>,
    reply: oneshot::Sender<Result<Vec<u64>>>,
}

/// The lists waiting to be written, and the runners writing them.
pub(crate) struct Batcher(Arc<Coalescer<Pending>>);

impl Default for Batcher {
    fn default() -> Self {
        Batcher(Arc::new(Coalescer::new(MAX_LISTS, IN_FLIGHT)))
    }
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Batcher")
    }
}

impl Batcher {
    /// Writes the list, alone or merged with others; answers once it is
    /// committed and on disk.
    pub(crate) async fn write(&self, db: &Db, stmts: Vec<Stmt>) -> Result<Vec<u64>> {
        let (reply, answer) = oneshot::channel();
        let db = db.clone();
        self.0.submit(Pending { stmts, reply }, move |batch| {
            let db = db.clone();
            async move { write_batch(&db, batch).await }
        });
        answer.await.map_err(|_| StoreError::Closed)?
    }
}

async fn write_batch(db: &Db, mut batch: Vec<Pending>) {
    // Committed durably: every send's debit goes through this one runner,
    // so no other send waits for the row locks during the flush, and a
    // barrier transaction per batch would cost another round trip.
    if batch.len() == 1 {
        if let Some(p) = batch.pop() {
            let _ = p.reply.send(db.write_postgres_combined(&p.stmts, Commit::Durable).await);
        }
        return;
    }
    if let Err(batch) = write_merged(db, batch).await {
        retry(db, batch).await;
    }
}

/// Writes the lists as one merged statement and answers their callers;
/// hands them back when the server refused it (nothing was written).
async fn write_merged(db: &Db, batch: Vec<Pending>) -> std::result::Result<(), Vec<Pending>> {
    let merged = {
        let lists: Vec<&[Stmt]> = batch.iter().map(|p| p.stmts.as_slice()).collect();
        Merged::of(&lists)
    };
    let outcome = match merged {
        Some(m) => m.run(db).await,
        None => Err(Retry),
    };
    match outcome {
        Ok(Ok(())) => {
            for p in batch {
                // Each statement of a merged list changed its one row.
                let _ = p.reply.send(Ok(vec![1; p.stmts.len()]));
            }
        }
        Ok(Err(e)) => {
            let e = e.to_string();
            for p in batch {
                let _ = p.reply.send(Err(StoreError::Commit(e.clone())));
            }
        }
        Err(Retry) => return Err(batch),
    }
    Ok(())
}

/// After a merged statement failed (nothing was written): the lists of
/// each tenant merged again on their own, and one by one where that fails
/// too. A tenant whose balance is spent (every send refused) thus costs
/// the other tenants in its batch one failed statement, not their batching.
async fn retry(db: &Db, batch: Vec<Pending>) {
    let mut groups: Vec<(String, Vec<Pending>)> = Vec::new();
    for p in batch {
        let key = sum_keys(&p.stmts);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, group)) => group.push(p),
            None => groups.push((key, vec![p])),
        }
    }
    let alone = groups.len() == 1;
    let mut each = tokio::task::JoinSet::new();
    for (_, group) in groups {
        let db = db.clone();
        each.spawn(async move {
            let left = if !alone && group.len() > 1 { write_merged(&db, group).await } else { Err(group) };
            if let Err(group) = left {
                for p in group {
                    let _ = p.reply.send(db.write_postgres(&p.stmts).await);
                }
            }
        });
    }
    while each.join_next().await.is_some() {}
}

/// The rows a list's added-up statements change (a tenant's balance), as
/// one comparable key.
fn sum_keys(stmts: &[Stmt]) -> String {
    let keys: Vec<Vec<Json>> = stmts
        .iter()
        .filter_map(|s| match s.merge {
            Merge::Sum(how) => Some(how.key.iter().map(|&k| s.args().get(k).map_or(Json::Null, json_of)).collect()),
            _ => None,
        })
        .collect();
    serde_json::to_string(&keys).unwrap_or_default()
}

/// The merged statement failed on the server: nothing of it was written.
struct Retry;

/// One part of the merged statement: one statement of the lists, with the
/// rows of all of them.
struct Part<'a> {
    first: &'a Stmt,
    rows: Vec<Vec<Json>>,
    /// Sum parts: the row of each key.
    keys: HashMap<String, usize>,
}

struct Merged<'a> {
    parts: Vec<Part<'a>>,
}

impl<'a> Merged<'a> {
    /// `None` when the lists cannot merge (amounts that overflow).
    fn of(lists: &[&'a [Stmt]]) -> Option<Merged<'a>> {
        let mut parts: Vec<Part<'a>> = Vec::new();
        for stmt in lists.iter().flat_map(|l| l.iter()) {
            let at = match parts.iter().position(|p| p.first.sql() == stmt.sql()) {
                Some(at) => at,
                None => {
                    parts.push(Part { first: stmt, rows: Vec::new(), keys: HashMap::new() });
                    parts.len() - 1
                }
            };
            let part = &mut parts[at];
            let row: Vec<Json> = stmt.args().iter().map(json_of).collect();
            match stmt.merge {
                Merge::Sum(how) => {
                    let key = serde_json::to_string(&how.key.iter().map(|&k| row.get(k)).collect::<Vec<_>>()).ok()?;
                    match part.keys.get(&key) {
                        Some(&i) => {
                            let before = part.rows[i].get(how.add)?.as_i64()?;
                            let more = row.get(how.add)?.as_i64()?;
                            let mut row = row;
                            row[how.add] = Json::from(before.checked_add(more)?);
                            part.rows[i] = row;
                        }
                        None => {
                            part.keys.insert(key, part.rows.len());
                            part.rows.push(row);
                        }
                    }
                }
                Merge::Rows | Merge::No => part.rows.push(row),
            }
        }
        for part in &mut parts {
            if let Merge::Sum(how) = part.first.merge {
                // One lock order for every batch: two batches updating the
                // same rows never wait for each other in a cycle.
                part.rows
                    .sort_by_cached_key(|r| how.key.iter().map(|&k| r.get(k).map(Json::to_string)).collect::<Vec<_>>());
            }
        }
        Some(Merged { parts })
    }

    /// Committed and on disk. `Err(Retry)` when the server refused the
    /// statement; `Ok(Err(_))` when it may have committed (the connection
    /// broke).
    async fn run(self, db: &Db) -> std::result::Result<Result<()>, Retry> {
        let mut sql = format!("WITH commit_early AS (SELECT {})", Commit::Durable.setting());
        let mut args: Vec<Val> = Vec::with_capacity(2 * self.parts.len());
        for (i, part) in self.parts.iter().enumerate() {
            let Some(text) = part_sql(part.first) else { return Err(Retry) };
            sql.push_str(&format!(", p{i} AS ({} RETURNING 1)", renumber(text, i)));
            let rows = serde_json::to_string(&part.rows).map_err(|_| Retry)?;
            args.push(Val::Text(rows));
        }
        // Every part must change exactly its rows: a guard that refuses one
        // tenant's debit refuses the whole statement.
        sql.push_str(" SELECT (SELECT count(*) FROM commit_early)");
        for (i, part) in self.parts.iter().enumerate() {
            let expected = self.parts.len() + i + 1;
            sql.push_str(&format!(
                ", CASE WHEN (SELECT count(*) FROM p{i}) = ${expected} THEN 1::bigint ELSE palisade_refuse('merged') END"
            ));
            args.push(Val::Int(i64::try_from(part.rows.len()).unwrap_or(i64::MAX)));
        }
        let mut q = sqlx::query(&sql);
        for v in &args {
            q = bind_sqlx(q, v);
        }
        match q.execute(db.write_pool()).await {
            Ok(_) => Ok(Ok(())),
            Err(sqlx::Error::Database(e)) => {
                tracing::debug!(code = ?e.code(), "merged write refused; writing each list alone");
                Err(Retry)
            }
            Err(e) => Ok(Err(e.into())),
        }
    }
}

/// The statement's merged form, taking all rows as `$1`.
fn part_sql(first: &Stmt) -> Option<&'static str> {
    match first.merge {
        Merge::Sum(how) => Some(how.sql),
        Merge::Rows => rows_sql_cached(first),
        Merge::No => None,
    }
}

/// [`rows_sql`] of a fixed statement, derived once per statement and
/// value types.
fn rows_sql_cached(first: &Stmt) -> Option<&'static str> {
    type Derived = HashMap<(String, Vec<bool>), Option<&'static str>>;
    static DONE: std::sync::OnceLock<Mutex<Derived>> = std::sync::OnceLock::new();
    let ints = int_positions(first.args());
    let key = (first.sql().to_owned(), ints);
    let mut done = DONE.get_or_init(Default::default).lock().unwrap_or_else(PoisonError::into_inner);
    *done
        .entry(key)
        .or_insert_with_key(|(_, ints)| rows_sql(first.sql(), ints).map(|s| &*Box::leak(s.into_boxed_str())))
}

/// `INSERT INTO t (…) VALUES (…$n…)` as an insert of every row of `$1`, a
/// JSON array of value arrays.
fn rows_sql(insert: &str, ints: &[bool]) -> Option<String> {
    const VALUES: &str = " VALUES (";
    let at = insert.find(VALUES)?;
    // Values only in the one tuple, nothing after it (no ON CONFLICT).
    if insert[..at].contains('$') {
        return None;
    }
    let tuple = insert[at + VALUES.len()..].trim_end().strip_suffix(')')?;
    let mut depth = 0i32;
    for ch in tuple.chars() {
        depth += match ch {
            '(' => 1,
            ')' => -1,
            _ => 0,
        };
        if depth < 0 {
            // The tuple closed early: something follows it.
            return None;
        }
    }
    Some(format!(
        "{} SELECT {} FROM jsonb_array_elements($1::jsonb) AS r",
        &insert[..at],
        values_from_json(tuple, "r", ints)?
    ))
}

/// `sql` with each `$n` as the n-th value of the JSON array `row`, as
/// BIGINT where `ints` says so (JSON hands out text). `None` when a
/// placeholder has no value.
pub(crate) fn values_from_json(sql: &str, row: &str, ints: &[bool]) -> Option<String> {
    let mut out = String::with_capacity(sql.len() * 2);
    let mut chars = sql.chars().peekable();
    while let Some(ch) = chars.next() {
        if ch != '$' || !chars.peek().is_some_and(char::is_ascii_digit) {
            out.push(ch);
            continue;
        }
        let mut n = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            n.push(d);
        }
        let index = n.parse::<usize>().ok()?.checked_sub(1)?;
        if *ints.get(index)? {
            out.push_str(&format!("CAST({row}->>{index} AS BIGINT)"));
        } else {
            out.push_str(&format!("({row}->>{index})"));
        }
    }
    Some(out)
}

/// Per value, whether it binds as BIGINT.
pub(crate) fn int_positions(args: &[Val]) -> Vec<bool> {
    args.iter().map(|v| matches!(v, Val::Int(_) | Val::NullInt)).collect()
}

pub(crate) fn json_of(v: &Val) -> Json {
    match v {
        Val::NullInt | Val::NullText => Json::Null,
        Val::Int(n) => Json::from(*n),
        Val::Text(t) => Json::from(t.as_str()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) use crate::testing::Dropper;

    pub(crate) async fn test_postgres() -> (Db, Dropper) {
        crate::testing::test_postgres("palisade_store").await
    }

    /// 300 concurrent debits over three tenants whose balances cover 10,
    /// 25 and all of theirs: exactly that many succeed, each charged once,
    /// balances end at what was left; a list that repeats a ledger id fails
    /// alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
    async fn merged_debits_charge_exactly_what_each_balance_covers() {
        let (db, dropper) = test_postgres().await;
        let tenants: Vec<palisade_core::TenantId> = (0..3).map(|_| palisade_core::TenantId::new()).collect();
        for (t, balance) in tenants.iter().zip([10, 25, 1000]) {
            let id = t.to_string();
            db.write_all(vec![
                Stmt::new("INSERT INTO tenants (id, name, created_at) VALUES ($1, 'T', 0)").bind(id.as_str()),
                Stmt::new("INSERT INTO balances (tenant_id, balance, updated_at) VALUES ($1, $2, 0)")
                    .bind(id.as_str())
                    .bind(balance),
            ])
            .await
            .unwrap();
        }
        let mut tasks = Vec::new();
        for i in 0..300 {
            let (db, tenant) = (db.clone(), tenants[i % 3]);
            tasks.push(tokio::spawn(async move {
                let scope = palisade_core::TenantScope::for_system(tenant);
                let stmts = crate::credits::debit_stmts(&scope, 1, "test", &format!("r{i}"), 1);
                assert!(mergeable(&stmts));
                (i % 3, db.write_guarded(stmts).await.unwrap())
            }));
        }
        let mut charged = [0; 3];
        for t in tasks {
            let (tenant, out) = t.await.unwrap();
            match out {
                Ok(rows) => {
                    assert_eq!(rows, vec![1, 1]);
                    charged[tenant] += 1;
                }
                Err(reason) => assert_eq!(reason, "insufficient_credits"),
            }
        }
        assert_eq!(charged, [10, 25, 100]);
        for (t, left) in tenants.iter().zip([0, 0, 900]) {
            let (balance, ledger): (i64, i64) = sqlx::query_as(
                "SELECT balance, (SELECT count(*) FROM credit_ledger l WHERE l.tenant_id = b.tenant_id) \
                 FROM balances b WHERE tenant_id = $1",
            )
            .bind(t.to_string())
            .fetch_one(db.reader())
            .await
            .unwrap();
            assert_eq!(balance, left);
            assert_eq!(ledger, [10, 25, 100][tenants.iter().position(|x| x == t).unwrap()]);
        }
        // Concurrent lists, one of them repeating a ledger id: it fails
        // alone, the others are charged.
        let scope = palisade_core::TenantScope::for_system(tenants[2]);
        let mut tasks = Vec::new();
        for i in 0..20 {
            let (db, scope) = (db.clone(), scope.clone());
            let reference = if i == 7 { "r2".to_owned() } else { format!("again{i}") };
            tasks.push(tokio::spawn(async move {
                db.write_all(crate::credits::debit_stmts(&scope, 1, "test", &reference, 2)).await
            }));
        }
        let mut failed = 0;
        for t in tasks {
            if let Err(e) = t.await.unwrap() {
                assert!(e.is_unique_violation(), "{e}");
                failed += 1;
            }
        }
        assert_eq!(failed, 1);
        let balance: i64 = sqlx::query_scalar("SELECT balance FROM balances WHERE tenant_id = $1")
            .bind(tenants[2].to_string())
            .fetch_one(db.reader())
            .await
            .unwrap();
        assert_eq!(balance, 900 - 19);
        dropper.drop_db(db).await;
    }

    #[test]
    fn an_insert_becomes_an_insert_of_json_rows() {
        let sql = rows_sql("INSERT INTO t (a, b, c, d) VALUES ($1, $2, 'x', $2)", &[false, true]).unwrap();
        assert_eq!(
            sql,
            "INSERT INTO t (a, b, c, d) SELECT (r->>0), CAST(r->>1 AS BIGINT), 'x', CAST(r->>1 AS BIGINT) \
             FROM jsonb_array_elements($1::jsonb) AS r"
        );
        // A placeholder without a value, or not a plain insert: no merged form.
        assert_eq!(rows_sql("INSERT INTO t (a) VALUES ($2)", &[false]), None);
        assert_eq!(rows_sql("UPDATE t SET a = $1", &[false]), None);
        assert_eq!(rows_sql("INSERT INTO t (a) VALUES ($1) ON CONFLICT (a) DO UPDATE SET a = ($1)", &[false]), None);
        assert_eq!(rows_sql("INSERT INTO t (a) SELECT $1 VALUES ($1)", &[false]), None);
    }

    static ADD: crate::SumMerge = crate::SumMerge { sql: "UPDATE", key: &[0], add: 1 };

    #[test]
    fn sums_add_up_per_key_and_rows_stay_apart() {
        let insert = "INSERT INTO t (a) VALUES ($1)";
        let list = |tenant: &str, amount: i64, at: i64| {
            vec![
                Stmt::new(insert).bind(format!("{tenant}-{amount}")).merged_as_rows(),
                Stmt::new("UPDATE b").bind(tenant).bind(amount).bind(at).or_refuse("no").merged_as_sum(&ADD),
            ]
        };
        let (a, b, c) = (list("t2", 5, 1), list("t1", 7, 2), list("t2", 11, 3));
        let merged = Merged::of(&[&a, &b, &c]).unwrap();
        assert_eq!(merged.parts.len(), 2);
        assert_eq!(merged.parts[0].rows.len(), 3);
        // Added up per tenant, the last timestamp kept, sorted by tenant.
        assert_eq!(
            merged.parts[1].rows,
            vec![vec![Json::from("t1"), 7.into(), 2.into()], vec![Json::from("t2"), 16.into(), 3.into()]]
        );
        let huge = list("t1", i64::MAX, 4);
        assert!(Merged::of(&[&b, &huge]).is_none(), "an overflowing sum does not merge");
    }

    #[test]
    fn only_lists_of_merged_statements_merge() {
        let rows = || Stmt::new("INSERT INTO t (a) VALUES ($1)").bind(1).merged_as_rows();
        assert!(mergeable(&[rows(), rows()]));
        assert!(!mergeable(&[rows(), Stmt::new("INSERT INTO t (a) VALUES ($1)").bind(1)]));
        assert!(!mergeable(&[Stmt::dynamic("INSERT INTO t (a) VALUES ($1)".into()).bind(1).merged_as_rows()]));
        assert!(!mergeable(&[]));
    }
}
