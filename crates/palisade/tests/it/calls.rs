//! Calls: admission and the concurrent-call quota, per-minute billing with
//! refunds for unanswered calls, hang-up, CDRs written once and immutable
//! in the database, hourly usage, agent confinement.

use palisade_config::Config;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::{Backend, Resp, TestServer};

backend_tests!(
    answered_call_is_billed_per_started_minute,
    unanswered_calls_are_refunded,
    calls_end_by_themselves_in_the_sandbox,
    concurrent_call_quota,
    call_refusals_cost_nothing,
    cdrs_are_immutable,
    hourly_usage,
    agent_tokens_see_their_own_calls_only,
    refunds_restore_the_budget,
    idempotency_keys_are_bound_to_their_route,
    call_create_has_its_own_tenant_limit,
);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";

async fn server(b: Backend, call_secs: u64) -> TestServer {
    TestServer::start_with(b, move |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = call_secs;
    })
    .await
}

/// A tenant with an identity and `credits`; returns (owner token, tenant id, identity id).
async fn tenant(s: &TestServer, credits: i64) -> (String, String, String) {
    let t = s.tenant("Acme").await;
    let i = s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    if credits > 0 {
        s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": credits})))
            .await
            .expect(200);
    }
    (t.token, t.id, i.body["id"].as_str().unwrap().to_owned())
}

async fn call(s: &TestServer, cred: &str, to: &str) -> Resp {
    s.post("/v1/calls", cred, json!({"from": FROM, "to": to})).await
}

async fn balance(s: &TestServer, cred: &str) -> i64 {
    s.get("/v1/balance", cred).await.expect(200).body["balance"].as_i64().unwrap()
}

