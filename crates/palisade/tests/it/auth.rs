//! People: sign-up, verification, login, refresh rotation and reuse,
//! logout, expiry, and which credential works where.

use palisade_auth::AccessClaims;
use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer, PASSWORD};

backend_tests!(
    signup_verify_login,
    signup_is_not_an_oracle,
    password_policy,
    login_failure_is_uniform,
    refresh_rotates_and_reuse_revokes_family,
    logout_revokes_token_and_family,
    access_token_expires,
    credentials_only_in_headers,
    bad_tokens_all_look_alike,
    wrong_credential_kind_per_route_group,
    racing_refreshes_cannot_both_win,
    expired_revocations_are_purged,
    openapi_document_is_generated,
    repeated_signup_keeps_the_first_password,
    email_tokens_expire_and_race,
    stale_signups_free_their_address,
    signups_the_operator_funded_are_kept,
    unauthenticated_routes_cap_json,
    hs256_when_configured,
);

async fn signup_verify_login(b: Backend) {
    let srv = TestServer::start(b).await;
    let email = "Signer@Example.COM";
    let r = srv
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": email, "password": PASSWORD, "tenant_name": "Signers"})),
        )
        .await
        .expect(201);
    assert_eq!(r.body["status"], "pending_verification");
    // Inactive until verified: the right password says so, a wrong one says nothing.
    let r = srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": PASSWORD}))).await;
    assert_eq!(r.status, 403, "{}", r.text);
    let token = srv.mailed_token("signer@example.com");
    // The mail file is private.
    let outbox = srv.data_dir.join("outbox");
    for e in std::fs::read_dir(&outbox).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(e.unwrap().metadata().unwrap().permissions().mode() & 0o777, 0o600);
    }
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": token}))).await.expect(200);
    // A token works once.
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": token}))).await.expect(400);
    let (access, _) = srv.login("signer@example.com", PASSWORD).await;
    let me = srv.get("/v1/me", &access).await.expect(200);
    assert_eq!(me.body["type"], "user");
    assert_eq!(me.body["email"], "signer@example.com");
    assert_eq!(me.body["role"], "owner");
    assert_eq!(me.body["tenant"]["name"], "Signers");
    let actions: Vec<String> =
        srv.events(&access, "").await.iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    for a in ["auth.signup", "auth.email_verified", "auth.login"] {
        assert!(actions.contains(&a.to_owned()), "{a} missing from {actions:?}");
    }
    srv.stop().await;
}

async fn signup_is_not_an_oracle(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Existing").await;
    let before =
        srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200).body["data"].as_array().unwrap().len();
    let r = srv
        .call(
            Method::POST,
            "/v1/auth/signup",
            None,
            Some(json!({"email": t.email, "password": PASSWORD, "tenant_name": "Dup"})),
        )
        .await
        .expect(201);
    assert_eq!(r.body, json!({"status": "pending_verification"}));
    let after =
        srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200).body["data"].as_array().unwrap().len();
    assert_eq!(before, after, "no tenant may be created for a taken address");
    assert!(srv.last_mail_to(&t.email).contains("already has an account"));
    srv.stop().await;
}

async fn password_policy(b: Backend) {
    let srv = TestServer::start(b).await;
    for (pw, why) in [("short", "12"), ("password1234", "common"), ("qwertyuiopasdf", "common")] {
        let r = srv
            .call(
                Method::POST,
                "/v1/auth/signup",
                None,
                Some(json!({"email": "p@example.com", "password": pw, "tenant_name": "P"})),
            )
            .await
            .expect(400);
        assert_eq!(r.body["reason"], "validation_failed");
        let err = &r.body["errors"][0];
        assert_eq!(err["field"], "password");
        assert!(err["message"].as_str().unwrap().contains(why), "{}", r.text);
    }
    // Stored as an Argon2id PHC string with the OWASP parameters.
    srv.call(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": "p@example.com", "password": PASSWORD, "tenant_name": "P"})),
    )
    .await
    .expect(201);
    let hash: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'p@example.com'")
        .fetch_one(srv.state().db.reader())
        .await
        .unwrap();
    assert!(hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{hash}");
    srv.stop().await;
}

async fn login_failure_is_uniform(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Uniform").await;
    let wrong_pw = srv
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": t.email, "password": "not the right password"})),
        )
        .await
        .expect(401);
    let no_user = srv
        .call(
            Method::POST,
            "/v1/auth/login",
            None,
            Some(json!({"email": "nobody@example.com", "password": "not the right password"})),
        )
        .await
        .expect(401);
    let not_email = srv
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": "garbage", "password": "x"})))
        .await
        .expect(401);
    assert_eq!(wrong_pw.problem_shape(), no_user.problem_shape());
    assert_eq!(wrong_pw.problem_shape(), not_email.problem_shape());
    let failed = srv.events(&t.token, "action=auth.login_failed").await;
    assert_eq!(failed.len(), 1, "the failure against a real account is in its tenant's trail");
    srv.stop().await;
}

