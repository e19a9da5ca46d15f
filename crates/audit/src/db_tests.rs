//! The append paths and the log over a real (SQLite) database: what the
//! integration suite checks through the server, pinned in this crate.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use palisade_core::principal::Actor;
use palisade_core::TenantId;
use palisade_store::Db;

use crate::checkpoint::Signer;
use crate::log::AuditLog;
use crate::verify::verify_log;
use crate::{append, record, Context, Event};

pub(crate) async fn open(dir: &Path) -> Db {
    let db = Db::connect(&format!("sqlite://{}/audit.db", dir.display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

pub(crate) fn signer() -> Signer {
    let pem = SigningKey::from_bytes(&[3u8; 32]).to_pkcs8_pem(Default::default()).unwrap();
    Signer::from_pem(&pem, "palisade").unwrap()
}

pub(crate) use palisade_store::testing::Dropper;

/// A database of its own on the PostgreSQL server of
/// `PALISADE_TEST_POSTGRES_URL`, migrated, dropped by [`Dropper::drop_db`].
pub(crate) async fn postgres() -> (Db, Dropper) {
    palisade_store::testing::test_postgres("palisade_audit").await
}

pub(crate) async fn pending(db: &Db) -> i64 {
    palisade_store::audit::pending_count(db.reader()).await.unwrap()
}

/// Runs SQL as an attacker with write access would: triggers dropped.
pub(crate) async fn tamper(dir: &Path, sql: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}/audit.db", dir.display());
    let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
    let tables = [
        "audit_events",
        "audit_leaves",
        "audit_nodes",
        "audit_checkpoints",
        "audit_tenant_tree",
        "audit_tenant_nodes",
        "audit_tenant_checkpoints",
    ];
    for t in tables {
        for s in [format!("DROP TRIGGER IF EXISTS {t}_no_update"), format!("DROP TRIGGER IF EXISTS {t}_no_delete")] {
            sqlx::query(&s).execute(&mut c).await.unwrap();
        }
    }
    sqlx::query(sql).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appended_events_become_a_signed_log_that_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    let ctx = Context { request_id: Some("req-1".into()), ..Context::default() };

    // In the action's transaction: nothing is written until it commits.
    let event = Event::new("api_key.created", Some(tenant), Actor::system()).resource("api_key", "k1");
    let mut tx = db.begin().await.unwrap();
    let first = append(&mut *tx, &event, &ctx, 1_000).await.unwrap();
    tx.rollback().await.unwrap();
    assert_eq!(pending(&db).await, 0);
    let mut tx = db.begin().await.unwrap();
    let first_kept = append(&mut *tx, &event, &ctx, 1_000).await.unwrap();
    tx.commit().await.unwrap();
    assert_ne!(first, first_kept);
    assert_eq!(pending(&db).await, 1);
    // A record of its own.
    let second = record(&db, &Event::new("auth.login_failed", None, Actor::system()), &ctx, 1_001).await.unwrap();
    assert_ne!(second, first_kept);
    assert_eq!(pending(&db).await, 2);

    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    let cp = log.integrate(2_000).await.unwrap().expect("a checkpoint for the pending events");
    let head = log.signer().verifier().verify(&cp).expect("signed by the log's key");
    assert_eq!(head.tree_size, 2);
    assert_eq!(pending(&db).await, 0);
    assert_eq!(log.file_max_size(), 2);
    assert!(log.integrate(2_001).await.unwrap().is_none(), "nothing pending, nothing signed");

    assert_eq!(log.latest_checkpoint().await.unwrap().map(|c| c.body), Some(cp.body.clone()));

    // Each leaf's inclusion proof leads to the signed root.
    for index in 0..2u64 {
        let leaf = palisade_store::audit::leaf_hash_at(db.reader(), index as i64).await.unwrap().unwrap();
        let leaf = crate::merkle::decode_hash(&leaf).unwrap();
        let path = log.inclusion_path(index, 2).await.unwrap();
        assert_eq!(path.len(), 1);
        assert!(crate::merkle::verify_inclusion(&leaf, index, 2, &path, &head.root), "leaf {index}");
    }

    // A reader's catch-up sequences its tenant's waiting events at once.
    let other = Event::new("api_key.revoked", Some(tenant), Actor::system());
    record(&db, &other, &ctx, 2_002).await.unwrap();
    assert_eq!(pending(&db).await, 1);
    log.catch_up(Some(tenant), 2_003).await.unwrap();
    assert_eq!(pending(&db).await, 0);
    assert_eq!(log.file_max_size(), 3);

    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!((report.records, report.pending), (3, 0));
    assert!(report.checkpoints >= 1);

    // An edited record no longer matches what the checkpoint signed.
    tamper(dir.path(), "UPDATE audit_events SET action = 'api_key.revoked' WHERE action = 'api_key.created'").await;
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(!report.intact());
    assert!(report.problems.iter().any(|p| p.contains("record seq")), "{:?}", report.problems);
}

/// `n` events in one transaction, `ts` from `ts0` on (of one tenant, so
/// the tenant trees grow too).
pub(crate) async fn events(db: &Db, n: usize, tenant: TenantId, ts0: i64) {
    let mut tx = db.begin().await.unwrap();
    for i in 0..n {
        let event = Event::new("message.created", Some(tenant), Actor::system()).resource("message", i);
        append(&mut *tx, &event, &Context::default(), ts0 + i as i64).await.unwrap();
    }
    tx.commit().await.unwrap();
}

pub(crate) async fn head(db: &Db) -> (i64, String, i64) {
    palisade_store::audit::read_head_full(db.reader()).await.unwrap()
}

async fn signed_size(log: &AuditLog) -> u64 {
    let cp = log.latest_checkpoint().await.unwrap().unwrap();
    log.signer().verifier().verify(&cp).unwrap().tree_size
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_run_integrates_full_batches_then_the_partial_one() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    // One more than a batch (500): two batches, both in one run.
    events(&db, 501, TenantId::new(), 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    let cp = log.integrate(2_000).await.unwrap().unwrap();
    assert_eq!(log.signer().verifier().verify(&cp).unwrap().tree_size, 501);
    assert_eq!(pending(&db).await, 0);
    assert_eq!(palisade_store::audit::all_checkpoints(db.reader()).await.unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_proofs_of_every_leaf_in_trees_of_1_to_20() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    events(&db, 20, TenantId::new(), 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    let mut leaves = Vec::new();
    for i in 0..20 {
        let h = palisade_store::audit::leaf_hash_at(db.reader(), i).await.unwrap().unwrap();
        leaves.push(crate::merkle::decode_hash(&h).unwrap());
    }
    // Proofs in the older, smaller trees too: their subtrees are of every
    // shape (unaligned, not a power of two, stored nodes above level 0).
    let mut f = crate::merkle::Frontier::default();
    for n in 1..=20u64 {
        f.push(leaves[n as usize - 1], |_, _, _| {});
        for m in 0..n {
            let path = log.inclusion_path(m, n).await.unwrap();
            assert!(crate::merkle::verify_inclusion(&leaves[m as usize], m, n, &path, &f.root()), "m={m} n={n}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_expires_old_records_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 3, tenant, 1_000).await;
    events(&db, 2, tenant, 5_000).await;
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(6_000).await.unwrap().unwrap();
    // Nothing is older than the first record: nothing to expire.
    assert_eq!(log.expire(1_000, 7_000).await.unwrap(), None);
    // The three records before 5000: leaves [0, 3).
    assert_eq!(log.expire(5_000, 7_000).await.unwrap(), Some((3, 3)));
    assert_eq!(palisade_store::audit::all_expiries(db.reader()).await.unwrap().len(), 1);
    // The signed statement is in the witness file too.
    let in_file = crate::verify::read_checkpoint_file(&file).unwrap().unwrap();
    assert_eq!(
        in_file.iter().filter_map(|c| log.signer().verifier().verify_expiry(c)).collect::<Vec<_>>(),
        [(3, 7_000)]
    );
    // Already expired: nothing more, and no second statement.
    assert_eq!(log.expire(5_000, 8_000).await.unwrap(), None);
    assert_eq!(palisade_store::audit::all_expiries(db.reader()).await.unwrap().len(), 1);
    // Its own record (audit.expired) is in the log, which still verifies.
    log.integrate(9_000).await.unwrap().unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.records, 6);
}

/// Tenant `a` keeps its records a shorter time than the platform: its old
/// records go under a statement of its own, nobody else's do, and the log
/// and every tenant's tree still verify.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_own_retention_removes_its_records_only() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    for ts in [1_000, 2_000] {
        events(&db, 3, a, ts).await;
        events(&db, 2, b, ts + 500).await;
    }
    events(&db, 2, a, 5_000).await;
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(6_000).await.unwrap().unwrap();
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), a);
    // Batches of 4: all six of a's old records, none of b's.
    assert_eq!(log.expire_tenant(&scope, 5_000, 7_000, 4).await.unwrap(), 6);
    let left = |t: TenantId| {
        let db = db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM audit_events WHERE tenant_id = $1")
                .bind(t.to_string())
                .fetch_one(db.reader())
                .await
                .unwrap()
        }
    };
    assert_eq!((left(a).await, left(b).await), (2, 4));
    // One signed statement, of a's, in the database and the file; nothing
    // more to do the second time.
    let v = log.signer().verifier();
    let stored = palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap();
    assert_eq!(stored.len(), 1);
    assert_eq!((stored[0].0.as_str(), stored[0].1.up_to_leaf), (a.to_string().as_str(), 10));
    let in_file = crate::verify::read_checkpoint_file(&file).unwrap().unwrap();
    let signed: Vec<_> = in_file.iter().filter_map(|c| v.verify_tenant_expiry(c)).collect();
    assert_eq!(signed.len(), 1);
    // a's first six leaves, up to leaf 10 of the log.
    assert_eq!((signed[0].tenant.as_str(), signed[0].up_to_leaf, signed[0].tree.size), (a.to_string().as_str(), 10, 6));
    assert_eq!(log.expire_tenant(&scope, 5_000, 8_000, 4).await.unwrap(), 0);
    assert_eq!(palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap().len(), 1);
    log.integrate(9_000).await.unwrap();
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    // The statement lets only a's rows go: b's stay append-only.
    let mut tx = db.begin().await.unwrap();
    let refused =
        sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1").bind(b.to_string()).execute(&mut *tx).await;
    assert!(refused.is_err());
    drop(tx);
    // The platform's retention signs over a's gone records (they are no
    // sign of tampering) and the log still verifies.
    assert_eq!(log.expire(5_000, 10_000).await.unwrap(), Some((10, 4)));
    log.integrate(11_000).await.unwrap();
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
}

/// A tenant's cut moves at most once a day; a pass stopped between its
/// statement and the removal is finished by the next; the platform's copy
/// of an operator's action under the tenant stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenants_cut_moves_once_a_day_and_a_stopped_pass_is_finished() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    const DAY: i64 = 86_400_000;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    events(&db, 2, a, 1_000).await; // leaves 0, 1
    let mut tx = db.begin().await.unwrap();
    let by_operator = Event::new("tenant.frozen", Some(a), Actor::operator("op-1"));
    append(&mut *tx, &by_operator, &Context::default(), 1_500).await.unwrap();
    tx.commit().await.unwrap(); // leaves 2 and 3: the tenant's copy and the platform's
    events(&db, 1, b, 1_600).await; // leaf 4
    events(&db, 2, a, 3_000).await; // leaves 5, 6
    events(&db, 1, a, 9_000).await; // leaf 7
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(10_000).await.unwrap().unwrap();
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), a);
    let statements = || async { palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap().len() };
    let now = 100 * DAY;
    // The first cut: a's three records (the operator's action's copy too).
    assert_eq!(log.expire_tenant(&scope, 2_000, now, 10).await.unwrap(), 3);
    assert_eq!(statements().await, 1);
    // Within the day the cut does not move, however far the cutoff went.
    assert_eq!(log.expire_tenant(&scope, 5_000, now + DAY - 1, 10).await.unwrap(), 0);
    assert_eq!(statements().await, 1);
    // A day on it does.
    assert_eq!(log.expire_tenant(&scope, 5_000, now + DAY, 10).await.unwrap(), 2);
    assert_eq!(statements().await, 2);
    let platform_copy: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM audit_events WHERE tenant_id IS NULL AND actor_type = 'operator'")
            .fetch_one(db.reader())
            .await
            .unwrap();
    assert_eq!(platform_copy, 1);
    // A statement signed by a pass that stopped before removing: the next
    // pass, though the cut does not move, removes what it covers.
    assert_eq!(log.sign_tenant_cut(&a.to_string(), &scope, 7, 9_500, now + 2 * DAY).await.unwrap(), Some(8));
    assert_eq!(statements().await, 3);
    // The record it covers, still there, is no less protected: altered, it is found.
    let leaf_7 = "(SELECT event_seq FROM audit_leaves WHERE leaf_index = 7)";
    tamper(dir.path(), &format!("UPDATE audit_events SET action = 'x' WHERE seq = {leaf_7}")).await;
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(!report.intact());
    tamper(dir.path(), &format!("UPDATE audit_events SET action = 'message.created' WHERE seq = {leaf_7}")).await;
    assert_eq!(log.expire_tenant(&scope, 9_500, now + 2 * DAY + 1, 10).await.unwrap(), 1);
    assert_eq!(log.expire_tenant(&scope, 9_500, now + 2 * DAY + 2, 10).await.unwrap(), 0);
    log.integrate(now + 3 * DAY).await.unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
}

