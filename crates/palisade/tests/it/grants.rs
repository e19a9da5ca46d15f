//! Nobody grants more than they hold: agent tokens and child keys carry at
//! most their minter's permissions, addresses and lifetime and end with it;
//! nobody rotates or revokes a key wider than themselves.

use palisade_core::Clock;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

backend_tests!(
    agent_token_holds_only_what_its_minter_holds,
    agent_token_answers_to_its_person,
    agent_token_ends_with_its_minting_key,
    agent_token_within_its_minters_addresses_and_lifetime,
    child_keys_are_bounded_by_and_end_with_their_parent,
    rotation_only_by_the_answerable_person,
    revocation_is_capped_like_creation,
    a_previous_secret_only_keeps_serving,
    every_key_above_fences_what_it_minted,
);

async fn identity(s: &TestServer, cred: &str, number: &str) -> String {
    let r = s.post("/v1/identities", cred, json!({"number": number, "kind": "agent"})).await.expect(201);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn mint(s: &TestServer, cred: &str, id: &str, body: Value) -> crate::common::Resp {
    s.post(&format!("/v1/identities/{id}/agent-token"), cred, body).await
}

fn token(r: &crate::common::Resp) -> String {
    r.body["token"].as_str().unwrap().to_owned()
}

async fn fund(s: &TestServer, tenant: &str) {
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant}/credits"), Some(json!({"amount": 10_000})))
        .await
        .expect(200);
}

fn message() -> Value {
    json!({"from": "+34612345678", "to": "+34699000111", "body": "hi"})
}

fn call() -> Value {
    json!({"from": "+34612345678", "to": "+34699000111"})
}

