//! The tamper-evident audit log: an attacker with write access to the
//! database (triggers dropped) edits, deletes, reorders, inserts or
//! truncates, and `palisade audit verify` exits 1 naming what; inclusion
//! proofs check out with an implementation written here, independent of
//! the server's.

use std::process::Command;

use base64::Engine as _;
use palisade_core::Clock;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use sqlx::Connection;

use crate::common::{Backend, TestServer};

mod cluster;

backend_tests!(
    intact_log_verifies,
    pending_events_are_not_called_intact,
    edited_record_is_detected,
    deleted_record_is_detected,
    reordered_records_are_detected,
    truncated_tail_is_detected,
    record_inserted_behind_the_log_is_detected,
    forged_checkpoint_is_detected,
    leaf_appended_without_checkpoint_is_detected,
    database_refuses_update_and_delete,
    inclusion_proof_checks_out_independently,
    retention_removes_old_ranges_and_still_verifies,
    tenant_verify_notices_tampering,
    separator_characters_cannot_hide_edits,
    retention_never_blesses_tampering,
    missing_or_garbled_checkpoint_file_is_reported,
    integrator_refuses_a_rewritten_head,
    tenant_sequence_reveals_nothing_of_others,
    forged_tenant_checkpoint_is_detected,
    a_tenants_shorter_audit_period_removes_its_records_only,
);

/// A server with some history, stopped, so the CLI owns the data.
async fn with_history(b: Backend) -> TestServer {
    let mut srv = TestServer::start(b).await;
    let t = srv.tenant("Audited").await;
    for i in 0..6 {
        srv.api_key(&t.token, json!({"name": format!("k{i}"), "role": "read_only"})).await;
    }
    srv.get("/v1/me", &t.token).await.expect(200);
    // A record holding the verifier's own separator characters (no request
    // path stores such bytes, but the log must not depend on that).
    let state = srv.state().clone();
    let odd = palisade_audit::Context { user_agent: Some("odd\u{1f}agent\u{1e}\u{1d}".into()), ..Default::default() };
    let event = palisade_audit::Event::new("test.odd", None, palisade_core::principal::Actor::system());
    palisade_audit::record(&state.db, &event, &odd, 1).await.unwrap();
    srv.halt().await;
    srv
}

fn verify(srv: &TestServer) -> (i32, String) {
    verify_with(srv, &[])
}

fn verify_with(srv: &TestServer, extra: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["audit", "verify"])
        .args(extra)
        .env("PALISADE_SERVER__DATA_DIR", &srv.data_dir)
        .env("PALISADE_DATABASE__URL", &srv.db_url)
        .env_remove("PALISADE_MODE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

/// Runs SQL as an attacker would: with the append-only triggers out of the way.
async fn tamper(srv: &TestServer, statements: &[&str]) {
    sqlx::any::install_default_drivers();
    let mut c = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    let disarm: Vec<String> = if srv.db_url.starts_with("sqlite") {
        ["audit_events", "audit_leaves", "audit_nodes", "audit_checkpoints"]
            .iter()
            .flat_map(|t| {
                [format!("DROP TRIGGER IF EXISTS {t}_no_update"), format!("DROP TRIGGER IF EXISTS {t}_no_delete")]
            })
            .chain(std::iter::once("DROP TRIGGER IF EXISTS audit_events_enqueue".to_owned()))
            .collect()
    } else {
        vec!["SET session_replication_role = replica".to_owned()]
    };
    for s in disarm.iter().map(String::as_str).chain(statements.iter().copied()) {
        sqlx::query(s).execute(&mut c).await.unwrap_or_else(|e| panic!("{s}: {e}"));
    }
    c.close().await.unwrap();
}

async fn scalar(srv: &TestServer, sql: &str) -> i64 {
    let mut c = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    let v: i64 = sqlx::query_scalar(sql).fetch_one(&mut c).await.unwrap();
    c.close().await.unwrap();
    v
}

#[track_caller]
fn assert_tampered(result: (i32, String), needle: &str) {
    let (code, text) = result;
    assert_eq!(code, 1, "verify must exit 1: {text}");
    assert!(text.contains("TAMPERED") && text.contains(needle), "expected `{needle}` in: {text}");
}

async fn intact_log_verifies(b: Backend) {
    let srv = with_history(b).await;
    let (code, text) = verify(&srv);
    assert_eq!(code, 0, "{text}");
    // An auditor with only the public key gets the same answer; another key does not.
    let pem = std::fs::read_to_string(srv.data_dir.join("audit-ed25519.pem")).unwrap();
    let public = palisade_audit::checkpoint::Signer::from_pem(&pem, "palisade").unwrap().verifier().public_key_b64();
    let with_key = |key: &str| verify_with(&srv, &["--public-key", key]).0;
    assert_eq!(with_key(&public), 0);
    let other = base64::engine::general_purpose::STANDARD
        .encode(ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key().as_bytes());
    assert_eq!(with_key(&other), 1);
    assert!(text.contains("intact"), "{text}");
    let n = scalar(&srv, "SELECT COUNT(*) FROM audit_events").await;
    assert!(text.contains(&format!("{n} records")), "{text}");
    // The checkpoint file holds one line per batch, 0600.
    use std::os::unix::fs::PermissionsExt;
    let file = srv.data_dir.join("audit-checkpoints.jsonl");
    assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    assert!(!std::fs::read_to_string(&file).unwrap().is_empty());
    srv.stop().await;
}

/// After a crash, events written but not integrated are in no tree and no
/// checkpoint: verify says how many, rather than vouching for them.
async fn pending_events_are_not_called_intact(b: Backend) {
    let srv = with_history(b).await;
    let (code, text) = verify(&srv);
    assert_eq!(code, 0, "{text}");
    assert!(!text.contains("pending"), "{text}");
    // What a crash leaves behind: written, never integrated.
    let db = palisade_store::Db::connect(&srv.db_url, 1).await.unwrap();
    for _ in 0..2 {
        let event = palisade_audit::Event::new("test.unintegrated", None, palisade_core::principal::Actor::system());
        palisade_audit::record(&db, &event, &palisade_audit::Context::default(), 1).await.unwrap();
    }
    db.close().await;
    let (code, text) = verify(&srv);
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("pending: 2 events written but not yet integrated"), "{text}");
    srv.stop().await;
}