/// A tenant row moved, before the day's statement, from below the
/// platform's cut onto another's record (to delete that record under the
/// statement afterwards): the server signs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_row_moved_onto_anothers_record_is_never_signed() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (t, v) = (TenantId::new(), TenantId::new());
    events(&db, 1, t, 1_000).await; // leaf 0
    events(&db, 1, v, 2_000).await; // leaf 1
    events(&db, 1, t, 3_000).await; // leaf 2
    events(&db, 1, t, 9_000).await; // leaf 3
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(10_000).await.unwrap().unwrap();
    assert_eq!(log.expire(1_500, 11_000).await.unwrap(), Some((1, 1)));
    // t's row at leaf 0 (its record gone) moved onto v's record at leaf 1
    // (and v's row out of the way, below the cut).
    let swap = |from: i64, to: i64| {
        let dir = dir.path().to_owned();
        async move {
            let stmt = |x: i64, y: i64| format!("UPDATE audit_tenant_tree SET leaf_index = {y} WHERE leaf_index = {x}");
            tamper(&dir, &stmt(to, -1)).await;
            tamper(&dir, &stmt(from, to)).await;
            tamper(&dir, &stmt(-1, from)).await;
        }
    };
    swap(0, 1).await;
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), t);
    let refused = log.expire_tenant(&scope, 5_000, 12_000, 10).await;
    assert!(matches!(&refused, Err(crate::log::LogError::Tampered(p)) if p.contains("leaf at 1")), "{refused:?}");
    assert!(palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap().is_empty());
    // Put back, and a record of the tenant's left without its row: refused too.
    swap(1, 0).await;
    tamper(dir.path(), &format!("DELETE FROM audit_tenant_tree WHERE tenant_id = '{t}' AND leaf_index = 2")).await;
    let refused = log.expire_tenant(&scope, 5_000, 12_000, 10).await;
    assert!(
        matches!(&refused, Err(crate::log::LogError::Tampered(p)) if p.contains("leaf at 2 is not")),
        "{refused:?}"
    );
    // Put back with its number changed: the rows are out of their order.
    tamper(dir.path(), &format!("INSERT INTO audit_tenant_tree (tenant_id, tenant_index, leaf_index, leaf_hash) SELECT '{t}', 5, 2, leaf_hash FROM audit_tenant_tree WHERE tenant_id = '{t}' AND tenant_index = 0")).await;
    let refused = log.expire_tenant(&scope, 5_000, 12_000, 10).await;
    assert!(
        matches!(&refused, Err(crate::log::LogError::Tampered(p)) if p.contains("out of its order")),
        "{refused:?}"
    );
}

