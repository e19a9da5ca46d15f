//! Identities, agent tokens, the identity kill-switch and credits.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    identity_lifecycle,
    identity_input_is_checked,
    identity_permissions,
    agent_token_acts_as_its_identity_only,
    frozen_identity_refuses_its_agent_token,
    tenant_kill_switch_cannot_lift_the_operators,
    credits_top_up_and_balance,
);

async fn identity_lifecycle(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let body = json!({"number": "+34612345678", "name": "Support line",
        "policy": {"rate_per_second": 5, "monthly_budget": 10000, "allowed_countries": ["es", "FR"]}});
    let r = s.post("/v1/identities", &t.token, body).await.expect(201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    assert_eq!(r.body["country"], "ES");
    assert_eq!(r.body["kind"], "number");
    assert_eq!(r.body["status"], "active");
    assert_eq!(
        r.body["policy"],
        json!({"rate_per_second": 5, "monthly_budget": 10000, "allowed_countries": ["ES", "FR"], "srtp": "preferred"})
    );
    let list = s.get("/v1/identities", &t.token).await.expect(200);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 1);
    let path = format!("/v1/identities/{id}");
    let r = s
        .call(Method::PATCH, &path, Some(&t.token), Some(json!({"policy": {"allowed_countries": []}})))
        .await
        .expect(200);
    assert_eq!(r.body["policy"], json!({"allowed_countries": [], "srtp": "preferred"}));
    assert_eq!(r.body["name"], "Support line");
    // A tenant registers a number once; another tenant may too (see numbers.rs).
    s.post("/v1/identities", &t.token, json!({"number": "+34612345678"})).await.expect(409);
    s.call(Method::DELETE, &path, Some(&t.token), None).await.expect(204);
    s.get(&path, &t.token).await.expect(404);
    let actions: Vec<String> = s
        .events(&t.token, "resource_type=identity")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(actions, ["identity.created", "identity.updated", "identity.deleted"]);
    // Audit records hold the number masked, never whole.
    let all = s.events(&t.token, "resource_type=identity").await;
    assert!(all.iter().all(|e| !e.to_string().contains("+34612345678")));
    assert_eq!(all[0]["details"]["number"], "…5678");
    s.stop().await;
}

async fn identity_input_is_checked(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    for (body, field) in [
        (json!({"number": "612345678"}), "number"),
        (json!({"number": "+34000000000"}), "number"),
        (json!({"number": "+34612345678", "kind": "robot"}), "kind"),
        (json!({"number": "+34612345678", "policy": {"rate_per_second": 0}}), "policy.rate_per_second"),
        (json!({"number": "+34612345678", "policy": {"monthly_budget": -1}}), "policy.monthly_budget"),
        (json!({"number": "+34612345678", "policy": {"allowed_countries": ["XX"]}}), "policy.allowed_countries"),
    ] {
        let r = s.post("/v1/identities", &t.token, body.clone()).await.expect(400);
        assert_eq!(r.body["reason"], "validation_failed");
        assert!(r.body["errors"].as_array().unwrap().iter().any(|e| e["field"] == field), "{body}: {}", r.text);
    }
    assert!(s.get("/v1/identities", &t.token).await.expect(200).body["data"].as_array().unwrap().is_empty());
    s.stop().await;
}

