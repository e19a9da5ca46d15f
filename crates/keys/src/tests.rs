use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use palisade_seal::envelope::{Place, TenantKeys};
use palisade_store::{Db, StoreError};

use super::*;

fn kek(lines: &[(u32, u8)]) -> Arc<dyn Kek> {
    let text: Vec<String> = lines.iter().map(|(v, b)| format!("v{v}:{}", B64.encode([*b; 32]))).collect();
    Arc::new(LocalKek::parse(&text.join("\n")).unwrap())
}

async fn db_at(path: &Path) -> Db {
    let db = Db::connect(&format!("sqlite://{}", path.display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    db
}

async fn tenant(db: &Db) -> TenantScope {
    let id = TenantId::new();
    palisade_store::tenants::insert(db.reader(), id, "t", 0).await.unwrap();
    TenantScope::for_system(id)
}

async fn freeze(db: &Db, scope: &TenantScope) {
    let mut tx = db.begin().await.unwrap();
    assert!(palisade_store::tenants::set_status(&mut tx, scope, "frozen").await.unwrap());
    tx.commit().await.unwrap();
}

fn place(row: &str) -> Place<'_> {
    Place { table: "messages", column: "body", row }
}

/// Opens `stored` with the keys `ring` has for `scope` (none: `None`).
async fn read(ring: &Keyring, scope: &TenantScope, row: &str, stored: &str) -> Option<String> {
    ring.of(scope).await.ok()?.open_text(place(row), stored).ok()
}

#[tokio::test]
async fn a_tenant_gets_one_key_that_every_instance_shares() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_at(&dir.path().join("a.db")).await;
    let scope = tenant(&db).await;
    let (a, b) =
        (Keyring::new(kek(&[(1, 1)]), db.clone(), DEFAULT_TTL), Keyring::new(kek(&[(1, 1)]), db.clone(), DEFAULT_TTL));
    let (ka, kb) = tokio::join!(a.of(&scope), b.of(&scope));
    let (ka, kb) = (ka.unwrap(), kb.unwrap());
    let sealed = ka.seal_text(place("m1"), "hello");
    assert_eq!(kb.open_text(place("m1"), &sealed).unwrap(), "hello");
    assert_eq!(palisade_store::tenant_keys::list(db.reader(), &scope).await.unwrap().len(), 1);
    // Another tenant's keys are its own.
    let other = tenant(&db).await;
    assert!(a.of(&other).await.unwrap().open_text(place("m1"), &sealed).is_err());
    // A wrong KEK does not unwrap it.
    let wrong = Keyring::new(kek(&[(1, 9)]), db.clone(), DEFAULT_TTL);
    assert!(matches!(wrong.of(&scope).await, Err(StoreError::Corrupt(_))));
}

#[tokio::test]
async fn rotating_rewraps_every_key_and_the_old_kek_can_then_go() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_at(&dir.path().join("a.db")).await;
    let proof = SysadminProof::verified();
    let scopes = [tenant(&db).await, tenant(&db).await];
    let old = Keyring::new(kek(&[(1, 1)]), db.clone(), DEFAULT_TTL);
    let mut sealed = Vec::new();
    for s in &scopes {
        sealed.push(old.of(s).await.unwrap().seal_text(place("m"), "body"));
    }
    let both = Keyring::new(kek(&[(1, 1), (2, 2)]), db.clone(), DEFAULT_TTL);
    assert_eq!(both.retirable(&proof).await.unwrap(), Vec::<u32>::new(), "v1 still wraps keys");
    assert_eq!(both.rotate(&proof, false).await.unwrap(), rotate::Rotated { rewrapped: 2, new_data_keys: 0 });
    assert_eq!(both.rotate(&proof, false).await.unwrap().rewrapped, 0, "nothing left to do");
    assert_eq!(both.retirable(&proof).await.unwrap(), vec![1]);
    // With v1 gone, the data (untouched) still opens.
    let new = Keyring::new(kek(&[(2, 2)]), db.clone(), DEFAULT_TTL);
    for (s, stored) in scopes.iter().zip(&sealed) {
        assert_eq!(read(&new, s, "m", stored).await.as_deref(), Some("body"));
    }
    // A key under a KEK version no longer configured is named, not skipped.
    let dir2 = tempfile::tempdir().unwrap();
    let db2 = db_at(&dir2.path().join("b.db")).await;
    let s2 = tenant(&db2).await;
    Keyring::new(kek(&[(1, 1)]), db2.clone(), DEFAULT_TTL).of(&s2).await.unwrap();
    let err = Keyring::new(kek(&[(3, 3)]), db2, DEFAULT_TTL).rotate(&proof, false).await.unwrap_err();
    assert!(err.to_string().contains("KEK v1"), "{err}");
}