/// A tenant's statement excuses the leaves before its cut, not the one at
/// it; a statement row that does not verify is left out of a witness.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaf_at_a_tenants_cut_is_not_excused() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let a = TenantId::new();
    for ts in [1_000, 5_000, 9_000] {
        events(&db, 1, a, ts).await; // leaves 0, 1, 2
    }
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(10_000).await.unwrap().unwrap();
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), a);
    assert_eq!(log.expire_tenant(&scope, 5_000, 11_000, 10).await.unwrap(), 1);
    tamper(
        dir.path(),
        "DELETE FROM audit_events WHERE seq = (SELECT event_seq FROM audit_leaves WHERE leaf_index = 1)",
    )
    .await;
    assert!(matches!(log.expire(9_000, 12_000).await, Err(crate::log::LogError::Tampered(_))));
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains("(leaf 1) was deleted")), "{:?}", report.problems);
    // The genuine statement goes into a witness; a broken one is counted out.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO audit_tenant_expiries (tenant_id, up_to_leaf, ts, body, signature, key_id) VALUES ($1, 5, 1, 'x', 'y', 'z')")
        .bind(a.to_string())
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let (written, skipped) =
        crate::verify::export_checkpoints(&db, log.signer().verifier(), &dir.path().join("w.jsonl")).await.unwrap();
    let checkpoints = palisade_store::audit::all_checkpoints(db.reader()).await.unwrap().len();
    assert_eq!((written, skipped), (checkpoints + 1, 1));
}

