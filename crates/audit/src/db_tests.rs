//! The append paths and the log over a real (SQLite) database: what the
//! integration suite checks through the server, pinned in this crate.

use std::path::Path;

use ed25519_dalek::pkcs8::EncodePrivateKey;
use ed25519_dalek::SigningKey;
use palisade_core::principal::Actor;
use palisade_core::TenantId;
use palisade_store::Db;

use crate::checkpoint::Signer;
use crate::log::AuditLog;
use crate::verify::verify_log;
use crate::{append, record, Context, Event};

async fn open(dir: &Path) -> Db {
    let db = Db::connect(&format!("sqlite://{}/audit.db", dir.display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

fn signer() -> Signer {
    let pem = SigningKey::from_bytes(&[3u8; 32]).to_pkcs8_pem(Default::default()).unwrap();
    Signer::from_pem(&pem, "palisade").unwrap()
}

async fn pending(db: &Db) -> i64 {
    palisade_store::audit::pending_count(db.reader()).await.unwrap()
}

/// Runs SQL as an attacker with write access would: triggers dropped.
async fn tamper(dir: &Path, sql: &str) {
    use sqlx::Connection;
    let url = format!("sqlite://{}/audit.db", dir.display());
    let mut c = sqlx::AnyConnection::connect(&url).await.unwrap();
    for t in ["audit_events", "audit_leaves", "audit_nodes", "audit_checkpoints"] {
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