async fn identity_permissions(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let (_, ro) = s.api_key(&t.token, json!({"name": "ro", "role": "read_only"})).await;
    let r = s.post("/v1/identities", &ro, json!({"number": "+34612345678"})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    s.get("/v1/identities", &ro).await.expect(200);
    s.stop().await;
}

async fn agent_token_acts_as_its_identity_only(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id =
        s.post("/v1/identities", &t.token, json!({"number": "+34612345678", "kind": "agent"})).await.expect(201).body
            ["id"]
            .as_str()
            .unwrap()
            .to_owned();
    let path = format!("/v1/identities/{id}/agent-token");
    let r = s.post(&path, &t.token, json!({})).await.expect(201);
    let first = r.body["token"].as_str().unwrap().to_owned();
    assert!(first.starts_with("at_") && first.len() == 35);
    let me = s.get("/v1/me", &first).await.expect(200);
    assert_eq!(me.body["type"], "agent");
    assert_eq!(me.body["id"], id.as_str());
    // Nothing beyond sending, calling and reading results.
    s.get("/v1/api-keys", &first).await.expect(403);
    s.get("/v1/users", &first).await.expect(403);
    s.get("/v1/identities", &first).await.expect(403);
    s.post("/v1/identities", &first, json!({"number": "+34612345679"})).await.expect(403);
    // Shown once: the identity shows only the prefix.
    let i = s.get(&format!("/v1/identities/{id}"), &t.token).await.expect(200);
    assert_eq!(i.body["agent_token_prefix"], &first[..8]);
    assert!(!i.text.contains(&first));
    // A new token revokes the old one.
    let second = s.post(&path, &t.token, json!({})).await.expect(201).body["token"].as_str().unwrap().to_owned();
    let old = s.get("/v1/me", &first).await.expect(401);
    let unknown = s.get("/v1/me", &format!("at_{}", "Z".repeat(32))).await.expect(401);
    assert_eq!(old.problem_shape(), unknown.problem_shape());
    s.get("/v1/me", &second).await.expect(200);
    // Deleting the identity ends its token.
    s.call(Method::DELETE, &format!("/v1/identities/{id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &second).await.expect(401);
    s.stop().await;
}

async fn frozen_identity_refuses_its_agent_token(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id = new_identity(&s, &t.token).await;
    let token = agent_token(&s, &t.token, &id).await;
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{id}/freeze"), None).await.expect(200);
    let r = s.get("/v1/me", &token).await.expect(423);
    assert_eq!(r.body["reason"], "frozen");
    assert_eq!(s.get(&format!("/v1/identities/{id}"), &t.token).await.expect(200).body["status"], "frozen");
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{id}/unfreeze"), None).await.expect(200);
    s.get("/v1/me", &token).await.expect(200);
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{}/freeze", uuid::Uuid::new_v4()), None).await.expect(404);
    // Tenant credentials cannot use the kill-switch.
    s.call(Method::POST, &format!("/sysadmin/v1/identities/{id}/freeze"), Some(&t.token), None).await.expect(401);
    s.stop().await;
}

async fn credits_top_up_and_balance(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 0);
    let path = format!("/sysadmin/v1/tenants/{}/credits", t.id);
    let r = s.admin(Method::POST, &path, Some(json!({"amount": 1500, "reference": "INV-1"}))).await.expect(200);
    assert_eq!(r.body["balance"], 1500);
    s.admin(Method::POST, &path, Some(json!({"amount": 500}))).await.expect(200);
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 2000);
    for bad in [json!({"amount": 0}), json!({"amount": -5}), json!({"amount": 1.5}), json!({})] {
        s.admin(Method::POST, &path, Some(bad)).await.expect(400);
    }
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 2000);
    s.admin(
        Method::POST,
        &format!("/sysadmin/v1/tenants/{}/credits", uuid::Uuid::new_v4()),
        Some(json!({"amount": 1})),
    )
    .await
    .expect(404);
    s.call(Method::POST, &path, Some(&t.token), Some(json!({"amount": 1}))).await.expect(401);
    let e = s.events(&t.token, "action=credits.topped_up").await;
    assert_eq!(e.len(), 2);
    s.stop().await;
}

