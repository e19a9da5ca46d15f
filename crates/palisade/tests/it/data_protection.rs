//! Data protection: message bodies and stored answers sealed under the
//! tenant's own keys, KEK rotation from the CLI, and tenant erasure by
//! crypto-shredding, including for a copy of the database from before.

use std::process::Command;

use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::{Backend, TestServer};

backend_tests!(
    bodies_and_stored_answers_are_sealed_at_rest,
    erasing_a_tenant_shreds_its_keys_only,
    bodies_from_before_encryption_are_sealed_by_the_job,
    secrets_under_the_static_key_move_to_the_tenants_keys,
    a_numbers_data_is_erased_within_its_tenant,
);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";
const BODY: &str = "the vault code is 4711 (a known body)";

/// A tenant with an identity and credits; its owner token.
async fn sender(s: &TestServer, name: &str) -> (String, String) {
    let t = s.tenant(name).await;
    s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    (t.token, t.id)
}

async fn send(s: &TestServer, token: &str, body: &str, key: Option<&str>) -> Value {
    let mut rb = s.request(Method::POST, "/v1/messages").bearer_auth(token);
    if let Some(k) = key {
        rb = rb.header("idempotency-key", k);
    }
    let r = rb.json(&json!({"from": FROM, "to": TO, "body": body})).send().await.unwrap();
    assert_eq!(r.status(), 201);
    r.json().await.unwrap()
}

/// Runs one statement as a database writer would (triggers in place).
async fn sql_on(s: &TestServer, statement: &str) -> Result<(), sqlx::Error> {
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let r = sqlx::query(statement).execute(&mut db).await.map(drop);
    db.close().await.unwrap();
    r
}

/// The CDR of `call_id`, once written.
async fn cdr_of(s: &TestServer, token: &str, call_id: &str) -> Value {
    for _ in 0..300 {
        let list = s.get("/v1/cdrs", token).await.expect(200).body;
        if let Some(c) = list["data"].as_array().unwrap().iter().find(|c| c["call_id"] == call_id) {
            return c.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no CDR for {call_id}");
}

async fn stored(s: &TestServer, sql: &str) -> Vec<String> {
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let rows: Vec<String> = sqlx::query_scalar(sql).fetch_all(&mut db).await.unwrap();
    db.close().await.unwrap();
    rows
}

/// Every file of the SQLite database (main file, WAL), as bytes.
fn sqlite_bytes(s: &TestServer) -> Vec<u8> {
    let mut all = Vec::new();
    for entry in std::fs::read_dir(&s.data_dir).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().contains(".db") {
            all.extend(std::fs::read(path).unwrap());
        }
    }
    assert!(!all.is_empty(), "no database file in {}", s.data_dir.display());
    all
}

fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle.as_bytes())
}

async fn bodies_and_stored_answers_are_sealed_at_rest(backend: Backend) {
    let sqlite = matches!(backend, Backend::Sqlite);
    let s = TestServer::start(backend).await;
    let (token, _) = sender(&s, "Acme").await;
    let m = send(&s, &token, BODY, Some("k-1")).await;
    // The API gives it back...
    let id = m["id"].as_str().unwrap();
    assert_eq!(s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body["body"], BODY);
    assert_eq!(s.get("/v1/messages", &token).await.expect(200).body["data"][0]["body"], BODY);
    // ...and a retry with the key gets the first answer, body and all.
    assert_eq!(send(&s, &token, BODY, Some("k-1")).await["id"], m["id"]);
    // The database holds neither the body nor an answer with it in clear.
    let bodies = stored(&s, "SELECT body FROM messages").await;
    let answers = stored(&s, "SELECT response FROM idempotency_keys").await;
    for v in bodies.iter().chain(&answers) {
        assert!(v.starts_with("pk1:1:") && !v.contains("4711"), "{v}");
    }
    assert_eq!((bodies.len(), answers.len()), (1, 1));
    if sqlite {
        assert!(!contains(&sqlite_bytes(&s), "vault code"), "the body is in the SQLite file");
    }
    // Another tenant cannot open it: a sealed body copied into its row
    // does not decrypt (its keys and the row's place differ).
    let (other, _) = sender(&s, "Other").await;
    let theirs = send(&s, &other, "their own", None).await;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    sqlx::query("UPDATE messages SET body = $1 WHERE id = $2")
        .bind(&bodies[0])
        .bind(theirs["id"].as_str().unwrap())
        .execute(&mut db)
        .await
        .unwrap();
    db.close().await.unwrap();
    let r = s.get(&format!("/v1/messages/{}", theirs["id"].as_str().unwrap()), &other).await;
    assert_eq!(r.status, 500, "a moved ciphertext must not open: {}", r.text);
    assert!(!r.text.contains("4711"));
    s.stop().await;
}

