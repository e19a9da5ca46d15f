//! Second factors: TOTP enrolment with a first code and recovery codes, a
//! sign-in that asks for the second factor, codes that work once, wrong
//! factors that lock it, step-up for sensitive operations, and the
//! tenant's rule for owners and admins. Codes are computed on the test
//! clock.

use base64::Engine as _;
use palisade_auth::totp::Totp;
use palisade_core::Clock as _;
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, Tenant, TestServer};

backend_tests!(
    a_confirmed_totp_makes_sign_in_ask_for_it_and_each_code_works_once,
    a_challenge_past_its_lifetime_is_refused,
    a_tenant_can_require_a_second_factor_of_owners_and_admins,
    parallel_guesses_get_no_more_tries_than_allowed,
    sensitive_operations_need_a_recent_second_factor,
);

/// The claims of an access token (its signature is the server's business).
fn claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap()
}

fn now_secs(s: &TestServer) -> u64 {
    u64::try_from(s.clock.now_ms() / 1000).unwrap()
}

/// A person's authenticator app.
pub(crate) struct App(Totp);

impl App {
    pub(crate) fn code(&self, s: &TestServer) -> String {
        self.0.code_at(now_secs(s))
    }
}

/// Enrols `token`'s person; returns their app, the recovery codes and the
/// new access token.
pub(crate) async fn enrol(s: &TestServer, token: &str) -> (App, Vec<String>, String) {
    let body = json!({"password": crate::common::PASSWORD});
    let r = s.call(Method::POST, "/v1/me/mfa/totp", Some(token), Some(body)).await.expect(201);
    let uri = r.body["otpauth_uri"].as_str().unwrap();
    assert!(uri.starts_with("otpauth://totp/Palisade:"), "{uri}");
    let secret = r.body["secret"].as_str().unwrap();
    assert!(uri.contains(&format!("secret={secret}")), "{uri}");
    let bytes = base32_decode(secret);
    assert_eq!(bytes.len(), 20);
    let app = App(Totp::new(bytes, "Palisade", "x").unwrap());
    let r = s.post("/v1/me/mfa/totp/confirm", token, json!({"code": app.code(s)})).await.expect(200);
    let codes: Vec<String> =
        r.body["recovery_codes"].as_array().unwrap().iter().map(|c| c.as_str().unwrap().to_owned()).collect();
    (app, codes, r.body["access_token"].as_str().unwrap().to_owned())
}

