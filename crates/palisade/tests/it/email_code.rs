//! Signing in with a code sent by mail (the dev outbox is the mailbox):
//! same answer for any address, a keyed hash at rest, one use, ten
//! minutes, five wrong tries kill the code and the address waits fifteen
//! minutes, parallel guesses get no more tries, sends per address capped.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

/// The mails in the dev outbox addressed to `to`.
fn mails_to(s: &TestServer, to: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(s.data_dir.join("outbox")) else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .filter(|m| m.contains(&format!("To: {to}")))
        .collect()
}

/// The sign-in code mails to `to`.
fn code_mails(s: &TestServer, to: &str) -> usize {
    mails_to(s, to).iter().filter(|m| m.contains("sign-in code")).count()
}

/// The code in the newest mail to `to` (mailed after the answer: waited for).
async fn mailed_code(s: &TestServer, to: &str) -> String {
    let mail = s.last_mail_to(to);
    let at = mail.find("sign-in code is ").expect("a code in the mail") + "sign-in code is ".len();
    mail[at..at + 6].to_owned()
}

/// Asks for a code; waits for its mail when `mailed`, else makes sure none
/// comes.
async fn ask_expecting(s: &TestServer, email: &str, mailed: bool) {
    let before = code_mails(s, email);
    let r = s.call(Method::POST, "/v1/auth/email-code", None, Some(json!({"email": email}))).await.expect(202);
    assert_eq!(r.body, json!({"status": "sent"}));
    for _ in 0..40 {
        if code_mails(s, email) > before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    assert_eq!(code_mails(s, email), before + usize::from(mailed), "mailed: {mailed}");
}

async fn ask(s: &TestServer, email: &str) {
    ask_expecting(s, email, true).await;
}

async fn try_code(s: &TestServer, email: &str, code: &str) -> crate::common::Resp {
    s.call(Method::POST, "/v1/auth/email-code/verify", None, Some(json!({"email": email, "code": code}))).await
}

/// A code that is not `code`.
fn other(code: &str) -> String {
    format!("{:06}", (code.parse::<u32>().unwrap() + 1) % 1_000_000)
}

#[tokio::test]
async fn a_mailed_code_signs_in_once_and_is_kept_only_as_a_keyed_hash() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    // At rest: neither the code nor the address.
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&s.db_url).await.unwrap();
    let rows: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT email_key, code_hash FROM email_codes").fetch_all(&pool).await.unwrap();
    assert_eq!(rows.len(), 1);
    let (key, hash) = &rows[0];
    assert!(!key.contains('@') && !key.contains("acme"), "{key}");
    let hash = hash.clone().unwrap();
    assert!(!hash.contains(&code) && hash.len() == 64, "{hash}");
    // The login response; the token works.
    let r = try_code(&s, &t.email, &code).await.expect(200);
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    assert!(r.body["refresh_token"].is_string());
    s.get("/v1/me", &token).await.expect(200);
    let logins = s.events(&t.token, "action=auth.login").await;
    assert!(logins.iter().any(|e| e["details"]["method"] == "email_code"), "{logins:?}");
    // Once.
    try_code(&s, &t.email, &code).await.expect(401);
    pool.close().await;
    s.stop().await;
}

#[tokio::test]
async fn any_address_gets_the_same_answer_and_only_an_account_gets_mail() {
    let s = TestServer::start(Backend::Sqlite).await;
    let nobody = "nobody@unknown.example.com";
    ask_expecting(&s, nobody, false).await;
    assert!(mails_to(&s, nobody).is_empty());
    try_code(&s, nobody, "123456").await.expect(401);
    // Not an address at all: a 400 that says nothing of accounts.
    let r = s.call(Method::POST, "/v1/auth/email-code", None, Some(json!({"email": "not an address"}))).await;
    r.expect(400);
    s.stop().await;
}

