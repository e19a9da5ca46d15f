//! Single sign-on against an OpenID Connect provider this test runs on
//! loopback: discovery, keys, a token endpoint that checks the client, the
//! redirect URI and the PKCE verifier, and ID tokens it signs (ES256). The
//! person's browser is played by the test: it follows the redirect to the
//! provider, "signs in" there, and comes back with the code.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use palisade_core::Clock as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer};

const CLIENT: &str = "palisade-client";
const SECRET: &str = "idp-client-secret";

struct Key {
    kid: String,
    pem: String,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let kp = rcgen::KeyPair::generate().unwrap();
    let raw = kp.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    Key { kid: kid.into(), pem: kp.serialize_pem(), jwk }
}

/// What the person "signed in" as at the provider, for one code.
struct Grant {
    claims: Value,
    challenge: String,
    redirect_uri: String,
}

#[derive(Default)]
struct Idp {
    issuer: Mutex<String>,
    /// Published keys; the last one signs.
    keys: Mutex<Vec<Key>>,
    grants: Mutex<HashMap<String, Grant>>,
}

async fn discovery(State(idp): State<Arc<Idp>>) -> Json<Value> {
    let iss = idp.issuer.lock().unwrap().clone();
    Json(json!({"issuer": iss, "authorization_endpoint": format!("{iss}/authorize"),
        "token_endpoint": format!("{iss}/token"), "jwks_uri": format!("{iss}/jwks"),
        "token_endpoint_auth_methods_supported": ["client_secret_basic"]}))
}

async fn jwks(State(idp): State<Arc<Idp>>) -> Json<Value> {
    let keys: Vec<Value> = idp.keys.lock().unwrap().iter().map(|k| k.jwk.clone()).collect();
    Json(json!({"keys": keys}))
}

