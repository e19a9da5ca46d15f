//! Full verification and the witness export over a real (SQLite) database:
//! the witness-file and database cases, the fast path's fallback, the
//! progress callback, retention, the tenant trees' bounds, and the export's
//! counts. Verification runs at a small pace (two leaves a chunk), so these
//! few-leaf logs span several chunks.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use palisade_core::TenantId;
use palisade_store::Db;

use crate::checkpoint::Checkpoint;
use crate::db_tests::{events, open, signer, tamper};
use crate::log::AuditLog;
use crate::verify::{export_checkpoints, read_checkpoint_file, verify_log, verify_log_paced, Pace, Report};

const SMALL: Pace = Pace { chunk: 2, progress_every: 2 };

/// A log of `n` events of `tenant`, integrated (one checkpoint), with its
/// witness file.
async fn log_of(dir: &Path, n: usize, tenant: TenantId) -> (Db, Arc<AuditLog>, PathBuf) {
    let db = open(dir).await;
    events(&db, n, tenant, 1_000).await;
    let file = dir.join("checkpoints");
    let log = AuditLog::new(db.clone(), signer(), file.clone());
    log.integrate(2_000).await.unwrap().unwrap();
    (db, log, file)
}

async fn verify(db: &Db, log: &AuditLog, files: &[&Path]) -> Report {
    verify_log_paced(db, log.signer().verifier(), files, |_| {}, SMALL).await.unwrap()
}

async fn event_seq_of_leaf(db: &Db, index: i64) -> i64 {
    sqlx::query_scalar("SELECT event_seq FROM audit_leaves WHERE leaf_index = $1")
        .bind(index)
        .fetch_one(db.reader())
        .await
        .unwrap()
}

/// Stores a note in `audit_checkpoints` (or `audit_expiries`) under `size`,
/// as an attacker with write access could.
async fn insert_note(dir: &Path, expiry: bool, size: u64, cp: &Checkpoint) {
    let (table, cols) =
        if expiry { ("audit_expiries", "up_to_leaf, ts") } else { ("audit_checkpoints", "tree_size, root_hash, ts") };
    let vals = if expiry { format!("{size}, 1") } else { format!("{size}, 'x', 1") };
    let sql = format!(
        "INSERT INTO {table} ({cols}, body, signature, key_id) VALUES ({vals}, '{}', '{}', '{}')",
        cp.body, cp.signature, cp.key_id
    );
    tamper(dir, &sql).await;
}