fn base32_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let (mut bits, mut acc, mut out) = (0u32, 0u64, Vec::new());
    for c in s.trim_end_matches('=').bytes() {
        acc = (acc << 5) | ALPHABET.iter().position(|a| *a == c).unwrap() as u64;
        bits += 5;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

async fn login(s: &TestServer, email: &str, password: &str) -> Resp {
    s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": password}))).await
}

/// Signs in with the password: the 403 that carries the `mfa_token`.
async fn first_factor(s: &TestServer, t: &Tenant) -> String {
    let r = login(s, &t.email, &t.password).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    assert!(r.body.get("access_token").is_none());
    assert_eq!(r.body["methods"], json!(["totp", "recovery_code"]));
    r.body["mfa_token"].as_str().unwrap().to_owned()
}

async fn second_factor(s: &TestServer, mfa_token: &str, factor: Value) -> Resp {
    let mut body = json!({"mfa_token": mfa_token});
    body.as_object_mut().unwrap().extend(factor.as_object().unwrap().clone());
    s.call(Method::POST, "/v1/auth/mfa", None, Some(body)).await
}

/// Moves the clock to the next TOTP step.
fn next_step(s: &TestServer) {
    s.clock.advance_ms(30_000);
}

async fn a_confirmed_totp_makes_sign_in_ask_for_it_and_each_code_works_once(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    assert_eq!(s.get("/v1/me/mfa", &t.token).await.expect(200).body["totp"], "off");
    let (app, codes, token) = enrol(&s, &t.token).await;
    assert_eq!(codes.len(), 10);
    // The confirming session gave its second factor.
    let c = claims(&token);
    assert_eq!(c["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(c["mfa_time"].as_u64(), Some(now_secs(&s)));
    let st = s.get("/v1/me/mfa", &token).await.expect(200);
    assert_eq!((st.body["totp"].as_str(), st.body["recovery_codes_left"].as_i64()), (Some("on"), Some(10)));
    assert!(s.last_mail_to(&t.email).contains("A second factor was added"));
    // At rest the secret is sealed under the tenant's keys, and no recovery
    // code is stored as typed.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&s.db_url).await.unwrap();
    let (sealed,): (String,) = sqlx::query_as("SELECT secret_sealed FROM user_totp").fetch_one(&pool).await.unwrap();
    assert!(sealed.starts_with("pk1:"), "{sealed}");
    let raw = base64::engine::general_purpose::STANDARD.decode(sealed.rsplit(':').next().unwrap()).unwrap();
    let secret = base32_decode(app.0.secret_base32().as_str());
    assert!(!raw.windows(secret.len()).any(|w| w == secret.as_slice()));
    let hashes: Vec<(String,)> = sqlx::query_as("SELECT code_hash FROM recovery_codes").fetch_all(&pool).await.unwrap();
    assert_eq!(hashes.len(), 10);
    for (h,) in &hashes {
        assert!(codes.iter().all(|c| !h.contains(&c.replace('-', ""))));
    }

    // The password alone gives a challenge, not tokens. The code that
    // confirmed the enrolment does not work again in the same step.
    let mfa_token = first_factor(&s, &t).await;
    second_factor(&s, &mfa_token, json!({"code": app.code(&s)})).await.expect(401);
    let signed_in_at = now_secs(&s);
    next_step(&s);
    let r = second_factor(&s, &mfa_token, json!({"code": app.code(&s)})).await.expect(200);
    let (access, refresh) =
        (r.body["access_token"].as_str().unwrap().to_owned(), r.body["refresh_token"].as_str().unwrap().to_owned());
    let c = claims(&access);
    assert_eq!(c["amr"], json!(["pwd", "otp", "mfa"]));
    assert_eq!(c["auth_time"].as_u64(), Some(signed_in_at));
    assert_eq!(c["mfa_time"].as_u64(), Some(now_secs(&s)));
    s.get("/v1/me", &access).await.expect(200);
    // The challenge is used up, and that step's code too.
    second_factor(&s, &mfa_token, json!({"code": app.code(&s)})).await.expect(401);
    let again = first_factor(&s, &t).await;
    second_factor(&s, &again, json!({"code": app.code(&s)})).await.expect(401);
    // A refreshed token says the same of how the session began.
    s.clock.advance_ms(60_000);
    let r = s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh}))).await.expect(200);
    let refreshed = claims(r.body["access_token"].as_str().unwrap());
    assert_eq!(
        (&refreshed["amr"], &refreshed["auth_time"], &refreshed["mfa_time"]),
        (&c["amr"], &c["auth_time"], &c["mfa_time"])
    );
    // A code by mail is a first factor too.
    s.call(Method::POST, "/v1/auth/email-code", None, Some(json!({"email": t.email}))).await.expect(202);
    let mut mail = String::new();
    for _ in 0..40 {
        mail = s.last_mail_to(&t.email);
        if mail.contains("sign-in code is ") {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    let at = mail.find("sign-in code is ").unwrap() + "sign-in code is ".len();
    let r = s
        .call(
            Method::POST,
            "/v1/auth/email-code/verify",
            None,
            Some(json!({"email": t.email, "code": &mail[at..at + 6]})),
        )
        .await
        .expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    let r = second_factor(&s, r.body["mfa_token"].as_str().unwrap(), json!({"code": app.code(&s)})).await.expect(200);
    assert_eq!(claims(r.body["access_token"].as_str().unwrap())["amr"], json!(["email", "otp", "mfa"]));
    // Audited: the challenge and the sign-in with its second factor.
    let events = s.events(&access, "action=auth.login").await;
    assert!(events.iter().any(|e| e["details"]["second_factor"] == "totp"), "{events:?}");
    assert!(!s.events(&access, "action=auth.mfa_challenged").await.is_empty());
}

#[tokio::test]
async fn a_recovery_code_works_once_and_the_person_is_told() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    let (_app, codes, _) = enrol(&s, &t.token).await;
    let mfa_token = first_factor(&s, &t).await;
    // Typed any way: upper case, spaces for dashes.
    let typed = codes[3].to_uppercase().replace('-', " ");
    let r = second_factor(&s, &mfa_token, json!({"recovery_code": typed})).await.expect(200);
    let access = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&access)["amr"], json!(["pwd", "rec", "mfa"]));
    assert!(s.last_mail_to(&t.email).contains("You have 9 recovery codes left"));
    let again = first_factor(&s, &t).await;
    second_factor(&s, &again, json!({"recovery_code": codes[3]})).await.expect(401);
    second_factor(&s, &again, json!({"recovery_code": "zzzz-zzzz-zzzz"})).await.expect(401);
    second_factor(&s, &again, json!({"recovery_code": codes[4]})).await.expect(200);
    assert_eq!(s.get("/v1/me/mfa", &access).await.expect(200).body["recovery_codes_left"], 8);
    // Both or neither factor: a 400.
    let third = first_factor(&s, &t).await;
    second_factor(&s, &third, json!({})).await.expect(400);
    second_factor(&s, &third, json!({"code": "123456", "recovery_code": codes[5]})).await.expect(400);
    // New codes (a sensitive change: this session gave its factor just now)
    // void the old ones.
    let r = s.call(Method::POST, "/v1/me/mfa/recovery-codes", Some(&access), None).await.expect(200);
    let fresh = r.body["recovery_codes"].as_array().unwrap().clone();
    second_factor(&s, &third, json!({"recovery_code": codes[5]})).await.expect(401);
    second_factor(&s, &third, json!({"recovery_code": fresh[0]})).await.expect(200);
}