#[tokio::test]
async fn five_wrong_tries_kill_the_code_and_the_address_waits() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    for _ in 0..5 {
        try_code(&s, &t.email, &other(&code)).await.expect(401);
    }
    // Dead: the right code no longer works.
    try_code(&s, &t.email, &code).await.expect(401);
    let locked = s.events(&t.token, "action=auth.email_code_locked").await;
    assert_eq!(locked.len(), 1, "{locked:?}");
    // The address waits: a new request is answered the same, and sends nothing.
    ask_expecting(&s, &t.email, false).await;
    s.clock.advance_ms(15 * 60 * 1000 + 1000);
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    try_code(&s, &t.email, &code).await.expect(200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_get_no_more_tries_than_one_guesser() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    let wrong: Vec<String> =
        (1..=12).map(|i| format!("{:06}", (code.parse::<u32>().unwrap() + i) % 1_000_000)).collect();
    let guesses = wrong.iter().map(|w| try_code(&s, &t.email, w));
    for r in futures_util::future::join_all(guesses).await {
        r.expect(401);
    }
    // They spent the five tries: the code is dead.
    try_code(&s, &t.email, &code).await.expect(401);
    s.stop().await;
}

#[tokio::test]
async fn a_code_lasts_ten_minutes_and_sends_per_address_are_capped() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    s.clock.advance_ms(10 * 60 * 1000 + 1);
    try_code(&s, &t.email, &code).await.expect(401);
    // A new code replaces the old one; five sends an hour, then none.
    for _ in 0..4 {
        ask(&s, &t.email).await;
    }
    assert_eq!(code_mails(&s, &t.email), 5);
    ask_expecting(&s, &t.email, false).await;
    let last = mailed_code(&s, &t.email).await;
    try_code(&s, &t.email, &last).await.expect(200);
    s.stop().await;
}

#[tokio::test]
async fn a_new_code_does_not_give_wrong_tries_back() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    for _ in 0..4 {
        try_code(&s, &t.email, &other(&code)).await.expect(401);
    }
    // Asking again brings a new code, not four more tries.
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    try_code(&s, &t.email, &other(&code)).await.expect(401);
    try_code(&s, &t.email, &code).await.expect(401);
    assert_eq!(s.events(&t.token, "action=auth.email_code_locked").await.len(), 1);
    // Each lock in the window waits twice as long: after 15 minutes, a code
    // again; its five wrong tries lock the address for 30.
    s.clock.advance_ms(15 * 60 * 1000 + 1000);
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    for _ in 0..5 {
        try_code(&s, &t.email, &other(&code)).await.expect(401);
    }
    s.clock.advance_ms(15 * 60 * 1000 + 1000);
    ask_expecting(&s, &t.email, false).await;
    s.clock.advance_ms(15 * 60 * 1000);
    ask(&s, &t.email).await;
    s.stop().await;
}

#[tokio::test]
async fn wrong_codes_for_many_addresses_lock_the_client_address() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    // Ten wrong codes, each for another address: no address reaches its own
    // limit, but the client address has failed ten credentials.
    for i in 0..10 {
        try_code(&s, &format!("probe{i}@guess.example.com"), "000000").await.expect(401);
    }
    // Locked out: even the right code is refused, and takes no try.
    try_code(&s, &t.email, &code).await.expect(401);
    // Once the address's lock (15 minutes) is over, a code works again.
    s.clock.advance_ms(15 * 60 * 1000 + 1000);
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    try_code(&s, &t.email, &code).await.expect(200);
    s.stop().await;
}

#[tokio::test]
async fn a_tenant_that_requires_single_sign_on_takes_no_code_but_the_owners() {
    // A provider named in the configuration (never reached: the rule is
    // checked before anything is asked of it).
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.oidc.providers = vec![palisade_config::OidcProvider {
            name: "idp".into(),
            issuer: "http://127.0.0.1:9".into(),
            client_id: "palisade-client".into(),
            client_secret: Some(palisade_config::Secret::new("idp-client-secret".into())),
            client_secret_file: None,
            allowed_domains: vec![],
        }];
    })
    .await;
    let t = s.tenant("Acme").await;
    let member = "member@acme.example.com";
    s.member(&t.token, member, "admin").await;
    let body = json!({"sso_required": true, "sso_providers": ["idp"]});
    s.call(Method::PATCH, "/v1/tenant/security", Some(&t.token), Some(body)).await.expect(200);
    // The member's right code is refused: the code is a first factor, not
    // the provider's word.
    ask(&s, member).await;
    let code = mailed_code(&s, member).await;
    let r = try_code(&s, member, &code).await.expect(403);
    assert_eq!(r.body["reason"], "sso_required");
    assert!(r.body.get("access_token").is_none(), "{}", r.text);
    // The owner keeps the code for the day the provider fails.
    ask(&s, &t.email).await;
    let code = mailed_code(&s, &t.email).await;
    try_code(&s, &t.email, &code).await.expect(200);
    s.stop().await;
}