async fn erase(s: &TestServer, id: &str, confirm: &str) -> crate::common::Resp {
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{id}/erase"), Some(json!({ "confirm": confirm }))).await
}

async fn erasing_a_tenant_shreds_its_keys_only(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (gone, gone_id) = sender(&s, "Gone").await;
    let (kept, _) = sender(&s, "Kept").await;
    let m = send(&s, &gone, BODY, None).await;
    send(&s, &kept, "kept body", None).await;
    // Not while it is active; not without naming it again; not a stranger.
    erase(&s, &gone_id, &gone_id).await.expect(409);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{gone_id}/freeze"), None).await.expect(200);
    erase(&s, &gone_id, &uuid::Uuid::new_v4().to_string()).await.expect(400);
    let stranger = uuid::Uuid::new_v4().to_string();
    erase(&s, &stranger, &stranger).await.expect(404);
    // Erased: its keys are gone, and it stays frozen.
    let r = erase(&s, &gone_id, &gone_id).await.expect(200);
    assert_eq!((r.body["status"].as_str(), r.body["keys_destroyed"].as_u64()), (Some("erased"), Some(1)));
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{gone_id}/unfreeze"), None).await.expect(409);
    let keys =
        stored(&s, &format!("SELECT CAST(version AS TEXT) FROM tenant_keys WHERE tenant_id = '{gone_id}'")).await;
    assert!(keys.is_empty());
    // Its bodies are gone too (sealed ones would not open; older ones in
    // clear must not stay).
    let body = stored(&s, &format!("SELECT body FROM messages WHERE id = '{}'", m["id"].as_str().unwrap())).await;
    assert_eq!(body, vec![String::new()]);
    // The other tenant is untouched.
    assert_eq!(s.get("/v1/messages", &kept).await.expect(200).body["data"][0]["body"], "kept body");
    let events = s.admin(Method::GET, "/sysadmin/v1/events?action=tenant.erased", None).await.expect(200);
    assert_eq!(events.body["data"].as_array().unwrap().len(), 1, "{}", events.text);
    s.stop().await;
}

async fn execute(s: &TestServer, sql: &str, args: &[&str]) {
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let mut q = sqlx::query(sql);
    for a in args {
        q = q.bind(*a);
    }
    q.execute(&mut db).await.unwrap();
    db.close().await.unwrap();
}