async fn tenant_kill_switch_cannot_lift_the_operators(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id = new_identity(&s, &t.token).await;
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let agent = agent_token(&s, &t.token, &id).await;
    let (freeze, unfreeze) = (format!("/v1/identities/{id}/freeze"), format!("/v1/identities/{id}/unfreeze"));

    // The tenant's own kill-switch: at once, for its keys and its agent token.
    let frozen = s.post(&freeze, &t.token, json!({})).await.expect(200);
    assert_eq!(frozen.body["status"], "frozen");
    assert_eq!(frozen.body["frozen_by"], json!(["tenant"]));
    assert_eq!(send(&s, &t.token).await.expect(423).body["reason"], "frozen");
    assert_eq!(s.get("/v1/me", &agent).await.expect(423).body["reason"], "frozen");
    assert_eq!(s.get("/v1/balance", &t.token).await.expect(200).body["balance"], 100, "a refusal costs nothing");
    let unfrozen = s.post(&unfreeze, &t.token, json!({})).await.expect(200);
    assert_eq!(unfrozen.body["status"], "active");
    assert!(unfrozen.body.get("frozen_by").is_none());
    // An agent token holds no kill-switch, not even its own; nor a reader.
    s.post(&freeze, &agent, json!({})).await.expect(403);
    let (_, ro) = s.api_key(&t.token, json!({"name": "ro", "role": "read_only"})).await;
    s.post(&freeze, &ro, json!({})).await.expect(403);
    send(&s, &t.token).await.expect(201);

    // The operator's freeze is the operator's to lift: the tenant's unfreeze
    // is refused and changes nothing.
    let op = |verb: &str| format!("/sysadmin/v1/identities/{id}/{verb}");
    s.admin(Method::POST, &op("freeze"), None).await.expect(200);
    assert_eq!(s.post(&unfreeze, &t.token, json!({})).await.expect(423).body["reason"], "frozen");
    let i = s.get(&format!("/v1/identities/{id}"), &t.token).await.expect(200).body;
    assert_eq!((i["status"].as_str(), &i["frozen_by"]), (Some("frozen"), &json!(["sysadmin"])));
    // ...and the tenant's own freeze is the tenant's: the operator lifting
    // theirs leaves it frozen.
    s.post(&freeze, &t.token, json!({})).await.expect(200);
    s.post(&freeze, &t.token, json!({})).await.expect(200);
    let lifted = s.admin(Method::POST, &op("unfreeze"), None).await.expect(200);
    assert_eq!(lifted.body["status"], "frozen");
    assert_eq!(send(&s, &t.token).await.expect(423).body["reason"], "frozen");
    let i = s.get(&format!("/v1/identities/{id}"), &t.token).await.expect(200).body;
    assert_eq!(i["frozen_by"], json!(["tenant"]));
    s.post(&unfreeze, &t.token, json!({})).await.expect(200);
    send(&s, &t.token).await.expect(201);
    s.get("/v1/me", &agent).await.expect(200);
    // Every change is audited once (the repeated freeze changed nothing).
    let actions: Vec<String> = s
        .events(&t.token, "resource_type=identity")
        .await
        .iter()
        .map(|e| e["action"].as_str().unwrap().to_owned())
        .filter(|a| a.contains("frozen"))
        .collect();
    assert_eq!(actions.iter().filter(|a| *a == "identity.frozen").count(), 3, "{actions:?}");
    assert_eq!(actions.iter().filter(|a| *a == "identity.unfrozen").count(), 3, "{actions:?}");
    s.stop().await;
}

async fn send(s: &TestServer, cred: &str) -> crate::common::Resp {
    s.post("/v1/messages", cred, json!({"from": "+34612345678", "to": "+34699000111", "body": "hi"})).await
}

/// A number identity for the tenant; its id.
async fn new_identity(s: &TestServer, cred: &str) -> String {
    let r = s.post("/v1/identities", cred, json!({"number": "+34612345678"})).await.expect(201);
    r.body["id"].as_str().unwrap().to_owned()
}

/// A new agent token for identity `id`.
async fn agent_token(s: &TestServer, cred: &str, id: &str) -> String {
    let r = s.post(&format!("/v1/identities/{id}/agent-token"), cred, json!({})).await.expect(201);
    r.body["token"].as_str().unwrap().to_owned()
}