/// A tenant row whose hash is not its own record's tenant leaf is never
/// signed, though it sits on the tenant's record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_row_with_another_hash_is_never_signed() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let t = TenantId::new();
    events(&db, 1, t, 1_000).await; // leaf 0
    events(&db, 1, t, 9_000).await; // leaf 1
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(10_000).await.unwrap().unwrap();
    tamper(
        dir.path(),
        "UPDATE audit_tenant_tree SET leaf_hash = (SELECT leaf_hash FROM audit_tenant_tree WHERE leaf_index = 1) \
         WHERE leaf_index = 0",
    )
    .await;
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), t);
    let refused = log.expire_tenant(&scope, 5_000, 11_000, 10).await;
    assert!(
        matches!(&refused, Err(crate::log::LogError::Tampered(p)) if p.contains("leaf at 0 is not")),
        "{refused:?}"
    );
    assert!(palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap().is_empty());
}

/// A record deleted behind the log's back is not excused by another
/// tenant's statement, even when the stored tenant tree is rewritten to
/// name that tenant.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenants_statement_excuses_no_deleted_record() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    events(&db, 2, a, 1_000).await;
    events(&db, 2, b, 1_500).await;
    events(&db, 1, a, 5_000).await;
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(6_000).await.unwrap().unwrap();
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), a);
    assert_eq!(log.expire_tenant(&scope, 5_000, 7_000, 10).await.unwrap(), 2);
    let v = log.signer().verifier();
    // b's first record (leaf 2) deleted: a's statement reaches leaf 4, but
    // the leaf is b's.
    tamper(
        dir.path(),
        "DELETE FROM audit_events WHERE seq = (SELECT event_seq FROM audit_leaves WHERE leaf_index = 2)",
    )
    .await;
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains("leaf 2")), "{:?}", report.problems);
    // Nor does any retention sign it away.
    assert!(matches!(log.expire(5_000, 8_000).await, Err(crate::log::LogError::Tampered(_))));
    // The stored tenant tree rewritten to call the leaf a's (and a's and
    // b's checkpoints out of the way, as such a writer would): a's
    // statement signed how many of its leaves lie before leaf 4.
    tamper(
        dir.path(),
        &format!("UPDATE audit_tenant_tree SET tenant_id = '{a}', tenant_index = 99 WHERE leaf_index = 2"),
    )
    .await;
    tamper(dir.path(), "DELETE FROM audit_tenant_checkpoints").await;
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    let a = format!("tenant {a}'s tree holds 3 leaves before leaf 4, its retention statement signed 2");
    assert!(report.problems.iter().any(|p| p.starts_with(&a)), "{:?}", report.problems);
}

