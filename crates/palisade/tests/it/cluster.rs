//! Several instances of one deployment behind a load balancer: two
//! servers on one PostgreSQL database (and, for the abuse state, one Redis
//! under a key prefix of the test's own) behave as one.

use palisade_config::{Config, Secret};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer, PASSWORD};

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";

/// Two instances on a fresh PostgreSQL database.
async fn pair() -> (TestServer, TestServer) {
    let a = TestServer::start_with(Backend::required_postgres(), |c| c.carrier.sandbox_delay_ms = 20).await;
    let b = a.peer().await;
    (a, b)
}

/// Two instances on a fresh PostgreSQL database and one Redis.
async fn pair_on_redis(tweak: impl Fn(&mut Config)) -> (TestServer, TestServer) {
    let url = std::env::var("PALISADE_TEST_REDIS_URL").expect("PALISADE_TEST_REDIS_URL must be set");
    let prefix = format!("it-{}", uuid::Uuid::new_v4().simple());
    let a = TestServer::start_with(Backend::required_postgres(), |c| {
        c.redis.url = Some(Secret::new(url.clone()));
        c.redis.key_prefix = prefix.clone();
        tweak(c);
    })
    .await;
    let b = a.peer().await;
    (a, b)
}

/// A request from a client address of the test's choosing (the test
/// servers trust the loopback proxy).
async fn from(
    s: &TestServer,
    ip: &str,
    method: Method,
    path: &str,
    cred: &str,
    body: Option<Value>,
) -> crate::common::Resp {
    let mut rb = s.request(method, path).bearer_auth(cred).header("x-forwarded-for", ip);
    if let Some(b) = body {
        rb = rb.json(&b);
    }
    TestServer::send(rb).await
}

/// A key limit of N a minute, requests alternating between the
/// instances: exactly N pass, wherever they land.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(postgres_tests, redis_tests)),
    ignore = "PALISADE_TEST_POSTGRES_URL or PALISADE_TEST_REDIS_URL is not set"
)]
async fn a_key_limit_holds_across_instances() {
    let (a, b) = pair_on_redis(|c| c.rate_limits.key_per_minute = 7).await;
    let t = a.tenant("Acme").await;
    let (_, key) = a.api_key(&t.token, json!({"name": "k", "role": "read_only"})).await;
    let mut passed = 0;
    for i in 0..20 {
        let s = if i % 2 == 0 { &a } else { &b };
        let r = s.get("/v1/me", &key).await;
        match r.status {
            200 => passed += 1,
            429 => assert_eq!(r.body["limit"], "key", "{}", r.text),
            other => panic!("unexpected {other}: {}", r.text),
        }
    }
    assert_eq!(passed, 7);
    b.stop().await;
    a.stop().await;
}

/// A login lockout started on one instance holds on the other, and so
/// does a WAF block of a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(postgres_tests, redis_tests)),
    ignore = "PALISADE_TEST_POSTGRES_URL or PALISADE_TEST_REDIS_URL is not set"
)]
async fn lockouts_and_blocks_hold_across_instances() {
    let (a, b) = pair_on_redis(|_| {}).await;
    let t = a.tenant("Acme").await;
    async fn login(s: &TestServer, email: &str, password: &str) -> crate::common::Resp {
        s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": password}))).await
    }
    // Five failures spread over both instances lock the account.
    for i in 0..5 {
        login(if i % 2 == 0 { &a } else { &b }, &t.email, "not the password at all").await.expect(401);
    }
    login(&b, &t.email, PASSWORD).await.expect(401);
    login(&a, &t.email, PASSWORD).await.expect(401);
    a.clock.advance_ms(15 * 60_000);
    login(&b, &t.email, PASSWORD).await.expect(200);

    // Ten WAF violations with one key, alternating instances and
    // addresses: the key is blocked on both.
    let (_, key) = a.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    let links = (0..6).map(|i| format!("https://l{i}.example/x")).collect::<Vec<_>>().join(" ");
    for i in 0..10 {
        let s = if i % 2 == 0 { &a } else { &b };
        let body = json!({"name": links, "role": "read_only"});
        from(s, &format!("203.0.113.{i}"), Method::POST, "/v1/api-keys", &key, Some(body)).await.expect(400);
    }
    for s in [&a, &b] {
        let r = from(s, "198.51.100.1", Method::GET, "/v1/me", &key, None).await.expect(403);
        assert_eq!(r.body["reason"], "blocked");
    }
    b.stop().await;
    a.stop().await;
}