#[tokio::test]
async fn wrong_second_factors_in_a_row_lock_it_over_every_challenge() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    let (app, _, _) = enrol(&s, &t.token).await;
    next_step(&s);
    let wrong = |code: String| format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000);
    // Five wrong codes spread over two challenges.
    let first = first_factor(&s, &t).await;
    for _ in 0..3 {
        second_factor(&s, &first, json!({"code": wrong(app.code(&s))})).await.expect(401);
    }
    let second = first_factor(&s, &t).await;
    for _ in 0..2 {
        second_factor(&s, &second, json!({"code": wrong(app.code(&s))})).await.expect(401);
    }
    // Locked: the right code is refused like a wrong one, and takes no try.
    second_factor(&s, &second, json!({"code": app.code(&s)})).await.expect(401);
    let locked = s.events(&t.token, "action=auth.mfa_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    // Fifteen minutes later it works (a new challenge: the old one expired).
    s.clock.advance_ms(15 * 60_000 + 1);
    let third = first_factor(&s, &t).await;
    second_factor(&s, &third, json!({"code": app.code(&s)})).await.expect(200);
}

async fn a_challenge_past_its_lifetime_is_refused(backend: Backend) {
    // A lifetime shorter than the default (300 s): the configured one rules.
    let s = TestServer::start_with(backend, |c| c.auth.mfa.challenge_ttl_secs = 60).await;
    let t = s.tenant("Acme").await;
    let (app, _, _) = enrol(&s, &t.token).await;
    let late = first_factor(&s, &t).await;
    s.clock.advance_ms(61_000);
    second_factor(&s, &late, json!({"code": app.code(&s)})).await.expect(401);
    // The code itself was good (and not spent): a live challenge takes it.
    let live = first_factor(&s, &t).await;
    second_factor(&s, &live, json!({"code": app.code(&s)})).await.expect(200);
}