async fn refresh_rotates_and_reuse_revokes_family(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Rotate").await;
    let r1 =
        srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(200);
    let access2 = r1.body["access_token"].as_str().unwrap().to_owned();
    let refresh2 = r1.body["refresh_token"].as_str().unwrap().to_owned();
    assert_ne!(refresh2, t.refresh);
    assert_eq!(r1.body["token_type"], "Bearer");
    assert_eq!(r1.body["expires_in"], 3600);
    srv.get("/v1/me", &access2).await.expect(200);

    // The old refresh token again: theft assumed, the whole family dies.
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(401);
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh2}))).await.expect(401);
    srv.get("/v1/me", &access2).await.expect(401);
    srv.get("/v1/me", &t.token).await.expect(401);
    // A fresh login is a new family and works.
    let (fresh, _) = srv.login(&t.email, PASSWORD).await;
    let ev = srv.events(&fresh, "action=auth.refresh_reused").await;
    assert_eq!(ev.len(), 1);
    srv.stop().await;
}

async fn logout_revokes_token_and_family(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Logout").await;
    let (other_session, _) = srv.login(&t.email, PASSWORD).await;
    srv.call(Method::POST, "/v1/auth/logout", Some(&t.token), None).await.expect(204);
    srv.get("/v1/me", &t.token).await.expect(401);
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(401);
    // Other sessions of the same person are untouched.
    srv.get("/v1/me", &other_session).await.expect(200);
    // An API key has no session to log out of.
    let (_, key) = srv.api_key(&other_session, json!({"name": "k", "role": "admin"})).await;
    srv.call(Method::POST, "/v1/auth/logout", Some(&key), None).await.expect(401);
    srv.stop().await;
}

async fn access_token_expires(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Expiry").await;
    srv.get("/v1/me", &t.token).await.expect(200);
    let unknown = srv.call(Method::GET, "/v1/me", Some("garbage"), None).await.expect(401);
    srv.clock.advance_ms(3600 * 1000 + 1000);
    let r = srv.get("/v1/me", &t.token).await.expect(401);
    assert_eq!(r.body["reason"], "unauthenticated");
    // Ours (signed) and expired: RFC 6750 says so, and so does the problem,
    // so the client refreshes instead of sending the person to log in.
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer error="invalid_token", error_description="The access token expired""#)
    );
    assert!(r.body["detail"].as_str().unwrap().contains("expired"), "{}", r.body);
    assert_ne!(r.problem_shape(), unknown.problem_shape());
    // The refresh token (7 days) still works and gives a valid access token.
    let r =
        srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": t.refresh}))).await.expect(200);
    srv.get("/v1/me", r.body["access_token"].as_str().unwrap()).await.expect(200);
    // After 7 days it is dead too.
    srv.clock.advance_ms(8 * 24 * 3600 * 1000);
    let refresh = r.body["refresh_token"].as_str().unwrap();
    srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh}))).await.expect(401);
    srv.stop().await;
}

async fn credentials_only_in_headers(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Headers").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    for q in [
        format!("/v1/me?access_token={}", t.token),
        format!("/v1/me?token={}", t.token),
        format!("/v1/me?api_key={key}"),
        format!("/v1/me?key={key}"),
    ] {
        srv.call(Method::GET, &q, None, None).await.expect(401);
    }
    let r = TestServer::send(srv.request(Method::GET, "/v1/me").header("X-API-Key", &key)).await.expect(200);
    assert_eq!(r.body["type"], "api_key");
    // X-API-Key carries API keys only.
    TestServer::send(srv.request(Method::GET, "/v1/me").header("X-API-Key", &t.token)).await.expect(401);
    // Two credentials at once are ambiguous.
    TestServer::send(srv.request(Method::GET, "/v1/me").header("X-API-Key", &key).bearer_auth(&t.token))
        .await
        .expect(401);
    srv.stop().await;
}