async fn balance(s: &TestServer, cred: &str) -> i64 {
    s.get("/v1/balance", cred).await.expect(200).body["balance"].as_i64().unwrap()
}

/// Retries of one idempotent send, spread over both instances and racing:
/// one message, one charge, the same answer everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn idempotent_retries_on_both_instances_charge_once() {
    let (a, b) = pair().await;
    let t = a.tenant("Acme").await;
    a.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    a.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let (_, key) = a.api_key(&t.token, json!({"name": "sender", "role": "owner"})).await;
    let body = json!({"from": FROM, "to": TO, "body": "once"});
    let post = |s: &TestServer, idem: &str, body: &Value| {
        let rb = s.request(Method::POST, "/v1/messages").bearer_auth(&key).header("idempotency-key", idem).json(body);
        TestServer::send(rb)
    };
    let race =
        futures_util::future::join_all((0..12).map(|i| post(if i % 2 == 0 { &a } else { &b }, "k-1", &body))).await;
    let ids: std::collections::HashSet<String> =
        race.iter().map(|r| r.body["id"].as_str().unwrap_or_else(|| panic!("{}", r.text)).to_owned()).collect();
    assert_eq!(ids.len(), 1, "one message for one key");
    assert_eq!(balance(&a, &key).await, 95);
    assert_eq!(balance(&b, &key).await, 95);
    // The other instance replays the stored answer.
    let again = post(&b, "k-1", &body).await.expect(201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], race[0].body["id"]);
    // And refuses the key for another request.
    let r = post(&b, "k-1", &json!({"from": FROM, "to": TO, "body": "other"})).await.expect(409);
    assert_eq!(r.body["reason"], "idempotency_key_reused");
    assert_eq!(balance(&a, &key).await, 95);
    b.stop().await;
    a.stop().await;
}