/// RFC 6749 §4.1.3 with RFC 7636 §4.6: the client, the code (once), the
/// same redirect URI, and the verifier of the challenge.
async fn token(
    State(idp): State<Arc<Idp>>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<Value>, (axum::http::StatusCode, Json<Value>)> {
    let form: HashMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let bad = |e: &str| (axum::http::StatusCode::BAD_REQUEST, Json(json!({"error": e})));
    let basic = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default();
    let expected = base64::engine::general_purpose::STANDARD.encode(format!("{CLIENT}:{SECRET}"));
    if basic != format!("Basic {expected}") {
        return Err((axum::http::StatusCode::UNAUTHORIZED, Json(json!({"error": "invalid_client"}))));
    }
    let code = form.get("code").cloned().unwrap_or_default();
    let Some(g) = idp.grants.lock().unwrap().remove(&code) else { return Err(bad("invalid_grant")) };
    let verifier = form.get("code_verifier").cloned().unwrap_or_default();
    if palisade_oidc::code_challenge(&verifier) != g.challenge || form.get("redirect_uri") != Some(&g.redirect_uri) {
        return Err(bad("invalid_grant"));
    }
    let keys = idp.keys.lock().unwrap();
    let k = keys.last().unwrap();
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    let id_token =
        jsonwebtoken::encode(&h, &g.claims, &jsonwebtoken::EncodingKey::from_ec_pem(k.pem.as_bytes()).unwrap())
            .unwrap();
    Ok(Json(json!({"access_token": "opaque", "token_type": "Bearer", "id_token": id_token})))
}

async fn provider() -> Arc<Idp> {
    let idp = Arc::new(Idp::default());
    idp.keys.lock().unwrap().push(key("k1"));
    let app = Router::new()
        .route("/.well-known/openid-configuration", get(discovery))
        .route("/jwks", get(jwks))
        .route("/token", post(token))
        .with_state(idp.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    *idp.issuer.lock().unwrap() = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    idp
}

async fn server(backend: Backend, idp: &Idp) -> TestServer {
    let issuer = idp.issuer.lock().unwrap().clone();
    TestServer::start_with(backend, |c| {
        c.oidc.providers = vec![palisade_config::OidcProvider {
            name: "idp".into(),
            issuer,
            client_id: CLIENT.into(),
            client_secret: Some(palisade_config::Secret::new(SECRET.into())),
            client_secret_file: None,
            allowed_domains: vec![],
        }];
        // Every unknown key id may be looked up (the rotation test).
        c.oidc.key_refetch_secs = 0;
    })
    .await
}

/// A browser that started a sign-in: its cookie and where it was sent.
struct Browser {
    cookie: String,
    state: String,
    nonce: String,
    challenge: String,
    redirect_uri: String,
}

async fn start(s: &TestServer) -> Browser {
    let r = s.call(Method::GET, "/v1/auth/oidc/idp/start", None, None).await.expect(302);
    let location = r.header("location").unwrap().to_owned();
    let cookie = r.header("set-cookie").unwrap().to_owned();
    assert!(cookie.starts_with("__Host-palisade_oidc="), "{cookie}");
    for attr in ["HttpOnly", "Secure", "SameSite=Lax", "Path=/"] {
        assert!(cookie.contains(attr), "{cookie}");
    }
    let url = url::Url::parse(&location).unwrap();
    let q: HashMap<String, String> = url.query_pairs().into_owned().collect();
    assert_eq!((q["client_id"].as_str(), q["code_challenge_method"].as_str()), (CLIENT, "S256"));
    Browser {
        cookie: cookie.split(';').next().unwrap().to_owned(),
        state: q["state"].clone(),
        nonce: q["nonce"].clone(),
        challenge: q["code_challenge"].clone(),
        redirect_uri: q["redirect_uri"].clone(),
    }
}

/// The claims a good sign-in as `email` gets, on the server's clock.
fn claims(s: &TestServer, idp: &Idp, b: &Browser, email: &str) -> Value {
    let now = s.clock.now_ms() / 1000;
    json!({"iss": *idp.issuer.lock().unwrap(), "sub": format!("sub-{email}"), "aud": CLIENT, "iat": now,
        "exp": now + 300, "nonce": b.nonce, "email": email, "email_verified": true})
}

/// The person signs in at the provider (a code for these claims) and the
/// browser comes back with it.
async fn back(s: &TestServer, idp: &Idp, b: &Browser, claims: Value) -> Resp {
    let code = palisade_auth::token::random_base62(24);
    let grant = Grant { claims, challenge: b.challenge.clone(), redirect_uri: b.redirect_uri.clone() };
    idp.grants.lock().unwrap().insert(code.clone(), grant);
    callback(s, b, &code, true).await
}

async fn callback(s: &TestServer, b: &Browser, code: &str, with_cookie: bool) -> Resp {
    let path = format!("/v1/auth/oidc/idp/callback?code={code}&state={}", b.state);
    let mut rb = s.request(Method::GET, &path);
    if with_cookie {
        rb = rb.header("cookie", format!("other=1; {}", b.cookie));
    }
    TestServer::send(rb).await
}

/// The tenant lets its people sign in through the provider.
async fn enable(s: &TestServer, owner_token: &str) {
    let body = json!({"sso_providers": ["idp"]});
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(owner_token), Some(body)).await.expect(200);
    assert_eq!(r.body["sso_providers"], json!(["idp"]));
}

fn refused(r: Resp) -> String {
    let r = r.expect(401);
    assert_eq!(r.body["reason"], "unauthenticated");
    r.body["oidc_error"].as_str().unwrap().to_owned()
}

async fn sso(s: &TestServer, idp: &Idp, email: &str, edit: impl FnOnce(&mut Value)) -> Resp {
    let b = start(s).await;
    let mut c = claims(s, idp, &b, email);
    edit(&mut c);
    back(s, idp, &b, c).await
}

backend_tests!(a_verified_address_signs_its_person_in_once);

async fn a_verified_address_signs_its_person_in_once(backend: Backend) {
    let idp = provider().await;
    let s = server(backend, &idp).await;
    let t = s.tenant("Acme").await;
    let list = s.call(Method::GET, "/v1/auth/oidc/providers", None, None).await.expect(200);
    assert_eq!(list.body["data"][0]["name"], "idp");
    // Until the tenant names the provider, it speaks for none of its people.
    assert_eq!(refused(sso(&s, &idp, &t.email, |_| {}).await), "provider_not_enabled");
    enable(&s, &t.token).await;
    let b = start(&s).await;
    let c = claims(&s, &idp, &b, &t.email.to_uppercase());
    let code = palisade_auth::token::random_base62(24);
    let grant = Grant { claims: c, challenge: b.challenge.clone(), redirect_uri: b.redirect_uri.clone() };
    idp.grants.lock().unwrap().insert(code.clone(), grant);
    let r = callback(&s, &b, &code, true).await.expect(200);
    assert!(r.header("set-cookie").unwrap().contains("Max-Age=0"));
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/me", &access).await.expect(200).body["email"], t.email.as_str());
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["amr"], json!(["fed"]));
    let logins = s.events(&access, "action=auth.login").await;
    assert!(logins.iter().any(|e| e["details"]["method"] == "oidc"), "{logins:?}");
    // The same way back again: the sign-in was used.
    assert_eq!(refused(callback(&s, &b, &code, true).await), "state_unknown");
    // The same code with a new sign-in: the provider refuses it.
    let b2 = start(&s).await;
    assert_eq!(refused(callback(&s, &b2, &code, true).await), "code_rejected");
}