async fn edited_record_is_detected(b: Backend) {
    let srv = with_history(b).await;
    let seq = scalar(&srv, "SELECT MIN(seq) + 3 FROM audit_events").await;
    tamper(&srv, &[&format!("UPDATE audit_events SET action = 'api_key.revoked' WHERE seq = {seq}")]).await;
    assert_tampered(verify(&srv), &format!("record seq {seq} "));
    srv.stop().await;
}

async fn deleted_record_is_detected(b: Backend) {
    let srv = with_history(b).await;
    let seq = scalar(&srv, "SELECT MIN(seq) + 2 FROM audit_events").await;
    tamper(&srv, &[&format!("DELETE FROM audit_events WHERE seq = {seq}")]).await;
    assert_tampered(verify(&srv), &format!("record seq {seq} (leaf 2) was deleted"));
    srv.stop().await;
}

async fn reordered_records_are_detected(b: Backend) {
    // Swapping which key two records say was created first.
    let srv = with_history(b.clone()).await;
    let a = scalar(&srv, "SELECT MIN(seq) + 2 FROM audit_events").await;
    let c = a + 1;
    let mut conn = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    let resource = |seq: i64| format!("SELECT resource_id FROM audit_events WHERE seq = {seq}");
    let ra: String = sqlx::query_scalar(&resource(a)).fetch_one(&mut conn).await.unwrap();
    let rc: String = sqlx::query_scalar(&resource(c)).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    tamper(
        &srv,
        &[
            &format!("UPDATE audit_events SET resource_id = '{rc}' WHERE seq = {a}"),
            &format!("UPDATE audit_events SET resource_id = '{ra}' WHERE seq = {c}"),
        ],
    )
    .await;
    assert_tampered(verify(&srv), &format!("record seq {a} "));
    srv.stop().await;

    // Swapping two leaves, hashes and all: only the signed roots notice.
    let srv = with_history(b).await;
    tamper(
        &srv,
        &[
            "UPDATE audit_leaves SET leaf_index = -1 WHERE leaf_index = 1",
            "UPDATE audit_leaves SET leaf_index = 1 WHERE leaf_index = 2",
            "UPDATE audit_leaves SET leaf_index = 2 WHERE leaf_index = -1",
        ],
    )
    .await;
    assert_tampered(verify(&srv), "does not match its signed checkpoint");
    srv.stop().await;
}