async fn bodies_from_before_encryption_are_sealed_by_the_job(backend: Backend) {
    let mut s = TestServer::start(backend).await;
    let (token, _) = sender(&s, "Acme").await;
    let m = send(&s, &token, "sealed from the start", None).await;
    let id = m["id"].as_str().unwrap().to_owned();
    // As an older version wrote it: in clear.
    execute(&s, "UPDATE messages SET body = $1 WHERE id = $2", &["written in clear", &id]).await;
    assert_eq!(s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body["body"], "written in clear");
    // The job runs at start (and every `keys.reseal_interval_secs`).
    s.restart().await;
    let sql = format!("SELECT body FROM messages WHERE id = '{id}'");
    let mut body = String::new();
    for _ in 0..200 {
        body = stored(&s, &sql).await.remove(0);
        if body.starts_with("pk1:") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(body.starts_with("pk1:1:"), "{body}");
    assert_eq!(s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body["body"], "written in clear");
    s.stop().await;
}

fn run(s: &TestServer, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(args)
        .env_remove("PALISADE_MODE")
        .env_remove("PALISADE_ADMIN__MASTER_KEY")
        .env("PALISADE_SERVER__DATA_DIR", &s.data_dir)
        .env("PALISADE_DATABASE__URL", &s.db_url)
        .output()
        .unwrap()
}

fn palisade(s: &TestServer, args: &[&str]) -> String {
    let out = run(s, args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// The CLI refuses what would leave a key that some instance cannot open.
fn refused(s: &TestServer, args: &[&str], needle: &str) {
    let out = run(s, args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
    assert!(err.contains(needle), "{args:?}: {err}");
}

/// The whole erasure procedure of docs/security.md on a dev install, by the
/// CLI: a copy of the database taken before the erasure yields, with the
/// key material that remains afterwards, none of the erased tenant's bodies
/// and all of the other tenant's.
#[tokio::test]
async fn a_backup_from_before_an_erasure_keeps_only_the_other_tenants_bodies() {
    let mut s = TestServer::start(Backend::Sqlite).await;
    let (gone, gone_id) = sender(&s, "Gone").await;
    let (kept, kept_id) = sender(&s, "Kept").await;
    send(&s, &gone, "erased tenant's body", None).await;
    send(&s, &kept, "kept tenant's body", None).await;
    // The backup.
    let backup = s.data_dir.parent().unwrap().join("backup.db");
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    sqlx::query(&format!("VACUUM INTO '{}'", backup.display())).execute(&mut db).await.unwrap();
    db.close().await.unwrap();
    // Erase, then a new KEK version, every key re-wrapped, the old retired.
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{gone_id}/freeze"), None).await.expect(200);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{gone_id}/erase"), Some(json!({ "confirm": gone_id })))
        .await
        .expect(200);
    assert!(palisade(&s, &["keys", "new-kek"]).contains("added KEK v2"));
    // The running server holds v1 only: keys re-wrapped under v2 would
    // not open there.
    refused(&s, &["keys", "rotate"], "do not hold KEK v2");
    s.halt().await;
    let rotated: Value = serde_json::from_str(&palisade(&s, &["keys", "rotate"])).unwrap();
    assert_eq!(rotated["rewrapped"], 1, "{rotated}");
    assert_eq!(rotated["retirable_kek_versions"], json!([1]));
    assert!(palisade(&s, &["keys", "retire"]).contains("removed KEK versions [1]"));
    let kek = std::fs::read_to_string(s.data_dir.join("kek")).unwrap();
    assert!(kek.contains("v2:") && !kek.contains("v1:"), "{kek}");
    // A lost KEK file is not replaced by a new one over existing keys.
    let saved = s.data_dir.join("kek.saved");
    std::fs::rename(s.data_dir.join("kek"), &saved).unwrap();
    let out = run(&s, &["keys", "rotate"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("restore the file"), "{out:?}");
    assert!(!s.data_dir.join("kek").exists());
    std::fs::rename(&saved, s.data_dir.join("kek")).unwrap();
    // The server comes back with the new KEK: the kept tenant's data opens.
    s.resume().await;
    assert_eq!(s.get("/v1/messages", &kept).await.expect(200).body["data"][0]["body"], "kept tenant's body");

    // What remains: the live key table and the KEK file. With them, the
    // backup's ciphertexts open for the kept tenant and not for the other.
    let remaining = palisade_keys::LocalKek::parse(&kek).unwrap();
    let live = palisade_store::Db::connect(&s.db_url, 2).await.unwrap();
    let ring = palisade_keys::Keyring::new(std::sync::Arc::new(remaining), live, palisade_keys::DEFAULT_TTL);
    let mut copy = sqlx::AnyConnection::connect(&format!("sqlite://{}", backup.display())).await.unwrap();
    let rows: Vec<(String, String, String)> =
        sqlx::query_as("SELECT id, tenant_id, body FROM messages").fetch_all(&mut copy).await.unwrap();
    assert_eq!(rows.len(), 2);
    let mut opened = Vec::new();
    for (id, tenant, body) in &rows {
        let scope = palisade_core::TenantScope::for_system(tenant.parse().unwrap());
        let place = palisade_seal::envelope::Place { table: "messages", column: "body", row: id };
        if let Ok(keys) = ring.of(&scope).await {
            if let Ok(text) = keys.open_text(place, body) {
                opened.push((tenant.clone(), text));
            }
        }
    }
    assert_eq!(opened, vec![(kept_id.clone(), "kept tenant's body".to_owned())]);
    // Nor does the backup's own key table help: it is wrapped under v1.
    let from_copy = palisade_store::Db::connect(&format!("sqlite://{}", backup.display()), 2).await.unwrap();
    let old_table = palisade_keys::Keyring::new(
        std::sync::Arc::new(palisade_keys::LocalKek::parse(&kek).unwrap()),
        from_copy,
        palisade_keys::DEFAULT_TTL,
    );
    let gone_scope = palisade_core::TenantScope::for_system(gone_id.parse().unwrap());
    assert!(old_table.of(&gone_scope).await.is_err());
    copy.close().await.unwrap();
    s.stop().await;
}

/// Tenants' secrets sealed by the platform's static key (as versions before
/// tenant keys wrote them) keep working, and the job moves every one under
/// the tenant's keys: afterwards nothing the static key opens is left.
async fn secrets_under_the_static_key_move_to_the_tenants_keys(backend: Backend) {
    use base64::Engine;
    use palisade_seal::envelope::Place;
    let s =
        TestServer::start_with(backend, |c| c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()])
            .await;
    let t = s.tenant("Acme").await;
    let (app, _, token) = crate::mfa::enrol(&s, &t.token).await;
    let identity = s.post("/v1/identities", &token, json!({"number": FROM})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let sip = s.post(&format!("/v1/identities/{identity}/sip-credentials"), &token, json!({})).await.expect(201);
    let sip_username = sip.body["username"].as_str().unwrap().to_owned();
    let hook = s
        .post("/v1/webhooks", &token, json!({"url": "http://127.0.0.1:9/hook", "events": ["message.sent"]}))
        .await
        .expect(201);
    let hook_id = hook.body["id"].as_str().unwrap().to_owned();
    let sip_id =
        stored(&s, &format!("SELECT id FROM sip_credentials WHERE username = '{sip_username}'")).await[0].clone();
    // (table, id column, id, column, place, AAD the static key used)
    let user = t.owner_id.clone();
    let columns: Vec<(&str, &str, String, &str, Place<'static>, String)> = vec![
        (
            "user_totp",
            "user_id",
            user.clone(),
            "secret_sealed",
            Place { table: "user_totp", column: "secret", row: "" },
            format!("user_totp\0{}\0{user}", t.id),
        ),
        (
            "webhook_endpoints",
            "id",
            hook_id.clone(),
            "secret_sealed",
            Place { table: "webhook_endpoints", column: "secrets", row: "" },
            format!("webhook-endpoint/{}/{hook_id}", t.id),
        ),
        (
            "sip_credentials",
            "id",
            sip_id.clone(),
            "ha1_md5_sealed",
            Place { table: "sip_credentials", column: "ha1_md5", row: "" },
            format!("sip_credentials/{}/{sip_id}/MD5", t.id),
        ),
        (
            "sip_credentials",
            "id",
            sip_id.clone(),
            "ha1_sha256_sealed",
            Place { table: "sip_credentials", column: "ha1_sha256", row: "" },
            format!("sip_credentials/{}/{sip_id}/SHA-256", t.id),
        ),
    ];
    let scope = palisade_core::TenantScope::for_system(t.id.parse().unwrap());
    let keys = s.state().keys.of(&scope).await.unwrap();
    let sealer = &s.state().sealer;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut plains = Vec::new();
    for (table, id_col, id, column, place, legacy_aad) in &columns {
        let now = stored(&s, &format!("SELECT {column} FROM {table} WHERE {id_col} = '{id}'")).await[0].clone();
        assert!(now.starts_with("pk1:"), "{table}.{column} is sealed under the tenant's keys: {now}");
        let plain = keys.open(Place { row: id, ..*place }, &now).unwrap();
        // As an older version stored it.
        let legacy = b64.encode(sealer.seal(&plain, legacy_aad.as_bytes()));
        execute(&s, &format!("UPDATE {table} SET {column} = $1 WHERE {id_col} = $2"), &[&legacy, id]).await;
        plains.push(plain);
    }
    let sign_in = || async {
        let r = s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": t.password})));
        let mfa_token = r.await.expect(403).body["mfa_token"].as_str().unwrap().to_owned();
        s.clock.advance_ms(30_000);
        let body = json!({"mfa_token": mfa_token, "code": app.code(&s)});
        s.call(Method::POST, "/v1/auth/mfa", None, Some(body)).await.status
    };
    assert_eq!(sign_in().await, 200, "a TOTP secret under the static key still works");
    assert_eq!(palisade::reseal_columns(s.state()).await.unwrap(), 4);
    assert_eq!(palisade::reseal_columns(s.state()).await.unwrap(), 0, "nothing left");
    for ((table, id_col, id, column, place, legacy_aad), plain) in columns.iter().zip(&plains) {
        let now = stored(&s, &format!("SELECT {column} FROM {table} WHERE {id_col} = '{id}'")).await[0].clone();
        assert!(now.starts_with("pk1:"), "{table}.{column} moved: {now}");
        assert_eq!(&keys.open(Place { row: id, ..*place }, &now).unwrap(), plain, "{table}.{column}");
        let blob = b64.decode(now.rsplit(':').next().unwrap()).unwrap();
        assert!(sealer.open(&blob, legacy_aad.as_bytes()).is_err(), "the static key opens nothing");
    }
    assert_eq!(sign_in().await, 200, "and works under the tenant's keys");
    s.stop().await;
}

/// Someone the tenant wrote to and called asks to be forgotten: their
/// message bodies and numbers go from messages and calls, the calls'
/// recordings go, and CDRs keep everything but the number; other numbers
/// and other tenants keep theirs.
async fn a_numbers_data_is_erased_within_its_tenant(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 1;
    })
    .await;
    let (token, tenant_id) = sender(&s, "Acme").await;
    let (other, _) = sender(&s, "Other").await;
    let forget = TO;
    // Events for a receiver, kept for the delivery log: an inbound message's
    // holds the sender's number (two from the number, one from a longer one).
    for (i, from) in [forget, forget, "+346990001119"].into_iter().enumerate() {
        let payload = format!(r#"{{"type":"message.received","data":{{"from":"{from}","to":"{FROM}"}}}}"#);
        let insert = format!(
            "INSERT INTO webhook_events (id, tenant_id, event_type, payload, created_at) \
             VALUES ('{}', '{tenant_id}', 'message.received', '{payload}', {i})",
            uuid::Uuid::now_v7()
        );
        sql_on(&s, &insert).await.unwrap();
    }
    let events_with = |number: &str| {
        format!("SELECT id FROM webhook_events WHERE tenant_id = '{tenant_id}' AND payload LIKE '%\"{number}\"%'")
    };
    let keep = "+34699000222";
    let m1 = send(&s, &token, "first private note", None).await;
    send(&s, &token, "second private note", None).await;
    let kept = s.post("/v1/messages", &token, json!({"from": FROM, "to": keep, "body": "stays"})).await.expect(201);
    send(&s, &other, "another tenant's", None).await;
    let call = s.post("/v1/calls", &token, json!({"from": FROM, "to": forget, "record": true})).await.expect(201);
    let call_id = call.body["id"].as_str().unwrap().to_owned();
    let mut recording = Value::Null;
    for _ in 0..300 {
        recording =
            s.get(&format!("/v1/recordings?call_id={call_id}"), &token).await.expect(200).body["data"][0].clone();
        if !recording.is_null() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(!recording.is_null(), "the call was recorded");
    let cdr_before = cdr_of(&s, &token, &call_id).await;
    assert_eq!(cdr_before["to"], forget, "{cdr_before}");

    // Not one of the tenant's own numbers; not a malformed one; not without tenant:manage.
    let erase = |cred: String, number: &str| {
        let body = json!({"number": number});
        let s = &s;
        async move { s.post("/v1/erasures", &cred, body).await }
    };
    erase(token.clone(), FROM).await.expect(409);
    erase(token.clone(), "0612345678").await.expect(400);
    let (_, reader) = s.member(&token, "reader@example.com", "read_only").await;
    erase(reader.clone(), forget).await.expect(403);

    let r = erase(token.clone(), forget).await.expect(200).body;
    assert_eq!(
        r,
        json!({"number": "…0111", "messages": 2, "calls": 1, "cdrs": 1, "webhook_events": 2, "recordings": 1})
    );
    assert!(stored(&s, &events_with(forget)).await.is_empty());
    assert_eq!(stored(&s, &events_with("…0111")).await.len(), 2);
    assert_eq!(stored(&s, &events_with("+346990001119")).await.len(), 1, "a longer number is not cut");
    let m = s.get(&format!("/v1/messages/{}", m1["id"].as_str().unwrap()), &token).await.expect(200).body;
    assert_eq!((m["body"].as_str(), m["to"].as_str()), (Some(""), Some("…0111")));
    let c = s.get(&format!("/v1/calls/{call_id}"), &token).await.expect(200).body;
    assert_eq!(c["to"], "…0111");
    // The CDR: the number masked, everything else as written.
    let cdr = cdr_of(&s, &token, &call_id).await;
    let mut expected = cdr_before.clone();
    expected["to"] = json!("…0111");
    assert_eq!(cdr, expected);
    // Still immutable otherwise: no other change, and no number but the mask.
    let cdr_id = cdr["id"].as_str().unwrap();
    for change in ["cost = cost + 1", "to_number = '+34699000999'", "to_number = '…9999'"] {
        let refused = sql_on(&s, &format!("UPDATE cdrs SET {change} WHERE id = '{cdr_id}'")).await;
        assert!(refused.is_err(), "{change} was allowed");
    }
    s.get(&format!("/v1/recordings/{}", recording["id"].as_str().unwrap()), &token).await.expect(404);
    let k = s.get(&format!("/v1/messages/{}", kept.body["id"].as_str().unwrap()), &token).await.expect(200).body;
    assert_eq!((k["body"].as_str(), k["to"].as_str()), (Some("stays"), Some(keep)));
    let theirs = s.get("/v1/messages", &other).await.expect(200).body;
    assert_eq!(theirs["data"][0]["to"], forget, "another tenant's records are its own");
    let sql = format!("SELECT id FROM messages WHERE tenant_id = '{tenant_id}' AND to_number = '{forget}'");
    assert!(stored(&s, &sql).await.is_empty());
    // Done once: repeating finds nothing more.
    let again = erase(token.clone(), forget).await.expect(200).body;
    assert_eq!(
        again,
        json!({"number": "…0111", "messages": 0, "calls": 0, "cdrs": 0, "webhook_events": 0, "recordings": 0})
    );
    let events = s.events(&token, "action=number.erased").await;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0]["details"]["number"], "…0111");
    assert!(!events.iter().any(|e| e.to_string().contains(forget)), "the audit log holds no full number");
    s.stop().await;
}