async fn parallel_guesses_get_no_more_tries_than_allowed(backend: Backend) {
    // From one address the tenth wrong credential locks the address out
    // (tested elsewhere), refusing later guesses before they are counted
    // or audited; here the person's own count is what is under test.
    let s = TestServer::start_with(backend, |c| c.lockout.credential_failures_per_ip = 1000).await;
    let t = s.tenant("Acme").await;
    let (app, _, _) = enrol(&s, &t.token).await;
    next_step(&s);
    let token = first_factor(&s, &t).await;
    let right = app.code(&s);
    let guesses: Vec<String> =
        (1..=20).map(|i| format!("{:06}", (right.parse::<u32>().unwrap() + i) % 1_000_000)).collect();
    let answers =
        futures_util::future::join_all(guesses.iter().map(|g| second_factor(&s, &token, json!({"code": g})))).await;
    assert!(answers.iter().all(|r| r.status == 401));
    // Exactly five were compared; the rest were refused unseen.
    let failed = s.events(&t.token, "action=auth.mfa_failed&limit=100").await;
    assert_eq!(failed.len(), 20);
    assert_eq!(failed.iter().filter(|e| e["details"]["locked"] == false).count(), 5, "{failed:?}");
    assert_eq!(s.events(&t.token, "action=auth.mfa_locked").await.len(), 1);
    second_factor(&s, &token, json!({"code": right})).await.expect(401);
}