/// With `auth.credential_bus = "redis"`, credential changes travel over
/// Redis pub/sub (no PostgreSQL listener is started): a revocation, a
/// logout, a demotion and a tenant freeze made on A refuse on B, whose
/// cache was warm, within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(postgres_tests, redis_tests)),
    ignore = "PALISADE_TEST_POSTGRES_URL or PALISADE_TEST_REDIS_URL is not set"
)]
async fn credential_changes_reach_the_other_instance_over_redis() {
    use sqlx::Connection;
    use std::time::{Duration, Instant};
    let (a, b) = pair_on_redis(|c| c.auth.credential_bus = palisade_config::CredentialBus::Redis).await;
    let mut c = sqlx::PgConnection::connect(&a.db_url).await.unwrap();
    assert_eq!(listen_sessions(&mut c).await, 0, "the Redis bus replaces LISTEN");
    // The default on PostgreSQL is the database's own announcements, even
    // with Redis configured: they cover changes made outside a server.
    let (c1, c2) = pair_on_redis(|_| {}).await;
    let mut conn = sqlx::PgConnection::connect(&c1.db_url).await.unwrap();
    let start = Instant::now();
    loop {
        let listeners = listen_sessions(&mut conn).await;
        if listeners == 2 {
            break;
        }
        if start.elapsed() > Duration::from_secs(5) {
            let all: Vec<(Option<String>, Option<String>)> =
                sqlx::query_as("SELECT datname::text, query FROM pg_stat_activity").fetch_all(&mut conn).await.unwrap();
            panic!("{listeners} listeners, not one per instance: {all:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c2.stop().await;
    c1.stop().await;

    crate::credential_cache::changes_reach_the_other_instance(&a, &b, "Redis pub/sub").await;
    b.stop().await;
    a.stop().await;
}

/// Sessions of the current database listening for notifications.
async fn listen_sessions(c: &mut sqlx::PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query LIKE 'LISTEN%'",
    )
    .fetch_one(c)
    .await
    .unwrap()
}

/// SIP digest state is the cluster's: a (nonce, nc) accepted by one
/// instance is refused by the other, and an address blocked by failures
/// on both is blocked on both.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(
    not(all(postgres_tests, redis_tests)),
    ignore = "PALISADE_TEST_POSTGRES_URL or PALISADE_TEST_REDIS_URL is not set"
)]
async fn sip_replays_and_blocks_hold_across_instances() {
    use crate::sip_edge::{contact, phone, register};
    use crate::sip_ua::Ua;
    let (a, b) = pair_on_redis(|c| c.sip.udp_listen = Some("127.0.0.1:0".into())).await;
    let p = phone(&a, "Acme").await;
    let mut on_a = Ua::udp(a.sip_udp(), &p.user, &p.realm).await;
    let mut on_b = Ua::udp(b.sip_udp(), &p.user, &p.realm).await;
    // A nonce made by one instance is good on the other; its (nonce, nc)
    // is accepted once across both.
    let challenge = on_a.request("REGISTER", &contact(&on_a, 600)).await.unwrap();
    let auth = on_a.authorization(&challenge, "SHA-256", &p.password, 1);
    let mut lines = contact(&on_b, 600);
    lines.push(auth);
    assert_eq!(on_b.request("REGISTER", &lines).await.unwrap().status, 200);
    let replay = on_a.request("REGISTER", &lines).await.unwrap();
    assert_eq!(replay.status, 401, "a (nonce, nc) accepted on one instance was accepted on the other");
    // Failures alternating between the instances block the address on both
    // (the replay was the first of five).
    for i in 0..4 {
        let ua = if i % 2 == 0 { &mut on_a } else { &mut on_b };
        register(ua, "wrong password", "MD5").await;
    }
    for ua in [&mut on_a, &mut on_b] {
        let r = ua.request("REGISTER", &contact(ua, 600)).await.unwrap();
        assert_eq!((r.status, r.warning()), (403, Some("blocked")), "{}", r.raw);
    }
    b.stop().await;
    a.stop().await;
}

/// Streams across instances: a ticket minted on one opens a stream on the
/// other, once in all; a call's audio is on the instance that placed the
/// call (409 on the other); a freeze made through the other instance closes
/// the call's stream within a second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn streams_across_instances() {
    use crate::streams::{closing, next, open};
    use std::time::{Duration, Instant};
    let a = TestServer::start_with(Backend::required_postgres(), |c| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await;
    let b = a.peer().await;
    let t = a.tenant("Streams").await;
    let i = a.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    let identity = i.body["id"].as_str().unwrap().to_owned();
    a.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 1000})))
        .await
        .expect(200);
    let r = a.post("/v1/stream-tickets", &t.token, json!({"resource": "/v1/events/stream"})).await.expect(201);
    let q = format!("/v1/events/stream?ticket={}", r.body["ticket"].as_str().unwrap());
    let mut ws = open(&b, &q, None).await.expect("opened on the other instance");
    next(&mut ws, Duration::from_secs(10)).await.unwrap();
    assert_eq!(open(&a, &q, None).await.err().map(|e| e.0), Some(401), "used up on every instance");

    let call = a.post("/v1/calls", &t.token, json!({"from": FROM, "to": TO})).await.expect(201);
    let path = format!("/v1/calls/{}/stream", call.body["id"].as_str().unwrap());
    assert_eq!(open(&b, &path, Some(&t.token)).await.err().map(|e| e.0), Some(409));
    let mut ws = open(&a, &path, Some(&t.token)).await.expect("upgraded where the call is");
    loop {
        if next(&mut ws, Duration::from_secs(10)).await.unwrap()["event"] == "media" {
            break;
        }
    }
    b.post(&format!("/v1/identities/{identity}/freeze"), &t.token, json!({})).await.expect(200);
    let frozen_at = Instant::now();
    assert_eq!(closing(&mut ws, Duration::from_secs(10)).await, (1008, "identity frozen".to_owned()));
    assert!(frozen_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", frozen_at.elapsed());
    b.stop().await;
    a.stop().await;
}
