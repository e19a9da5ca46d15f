//! The SIP side of identities over HTTP: digest credentials (the password
//! shown once, revocable) and the registrations list.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    sip_credentials_are_shown_once_and_revocable,
    sip_credentials_need_the_right_and_an_active_identity,
    the_credential_cap_holds_under_racing_creations
);

async fn sip_credentials_are_shown_once_and_revocable(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id = s.post("/v1/identities", &t.token, json!({"number": "+34612345678"})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/identities/{id}/sip-credentials");
    let r = s.post(&path, &t.token, json!({})).await.expect(201);
    let username = r.body["username"].as_str().unwrap().to_owned();
    let password = r.body["password"].as_str().unwrap().to_owned();
    let realm = format!("{}.sip.palisade.invalid", t.id);
    assert_eq!(r.body["realm"], realm.as_str());
    assert_eq!(r.body["aor"], format!("sip:{username}@{realm}"));
    assert!(password.len() >= 24);
    // Listed without the password.
    let list = s.get(&path, &t.token).await.expect(200);
    assert_eq!(list.body["data"][0]["username"], username.as_str());
    assert!(!list.text.contains(&password));
    s.get(&format!("/v1/identities/{id}/registrations"), &t.token).await.expect(200);
    // Neither the password nor a key derived from it is in the audit trail.
    let events = s.events(&t.token, "resource_type=identity").await;
    let created = events.iter().find(|e| e["action"] == "sip_credential.created").expect("audited");
    assert_eq!(created["details"]["username"], username.as_str());
    assert!(!serde_json::to_string(&events).unwrap().contains(&password));
    // Revoked once; then it is gone.
    let one = format!("{path}/{username}");
    s.call(Method::DELETE, &one, Some(&t.token), None).await.expect(204);
    s.call(Method::DELETE, &one, Some(&t.token), None).await.expect(404);
    assert_eq!(s.get(&path, &t.token).await.expect(200).body["data"], json!([]));
    let events = s.events(&t.token, "resource_type=identity").await;
    assert!(events.iter().any(|e| e["action"] == "sip_credential.revoked"));
    s.stop().await;
}

async fn sip_credentials_need_the_right_and_an_active_identity(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id = s.post("/v1/identities", &t.token, json!({"number": "+34612345678"})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/identities/{id}/sip-credentials");
    let (_, ro) = s.api_key(&t.token, json!({"name": "ro", "role": "read_only"})).await;
    s.post(&path, &ro, json!({})).await.expect(403);
    s.get(&path, &ro).await.expect(200);
    let made = s.post(&path, &t.token, json!({})).await.expect(201);
    let username = made.body["username"].as_str().unwrap();
    s.call(Method::DELETE, &format!("{path}/{username}"), Some(&ro), None).await.expect(403);
    // An unknown identity, or a malformed id: 404.
    s.post(&format!("/v1/identities/{}/sip-credentials", uuid::Uuid::new_v4()), &t.token, json!({})).await.expect(404);
    s.post("/v1/identities/nope/sip-credentials", &t.token, json!({})).await.expect(404);
    // A frozen identity gets none.
    s.post(&format!("/v1/identities/{id}/freeze"), &t.token, json!({})).await.expect(200);
    let r = s.post(&path, &t.token, json!({})).await.expect(423);
    assert_eq!(r.body["reason"], "frozen");
    s.post(&format!("/v1/identities/{id}/unfreeze"), &t.token, json!({})).await.expect(200);
    // At most ten live ones.
    for _ in 1..10 {
        s.post(&path, &t.token, json!({})).await.expect(201);
    }
    s.post(&path, &t.token, json!({})).await.expect(409);
    s.stop().await;
}

/// Twenty creations at once for one identity: never more than its cap of
/// ten live credentials.
async fn the_credential_cap_holds_under_racing_creations(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let id = s.post("/v1/identities", &t.token, json!({"number": "+34612345678"})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let path = format!("/v1/identities/{id}/sip-credentials");
    let tries = (0..20).map(|_| {
        let rb = s.request(Method::POST, &path).bearer_auth(&t.token).json(&json!({}));
        async move { TestServer::send(rb).await.status }
    });
    let statuses = futures_util::future::join_all(tries).await;
    let made = statuses.iter().filter(|&&st| st == 201).count();
    let live = s.get(&path, &t.token).await.expect(200).body["data"].as_array().unwrap().len();
    assert_eq!(live, made, "{statuses:?}");
    assert_eq!(live, 10, "the cap of ten did not hold: {statuses:?}");
    s.stop().await;
}
