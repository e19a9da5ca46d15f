use std::io::Read;

use palisade_core::{TenantId, TenantScope, UserId};
use palisade_keys::{Keyring, LocalKek};
use palisade_store::users::NewUser;
use palisade_store::Db;

use super::*;

async fn world() -> (tempfile::TempDir, Db, Arc<Keyring>, TenantScope, UserId) {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/e.db", dir.path().display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    let tenant = TenantId::new();
    palisade_store::tenants::insert(db.reader(), tenant, "Acme", 0).await.unwrap();
    let scope = TenantScope::for_system(tenant);
    let user = UserId::new();
    let new = NewUser {
        id: user,
        email: "ann@acme.example",
        email_skeleton: "ann@acme.example",
        password_hash: Some("$argon2id$v=19$secret-hash"),
        role: "owner",
        status: "active",
        now: 0,
    };
    palisade_store::users::insert(db.reader(), &scope, &new).await.unwrap();
    let kek = LocalKek::parse(&LocalKek::new_line(1)).unwrap();
    let keys = Arc::new(Keyring::new(Arc::new(kek), db.clone(), palisade_keys::DEFAULT_TTL));
    (dir, db, keys, scope, user)
}

/// The archive's files by name.
fn files(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        out.push((name, bytes));
    }
    out
}

#[tokio::test]
async fn a_tenant_export_holds_its_data_with_checksums_and_no_secret() {
    let (_dir, db, keys, scope, user) = world().await;
    let ring = keys.of(&scope).await.unwrap();
    let archive = archive(&db, &ring, &scope, &Subject::Tenant, "x1", 1_700_000_000_000).await.unwrap();
    let files = files(&archive);
    let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"manifest.json"));
    assert_eq!(names.last(), Some(&"SHA256SUMS"));
    for wanted in ["tenant.jsonl", "users.jsonl", "identities.jsonl", "messages.jsonl", "events.jsonl", "cdrs.jsonl"] {
        assert!(names.contains(&wanted), "{wanted} in {names:?}");
    }
    let manifest: serde_json::Value = serde_json::from_slice(&files[0].1).unwrap();
    assert_eq!(manifest["export_id"], "x1");
    // Every file's checksum is the manifest's and the SHA256SUMS line's.
    let sums = String::from_utf8(files.last().unwrap().1.clone()).unwrap();
    for (name, bytes) in &files[1..files.len() - 1] {
        let sha = hex::encode(Sha256::digest(bytes));
        let listed = manifest["files"].as_array().unwrap().iter().find(|f| f["name"] == name.as_str()).unwrap();
        assert_eq!(listed["sha256"], sha.as_str());
        assert!(sums.contains(&format!("{sha}  {name}")));
    }
    let users = String::from_utf8(files.iter().find(|(n, _)| n == "users.jsonl").unwrap().1.clone()).unwrap();
    assert!(users.contains("ann@acme.example") && users.contains(&user.to_string()));
    let all = String::from_utf8_lossy(&archive);
    assert!(!all.contains("argon2") && !all.contains("secret-hash"), "a password hash in the export");
}

#[tokio::test]
async fn a_person_export_holds_only_that_person() {
    let (_dir, db, keys, scope, user) = world().await;
    let other = UserId::new();
    let new = NewUser {
        id: other,
        email: "bob@acme.example",
        email_skeleton: "bob@acme.example",
        password_hash: None,
        role: "admin",
        status: "active",
        now: 0,
    };
    palisade_store::users::insert(db.reader(), &scope, &new).await.unwrap();
    let ring = keys.of(&scope).await.unwrap();
    let archive = archive(&db, &ring, &scope, &Subject::User(user.to_string()), "x2", 0).await.unwrap();
    let all = String::from_utf8_lossy(&archive);
    assert!(all.contains("ann@acme.example"));
    assert!(!all.contains("bob@acme.example") && !all.contains(&other.to_string()));
    let names: Vec<String> = files(&archive).into_iter().map(|(n, _)| n).collect();
    assert!(names.contains(&"user.jsonl".to_owned()) && !names.contains(&"messages.jsonl".to_owned()));
}

#[tokio::test]
async fn one_export_of_a_tenant_is_built_at_a_time_and_each_once() {
    let (_dir, db, keys, scope, user) = world().await;
    let new = |id: &'static str| palisade_store::exports::NewExport {
        id,
        subject: "tenant",
        user_id: None,
        requested_by: "x",
        now: 0,
        expires_at: i64::MAX,
    };
    assert!(palisade_store::exports::insert(db.reader(), &scope, &new("e1")).await.unwrap());
    assert!(!palisade_store::exports::insert(db.reader(), &scope, &new("e2")).await.unwrap(), "one pending");
    let exports = Exports { db: db.clone(), keys, clock: Arc::new(palisade_core::SystemClock) };
    // Two workers: one builds, the other finds it taken or done.
    let (a, b) = tokio::join!(exports.run(&scope, "e1"), exports.run(&scope, "e1"));
    a.unwrap();
    b.unwrap();
    let row = palisade_store::exports::get(db.reader(), &scope, "e1").await.unwrap().unwrap();
    assert_eq!(row.status, "ready");
    let events = palisade_store::exports::events(db.reader(), &scope, None).await.unwrap();
    assert_eq!(events.iter().filter(|e| e["action"] == "export.ready").count(), 1, "built once");
    // Done: the next may start.
    assert!(palisade_store::exports::insert(db.reader(), &scope, &new("e2")).await.unwrap());
    assert_eq!(user.to_string().len(), 36);
}
