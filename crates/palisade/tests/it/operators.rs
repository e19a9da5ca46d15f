//! Operator accounts: sign-in to `/sysadmin` with a password and a TOTP
//! code computed on the test clock, actions audited under the operator,
//! codes used once, sessions that end, and the master key turned off.

use base64::Engine as _;
use palisade_auth::totp::Totp;
use palisade_core::Clock as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer, PASSWORD};

/// Creates an operator as `palisade admin operator create` does; returns
/// its id and its authenticator app.
async fn operator(s: &TestServer, email: &str) -> (String, Totp) {
    let state = s.state();
    let id = uuid::Uuid::new_v4().to_string();
    let secret = Totp::new_secret();
    let sealed = base64::engine::general_purpose::STANDARD
        .encode(state.sealer.seal(&secret, &palisade_api::routes::operators_totp_aad(&id)));
    let hash = state.argon2.hash(PASSWORD.into()).await.unwrap();
    let mut tx = state.db.begin().await.unwrap();
    palisade_store::operators::insert(&mut *tx, &id, email, &hash, &sealed, s.clock.now_ms()).await.unwrap();
    tx.commit().await.unwrap();
    (id, Totp::new(secret, "Palisade", email).unwrap())
}

fn code(s: &TestServer, app: &Totp) -> String {
    app.code_at(u64::try_from(s.clock.now_ms() / 1000).unwrap())
}

async fn login(s: &TestServer, email: &str, password: &str, code: &str) -> Resp {
    let body = json!({"email": email, "password": password, "code": code});
    s.call(Method::POST, "/sysadmin/v1/auth/login", None, Some(body)).await
}

/// The `tenant.created` event of `tenant` and the platform's record of the
/// request behind it.
async fn tenant_created(s: &TestServer, tenant: &str) -> (Value, Value) {
    let events =
        s.admin(Method::GET, &format!("/sysadmin/v1/events?tenant_id={tenant}&action=tenant.created"), None).await;
    let event = events.expect(200).body["data"][0].clone();
    let platform =
        s.admin(Method::GET, "/sysadmin/v1/events?action=sysadmin.tenant_event&limit=100", None).await.expect(200);
    let mine =
        platform.body["data"].as_array().unwrap().iter().find(|e| e["details"]["event_id"] == event["id"]).cloned();
    (event, mine.expect("the platform's record"))
}

#[tokio::test]
async fn an_operator_signs_in_with_password_and_code_and_acts_under_their_name() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (id, app) = operator(&s, "ops@palisade.example").await;
    // Every part must be right; one answer for every failure.
    for (password, c) in [("wrong password here", code(&s, &app)), (PASSWORD, "000000".to_owned())] {
        let r = login(&s, "ops@palisade.example", password, &c).await.expect(401);
        assert_eq!(r.body["detail"], "Invalid email, password or code.");
    }
    login(&s, "nobody@palisade.example", PASSWORD, &code(&s, &app)).await.expect(401);
    let r = login(&s, "ops@palisade.example", PASSWORD, &code(&s, &app)).await.expect(200);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("op_") && r.body["expires_in"] == 900, "{}", r.text);
    // The same code does not sign in twice.
    login(&s, "ops@palisade.example", PASSWORD, &code(&s, &app)).await.expect(401);
    // It opens /sysadmin, and nothing of /v1.
    s.get("/sysadmin/v1/tenants", &token).await.expect(200);
    s.get("/v1/me", &token).await.expect(401);
    let body = json!({"name": "Made by ops", "owner": {"email": "owner@made.example.com", "password": PASSWORD}});
    let created = s.call(Method::POST, "/sysadmin/v1/tenants", Some(&token), Some(body)).await.expect(201);
    let tenant = created.body["id"].as_str().unwrap().to_owned();
    let (event, platform) = tenant_created(&s, &tenant).await;
    // The tenant's record says an operator acted; the platform's says who.
    assert_eq!(event["actor"], json!({"type": "operator", "id": null}), "{event}");
    assert_eq!(platform["actor"], json!({"type": "operator", "id": id}));
    // The master key still works (break-glass), audited as the sysadmin:
    // nobody in particular, not the operator signed in meanwhile.
    s.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    let body = json!({"name": "Made by the key", "owner": {"email": "owner@key.example.com", "password": PASSWORD}});
    let by_key = s.admin(Method::POST, "/sysadmin/v1/tenants", Some(body)).await.expect(201);
    let (event, platform) = tenant_created(&s, by_key.body["id"].as_str().unwrap()).await;
    assert_eq!(event["actor"], json!({"type": "sysadmin", "id": null}), "{event}");
    assert_eq!(platform["actor"], json!({"type": "sysadmin", "id": null}), "{platform}");
    // The session ends at logout, and at its expiry.
    s.call(Method::POST, "/sysadmin/v1/auth/logout", Some(&token), None).await.expect(204);
    s.get("/sysadmin/v1/tenants", &token).await.expect(401);
    s.clock.advance_ms(30_000);
    let r = login(&s, "ops@palisade.example", PASSWORD, &code(&s, &app)).await.expect(200);
    let second = r.body["access_token"].as_str().unwrap().to_owned();
    s.clock.advance_ms(901_000);
    s.get("/sysadmin/v1/tenants", &second).await.expect(401);
}

backend_tests!(wrong_codes_lock_an_operators_second_factor);

async fn wrong_codes_lock_an_operators_second_factor(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (_, app) = operator(&s, "ops@palisade.example").await;
    for _ in 0..5 {
        login(&s, "ops@palisade.example", PASSWORD, "000000").await.expect(401);
    }
    // Locked: the right code is refused too.
    login(&s, "ops@palisade.example", PASSWORD, &code(&s, &app)).await.expect(401);
    s.clock.advance_ms(15 * 60_000 + 1);
    login(&s, "ops@palisade.example", PASSWORD, &code(&s, &app)).await.expect(200);
}

#[tokio::test]
async fn with_the_master_key_disabled_only_operators_get_in() {
    let s = TestServer::start(Backend::Sqlite).await;
    let (_, app) = operator(&s, "ops@palisade.example").await;
    let db = palisade_config::Secret::new(s.db_url.clone());
    let p = s
        .peer_with(|c| {
            c.database.url = Some(db);
            c.admin.master_key = Some(palisade_config::Secret::new("disabled".into()));
        })
        .await;
    let r = p.call(Method::GET, "/sysadmin/v1/tenants", Some(&s.master_key), None).await.expect(401);
    assert_eq!(r.body["reason"], "unauthenticated");
    let r = login(&p, "ops@palisade.example", PASSWORD, &code(&p, &app)).await.expect(200);
    p.get("/sysadmin/v1/tenants", r.body["access_token"].as_str().unwrap()).await.expect(200);
}