#[tokio::test]
async fn a_new_data_key_seals_new_values_and_old_ones_still_open() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_at(&dir.path().join("a.db")).await;
    let proof = SysadminProof::verified();
    let scope = tenant(&db).await;
    // A cache of zero: every call reads the rows (the activation delay is
    // the cache's time to live plus a slack for clocks).
    let ring = Keyring::new(kek(&[(1, 1)]), db.clone(), Duration::ZERO);
    let v1 = ring.of(&scope).await.unwrap();
    assert_eq!(ring.rotate(&proof, true).await.unwrap().new_data_keys, 1);
    let keys = ring.of(&scope).await.unwrap();
    // v2 is too new to seal with: another instance may not know it yet.
    assert_eq!((v1.newest(), keys.newest()), (1, 1));
    let sealed_by_v2 = TenantKeys::new(scope.tenant_id().to_string(), [(2, [0; 32])]);
    assert!(keys.open_text(place("m"), &sealed_by_v2.seal_text(place("m"), "x")).is_err(), "another key");
    // Once settled, it seals; the old version still opens.
    sqlx::query("UPDATE tenant_keys SET created_at = 0").execute(db.reader()).await.unwrap();
    let keys = ring.of(&scope).await.unwrap();
    assert_eq!(keys.newest(), 2);
    assert_eq!(keys.open_text(place("m"), &v1.seal_text(place("m"), "old")).unwrap(), "old");
    assert!(keys.seal_text(place("m"), "new").starts_with("pk1:2:"));
}

#[tokio::test]
async fn an_erased_tenant_keeps_no_key_and_never_gets_one_again() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_at(&dir.path().join("a.db")).await;
    let scope = tenant(&db).await;
    let ring = Keyring::new(kek(&[(1, 1)]), db.clone(), DEFAULT_TTL);
    let sealed = ring.of(&scope).await.unwrap().seal_text(place("m"), "secret");
    let mut tx = db.begin().await.unwrap();
    assert_eq!(ring.destroy(&mut tx, &scope).await.unwrap(), None, "only a frozen tenant");
    tx.commit().await.unwrap();
    freeze(&db, &scope).await;
    let mut tx = db.begin().await.unwrap();
    assert_eq!(ring.destroy(&mut tx, &scope).await.unwrap(), Some(1));
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert_eq!(ring.destroy(&mut tx, &scope).await.unwrap(), None, "once");
    tx.commit().await.unwrap();
    let mut tx = db.begin().await.unwrap();
    assert!(!palisade_store::tenants::set_status(&mut tx, &scope, "active").await.unwrap(), "stays frozen");
    tx.commit().await.unwrap();
    assert!(matches!(ring.of(&scope).await, Err(StoreError::Refused("tenant_erased"))));
    let other_instance = Keyring::new(kek(&[(1, 1)]), db.clone(), Duration::ZERO);
    assert!(read(&other_instance, &scope, "m", &sealed).await.is_none());
    assert!(palisade_store::tenant_keys::list(db.reader(), &scope).await.unwrap().is_empty());
}