/// Polls a call until `pred` holds for its status.
async fn wait_call(s: &TestServer, cred: &str, id: &str, pred: impl Fn(&str) -> bool) -> Value {
    for _ in 0..250 {
        let c = s.get(&format!("/v1/calls/{id}"), cred).await.expect(200).body;
        if pred(c["status"].as_str().unwrap()) {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("call {id} never got there");
}

async fn cdr_of(s: &TestServer, cred: &str, call_id: &str) -> Value {
    for _ in 0..250 {
        let list = s.get("/v1/cdrs", cred).await.expect(200).body["data"].as_array().unwrap().clone();
        if let Some(c) = list.into_iter().find(|c| c["call_id"] == call_id) {
            return c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("no CDR for {call_id}");
}

async fn answered_call_is_billed_per_started_minute(b: Backend) {
    let s = server(b, 3600).await;
    let (token, _, identity) = tenant(&s, 100).await;
    let r = call(&s, &token, TO).await.expect(201);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["prepaid"], 10);
    assert_eq!(r.body["identity_id"], identity.as_str());
    assert_eq!(balance(&s, &token).await, 90);
    let id = r.body["id"].as_str().unwrap().to_owned();
    wait_call(&s, &token, &id, |st| st == "in_progress").await;
    s.clock.advance_ms(125_000);
    let ended = s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(200);
    assert_eq!(ended.body["status"], "completed");
    let cdr = cdr_of(&s, &token, &id).await;
    assert_eq!((cdr["duration_secs"].as_i64(), cdr["billed_minutes"].as_i64()), (Some(125), Some(3)));
    assert_eq!(cdr["cost"], 30);
    assert_eq!(cdr["status"], "completed");
    assert_eq!(balance(&s, &token).await, 70);
    s.get(&format!("/v1/cdrs/{}", cdr["id"].as_str().unwrap()), &token).await.expect(200);
    // Once.
    let again = s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(409);
    assert_eq!(again.body["reason"], "conflict");
    assert_eq!(s.get("/v1/cdrs", &token).await.expect(200).body["data"].as_array().unwrap().len(), 1);
    let events = s.events(&token, "resource_type=call").await;
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["call.placed", "call.ended"]);
    // The hang-up is its caller's act.
    assert_eq!(events[1]["actor"]["type"], "user");
    assert!(!events[0].to_string().contains(TO));
    s.stop().await;
}

async fn unanswered_calls_are_refunded(b: Backend) {
    let s = server(b.clone(), 3600).await;
    let (token, _, _) = tenant(&s, 100).await;
    let busy = call(&s, &token, palisade_comms::carrier::magic::BUSY).await.expect(201);
    let c = wait_call(&s, &token, busy.body["id"].as_str().unwrap(), |st| st == "busy").await;
    assert!(c.get("answered_at").is_none());
    let failed = call(&s, &token, palisade_comms::carrier::magic::FAILS).await.expect(201);
    let c = wait_call(&s, &token, failed.body["id"].as_str().unwrap(), |st| st == "failed").await;
    assert_eq!(c["error_code"], "undeliverable");
    let cdr = cdr_of(&s, &token, failed.body["id"].as_str().unwrap()).await;
    assert_eq!((cdr["billed_minutes"].as_i64(), cdr["cost"].as_i64()), (Some(0), Some(0)));
    assert_eq!(balance(&s, &token).await, 100);
    s.stop().await;
    // Hanging up before the answer cancels, and refunds too (this sandbox
    // takes a minute to answer).
    let s = TestServer::start_with(b, |c: &mut Config| c.carrier.sandbox_delay_ms = 60_000).await;
    let (token, _, _) = tenant(&s, 100).await;
    let early = call(&s, &token, TO).await.expect(201);
    let id = early.body["id"].as_str().unwrap();
    let r = s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(200);
    assert_eq!(r.body["status"], "canceled");
    assert_eq!(balance(&s, &token).await, 100);
    assert_eq!(cdr_of(&s, &token, id).await["cost"], 0);
    s.stop().await;
}

async fn calls_end_by_themselves_in_the_sandbox(b: Backend) {
    let s = server(b, 0).await;
    let (token, _, _) = tenant(&s, 100).await;
    let r = call(&s, &token, TO).await.expect(201);
    let id = r.body["id"].as_str().unwrap();
    let c = wait_call(&s, &token, id, |st| st == "completed").await;
    assert!(c.get("answered_at").is_some() && c.get("ended_at").is_some());
    let cdr = cdr_of(&s, &token, id).await;
    assert_eq!((cdr["billed_minutes"].as_i64(), cdr["cost"].as_i64()), (Some(1), Some(10)));
    assert_eq!(balance(&s, &token).await, 90);
    s.stop().await;
}

async fn concurrent_call_quota(b: Backend) {
    let s = server(b.clone(), 3600).await;
    let (token, tenant_id, _) = tenant(&s, 100).await;
    let limits = json!({"concurrent_calls": 2});
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{tenant_id}/limits"), Some(limits)).await.expect(200);
    let first = call(&s, &token, TO).await.expect(201);
    call(&s, &token, TO).await.expect(201);
    let r = call(&s, &token, TO).await.expect(429);
    assert_eq!(r.body["reason"], "concurrent_calls");
    assert_eq!(balance(&s, &token).await, 80);
    assert_eq!(s.get("/v1/calls", &token).await.expect(200).body["data"].as_array().unwrap().len(), 2);
    s.post(&format!("/v1/calls/{}/hangup", first.body["id"].as_str().unwrap()), &token, json!({})).await.expect(200);
    call(&s, &token, TO).await.expect(201);
    // Racing admissions never exceed the quota either.
    let s2 = server(b, 3600).await;
    let (token2, tenant2, _) = tenant(&s2, 1000).await;
    s2.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{tenant2}/limits"), Some(json!({"concurrent_calls": 3})))
        .await
        .expect(200);
    let race = futures_util::future::join_all((0..12).map(|_| call(&s2, &token2, TO))).await;
    assert_eq!(race.iter().filter(|r| r.status == 201).count(), 3);
    assert!(race.iter().all(|r| r.status == 201 || r.body["reason"] == "concurrent_calls"));
    s2.stop().await;
    s.stop().await;
}

async fn call_refusals_cost_nothing(b: Backend) {
    let s = server(b, 3600).await;
    let (token, tenant_id, identity) = tenant(&s, 5).await;
    let r = call(&s, &token, TO).await.expect(402);
    assert_eq!(r.body["reason"], "insufficient_credits");
    assert_eq!(balance(&s, &token).await, 5);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant_id}/credits"), Some(json!({"amount": 95})))
        .await
        .expect(200);
    let path = format!("/v1/identities/{identity}");
    s.call(Method::PATCH, &path, Some(&token), Some(json!({"policy": {"allowed_countries": ["FR"]}})))
        .await
        .expect(200);
    assert_eq!(call(&s, &token, TO).await.expect(429).body["reason"], "country_not_allowed");
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{identity}/freeze"), None).await.expect(200);
    assert_eq!(call(&s, &token, "+33612345678").await.expect(423).body["reason"], "frozen");
    assert_eq!(balance(&s, &token).await, 100);
    assert!(s.get("/v1/calls", &token).await.expect(200).body["data"].as_array().unwrap().is_empty());
    s.stop().await;
}

async fn cdrs_are_immutable(b: Backend) {
    let s = server(b, 0).await;
    let (token, _, _) = tenant(&s, 100).await;
    let r = call(&s, &token, TO).await.expect(201);
    let cdr = cdr_of(&s, &token, r.body["id"].as_str().unwrap()).await;
    let id = cdr["id"].as_str().unwrap();
    // No route changes or removes a CDR...
    for m in [Method::PATCH, Method::DELETE, Method::PUT] {
        let r = s.call(m.clone(), &format!("/v1/cdrs/{id}"), Some(&token), Some(json!({}))).await;
        assert_eq!(r.status, 405, "{m}: {}", r.text);
    }
    // ...and the database refuses it too.
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    for sql in ["UPDATE cdrs SET cost = 0", "DELETE FROM cdrs"] {
        let err = sqlx::query(sql).execute(&mut db).await.expect_err(sql);
        assert!(err.to_string().contains("immutable") || err.to_string().contains("append-only"), "{err}");
    }
    db.close().await.unwrap();
    assert_eq!(s.get(&format!("/v1/cdrs/{id}"), &token).await.expect(200).body["cost"], 10);
    s.stop().await;
}

async fn hourly_usage(b: Backend) {
    let s = server(b, 0).await;
    let (token, _, _) = tenant(&s, 100).await;
    s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "hello"})).await.expect(201);
    s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "a".repeat(200)})).await.expect(201);
    let r = call(&s, &token, TO).await.expect(201);
    cdr_of(&s, &token, r.body["id"].as_str().unwrap()).await;
    let u = s.get("/v1/usage?granularity=hour", &token).await.expect(200);
    let hours = u.body["data"].as_array().unwrap();
    assert_eq!(hours.len(), 1, "{}", u.text);
    assert_eq!(hours[0]["messages"], json!({"count": 2, "units": 3, "cost": 15}));
    assert_eq!(hours[0]["calls"], json!({"count": 1, "units": 1, "cost": 10}));
    assert!(hours[0]["hour"].as_str().unwrap().ends_with(":00:00Z"));
    s.get("/v1/usage?granularity=day", &token).await.expect(400);
    s.stop().await;
}