async fn agent_token_holds_only_what_its_minter_holds(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Mint").await;
    fund(&s, &t.id).await;
    let id = identity(&s, &t.token, "+34612345678").await;
    // The reproduced escalation: a key that may manage identities but not
    // send mints a token; the token must not send either.
    let (_, manager) =
        s.api_key(&t.token, json!({"name": "m", "permissions": ["identities:manage", "identities:read"]})).await;
    s.post("/v1/messages", &manager, message()).await.expect(403);
    let r = mint(&s, &manager, &id, json!({})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    mint(&s, &manager, &id, json!({"permissions": ["messages:write"]})).await.expect(403);
    assert_eq!(s.get(&format!("/v1/identities/{id}"), &t.token).await.body.get("agent_token_prefix"), None);
    // A refusal is audited off the request path.
    let mut audited = false;
    for _ in 0..50 {
        if !s.events(&t.token, "action=permission.denied").await.is_empty() {
            audited = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(audited, "a refused mint is audited");

    // A key that may send (and read messages) mints a token that may do that only.
    let (_, sender) = s
        .api_key(
            &t.token,
            json!({"name": "s", "permissions": ["identities:manage", "messages:write", "messages:read"]}),
        )
        .await;
    mint(&s, &sender, &id, json!({})).await.expect(403);
    let r = mint(&s, &sender, &id, json!({"permissions": ["messages:write", "messages:read"]})).await.expect(201);
    assert_eq!(r.body["permissions"], json!(["messages:read", "messages:write"]));
    let agent = token(&r);
    s.post("/v1/messages", &agent, message()).await.expect(201);
    s.get("/v1/messages", &agent).await.expect(200);
    s.post("/v1/calls", &agent, call()).await.expect(403);
    s.get("/v1/calls", &agent).await.expect(403);
    s.get("/v1/cdrs", &agent).await.expect(403);
    assert_eq!(
        s.get("/v1/me", &agent).await.expect(200).body["permissions"],
        json!(["messages:read", "messages:write"])
    );

    // Only agent permissions, named correctly.
    for bad in [json!({"permissions": ["keys:read"]}), json!({"permissions": ["nope"]}), json!({"permissions": []})] {
        let r = mint(&s, &t.token, &id, bad.clone()).await.expect(400);
        assert_eq!(r.body["errors"][0]["field"], "permissions", "{bad}");
    }
    // A new token revokes the old one, so a narrower caller cannot replace a
    // wider token.
    let (_, reader) =
        s.api_key(&t.token, json!({"name": "r", "permissions": ["identities:manage", "messages:read"]})).await;
    mint(&s, &reader, &id, json!({"permissions": ["messages:read"]})).await.expect(403);
    s.get("/v1/me", &agent).await.expect(200);
    // The owner holds everything an agent may: the default is all of it.
    let r = mint(&s, &t.token, &id, json!({})).await.expect(201);
    assert_eq!(
        r.body["permissions"],
        json!(["messages:read", "messages:write", "calls:read", "calls:write", "cdrs:read", "recordings:read"])
    );
    assert_eq!(r.body["answerable_user_id"], t.owner_id.as_str());
    s.stop().await;
}

async fn agent_token_answers_to_its_person(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Answer").await;
    fund(&s, &t.id).await;
    let id = identity(&s, &t.token, "+34612345678").await;
    let (admin_id, admin) = s.member(&t.token, "admin@answer.example.com", "admin").await;
    let agent = token(&mint(&s, &admin, &id, json!({})).await.expect(201));
    s.post("/v1/messages", &agent, message()).await.expect(201);

    // Demoted below it: the token narrows to what the person still holds.
    let user = format!("/v1/users/{admin_id}");
    s.call(Method::PATCH, &user, Some(&t.token), Some(json!({"role": "read_only"}))).await.expect(200);
    s.post("/v1/messages", &agent, message()).await.expect(403);
    s.get("/v1/messages", &agent).await.expect(200);
    s.call(Method::PATCH, &user, Some(&t.token), Some(json!({"role": "admin"}))).await.expect(200);
    s.post("/v1/messages", &agent, message()).await.expect(201);

    // Removed: the token ends, and looks like any unknown credential.
    s.call(Method::DELETE, &user, Some(&t.token), None).await.expect(204);
    let gone = s.get("/v1/me", &agent).await.expect(401);
    let unknown = s.get("/v1/me", &format!("at_{}", "Z".repeat(32))).await.expect(401);
    assert_eq!(gone.problem_shape(), unknown.problem_shape());
    s.post("/v1/messages", &agent, message()).await.expect(401);

    // A token minted by a key answers to the key's person.
    let (member_id, member) = s.member(&t.token, "second@answer.example.com", "admin").await;
    let (_, key) = s.api_key(&member, json!({"name": "k", "role": "admin"})).await;
    let r = mint(&s, &key, &id, json!({})).await.expect(201);
    assert_eq!(r.body["answerable_user_id"], member_id.as_str());
    let agent = token(&r);
    s.get("/v1/me", &agent).await.expect(200);
    s.call(Method::DELETE, &format!("/v1/users/{member_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &agent).await.expect(401);
    s.stop().await;
}

async fn agent_token_ends_with_its_minting_key(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Keys").await;
    let id = identity(&s, &t.token, "+34612345678").await;
    let (parent_id, parent) = s.api_key(&t.token, json!({"name": "p", "role": "admin"})).await;
    let (key_id, key) = s.api_key(&parent, json!({"name": "k", "role": "admin"})).await;
    let agent = token(&mint(&s, &key, &id, json!({})).await.expect(201));
    s.get("/v1/me", &agent).await.expect(200);
    // The operator's freeze of the minting key suspends it; lifting it resumes it.
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{key_id}/freeze"), None).await.expect(200);
    assert_eq!(s.get("/v1/me", &agent).await.expect(423).body["reason"], "frozen");
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{key_id}/unfreeze"), None).await.expect(200);
    s.get("/v1/me", &agent).await.expect(200);
    // Revoking a key above the minting one ends the token.
    s.call(Method::DELETE, &format!("/v1/api-keys/{parent_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &agent).await.expect(401);
    s.get("/v1/me", &key).await.expect(401);

    // And revoking the minting key itself.
    let (own_id, own) = s.api_key(&t.token, json!({"name": "o", "role": "admin"})).await;
    let agent = token(&mint(&s, &own, &id, json!({})).await.expect(201));
    s.get("/v1/me", &agent).await.expect(200);
    s.call(Method::DELETE, &format!("/v1/api-keys/{own_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &agent).await.expect(401);
    s.stop().await;
}

async fn agent_token_within_its_minters_addresses_and_lifetime(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Fence").await;
    let id = identity(&s, &t.token, "+34612345678").await;
    let expires = palisade_core::clock::rfc3339(s.clock.now_ms() + 120_000);
    let (_, key) = s
        .api_key(&t.token, json!({"name": "k", "role": "admin", "allowed_ips": ["127.0.0.0/8"], "expires_at": expires}))
        .await;
    // Inherited when not asked for.
    let r = mint(&s, &key, &id, json!({})).await.expect(201);
    assert_eq!(r.body["allowed_ips"], json!(["127.0.0.0/8"]));
    assert_eq!(r.body["expires_at"], expires.as_str());
    let agent = token(&r);
    // Never wider.
    let later = palisade_core::clock::rfc3339(s.clock.now_ms() + 3_600_000);
    for wider in [
        json!({"allowed_ips": ["0.0.0.0/0"]}),
        json!({"allowed_ips": []}),
        json!({"allowed_ips": ["10.0.0.0/8"]}),
        json!({"expires_at": later}),
    ] {
        let r = mint(&s, &key, &id, wider.clone()).await.expect(403);
        assert_eq!(r.body["reason"], "forbidden", "{wider}");
    }
    // Narrower is fine; the previous token still works (the refusals changed nothing).
    s.get("/v1/me", &agent).await.expect(200);
    let narrow = mint(&s, &key, &id, json!({"allowed_ips": ["127.0.0.1/32"]})).await.expect(201);
    let agent = token(&narrow);
    s.get("/v1/me", &agent).await.expect(200);
    // The address rule holds for the token itself.
    let other = identity(&s, &t.token, "+34612345679").await;
    let fenced = token(&mint(&s, &t.token, &other, json!({"allowed_ips": ["10.0.0.0/8"]})).await.expect(201));
    s.get("/v1/me", &fenced).await.expect(401);
    // The inherited lifetime ends it with the key.
    let agent = token(&mint(&s, &key, &id, json!({})).await.expect(201));
    s.get("/v1/me", &agent).await.expect(200);
    s.clock.advance_ms(121_000);
    s.get("/v1/me", &agent).await.expect(401);
    s.stop().await;
}

async fn child_keys_are_bounded_by_and_end_with_their_parent(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Children").await;
    let soon = palisade_core::clock::rfc3339(s.clock.now_ms() + 120_000);
    let (parent_id, parent) = s
        .api_key(
            &t.token,
            json!({"name": "p", "role": "admin", "allowed_ips": ["127.0.0.0/8"],
                "allowed_origins": ["https://app.example.com"], "expires_at": soon}),
        )
        .await;
    let r = s.post("/v1/api-keys", &parent, json!({"name": "c", "role": "admin"})).await.expect(201);
    assert_eq!(r.body["allowed_ips"], json!(["127.0.0.0/8"]));
    assert_eq!(r.body["allowed_origins"], json!(["https://app.example.com"]));
    assert_eq!(r.body["expires_at"], soon.as_str());
    let (child_id, child) = (r.body["id"].as_str().unwrap().to_owned(), r.body["key"].as_str().unwrap().to_owned());
    let later = palisade_core::clock::rfc3339(s.clock.now_ms() + 3_600_000);
    for wider in [
        json!({"name": "w", "role": "read_only", "allowed_ips": ["0.0.0.0/0"]}),
        json!({"name": "w", "role": "read_only", "allowed_origins": ["https://evil.example.com"]}),
        json!({"name": "w", "role": "read_only", "allowed_origins": []}),
        json!({"name": "w", "role": "read_only", "expires_at": later}),
        json!({"name": "w", "role": "owner"}),
    ] {
        let r = s.post("/v1/api-keys", &parent, wider.clone()).await.expect(403);
        assert_eq!(r.body["reason"], "forbidden", "{wider}");
    }
    s.get("/v1/me", &child).await.expect(200);
    // A grandchild, then the parent's revocation ends the whole line.
    let (grandchild_id, grandchild) = s.api_key(&child, json!({"name": "g", "role": "read_only"})).await;
    s.get("/v1/me", &grandchild).await.expect(200);
    // The operator's freeze of a key holds for the keys below it.
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{parent_id}/freeze"), None).await.expect(200);
    assert_eq!(s.get("/v1/me", &grandchild).await.expect(423).body["reason"], "frozen");
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{parent_id}/unfreeze"), None).await.expect(200);
    s.get("/v1/me", &grandchild).await.expect(200);
    s.call(Method::DELETE, &format!("/v1/api-keys/{parent_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &child).await.expect(401);
    s.get("/v1/me", &grandchild).await.expect(401);
    for k in [&child_id, &grandchild_id] {
        assert_eq!(s.get(&format!("/v1/api-keys/{k}"), &t.token).await.expect(200).body["status"], "revoked");
    }

    // A child of an unrestricted key still ends with the key's expiry.
    let (_, p2) = s.api_key(&t.token, json!({"name": "p2", "role": "admin", "expires_at": soon})).await;
    let (_, c2) = s.api_key(&p2, json!({"name": "c2", "role": "read_only"})).await;
    s.get("/v1/me", &c2).await.expect(200);
    s.clock.advance_ms(121_000);
    s.get("/v1/me", &c2).await.expect(401);
    s.stop().await;
}

async fn rotation_only_by_the_answerable_person(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Rotate").await;
    let (owner_key_id, owner_key) = s.api_key(&t.token, json!({"name": "owner's", "role": "admin"})).await;
    let (admin_id, admin) = s.member(&t.token, "admin@rotate.example.com", "admin").await;
    // The reproduced takeover: an admin rotates the owner's key to learn its secret.
    let path = format!("/v1/api-keys/{owner_key_id}/rotate");
    let r = s.post(&path, &admin, json!({})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    let (_, admin_key) = s.api_key(&admin, json!({"name": "admin's", "role": "admin"})).await;
    s.post(&path, &admin_key, json!({})).await.expect(403);
    s.get("/v1/me", &owner_key).await.expect(200);
    // The person answerable for it, and their own keys, may.
    let rotated = s.post(&path, &t.token, json!({})).await.expect(200);
    let new_key = rotated.body["key"].as_str().unwrap().to_owned();
    s.get("/v1/me", &owner_key).await.expect(401);
    let by_key = s.post(&path, &new_key, json!({})).await.expect(200);
    let newest = by_key.body["key"].as_str().unwrap().to_owned();
    s.get("/v1/me", &newest).await.expect(200);
    // An admin's key stays the admin's: removal ends it whoever rotated it.
    s.call(Method::DELETE, &format!("/v1/users/{admin_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &admin_key).await.expect(401);

    // Among keys: one above may rotate one below (revoking it ends what it
    // learnt), never the other way, nor a sibling.
    let (parent_id, parent) = s.api_key(&t.token, json!({"name": "p", "role": "admin"})).await;
    let (child_id, child) = s.api_key(&parent, json!({"name": "c", "role": "admin"})).await;
    let (sibling_id, _) = s.api_key(&t.token, json!({"name": "s", "role": "read_only"})).await;
    s.post(&format!("/v1/api-keys/{parent_id}/rotate"), &child, json!({})).await.expect(403);
    s.post(&format!("/v1/api-keys/{sibling_id}/rotate"), &parent, json!({})).await.expect(403);
    s.post(&format!("/v1/api-keys/{child_id}/rotate"), &parent, json!({})).await.expect(200);
    s.get("/v1/me", &parent).await.expect(200);

    // Nor may a person rotate a key of theirs wider than they now are.
    let (second_id, second) = s.member(&t.token, "second@rotate.example.com", "owner").await;
    let (wide_id, _) = s.api_key(&second, json!({"name": "w", "role": "owner"})).await;
    let user = format!("/v1/users/{second_id}");
    s.call(Method::PATCH, &user, Some(&t.token), Some(json!({"role": "admin"}))).await.expect(200);
    s.post(&format!("/v1/api-keys/{wide_id}/rotate"), &second, json!({})).await.expect(403);
    s.stop().await;
}

async fn revocation_is_capped_like_creation(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Revoke").await;
    let (owner_key_id, owner_key) = s.api_key(&t.token, json!({"name": "owner's", "role": "owner"})).await;
    let (narrow_id, narrow) = s.api_key(&t.token, json!({"name": "n", "permissions": ["keys:manage"]})).await;
    // A narrow key must not revoke the owner's keys.
    let r = s.call(Method::DELETE, &format!("/v1/api-keys/{owner_key_id}"), Some(&narrow), None).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    s.get("/v1/me", &owner_key).await.expect(200);
    // It may revoke what it covers, and itself.
    let (small_id, small) = s.api_key(&narrow, json!({"name": "s", "permissions": ["keys:manage"]})).await;
    s.call(Method::DELETE, &format!("/v1/api-keys/{small_id}"), Some(&narrow), None).await.expect(204);
    s.get("/v1/me", &small).await.expect(401);
    s.call(Method::DELETE, &format!("/v1/api-keys/{narrow_id}"), Some(&narrow), None).await.expect(204);
    s.get("/v1/me", &narrow).await.expect(401);
    // The owner revokes anything.
    s.call(Method::DELETE, &format!("/v1/api-keys/{owner_key_id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &owner_key).await.expect(401);
    s.stop().await;
}

async fn a_previous_secret_only_keeps_serving(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Grace").await;
    let id = identity(&s, &t.token, "+34612345678").await;
    let (key_id, old) = s.api_key(&t.token, json!({"name": "leaked", "role": "admin"})).await;
    let path = format!("/v1/api-keys/{key_id}/rotate");
    let new = s.post(&path, &t.token, json!({"grace_seconds": 600})).await.expect(200).body["key"]
        .as_str()
        .unwrap()
        .to_owned();
    s.get("/v1/me", &old).await.expect(200);
    // The old secret cannot take the key over or make what outlives it.
    s.post(&path, &old, json!({"grace_seconds": 0})).await.expect(403);
    s.post("/v1/api-keys", &old, json!({"name": "c", "role": "read_only"})).await.expect(403);
    s.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&old), None).await.expect(403);
    let agent = token(&mint(&s, &old, &id, json!({})).await.expect(201));
    s.get("/v1/me", &new).await.expect(200);
    // Whatever it minted ends with the grace period.
    s.clock.advance_ms(601_000);
    s.get("/v1/me", &old).await.expect(401);
    s.get("/v1/me", &agent).await.expect(401);
    s.get("/v1/me", &new).await.expect(200);
    s.stop().await;
}

async fn every_key_above_fences_what_it_minted(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Fences").await;
    let id = identity(&s, &t.token, "+34612345678").await;
    let (parent_id, parent) = s.api_key(&t.token, json!({"name": "p", "role": "admin"})).await;
    let (_, child) = s.api_key(&parent, json!({"name": "c", "role": "admin"})).await;
    let agent = token(&mint(&s, &child, &id, json!({})).await.expect(201));
    s.get("/v1/me", &child).await.expect(200);
    s.get("/v1/me", &agent).await.expect(200);
    // As if the child had been made before minting was bounded: the parent
    // is fenced, the child is not; the parent's fence holds for it anyway.
    let mut tx = s.state().db.begin().await.unwrap();
    sqlx::query("UPDATE api_keys SET allowed_ips = '[\"10.0.0.0/8\"]' WHERE id = $1")
        .bind(&parent_id)
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.commit().await.unwrap();
    // Written behind the server's back (no store function): its verified-
    // credential cache learns of it when its entries expire at the latest.
    s.clock.advance_ms(i64::try_from(s.state().config.auth.credential_cache_ttl_secs).unwrap() * 1000);
    s.get("/v1/me", &parent).await.expect(401);
    s.get("/v1/me", &child).await.expect(401);
    s.get("/v1/me", &agent).await.expect(401);

    // A token minted by a key at the deepest level allowed works.
    let mut key = s.api_key(&t.token, json!({"name": "k0", "role": "admin"})).await.1;
    for depth in 1..=8 {
        key = s.api_key(&key, json!({"name": format!("k{depth}"), "role": "admin"})).await.1;
    }
    s.post("/v1/api-keys", &key, json!({"name": "k9", "role": "admin"})).await.expect(403);
    let deep = token(&mint(&s, &key, &id, json!({})).await.expect(201));
    s.get("/v1/me", &deep).await.expect(200);
    s.stop().await;
}
