//! Data exports (GDPR): a tenant's and a person's, as a job, then an
//! archive with a manifest and checksums and no secret; who may ask for
//! which, and that every request and download is audited.

use std::io::Read;

use reqwest::Method;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::common::{Backend, TestServer};

backend_tests!(
    a_tenant_export_holds_its_data_and_no_secret,
    people_export_their_own_data_only,
    a_stale_second_factor_gets_no_archive,
);

const FROM: &str = "+34612345678";

/// Polls the export until it is no longer pending.
async fn finished(s: &TestServer, token: &str, id: &str) -> Value {
    for _ in 0..250 {
        let r = s.get(&format!("/v1/exports/{id}"), token).await.expect(200);
        if r.body["status"] != "pending" {
            return r.body;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("export {id} never finished");
}

fn files(archive: &[u8]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for entry in tar::Archive::new(archive).entries().unwrap() {
        let mut entry = entry.unwrap();
        let name = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        entry.read_to_string(&mut text).unwrap();
        out.push((name, text));
    }
    out
}

async fn download(s: &TestServer, token: &str, url: &str) -> (u16, Vec<u8>, Option<String>) {
    let r = s.request(Method::GET, url).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    let kind = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    (status, r.bytes().await.unwrap().to_vec(), kind)
}

async fn a_tenant_export_holds_its_data_and_no_secret(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    s.post("/v1/messages", &t.token, json!({"from": FROM, "to": "+34699000111", "body": "exported body 42"}))
        .await
        .expect(201);
    let (_, key) = s.api_key(&t.token, json!({"name": "ci", "role": "admin"})).await;
    let hook = s.post("/v1/webhooks", &t.token, json!({"url": "https://example.com/h", "events": ["*"]})).await;
    let whsec = hook.body["secret"].as_str().map(str::to_owned);
    // An API key without tenant:manage may not export the tenant.
    s.call(Method::POST, "/v1/exports", Some(&key), None).await.expect(403);

    let r = s.call(Method::POST, "/v1/exports", Some(&t.token), None).await.expect(202);
    assert_eq!(r.body["status"], "pending");
    let id = r.body["id"].as_str().unwrap().to_owned();
    let done = finished(&s, &t.token, &id).await;
    assert_eq!(done["status"], "ready", "{done}");
    let url = done["download_url"].as_str().unwrap();
    assert_eq!(url, format!("/v1/exports/{id}/download"));
    let (status, archive, kind) = download(&s, &t.token, url).await;
    assert_eq!((status, kind.as_deref()), (200, Some("application/x-tar")));
    assert_eq!(done["sha256"], hex(&archive).as_str());
    assert_eq!(done["size"], archive.len());

    let files = files(&archive);
    let manifest: Value = serde_json::from_str(&files[0].1).unwrap();
    assert_eq!((files[0].0.as_str(), manifest["tenant_id"].as_str()), ("manifest.json", Some(t.id.as_str())));
    for (name, text) in &files[1..files.len() - 1] {
        let listed = manifest["files"].as_array().unwrap().iter().find(|f| f["name"] == name.as_str()).unwrap();
        assert_eq!(listed["sha256"], hex(text.as_bytes()).as_str(), "{name}");
        assert_eq!(listed["records"], text.lines().count(), "{name}");
    }
    let text = |name: &str| files.iter().find(|(n, _)| n == name).map(|(_, t)| t.clone()).unwrap();
    assert!(text("messages.jsonl").contains("exported body 42"), "bodies are opened for the export");
    assert!(text("users.jsonl").contains(&t.email));
    assert!(text("api_keys.jsonl").contains("\"name\":\"ci\""));
    assert!(text("events.jsonl").contains("message.sent"));
    // No secret: no key, key hash, password hash or webhook secret.
    let all = String::from_utf8_lossy(&archive).into_owned();
    let key_hash = palisade_auth::token::sha256_hex(&key);
    assert!(!all.contains(&key) && !all.contains(&key_hash) && !all.contains("argon2"));
    if let Some(secret) = whsec {
        assert!(!all.contains(&secret) && !all.contains(&secret[6..]));
    }
    // Both steps are audited.
    assert_eq!(s.events(&t.token, "action=export.requested").await.len(), 1);
    assert_eq!(s.events(&t.token, "action=export.downloaded").await.len(), 1);
    assert_eq!(s.events(&t.token, "action=export.ready").await.len(), 1);
    // Another tenant sees none of it.
    let other = s.tenant("Other").await;
    s.get(&format!("/v1/exports/{id}"), &other.token).await.expect(404);
    assert_eq!(download(&s, &other.token, url).await.0, 404);
    s.stop().await;
}

async fn people_export_their_own_data_only(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    let (member_id, member) = s.member(&t.token, "member@acme.example.com", "read_only").await;
    let (other_id, other) = s.member(&t.token, "other@acme.example.com", "read_only").await;
    // Not the tenant's, not another person's.
    s.call(Method::POST, "/v1/exports", Some(&member), None).await.expect(403);
    let r = s.call(Method::POST, &format!("/v1/users/{other_id}/export"), Some(&member), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    // One's own.
    let r = s.call(Method::POST, &format!("/v1/users/{member_id}/export"), Some(&member), None).await.expect(202);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let done = finished(&s, &member, &id).await;
    assert_eq!((done["status"].as_str(), done["subject"].as_str()), (Some("ready"), Some("user")));
    let (status, archive, _) = download(&s, &member, done["download_url"].as_str().unwrap()).await;
    assert_eq!(status, 200);
    let all = String::from_utf8_lossy(&archive).into_owned();
    assert!(all.contains("member@acme.example.com"));
    assert!(!all.contains("other@acme.example.com") && !all.contains(&t.email));
    // Another person of the tenant does not see it; the owner does.
    s.get(&format!("/v1/exports/{id}"), &other).await.expect(404);
    s.get(&format!("/v1/exports/{id}"), &t.token).await.expect(200);
    // The owner may export any person of the tenant (a subject's request).
    s.call(Method::POST, &format!("/v1/users/{other_id}/export"), Some(&t.token), None).await.expect(202);
    s.call(Method::POST, &format!("/v1/users/{}/export", uuid::Uuid::new_v4()), Some(&t.token), None).await.expect(404);
    s.stop().await;
}

/// Asking for the tenant's archive, and fetching it, need a recent second
/// factor of a person who has one: a session stolen later gets neither.
async fn a_stale_second_factor_gets_no_archive(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    let (_, _, fresh) = crate::mfa::enrol(&s, &t.token).await;
    let r = s.call(Method::POST, "/v1/exports", Some(&fresh), None).await.expect(202);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let url = finished(&s, &fresh, &id).await["download_url"].as_str().unwrap().to_owned();
    assert_eq!(download(&s, &fresh, &url).await.0, 200);
    // Eleven minutes on, the same session: the status still, not the archive.
    s.clock.advance_ms(11 * 60_000);
    s.get(&format!("/v1/exports/{id}"), &fresh).await.expect(200);
    let (status, body, _) = download(&s, &fresh, &url).await;
    assert_eq!(status, 403);
    assert!(String::from_utf8_lossy(&body).contains("mfa_required"));
    let r = s.call(Method::POST, "/v1/exports", Some(&fresh), None).await;
    assert_eq!((r.status, r.body["reason"].as_str()), (403, Some("mfa_required")));
    s.stop().await;
}

fn hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}
