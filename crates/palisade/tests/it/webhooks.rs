//! Outbound webhooks against a local receiver (allowed through
//! `webhooks.allowed_private_cidrs`), signatures checked with an
//! independent HMAC / Ed25519 implementation; retries under the manual
//! clock, across a restart; inbound payment callbacks.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use hmac::{Hmac, Mac};
use palisade_core::Clock;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Sha256;

use crate::common::{Backend, TestServer};

backend_tests!(
    create_sign_deliver_and_list,
    secret_is_shown_once_and_sealed_at_rest,
    ssrf_forms_are_refused_at_create,
    host_names_are_refused_in_one_voice,
    retries_follow_the_schedule_and_survive_a_restart,
    exhausted_schedule_marks_the_delivery_failed,
    rotation_signs_with_both_secrets_during_grace,
    ed25519_signatures_verify_with_the_public_key,
    gone_disables_the_endpoint_and_says_so,
    failing_for_days_disables_the_endpoint,
    retry_after_is_honoured,
    replay_sends_again_with_the_same_id,
    inbound_payment_tops_up_exactly_once,
    frozen_tenant_deliveries_wait,
    message_status_events_once_each,
    carrier_callback_moves_the_message,
    retention_keeps_pending_deliveries,
    each_tenant_keeps_its_deliveries_for_its_own_period,
    endpoint_cap_holds_under_racing_creates,
);

/// One request the receiver saw.
#[derive(Clone, Debug)]
pub(crate) struct Seen {
    pub(crate) headers: axum::http::HeaderMap,
    pub(crate) body: Vec<u8>,
}

/// A local HTTP receiver answering the queued statuses in order (then 200).
#[derive(Clone)]
pub(crate) struct Receiver {
    pub(crate) url: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    answers: Arc<Mutex<Vec<u16>>>,
}

impl Receiver {
    pub(crate) async fn start() -> Receiver {
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let answers: Arc<Mutex<Vec<u16>>> = Arc::default();
        let (s, a) = (seen.clone(), answers.clone());
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let (s, a) = (s.clone(), a.clone());
                async move {
                    s.lock().unwrap().push(Seen { headers, body: body.to_vec() });
                    let mut a = a.lock().unwrap();
                    let status = if a.is_empty() { 200 } else { a.remove(0) };
                    // A 429 asks for two minutes.
                    let retry_after = if status == 429 { "120" } else { "0" };
                    (axum::http::StatusCode::from_u16(status).unwrap(), [("retry-after", retry_after)], "ok")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, seen, answers }
    }