async fn truncated_tail_is_detected(b: Backend) {
    let srv = with_history(b).await;
    let n = scalar(&srv, "SELECT COUNT(*) FROM audit_leaves").await;
    let keep = n - 3;
    // A thorough attacker removes the tail and every trace of it in the
    // database, checkpoints included; the checkpoint file remembers.
    tamper(
        &srv,
        &[
            &format!(
                "DELETE FROM audit_events WHERE seq IN (SELECT event_seq FROM audit_leaves WHERE leaf_index >= {keep})"
            ),
            &format!("DELETE FROM audit_leaves WHERE leaf_index >= {keep}"),
            &format!("DELETE FROM audit_checkpoints WHERE tree_size > {keep}"),
        ],
    )
    .await;
    assert_tampered(verify(&srv), &format!("truncated: a signed checkpoint covers {n} records but only {keep} remain"));
    srv.stop().await;
}

async fn record_inserted_behind_the_log_is_detected(b: Backend) {
    let srv = with_history(b).await;
    tamper(
        &srv,
        &["INSERT INTO audit_events (id, ts, actor_type, action, details) \
           VALUES ('00000000-0000-4000-8000-000000000001', 0, 'system', 'auth.login', '{}')"],
    )
    .await;
    assert_tampered(verify(&srv), "is not part of the log");
    srv.stop().await;
}

async fn leaf_appended_without_checkpoint_is_detected(b: Backend) {
    let srv = with_history(b).await;
    let n = scalar(&srv, "SELECT COUNT(*) FROM audit_leaves").await;
    let seq = scalar(&srv, "SELECT MAX(seq) FROM audit_events").await + 100;
    // A forged record with a correctly computed leaf, but no signature.
    let row = palisade_store::audit::AuditRow {
        seq,
        id: "00000000-0000-4000-8000-00000000f00d".into(),
        ts: 1,
        tenant_id: None,
        actor_type: "system".into(),
        actor_id: None,
        action: "auth.login".into(),
        resource_type: None,
        resource_id: None,
        source_ip: None,
        user_agent: None,
        request_id: None,
        details: "{}".into(),
    };
    let hash: String = palisade_audit::log::leaf_hash_of(&row).iter().map(|b| format!("{b:02x}")).collect();
    let overriding = if srv.db_url.starts_with("sqlite") { "" } else { "OVERRIDING SYSTEM VALUE" };
    tamper(
        &srv,
        &[
            &format!(
                "INSERT INTO audit_events (seq, id, ts, actor_type, action, details) {overriding} \
                 VALUES ({seq}, '{}', 1, 'system', 'auth.login', '{{}}')",
                row.id
            ),
            &format!("INSERT INTO audit_leaves (leaf_index, event_seq, leaf_hash) VALUES ({n}, {seq}, '{hash}')"),
        ],
    )
    .await;
    assert_tampered(verify(&srv), "not covered by any signed checkpoint");
    srv.stop().await;
}