async fn sensitive_operations_need_a_recent_second_factor(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    // A person without a second factor (and no tenant rule) is not asked.
    s.api_key(&t.token, json!({"name": "admin", "role": "admin"})).await;
    let (app, _, _) = enrol(&s, &t.token).await;
    next_step(&s);
    let mfa_token = first_factor(&s, &t).await;
    let r = second_factor(&s, &mfa_token, json!({"code": app.code(&s)})).await.expect(200);
    let (fresh, refresh) =
        (r.body["access_token"].as_str().unwrap().to_owned(), r.body["refresh_token"].as_str().unwrap().to_owned());
    let (admin_key_id, _) = s.api_key(&fresh, json!({"name": "admin 2", "role": "admin"})).await;
    let (member, _) = s.member(&fresh, "member@acme.example.com", "read_only").await;
    // Eleven minutes later the session's factor is too old for them.
    s.clock.advance_ms(11 * 60_000);
    let r = s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh}))).await.expect(200);
    let stale = r.body["access_token"].as_str().unwrap().to_owned();
    let refresh2 = r.body["refresh_token"].as_str().unwrap().to_owned();
    let any = uuid::Uuid::new_v4();
    let refused = [
        s.post("/v1/api-keys", &stale, json!({"name": "admin 3", "role": "admin"})).await,
        s.post("/v1/api-keys", &stale, json!({"name": "keys", "permissions": ["keys:manage"]})).await,
        s.call(Method::PATCH, &format!("/v1/users/{member}"), Some(&stale), Some(json!({"role": "admin"}))).await,
        s.call(Method::DELETE, &format!("/v1/users/{member}"), Some(&stale), None).await,
        s.call(Method::DELETE, "/v1/me/mfa/totp", Some(&stale), None).await,
        s.call(Method::POST, "/v1/me/mfa/recovery-codes", Some(&stale), None).await,
        s.post("/v1/users", &stale, json!({"email": "new@acme.example.com", "role": "read_only"})).await,
        s.call(Method::POST, &format!("/v1/api-keys/{admin_key_id}/rotate"), Some(&stale), None).await,
        s.call(Method::DELETE, &format!("/v1/users/{member}/mfa"), Some(&stale), None).await,
        s.call(Method::PATCH, "/v1/tenant/security", Some(&stale), Some(json!({"mfa_required": false}))).await,
        // Secrets shown, data sent elsewhere, data deleted: refused before
        // anything is looked up (so any id does).
        s.post("/v1/webhooks", &stale, json!({"url": "https://hooks.example.com/x", "events": ["*"]})).await,
        s.call(Method::POST, &format!("/v1/webhooks/{any}/rotate-secret"), Some(&stale), None).await,
        s.call(Method::DELETE, &format!("/v1/webhooks/{any}"), Some(&stale), None).await,
        s.call(Method::DELETE, &format!("/v1/identities/{any}"), Some(&stale), None).await,
        s.call(Method::POST, &format!("/v1/identities/{any}/agent-token"), Some(&stale), None).await,
        s.call(Method::POST, &format!("/v1/identities/{any}/sip-credentials"), Some(&stale), None).await,
        s.call(Method::DELETE, &format!("/v1/recordings/{any}"), Some(&stale), None).await,
        s.post("/v1/erasures", &stale, json!({"number": "+34612000999"})).await,
        s.call(Method::PUT, "/v1/tenant/retention", Some(&stale), Some(json!({"messages_days": 30}))).await,
    ];
    for r in refused {
        assert_eq!((r.status, r.body["reason"].as_str()), (403, Some("mfa_required")), "{}", r.text);
    }
    // Everyday work is not sensitive.
    s.api_key(&stale, json!({"name": "reader", "role": "read_only"})).await;
    s.get("/v1/users", &stale).await.expect(200);
    // Step-up: a new access token, and the same requests pass.
    next_step(&s);
    s.post("/v1/auth/step-up", &stale, json!({"code": "000000"})).await.expect(401);
    let r = s.post("/v1/auth/step-up", &stale, json!({"code": app.code(&s)})).await.expect(200);
    assert!(r.body.get("refresh_token").is_none());
    let stepped = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&stepped)["mfa_time"].as_u64(), Some(now_secs(&s)));
    assert!(r.body.get("refresh_token").is_none());
    // A step-up is that token's: a refresh of the session does not carry it.
    let again = s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh2}))).await;
    let refreshed = again.expect(200).body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(claims(&refreshed)["mfa_time"], claims(&stale)["mfa_time"]);
    let r = s.post("/v1/api-keys", &refreshed, json!({"name": "admin 4", "role": "admin"})).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    s.api_key(&stepped, json!({"name": "admin 3", "role": "admin"})).await;
    s.call(Method::PATCH, &format!("/v1/users/{member}"), Some(&stepped), Some(json!({"role": "admin"})))
        .await
        .expect(200);
    // Deleting data passes too; the recording is then looked up, and is
    // not there (the step-up check comes first).
    s.call(Method::DELETE, &format!("/v1/recordings/{any}"), Some(&stepped), None).await.expect(404);
    let r = s.post("/v1/erasures", &stepped, json!({"number": "+34612000999"})).await.expect(200);
    assert_eq!(r.body["messages"], 0);
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&stepped), Some(json!({"messages_days": 30}))).await;
    assert_eq!(r.expect(200).body["messages_days"], 30);
    assert!(!s.events(&stepped, "action=auth.step_up").await.is_empty());
    // Refused ones were audited.
    let denied = s.events(&stepped, "action=permission.denied").await;
    assert!(denied.iter().any(|e| e["details"]["reason"] == "mfa_required"), "{denied:?}");
    // Keys are not people: they have no second factor to give.
    let (_, key) = s.api_key(&stepped, json!({"name": "k", "role": "admin"})).await;
    s.get("/v1/me/mfa", &key).await.expect(403);
    s.post("/v1/auth/step-up", &key, json!({"code": app.code(&s)})).await.expect(403);
    // Removing the factor: then sign-in needs the password alone again.
    s.call(Method::DELETE, "/v1/me/mfa/totp", Some(&stepped), None).await.expect(204);
    login(&s, &t.email, &t.password).await.expect(200);
    s.post("/v1/auth/step-up", &stepped, json!({"code": app.code(&s)})).await.expect(409);
}

/// Starts an enrolment; returns the app of its secret.
async fn begin(s: &TestServer, token: &str) -> App {
    let body = json!({"password": crate::common::PASSWORD});
    let r = s.call(Method::POST, "/v1/me/mfa/totp", Some(token), Some(body)).await.expect(201);
    App(Totp::new(base32_decode(r.body["secret"].as_str().unwrap()), "Palisade", "x").unwrap())
}