    fn answer(&self, statuses: &[u16]) {
        self.answers.lock().unwrap().extend_from_slice(statuses);
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits (real time) until `n` requests arrived.
    pub(crate) async fn wait_for(&self, n: usize) -> Vec<Seen> {
        for _ in 0..400 {
            if self.seen.lock().unwrap().len() >= n {
                return self.seen();
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("the receiver saw {} requests, expected {n}", self.seen().len());
    }
}

async fn server(b: Backend) -> TestServer {
    server_with(b, |_| {}).await
}

async fn server_with(b: Backend, tweak: impl FnOnce(&mut palisade_config::Config)) -> TestServer {
    TestServer::start_with(b, |c| {
        c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhooks.poll_ms = 25;
        tweak(c);
    })
    .await
}

/// The independent check: HMAC-SHA256 over `id.timestamp.body` with the
/// secret's bytes, base64, compared with each `v1,` entry.
fn v1_matches(secret: &str, seen: &Seen) -> bool {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let h = |n: &str| seen.headers.get(n).unwrap().to_str().unwrap().to_owned();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).as_bytes());
    mac.update(&seen.body);
    let expected = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    h("webhook-signature").split(' ').any(|s| s == expected)
}

fn payload(seen: &Seen) -> Value {
    serde_json::from_slice(&seen.body).unwrap()
}

async fn endpoint(srv: &TestServer, token: &str, url: &str, events: Value) -> Value {
    srv.post("/v1/webhooks", token, json!({"url": url, "events": events})).await.expect(201).body
}

/// An endpoint for `webhook.test` events at the receiver; its id.
async fn test_endpoint(srv: &TestServer, token: &str, rx: &Receiver) -> String {
    endpoint(srv, token, &rx.url, json!(["webhook.test"])).await["id"].as_str().unwrap().to_owned()
}

/// A server, a receiver, a tenant and its `webhook.test` endpoint there.
async fn with_test_endpoint(b: Backend, tenant: &str) -> (TestServer, Receiver, crate::common::Tenant, String) {
    let srv = server(b).await;
    let rx = Receiver::start().await;
    let t = srv.tenant(tenant).await;
    let id = test_endpoint(&srv, &t.token, &rx).await;
    (srv, rx, t, id)
}

/// A number, credits, and one message from it.
async fn send_a_message(srv: &TestServer, t: &crate::common::Tenant) -> crate::common::Resp {
    srv.post("/v1/identities", &t.token, json!({"number": "+34612000111"})).await.expect(201);
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    srv.post("/v1/messages", &t.token, json!({"from": "+34612000111", "to": "+34612000222", "body": "hi"}))
        .await
        .expect(201)
}

async fn send_test(srv: &TestServer, token: &str, id: &str) {
    srv.post(&format!("/v1/webhooks/{id}/test"), token, json!({})).await.expect(202);
}

async fn deliveries(srv: &TestServer, token: &str, id: &str) -> Vec<Value> {
    let r = srv.get(&format!("/v1/webhooks/{id}/deliveries"), token).await.expect(200);
    r.body["data"].as_array().unwrap().clone()
}

/// Waits until the first delivery has `n` attempts and returns it.
async fn attempts(srv: &TestServer, token: &str, id: &str, n: usize) -> Value {
    for _ in 0..400 {
        let d = deliveries(srv, token, id).await;
        if let Some(first) = d.first() {
            if first["attempts"].as_array().unwrap().len() >= n {
                return first.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("no delivery with {n} attempts: {:?}", deliveries(srv, token, id).await);
}

async fn create_sign_deliver_and_list(b: Backend) {
    let srv = server(b).await;
    let rx = Receiver::start().await;
    let t = srv.tenant("Hooks").await;
    let ep = endpoint(&srv, &t.token, &rx.url, json!(["api_key.created"])).await;
    let secret = ep["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    assert!(base64::engine::general_purpose::STANDARD.decode(&secret[6..]).unwrap().len() >= 24);
    let (key_id, _) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;

    let seen = rx.wait_for(1).await;
    assert!(v1_matches(&secret, &seen[0]), "signature does not verify independently");
    let ts: i64 = seen[0].headers["webhook-timestamp"].to_str().unwrap().parse().unwrap();
    assert!((ts - srv.clock.now_ms() / 1000).abs() <= 5);
    let p = payload(&seen[0]);
    assert_eq!(p["type"], "api_key.created");
    assert_eq!(p["data"]["id"], key_id.as_str());
    assert_eq!(seen[0].headers["content-type"], "application/json");

    // A type it did not subscribe to is not sent.
    srv.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&t.token), None).await.expect(204);
    let id = ep["id"].as_str().unwrap();
    let d = attempts(&srv, &t.token, id, 1).await;
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["id"], seen[0].headers["webhook-id"].to_str().unwrap());
    assert_eq!(d["attempts"][0]["status_code"], 200);
    assert_eq!(d["attempts"][0]["outcome"], "delivered");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rx.seen().len(), 1);

    // CRUD: list, update, delete.
    let l = srv.get("/v1/webhooks", &t.token).await.expect(200);
    assert_eq!(l.body["data"].as_array().unwrap().len(), 1);
    let u = srv
        .call(
            Method::PATCH,
            &format!("/v1/webhooks/{id}"),
            Some(&t.token),
            Some(json!({"events": ["*"], "description": "all"})),
        )
        .await
        .expect(200);
    assert_eq!(u.body["events"], json!(["*"]));
    // The same subscription again (deleted and inserted in one atomic list).
    let path = format!("/v1/webhooks/{id}");
    let again = srv.call(Method::PATCH, &path, Some(&t.token), Some(json!({"events": ["*"]}))).await;
    assert_eq!(again.expect(200).body["events"], json!(["*"]));
    srv.call(Method::PATCH, &format!("/v1/webhooks/{id}"), Some(&t.token), Some(json!({"events": ["nope.event"]})))
        .await
        .expect(400);
    srv.call(Method::DELETE, &format!("/v1/webhooks/{id}"), Some(&t.token), None).await.expect(204);
    srv.get(&format!("/v1/webhooks/{id}"), &t.token).await.expect(404);
    srv.stop().await;
}

async fn secret_is_shown_once_and_sealed_at_rest(b: Backend) {
    let srv = server(b).await;
    let t = srv.tenant("Sealed").await;
    let ep = endpoint(&srv, &t.token, "http://127.0.0.1:9/hook", json!(["*"])).await;
    let secret = ep["secret"].as_str().unwrap();
    let id = ep["id"].as_str().unwrap();
    let got = srv.get(&format!("/v1/webhooks/{id}"), &t.token).await.expect(200);
    assert!(got.body.get("secret").is_none());
    assert!(!got.text.contains(&secret[6..]));
    let listed = srv.get("/v1/webhooks", &t.token).await.expect(200);
    assert!(!listed.text.contains(&secret[6..]));
    let stored: String = sqlx::query_scalar("SELECT secret_sealed FROM webhook_endpoints WHERE id = $1")
        .bind(id)
        .fetch_one(srv.state().db.reader())
        .await
        .unwrap();
    assert!(!stored.contains(&secret[6..]) && !stored.contains(secret));
    // Sealed under the tenant's own data key (v1).
    let sealed = stored.strip_prefix("pk1:1:").expect("sealed under the tenant's key");
    let raw = base64::engine::general_purpose::STANDARD.decode(sealed).unwrap();
    assert!(raw.len() > secret.len(), "sealed: version, nonce, ciphertext and tag");
    srv.stop().await;
}

async fn ssrf_forms_are_refused_at_create(b: Backend) {
    // No private network allowed here: the default.
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Ssrf").await;
    for url in [
        "http://127.0.0.1/hook",
        "http://localhost/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://10.0.0.1/",
        "http://100.64.0.1/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[::ffff:a9fe:a9fe]/",
        "http://2130706433/",
        "http://0x7f.1/",
        "http://0177.0.0.1/",
        "http://127.1/",
        "http://0/",
        "http://224.0.0.1/",
        "http://user:pass@93.184.215.14/",
        "http://localhost.localdomain./",
        "ftp://93.184.215.14/",
        "not a url",
    ] {
        let r = srv.post("/v1/webhooks", &t.token, json!({"url": url, "events": ["*"]})).await;
        assert_eq!(r.status, 400, "{url} was accepted: {}", r.text);
        assert_eq!(r.body["errors"][0]["field"], "url", "{url}: {}", r.text);
    }
    // Unknown types are refused even next to `*`.
    let r = srv.post("/v1/webhooks", &t.token, json!({"url": "https://93.184.215.14/", "events": ["*", "nope"]})).await;
    assert_eq!(r.expect(400).body["errors"][0]["field"], "events");
    assert_eq!(srv.get("/v1/webhooks", &t.token).await.expect(200).body["data"], json!([]));
    srv.stop().await;
}

/// A name this machine resolves to non-public addresses only, other than
/// `localhost` (which the guard refuses by name), if there is one.
async fn name_resolving_to_loopback() -> Option<String> {
    let own = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    for name in [own.trim(), "ip6-localhost", "localhost.localdomain", "runsc", "vm"] {
        if name.is_empty() || name.eq_ignore_ascii_case("localhost") {
            continue;
        }
        let Ok(addrs) = tokio::net::lookup_host((name, 443)).await else { continue };
        let addrs: Vec<_> = addrs.map(|a| a.ip()).collect();
        if !addrs.is_empty() && addrs.iter().all(|ip| palisade_guard::ssrf::is_forbidden(*ip)) {
            return Some(name.to_owned());
        }
    }
    None
}

async fn host_names_are_refused_in_one_voice(b: Backend) {
    let srv = TestServer::start_with(b, |c| c.webhooks.poll_ms = 25).await;
    let t = srv.tenant("Oracle").await;
    let mut names = vec!["http://nonexistent.invalid/hook".to_owned(), "http://localhost/hook".to_owned()];
    names.push("http://api.localhost/hook".to_owned());
    match name_resolving_to_loopback().await {
        Some(n) => names.push(format!("http://{n}/hook")),
        None => eprintln!("no name here resolves to loopback; checking the others"),
    }
    // Create, and update of an existing endpoint: one body for every name.
    let ep = endpoint(&srv, &t.token, "http://93.184.215.14/hook", json!(["webhook.test"])).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    let mut bodies = Vec::new();
    for url in &names {
        let r = srv.post("/v1/webhooks", &t.token, json!({"url": url, "events": ["*"]})).await.expect(400);
        bodies.push((url.clone(), "create", r.problem_shape()));
        let r = srv.call(Method::PATCH, &format!("/v1/webhooks/{id}"), Some(&t.token), Some(json!({"url": url}))).await;
        bodies.push((url.clone(), "update", r.expect(400).problem_shape()));
    }
    for (url, path, body) in &bodies {
        assert_eq!(body, &bodies[0].2, "{url} ({path}) differs from {}", bodies[0].0);
    }
    assert_eq!(bodies[0].2["errors"][0]["message"], "the host must resolve to a public address");
    // An address the tenant typed may be named.
    let r = srv.post("/v1/webhooks", &t.token, json!({"url": "http://127.0.0.1/hook", "events": ["*"]})).await;
    assert_eq!(r.expect(400).body["errors"][0]["message"], "the address 127.0.0.1 is loopback");

    // At send time (the name's answer changed since it was checked): the
    // delivery log says the same of a name that no longer resolves and of
    // one that now resolves to loopback.
    let Some(loopback) = names.get(3) else {
        srv.stop().await;
        return;
    };
    let mut errors = Vec::new();
    for url in [&names[0], loopback] {
        let ep = endpoint(&srv, &t.token, "http://93.184.215.14/hook", json!(["webhook.test"])).await;
        let id = ep["id"].as_str().unwrap().to_owned();
        sqlx::any::install_default_drivers();
        let mut c = <sqlx::AnyConnection as sqlx::Connection>::connect(&srv.db_url).await.unwrap();
        sqlx::query(&format!("UPDATE webhook_endpoints SET url = '{url}' WHERE id = '{id}'"))
            .execute(&mut c)
            .await
            .unwrap();
        send_test(&srv, &t.token, &id).await;
        let attempt = attempts(&srv, &t.token, &id, 1).await["attempts"][0].clone();
        errors.push((attempt["error"].clone(), attempt["status_code"].clone(), attempt["response"].clone()));
    }
    assert_eq!(errors[0], errors[1], "the delivery log tells the two names apart");
    assert_eq!(errors[0].0, "dns");
    srv.stop().await;
}

async fn retries_follow_the_schedule_and_survive_a_restart(b: Backend) {
    let mut srv = server(b).await;
    let rx = Receiver::start().await;
    rx.answer(&[500, 503]);
    let t = srv.tenant("Retry").await;
    let ep = endpoint(&srv, &t.token, &rx.url, json!(["webhook.test"])).await;
    let id = ep["id"].as_str().unwrap().to_owned();
    send_test(&srv, &t.token, &id).await;
    let d = attempts(&srv, &t.token, &id, 1).await;
    assert_eq!(d["status"], "pending");
    assert_eq!(d["attempts"][0]["status_code"], 500);
    assert_eq!(d["attempts"][0]["outcome"], "retry");

    // The second attempt waits for 5 s (±10%) of the clock, not less.
    srv.clock.advance_ms(4_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen().len(), 1);
    srv.clock.advance_ms(2_000);
    let d = attempts(&srv, &t.token, &id, 2).await;
    assert_eq!(d["attempts"][1]["status_code"], 503);

    // Stopped and started again mid-schedule: the queue is in the database.
    srv.restart().await;
    srv.clock.advance_ms(200_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen().len(), 2, "the third attempt waits for 5 min");
    srv.clock.advance_ms(200_000);
    let d = attempts(&srv, &t.token, &id, 3).await;
    assert_eq!(d["status"], "delivered");
    assert_eq!(d["attempts"][2]["outcome"], "delivered");
    let seen = rx.seen();
    assert_eq!(seen.len(), 3);
    let ids: Vec<_> = seen.iter().map(|s| s.headers["webhook-id"].clone()).collect();
    assert!(ids.iter().all(|i| *i == ids[0]), "every attempt carries the same webhook-id");
    assert!(v1_matches(ep["secret"].as_str().unwrap(), &seen[2]));
    srv.stop().await;
}

async fn exhausted_schedule_marks_the_delivery_failed(b: Backend) {
    let srv = server_with(b, |c| c.webhooks.retry_schedule_secs = vec![0, 1]).await;
    let rx = Receiver::start().await;
    rx.answer(&[500, 502, 500]);
    let t = srv.tenant("Exhaust").await;
    let id = test_endpoint(&srv, &t.token, &rx).await;
    send_test(&srv, &t.token, &id).await;
    attempts(&srv, &t.token, &id, 1).await;
    srv.clock.advance_ms(2_000);
    let d = attempts(&srv, &t.token, &id, 2).await;
    assert_eq!(d["status"], "failed");
    assert_eq!(d["attempts"][1]["outcome"], "failed");
    srv.clock.advance_ms(60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen().len(), 2);
    srv.stop().await;
}

async fn rotation_signs_with_both_secrets_during_grace(b: Backend) {
    let srv = server(b).await;
    let rx = Receiver::start().await;
    let t = srv.tenant("Rotate").await;
    let ep = endpoint(&srv, &t.token, &rx.url, json!(["webhook.test"])).await;
    let (id, old) = (ep["id"].as_str().unwrap().to_owned(), ep["secret"].as_str().unwrap().to_owned());
    let r = srv.post(&format!("/v1/webhooks/{id}/rotate-secret"), &t.token, json!({})).await.expect(200);
    let new = r.body["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(r.body["previous_secret_expires_at"].is_string());
    send_test(&srv, &t.token, &id).await;
    let seen = rx.wait_for(1).await;
    assert!(v1_matches(&old, &seen[0]) && v1_matches(&new, &seen[0]));
    assert_eq!(seen[0].headers["webhook-signature"].to_str().unwrap().split(' ').count(), 2);

    // After the grace period only the new secret signs (an API key: the
    // session token would have expired by then).
    let (_, key) = srv.api_key(&t.token, json!({"name": "later", "role": "admin"})).await;
    srv.clock.advance_ms(25 * 3600 * 1000);
    srv.post(&format!("/v1/webhooks/{id}/test"), &key, json!({})).await.expect(202);
    let seen = rx.wait_for(2).await;
    assert!(v1_matches(&new, &seen[1]) && !v1_matches(&old, &seen[1]));
    srv.stop().await;
}

async fn ed25519_signatures_verify_with_the_public_key(b: Backend) {
    use ed25519_dalek::{Signature, Verifier, VerifyingKey};
    let srv = server(b).await;
    let rx = Receiver::start().await;
    let t = srv.tenant("Ed").await;
    let ep = srv
        .post("/v1/webhooks", &t.token, json!({"url": rx.url, "events": ["webhook.test"], "ed25519": true}))
        .await
        .expect(201)
        .body;
    let id = ep["id"].as_str().unwrap();
    let public = srv.get(&format!("/v1/webhooks/{id}"), &t.token).await.expect(200).body["public_key"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(public.starts_with("whpk_"));
    let key_bytes: [u8; 32] =
        base64::engine::general_purpose::STANDARD.decode(&public[5..]).unwrap().try_into().unwrap();
    let key = VerifyingKey::from_bytes(&key_bytes).unwrap();
    send_test(&srv, &t.token, id).await;
    let seen = rx.wait_for(1).await;
    let h = |n: &str| seen[0].headers[n].to_str().unwrap().to_owned();
    let v1a = h("webhook-signature").split(' ').find_map(|s| s.strip_prefix("v1a,").map(str::to_owned)).unwrap();
    let sig: [u8; 64] = base64::engine::general_purpose::STANDARD.decode(v1a).unwrap().try_into().unwrap();
    let mut content = format!("{}.{}.", h("webhook-id"), h("webhook-timestamp")).into_bytes();
    content.extend_from_slice(&seen[0].body);
    key.verify(&content, &Signature::from_bytes(&sig)).expect("v1a verifies");
    assert!(v1_matches(ep["secret"].as_str().unwrap(), &seen[0]), "v1 is sent alongside");
    srv.stop().await;
}

async fn gone_disables_the_endpoint_and_says_so(b: Backend) {
    let srv = server(b).await;
    let (gone, watcher) = (Receiver::start().await, Receiver::start().await);
    gone.answer(&[410]);
    let t = srv.tenant("Gone").await;
    let id = endpoint(&srv, &t.token, &gone.url, json!(["webhook.test"])).await["id"].as_str().unwrap().to_owned();
    endpoint(&srv, &t.token, &watcher.url, json!(["webhook.endpoint_disabled"])).await;
    send_test(&srv, &t.token, &id).await;
    let d = attempts(&srv, &t.token, &id, 1).await;
    assert_eq!(d["status"], "failed", "{d}");
    assert_eq!(d["attempts"][0]["outcome"], "gone");
    let ep = srv.get(&format!("/v1/webhooks/{id}"), &t.token).await.expect(200).body;
    assert_eq!(ep["status"], "disabled");
    let told = watcher.wait_for(1).await;
    let p = payload(&told[0]);
    assert_eq!(p["type"], "webhook.endpoint_disabled");
    assert_eq!(p["data"]["endpoint_id"], id.as_str());
    let audit = srv.events(&t.token, "action=webhook.endpoint_disabled").await;
    assert_eq!(audit.len(), 1);
    // Re-enabled by the tenant, it receives again.
    let r =
        srv.call(Method::PATCH, &format!("/v1/webhooks/{id}"), Some(&t.token), Some(json!({"enabled": true}))).await;
    assert_eq!(r.expect(200).body["status"], "enabled");
    srv.stop().await;
}

async fn failing_for_days_disables_the_endpoint(b: Backend) {
    // The default: disabled after 5 days of failures without a success.
    let srv = server_with(b, |c| c.webhooks.retry_schedule_secs = vec![0, 3 * 86_400, 3 * 86_400]).await;
    let rx = Receiver::start().await;
    rx.answer(&[500, 500, 500]);
    let t = srv.tenant("Failing").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    let id = endpoint(&srv, &key, &rx.url, json!(["webhook.test"])).await["id"].as_str().unwrap().to_owned();
    srv.post(&format!("/v1/webhooks/{id}/test"), &key, json!({})).await.expect(202);
    attempts(&srv, &key, &id, 1).await;
    srv.clock.advance_ms(3 * 86_400_000 + 10 * 3_600_000);
    attempts(&srv, &key, &id, 2).await;
    // Three days of failures: still enabled.
    assert_eq!(srv.get(&format!("/v1/webhooks/{id}"), &key).await.expect(200).body["status"], "enabled");
    srv.clock.advance_ms(3 * 86_400_000 + 10 * 3_600_000);
    attempts(&srv, &key, &id, 3).await;
    let ep = srv.get(&format!("/v1/webhooks/{id}"), &key).await.expect(200).body;
    assert_eq!(ep["status"], "disabled");
    assert_eq!(ep["disabled_reason"], "failing for too long");
    srv.stop().await;
}

async fn retry_after_is_honoured(b: Backend) {
    let (srv, rx, t, id) = with_test_endpoint(b, "Later").await;
    rx.answer(&[429]);
    send_test(&srv, &t.token, &id).await;
    let d = attempts(&srv, &t.token, &id, 1).await;
    assert_eq!(d["attempts"][0]["status_code"], 429);
    // The receiver asked for 120 s rather than the schedule's 5 s.
    srv.clock.advance_ms(60_000);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(rx.seen().len(), 1);
    srv.clock.advance_ms(61_000);
    let d = attempts(&srv, &t.token, &id, 2).await;
    assert_eq!(d["status"], "delivered");
    srv.stop().await;
}

async fn replay_sends_again_with_the_same_id(b: Backend) {
    let (srv, rx, t, id) = with_test_endpoint(b, "Replay").await;
    send_test(&srv, &t.token, &id).await;
    let d = attempts(&srv, &t.token, &id, 1).await;
    let delivery = d["id"].as_str().unwrap();
    srv.post(&format!("/v1/webhooks/{id}/deliveries/{delivery}/replay"), &t.token, json!({})).await.expect(202);
    let seen = rx.wait_for(2).await;
    assert_eq!(seen[0].headers["webhook-id"], seen[1].headers["webhook-id"]);
    let d = attempts(&srv, &t.token, &id, 2).await;
    assert_eq!(d["status"], "delivered");
    let unknown = uuid::Uuid::new_v4();
    srv.post(&format!("/v1/webhooks/{id}/deliveries/{unknown}/replay"), &t.token, json!({})).await.expect(404);
    srv.stop().await;
}

pub(crate) const PAY_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn signed(srv: &TestServer, msg_id: &str, ts: i64, body: &str, secret: &str) -> reqwest::RequestBuilder {
    signed_for(srv, "pay", msg_id, ts, body, secret)
}

pub(crate) fn signed_for(
    srv: &TestServer,
    provider: &str,
    msg_id: &str,
    ts: i64,
    body: &str,
    secret: &str,
) -> reqwest::RequestBuilder {
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{msg_id}.{ts}.{body}").as_bytes());
    let sig = base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
    srv.request(Method::POST, &format!("/v1/inbound/{provider}"))
        .header("content-type", "application/json")
        .header("webhook-id", msg_id)
        .header("webhook-timestamp", ts.to_string())
        .header("webhook-signature", format!("v1,{sig}"))
        .body(body.to_owned())
}

async fn inbound_payment_tops_up_exactly_once(b: Backend) {
    let srv = TestServer::start_with(b, |c| {
        c.inbound.providers.insert(
            "pay".into(),
            palisade_config::InboundProvider {
                kind: palisade_config::InboundKind::Payment,
                secret: Some(palisade_config::Secret::new(PAY_SECRET.into())),
                secret_file: None,
            },
        );
    })
    .await;
    let t = srv.tenant("Payer").await;
    let now = srv.clock.now_ms() / 1000;
    let body = json!({"type": "payment.succeeded", "data": {"tenant_id": t.id, "amount": 500}}).to_string();

    let first = TestServer::send(signed(&srv, "evt_1", now, &body, PAY_SECRET)).await.expect(200);
    assert_eq!(first.body["outcome"], "credited");
    let again = TestServer::send(signed(&srv, "evt_1", now, &body, PAY_SECRET)).await.expect(200);
    assert_eq!(again.body["outcome"], "duplicate");
    // Concurrent copies of a new event: one credit.
    let mut racing = Vec::new();
    for _ in 0..8 {
        racing.push(TestServer::send(signed(&srv, "evt_2", now, &body, PAY_SECRET)));
    }
    let outcomes: Vec<_> =
        futures_util::future::join_all(racing).await.into_iter().map(|r| r.body["outcome"].clone()).collect();
    assert_eq!(outcomes.iter().filter(|o| *o == "credited").count(), 1, "{outcomes:?}");
    assert_eq!(srv.get("/v1/balance", &t.token).await.expect(200).body["balance"], 1000);

    // Refused: wrong secret, tampered body, stale timestamp, no signature.
    let wrong = "whsec_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    let tampered = body.replace("500", "50000");
    for (rb, why) in [
        (signed(&srv, "evt_3", now, &body, wrong), "wrong secret"),
        (signed(&srv, "evt_3", now, &body, PAY_SECRET).body(tampered.clone()), "tampered"),
        (signed(&srv, "evt_3", now - 600, &body, PAY_SECRET), "stale"),
        (srv.request(Method::POST, "/v1/inbound/pay").body(body.clone()), "unsigned"),
    ] {
        let r = TestServer::send(rb).await;
        assert_eq!(r.status, 401, "{why}: {}", r.text);
        assert_eq!(r.body["reason"], "invalid_signature", "{why}");
    }
    assert_eq!(srv.get("/v1/balance", &t.token).await.expect(200).body["balance"], 1000);
    let stored: Vec<(String, i64)> =
        sqlx::query_as("SELECT id, CAST(verified AS BIGINT) FROM inbound_callbacks ORDER BY received_at, id")
            .fetch_all(srv.state().db.reader())
            .await
            .unwrap();
    assert_eq!(stored.len(), 2 + 8 + 4, "every callback is kept, the rejected ones too");
    assert_eq!(stored.iter().filter(|(_, v)| *v == 0).count(), 4);
    srv.call(Method::POST, "/v1/inbound/unknown-provider", None, Some(json!({}))).await.expect(404);
    // A rejected body is kept in part only (anyone can send them).
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(20_000));
    TestServer::send(signed(&srv, "evt_big", now, &big, wrong)).await.expect(401);
    let (payload, headers): (String, String) =
        sqlx::query_as("SELECT payload, headers FROM inbound_callbacks WHERE provider_event_id = 'evt_big'")
            .fetch_one(srv.state().db.reader())
            .await
            .unwrap();
    assert_eq!(payload.len(), 4096);
    assert!(headers.contains("body_sha256") && headers.contains("\"body_bytes\":20010"), "{headers}");

    // The operator's replay: a verified one acts once at most, a rejected one never.
    let verified = stored.iter().find(|(_, v)| *v == 1).unwrap();
    let r = srv.admin(Method::POST, &format!("/sysadmin/v1/inbound/{}/replay", verified.0), None).await.expect(200);
    assert_eq!(r.body["outcome"], "duplicate");
    let rejected = stored.iter().find(|(_, v)| *v == 0).unwrap();
    srv.admin(Method::POST, &format!("/sysadmin/v1/inbound/{}/replay", rejected.0), None).await.expect(409);
    assert_eq!(srv.get("/v1/balance", &t.token).await.expect(200).body["balance"], 1000);
    srv.stop().await;
}

async fn frozen_tenant_deliveries_wait(b: Backend) {
    let srv = server(b).await;
    let rx = Receiver::start().await;
    rx.answer(&[500]);
    let t = srv.tenant("Frozen").await;
    let id = test_endpoint(&srv, &t.token, &rx).await;
    send_test(&srv, &t.token, &id).await;
    attempts(&srv, &t.token, &id, 1).await;
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", t.id), None).await.expect(200);
    // The retry falls due while the tenant is frozen: nothing goes out.
    srv.clock.advance_ms(10_000);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rx.seen().len(), 1, "a frozen tenant's webhooks must not be sent");
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/unfreeze", t.id), None).await.expect(200);
    srv.clock.advance_ms(61_000);
    let d = attempts(&srv, &t.token, &id, 2).await;
    assert_eq!(d["status"], "delivered");
    // The wait used up no attempt.
    assert_eq!(d["attempts"][1]["attempt"], 2);
    srv.stop().await;
}

async fn message_status_events_once_each(b: Backend) {
    let srv = TestServer::start_with(b, |c| {
        c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhooks.poll_ms = 25;
        c.carrier.sandbox_delay_ms = 20;
    })
    .await;
    let rx = Receiver::start().await;
    let t = srv.tenant("Statuses").await;
    endpoint(&srv, &t.token, &rx.url, json!(["message.sent", "message.delivered", "message.failed"])).await;
    let m = send_a_message(&srv, &t).await;
    let seen = rx.wait_for(2).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let seen = if rx.seen().len() > seen.len() { rx.seen() } else { seen };
    let types: Vec<_> = seen.iter().map(|s| payload(s)["type"].as_str().unwrap().to_owned()).collect();
    assert_eq!(types.len(), 2, "{types:?}");
    assert!(types.contains(&"message.sent".to_owned()) && types.contains(&"message.delivered".to_owned()));
    for s in &seen {
        assert_eq!(payload(s)["data"]["id"], m.body["id"]);
    }
    srv.stop().await;
}

async fn carrier_callback_moves_the_message(b: Backend) {
    let srv = TestServer::start_with(b, |c| {
        // The sandbox would report on its own after a minute: the callback is first.
        c.carrier.sandbox_delay_ms = 60_000;
        c.inbound.providers.insert(
            "carrierx".into(),
            palisade_config::InboundProvider {
                kind: palisade_config::InboundKind::Carrier,
                secret: Some(palisade_config::Secret::new("a raw shared secret, not whsec".into())),
                secret_file: None,
            },
        );
    })
    .await;
    let t = srv.tenant("Carried").await;
    let m = send_a_message(&srv, &t).await;
    let id = m.body["id"].as_str().unwrap();
    let now = srv.clock.now_ms() / 1000;
    let body = json!({"type": "message.status", "data": {"message_id": id, "status": "delivered"}}).to_string();
    // The raw secret's bytes are the key (it is not a whsec_ secret).
    let raw = base64::engine::general_purpose::STANDARD.encode("a raw shared secret, not whsec");
    let r = TestServer::send(signed_for(&srv, "carrierx", "c1", now, &body, &raw)).await.expect(200);
    assert_eq!(r.body["outcome"], "status_recorded");
    let mut status = Value::Null;
    for _ in 0..200 {
        status = srv.get(&format!("/v1/messages/{id}"), &t.token).await.expect(200).body["status"].clone();
        if status == "delivered" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert_eq!(status, "delivered");
    // Unverified: refused, and the message is not touched by it.
    let failed = body.replace("delivered", "failed");
    TestServer::send(signed_for(&srv, "carrierx", "c2", now, &failed, PAY_SECRET)).await.expect(401);
    let unknown = json!({"type": "message.status", "data": {"message_id": "nope", "status": "sent"}}).to_string();
    let r = TestServer::send(signed_for(&srv, "carrierx", "c3", now, &unknown, &raw)).await.expect(200);
    assert_eq!(r.body["outcome"], "unknown_message");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(srv.get(&format!("/v1/messages/{id}"), &t.token).await.expect(200).body["status"], "delivered");
    srv.stop().await;
}

async fn retention_keeps_pending_deliveries(b: Backend) {
    let srv = server(b).await;
    let (done, failing) = (Receiver::start().await, Receiver::start().await);
    failing.answer(&[500]);
    let t = srv.tenant("Retained").await;
    let done_id = test_endpoint(&srv, &t.token, &done).await;
    let failing_id = test_endpoint(&srv, &t.token, &failing).await;
    send_test(&srv, &t.token, &done_id).await;
    send_test(&srv, &t.token, &failing_id).await;
    assert_eq!(attempts(&srv, &t.token, &done_id, 1).await["status"], "delivered");
    assert_eq!(attempts(&srv, &t.token, &failing_id, 1).await["status"], "pending");
    let later = srv.clock.now_ms() + 1;
    let removed = palisade_store::webhooks::purge(&srv.state().db, later).await.unwrap();
    // The delivered one: its attempt, delivery and event.
    assert_eq!(removed, 3);
    assert!(deliveries(&srv, &t.token, &done_id).await.is_empty());
    let kept = deliveries(&srv, &t.token, &failing_id).await;
    assert_eq!(kept.len(), 1);
    assert_eq!(kept[0]["attempts"].as_array().unwrap().len(), 1);
    srv.stop().await;
}

async fn endpoint_cap_holds_under_racing_creates(b: Backend) {
    let srv = server(b).await;
    let t = srv.tenant("Acme").await;
    let create =
        || srv.post("/v1/webhooks", &t.token, json!({"url": "http://127.0.0.1:9/hook", "events": ["webhook.test"]}));
    for _ in 0..20 {
        create().await.expect(201);
    }
    let race = futures_util::future::join_all((0..60).map(|_| create())).await;
    assert_eq!(race.iter().filter(|r| r.status == 201).count(), 30);
    assert!(race.iter().all(|r| r.status == 201 || (r.status == 409 && r.body["reason"] == "conflict")));
    let list = srv.get("/v1/webhooks", &t.token).await.expect(200);
    assert_eq!(list.body["data"].as_array().unwrap().len(), 50);
    srv.stop().await;
}

/// A tenant may keep its finished deliveries for less (or more) than the
/// operator's default, within the operator's bounds; another tenant keeps
/// the default. Each removal is in the tenant's audit trail.
async fn each_tenant_keeps_its_deliveries_for_its_own_period(b: Backend) {
    let srv = server(b).await;
    let rx = Receiver::start().await;
    let (short, default) = (srv.tenant("Short").await, srv.tenant("Default").await);
    let mut keys = Vec::new();
    for t in [&short, &default] {
        let id = test_endpoint(&srv, &t.token, &rx).await;
        send_test(&srv, &t.token, &id).await;
        assert_eq!(attempts(&srv, &t.token, &id, 1).await["status"], "delivered");
        // An owner's key: sessions end long before the days pass.
        let (_, key) = srv.api_key(&t.token, json!({"name": "ops", "role": "owner"})).await;
        keys.push((key, id));
    }
    let key = keys[0].0.clone();
    let put = |body: Value| srv.call(Method::PUT, "/v1/tenant/retention", Some(&key), Some(body));
    put(json!({"webhooks_days": 366})).await.expect(400);
    let r = put(json!({"webhooks_days": 1})).await.expect(200).body;
    assert_eq!((r["webhooks_days"].as_i64(), r["webhooks_chosen"].as_bool()), (Some(1), Some(true)));
    assert_eq!(r["webhooks_bounds"], json!({"min_days": 1, "max_days": 365, "default_days": 30}));
    srv.clock.advance_ms(2 * 86_400_000);
    let removed = palisade::apply_webhook_retention(srv.state()).await.unwrap();
    assert_eq!(removed, 3, "the short tenant's attempt, delivery and event");
    assert!(deliveries(&srv, &keys[0].0, &keys[0].1).await.is_empty());
    assert_eq!(deliveries(&srv, &keys[1].0, &keys[1].1).await.len(), 1, "the other keeps the default 30 days");
    let applied = srv.events(&keys[0].0, "action=retention.applied").await;
    assert_eq!(applied[0]["details"]["webhooks"], json!({"removed": 3, "days": 1}));
    assert!(srv.events(&keys[1].0, "action=retention.applied").await.is_empty());
    srv.stop().await;
}
