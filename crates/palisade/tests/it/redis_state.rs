//! The abuse state shared through Redis (`redis.url`), and its failure
//! policy while Redis is down. Built as ignored (reported as skipped)
//! unless PALISADE_TEST_REDIS_URL is set; each server uses its own key
//! prefix, and the outage test its own redis-server on a free port.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use palisade_config::{Config, Secret};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer, PASSWORD};

macro_rules! redis_tests {
    ($($name:ident),* $(,)?) => {$(
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL is not set")]
        async fn $name() {
            super::$name().await
        }
    )*};
}

mod tests {
    redis_tests!(limits_and_lockouts_live_in_redis, an_outage_fails_logins_closed_and_recovers);
}

fn prefix() -> String {
    format!("it-{}", uuid::Uuid::new_v4().simple())
}

fn use_redis(c: &mut Config, url: &str, prefix: &str) {
    c.redis.url = Some(Secret::new(url.to_owned()));
    c.redis.key_prefix = prefix.to_owned();
}

async fn login(s: &TestServer, email: &str, password: &str) -> Resp {
    s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": password}))).await
}

async fn redis_keys(url: &str, prefix: &str) -> Vec<String> {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("KEYS").arg(format!("{{{prefix}:*")).query_async(&mut conn).await.unwrap()
}

pub async fn limits_and_lockouts_live_in_redis() {
    let url = std::env::var("PALISADE_TEST_REDIS_URL").expect("PALISADE_TEST_REDIS_URL must be set");
    let prefix = prefix();
    let mut s = TestServer::start_with(Backend::Sqlite, |c| {
        use_redis(c, &url, &prefix);
        c.rate_limits.key_per_minute = 3;
    })
    .await;
    let ready = s.call(Method::GET, "/readyz", None, None).await.expect(200);
    assert_eq!(ready.body, json!({"status": "ok", "redis": "ok"}));
    let t = s.tenant("Acme").await;
    let (_, key) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    for _ in 0..3 {
        s.get("/v1/me", &key).await.expect(200);
    }
    let r = s.get("/v1/me", &key).await.expect(429);
    assert_eq!(r.body["limit"], "key");
    for _ in 0..5 {
        login(&s, &t.email, "not the password at all").await.expect(401);
    }
    // Locked: the right password is refused.
    login(&s, &t.email, PASSWORD).await.expect(401);
    // The state is in Redis, under this server's prefix: a key bucket
    // (`b` and kind 3), a login pair (kind 10) and the account's count
    // (kind 13).
    let keys = redis_keys(&url, &prefix).await;
    for kind in [":b3:", ":10:", ":13:"] {
        assert!(keys.iter().any(|k| k.contains(kind)), "{kind} in {keys:?}");
    }
    // A new process has no state of its own: the limit and the lock hold.
    s.restart().await;
    s.get("/v1/me", &key).await.expect(429);
    login(&s, &t.email, PASSWORD).await.expect(401);
    s.clock.advance_ms(15 * 60_000);
    login(&s, &t.email, PASSWORD).await.expect(200);
    s.get("/v1/me", &key).await.expect(200);
    s.stop().await;
}

/// A redis-server of the test's own, killed when dropped.
struct OwnRedis {
    port: u16,
    child: Child,
}

impl OwnRedis {
    async fn start(port: u16) -> OwnRedis {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .args(["--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed for the Redis tests");
        let r = OwnRedis { port, child };
        for _ in 0..100 {
            if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
                return r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("redis-server did not start on port {port}");
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn metrics(s: &TestServer) -> String {
    let addr = s.metrics_addr().unwrap();
    reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
}

async fn ready(s: &TestServer) -> Value {
    s.call(Method::GET, "/readyz", None, None).await.expect(200).body
}

pub async fn an_outage_fails_logins_closed_and_recovers() {
    let redis = OwnRedis::start(free_port()).await;
    let port = redis.port;
    let url = format!("redis://127.0.0.1:{port}");
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        use_redis(c, &url, &prefix());
        c.redis.retry_ms = 200;
        c.rate_limits.key_per_minute = 5;
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    let t = s.tenant("Acme").await;
    let (_, key) = s.api_key(&t.token, json!({"name": "a", "role": "read_only"})).await;
    s.get("/v1/me", &key).await.expect(200);
    s.get("/v1/me", &key).await.expect(200);
    assert_eq!(ready(&s).await, json!({"status": "ok", "redis": "ok"}));

    redis.stop();
    // Logins fail closed: a 503 with Retry-After, whatever the password.
    for password in [PASSWORD, "not the password at all"] {
        let r = login(&s, &t.email, password).await.expect(503);
        assert_eq!(r.body["reason"], "unavailable", "{}", r.text);
        assert!(r.header("retry-after").is_some());
    }
    // A failed credential cannot be counted: refused alike.
    let r = s.get("/v1/me", &format!("ak_{}", "A".repeat(32))).await;
    assert_eq!(r.status, 503, "{}", r.text);
    // The API keeps working under this process's own limits: the two
    // requests made before are not known here, so five more pass.
    for _ in 0..5 {
        s.get("/v1/me", &key).await.expect(200);
    }
    assert_eq!(s.get("/v1/me", &key).await.expect(429).body["limit"], "key");
    assert_eq!(ready(&s).await, json!({"status": "degraded", "redis": "unreachable"}));
    let text = metrics(&s).await;
    assert!(text.contains("palisade_redis_degraded 1"), "{text}");
    assert!(!text.contains("palisade_redis_failures_total 0"), "{text}");

    // Redis returns (empty): the next calls find it again, by themselves.
    let _redis = OwnRedis::start(port).await;
    let mut status = 0;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = login(&s, &t.email, PASSWORD).await.status;
        if status == 200 {
            break;
        }
        assert_eq!(status, 503);
    }
    assert_eq!(status, 200, "logins did not recover");
    assert_eq!(ready(&s).await, json!({"status": "ok", "redis": "ok"}));
    assert!(metrics(&s).await.contains("palisade_redis_degraded 0"));
    s.stop().await;
}