/// The test: a copy of the database taken before an erasure yields,
/// with the key material that remains (the live key table and the KEK after
/// the rotation that follows the erasure), none of the erased tenant's
/// bodies and all of the other tenant's.
#[tokio::test]
async fn a_backup_from_before_an_erasure_yields_nothing_of_the_erased_tenant() {
    let dir = tempfile::tempdir().unwrap();
    let live_path = dir.path().join("live.db");
    let db = db_at(&live_path).await;
    let proof = SysadminProof::verified();
    let (erased, kept) = (tenant(&db).await, tenant(&db).await);
    let ring = Keyring::new(kek(&[(1, 1)]), db.clone(), DEFAULT_TTL);
    let bodies = [(&erased, "erased body"), (&kept, "kept body")];
    let mut stored = Vec::new();
    for (s, body) in bodies {
        stored.push(ring.of(s).await.unwrap().seal_text(place("m"), body));
    }
    // The backup, taken before the erasure: its key table included.
    let backup_path = dir.path().join("backup.db");
    sqlx::query(&format!("VACUUM INTO '{}'", backup_path.display())).execute(db.reader()).await.unwrap();
    // Erase, then rotate to a new KEK version and retire the old one.
    freeze(&db, &erased).await;
    let mut tx = db.begin().await.unwrap();
    ring.destroy(&mut tx, &erased).await.unwrap();
    tx.commit().await.unwrap();
    let rotating = Keyring::new(kek(&[(1, 1), (2, 2)]), db.clone(), DEFAULT_TTL);
    rotating.rotate(&proof, false).await.unwrap();
    assert_eq!(rotating.retirable(&proof).await.unwrap(), vec![1]);
    let remaining = kek(&[(2, 2)]);

    // The backup's own key table under the remaining KEK: nothing opens.
    let backup = db_at(&backup_path).await;
    let from_backup = Keyring::new(remaining.clone(), backup.clone(), DEFAULT_TTL);
    for ((s, _), sealed) in bodies.iter().zip(&stored) {
        assert!(read(&from_backup, s, "m", sealed).await.is_none());
    }
    // The live key table: the kept tenant's bodies, none of the erased one's.
    let live = Keyring::new(remaining, db.clone(), DEFAULT_TTL);
    assert_eq!(read(&live, &kept, "m", &stored[1]).await.as_deref(), Some("kept body"));
    assert!(read(&live, &erased, "m", &stored[0]).await.is_none());
    // Even the KEK of before, with the backup's table, is no help once
    // retired: it is no longer anywhere (shown here by its absence above);
    // with it, the backup would open, which is why it must be retired.
    let with_old = Keyring::new(kek(&[(1, 1)]), backup, DEFAULT_TTL);
    assert_eq!(read(&with_old, &erased, "m", &stored[0]).await.as_deref(), Some("erased body"));
}

/// A sealed column follows a new data key once it has settled: the job
/// seals its values again under it, once; the old version is then needed
/// by nothing in it.
#[tokio::test]
async fn sealed_columns_move_to_a_settled_new_data_key() {
    let dir = tempfile::tempdir().unwrap();
    let db = db_at(&dir.path().join("a.db")).await;
    let proof = SysadminProof::verified();
    let scope = tenant(&db).await;
    let ring = Keyring::new(kek(&[(1, 1)]), db.clone(), Duration::ZERO);
    let v1 = ring.of(&scope).await.unwrap();
    let new = palisade_store::recordings::NewRecording {
        id: "r1",
        call_id: "c1",
        identity_id: "i1",
        now: 0,
        duration_ms: 0,
        size: 0,
        file_key: &[7; 32],
    };
    palisade_store::recordings::insert(db.reader(), &scope, &v1, &new).await.unwrap();
    let columns = [reseal::SealedColumn {
        column: palisade_store::static_sealed::Column { table: "recordings", id: "id", column: "file_key" },
        place: palisade_store::recordings::key_place,
        legacy_aad: None,
    }];
    let legacy = palisade_seal::Sealer::new(&[9; 32]);
    assert_eq!(ring.reseal_columns(&proof, &legacy, &columns).await.unwrap(), 0, "under the newest already");
    ring.rotate(&proof, true).await.unwrap();
    assert_eq!(ring.reseal_columns(&proof, &legacy, &columns).await.unwrap(), 0, "v2 has not settled");
    sqlx::query("UPDATE tenant_keys SET created_at = 0").execute(db.reader()).await.unwrap();
    assert_eq!(ring.reseal_columns(&proof, &legacy, &columns).await.unwrap(), 1);
    assert_eq!(ring.reseal_columns(&proof, &legacy, &columns).await.unwrap(), 0, "once");
    let stored: String = sqlx::query_scalar("SELECT file_key FROM recordings").fetch_one(db.reader()).await.unwrap();
    assert!(stored.starts_with("pk1:2:"), "{stored}");
    let row = palisade_store::recordings::get(db.reader(), &scope, "r1").await.unwrap().unwrap();
    assert_eq!(row.file_key(&scope, &ring.of(&scope).await.unwrap()).unwrap(), vec![7; 32]);
}