#[tokio::test]
async fn an_id_token_that_does_not_prove_the_person_signs_nobody_in() {
    let idp = provider().await;
    let s = server(Backend::Sqlite, &idp).await;
    let t = s.tenant("Acme").await;
    enable(&s, &t.token).await;
    let email = t.email.clone();
    type Edit = Box<dyn FnOnce(&mut Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        ("wrong_audience", Box::new(|c| c["aud"] = json!("another-client"))),
        ("wrong_issuer", Box::new(|c| c["iss"] = json!("https://evil.example"))),
        ("expired", Box::new(|c| c["exp"] = json!(c["iat"].as_i64().unwrap() - 120))),
        ("bad_nonce", Box::new(|c| c["nonce"] = json!("not-the-nonce"))),
        ("email_not_verified", Box::new(|c| c["email_verified"] = json!(false))),
        ("wrong_azp", Box::new(|c| c["aud"] = json!([CLIENT, "another-client"]))),
    ];
    for (reason, edit) in cases {
        assert_eq!(refused(sso(&s, &idp, &email, edit).await), reason);
    }
    // Nobody has that (verified) address here.
    assert_eq!(refused(sso(&s, &idp, "stranger@elsewhere.example", |_| {}).await), "no_account");
    // A link made in another browser: the cookie is missing.
    let b = start(&s).await;
    let c = claims(&s, &idp, &b, &email);
    let code = palisade_auth::token::random_base62(24);
    let grant = Grant { claims: c, challenge: b.challenge.clone(), redirect_uri: b.redirect_uri.clone() };
    idp.grants.lock().unwrap().insert(code.clone(), grant);
    assert_eq!(refused(callback(&s, &b, &code, false).await), "browser_mismatch");
    // Every refusal was audited with its reason.
    let failed = s.events(&t.token, "action=auth.sso_failed").await;
    let _ = failed; // tenant-less: seen by the operator
    let all = s.admin(Method::GET, "/sysadmin/v1/events?action=auth.sso_failed&limit=100", None).await.expect(200);
    assert!(all.body["data"].as_array().unwrap().len() >= 8, "{}", all.text);
    // The first account that signed the person in is theirs; another
    // account of the provider given the same address later is not.
    sso(&s, &idp, &email, |_| {}).await.expect(200);
    assert_eq!(refused(sso(&s, &idp, &email, |c| c["sub"] = json!("someone-else")).await), "subject_mismatch");
    // A look-alike of the address (a script e folds to e) is another mailbox.
    let look_alike = email.replacen('e', "\u{212f}", 1);
    assert_ne!(look_alike, email);
    let why = refused(sso(&s, &idp, &look_alike, |_| {}).await);
    assert!(why == "no_account" || why == "email_not_verified", "{why}");
    // An unknown provider.
    s.call(Method::GET, "/v1/auth/oidc/nope/start", None, None).await.expect(404);
}

