//! Verified credentials served from memory: every change that narrows
//! what one may do refuses the next request, on this instance and (on
//! PostgreSQL) on another within a second; a lost message is bounded by
//! the TTL; unknown credentials leave nothing behind.

use std::time::{Duration, Instant};

use palisade_core::Clock;
use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    revocation_logout_and_removal_refuse_the_next_request,
    demotion_and_freezes_apply_to_the_next_request,
    time_is_judged_at_each_use,
    agent_token_changes_refuse_the_next_request,
    unknown_credentials_are_not_kept,
);

fn hits(s: &TestServer) -> u64 {
    s.state().credentials.cache.counters().hits.get()
}

/// Requests with `cred` until one is served from memory. (On PostgreSQL
/// the database's own announcement of the last change reaches this
/// instance too, a moment later, and may drop the first entry again.)
async fn warm(s: &TestServer, cred: &str) {
    for _ in 0..100 {
        let before = hits(s);
        s.get("/v1/me", cred).await.expect(200);
        if hits(s) > before {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("never served from memory");
}

async fn revocation_logout_and_removal_refuse_the_next_request(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    // A revoked key.
    let (id, key) = s.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    warm(&s, &key).await;
    s.call(Method::DELETE, &format!("/v1/api-keys/{id}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &key).await.expect(401);
    // A session logged out.
    let (token, _) = s.login(&t.email, &t.password).await;
    warm(&s, &token).await;
    s.call(Method::POST, "/v1/auth/logout", Some(&token), None).await.expect(204);
    s.get("/v1/me", &token).await.expect(401);
    // A member removed: their session and the key they are answerable for.
    let (member, member_token) = s.member(&t.token, "m@acme.example.com", "admin").await;
    let (_, member_key) = s.api_key(&member_token, json!({"name": "mk", "role": "admin"})).await;
    warm(&s, &member_token).await;
    warm(&s, &member_key).await;
    s.call(Method::DELETE, &format!("/v1/users/{member}"), Some(&t.token), None).await.expect(204);
    s.get("/v1/me", &member_token).await.expect(401);
    s.get("/v1/me", &member_key).await.expect(401);
    // The rest of the tenant keeps working.
    s.get("/v1/me", &t.token).await.expect(200);
    s.stop().await;
}

async fn demotion_and_freezes_apply_to_the_next_request(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let (member, member_token) = s.member(&t.token, "m@acme.example.com", "admin").await;
    let (_, member_key) = s.api_key(&member_token, json!({"name": "mk", "role": "admin"})).await;
    warm(&s, &member_token).await;
    warm(&s, &member_key).await;
    s.call(Method::PATCH, &format!("/v1/users/{member}"), Some(&t.token), Some(json!({"role": "read_only"})))
        .await
        .expect(200);
    assert_eq!(s.get("/v1/me", &member_token).await.expect(200).body["role"], "read_only");
    s.post("/v1/api-keys", &member_token, json!({"name": "x", "role": "read_only"})).await.expect(403);
    // The key answers to a read-only person now.
    s.get("/v1/users", &member_key).await.expect(200);
    s.post("/v1/api-keys", &member_key, json!({"name": "x", "role": "read_only"})).await.expect(403);

    // The operator freezes the key, then the tenant.
    let (key_id, key) = s.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    warm(&s, &key).await;
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{key_id}/freeze"), None).await.expect(200);
    s.get("/v1/me", &key).await.expect(423);
    s.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{key_id}/unfreeze"), None).await.expect(200);
    warm(&s, &key).await;
    warm(&s, &t.token).await;
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", t.id), None).await.expect(200);
    s.get("/v1/me", &key).await.expect(423);
    s.get("/v1/me", &t.token).await.expect(423);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/unfreeze", t.id), None).await.expect(200);
    s.get("/v1/me", &key).await.expect(200);
    s.stop().await;
}

/// Expiry and a rotation's grace period end while the entry is fresh: the
/// entry keeps the time, not the verdict.
async fn time_is_judged_at_each_use(b: Backend) {
    let s = TestServer::start_with(b, |c| c.auth.credential_cache_ttl_secs = 60).await;
    let t = s.tenant("Acme").await;
    let (id, old) = s.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    let r = s.post(&format!("/v1/api-keys/{id}/rotate"), &t.token, json!({"grace_seconds": 20})).await.expect(200);
    let new = r.body["key"].as_str().unwrap().to_owned();
    let expires = palisade_core::clock::rfc3339(s.clock.now_ms() + 30_000);
    let (_, short) = s.api_key(&t.token, json!({"name": "short", "role": "admin", "expires_at": expires})).await;
    warm(&s, &old).await;
    warm(&s, &new).await;
    warm(&s, &short).await;
    s.clock.advance_ms(21_000);
    s.get("/v1/me", &old).await.expect(401);
    s.get("/v1/me", &new).await.expect(200);
    s.get("/v1/me", &short).await.expect(200);
    s.clock.advance_ms(10_000);
    s.get("/v1/me", &short).await.expect(401);
    // Address restrictions are the request's: judged each time too.
    let (_, fenced) = s.api_key(&t.token, json!({"name": "f", "role": "admin", "allowed_ips": ["127.0.0.1/32"]})).await;
    warm(&s, &fenced).await;
    let r = s.request(Method::GET, "/v1/me").bearer_auth(&fenced).header("origin", "https://evil.example");
    TestServer::send(r).await.expect(200);
    let (_, origin_bound) =
        s.api_key(&t.token, json!({"name": "o", "role": "admin", "allowed_origins": ["https://app.example"]})).await;
    warm(&s, &origin_bound).await;
    let r = s.request(Method::GET, "/v1/me").bearer_auth(&origin_bound).header("origin", "https://evil.example");
    TestServer::send(r).await.expect(401);
    s.stop().await;
}

async fn agent_token_changes_refuse_the_next_request(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    let r = s.post("/v1/identities", &t.token, json!({"number": "+34612345678", "kind": "agent"})).await.expect(201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let path = format!("/v1/identities/{id}/agent-token");
    let first = s.post(&path, &t.token, json!({})).await.expect(201).body["token"].as_str().unwrap().to_owned();
    warm(&s, &first).await;
    // A new token revokes the old one.
    let second = s.post(&path, &t.token, json!({})).await.expect(201).body["token"].as_str().unwrap().to_owned();
    s.get("/v1/me", &first).await.expect(401);
    warm(&s, &second).await;
    // `/v1/me` is answered from the cached grant: a rename shows at once.
    let renamed = json!({"name": "Front desk"});
    s.call(Method::PATCH, &format!("/v1/identities/{id}"), Some(&t.token), Some(renamed)).await.expect(200);
    assert_eq!(s.get("/v1/me", &second).await.expect(200).body["name"], "Front desk");
    // The tenant's own freeze, then the operator's.
    s.post(&format!("/v1/identities/{id}/freeze"), &t.token, json!({})).await.expect(200);
    s.get("/v1/me", &second).await.expect(423);
    s.post(&format!("/v1/identities/{id}/unfreeze"), &t.token, json!({})).await.expect(200);
    warm(&s, &second).await;
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{id}/freeze"), None).await.expect(200);
    s.get("/v1/me", &second).await.expect(423);
    s.stop().await;
}

async fn unknown_credentials_are_not_kept(b: Backend) {
    let s = TestServer::start(b).await;
    let t = s.tenant("Acme").await;
    warm(&s, &t.token).await;
    let kept = s.state().credentials.cache.len();
    for i in 0..50 {
        s.get("/v1/me", &format!("ak_{:032}", i)).await.expect(401);
        s.get("/v1/me", &format!("at_{:032}", i)).await.expect(401);
    }
    assert_eq!(s.state().credentials.cache.len(), kept);
    s.stop().await;
}

/// How long `cred` keeps working on `s` after the change: polled every 10 ms.
async fn refused_within(s: &TestServer, cred: &str, status: u16, start: Instant) -> Duration {
    loop {
        let r = s.get("/v1/me", cred).await;
        if r.status == status {
            return start.elapsed();
        }
        assert_eq!(r.status, 200, "{}", r.text);
        assert!(start.elapsed() < Duration::from_secs(3), "still accepted after 3 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Two instances on one PostgreSQL database: a change made through A
/// refuses on B, whose cache was warm, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn changes_on_one_instance_refuse_on_another_within_a_second() {
    let a = TestServer::start(Backend::required_postgres()).await;
    let b = a.peer_with(|_| {}).await;
    changes_reach_the_other_instance(&a, &b, "LISTEN").await;
    b.stop().await;
    a.stop().await;
}

/// With the notification lost (B does not listen), B refuses once its
/// entry is older than the TTL, and not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn a_lost_invalidation_lasts_at_most_the_ttl() {
    let a = TestServer::start(Backend::required_postgres()).await;
    let b = a
        .peer_with(|c| {
            c.auth.credential_cache_listen = false;
            c.auth.credential_cache_ttl_secs = 2;
        })
        .await;
    let t = a.tenant("Acme").await;
    let (key_id, key) = a.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    warm(&b, &key).await;
    a.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&t.token), None).await.expect(204);
    // B heard nothing: its entry still serves (what the TTL bounds).
    b.get("/v1/me", &key).await.expect(200);
    b.clock.advance_ms(1_000);
    b.get("/v1/me", &key).await.expect(200);
    b.clock.advance_ms(1_000);
    b.get("/v1/me", &key).await.expect(401);
    b.stop().await;
    a.stop().await;
}

/// B's listening connection is cut: until it listens again it serves
/// nothing from memory (a change it could not hear is not served stale),
/// and it starts again from empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn a_lost_listener_connection_flushes_and_reconnects() {
    use sqlx::Connection;
    let a = TestServer::start(Backend::required_postgres()).await;
    let b = a.peer_with(|_| {}).await;
    let t = a.tenant("Acme").await;
    let (_, key) = a.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    warm(&b, &key).await;
    let flushes = b.state().credentials.cache.counters().flushes.get();
    let mut c = sqlx::PgConnection::connect(&a.db_url).await.unwrap();
    let cut: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE datname = current_database() AND query LIKE 'LISTEN%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(&mut c)
    .await
    .unwrap();
    assert_eq!(cut.len(), 2, "one listener per instance");
    let start = Instant::now();
    while b.state().credentials.cache.counters().flushes.get() < flushes + 2 {
        assert!(start.elapsed() < Duration::from_secs(5), "the listener did not come back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.state().credentials.cache.is_empty());
    warm(&b, &key).await;
    b.stop().await;
    a.stop().await;
}

/// A revocation, a logout, a demotion, a key freeze and a tenant freeze
/// made through `a` refuse on `b`, whose cache was warm, within a second
/// (`how` names the bus in the printed times).
pub(crate) async fn changes_reach_the_other_instance(a: &TestServer, b: &TestServer, how: &str) {
    let t = a.tenant("Acme").await;
    let mut times = Vec::new();

    let (key_id, key) = a.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    warm(b, &key).await;
    let start = Instant::now();
    a.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&t.token), None).await.expect(204);
    times.push(("key revoked", refused_within(b, &key, 401, start).await));

    let (token, _) = a.login(&t.email, &t.password).await;
    warm(b, &token).await;
    let start = Instant::now();
    a.call(Method::POST, "/v1/auth/logout", Some(&token), None).await.expect(204);
    times.push(("logout", refused_within(b, &token, 401, start).await));

    let (member, member_token) = a.member(&t.token, "m@acme.example.com", "admin").await;
    warm(b, &member_token).await;
    let start = Instant::now();
    a.call(Method::PATCH, &format!("/v1/users/{member}"), Some(&t.token), Some(json!({"role": "read_only"})))
        .await
        .expect(200);
    let demoted = loop {
        let r = b.get("/v1/me", &member_token).await.expect(200);
        if r.body["role"] == "read_only" {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(3), "still admin after 3 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    times.push(("demoted", demoted));

    let (key_id, key) = a.api_key(&t.token, json!({"name": "k2", "role": "admin"})).await;
    warm(b, &key).await;
    let start = Instant::now();
    a.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{key_id}/freeze"), None).await.expect(200);
    times.push(("key frozen", refused_within(b, &key, 423, start).await));

    let r = a.post("/v1/identities", &t.token, json!({"number": "+34612345678", "kind": "agent"})).await.expect(201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    let agent = a.post(&format!("/v1/identities/{id}/agent-token"), &t.token, json!({})).await.expect(201).body
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    warm(b, &agent).await;
    let start = Instant::now();
    let renamed = json!({"name": "Front desk"});
    a.call(Method::PATCH, &format!("/v1/identities/{id}"), Some(&t.token), Some(renamed)).await.expect(200);
    let shown = loop {
        if b.get("/v1/me", &agent).await.expect(200).body["name"] == "Front desk" {
            break start.elapsed();
        }
        assert!(start.elapsed() < Duration::from_secs(3), "old name after 3 s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    times.push(("identity renamed", shown));

    warm(b, &t.token).await;
    let start = Instant::now();
    a.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", t.id), None).await.expect(200);
    times.push(("tenant frozen", refused_within(b, &t.token, 423, start).await));

    for (what, took) in &times {
        eprintln!("propagation to the other instance ({how}): {what}: {} ms", took.as_millis());
        assert!(*took < Duration::from_secs(1), "{what}: took {took:?}");
    }
}