fn append_line(path: &Path, cp: &Checkpoint) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().append(true).open(path).unwrap();
    writeln!(f, "{}", serde_json::to_string(cp).unwrap()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_writes_the_notes_that_verify_in_order_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new();
    let (db, log, _) = log_of(dir.path(), 3, tenant).await;
    events(&db, 2, tenant, 5_000).await;
    log.integrate(6_000).await.unwrap().unwrap();
    assert_eq!(log.expire(5_000, 7_000).await.unwrap(), Some((3, 3)));
    log.integrate(8_000).await.unwrap().unwrap();
    let genuine: Vec<Checkpoint> = palisade_store::audit::all_checkpoints(db.reader())
        .await
        .unwrap()
        .into_iter()
        .map(|r| Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id })
        .collect();
    let statement = palisade_store::audit::all_expiries(db.reader()).await.unwrap().remove(0);
    let statement = Checkpoint { body: statement.body, signature: statement.signature, key_id: statement.key_id };
    assert_eq!(genuine.len(), 3);

    // Skipped: a checkpoint whose signature is another note's, a genuine
    // checkpoint stored under another size, a statement whose signature is
    // another note's.
    let s = signer();
    let forged = Checkpoint { signature: s.sign(10, &[1; 32], 1).signature, ..s.sign(9, &[1; 32], 1) };
    insert_note(dir.path(), false, 9, &forged).await;
    insert_note(dir.path(), false, 8, &s.sign(7, &[1; 32], 1)).await;
    let forged = Checkpoint { signature: s.sign_expiry(5, 1).signature, ..s.sign_expiry(4, 1) };
    insert_note(dir.path(), true, 4, &forged).await;

    // The file and a leftover temporary file of an interrupted export are
    // replaced.
    let path = dir.path().join("witness.jsonl");
    std::fs::write(&path, "old\n").unwrap();
    std::fs::write(path.with_extension("tmp"), "partial").unwrap();
    let counts = export_checkpoints(&db, log.signer().verifier(), &path).await.unwrap();
    assert_eq!(counts, (4, 3));
    // By size; a statement after the checkpoint of its size.
    let written = read_checkpoint_file(&path).unwrap().unwrap();
    let expected = vec![genuine[0].clone(), statement, genuine[1].clone(), genuine[2].clone()];
    assert_eq!(written, expected);
    assert!(!path.with_extension("tmp").exists());
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    // The copy is a witness the log verifies against: only the forged rows
    // of the database are reported.
    let report = verify(&db, &log, &[path.as_path()]).await;
    assert_eq!(
        report.problems,
        [
            "a retention statement in the database has an invalid signature or format",
            "a checkpoint in the database has an invalid signature or format",
        ]
    );
    assert_eq!(report.records, 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_witness_file_is_reported_unless_the_log_is_empty() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    let missing = dir.path().join("missing");
    // Nothing logged yet: nothing to check the file against.
    let report = verify(&db, &log, &[missing.as_path()]).await;
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!((report.records, report.checkpoints, report.pending), (0, 0, 0));

    let tenant = TenantId::new();
    events(&db, 3, tenant, 1_000).await;
    log.integrate(2_000).await.unwrap().unwrap();
    let gone = format!("the checkpoint file {} is missing: the log cannot be checked against it", missing.display());
    let report = verify(&db, &log, &[missing.as_path()]).await;
    assert_eq!(report.problems, std::slice::from_ref(&gone));
    assert_eq!(report.records, 3);

    // Its checkpoints deleted from the database too: the leaves still say
    // there is a log to check the file against.
    tamper(dir.path(), "DELETE FROM audit_checkpoints").await;
    let report = verify(&db, &log, &[missing.as_path()]).await;
    assert_eq!(report.problems, [gone]);
    // Without a witness file: leaves no checkpoint covers.
    let report = verify(&db, &log, &[]).await;
    assert_eq!(
        report.problems,
        ["leaves 0..2 are not covered by any signed checkpoint: they were added behind the log's back"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn checkpoints_of_one_size_must_agree() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log, file) = log_of(dir.path(), 3, TenantId::new()).await;
    let s = signer();
    let head = log.signer().verifier().verify(&log.latest_checkpoint().await.unwrap().unwrap()).unwrap();
    // The same tree signed again later: another note, no disagreement.
    append_line(&file, &s.sign(3, &head.root, 9_000));
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.checkpoints, 1);

    // Notes that do not verify are reported, each with where it was found.
    append_line(&file, &Checkpoint { signature: "AAAA".into(), ..s.sign(3, &head.root, 9_001) });
    append_line(&file, &Checkpoint { signature: "AAAA".into(), ..s.sign_expiry(1, 9_002) });
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert_eq!(
        report.problems,
        [
            "a retention statement in the checkpoint file has an invalid signature or format",
            "a checkpoint in the checkpoint file has an invalid signature or format",
        ]
    );

    // A signed checkpoint of the same size with another root.
    append_line(&file, &s.sign(3, &[9; 32], 9_003));
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert!(
        report.problems.contains(&"two signed checkpoints disagree about the tree at size 3".to_owned()),
        "{:?}",
        report.problems
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_leaf_is_named_with_the_next_present_one() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log, file) = log_of(dir.path(), 4, TenantId::new()).await;
    tamper(dir.path(), "DELETE FROM audit_leaves WHERE leaf_index = 1").await;
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert_eq!(report.problems, ["leaf 1 is missing: records were deleted from the tree (next present is leaf 2)"]);
    assert_eq!(report.records, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_truncated_log_and_leaves_no_checkpoint_covers() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new();
    let (db, log, file) = log_of(dir.path(), 3, tenant).await;
    events(&db, 2, tenant, 3_000).await;
    log.integrate(4_000).await.unwrap().unwrap();
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!((report.records, report.checkpoints), (5, 2));

    // The newest checkpoint gone (no witness file): the last two leaves are
    // vouched for by nothing.
    tamper(dir.path(), "DELETE FROM audit_checkpoints WHERE tree_size = 5").await;
    let report = verify(&db, &log, &[]).await;
    assert_eq!(
        report.problems,
        ["leaves 3..4 are not covered by any signed checkpoint: they were added behind the log's back"]
    );

    // The last leaf gone: the witness file still covers it.
    let seq = event_seq_of_leaf(&db, 4).await;
    tamper(dir.path(), "DELETE FROM audit_leaves WHERE leaf_index = 4").await;
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert_eq!(
        report.problems,
        [
            "the log was truncated: a signed checkpoint covers 5 records but only 4 remain (first missing: leaf 4)"
                .to_owned(),
            format!("record seq {seq} is not part of the log: it was inserted behind the log's back"),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_is_reported_every_period_and_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let db = open(dir.path()).await;
    let log = AuditLog::new(db.clone(), signer(), dir.path().join("checkpoints"));
    let mut seen = Vec::new();
    verify_log_paced(&db, log.signer().verifier(), &[], |n| seen.push(n), SMALL).await.unwrap();
    assert_eq!(seen, [0]);

    events(&db, 5, TenantId::new(), 1_000).await;
    log.integrate(2_000).await.unwrap().unwrap();
    let mut seen = Vec::new();
    let report = verify_log_paced(&db, log.signer().verifier(), &[], |n| seen.push(n), SMALL).await.unwrap();
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(seen, [2, 4, 5]);
    // At the real pace, only the end.
    let mut seen = Vec::new();
    verify_log(&db, log.signer().verifier(), &[], |n| seen.push(n)).await.unwrap();
    assert_eq!(seen, [5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_records_a_retention_statement_covers_may_be_gone() {
    let dir = tempfile::tempdir().unwrap();
    let tenant = TenantId::new();
    let (db, log, file) = log_of(dir.path(), 3, tenant).await;
    events(&db, 2, tenant, 5_000).await;
    log.integrate(6_000).await.unwrap().unwrap();
    assert_eq!(log.expire(5_000, 7_000).await.unwrap(), Some((3, 3)));
    log.integrate(8_000).await.unwrap().unwrap();
    // Leaves 0-2 expired, over two chunks; the tenant's tree takes their
    // stored tenant leaves and still matches its signed roots.
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert!(report.intact(), "{:?}", report.problems);
    assert_eq!(report.records, 6);

    // Leaf 3's record, the first one the statement does not cover.
    let seq = event_seq_of_leaf(&db, 3).await;
    tamper(dir.path(), &format!("DELETE FROM audit_events WHERE seq = {seq}")).await;
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert_eq!(report.problems, [format!("record seq {seq} (leaf 3) was deleted")]);
}

/// The leaves the head says are placed in tenant trees are the ones
/// verification rebuilds them from: a head cut back below a tenant's
/// signed checkpoint shows as that tree truncated, whether the last placed
/// leaf's record is present or expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_trees_are_rebuilt_from_the_placed_leaves_only() {
    for expired in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new();
        let (db, log, file) = log_of(dir.path(), 3, tenant).await;
        if expired {
            assert_eq!(log.expire(5_000, 7_000).await.unwrap(), Some((3, 3)));
            log.integrate(8_000).await.unwrap().unwrap();
        }
        let report = verify(&db, &log, &[file.as_path()]).await;
        assert!(report.intact(), "expired {expired}: {:?}", report.problems);
        tamper(dir.path(), "UPDATE audit_head SET tenant_size = 2 WHERE id = 1").await;
        let report = verify(&db, &log, &[file.as_path()]).await;
        assert_eq!(
            report.problems,
            [format!(
                "tenant {tenant}'s tree was truncated: a signed checkpoint covers 3 of its events, the log holds 2"
            )],
            "expired {expired}"
        );
    }
}

/// Two leaves swapped with their records: each record still hashes to its
/// leaf, so only the rebuilt root, compared with the signed checkpoint,
/// shows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaves_reordered_with_their_records_break_the_signed_root() {
    let dir = tempfile::tempdir().unwrap();
    let (db, log, file) = log_of(dir.path(), 4, TenantId::new()).await;
    tamper(
        dir.path(),
        "UPDATE audit_leaves SET leaf_index = -1 WHERE leaf_index = 1; \
         UPDATE audit_leaves SET leaf_index = 1 WHERE leaf_index = 2; \
         UPDATE audit_leaves SET leaf_index = 2 WHERE leaf_index = -1",
    )
    .await;
    let report = verify(&db, &log, &[file.as_path()]).await;
    assert_eq!(
        report.problems,
        ["the tree at size 4 does not match its signed checkpoint: records among leaves 0..3 were altered, \
          reordered or replaced"]
    );
}