async fn forged_checkpoint_is_detected(b: Backend) {
    let srv = with_history(b).await;
    let file = srv.data_dir.join("audit-checkpoints.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    let mut last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
    last["body"] = json!(last["body"].as_str().unwrap().replace("palisade\n", "palisade\n9"));
    std::fs::write(&file, format!("{text}{last}\n")).unwrap();
    assert_tampered(verify(&srv), "invalid signature");
    srv.stop().await;
}

async fn database_refuses_update_and_delete(b: Backend) {
    let srv = with_history(b).await;
    let mut c = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    for sql in [
        "UPDATE audit_events SET action = 'x'",
        "DELETE FROM audit_events",
        "UPDATE audit_leaves SET leaf_hash = 'x'",
        "DELETE FROM audit_checkpoints",
        "DELETE FROM audit_nodes",
    ] {
        let err = sqlx::query(sql).execute(&mut c).await.expect_err(sql);
        assert!(err.to_string().contains("append-only"), "{sql}: {err}");
    }
    c.close().await.unwrap();
    assert_eq!(verify(&srv).0, 0);
    srv.stop().await;
}

// ---- An independent verifier, written from RFC 9162 for this test ----

fn sha256(parts: &[&[u8]]) -> [u8; 32] {
    let mut h = Sha256::new();
    for p in parts {
        h.update(p);
    }
    h.finalize().into()
}

/// RFC 9162 §2.1.3.2, step by step.
fn root_from_path(leaf_index: u64, tree_size: u64, leaf: [u8; 32], path: &[[u8; 32]]) -> Option<[u8; 32]> {
    if leaf_index >= tree_size {
        return None;
    }
    let mut fn_ = leaf_index;
    let mut sn = tree_size - 1;
    let mut r = leaf;
    for p in path {
        if sn == 0 {
            return None;
        }
        if fn_ % 2 == 1 || fn_ == sn {
            r = sha256(&[&[1], p, &r]);
            while fn_.is_multiple_of(2) && fn_ != 0 {
                fn_ /= 2;
                sn /= 2;
            }
        } else {
            r = sha256(&[&[1], &r, p]);
        }
        fn_ /= 2;
        sn /= 2;
    }
    (sn == 0).then_some(r)
}

async fn inclusion_proof_checks_out_independently(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Proven").await;
    for i in 0..9 {
        srv.api_key(&t.token, json!({"name": format!("p{i}"), "role": "read_only"})).await;
    }
    let events = srv.events(&t.token, "limit=500").await;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut pinned_key = None;
    for ev in [&events[0], &events[events.len() / 2], events.last().unwrap()] {
        let id = ev["id"].as_str().unwrap();
        let p = srv.get(&format!("/v1/events/{id}/proof"), &t.token).await.expect(200).body;
        // The leaf is the record the tenant reads, byte for byte hashed.
        let data = p["leaf_data"].as_str().unwrap();
        let fields: Value = serde_json::from_str(data).unwrap();
        // A leaf of the tenant's own tree: its number is the tenant's `seq`.
        assert_eq!(fields[0], "palisade-audit-tenant-leaf/v1");
        assert_eq!(fields[1], ev["seq"]);
        assert_eq!(p["leaf_index"].as_u64().unwrap() + 1, ev["seq"].as_u64().unwrap());
        assert_eq!(fields[2], ev["id"]);
        assert_eq!(fields[7], ev["action"]);
        let leaf = sha256(&[&[0], data.as_bytes()]);
        assert_eq!(hex_encode(&leaf), p["leaf_hash"].as_str().unwrap());
        let path: Vec<[u8; 32]> =
            p["audit_path"].as_array().unwrap().iter().map(|h| hex_decode(h.as_str().unwrap())).collect();
        let index = p["leaf_index"].as_u64().unwrap();
        let size = p["tree_size"].as_u64().unwrap();
        let root = root_from_path(index, size, leaf, &path).expect("path shape");

        // The checkpoint: Ed25519 over the body, body states size and root.
        let key_bytes: [u8; 32] = b64.decode(p["public_key"].as_str().unwrap()).unwrap().try_into().unwrap();
        let pinned = *pinned_key.get_or_insert(key_bytes);
        assert_eq!(pinned, key_bytes, "the signing key does not change between proofs");
        let key = ed25519_dalek::VerifyingKey::from_bytes(&pinned).unwrap();
        let body = p["checkpoint"]["body"].as_str().unwrap();
        let sig: [u8; 64] = b64.decode(p["checkpoint"]["signature"].as_str().unwrap()).unwrap().try_into().unwrap();
        key.verify_strict(body.as_bytes(), &ed25519_dalek::Signature::from_bytes(&sig)).expect("checkpoint signature");
        let lines: Vec<&str> = body.lines().collect();
        assert_eq!(lines[0], "palisade-audit/v1");
        assert_eq!(lines[1], format!("palisade/tenants/{}", t.id), "the tenant's tree, not the log");
        assert_eq!(lines[2].parse::<u64>().unwrap(), size);
        assert_eq!(b64.decode(lines[3]).unwrap(), root.to_vec(), "the path leads to the signed root");

        // A record changed by one character no longer proves.
        let forged = data.replacen(id, &uuid::Uuid::new_v4().to_string(), 1);
        let forged_leaf = sha256(&[&[0], forged.as_bytes()]);
        assert_ne!(root_from_path(index, size, forged_leaf, &path), Some(root));
    }
    // Tenant-visible verification.
    let v = srv.get("/v1/events/verify", &t.token).await.expect(200).body;
    assert_eq!(v["status"], "intact", "{v}");
    assert!(v["checked_events"].as_u64().unwrap() + v["pending_events"].as_u64().unwrap() >= events.len() as u64);
    srv.call(Method::GET, &format!("/v1/events/{}/proof", uuid::Uuid::new_v4()), Some(&t.token), None)
        .await
        .expect(404);
    srv.stop().await;
}

fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn hex_decode(s: &str) -> [u8; 32] {
    let v: Vec<u8> = (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect();
    v.try_into().unwrap()
}

async fn retention_removes_old_ranges_and_still_verifies(b: Backend) {
    let mut srv = TestServer::start_with(b, |c| c.audit.retention_days = 30).await;
    let t = srv.tenant("Aging").await;
    for i in 0..4 {
        srv.api_key(&t.token, json!({"name": format!("old{i}"), "role": "read_only"})).await;
    }
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let old_ids: Vec<String> =
        srv.events(&t.token, "limit=500").await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    // Nothing is old enough yet.
    assert_eq!(palisade::apply_audit_retention(&state).await.unwrap(), None);

    srv.clock.advance_ms(31 * 24 * 3600 * 1000);
    let (token, _) = srv.login(&t.email, &t.password).await;
    srv.api_key(&token, json!({"name": "new", "role": "read_only"})).await;
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let (up_to, removed) = palisade::apply_audit_retention(&state).await.unwrap().expect("old records expire");
    assert!(removed as usize >= old_ids.len(), "removed {removed} of {}", old_ids.len());
    assert!(up_to >= removed);
    let now: Vec<Value> = srv.events(&token, "limit=500").await;
    assert!(now.iter().all(|e| !old_ids.contains(&e["id"].as_str().unwrap().to_owned())), "expired records are gone");
    assert!(now.iter().any(|e| e["action"] == "api_key.created"), "newer records stay");

    // The database still refuses to delete what no statement covers.
    let mut c = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    let newest: i64 = sqlx::query_scalar("SELECT MAX(seq) FROM audit_events").fetch_one(&mut c).await.unwrap();
    let err = sqlx::query(&format!("DELETE FROM audit_events WHERE seq = {newest}"))
        .execute(&mut c)
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("append-only"), "{err}");
    c.close().await.unwrap();

    srv.halt().await;
    let (code, text) = verify(&srv);
    assert_eq!(code, 0, "a log with a signed expiry verifies: {text}");
    // An unsigned "expiry" of newer records is still tampering.
    let seq = scalar(&srv, "SELECT MAX(seq) FROM audit_events WHERE action = 'api_key.created'").await;
    tamper(&srv, &[&format!("DELETE FROM audit_events WHERE seq = {seq}")]).await;
    assert_tampered(verify(&srv), &format!("record seq {seq} "));
    srv.stop().await;
}

async fn tenant_verify_notices_tampering(b: Backend) {
    let srv = TestServer::start(b.clone()).await;
    let t = srv.tenant("Watchful").await;
    for i in 0..3 {
        srv.api_key(&t.token, json!({"name": format!("w{i}"), "role": "read_only"})).await;
    }
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let v = srv.get("/v1/events/verify", &t.token).await.expect(200).body;
    assert_eq!(v["status"], "intact", "{v}");
    let newest = scalar(&srv, "SELECT MAX(seq) FROM audit_events").await;
    tamper(&srv, &[&format!("UPDATE audit_events SET action = 'api_key.revoked' WHERE seq = {newest}")]).await;
    let v = srv.get("/v1/events/verify", &t.token).await.expect(200).body;
    assert_eq!(v["status"], "tampered", "{v}");
    srv.stop().await;

    // Cutting off the tail, tree and checkpoints included.
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Watchful").await;
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    for i in 0..3 {
        srv.api_key(&t.token, json!({"name": format!("w{i}"), "role": "read_only"})).await;
        state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    }
    let keep = scalar(&srv, "SELECT MIN(tree_size) FROM audit_checkpoints").await;
    tamper(
        &srv,
        &[
            &format!(
                "DELETE FROM audit_events WHERE seq IN (SELECT event_seq FROM audit_leaves WHERE leaf_index >= {keep})"
            ),
            &format!("DELETE FROM audit_leaves WHERE leaf_index >= {keep}"),
            &format!("DELETE FROM audit_checkpoints WHERE tree_size > {keep}"),
            &format!("UPDATE audit_head SET tree_size = {keep}"),
        ],
    )
    .await;
    let v = srv.get("/v1/events/verify", &t.token).await.expect(200).body;
    assert_eq!(v["status"], "tampered", "{v}");
    srv.stop().await;
}

fn chr(srv: &TestServer, n: u8) -> String {
    if srv.db_url.starts_with("sqlite") {
        format!("char({n})")
    } else {
        format!("chr({n})")
    }
}

async fn separator_characters_cannot_hide_edits(b: Backend) {
    let srv = with_history(b.clone()).await;
    let seq = scalar(&srv, "SELECT MIN(seq) + 3 FROM audit_events").await;
    let rs = chr(&srv, 30);
    tamper(&srv, &[&format!("UPDATE audit_events SET details = details || {rs} WHERE seq = {seq}")]).await;
    assert_tampered(verify(&srv), &format!("record seq {seq} "));
    srv.stop().await;

    // Shifting fields so the first piece still looks like the original.
    let srv = with_history(b).await;
    let seq = scalar(&srv, "SELECT MIN(seq) + 3 FROM audit_events").await;
    let (fs, rs) = (chr(&srv, 31), chr(&srv, 30));
    tamper(
        &srv,
        &[&format!(
            "UPDATE audit_events SET request_id = request_id || {fs} || details || {rs}, details = '{{\"evil\":1}}' \
             WHERE seq = {seq}"
        )],
    )
    .await;
    assert_tampered(verify(&srv), &format!("record seq {seq} "));
    srv.stop().await;
}

async fn retention_never_blesses_tampering(b: Backend) {
    let srv = TestServer::start_with(b, |c| c.audit.retention_days = 30).await;
    let t = srv.tenant("Blessed").await;
    for i in 0..4 {
        srv.api_key(&t.token, json!({"name": format!("b{i}"), "role": "read_only"})).await;
    }
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    // Records deleted, and a newer one back-dated so it would fall in range.
    let first = scalar(&srv, "SELECT MIN(seq) FROM audit_events").await;
    let newest = scalar(&srv, "SELECT MAX(seq) FROM audit_events").await;
    tamper(
        &srv,
        &[
            &format!("DELETE FROM audit_events WHERE seq = {}", first + 1),
            &format!("UPDATE audit_events SET ts = 0 WHERE seq = {newest}"),
        ],
    )
    .await;
    srv.clock.advance_ms(31 * 24 * 3600 * 1000);
    let err = palisade::apply_audit_retention(&state).await.expect_err("retention must refuse");
    assert!(err.to_string().contains("tampered"), "{err}");
    assert_eq!(scalar(&srv, "SELECT COUNT(*) FROM audit_expiries").await, 0, "nothing was signed away");
    srv.stop().await;
}

async fn missing_or_garbled_checkpoint_file_is_reported(b: Backend) {
    let srv = with_history(b.clone()).await;
    let file = srv.data_dir.join("audit-checkpoints.jsonl");
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{}\n{{\"bodyy\":\"x\"}}\n", text.trim_end())).unwrap();
    assert_tampered(verify(&srv), "invalid signature or format");
    std::fs::remove_file(&file).unwrap();
    assert_tampered(verify(&srv), "checkpoint file");
    srv.stop().await;

    // A checkpoint of another log signed with the same key is not this log's.
    let srv = with_history(b).await;
    let file = srv.data_dir.join("audit-checkpoints.jsonl");
    let pem = std::fs::read_to_string(srv.data_dir.join("audit-ed25519.pem")).unwrap();
    let other = palisade_audit::checkpoint::Signer::from_pem(&pem, "another-log").unwrap();
    let foreign = other.sign(1, &[0u8; 32], 1);
    let text = std::fs::read_to_string(&file).unwrap();
    std::fs::write(&file, format!("{text}{}\n", serde_json::to_string(&foreign).unwrap())).unwrap();
    assert_tampered(verify(&srv), "invalid signature or format");
    srv.stop().await;
}

async fn integrator_refuses_a_rewritten_head(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Headstrong").await;
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let before = scalar(&srv, "SELECT COUNT(*) FROM audit_checkpoints").await;
    // Rewrite the head as if history were different, then queue more work.
    let size = scalar(&srv, "SELECT tree_size FROM audit_head").await;
    let fake: String = (0..64)
        .rev()
        .filter(|b| size & (1 << b) != 0)
        .map(|b| format!("{b}:{}", "cd".repeat(32)))
        .collect::<Vec<_>>()
        .join(",");
    // (The head table has no trigger; the queueing trigger must stay armed.)
    let mut c = sqlx::AnyConnection::connect(&srv.db_url).await.unwrap();
    sqlx::query(&format!("UPDATE audit_head SET frontier = '{fake}'")).execute(&mut c).await.unwrap();
    c.close().await.unwrap();
    srv.api_key(&t.token, json!({"name": "after", "role": "read_only"})).await;
    assert!(state.audit_log.integrate(srv.clock.now_ms()).await.is_err(), "a forged head must not be extended");
    assert_eq!(scalar(&srv, "SELECT COUNT(*) FROM audit_checkpoints").await, before, "nothing was signed");
    srv.stop().await;
}

/// SQLite keeps a BLOB as a BLOB in a TEXT column: the same bytes under
/// another storage type are still an edit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_bytes_as_a_blob_is_detected() {
    let srv = with_history(Backend::Sqlite).await;
    let seq = scalar(&srv, "SELECT MIN(seq) + 3 FROM audit_events").await;
    tamper(&srv, &[&format!("UPDATE audit_events SET details = CAST(details AS BLOB) WHERE seq = {seq}")]).await;
    assert_eq!(
        scalar(&srv, &format!("SELECT COUNT(*) FROM audit_events WHERE seq = {seq} AND typeof(details) = 'blob'"))
            .await,
        1
    );
    assert_tampered(verify(&srv), "was altered");
    srv.stop().await;
}