#[tokio::test]
async fn enrolling_needs_the_password_and_ends_the_other_sessions() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    // A session alone (a stolen token) cannot put its own factor on the
    // account; a wrong password counts as a failed login.
    for body in [json!({"password": "not the password at all"}), json!({})] {
        let r = s.call(Method::POST, "/v1/me/mfa/totp", Some(&t.token), Some(body)).await;
        assert!(r.status == 403 || r.status == 400, "{}", r.text);
    }
    let r =
        s.call(Method::POST, "/v1/me/mfa/totp", Some(&t.token), Some(json!({"password": "wrong password 1"}))).await;
    assert_eq!(r.expect(403).body["reason"], "reauthentication_required");
    assert!(!s.events(&t.token, "action=auth.password_check_failed").await.is_empty());
    // Until confirmed, sign-in does not ask for it, nor does its code step up.
    let app = begin(&s, &t.token).await;
    assert_eq!(s.get("/v1/me/mfa", &t.token).await.expect(200).body["totp"], "pending");
    let (other, other_refresh) = s.login(&t.email, &t.password).await;
    s.post("/v1/auth/step-up", &t.token, json!({"code": app.code(&s)})).await.expect(409);
    // A second enrolment replaces a pending one.
    let app2 = begin(&s, &t.token).await;
    s.post("/v1/me/mfa/totp/confirm", &t.token, json!({"code": app.code(&s)})).await.expect(401);
    let r = s.post("/v1/me/mfa/totp/confirm", &t.token, json!({"code": app2.code(&s)})).await.expect(200);
    let stepped = r.body["access_token"].as_str().unwrap().to_owned();
    // The other session (signed in without the factor) is over.
    s.get("/v1/me", &other).await.expect(401);
    s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": other_refresh}))).await.expect(401);
    s.get("/v1/me", &stepped).await.expect(200);
    // A confirmed one is kept, and confirming again is no factor check.
    let body = json!({"password": crate::common::PASSWORD});
    s.call(Method::POST, "/v1/me/mfa/totp", Some(&stepped), Some(body)).await.expect(409);
    next_step(&s);
    s.post("/v1/me/mfa/totp/confirm", &stepped, json!({"code": app2.code(&s)})).await.expect(409);
}

#[tokio::test]
async fn a_locked_totp_leaves_recovery_codes_and_an_admin_can_reset_a_lost_factor() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    let (_, member_token) = s.member(&t.token, "member@acme.example.com", "admin").await;
    let (app, codes, _) = enrol(&s, &member_token).await;
    next_step(&s);
    let m = Tenant {
        id: t.id.clone(),
        owner_id: String::new(),
        email: "member@acme.example.com".into(),
        password: crate::common::PASSWORD.into(),
        token: String::new(),
        refresh: String::new(),
    };
    // Someone with the password spends the tries: TOTP locks, the person
    // is told, and their recovery code still lets them in.
    let token = first_factor(&s, &m).await;
    for _ in 0..5 {
        second_factor(&s, &token, json!({"code": "000000"})).await.expect(401);
    }
    second_factor(&s, &token, json!({"code": app.code(&s)})).await.expect(401);
    assert!(s.last_mail_to(&m.email).contains("second factor is locked"), "{}", s.last_mail_to(&m.email));
    second_factor(&s, &token, json!({"recovery_code": codes[0]})).await.expect(200);
    // The phone is lost: an owner resets the factor (a person above them,
    // with no factor of their own: not asked to step up).
    let member_id = s.get("/v1/users", &t.token).await.expect(200).body["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["email"] == m.email.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    s.call(Method::DELETE, &format!("/v1/users/{member_id}/mfa"), Some(&t.token), None).await.expect(204);
    // Again: nothing left to remove, nothing changes.
    s.call(Method::DELETE, &format!("/v1/users/{member_id}/mfa"), Some(&t.token), None).await.expect(204);
    assert_eq!(s.events(&t.token, "action=user.mfa_reset").await.len(), 1);
    assert!(s.last_mail_to(&m.email).contains("was removed by an administrator"));
    // Their sessions ended; the password alone signs in again.
    s.get("/v1/me", &member_token).await.expect(401);
    let (fresh, _) = s.login(&m.email, &m.password).await;
    // An admin cannot reset an owner's.
    let owner_app = enrol(&s, &t.token).await;
    let _ = owner_app;
    let r = s.call(Method::DELETE, &format!("/v1/users/{}/mfa", t.owner_id), Some(&fresh), None).await;
    assert_eq!(r.status, 403, "{}", r.text);
    assert!(!s.events(&fresh, "action=user.mfa_reset").await.is_empty());
}

