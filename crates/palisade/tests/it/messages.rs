//! Messages: admission refusals (each charging and sending nothing), the
//! atomic debit under concurrency, idempotent retries, agent confinement,
//! the sandbox carrier's outcomes.

use palisade_config::Config;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer};

backend_tests!(
    send_is_charged_and_delivered,
    each_refusal_costs_nothing,
    refusals_come_in_admission_order,
    concurrent_sends_never_overdraw,
    idempotent_retries_charge_once,
    agent_tokens_send_and_read_as_their_identity_only,
    carrier_failures_are_recorded_without_provider_details,
    message_create_has_its_own_tenant_limit,
);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c: &mut Config| c.carrier.sandbox_delay_ms = 20).await
}

struct Setup {
    s: TestServer,
    token: String,
    tenant: String,
    identity: String,
}

async fn setup(b: Backend, policy: Value, credits: i64) -> Setup {
    let s = server(b).await;
    let t = s.tenant("Acme").await;
    let r = s.post("/v1/identities", &t.token, json!({"number": FROM, "policy": policy})).await.expect(201);
    if credits > 0 {
        top_up(&s, &t.id, credits).await;
    }
    Setup { token: t.token, tenant: t.id, identity: r.body["id"].as_str().unwrap().to_owned(), s }
}

async fn top_up(s: &TestServer, tenant: &str, amount: i64) {
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant}/credits"), Some(json!({"amount": amount})))
        .await
        .expect(200);
}

async fn send(s: &TestServer, cred: &str, to: &str, body: &str) -> Resp {
    s.post("/v1/messages", cred, json!({"from": FROM, "to": to, "body": body})).await
}

async fn balance(s: &TestServer, cred: &str) -> i64 {
    s.get("/v1/balance", cred).await.expect(200).body["balance"].as_i64().unwrap()
}

async fn count(s: &TestServer, cred: &str) -> usize {
    s.get("/v1/messages?limit=100", cred).await.expect(200).body["data"].as_array().unwrap().len()
}

