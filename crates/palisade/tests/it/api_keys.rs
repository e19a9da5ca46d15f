//! API keys: shown once, hashed at rest, scoped, rotated, revoked,
//! restricted by IP and origin, frozen by the operator.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    key_is_shown_once_and_hashed,
    key_cannot_exceed_creator,
    rotation_with_grace,
    revoke_and_expiry,
    allowed_ips_and_origins,
    operator_freezes_a_key,
    missing_permission_is_403_and_audited,
    trusted_proxy_decides_the_client,
);

async fn key_is_shown_once_and_hashed(b: Backend) {
    let srv = TestServer::start(b.clone()).await;
    let t = srv.tenant("Once").await;
    let r = srv.post("/v1/api-keys", &t.token, json!({"name": "ci", "role": "integration"})).await.expect(201);
    let key = r.body["key"].as_str().unwrap().to_owned();
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert!(key.starts_with("ak_") && key.len() == 35 && key[3..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(r.body["prefix"], &key[..8]);
    assert!(r.body["last_used_at"].is_null());

    let used = srv.get("/v1/me", &key).await.expect(200);
    assert_eq!(used.body["type"], "api_key");
    assert_eq!(
        used.body["permissions"],
        json!([
            "messages:read",
            "messages:write",
            "calls:read",
            "calls:write",
            "cdrs:read",
            "identities:read",
            "recordings:read"
        ])
    );

    let hash = palisade_auth::token::sha256_hex(&key);
    for path in [format!("/v1/api-keys/{id}"), "/v1/api-keys".to_owned()] {
        let r = srv.get(&path, &t.token).await.expect(200);
        assert!(!r.text.contains(&key[8..]), "the key must never be shown again");
        assert!(!r.text.contains(&hash), "nor its hash");
    }
    // last_used_at is written asynchronously.
    let mut seen = false;
    for _ in 0..50 {
        if !srv.get(&format!("/v1/api-keys/{id}"), &t.token).await.body["last_used_at"].is_null() {
            seen = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(seen, "last_used_at must be recorded");

    // At rest: the SHA-256 only. Check the raw database files on SQLite.
    if matches!(b, Backend::Sqlite) {
        let state = srv.state().clone();
        let stored: String = sqlx::query_scalar("SELECT key_hash FROM api_keys WHERE id = $1")
            .bind(&id)
            .fetch_one(state.db.reader())
            .await
            .unwrap();
        assert_eq!(stored, hash);
        srv.post("/v1/users", &t.token, json!({"email": "scan@example.com", "role": "read_only"})).await.expect(201);
        let invite = srv.mailed_token("scan@example.com");
        let mut raw = Vec::new();
        for f in std::fs::read_dir(&srv.data_dir).unwrap() {
            let p = f.unwrap().path();
            if p.to_string_lossy().contains("palisade.db") {
                raw.extend(std::fs::read(&p).unwrap());
            }
        }
        let raw = String::from_utf8_lossy(&raw);
        for secret in [&key, &t.password, &t.refresh, &t.token, &srv.master_key, &invite] {
            assert!(!raw.contains(secret.as_str()), "a secret is in the database file");
        }
    }
    srv.stop().await;
}

async fn key_cannot_exceed_creator(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Cap").await;
    // A key that may manage keys but read nothing else.
    let (_, manager) = srv.api_key(&t.token, json!({"name": "m", "permissions": ["keys:manage", "keys:read"]})).await;
    let r = srv.post("/v1/api-keys", &manager, json!({"name": "x", "role": "admin"})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    srv.post("/v1/api-keys", &manager, json!({"name": "x", "permissions": ["keys:read"]})).await.expect(201);
    // Nor can it rotate a wider key and so learn its secret.
    let (wide_id, _) = srv.api_key(&t.token, json!({"name": "wide", "role": "owner"})).await;
    srv.post(&format!("/v1/api-keys/{wide_id}/rotate"), &manager, json!({})).await.expect(403);
    // Unknown permission names and contradictory input are refused.
    let r =
        srv.post("/v1/api-keys", &t.token, json!({"name": "x", "permissions": ["keys:everything"]})).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "permissions");
    srv.post("/v1/api-keys", &t.token, json!({"name": "x", "role": "admin", "permissions": ["keys:read"]}))
        .await
        .expect(400);
    srv.post("/v1/api-keys", &t.token, json!({"name": "x"})).await.expect(400);
    srv.stop().await;
}

async fn rotation_with_grace(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Rotation").await;
    let (id, old) = srv.api_key(&t.token, json!({"name": "r", "role": "read_only"})).await;
    let r = srv.post(&format!("/v1/api-keys/{id}/rotate"), &t.token, json!({"grace_seconds": 60})).await.expect(200);
    let new = r.body["key"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert_eq!(r.body["id"], id.as_str());
    assert_eq!(r.body["prefix"], &new[..8]);
    srv.get("/v1/me", &old).await.expect(200);
    srv.get("/v1/me", &new).await.expect(200);
    srv.clock.advance_ms(61_000);
    srv.get("/v1/me", &old).await.expect(401);
    srv.get("/v1/me", &new).await.expect(200);
    // Without grace the old secret dies at once.
    let r = srv.call(Method::POST, &format!("/v1/api-keys/{id}/rotate"), Some(&t.token), None).await.expect(200);
    let newer = r.body["key"].as_str().unwrap().to_owned();
    srv.get("/v1/me", &new).await.expect(401);
    srv.get("/v1/me", &newer).await.expect(200);
    srv.post(&format!("/v1/api-keys/{id}/rotate"), &t.token, json!({"grace_seconds": 999_999})).await.expect(400);
    let ev = srv.events(&t.token, "action=api_key.rotated").await;
    assert_eq!(ev.len(), 2);
    assert!(!ev[0].to_string().contains(&new), "audit details never carry a key");
    srv.stop().await;
}

async fn revoke_and_expiry(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Revoke").await;
    let (id, key) = srv.api_key(&t.token, json!({"name": "r", "role": "read_only"})).await;
    srv.get("/v1/me", &key).await.expect(200);
    srv.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&t.token), None).await.expect(204);
    srv.get("/v1/me", &key).await.expect(401);
    assert_eq!(srv.get(&format!("/v1/api-keys/{id}"), &t.token).await.body["status"], "revoked");
    srv.post(&format!("/v1/api-keys/{id}/rotate"), &t.token, json!({})).await.expect(409);

    let soon = palisade_core::clock::rfc3339(srv.clock.now_ms() + 120_000);
    let (eid, ekey) = srv.api_key(&t.token, json!({"name": "e", "role": "read_only", "expires_at": soon})).await;
    srv.get("/v1/me", &ekey).await.expect(200);
    srv.clock.advance_ms(121_000);
    srv.get("/v1/me", &ekey).await.expect(401);
    assert_eq!(srv.get(&format!("/v1/api-keys/{eid}"), &t.token).await.body["status"], "expired");
    let past = palisade_core::clock::rfc3339(srv.clock.now_ms() - 1000);
    srv.post("/v1/api-keys", &t.token, json!({"name": "p", "role": "read_only", "expires_at": past})).await.expect(400);
    srv.stop().await;
}

use palisade_core::Clock;

async fn allowed_ips_and_origins(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Fences").await;
    let (_, elsewhere) =
        srv.api_key(&t.token, json!({"name": "a", "role": "read_only", "allowed_ips": ["10.0.0.0/8"]})).await;
    let (_, local) =
        srv.api_key(&t.token, json!({"name": "b", "role": "read_only", "allowed_ips": ["127.0.0.1/32", "::1"]})).await;
    srv.get("/v1/me", &elsewhere).await.expect(401);
    srv.get("/v1/me", &local).await.expect(200);
    // A spoofed X-Forwarded-For from an untrusted peer changes nothing.
    let spoof = srv.request(Method::GET, "/v1/me").bearer_auth(&elsewhere).header("X-Forwarded-For", "10.1.2.3");
    TestServer::send(spoof).await.expect(401);

    let (_, web) = srv
        .api_key(&t.token, json!({"name": "w", "role": "read_only", "allowed_origins": ["https://app.example.com"]}))
        .await;
    let with_origin = |o: &str| srv.request(Method::GET, "/v1/me").bearer_auth(&web).header("Origin", o);
    TestServer::send(with_origin("https://app.example.com")).await.expect(200);
    TestServer::send(with_origin("https://evil.example.com")).await.expect(401);
    TestServer::send(with_origin("https://app.example.com.evil.com")).await.expect(401);
    srv.post("/v1/api-keys", &t.token, json!({"name": "x", "role": "read_only", "allowed_ips": ["not-a-cidr"]}))
        .await
        .expect(400);
    srv.post("/v1/api-keys", &t.token, json!({"name": "x", "role": "read_only", "allowed_origins": ["*"]}))
        .await
        .expect(400);
    srv.stop().await;
}

async fn operator_freezes_a_key(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Freeze").await;
    let (id, key) = srv.api_key(&t.token, json!({"name": "f", "role": "read_only"})).await;
    srv.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{id}/freeze"), None).await.expect(200);
    let r = srv.get("/v1/me", &key).await.expect(423);
    assert_eq!(r.body["reason"], "frozen");
    srv.get("/v1/me", &t.token).await.expect(200);
    srv.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{id}/unfreeze"), None).await.expect(200);
    srv.get("/v1/me", &key).await.expect(200);
    srv.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{}/freeze", uuid::Uuid::new_v4()), None).await.expect(404);
    let actions: Vec<_> =
        srv.events(&t.token, "resource_type=api_key").await.iter().map(|e| e["action"].clone()).collect();
    assert!(actions.contains(&json!("api_key.frozen")) && actions.contains(&json!("api_key.unfrozen")));
    srv.stop().await;
}

async fn missing_permission_is_403_and_audited(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Denied").await;
    let (key_id, ro) = srv.api_key(&t.token, json!({"name": "ro", "role": "read_only"})).await;
    let r = srv.post("/v1/api-keys", &ro, json!({"name": "x", "role": "read_only"})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    srv.get("/v1/api-keys", &ro).await.expect(200);
    let (_, integ) = srv.api_key(&t.token, json!({"name": "i", "role": "integration"})).await;
    for path in ["/v1/api-keys", "/v1/users", "/v1/events"] {
        srv.get(path, &integ).await.expect(403);
    }
    let mut denied = Vec::new();
    for _ in 0..50 {
        denied = srv.events(&t.token, "action=permission.denied").await;
        if denied.len() >= 4 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(denied.len(), 4, "{denied:?}");
    assert_eq!(denied[0]["actor"]["id"], key_id.as_str());
    assert_eq!(denied[0]["details"]["permission"], "keys:manage");
    srv.stop().await;
}

async fn trusted_proxy_decides_the_client(b: Backend) {
    // The test client connects from 127.0.0.1, which is configured as the proxy.
    let srv = TestServer::start_with(b, |c| c.server.trust_proxy = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let t = srv.tenant("Proxied").await;
    let (_, key) =
        srv.api_key(&t.token, json!({"name": "p", "role": "read_only", "allowed_ips": ["203.0.113.7/32"]})).await;
    let via = |xff: &[&str]| {
        let mut rb = srv.request(Method::GET, "/v1/me").bearer_auth(&key).header("User-Agent", "proxied-client");
        for line in xff {
            rb = rb.header("X-Forwarded-For", *line);
        }
        rb
    };
    TestServer::send(via(&[])).await.expect(401);
    TestServer::send(via(&["203.0.113.7"])).await.expect(200);
    // The client prepends an allowed address; the proxy appends the real one.
    TestServer::send(via(&["203.0.113.7, 198.51.100.9"])).await.expect(401);
    // Same, with the proxy adding its own header line instead of extending.
    TestServer::send(via(&["203.0.113.7", "198.51.100.9"])).await.expect(401);
    // The audit trail records the client, not the proxy.
    TestServer::send(
        srv.request(Method::POST, "/v1/api-keys")
            .bearer_auth(&t.token)
            .header("X-Forwarded-For", "192.0.2.44")
            .json(&json!({"name": "audited", "role": "read_only"})),
    )
    .await
    .expect(201);
    let ev = srv.events(&t.token, "action=api_key.created").await;
    assert_eq!(ev.last().unwrap()["source_ip"], "192.0.2.44");
    srv.stop().await;
}
