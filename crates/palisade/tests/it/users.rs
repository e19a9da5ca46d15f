//! People of a tenant and the roles that bound them.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer, PASSWORD};

backend_tests!(
    invite_accept_and_roles,
    nobody_exceeds_themselves,
    last_owner_stays,
    keys_follow_their_owner,
    owners_racing_keep_one
);

async fn invite_accept_and_roles(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("People").await;
    // An invited person cannot log in before accepting.
    srv.post("/v1/users", &t.token, json!({"email": "later@example.com", "role": "read_only"})).await.expect(201);
    srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": "later@example.com", "password": PASSWORD})))
        .await
        .expect(401);

    let (id, access) = srv.member(&t.token, "reader@example.com", "read_only").await;
    let me = srv.get("/v1/me", &access).await.expect(200);
    assert_eq!(me.body["role"], "read_only");
    assert_eq!(me.body["tenant"]["id"], t.id.as_str());
    srv.post("/v1/api-keys", &access, json!({"name": "x", "role": "read_only"})).await.expect(403);

    // A role change takes effect on the very next request, same token.
    srv.call(Method::PATCH, &format!("/v1/users/{id}"), Some(&t.token), Some(json!({"role": "admin"})))
        .await
        .expect(200);
    srv.post("/v1/api-keys", &access, json!({"name": "x", "role": "read_only"})).await.expect(201);
    let list = srv.get("/v1/users", &t.token).await.expect(200);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 3);

    // Removal ends their sessions at once.
    srv.call(Method::DELETE, &format!("/v1/users/{id}"), Some(&t.token), None).await.expect(204);
    srv.get("/v1/me", &access).await.expect(401);
    srv.get(&format!("/v1/users/{id}"), &t.token).await.expect(404);
    let actions: Vec<_> =
        srv.events(&t.token, "resource_type=user").await.iter().map(|e| e["action"].clone()).collect();
    for a in ["user.invited", "user.invite_accepted", "user.role_changed", "user.removed"] {
        assert!(actions.contains(&json!(a)), "{a}");
    }
    // Invitations go to a free address only.
    srv.post("/v1/users", &t.token, json!({"email": t.email, "role": "read_only"})).await.expect(409);
    srv.stop().await;
}

async fn nobody_exceeds_themselves(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Bounds").await;
    let (_, admin) = srv.member(&t.token, "admin@example.com", "admin").await;
    // An admin cannot create an owner, nor touch one.
    srv.post("/v1/users", &admin, json!({"email": "x@example.com", "role": "owner"})).await.expect(403);
    srv.call(Method::PATCH, &format!("/v1/users/{}", t.owner_id), Some(&admin), Some(json!({"role": "read_only"})))
        .await
        .expect(403);
    srv.call(Method::DELETE, &format!("/v1/users/{}", t.owner_id), Some(&admin), None).await.expect(403);
    // Read-only people manage nobody; integration keys do not even list.
    let (_, reader) = srv.member(&t.token, "ro@example.com", "read_only").await;
    srv.post("/v1/users", &reader, json!({"email": "y@example.com", "role": "read_only"})).await.expect(403);
    srv.get("/v1/users", &reader).await.expect(200);
    let (_, integ) = srv.api_key(&t.token, json!({"name": "i", "role": "integration"})).await;
    srv.get("/v1/users", &integ).await.expect(403);
    srv.stop().await;
}

async fn last_owner_stays(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Owners").await;
    let r = srv.call(Method::DELETE, &format!("/v1/users/{}", t.owner_id), Some(&t.token), None).await.expect(409);
    assert_eq!(r.body["reason"], "conflict");
    srv.call(Method::PATCH, &format!("/v1/users/{}", t.owner_id), Some(&t.token), Some(json!({"role": "admin"})))
        .await
        .expect(409);
    let (second, _) = srv.member(&t.token, "owner2@example.com", "owner").await;
    srv.call(Method::PATCH, &format!("/v1/users/{}", t.owner_id), Some(&t.token), Some(json!({"role": "admin"})))
        .await
        .expect(200);
    let _ = second;
    srv.stop().await;
}

async fn keys_follow_their_owner(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Owned").await;
    let (admin_id, admin) = srv.member(&t.token, "keyholder@example.com", "admin").await;
    let (_, admin_refresh) = srv.login("keyholder@example.com", PASSWORD).await;
    let (_, key) = srv.api_key(&admin, json!({"name": "admin's", "role": "admin"})).await;
    // A key made by that key answers to the same person.
    let (_, child) = srv.api_key(&key, json!({"name": "child", "permissions": ["users:read", "keys:manage"]})).await;
    srv.get("/v1/users", &key).await.expect(200);

    // Demotion narrows the person's keys at once.
    srv.call(Method::PATCH, &format!("/v1/users/{admin_id}"), Some(&t.token), Some(json!({"role": "read_only"})))
        .await
        .expect(200);
    srv.get("/v1/users", &key).await.expect(200);
    srv.post("/v1/api-keys", &key, json!({"name": "x", "role": "read_only"})).await.expect(403);
    srv.post("/v1/api-keys", &child, json!({"name": "x", "permissions": ["users:read"]})).await.expect(403);
    let me = srv.get("/v1/me", &key).await.expect(200);
    assert!(me.body["permissions"].as_array().unwrap().iter().all(|p| p.as_str().unwrap().ends_with(":read")));

    // Removal disables them, and ends every session.
    srv.call(Method::DELETE, &format!("/v1/users/{admin_id}"), Some(&t.token), None).await.expect(204);
    for cred in [&key, &child, &admin] {
        srv.get("/v1/me", cred).await.expect(401);
    }
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": admin_refresh}))).await.expect(401);
    srv.stop().await;
}

async fn owners_racing_keep_one(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Duel").await;
    let (second_id, second) = srv.member(&t.token, "duel2@example.com", "owner").await;
    let (path_a, path_b) = (format!("/v1/users/{second_id}"), format!("/v1/users/{}", t.owner_id));
    let a = srv.call(Method::PATCH, &path_a, Some(&t.token), Some(json!({"role": "admin"})));
    let b2 = srv.call(Method::PATCH, &path_b, Some(&second), Some(json!({"role": "admin"})));
    let (ra, rb) = tokio::join!(a, b2);
    let ok = [ra.status, rb.status].iter().filter(|s| **s == 200).count();
    assert!(ok <= 1, "both owners demoted each other: {} {}", ra.text, rb.text);
    let users = srv.get("/v1/users", if ra.status == 200 { &t.token } else { &second }).await.expect(200);
    let owners = users.body["data"].as_array().unwrap().iter().filter(|u| u["role"] == "owner").count();
    assert_eq!(owners, 1);
    srv.stop().await;
}