/// A statement row is believed for what its signed body says: one copied
/// under another tenant (which opens the database's guard for that
/// tenant) excuses nothing and is reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_row_under_another_tenant_excuses_nothing() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (a, b) = (TenantId::new(), TenantId::new());
    events(&db, 2, a, 1_000).await;
    events(&db, 2, b, 1_500).await;
    events(&db, 1, a, 5_000).await;
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(6_000).await.unwrap().unwrap();
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), a);
    assert_eq!(log.expire_tenant(&scope, 5_000, 7_000, 10).await.unwrap(), 2);
    // a's genuine statement copied into a row of b's reaching far: the
    // guard (which reads the row) now lets b's records go.
    let genuine = palisade_store::audit::all_tenant_expiries(db.reader()).await.unwrap().remove(0).1;
    let mut tx = db.begin().await.unwrap();
    // The same body in the platform's table: no statement of that table.
    sqlx::query("INSERT INTO audit_expiries (up_to_leaf, ts, body, signature, key_id) VALUES (1000, 1, $1, $2, $3)")
        .bind(&genuine.body)
        .bind(&genuine.signature)
        .bind(&genuine.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("INSERT INTO audit_tenant_expiries (tenant_id, up_to_leaf, ts, body, signature, key_id) VALUES ($1, 1000, 1, $2, $3, $4)")
        .bind(b.to_string())
        .bind(&genuine.body)
        .bind(&genuine.signature)
        .bind(&genuine.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("DELETE FROM audit_events WHERE tenant_id = $1").bind(b.to_string()).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let v = log.signer().verifier();
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains(&format!("tenant {b} claims"))), "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| p.contains("row claims leaf 1000")), "{:?}", report.problems);
    // A row of the right tenant claiming a farther cut than its body.
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO audit_tenant_expiries (tenant_id, up_to_leaf, ts, body, signature, key_id) VALUES ($1, 2000, 1, $2, $3, $4)")
        .bind(a.to_string())
        .bind(&genuine.body)
        .bind(&genuine.signature)
        .bind(&genuine.key_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let report = verify_log(&db, v, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.problems.iter().any(|p| p.contains(&format!("tenant {a} claims"))), "{:?}", report.problems);
    assert!(report.problems.iter().any(|p| p.contains("leaf 2")), "{:?}", report.problems);
    // No retention signs b's deleted records away.
    assert!(matches!(log.expire(5_000, 8_000).await, Err(crate::log::LogError::Tampered(_))));
    let b_scope = TenantScope::for_sysadmin(&SysadminProof::verified(), b);
    assert!(matches!(
        log.expire_tenant(&b_scope, 5_000, 200_000_000, 10).await,
        Err(crate::log::LogError::Tampered(_))
    ));
}

/// Below the platform's cut every record is gone, so a writer could take a
/// tenant leaf out there and put it elsewhere, over a record it deleted,
/// keeping the tenant's count and root: the statement also signed where
/// the tenant's leaves are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_leaf_moved_to_hide_a_deletion_is_found() {
    use palisade_core::principal::SysadminProof;
    use palisade_core::TenantScope;
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (t, v) = (TenantId::new(), TenantId::new());
    events(&db, 2, t, 1_000).await; // leaves 0, 1
    events(&db, 1, v, 1_100).await; // leaf 2
    events(&db, 1, t, 2_000).await; // leaf 3
    let mut tx = db.begin().await.unwrap();
    append(&mut *tx, &Event::new("platform.note", None, Actor::system()), &Context::default(), 2_100).await.unwrap();
    tx.commit().await.unwrap(); // leaf 4, no tenant's
    events(&db, 1, t, 5_000).await; // leaf 5
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(6_000).await.unwrap().unwrap();
    // The platform keeps from leaf 3; the tenant from leaf 5 (its leaves 0, 1 and 3).
    assert_eq!(log.expire(1_500, 7_000).await.unwrap(), Some((3, 3)));
    let scope = TenantScope::for_sysadmin(&SysadminProof::verified(), t);
    assert_eq!(log.expire_tenant(&scope, 4_000, 7_000, 10).await.unwrap(), 1);
    log.integrate(8_000).await.unwrap();
    let v_ = log.signer().verifier();
    let report = verify_log(&db, v_, &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    // The platform's record at leaf 4 deleted, and the tenant's three
    // leaves moved onto leaves 1, 3 and 4 in their order (same count,
    // same root); the tenant checkpoints out of the way.
    let tenant = t.to_string();
    tamper(
        dir.path(),
        "DELETE FROM audit_events WHERE seq = (SELECT event_seq FROM audit_leaves WHERE leaf_index = 4)",
    )
    .await;
    tamper(dir.path(), &format!("CREATE TABLE moved AS SELECT tenant_index, leaf_hash FROM audit_tenant_tree WHERE tenant_id = '{tenant}' AND leaf_index < 5")).await;
    tamper(dir.path(), &format!("DELETE FROM audit_tenant_tree WHERE tenant_id = '{tenant}' AND leaf_index < 5")).await;
    tamper(
        dir.path(),
        &format!(
            "INSERT INTO audit_tenant_tree (tenant_id, tenant_index, leaf_index, leaf_hash) \
             SELECT '{tenant}', tenant_index, CASE tenant_index WHEN 0 THEN 1 WHEN 1 THEN 3 ELSE 4 END, leaf_hash FROM moved"
        ),
    )
    .await;
    tamper(dir.path(), "DELETE FROM audit_tenant_checkpoints").await;
    let report = verify_log(&db, v_, &[file.as_path()], |_| {}).await.unwrap();
    let needle = format!("tenant {tenant}'s leaves before leaf 5 are not where its retention statement signed them");
    assert!(report.problems.iter().any(|p| p.starts_with(&needle)), "{:?}", report.problems);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_that_is_not_the_signed_tree_is_not_extended() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 2, tenant, 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    // Same size, another root.
    let other = hex::encode([7u8; 32]);
    tamper(dir.path(), &format!("UPDATE audit_head SET frontier = '1:{other}' WHERE id = 1")).await;
    events(&db, 1, tenant, 3_000).await;
    assert!(matches!(log.integrate(4_000).await, Err(crate::log::LogError::CorruptHead)));
    assert_eq!(pending(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_head_cut_short_of_the_witness_file_is_not_extended() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 2, tenant, 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    assert_eq!(log.file_max_size(), 2);
    // The head reset to the empty tree: the file still vouches for two leaves.
    tamper(dir.path(), "UPDATE audit_head SET tree_size = 0, frontier = '', tenant_size = 0 WHERE id = 1").await;
    events(&db, 1, tenant, 3_000).await;
    assert!(matches!(log.integrate(4_000).await, Err(crate::log::LogError::CorruptHead)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_with_a_new_witness_file_extends_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 2, tenant, 1_000).await;
    let a = AuditLog::new(db.clone(), signer(), dir.path().join("a"));
    a.integrate(2_000).await.unwrap().unwrap();
    // Another instance (its file empty so far) finds nothing to do: it
    // signs nothing, so its file stays as it is.
    let b = AuditLog::new(db.clone(), signer(), dir.path().join("b"));
    assert!(b.integrate(2_500).await.unwrap().is_none());
    assert_eq!(b.file_max_size(), 0);
    // With events pending it extends the tree the checkpoint signed, and
    // its file gets every checkpoint from the start.
    events(&db, 1, tenant, 3_000).await;
    b.integrate(4_000).await.unwrap().unwrap();
    assert_eq!(signed_size(&b).await, 3);
    assert_eq!(b.file_max_size(), 3);
    assert_eq!(crate::verify::read_checkpoint_file(&dir.path().join("b")).unwrap().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_trees_catch_up_with_an_older_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 3, tenant, 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    let signed = log.latest_tenant_checkpoint(tenant).await.unwrap().unwrap();
    // A log sequenced before tenant trees existed: none placed yet.
    for t in ["audit_tenant_tree", "audit_tenant_nodes", "audit_tenant_heads", "audit_tenant_checkpoints"] {
        tamper(dir.path(), &format!("DELETE FROM {t}")).await;
    }
    tamper(dir.path(), "UPDATE audit_head SET tenant_size = 0 WHERE id = 1").await;
    assert!(log.latest_tenant_checkpoint(tenant).await.unwrap().is_none());
    // The next run places the three leaves, with nothing pending.
    log.integrate(3_000).await.unwrap();
    assert_eq!(head(&db).await.2, 3);
    let cp = log.latest_tenant_checkpoint(tenant).await.unwrap().unwrap();
    let h = log.signer().verifier().verify_tenant(&cp, &tenant.to_string()).unwrap();
    assert_eq!(h.tree_size, 3);
    assert_eq!(h.root, log.signer().verifier().verify_tenant(&signed, &tenant.to_string()).unwrap().root);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_race_is_left_for_the_next_run_and_other_failures_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 2, tenant, 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    // Another integrator wrote leaf 2 (its head not yet moved): this run's
    // write meets it, and leaves its event to the next run.
    tamper(dir.path(), "INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES (2, 1000000, 'x')").await;
    events(&db, 1, tenant, 3_000).await;
    assert!(log.integrate(4_000).await.unwrap().is_none());
    assert_eq!(pending(&db).await, 1);
    // A write that fails for any other reason is an error.
    tamper(dir.path(), "DELETE FROM audit_leaves WHERE leaf_index = 2").await;
    tamper(
        dir.path(),
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_checkpoints BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .await;
    assert!(log.integrate(5_000).await.is_err());
    assert_eq!(pending(&db).await, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_refuses_to_sign_away_a_tampered_range() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 3, tenant, 1_000).await;
    events(&db, 2, tenant, 5_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(6_000).await.unwrap().unwrap();
    tamper(dir.path(), "UPDATE audit_events SET action = 'x' WHERE seq = (SELECT MIN(seq) FROM audit_events)").await;
    assert!(matches!(log.expire(5_000, 7_000).await, Err(crate::log::LogError::Tampered(_))));
    assert!(palisade_store::audit::all_expiries(db.reader()).await.unwrap().is_empty());
}

/// A value holding the field separator cannot take the fast path; the
/// slow path reads it, for the log and for its tenant's tree.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_holding_the_field_separator_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 2, tenant, 1_000).await;
    let agent = format!("agent{}x", palisade_store::audit::FIELD_SEP);
    let ctx = Context { user_agent: Some(agent), ..Context::default() };
    let mut tx = db.begin().await.unwrap();
    append(&mut *tx, &Event::new("key.created", Some(tenant), Actor::system()), &ctx, 1_500).await.unwrap();
    tx.commit().await.unwrap();
    events(&db, 6, tenant, 2_000).await;
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(3_000).await.unwrap().unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.records, 9);
    // Two leaves a chunk: the tenant's later leaves, hashed ahead before
    // and after the scan tells the hashing stage of the one it missed.
    let small = crate::verify::Pace { chunk: 2, progress_every: 2 };
    let report =
        crate::verify::verify_log_paced(&db, log.signer().verifier(), &[file.as_path()], |_| {}, small).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.records, 9);
    // The tenant's own retention reads it the slow way too, and signs.
    use palisade_core::principal::SysadminProof;
    let scope = palisade_core::TenantScope::for_sysadmin(&SysadminProof::verified(), tenant);
    assert_eq!(log.expire_tenant(&scope, 2_000, 4_000, 10).await.unwrap(), 3);
    log.integrate(5_000).await.unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
}

/// The background integrator: it sequences what writers poke it about,
/// and at shutdown everything still pending, copies the checkpoints to its
/// witness file and hands the lead over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_background_integrator_runs_until_stopped_then_once_more() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    let clock = palisade_core::ManualClock::new(10_000);
    let (stop, stopped) = tokio::sync::watch::channel(false);
    events(&db, 2, tenant, 1_000).await;
    // A long interval: after its first run (at once, poked), it waits.
    let task = log.spawn(Arc::new(clock.clone()), Duration::from_secs(3600), stopped);
    log.poke();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while pending(&db).await > 0 || log.file_max_size() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the integrator did not run");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(signed_size(&log).await, 2);
    assert_eq!(crate::verify::read_checkpoint_file(&file).unwrap().unwrap().len(), 1);

    // Left for the shutdown run, which is then signed at the clock's time.
    events(&db, 3, tenant, 2_000).await;
    clock.advance_ms(5_000);
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(20), task).await.expect("stops").unwrap();
    assert_eq!(pending(&db).await, 0);
    let cp = log.latest_checkpoint().await.unwrap().unwrap();
    let head = log.signer().verifier().verify(&cp).unwrap();
    assert_eq!((head.tree_size, head.ts_ms), (5, 15_000));
    assert_eq!(log.file_max_size(), 5);
    assert_eq!(crate::verify::read_checkpoint_file(&file).unwrap().unwrap().len(), 2);
    assert!(!log.leading(), "the lead is handed over");
}

/// On PostgreSQL one instance leads: a follower integrates for its readers
/// but keeps no witness file; the leader's file gets what the follower
/// signed at its next sync.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn on_postgres_only_the_leader_keeps_a_witness_file() {
    let (db, dropper) = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new();
    let a = AuditLog::new(db.clone(), signer(), dir.path().join("a"));
    let b = AuditLog::new(db.clone(), signer(), dir.path().join("b"));
    assert!(a.lead().await);
    assert!(!b.lead().await, "one leader");
    assert!(!b.leading());

    events(&db, 2, tenant, 1_000).await;
    b.catch_up(Some(tenant), 2_000).await.unwrap();
    assert_eq!(pending(&db).await, 0);
    assert_eq!(signed_size(&b).await, 2);
    assert_eq!(b.file_max_size(), 0);
    assert!(!dir.path().join("b").exists(), "a follower writes no witness file");
    assert_eq!(a.sync_file().await.unwrap(), 1);
    assert_eq!(a.file_max_size(), 2);

    // The leader's own runs go to its file as they are signed.
    events(&db, 1, tenant, 3_000).await;
    a.integrate(4_000).await.unwrap().unwrap();
    assert_eq!(a.file_max_size(), 3);
    assert_eq!(crate::verify::read_checkpoint_file(&dir.path().join("a")).unwrap().unwrap().len(), 2);
    assert!(!dir.path().join("b").exists());
    dropper.drop_db(db).await;
}

/// Full verification on PostgreSQL: an intact log verifies, and an event
/// inserted behind the log's back is found.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn on_postgres_verification_finds_events_outside_the_log() {
    let (db, dropper) = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    assert!(log.lead().await);
    events(&db, 5, TenantId::new(), 1_000).await;
    log.integrate(2_000).await.unwrap().unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.records, 5);
    // Written, then taken out of the queue without becoming a leaf.
    events(&db, 1, TenantId::new(), 3_000).await;
    let seq: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_pending").fetch_one(db.reader()).await.unwrap();
    sqlx::query("DELETE FROM audit_pending").execute(db.reader()).await.unwrap();
    let report = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await.unwrap();
    assert_eq!(
        report.problems,
        [format!("record seq {seq} is not part of the log: it was inserted behind the log's back")]
    );
    // A leaf planted at the last index there is (the reader jumps over
    // the empty chunks, then stops where chunks cannot grow).
    sqlx::query("INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES ($1, $2, 'x')")
        .bind(i64::MAX)
        .bind(seq)
        .execute(db.reader())
        .await
        .unwrap();
    let report = tokio::time::timeout(
        Duration::from_secs(20),
        verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}),
    )
    .await
    .expect("verification ends")
    .unwrap();
    assert_eq!(
        report.problems,
        [format!("leaf {} lies beyond the log's 5 leaves: it was added behind the log's back", i64::MAX)]
    );
    dropper.drop_db(db).await;
}

