//! Logs are JSON lines with the request's facts and none of its secrets or
//! personal data, whatever the client sends.

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer, PASSWORD};

backend_tests!(logs_carry_facts_but_no_secrets);

#[derive(Clone)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn captured() -> Arc<Mutex<Vec<u8>>> {
    static BUF: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    BUF.get_or_init(|| {
        let buf = Arc::new(Mutex::new(Vec::new()));
        let w = Buf(buf.clone());
        palisade::logging::init("debug", move || w.clone());
        buf
    })
    .clone()
}

async fn logs_carry_facts_but_no_secrets(b: Backend) {
    let buf = captured();
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Logged").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    let phone = "+14155550123";
    let card = "4111 1111 1111 1111";
    let secret_email = "private.person@example.org";

    // Plant personal data and secrets everywhere a request can carry them.
    let ua = format!("agent {secret_email} {phone} {card} {key}");
    TestServer::send(
        srv.request(Method::GET, &format!("/v1/me?email={secret_email}&phone={phone}&k={key}&jwt={}", t.token))
            .bearer_auth(&t.token)
            .header("User-Agent", ua.clone())
            .header("X-Request-Id", "planted-request-1"),
    )
    .await
    .expect(200);
    srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": secret_email, "password": PASSWORD})))
        .await
        .expect(401);
    srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": "wrong wrong wrong"})))
        .await
        .expect(401);
    srv.post("/v1/api-keys", &key, json!({"name": format!("{phone} {card} {secret_email}"), "role": "read_only"}))
        .await
        .expect(201);
    TestServer::send(
        srv.request(Method::GET, &format!("/v1/api-keys/{}", t.token)).bearer_auth(&key).header("User-Agent", ua),
    )
    .await
    .expect(404);
    srv.call(Method::GET, "/sysadmin/v1/tenants", Some(&srv.master_key.clone()), None).await.expect(200);
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(200);
    // One-time email tokens, sent and used.
    srv.call(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": "new.signup@example.net", "password": PASSWORD, "tenant_name": "N"})),
    )
    .await
    .expect(201);
    let verify = srv.mailed_token("new.signup@example.net");
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": verify}))).await.expect(200);
    srv.post("/v1/users", &t.token, json!({"email": "invitee.person@example.net", "role": "read_only"}))
        .await
        .expect(201);
    let invite = srv.mailed_token("invitee.person@example.net");
    srv.call(Method::POST, "/v1/auth/accept-invite", None, Some(json!({"token": invite, "password": PASSWORD})))
        .await
        .expect(200);
    let master_key = srv.master_key.clone();
    srv.stop().await;

    let out = String::from_utf8(buf.lock().unwrap().clone()).unwrap();
    let digits_of_card = card.replace(' ', "");
    for planted in [
        phone,
        card,
        &digits_of_card,
        secret_email,
        &t.email,
        &key,
        &key[8..],
        &t.token,
        &t.refresh,
        &master_key,
        PASSWORD,
    ] {
        assert!(!out.contains(planted), "`{planted}` reached the log:\n{out}");
    }
    // And the facts are there, as JSON lines.
    // Every line is still valid JSON after redaction.
    for l in out.lines() {
        assert!(serde_json::from_str::<Value>(l).is_ok(), "not JSON: {l}");
    }
    let lines: Vec<Value> = out.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    let me = lines
        .iter()
        .find(|l| l["request_id"] == "planted-request-1")
        .unwrap_or_else(|| panic!("no access line for the planted request:\n{out}"));
    assert_eq!(me["method"], "GET");
    assert_eq!(me["route"], "/v1/me");
    assert_eq!(me["status"], 200);
    assert_eq!(me["client_ip"], "127.0.0.1");
    assert_eq!(me["tenant"], t.id.as_str());
    assert!(me["latency_ms"].is_number());
    let templated = lines.iter().any(|l| l["route"] == "/v1/api-keys/{id}");
    assert!(templated, "routes are logged as templates, not raw paths");
}