/// A tenant's numbers count its own events only: its `seq`s run 1, 2, 3…
/// and its tree does not grow when another tenant (or the platform) writes.
async fn tenant_sequence_reveals_nothing_of_others(b: Backend) {
    let srv = TestServer::start(b).await;
    let quiet = srv.tenant("Quiet").await;
    let busy = srv.tenant("Busy").await;
    srv.api_key(&quiet.token, json!({"name": "q", "role": "read_only"})).await;
    // (The feed sequences the reader's own pending events first.)
    let mine = srv.events(&quiet.token, "limit=500").await;
    let before = srv.get("/v1/events/verify", &quiet.token).await.expect(200).body;
    assert_eq!(before["status"], "intact", "{before}");
    let seqs: Vec<u64> = mine.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=mine.len() as u64).collect::<Vec<_>>(), "the tenant's own sequence, without gaps");
    assert_eq!(before["tree_size"].as_u64().unwrap(), mine.len() as u64);

    for i in 0..5 {
        srv.api_key(&busy.token, json!({"name": format!("b{i}"), "role": "read_only"})).await;
    }
    srv.admin(Method::GET, "/sysadmin/v1/events?limit=1", None).await.expect(200);
    assert!(srv.events(&busy.token, "limit=500").await.len() >= 5);
    let after = srv.get("/v1/events/verify", &quiet.token).await.expect(200).body;
    assert_eq!(after["tree_size"], before["tree_size"], "others' writes do not move the tenant's tree");
    assert_eq!(after["checkpoint"], before["checkpoint"]);
    // Its proofs are in its own tree, and its cursor is its own number.
    let last = mine.last().unwrap();
    let p = srv.get(&format!("/v1/events/{}/proof", last["id"].as_str().unwrap()), &quiet.token).await.expect(200);
    assert_eq!(p.body["tree_size"], before["tree_size"]);
    assert_eq!(p.body["leaf_index"].as_u64().unwrap() + 1, last["seq"].as_u64().unwrap());
    let rest = srv.events(&quiet.token, &format!("after={}", mine[0]["seq"])).await;
    assert_eq!(rest, mine[1..].to_vec());
    // The operator still reads the platform's numbers.
    let all = srv.admin(Method::GET, &format!("/sysadmin/v1/events?tenant_id={}&limit=500", quiet.id), None).await;
    let platform = all.expect(200).body["data"].as_array().unwrap().clone();
    let platform_ids: Vec<&Value> = platform.iter().map(|e| &e["id"]).collect();
    let mine_ids: Vec<&Value> = mine.iter().map(|e| &e["id"]).collect();
    assert_eq!(platform_ids[..mine_ids.len()], mine_ids[..], "the same events, in the same order");
    srv.stop().await;
}