/// A column whose type was changed behind the log's back is not read as
/// the type it had: PostgreSQL's binary rows carry no types.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn on_postgres_a_retyped_column_does_not_verify() {
    let (db, dropper) = postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    assert!(log.lead().await);
    events(&db, 3, TenantId::new(), 1_000).await;
    log.integrate(2_000).await.unwrap().unwrap();
    // Each timestamp's 8 bytes unchanged, read as a date in 2000.
    sqlx::query(
        "ALTER TABLE audit_events ALTER ts TYPE timestamp \
         USING timestamp '2000-01-01' + ts * interval '1 microsecond'",
    )
    .execute(db.reader())
    .await
    .unwrap();
    let verified = verify_log(&db, log.signer().verifier(), &[file.as_path()], |_| {}).await;
    assert!(verified.as_ref().is_err_and(|e| e.to_string().contains("bigint")), "{verified:?}");
    dropper.drop_db(db).await;
}

/// A leaf planted far beyond the log (the leaves table refuses updates and
/// deletes, not inserts) is found, and at once: the reader skips the empty
/// chunks up to it, or stops where chunks cannot grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leaf_planted_far_beyond_the_log_is_found_at_once() {
    for (at, problem) in [
        (1_000_000i64, "leaf 3 is unreadable"),
        (i64::MAX, "lies beyond the log's 3 leaves: it was added behind the log's back"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let db = open(dir.path()).await;
        events(&db, 3, TenantId::new(), 1_000).await;
        let file = dir.path().join("checkpoints");
        let log = AuditLog::new(db.clone(), signer(), file.clone());
        log.integrate(2_000).await.unwrap().unwrap();
        tamper(
            dir.path(),
            &format!("INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES ({at}, 99, 'x')"),
        )
        .await;
        let small = crate::verify::Pace { chunk: 2, progress_every: 2 };
        let report = tokio::time::timeout(
            Duration::from_secs(20),
            crate::verify::verify_log_paced(&db, log.signer().verifier(), &[file.as_path()], |_| {}, small),
        )
        .await
        .expect("verification ends")
        .unwrap();
        assert_eq!(report.problems.len(), 1, "{:?}", report.problems);
        assert!(report.problems[0].contains(problem), "{at}: {:?}", report.problems);
    }
}