async fn agent_tokens_see_their_own_calls_only(b: Backend) {
    let s = server(b, 3600).await;
    let (token, _, identity) = tenant(&s, 100).await;
    let other = s.post("/v1/identities", &token, json!({"number": "+34612345679"})).await.expect(201);
    let agent = s.post(&format!("/v1/identities/{identity}/agent-token"), &token, json!({})).await.expect(201).body
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mine = call(&s, &agent, TO).await.expect(201);
    let r = s.post("/v1/calls", &agent, json!({"from": other.body["id"], "to": TO})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    let theirs = s.post("/v1/calls", &token, json!({"from": other.body["id"], "to": TO})).await.expect(201);
    let theirs_id = theirs.body["id"].as_str().unwrap();
    let seen = s.get("/v1/calls", &agent).await.expect(200).body["data"].as_array().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["id"], mine.body["id"]);
    s.get(&format!("/v1/calls/{theirs_id}"), &agent).await.expect(404);
    s.post(&format!("/v1/calls/{theirs_id}/hangup"), &agent, json!({})).await.expect(404);
    s.post(&format!("/v1/calls/{theirs_id}/hangup"), &token, json!({})).await.expect(200);
    let cdr = cdr_of(&s, &token, theirs_id).await;
    s.get(&format!("/v1/cdrs/{}", cdr["id"].as_str().unwrap()), &agent).await.expect(404);
    assert!(s.get("/v1/cdrs", &agent).await.expect(200).body["data"].as_array().unwrap().is_empty());
    // An agent cannot read usage or balance.
    s.get("/v1/usage", &agent).await.expect(403);
    s.stop().await;
}