async fn bad_tokens_all_look_alike(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Alike").await;
    let (key_id, key) = srv.api_key(&t.token, json!({"name": "k", "role": "admin"})).await;
    srv.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&t.token), None).await.expect(204);
    let mut parts: Vec<String> = t.token.split('.').map(str::to_owned).collect();
    parts[2] = parts[2].chars().rev().collect();
    let tampered = parts.join(".");
    let unknown_key = palisade_auth::token::new_api_key();
    let now = srv.clock.now_ms() / 1000;
    let claims = srv.state().jwt.verify(&t.token, now, 60).unwrap();
    // Signed with the server's own key, but issued (or valid) only from a
    // time past the allowed clock skew: a clock or a key we cannot trust.
    let skew = i64::try_from(srv.state().config.auth.clock_skew_secs).unwrap();
    let future_iat = srv.state().jwt.sign(&AccessClaims { iat: now + skew + 5, ..claims.clone() }).unwrap();
    let future_nbf = srv.state().jwt.sign(&AccessClaims { nbf: Some(now + skew + 5), ..claims.clone() }).unwrap();
    // Expired, but not ours: unknown, not "expired".
    let other_keys = palisade_auth::JwtKeys::ed25519_from_pem(
        &palisade_auth::JwtKeys::generate_ed25519_pem().unwrap(),
        srv.state().jwt.issuer(),
    )
    .unwrap();
    let foreign_expired = other_keys.sign(&AccessClaims { exp: now - 10, ..claims.clone() }).unwrap();
    // Within the skew is fine.
    let near = srv.state().jwt.sign(&AccessClaims { iat: now + skew, ..claims.clone() }).unwrap();
    srv.get("/v1/me", &near).await.expect(200);
    // Revoked: logged out.
    let login = srv
        .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": t.password})))
        .await
        .expect(200);
    let revoked = login.body["access_token"].as_str().unwrap().to_owned();
    srv.call(Method::POST, "/v1/auth/logout", Some(&revoked), None).await.expect(204);
    let cases: Vec<Option<String>> = vec![
        None,
        Some("garbage".into()),
        Some(tampered),
        Some(key),
        Some(unknown_key),
        Some("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.e30".into()),
        Some(format!("at_{}", "a".repeat(32))),
        Some(future_iat),
        Some(future_nbf),
        Some(foreign_expired),
        Some(revoked),
    ];
    let first = srv.call(Method::GET, "/v1/me", None, None).await.expect(401);
    assert_eq!(first.body["type"], "urn:palisade:problem:unauthenticated");
    assert_eq!(first.header("www-authenticate"), Some("Bearer"));
    for c in cases {
        let r = srv.call(Method::GET, "/v1/me", c.as_deref(), None).await.expect(401);
        assert_eq!(r.problem_shape(), first.problem_shape(), "credential {c:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"), "credential {c:?}");
        assert_eq!(r.header("content-type"), Some("application/problem+json"));
    }
    srv.stop().await;
}

async fn wrong_credential_kind_per_route_group(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Kinds").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "owner"})).await;
    // Tenant credentials are nothing on /sysadmin.
    for c in [&t.token, &key] {
        srv.call(Method::GET, "/sysadmin/v1/tenants", Some(c), None).await.expect(401);
    }
    // The master key is nothing on /v1.
    let mk = srv.master_key.clone();
    srv.call(Method::GET, "/v1/me", Some(&mk), None).await.expect(401);
    srv.call(Method::GET, "/v1/api-keys", Some(&mk), None).await.expect(401);
    // The master key travels only as a bearer token.
    TestServer::send(srv.request(Method::GET, "/sysadmin/v1/tenants").header("X-API-Key", mk.clone()))
        .await
        .expect(401);
    srv.call(Method::GET, "/sysadmin/v1/tenants", Some(&mk), None).await.expect(200);
    // A wrong master key of the right shape.
    let wrong = palisade_auth::token::new_master_key();
    srv.call(Method::GET, "/sysadmin/v1/tenants", Some(&wrong), None).await.expect(401);
    srv.stop().await;
}