/// Polls a message until it leaves `queued`/`sent`.
async fn settled(s: &TestServer, cred: &str, id: &str) -> Value {
    for _ in 0..200 {
        let m = s.get(&format!("/v1/messages/{id}"), cred).await.expect(200).body;
        if m["status"] == "delivered" || m["status"] == "failed" {
            return m;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("message {id} never settled");
}

async fn send_is_charged_and_delivered(b: Backend) {
    let x = setup(b, json!({}), 100).await;
    let r = send(&x.s, &x.token, TO, "Your code is 123456").await.expect(201);
    assert_eq!(r.body["status"], "queued");
    assert_eq!(r.body["segments"], 1);
    assert_eq!(r.body["cost"], 5);
    assert_eq!(r.body["identity_id"], x.identity.as_str());
    assert_eq!(balance(&x.s, &x.token).await, 95);
    let id = r.body["id"].as_str().unwrap();
    assert_eq!(settled(&x.s, &x.token, id).await["status"], "delivered");
    // Two segments cost twice; the same identity by id works too.
    let long = "a".repeat(161);
    let r = x.s.post("/v1/messages", &x.token, json!({"from": x.identity, "to": TO, "body": long})).await.expect(201);
    assert_eq!((r.body["segments"].as_i64(), r.body["cost"].as_i64()), (Some(2), Some(10)));
    assert_eq!(balance(&x.s, &x.token).await, 85);
    // The audit record names the message, masks the number, omits the body.
    let events = x.s.events(&x.token, "action=message.sent").await;
    assert_eq!(events.len(), 2);
    let text = events[0].to_string();
    assert!(!text.contains(TO) && !text.contains("123456"), "{text}");
    assert_eq!(events[0]["details"]["to"], "…0111");
    x.s.stop().await;
}

/// Refused with `reason`, and nothing was charged or sent.
async fn refused(x: &Setup, status: u16, reason: &str, cred: &str, to: &str) {
    refused_body(x, status, reason, cred, to, "hello").await;
}

async fn refused_body(x: &Setup, status: u16, reason: &str, cred: &str, to: &str, body: &str) {
    let (before, sent) = (balance(&x.s, &x.token).await, count(&x.s, &x.token).await);
    let r = send(&x.s, cred, to, body).await;
    assert_eq!(r.status, status, "{}", r.text);
    assert_eq!(r.body["reason"], reason, "{}", r.text);
    assert_eq!(balance(&x.s, &x.token).await, before, "{reason} charged");
    assert_eq!(count(&x.s, &x.token).await, sent, "{reason} recorded a message");
}

async fn each_refusal_costs_nothing(b: Backend) {
    // Credits.
    let x = setup(b.clone(), json!({}), 0).await;
    refused(&x, 402, "insufficient_credits", &x.token, TO).await;
    top_up(&x.s, &x.tenant, 4).await;
    refused(&x, 402, "insufficient_credits", &x.token, TO).await;
    x.s.stop().await;
    // Countries.
    let x = setup(b.clone(), json!({"allowed_countries": ["FR"]}), 100).await;
    refused(&x, 429, "country_not_allowed", &x.token, TO).await;
    x.s.stop().await;
    // Monthly budget: one message fits.
    let x = setup(b.clone(), json!({"monthly_budget": 5}), 100).await;
    send(&x.s, &x.token, TO, "one").await.expect(201);
    refused(&x, 429, "monthly_budget", &x.token, TO).await;
    x.s.stop().await;
    // Rate: 1/s admits two at once (the bucket holds two seconds).
    let x = setup(b.clone(), json!({"rate_per_second": 1}), 100).await;
    send(&x.s, &x.token, TO, "one").await.expect(201);
    send(&x.s, &x.token, TO, "two").await.expect(201);
    refused(&x, 429, "rate_per_second", &x.token, TO).await;
    x.s.clock.advance_ms(1000);
    send(&x.s, &x.token, TO, "three").await.expect(201);
    x.s.stop().await;
    // Kill-switch.
    let x = setup(b, json!({}), 100).await;
    x.s.admin(Method::POST, &format!("/sysadmin/v1/identities/{}/freeze", x.identity), None).await.expect(200);
    refused(&x, 423, "frozen", &x.token, TO).await;
    x.s.stop().await;
}

async fn refusals_come_in_admission_order(b: Backend) {
    // Every check would refuse: the kill-switch speaks first (whatever the
    // body says), then the WAF, then the rate, then the country, then the
    // budget, then the credits.
    let policy = json!({"rate_per_second": 1, "allowed_countries": ["FR"], "monthly_budget": 0});
    let x = setup(b, policy, 0).await;
    let spam =
        "https://a.example https://b.example https://c.example https://d.example https://e.example https://f.example";
    let freeze = format!("/sysadmin/v1/identities/{}/freeze", x.identity);
    x.s.admin(Method::POST, &freeze, None).await.expect(200);
    refused_body(&x, 423, "frozen", &x.token, TO, spam).await;
    refused(&x, 423, "frozen", &x.token, TO).await;
    x.s.admin(Method::POST, &freeze.replace("freeze", "unfreeze"), None).await.expect(200);
    // The WAF's refusals take no token of the identity's rate.
    refused_body(&x, 400, "blocked", &x.token, TO, spam).await;
    refused_body(&x, 400, "blocked", &x.token, TO, spam).await;
    refused(&x, 429, "country_not_allowed", &x.token, TO).await;
    refused(&x, 429, "country_not_allowed", &x.token, TO).await;
    refused(&x, 429, "rate_per_second", &x.token, TO).await;
    x.s.clock.advance_ms(5000);
    let fr = "+33612345678";
    refused(&x, 429, "monthly_budget", &x.token, fr).await;
    let path = format!("/v1/identities/{}", x.identity);
    x.s.call(Method::PATCH, &path, Some(&x.token), Some(json!({"policy": {"allowed_countries": ["FR"]}})))
        .await
        .expect(200);
    x.s.clock.advance_ms(5000);
    refused(&x, 402, "insufficient_credits", &x.token, fr).await;
    x.s.stop().await;
}

async fn concurrent_sends_never_overdraw(b: Backend) {
    // A balance for exactly ten messages, fifty sends at once.
    let x = setup(b, json!({}), 50).await;
    let bodies: Vec<String> = (0..50).map(|i| format!("message {i}")).collect();
    let results = futures_util::future::join_all(bodies.iter().map(|m| send(&x.s, &x.token, TO, m))).await;
    let ok = results.iter().filter(|r| r.status == 201).count();
    let poor = results.iter().filter(|r| r.status == 402).count();
    assert_eq!((ok, poor), (10, 40), "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert_eq!(balance(&x.s, &x.token).await, 0);
    assert_eq!(count(&x.s, &x.token).await, 10);
    x.s.stop().await;
}

async fn idempotent_retries_charge_once(b: Backend) {
    let x = setup(b, json!({}), 100).await;
    // A key outlives the day the test skips; an access token would not.
    let (_, key) = x.s.api_key(&x.token, json!({"name": "sender", "role": "owner"})).await;
    let body = json!({"from": FROM, "to": TO, "body": "once"});
    let post = |idem: &str, body: &Value| {
        let rb = x.s.request(Method::POST, "/v1/messages").bearer_auth(&key).header("idempotency-key", idem).json(body);
        TestServer::send(rb)
    };
    let first = post("k-1", &body).await.expect(201);
    let again = post("k-1", &body).await.expect(201);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(balance(&x.s, &key).await, 95);
    let r = post("k-1", &json!({"from": FROM, "to": TO, "body": "other"})).await.expect(409);
    assert_eq!(r.body["reason"], "idempotency_key_reused");
    // Racing retries of one key: one message, one charge.
    let race = futures_util::future::join_all((0..10).map(|_| post("k-2", &body))).await;
    let ids: std::collections::HashSet<String> =
        race.iter().map(|r| r.body["id"].as_str().unwrap_or_else(|| panic!("{}", r.text)).to_owned()).collect();
    assert_eq!(ids.len(), 1);
    assert_eq!(balance(&x.s, &key).await, 90);
    assert_eq!(count(&x.s, &key).await, 2);
    // A malformed key is refused before anything happens.
    let r = post("has space", &body).await.expect(400);
    assert_eq!(r.body["reason"], "validation_failed");
    // Keys live 24 hours.
    x.s.clock.advance_ms(24 * 3600 * 1000 + 1);
    let later = post("k-1", &body).await.expect(201);
    assert_ne!(later.body["id"], first.body["id"]);
    assert_eq!(balance(&x.s, &key).await, 85);
    x.s.stop().await;
}

async fn agent_tokens_send_and_read_as_their_identity_only(b: Backend) {
    let x = setup(b, json!({}), 100).await;
    let other = x.s.post("/v1/identities", &x.token, json!({"number": "+34612345679"})).await.expect(201);
    let other_id = other.body["id"].as_str().unwrap().to_owned();
    let agent =
        x.s.post(&format!("/v1/identities/{}/agent-token", x.identity), &x.token, json!({})).await.expect(201).body
            ["token"]
            .as_str()
            .unwrap()
            .to_owned();
    let mine = send(&x.s, &agent, TO, "from the agent").await.expect(201);
    let r = x.s.post("/v1/messages", &agent, json!({"from": other_id, "to": TO, "body": "x"})).await.expect(403);
    assert_eq!(r.body["reason"], "forbidden");
    let theirs =
        x.s.post("/v1/messages", &x.token, json!({"from": other_id, "to": TO, "body": "other"})).await.expect(201);
    let seen = x.s.get("/v1/messages", &agent).await.expect(200).body["data"].as_array().unwrap().clone();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0]["id"], mine.body["id"]);
    x.s.get(&format!("/v1/messages/{}", theirs.body["id"].as_str().unwrap()), &agent).await.expect(404);
    x.s.get(&format!("/v1/messages/{}", mine.body["id"].as_str().unwrap()), &agent).await.expect(200);
    assert_eq!(count(&x.s, &x.token).await, 2);
    x.s.stop().await;
}

async fn carrier_failures_are_recorded_without_provider_details(b: Backend) {
    let x = setup(b, json!({}), 100).await;
    let fails = send(&x.s, &x.token, palisade_comms::carrier::magic::FAILS, "x").await.expect(201);
    let m = settled(&x.s, &x.token, fails.body["id"].as_str().unwrap()).await;
    assert_eq!((m["status"].as_str(), m["error_code"].as_str()), (Some("failed"), Some("undeliverable")));
    let slow = send(&x.s, &x.token, palisade_comms::carrier::magic::TIMES_OUT, "x").await.expect(201);
    let m = settled(&x.s, &x.token, slow.body["id"].as_str().unwrap()).await;
    assert_eq!((m["status"].as_str(), m["error_code"].as_str()), (Some("failed"), Some("carrier_timeout")));
    assert!(!m.to_string().contains("sandbox"), "{m}");
    x.s.stop().await;
}

async fn message_create_has_its_own_tenant_limit(b: Backend) {
    let x = setup(b, json!({}), 100).await;
    let limits = json!({"message_create_per_minute": 2});
    x.s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", x.tenant), Some(limits)).await.expect(200);
    x.s.clock.advance_ms(1000);
    send(&x.s, &x.token, TO, "one").await.expect(201);
    send(&x.s, &x.token, TO, "two").await.expect(201);
    let r = send(&x.s, &x.token, TO, "three").await.expect(429);
    assert_eq!(r.body["limit"], "message_create");
    assert_eq!(balance(&x.s, &x.token).await, 90);
    // Reading is not creating.
    x.s.get("/v1/messages", &x.token).await.expect(200);
    x.s.stop().await;
}
