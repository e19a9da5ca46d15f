//! The credit store over a real (SQLite) database: the balance, top-ups,
//! the conditional debit (in a transaction and as a guarded list), refunds
//! and the ledger line each one writes.

use palisade_core::{TenantId, TenantScope};

use crate::credits::{balance, debit, debit_stmts, refund, top_up_stmts};
use crate::Db;

async fn open(dir: &std::path::Path) -> (Db, TenantScope) {
    let db = Db::connect(&format!("sqlite://{}/credits.db", dir.display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    let tenant = TenantId::new();
    crate::tenants::insert(db.reader(), tenant, "t", 1).await.unwrap();
    (db, TenantScope::for_system(tenant))
}

/// The tenant's ledger: (id, amount, reason, reference, created_at), oldest first.
async fn ledger(db: &Db, scope: &TenantScope) -> Vec<(String, i64, String, String, i64)> {
    sqlx::query_as(
        "SELECT id, amount, reason, reference, created_at FROM credit_ledger WHERE tenant_id = $1 \
         ORDER BY created_at, id",
    )
    .bind(scope.tenant_id().to_string())
    .fetch_all(db.reader())
    .await
    .unwrap()
}

async fn updated_at(db: &Db, scope: &TenantScope) -> i64 {
    sqlx::query_scalar("SELECT updated_at FROM balances WHERE tenant_id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_one(db.reader())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_ups_add_up_with_a_ledger_line_each() {
    let dir = tempfile::tempdir().unwrap();
    let (db, scope) = open(dir.path()).await;
    // A tenant that never had credits has 0 (no balance row).
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 0);

    db.write_all(top_up_stmts(&scope, "l1", 137, "pay-1", 10)).await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 137);
    db.write_all(top_up_stmts(&scope, "l2", 5, "pay-2", 20)).await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 142);
    assert_eq!(updated_at(&db, &scope).await, 20);
    assert_eq!(
        ledger(&db, &scope).await,
        vec![
            ("l1".into(), 137, "top_up".into(), "pay-1".into(), 10),
            ("l2".into(), 5, "top_up".into(), "pay-2".into(), 20)
        ]
    );

    // Another tenant's balance is its own.
    let other = TenantScope::for_system(TenantId::new());
    assert_eq!(balance(db.reader(), &other).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_debit_charges_only_what_the_balance_covers() {
    let dir = tempfile::tempdir().unwrap();
    let (db, scope) = open(dir.path()).await;
    db.write_all(top_up_stmts(&scope, "l1", 100, "pay", 10)).await.unwrap();

    let mut tx = db.begin().await.unwrap();
    assert!(debit(&mut *tx, &scope, 30, "call", "c1", 20).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 70);
    assert_eq!(updated_at(&db, &scope).await, 20);

    // More than is left: refused, and nothing changes.
    let mut tx = db.begin().await.unwrap();
    assert!(!debit(&mut *tx, &scope, 71, "call", "c2", 30).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 70);
    assert_eq!(updated_at(&db, &scope).await, 20);

    // Exactly what is left: charged, down to 0.
    let mut tx = db.begin().await.unwrap();
    assert!(debit(&mut *tx, &scope, 70, "message", "m1", 40).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 0);

    // A tenant without a balance row cannot be charged.
    let other = TenantScope::for_system(TenantId::new());
    let mut tx = db.begin().await.unwrap();
    assert!(!debit(&mut *tx, &other, 1, "call", "c3", 50).await.unwrap());
    tx.commit().await.unwrap();

    // One ledger line per charge, negative, named by reason and reference.
    assert_eq!(
        ledger(&db, &scope).await,
        vec![
            ("l1".into(), 100, "top_up".into(), "pay".into(), 10),
            ("call-c1".into(), -30, "call".into(), "c1".into(), 20),
            ("message-m1".into(), -70, "message".into(), "m1".into(), 40)
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refund_gives_back_with_its_ledger_line() {
    let dir = tempfile::tempdir().unwrap();
    let (db, scope) = open(dir.path()).await;
    db.write_all(top_up_stmts(&scope, "l1", 50, "pay", 10)).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(debit(&mut *tx, &scope, 20, "call", "c1", 20).await.unwrap());
    refund(&mut *tx, &scope, 15, "c1", 30).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 45);
    assert_eq!(updated_at(&db, &scope).await, 30);
    assert_eq!(
        ledger(&db, &scope).await,
        vec![
            ("l1".into(), 50, "top_up".into(), "pay".into(), 10),
            ("call-c1".into(), -20, "call".into(), "c1".into(), 20),
            ("refund-c1".into(), 15, "refund".into(), "c1".into(), 30)
        ]
    );
    // A retried debit of the same reference cannot charge twice: its ledger
    // id is taken, so the transaction fails and is undone.
    let mut tx = db.begin().await.unwrap();
    assert!(debit(&mut *tx, &scope, 5, "call", "c1", 40).await.is_err());
    tx.rollback().await.unwrap();
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 45);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guarded_debit_list_is_refused_when_not_covered() {
    let dir = tempfile::tempdir().unwrap();
    let (db, scope) = open(dir.path()).await;
    db.write_all(top_up_stmts(&scope, "l1", 40, "pay", 10)).await.unwrap();

    assert_eq!(db.write_guarded(debit_stmts(&scope, 25, "message", "m1", 20)).await.unwrap(), Ok(vec![1, 1]));
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 15);
    assert_eq!(updated_at(&db, &scope).await, 20);
    // Not covered: refused, the ledger line undone with it.
    assert_eq!(
        db.write_guarded(debit_stmts(&scope, 16, "message", "m2", 30)).await.unwrap(),
        Err("insufficient_credits")
    );
    assert_eq!(balance(db.reader(), &scope).await.unwrap(), 15);
    assert_eq!(
        ledger(&db, &scope).await,
        vec![
            ("l1".into(), 40, "top_up".into(), "pay".into(), 10),
            ("message-m1".into(), -25, "message".into(), "m1".into(), 20)
        ]
    );
    // Its two statements merge on PostgreSQL: the ledger row, then the
    // guarded update (the balance row's lock is held for the shortest time).
    let stmts = debit_stmts(&scope, 1, "message", "m3", 40);
    assert!(matches!(stmts[0].merge, crate::write::Merge::Rows));
    assert!(matches!(stmts[1].merge, crate::write::Merge::Sum(_)));
}