/// Syncing copies to a witness file each verified checkpoint it lacks, in
/// order, and says how many; a new instance reads what its file vouches for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_witness_file_gets_what_it_lacks_once() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    let a = AuditLog::new(db.clone(), signer(), dir.path().join("a"));
    assert_eq!(a.checkpoint_file(), dir.path().join("a"));
    for run in 0..3 {
        events(&db, 1, tenant, 1_000 + run).await;
        a.integrate(2_000 + run).await.unwrap().unwrap();
    }
    assert_eq!(a.sync_file().await.unwrap(), 0, "a's file has them all");
    let b = AuditLog::new(db.clone(), signer(), dir.path().join("b"));
    assert_eq!(b.file_max_size(), 0);
    assert_eq!(b.sync_file().await.unwrap(), 3);
    assert_eq!(b.file_max_size(), 3);
    assert_eq!(b.sync_file().await.unwrap(), 0);
    let sizes: Vec<u64> = crate::verify::read_checkpoint_file(&dir.path().join("b"))
        .unwrap()
        .unwrap()
        .iter()
        .map(|c| b.signer().verifier().verify(c).unwrap().tree_size)
        .collect();
    assert_eq!(sizes, [1, 2, 3]);
    // Restarted, an instance knows what its file vouches for; a file
    // signed by another key vouches for nothing.
    assert_eq!(AuditLog::new(db.clone(), signer(), dir.path().join("b")).file_max_size(), 3);
    let other_key = SigningKey::from_bytes(&[4u8; 32]).to_pkcs8_pem(Default::default()).unwrap();
    let other = Signer::from_pem(&other_key, "palisade").unwrap();
    assert_eq!(AuditLog::new(db.clone(), other, dir.path().join("b")).file_max_size(), 0);
}