async fn refunds_restore_the_budget(b: Backend) {
    let s = server(b, 3600).await;
    let t = s.tenant("Acme").await;
    let i =
        s.post("/v1/identities", &t.token, json!({"number": FROM, "policy": {"monthly_budget": 10}})).await.expect(201);
    let id = i.body["id"].as_str().unwrap().to_owned();
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    // The budget holds one minute; a busy call gives it back.
    let busy = call(&s, &t.token, palisade_comms::carrier::magic::BUSY).await.expect(201);
    wait_call(&s, &t.token, busy.body["id"].as_str().unwrap(), |st| st == "busy").await;
    let live = call(&s, &t.token, TO).await.expect(201);
    assert_eq!(call(&s, &t.token, TO).await.expect(429).body["reason"], "monthly_budget");
    let live_id = live.body["id"].as_str().unwrap();
    s.post(&format!("/v1/calls/{live_id}/hangup"), &t.token, json!({})).await.expect(200);
    // Canceled (refunded) or, if the sandbox answered first, one minute.
    let cdr = cdr_of(&s, &t.token, live_id).await;
    assert_eq!(balance(&s, &t.token).await, 100 - cdr["cost"].as_i64().unwrap());
    // Minutes past the prepaid one count against the budget too.
    let path = format!("/v1/identities/{id}");
    let policy = json!({"policy": {"monthly_budget": 30}});
    s.call(Method::PATCH, &path, Some(&t.token), Some(policy)).await.expect(200);
    let long = call(&s, &t.token, TO).await.expect(201);
    let long_id = long.body["id"].as_str().unwrap();
    wait_call(&s, &t.token, long_id, |st| st == "in_progress").await;
    s.clock.advance_ms(150_000);
    s.post(&format!("/v1/calls/{long_id}/hangup"), &t.token, json!({})).await.expect(200);
    assert_eq!(cdr_of(&s, &t.token, long_id).await["cost"], 30);
    assert_eq!(call(&s, &t.token, TO).await.expect(429).body["reason"], "monthly_budget");
    // A frozen identity cannot be deleted (and registered again unfrozen).
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{id}/freeze"), None).await.expect(200);
    s.call(Method::DELETE, &format!("/v1/identities/{id}"), Some(&t.token), None).await.expect(423);
    s.stop().await;
}

async fn idempotency_keys_are_bound_to_their_route(b: Backend) {
    let s = server(b, 3600).await;
    let (token, _, _) = tenant(&s, 100).await;
    let post = |path: &str, body: Value| {
        let rb = s.request(Method::POST, path).bearer_auth(&token).header("idempotency-key", "same-key").json(&body);
        TestServer::send(rb)
    };
    post("/v1/calls", json!({"from": FROM, "to": TO})).await.expect(201);
    let again = post("/v1/calls", json!({"from": FROM, "to": TO})).await.expect(201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let r = post("/v1/messages", json!({"from": FROM, "to": TO, "body": "call"})).await.expect(409);
    assert_eq!(r.body["reason"], "idempotency_key_reused");
    assert_eq!(s.get("/v1/calls", &token).await.expect(200).body["data"].as_array().unwrap().len(), 1);
    assert_eq!(balance(&s, &token).await, 90);
    s.stop().await;
}

async fn call_create_has_its_own_tenant_limit(b: Backend) {
    let s = server(b, 3600).await;
    let (token, tenant_id, _) = tenant(&s, 100).await;
    let limits = json!({"call_create_per_minute": 2});
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{tenant_id}/limits"), Some(limits)).await.expect(200);
    s.clock.advance_ms(1000);
    call(&s, &token, TO).await.expect(201);
    call(&s, &token, TO).await.expect(201);
    let r = call(&s, &token, TO).await.expect(429);
    assert_eq!(r.body["reason"], "rate_limited");
    assert_eq!(r.body["limit"], "call_create");
    assert_eq!(balance(&s, &token).await, 80);
    // Reading calls is not placing them.
    s.get("/v1/calls", &token).await.expect(200);
    s.stop().await;
}