async fn racing_refreshes_cannot_both_win(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Race").await;
    let body = json!({"refresh_token": t.refresh});
    let calls = (0..8).map(|_| srv.call(Method::POST, "/v1/auth/refresh", None, Some(body.clone())));
    let results = futures_util::future::join_all(calls).await;
    let ok = results.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 1, "exactly one rotation may succeed: {:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(results.iter().all(|r| r.status == 200 || r.status == 401));
    srv.stop().await;
}

async fn expired_revocations_are_purged(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Purge").await;
    srv.call(Method::POST, "/v1/auth/logout", Some(&t.token), None).await.expect(204);
    let count = |srv: &TestServer| {
        let db = srv.state().db.clone();
        async move {
            sqlx::query_scalar::<_, i64>("SELECT COUNT(*) FROM revoked_jtis").fetch_one(db.reader()).await.unwrap()
        }
    };
    assert_eq!(count(&srv).await, 1);
    let state = srv.state().clone();
    palisade_store::tokens::purge_expired(&state.db, srv.clock.now_ms()).await.unwrap();
    assert_eq!(count(&srv).await, 1, "a revocation stays while the token could still be used");
    srv.clock.advance_ms(3601 * 1000);
    palisade_store::tokens::purge_expired(&state.db, srv.clock.now_ms()).await.unwrap();
    assert_eq!(count(&srv).await, 0);
    srv.get("/v1/me", &t.token).await.expect(401);
    srv.stop().await;
}