/// Inclusion proofs in a tenant's tree, whose leaves are not the log's
/// (another tenant's events sit between them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inclusion_proofs_in_a_tenant_tree() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let (t, other) = (TenantId::new(), TenantId::new());
    events(&db, 3, t, 1_000).await;
    events(&db, 2, other, 1_100).await;
    events(&db, 2, t, 1_200).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    let cp = log.latest_tenant_checkpoint(t).await.unwrap().unwrap();
    let h = log.signer().verifier().verify_tenant(&cp, &t.to_string()).unwrap();
    assert_eq!(h.tree_size, 5);
    for m in 0..5u64 {
        let leaf = palisade_store::audit::tenant_leaf_hash_at(db.reader(), &t.to_string(), m as i64).await.unwrap();
        let leaf = crate::merkle::decode_hash(&leaf.unwrap()).unwrap();
        let path = log.tenant_inclusion_path(&t.to_string(), m, 5).await.unwrap();
        assert!(!path.is_empty());
        assert!(crate::merkle::verify_inclusion(&leaf, m, 5, &path, &h.root), "leaf {m}");
        // Not a proof in the log's tree.
        assert_ne!(path, log.inclusion_path(m, 7).await.unwrap(), "leaf {m}");
    }
}

/// Removes the tenant trees, as a log sequenced before they existed has none.
async fn forget_tenant_trees(dir: &Path) {
    for t in ["audit_tenant_tree", "audit_tenant_nodes", "audit_tenant_heads", "audit_tenant_checkpoints"] {
        tamper(dir, &format!("DELETE FROM {t}")).await;
    }
    tamper(dir, "UPDATE audit_head SET tenant_size = 0 WHERE id = 1").await;
}

/// While the tenant trees catch up with an older log, a lost race is left
/// for the next run and any other failure is an error; a reader's
/// catch-up places the leaves even with nothing pending.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_trees_catching_up_lose_races_and_fail_like_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let tenant = TenantId::new();
    events(&db, 3, tenant, 1_000).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    log.integrate(2_000).await.unwrap().unwrap();
    forget_tenant_trees(dir.path()).await;
    // Another integrator placed leaf 0 (its marker not yet moved).
    tamper(
        dir.path(),
        "INSERT INTO audit_tenant_tree (tenant_id, tenant_index, leaf_index, leaf_hash) VALUES ('x', 0, 0, 'x')",
    )
    .await;
    assert!(log.integrate(3_000).await.unwrap().is_none());
    assert_eq!(head(&db).await.2, 0);
    tamper(dir.path(), "DELETE FROM audit_tenant_tree").await;
    tamper(
        dir.path(),
        "CREATE TRIGGER refuse BEFORE INSERT ON audit_tenant_checkpoints BEGIN SELECT RAISE(ABORT, 'disk full'); END",
    )
    .await;
    assert!(log.integrate(4_000).await.is_err());
    assert_eq!(head(&db).await.2, 0);
    tamper(dir.path(), "DROP TRIGGER refuse").await;
    log.catch_up(Some(tenant), 5_000).await.unwrap();
    assert_eq!(head(&db).await.2, 3);
    assert_eq!(pending(&db).await, 0);
    assert!(log.latest_tenant_checkpoint(tenant).await.unwrap().is_some());
}