async fn forged_tenant_checkpoint_is_detected(b: Backend) {
    let srv = with_history(b).await;
    assert_eq!(verify(&srv).0, 0);
    let size = scalar(&srv, "SELECT MAX(tree_size) FROM audit_tenant_checkpoints").await;
    let sql = format!(
        "UPDATE audit_tenant_checkpoints SET signature = 'AAAA' WHERE tree_size = {size} \
         AND tenant_id = (SELECT MIN(tenant_id) FROM audit_tenant_checkpoints WHERE tree_size = {size})"
    );
    let disarm = if srv.db_url.starts_with("sqlite") {
        "DROP TRIGGER IF EXISTS audit_tenant_checkpoints_no_update"
    } else {
        "SELECT 1"
    };
    tamper(&srv, &[disarm, &sql]).await;
    assert_tampered(verify(&srv), "has an invalid signature");
    srv.stop().await;
}

/// A tenant that keeps its trail a shorter time than the platform: its old
/// records go under a signed statement of its own, another tenant's stay,
/// and the whole log (and each tenant's tree) still verifies.
async fn a_tenants_shorter_audit_period_removes_its_records_only(b: Backend) {
    let mut srv = TestServer::start(b).await;
    let brief = srv.tenant("Brief").await;
    let lasting = srv.tenant("Lasting").await;
    // Owner keys outlive the year the test skips.
    let (_, short) = srv.api_key(&brief.token, json!({"name": "short", "role": "owner"})).await;
    let (_, long) = srv.api_key(&lasting.token, json!({"name": "long", "role": "owner"})).await;
    // At least `retention.audit_min_days` (365), at most the platform's period (2557).
    for bad in [364, 2558] {
        srv.call(Method::PUT, "/v1/tenant/retention", Some(&short), Some(json!({"audit_days": bad}))).await.expect(400);
    }
    let r = srv.call(Method::PUT, "/v1/tenant/retention", Some(&short), Some(json!({"audit_days": 365}))).await;
    let r = r.expect(200);
    assert_eq!((r.body["audit_days"].as_i64(), r.body["audit_chosen"].as_bool()), (Some(365), Some(true)));
    assert_eq!(r.body["audit_bounds"], json!({"min_days": 365, "max_days": 2557, "default_days": 2557}));
    let other = srv.get("/v1/tenant/retention", &long).await.expect(200);
    assert_eq!((other.body["audit_days"].as_i64(), other.body["audit_chosen"].as_bool()), (Some(2557), Some(false)));
    for i in 0..3 {
        srv.api_key(&short, json!({"name": format!("old{i}"), "role": "read_only"})).await;
        srv.api_key(&long, json!({"name": format!("old{i}"), "role": "read_only"})).await;
    }
    let state = srv.state().clone();
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let ids =
        |events: Vec<Value>| -> Vec<String> { events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect() };
    let old_short = ids(srv.events(&short, "limit=500").await);
    let old_long = ids(srv.events(&long, "limit=500").await);
    // Nothing is old enough yet.
    assert_eq!(palisade::apply_tenant_audit_retention(&state).await.unwrap(), 0);

    srv.clock.advance_ms(366 * 24 * 3600 * 1000);
    srv.api_key(&short, json!({"name": "new", "role": "read_only"})).await;
    srv.api_key(&long, json!({"name": "new", "role": "read_only"})).await;
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let removed = palisade::apply_tenant_audit_retention(&state).await.unwrap();
    assert_eq!(removed as usize, old_short.len());
    let now_short = ids(srv.events(&short, "limit=500").await);
    assert!(now_short.iter().all(|id| !old_short.contains(id)), "the tenant's old records are gone");
    let now_long = ids(srv.events(&long, "limit=500").await);
    assert!(old_long.iter().all(|id| now_long.contains(id)), "another tenant's old records stay");
    // Audited in the tenant's own trail, once; a second pass has nothing to do.
    let passes = srv.events(&short, "action=retention.applied").await;
    assert_eq!(passes.len(), 1, "{passes:?}");
    assert_eq!(passes[0]["details"]["audit"]["removed"], removed);
    assert_eq!(palisade::apply_tenant_audit_retention(&state).await.unwrap(), 0);
    state.audit_log.integrate(srv.clock.now_ms()).await.unwrap();
    let v = srv.get("/v1/events/verify", &short).await.expect(200);
    assert_eq!(v.body["status"], "intact", "{}", v.body);

    srv.halt().await;
    let (code, text) = verify(&srv);
    assert_eq!(code, 0, "a log with a tenant's signed expiry verifies: {text}");
    // The other tenant's records are no less protected: deleting one of
    // its old records is tampering.
    let seq = scalar(
        &srv,
        &format!("SELECT MIN(seq) FROM audit_events WHERE tenant_id = '{}' AND action = 'api_key.created'", lasting.id),
    )
    .await;
    tamper(&srv, &[&format!("DELETE FROM audit_events WHERE seq = {seq}")]).await;
    assert_tampered(verify(&srv), &format!("record seq {seq} "));
    srv.stop().await;
}