#[tokio::test]
async fn a_rotated_signing_key_is_fetched_and_an_unpublished_one_refused() {
    let idp = provider().await;
    let s = server(Backend::Sqlite, &idp).await;
    let t = s.tenant("Acme").await;
    enable(&s, &t.token).await;
    sso(&s, &idp, &t.email, |_| {}).await.expect(200);
    // The provider rotates: a new key signs, the old one is withdrawn.
    {
        let mut keys = idp.keys.lock().unwrap();
        keys.push(key("k2"));
        keys.remove(0);
    }
    sso(&s, &idp, &t.email, |_| {}).await.expect(200);
    // A token signed by a key the provider never published.
    {
        let mut keys = idp.keys.lock().unwrap();
        let forged = key("k2");
        let published = keys[0].jwk.clone();
        keys[0] = Key { jwk: published, ..forged };
    }
    assert_eq!(refused(sso(&s, &idp, &t.email, |_| {}).await), "bad_signature");
}

#[tokio::test]
async fn a_person_with_a_second_factor_still_gives_it_after_the_provider() {
    let idp = provider().await;
    let s = server(Backend::Sqlite, &idp).await;
    let t = s.tenant("Acme").await;
    enable(&s, &t.token).await;
    let (app, _, _) = crate::mfa::enrol(&s, &t.token).await;
    // The next step: the code that confirmed the enrolment is spent.
    s.clock.advance_ms(30_000);
    // The provider's word is the first factor only: a challenge, no tokens.
    let r = sso(&s, &idp, &t.email, |_| {}).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    assert!(r.body.get("access_token").is_none() && r.body.get("refresh_token").is_none(), "{}", r.text);
    let body = json!({"mfa_token": r.body["mfa_token"], "code": app.code(&s)});
    let r = s.call(Method::POST, "/v1/auth/mfa", None, Some(body)).await.expect(200);
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    let payload = access.split('.').nth(1).unwrap();
    let claims: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["amr"], json!(["fed", "otp", "mfa"]));
    let logins = s.events(&access, "action=auth.login").await;
    let with_both = logins.iter().any(|e| e["details"]["method"] == "oidc" && e["details"]["second_factor"] == "totp");
    assert!(with_both, "{logins:?}");
}

#[tokio::test]
async fn a_tenant_can_require_single_sign_on_with_the_owner_kept_as_break_glass() {
    let idp = provider().await;
    let s = server(Backend::Sqlite, &idp).await;
    let t = s.tenant("Acme").await;
    let member = "member@acme.example.com";
    let (_, member_token) = s.member(&t.token, member, "admin").await;
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(&t.token), Some(json!({"sso_required": true}))).await;
    assert_eq!(r.expect(409).body["reason"], "conflict", "no provider named yet");
    let member_refresh = s
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": member, "password": crate::common::PASSWORD})))
        .await
        .expect(200)
        .body["refresh_token"]
        .as_str()
        .unwrap()
        .to_owned();
    let body = json!({"sso_required": true, "sso_providers": ["idp"]});
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(&t.token), Some(body)).await;
    assert_eq!(r.expect(200).body, json!({"mfa_required": false, "sso_required": true, "sso_providers": ["idp"]}));
    // The member's sessions begun with the password ended with the rule;
    // the owner's did not.
    s.get("/v1/me", &member_token).await.expect(401);
    s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": member_refresh}))).await.expect(401);
    s.get("/v1/me", &t.token).await.expect(200);
    let r =
        s.call(Method::PATCH, "/v1/tenant/security", Some(&t.token), Some(json!({"sso_providers": ["nope"]}))).await;
    assert_eq!(r.expect(409).body["reason"], "conflict");
    // The member's password is right and still refused; SSO signs them in.
    let r = s
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": member, "password": crate::common::PASSWORD})))
        .await
        .expect(403);
    assert_eq!(r.body["reason"], "sso_required");
    sso(&s, &idp, member, |_| {}).await.expect(200);
    // A wrong password still looks like any wrong password (no oracle).
    let r = s
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": member, "password": "wrong but long enough"})))
        .await;
    assert_eq!(r.expect(401).body["reason"], "unauthenticated");
    // The owner keeps the password for the day the provider fails.
    s.login(&t.email, &t.password).await;
}