async fn a_tenant_can_require_a_second_factor_of_owners_and_admins(backend: Backend) {
    let s = TestServer::start(backend).await;
    let t = s.tenant("Acme").await;
    // Only someone with a factor of their own may turn the rule on.
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(&t.token), Some(json!({"mfa_required": true}))).await;
    assert_eq!(r.expect(409).body["reason"], "conflict");
    let (_, reader) = s.member(&t.token, "reader@acme.example.com", "read_only").await;
    let (_, admin) = s.member(&t.token, "admin@acme.example.com", "admin").await;
    s.get("/v1/api-keys", &admin).await.expect(200); // cached as allowed
    let (owner_app, _, owner) = enrol(&s, &t.token).await;
    s.call(Method::PATCH, "/v1/tenant/security", Some(&owner), Some(json!({"mfa_required": true}))).await.expect(200);
    assert_eq!(s.get("/v1/tenant/security", &reader).await.expect(200).body["mfa_required"], true);
    // The admin without a factor: everything that needs a permission is
    // refused at once (the cached session too), reading oneself is not.
    let r = s.get("/v1/api-keys", &admin).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    s.get("/v1/me", &admin).await.expect(200);
    assert_eq!(s.get("/v1/me/mfa", &admin).await.expect(200).body["required"], true);
    s.get("/v1/messages", &reader).await.expect(200);
    assert_eq!(s.get("/v1/me/mfa", &reader).await.expect(200).body["required"], false);
    // A new sign-in is no way around it.
    let (admin2, _) = s.login("admin@acme.example.com", crate::common::PASSWORD).await;
    assert_eq!(s.get("/v1/identities", &admin2).await.expect(403).body["reason"], "mfa_required");
    // Enrolling lets them in.
    let (_, _, admin3) = enrol(&s, &admin2).await;
    s.get("/v1/api-keys", &admin3).await.expect(200);
    // While the rule holds, owners and admins cannot remove their factor.
    let r = s.call(Method::DELETE, "/v1/me/mfa/totp", Some(&admin3), None).await.expect(409);
    assert_eq!(r.body["reason"], "conflict");
    // The owner turns it off (a recent factor: a step-up).
    s.clock.advance_ms(11 * 60_000);
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(&owner), Some(json!({"mfa_required": false}))).await;
    assert_eq!(r.expect(403).body["reason"], "mfa_required");
    let stepped = s.post("/v1/auth/step-up", &owner, json!({"code": owner_app.code(&s)})).await.expect(200);
    let stepped = stepped.body["access_token"].as_str().unwrap().to_owned();
    s.call(Method::PATCH, "/v1/tenant/security", Some(&stepped), Some(json!({"mfa_required": false})))
        .await
        .expect(200);
    // The admin's session from before the enrolment ended with it.
    s.get("/v1/me", &admin).await.expect(401);
    s.get("/v1/api-keys", &admin3).await.expect(200);
    // A key, even the owner's with every permission, cannot change the rules.
    let (_, key) = s.api_key(&stepped, json!({"name": "owner key", "role": "owner"})).await;
    let r = s.call(Method::PATCH, "/v1/tenant/security", Some(&key), Some(json!({"mfa_required": false}))).await;
    assert_eq!(r.expect(403).body["reason"], "forbidden");
    let changes = s.events(&stepped, "action=tenant.security_changed").await;
    assert_eq!(changes.len(), 2, "{changes:?}");
}