async fn openapi_document_is_generated(b: Backend) {
    let srv = TestServer::start(b).await;
    let doc = srv.call(Method::GET, "/v1/openapi.json", None, None).await.expect(200).body;
    assert!(doc["openapi"].as_str().unwrap().starts_with("3.1"), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    for p in ["/v1/auth/login", "/v1/api-keys/{id}/rotate", "/v1/users/{id}", "/v1/events", "/sysadmin/v1/tenants"] {
        assert!(paths.contains_key(p), "{p} missing");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    srv.stop().await;
}

use palisade_core::Clock;

async fn signup(srv: &TestServer, email: &str, password: &str) {
    srv.call(
        Method::POST,
        "/v1/auth/signup",
        None,
        Some(json!({"email": email, "password": password, "tenant_name": "T"})),
    )
    .await
    .expect(201);
}

async fn repeated_signup_keeps_the_first_password(b: Backend) {
    let srv = TestServer::start(b).await;
    let email = "twice@example.com";
    let (mine, theirs) = ("mine mine mine mine", "theirs theirs theirs");
    signup(&srv, email, mine).await;
    let my_token = srv.mailed_token(email);
    // Someone else signs up with the same unverified address.
    signup(&srv, email, theirs).await;
    let their_token = srv.mailed_token(email);
    assert_ne!(my_token, their_token);
    // Neither token activates a password sent with a sign-up any more; the
    // one chosen at verification counts, and the other token is void.
    let r = srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": my_token}))).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "password");
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": my_token, "password": mine})))
        .await
        .expect(200);
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": their_token, "password": theirs})))
        .await
        .expect(400);
    srv.login(email, mine).await;
    srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": theirs}))).await.expect(401);
    let tenants = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    assert_eq!(tenants.body["data"].as_array().unwrap().len(), 1, "one address, one tenant");
    srv.stop().await;
}

async fn email_tokens_expire_and_race(b: Backend) {
    let srv = TestServer::start(b).await;
    signup(&srv, "late@example.com", PASSWORD).await;
    let late = srv.mailed_token("late@example.com");
    srv.clock.advance_ms(24 * 3600 * 1000 + 1000);
    let r = srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": late}))).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "token");

    signup(&srv, "race@example.com", PASSWORD).await;
    let token = srv.mailed_token("race@example.com");
    let calls = (0..6).map(|_| srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": token}))));
    let results = futures_util::future::join_all(calls).await;
    assert_eq!(results.iter().filter(|r| r.status == 200).count(), 1, "a token is used once, even under a race");
    assert!(results.iter().all(|r| r.status == 200 || r.status == 400));
    srv.stop().await;
}

async fn signups_the_operator_funded_are_kept(b: Backend) {
    let srv = TestServer::start(b).await;
    signup(&srv, "funded@example.com", PASSWORD).await;
    let tenants = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    let id = tenants.body["data"][0]["id"].as_str().unwrap().to_owned();
    srv.admin(Method::POST, &format!("/sysadmin/v1/tenants/{id}/credits"), Some(json!({"amount": 10})))
        .await
        .expect(200);
    srv.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{id}/limits"), Some(json!({"key_per_minute": 5})))
        .await
        .expect(200);
    srv.clock.advance_ms(2 * 24 * 3600 * 1000);
    // The purge neither fails on the tenant's credits nor removes it.
    palisade_store::tokens::purge_expired(&srv.state().db, srv.clock.now_ms()).await.unwrap();
    let tenants = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    assert_eq!(tenants.body["data"][0]["id"], id.as_str());
    srv.stop().await;
}

async fn stale_signups_free_their_address(b: Backend) {
    let srv = TestServer::start(b).await;
    signup(&srv, "gone@example.com", PASSWORD).await;
    let state = srv.state().clone();
    srv.clock.advance_ms(2 * 24 * 3600 * 1000);
    palisade_store::tokens::purge_expired(&state.db, srv.clock.now_ms()).await.unwrap();
    let tenants = srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200);
    assert!(tenants.body["data"].as_array().unwrap().is_empty(), "the abandoned tenant is gone");
    // The address can be signed up for afresh.
    signup(&srv, "gone@example.com", PASSWORD).await;
    let token = srv.mailed_token("gone@example.com");
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": token}))).await.expect(200);
    srv.login("gone@example.com", PASSWORD).await;
    srv.stop().await;
}

async fn unauthenticated_routes_cap_json(b: Backend) {
    let srv = TestServer::start(b).await;
    let big = serde_json::to_vec(&json!({"email": "x@example.com", "password": "p".repeat(2 * 1024 * 1024)})).unwrap();
    for path in ["/v1/auth/login", "/v1/auth/signup", "/v1/auth/refresh"] {
        // Raw socket: the server answers before reading the body and closes.
        let (status, problem) =
            srv.raw_post(path, None, &format!("Content-Length: {}\r\n", big.len()), vec![big.clone()]).await;
        assert_eq!(status, 413, "{path}");
        assert_eq!(problem["reason"], "payload_too_large");
    }
    let deep = format!("{}{}", "[".repeat(64), "]".repeat(64));
    let r = TestServer::send(
        srv.request(Method::POST, "/v1/auth/login").header("content-type", "application/json").body(deep),
    )
    .await
    .expect(400);
    assert_eq!(r.body["reason"], "validation_failed");
    srv.stop().await;
}

async fn hs256_when_configured(b: Backend) {
    use base64::Engine as _;
    let header_alg = |token: &str| {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(token.split('.').next().unwrap()).unwrap();
        serde_json::from_slice::<serde_json::Value>(&raw).unwrap()["alg"].as_str().unwrap().to_owned()
    };
    // Default: a generated Ed25519 key.
    let srv = TestServer::start(b.clone()).await;
    let t = srv.tenant("Eddsa").await;
    assert_eq!(header_alg(&t.token), "EdDSA");
    srv.stop().await;

    let secret = "k".repeat(48);
    let srv =
        TestServer::start_with(b, |c| c.auth.jwt_secret = Some(palisade_config::Secret::new(secret.clone()))).await;
    let t = srv.tenant("Hmac").await;
    assert_eq!(header_alg(&t.token), "HS256");
    srv.get("/v1/me", &t.token).await.expect(200);
    // A token with the same claims signed under another secret is nothing.
    let forged_keys = palisade_auth::JwtKeys::hs256(&[b'x'; 48], "palisade").unwrap();
    let claims = srv.state().jwt.verify(&t.token, srv.clock.now_ms() / 1000, 60).unwrap();
    srv.get("/v1/me", &forged_keys.sign(&claims).unwrap()).await.expect(401);
    srv.stop().await;
}
