//! The operator API and the tenant kill-switch.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer, PASSWORD};

backend_tests!(
    create_list_and_validate,
    frozen_tenant_is_refused_everywhere,
    operator_reads_every_event,
    top_ups_with_a_key_credit_once,
);

async fn create_list_and_validate(b: Backend) {
    let srv = TestServer::start(b).await;
    let r = srv
        .admin(
            Method::POST,
            "/sysadmin/v1/tenants",
            Some(json!({"name": "Op", "owner": {"email": "Op@Example.com", "password": PASSWORD}})),
        )
        .await
        .expect(201);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(r.body["name"], "Op");
    assert_eq!(r.body["owner"]["email"], "op@example.com");
    assert!(r.body["owner"]["id"].is_string());
    assert!(r.body.get("password").is_none() && !r.text.contains(PASSWORD));
    // The owner is active at once.
    srv.login("op@example.com", PASSWORD).await;
    let list = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    assert!(list.body["data"].as_array().unwrap().iter().any(|t| t["id"] == id && t["status"] == "active"));

    let bad = srv
        .admin(
            Method::POST,
            "/sysadmin/v1/tenants",
            Some(json!({"name": "", "owner": {"email": "nope", "password": "short"}})),
        )
        .await
        .expect(400);
    let fields: Vec<_> =
        bad.body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    assert_eq!(fields, ["name", "owner.email", "owner.password"]);
    let dup = srv
        .admin(
            Method::POST,
            "/sysadmin/v1/tenants",
            Some(json!({"name": "Op2", "owner": {"email": "op@example.com", "password": PASSWORD}})),
        )
        .await
        .expect(409);
    assert_eq!(dup.body["reason"], "conflict");
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", uuid::Uuid::new_v4()), None).await.expect(404);
    srv.admin(Method::POST, "/sysadmin/v1/tenants/not-a-uuid/freeze", None).await.expect(404);
    srv.call(Method::POST, "/sysadmin/v1/tenants", None, Some(json!({}))).await.expect(401);
    srv.stop().await;
}

async fn frozen_tenant_is_refused_everywhere(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Frozen").await;
    let other = srv.tenant("Unaffected").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", t.id), None).await.expect(200);
    for cred in [&t.token, &key] {
        let r = srv.get("/v1/me", cred).await.expect(423);
        assert_eq!(r.body["reason"], "frozen");
        assert_eq!(r.body["type"], "urn:palisade:problem:frozen");
    }
    srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": PASSWORD})))
        .await
        .expect(423);
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(423);
    srv.get("/v1/me", &other.token).await.expect(200);
    let list = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    assert!(list.body["data"].as_array().unwrap().iter().any(|x| x["id"] == t.id.as_str() && x["status"] == "frozen"));

    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/unfreeze", t.id), None).await.expect(200);
    srv.get("/v1/me", &key).await.expect(200);
    let (fresh, _) = srv.login(&t.email, PASSWORD).await;
    let actions: Vec<_> =
        srv.events(&fresh, "resource_type=tenant").await.iter().map(|e| e["action"].clone()).collect();
    assert_eq!(actions, [json!("tenant.created"), json!("tenant.frozen"), json!("tenant.unfrozen")]);
    let ev = srv.events(&fresh, "action=tenant.frozen").await;
    assert_eq!(ev[0]["actor"]["type"], "sysadmin");
    srv.stop().await;
}

async fn operator_reads_every_event(b: Backend) {
    let srv = TestServer::start(b).await;
    let a = srv.tenant("Ops A").await;
    let other = srv.tenant("Ops B").await;
    srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    srv.call(
        Method::POST,
        "/v1/auth/login",
        None,
        Some(json!({"email": "nobody@example.com", "password": "whatever whatever"})),
    )
    .await
    .expect(401);
    let all = srv.admin(Method::GET, "/sysadmin/v1/events?limit=500", None).await.expect(200).body["data"]
        .as_array()
        .unwrap()
        .clone();
    let actions: Vec<&str> = all.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert!(actions.contains(&"sysadmin.tenants_listed"), "{actions:?}");
    let unknown = all.iter().find(|e| e["action"] == "auth.login_failed").expect("failed login for an unknown address");
    assert!(unknown["tenant_id"].is_null());
    assert!(!unknown.to_string().contains("nobody@example.com"), "details never carry the address tried");
    let only_a = srv.admin(Method::GET, &format!("/sysadmin/v1/events?tenant_id={}", a.id), None).await.expect(200);
    assert!(only_a.body["data"].as_array().unwrap().iter().all(|e| e["tenant_id"] == a.id.as_str()));
    // Tenants see neither platform events nor each other's.
    let theirs = srv.events(&other.token, "limit=500").await;
    assert!(theirs.iter().all(|e| e["tenant_id"] == other.id.as_str()));
    srv.call(Method::GET, "/sysadmin/v1/events", Some(&a.token), None).await.expect(401);
    srv.admin(Method::GET, "/sysadmin/v1/events?tenant_id=nope", None).await.expect(400);
    srv.stop().await;
}

async fn top_ups_with_a_key_credit_once(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let path = format!("/sysadmin/v1/tenants/{}/credits", t.id);
    let top_up = |key: &str, amount: i64| {
        let rb = s.request(Method::POST, &path).bearer_auth(s.master_key.clone()).header("idempotency-key", key);
        TestServer::send(rb.json(&json!({"amount": amount})))
    };
    let first = top_up("wire-7", 100).await.expect(200);
    assert_eq!(first.body["balance"], 100);
    // A retry, even racing others: the first answer, no second credit.
    let retries = futures_util::future::join_all((0..5).map(|_| top_up("wire-7", 100))).await;
    for r in retries {
        let r = r.expect(200);
        assert_eq!(r.body, first.body);
        assert_eq!(r.header("idempotent-replayed"), Some("true"));
    }
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 100);
    // The same key for another amount is refused; another key credits.
    assert_eq!(top_up("wire-7", 50).await.expect(409).body["reason"], "idempotency_key_reused");
    let racing = futures_util::future::join_all((0..5).map(|_| top_up("wire-8", 50))).await;
    assert!(racing.iter().all(|r| r.status == 200 && r.body["balance"] == 150), "{:?}", racing[0].text);
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 150);
    // The tenant's own keys are apart from the operator's.
    s.post("/v1/identities", &t.token, json!({"number": "+34612345678"})).await.expect(201);
    let send = s
        .request(Method::POST, "/v1/messages")
        .bearer_auth(&t.token)
        .header("idempotency-key", "wire-7")
        .json(&json!({"from": "+34612345678", "to": "+34699000111", "body": "hi"}));
    TestServer::send(send).await.expect(201);
    let events = s.events(&t.token, "action=credits.topped_up").await;
    assert_eq!(events.len(), 2, "one audit event per credit");
    s.stop().await;
}
