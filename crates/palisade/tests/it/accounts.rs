//! Accounts against takeover: repeated and pre-emptive sign-ups, password
//! reset by email, and a login lockout that a stranger cannot turn against
//! the owner.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer, PASSWORD};

backend_tests!(
    a_second_signup_never_sets_the_password,
    a_signup_by_someone_else_first_is_not_kept,
    password_reset_answers_alike,
    password_reset_works_once_and_ends_sessions,
    racing_reset_confirms_cannot_both_win,
    reset_tokens_expire_and_are_replaced,
    reset_activates_a_pending_signup,
    lockout_is_per_address,
    spread_failures_do_not_lock_the_owner_out,
    look_alike_addresses_make_no_second_account,
    addresses_stored_before_skeletons_get_one_at_start,
);

const ATTACKER: &str = "attacker attacker chosen";
const OWNER_NEW: &str = "brand new lantern orchard";

async fn signup(srv: &TestServer, email: &str, password: &str, tenant_name: &str) {
    let body = json!({"email": email, "password": password, "tenant_name": tenant_name});
    let r = srv.call(Method::POST, "/v1/auth/signup", None, Some(body)).await.expect(201);
    assert_eq!(r.body, json!({"status": "pending_verification"}));
}

async fn verify(srv: &TestServer, token: &str, password: Option<&str>) -> Resp {
    let mut body = json!({"token": token});
    if let Some(p) = password {
        body["password"] = json!(p);
    }
    srv.call(Method::POST, "/v1/auth/verify-email", None, Some(body)).await
}

async fn login_from(srv: &TestServer, ip: Option<&str>, email: &str, password: &str) -> Resp {
    let mut rb = srv.request(Method::POST, "/v1/auth/login").json(&json!({"email": email, "password": password}));
    if let Some(ip) = ip {
        rb = rb.header("x-forwarded-for", ip);
    }
    TestServer::send(rb).await
}

async fn login(srv: &TestServer, email: &str, password: &str) -> Resp {
    login_from(srv, None, email, password).await
}

async fn reset(srv: &TestServer, ip: Option<&str>, email: &str) -> Resp {
    let mut rb = srv.request(Method::POST, "/v1/auth/password-reset").json(&json!({"email": email}));
    if let Some(ip) = ip {
        rb = rb.header("x-forwarded-for", ip);
    }
    TestServer::send(rb).await
}

async fn confirm(srv: &TestServer, ip: Option<&str>, token: &str, password: &str) -> Resp {
    let mut rb = srv
        .request(Method::POST, "/v1/auth/password-reset/confirm")
        .json(&json!({"token": token, "password": password}));
    if let Some(ip) = ip {
        rb = rb.header("x-forwarded-for", ip);
    }
    TestServer::send(rb).await
}

fn mails_to(srv: &TestServer, to: &str) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(srv.data_dir.join("outbox")) else { return Vec::new() };
    dir.filter_map(|e| e.ok())
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .filter(|m| m.contains(&format!("To: {to}")))
        .collect()
}

fn token_in(mail: &str) -> String {
    let start = mail.find("et_").expect("token in mail");
    mail[start..start + 46].to_owned()
}

/// Reset mails are sent off the request path: waits for the `n`th one to
/// `to` and returns its token.
async fn reset_token(srv: &TestServer, to: &str, n: usize) -> String {
    for _ in 0..200 {
        let resets: Vec<String> = mails_to(srv, to).into_iter().filter(|m| m.contains("reset token")).collect();
        if resets.len() >= n {
            return token_in(&srv.last_mail_to(to));
        }
        tokio::time::sleep(std::time::Duration::from_millis(25)).await;
    }
    panic!("no reset mail number {n} to {to}");
}

async fn tenants(srv: &TestServer) -> Vec<Value> {
    srv.admin(Method::GET, "/sysadmin/v1/tenants", None).await.expect(200).body["data"].as_array().unwrap().clone()
}

#[track_caller]
fn assert_password_required(r: &Resp) {
    assert_eq!(r.status, 400, "{}", r.text);
    assert_eq!(r.body["reason"], "validation_failed");
    assert_eq!(r.body["errors"][0]["field"], "password", "{}", r.text);
}

/// The owner signs up first; someone else repeats the sign-up with another
/// password. Nothing the owner set changes, and the other password never
/// works, whichever mail is used.
async fn a_second_signup_never_sets_the_password(b: Backend) {
    let srv = TestServer::start(b).await;
    let email = "owner.first@example.com";
    signup(&srv, email, PASSWORD, "Owner's").await;
    let first = srv.mailed_token(email);
    signup(&srv, email, ATTACKER, "Attacker's").await;
    let second = srv.mailed_token(email);
    assert_ne!(first, second);
    assert!(srv.last_mail_to(email).contains("choose your password when you verify"));
    let all = tenants(&srv).await;
    assert_eq!(all.len(), 1, "one address, one tenant");
    assert_eq!(all[0]["name"], "Owner's", "the tenant name of the first sign-up stays");
    // The first password is still the stored one: it alone says "verify first".
    login(&srv, email, PASSWORD).await.expect(403);
    login(&srv, email, ATTACKER).await.expect(401);
    // After a repeat, a click alone activates nothing: the password is chosen now.
    for t in [&first, &second] {
        assert_password_required(&verify(&srv, t, None).await);
    }
    verify(&srv, &second, Some(PASSWORD)).await.expect(200);
    // Every other verification token died with it.
    verify(&srv, &first, Some(ATTACKER)).await.expect(400);
    srv.login(email, PASSWORD).await;
    login(&srv, email, ATTACKER).await.expect(401);
    srv.stop().await;
}

/// Someone signs up first with another person's address (pre-hijack); the
/// address's owner then signs up too. The first caller's password never
/// becomes active, whichever mail the owner follows.
async fn a_signup_by_someone_else_first_is_not_kept(b: Backend) {
    let srv = TestServer::start(b).await;
    let email = "victim@example.com";
    signup(&srv, email, ATTACKER, "Attacker's").await;
    let attackers_mail = srv.mailed_token(email);
    signup(&srv, email, PASSWORD, "Owner's").await;
    let owners_mail = srv.mailed_token(email);
    // Clicking either mail without choosing a password is refused and
    // uses nothing up.
    assert_password_required(&verify(&srv, &attackers_mail, None).await);
    assert_password_required(&verify(&srv, &owners_mail, None).await);
    // A weak chosen password is refused the same way as at sign-up.
    let r = verify(&srv, &attackers_mail, Some("password1234")).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "password");
    let r = verify(&srv, &attackers_mail, Some(OWNER_NEW)).await.expect(200);
    assert_eq!(r.body["status"], "verified");
    login(&srv, email, ATTACKER).await.expect(401);
    login(&srv, email, PASSWORD).await.expect(401);
    let (token, _) = srv.login(email, OWNER_NEW).await;
    let verified = srv.events(&token, "action=auth.email_verified").await;
    assert_eq!(verified[0]["details"]["password_chosen"], true);
    assert_eq!(srv.events(&token, "action=auth.signup_repeated").await.len(), 1);
    srv.stop().await;
}

/// Known, pending and unknown addresses get the same answer; only an
/// account's address gets mail.
async fn password_reset_answers_alike(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Known").await;
    signup(&srv, "pending.one@example.com", PASSWORD, "P").await;
    let known = reset(&srv, None, &t.email).await.expect(202);
    let unknown = reset(&srv, None, "nobody.here@example.com").await.expect(202);
    let pending = reset(&srv, None, "pending.one@example.com").await.expect(202);
    assert_eq!(known.text, unknown.text);
    assert_eq!(known.text, pending.text);
    assert_eq!(known.header("content-type"), unknown.header("content-type"));
    reset_token(&srv, &t.email, 1).await;
    reset_token(&srv, "pending.one@example.com", 1).await;
    assert!(mails_to(&srv, "nobody.here@example.com").is_empty());
    // A malformed address is a validation error, as at sign-up.
    reset(&srv, None, "not an address").await.expect(400);
    // Nothing but the status in the answer (no token).
    assert_eq!(known.body, json!({"status": "reset_requested"}));
    srv.stop().await;
}

/// A reset token works once; it ends every session (access and refresh
/// tokens) and the old password.
async fn password_reset_works_once_and_ends_sessions(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Reset").await;
    let (other_access, other_refresh) = srv.login(&t.email, PASSWORD).await;
    reset(&srv, None, &t.email).await.expect(202);
    let token = reset_token(&srv, &t.email, 1).await;
    // The new password follows the policy; a refusal uses nothing up.
    let r = confirm(&srv, None, &token, "password1234").await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "password");
    let r = confirm(&srv, None, &token, OWNER_NEW).await.expect(200);
    assert_eq!(r.body, json!({"status": "active"}));
    // Once.
    let again = confirm(&srv, None, &token, "yet another fine passphrase").await.expect(400);
    assert_eq!(again.body["errors"][0]["field"], "token");
    // Every session is over.
    for access in [&t.token, &other_access] {
        srv.get("/v1/me", access).await.expect(401);
    }
    for refresh in [&t.refresh, &other_refresh] {
        srv.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": refresh}))).await.expect(401);
    }
    login(&srv, &t.email, PASSWORD).await.expect(401);
    let (fresh, _) = srv.login(&t.email, OWNER_NEW).await;
    let done = srv.events(&fresh, "action=auth.password_reset").await;
    assert_eq!(done.len(), 1);
    assert_eq!(done[0]["details"]["sessions_ended"], 2);
    assert_eq!(done[0]["details"]["activated"], false);
    assert_eq!(srv.events(&fresh, "action=auth.password_reset_requested").await.len(), 1);
    srv.stop().await;
}

async fn racing_reset_confirms_cannot_both_win(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Race").await;
    reset(&srv, None, &t.email).await.expect(202);
    let token = reset_token(&srv, &t.email, 1).await;
    let passwords: Vec<String> = (0..4).map(|i| format!("racing password number {i}")).collect();
    let results = futures_util::future::join_all(passwords.iter().map(|p| confirm(&srv, None, &token, p))).await;
    let won: Vec<&String> = passwords.iter().zip(&results).filter(|(_, r)| r.status == 200).map(|(p, _)| p).collect();
    assert_eq!(won.len(), 1, "{:?}", results.iter().map(|r| r.status).collect::<Vec<_>>());
    assert!(results.iter().all(|r| r.status == 200 || r.status == 400));
    srv.login(&t.email, won[0]).await;
    srv.stop().await;
}

async fn reset_tokens_expire_and_are_replaced(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Expire").await;
    reset(&srv, None, &t.email).await.expect(202);
    let late = reset_token(&srv, &t.email, 1).await;
    srv.clock.advance_ms(30 * 60_000 + 1000);
    let r = confirm(&srv, None, &late, OWNER_NEW).await.expect(400);
    assert_eq!(r.body["errors"][0]["field"], "token");
    // A newer token voids the one before it.
    reset(&srv, None, &t.email).await.expect(202);
    let older = reset_token(&srv, &t.email, 2).await;
    srv.clock.advance_ms(61_000);
    reset(&srv, None, &t.email).await.expect(202);
    let newer = reset_token(&srv, &t.email, 3).await;
    assert_ne!(older, newer);
    confirm(&srv, None, &older, OWNER_NEW).await.expect(400);
    confirm(&srv, None, &newer, OWNER_NEW).await.expect(200);
    login(&srv, &t.email, PASSWORD).await.expect(401);
    srv.login(&t.email, OWNER_NEW).await;
    srv.stop().await;
}

/// A pending sign-up someone else made with the owner's address: a reset
/// from the mailbox activates it with the owner's password.
async fn reset_activates_a_pending_signup(b: Backend) {
    let srv = TestServer::start(b).await;
    let email = "reset.pending@example.com";
    signup(&srv, email, ATTACKER, "Attacker's").await;
    let verify_token = srv.mailed_token(email);
    reset(&srv, None, email).await.expect(202);
    let token = reset_token(&srv, email, 1).await;
    confirm(&srv, None, &token, OWNER_NEW).await.expect(200);
    login(&srv, email, ATTACKER).await.expect(401);
    let (access, _) = srv.login(email, OWNER_NEW).await;
    // The verification mail is void now.
    verify(&srv, &verify_token, None).await.expect(400);
    let done = srv.events(&access, "action=auth.password_reset").await;
    assert_eq!(done[0]["details"]["activated"], true);
    srv.stop().await;
}

fn trust_local(c: &mut palisade_config::Config) {
    c.server.trust_proxy = vec!["127.0.0.1/32".parse().unwrap()];
}

/// SPEC §7's lock holds for one account from one address; the owner at
/// another address is not locked out by it.
async fn lockout_is_per_address(b: Backend) {
    let srv = TestServer::start_with(b, trust_local).await;
    let t = srv.tenant("Pairs").await;
    let (a, other) = ("198.51.100.10", "198.51.100.11");
    let wrong = login_from(&srv, Some(a), &t.email, "not the password at all").await.expect(401);
    for _ in 0..4 {
        login_from(&srv, Some(a), &t.email, "not the password at all").await.expect(401);
    }
    let locked = login_from(&srv, Some(a), &t.email, PASSWORD).await.expect(401);
    assert_eq!(locked.problem_shape(), wrong.problem_shape());
    assert_eq!(locked.header("www-authenticate"), wrong.header("www-authenticate"));
    login_from(&srv, Some(other), &t.email, PASSWORD).await.expect(200);
    // Still locked at the address that failed.
    login_from(&srv, Some(a), &t.email, PASSWORD).await.expect(401);
    srv.clock.advance_ms(15 * 60_000);
    login_from(&srv, Some(a), &t.email, PASSWORD).await.expect(200);
    srv.stop().await;
}

async fn failed_logins(srv: &TestServer, tenant: &str) -> usize {
    let q = format!("/sysadmin/v1/events?tenant_id={tenant}&action=auth.login_failed&limit=200");
    srv.admin(Method::GET, &q, None).await.expect(200).body["data"].as_array().unwrap().len()
}

/// Wrong passwords from many addresses throttle the account (a guesser
/// gets few tries), but never keep the owner out for good: a trusted
/// address gets in at once, a fresh one within the spacing, and a password
/// reset trusts the address it was confirmed from.
async fn spread_failures_do_not_lock_the_owner_out(b: Backend) {
    let srv = TestServer::start_with(b, trust_local).await;
    let t = srv.tenant("Spread").await;
    let (server, email) = (&srv, t.email.as_str());
    let guess = move |i: usize| async move {
        let ip = format!("203.0.113.{}", i % 250 + 1);
        login_from(server, Some(&ip), email, &format!("guess number {i} here")).await.expect(401)
    };
    for i in 0..60 {
        guess(i).await;
    }
    // 20 failures throttle the account; then one attempt per 30 s.
    assert_eq!(failed_logins(&srv, &t.id).await, 21);
    let fresh = "192.0.2.50";
    login_from(&srv, Some(fresh), &t.email, PASSWORD).await.expect(401);
    // The address the owner logged in from before is trusted.
    login(&srv, &t.email, PASSWORD).await.expect(200);
    // A fresh address gets the next slot.
    srv.clock.advance_ms(30_000);
    login_from(&srv, Some(fresh), &t.email, PASSWORD).await.expect(200);
    // Even if the guesser takes every slot, a reset confirmed from an
    // address lets the owner in from there.
    let elsewhere = "192.0.2.60";
    srv.clock.advance_ms(30_000);
    guess(100).await;
    login_from(&srv, Some(elsewhere), &t.email, PASSWORD).await.expect(401);
    reset(&srv, Some(elsewhere), &t.email).await.expect(202);
    let token = reset_token(&srv, &t.email, 1).await;
    confirm(&srv, Some(elsewhere), &token, OWNER_NEW).await.expect(200);
    for i in 200..230 {
        guess(i).await;
    }
    login_from(&srv, Some(elsewhere), &t.email, OWNER_NEW).await.expect(200);
    let started = srv
        .admin(Method::GET, &format!("/sysadmin/v1/events?tenant_id={}&action=auth.account_throttled", t.id), None)
        .await
        .expect(200);
    assert!(!started.body["data"].as_array().unwrap().is_empty());
    srv.stop().await;
}

async fn count(srv: &TestServer, sql: &str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(srv.state().db.reader()).await.unwrap()
}

/// A tenant whose owner's address has a whole-script Cyrillic look-alike:
/// `ѕсоре` (Cyrillic dze, es, o, er, ie) passes for `scope`.
const LATIN: &str = "scope@looks.example.com";
const CYRILLIC: &str = "\u{455}\u{441}\u{43E}\u{440}\u{435}@looks.example.com";

async fn scope_owner(srv: &TestServer) -> String {
    let owner = json!({"email": LATIN, "password": PASSWORD});
    srv.admin(Method::POST, "/sysadmin/v1/tenants", Some(json!({"name": "Scope", "owner": owner}))).await.expect(201);
    srv.login(LATIN, PASSWORD).await.0
}

/// An invisible soft hyphen or a fullwidth `ｏ` in a registered address, or
/// an address in another script that reads the same, makes no new account,
/// and sign-up answers exactly as it does for the registered address itself
/// (no oracle); the owner hears of it. Mixed scripts and lone combining
/// marks are refused outright, for what they are.
async fn look_alike_addresses_make_no_second_account(b: Backend) {
    let srv = TestServer::start(b).await;
    let token = scope_owner(&srv).await;
    let signup_as = |email: String| {
        let body = json!({"email": email, "password": PASSWORD, "tenant_name": "Impostor"});
        srv.call(Method::POST, "/v1/auth/signup", None, Some(body))
    };
    let users = || count(&srv, "SELECT COUNT(*) FROM users");
    let before = users().await;
    let registered = signup_as(LATIN.into()).await.expect(201);

    for (what, email) in [
        ("soft hyphen", "sco\u{AD}pe@looks.example.com"),
        ("fullwidth o", "sc\u{FF4F}pe@looks.example.com"),
        ("upper case", "SCOPE@Looks.Example.COM"),
        ("Cyrillic", CYRILLIC),
    ] {
        let r = signup_as(email.into()).await.expect(201);
        assert_eq!(r.body, registered.body, "{what}");
        assert_eq!(users().await, before, "{what}: {email:?} made an account");
        // Only the owner of the registered address is told.
        let notice = srv.last_mail_to(LATIN);
        let expected = if what == "Cyrillic" { "looks like" } else { "already has an account" };
        assert!(notice.contains(expected), "{what}: {notice}");
    }
    let outbox = std::fs::read_dir(srv.data_dir.join("outbox")).unwrap();
    let to_cyrillic =
        outbox.filter_map(Result::ok).any(|e| std::fs::read_to_string(e.path()).unwrap().contains("\u{455}\u{441}"));
    assert!(!to_cyrillic, "nothing is mailed to the look-alike");

    // The same address in another form logs in; a look-alike is nobody.
    srv.login("sc\u{FF4F}pe@looks.example.com", PASSWORD).await;
    let r =
        srv.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": CYRILLIC, "password": PASSWORD}))).await;
    r.expect(401);

    // Nor can a look-alike be invited, or given a tenant by the operator.
    let taken = srv.post("/v1/users", &token, json!({"email": LATIN, "role": "read_only"})).await.expect(409);
    let look_alike = srv.post("/v1/users", &token, json!({"email": CYRILLIC, "role": "read_only"})).await;
    assert_eq!(look_alike.expect(409).problem_shape(), taken.problem_shape());
    let owner = json!({"email": CYRILLIC, "password": PASSWORD});
    let r = srv.admin(Method::POST, "/sysadmin/v1/tenants", Some(json!({"name": "Impostor", "owner": owner}))).await;
    assert!(r.expect(409).body["detail"].as_str().unwrap().contains("looks like"));
    assert_eq!(users().await, before);

    // Refused for what they are, whoever is registered: Latin mixed with
    // Cyrillic (in the local part or a domain label), or a combining mark
    // with nothing under it.
    for bad in [
        "sc\u{43E}pe@looks.example.com",
        "scope@l\u{43E}\u{43E}ks.example.com",
        "\u{301}@example.com",
        "a.\u{301}@example.com",
    ] {
        let r = signup_as(bad.into()).await.expect(400);
        assert_eq!(r.body["reason"], "validation_failed", "{bad:?}");
        assert_eq!(r.body["errors"][0]["field"], "email", "{bad:?}");
    }
    // A single script other than Latin is fine when nobody looks like it.
    signup_as("\u{438}\u{432}\u{430}\u{43D}@example.com".into()).await.expect(201);
    assert_eq!(users().await, before + 1);
    srv.stop().await;
}

/// Addresses stored before migration 0018 (or by an older instance) get
/// their skeleton when the server starts, and are protected from then on.
async fn addresses_stored_before_skeletons_get_one_at_start(b: Backend) {
    let mut srv = TestServer::start(b).await;
    scope_owner(&srv).await;
    let mut tx = srv.state().db.begin().await.unwrap();
    sqlx::query("UPDATE users SET email_skeleton = NULL").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    // Found by its address meanwhile.
    srv.login(LATIN, PASSWORD).await;
    srv.restart().await;
    assert_eq!(count(&srv, "SELECT COUNT(*) FROM users WHERE email_skeleton IS NULL").await, 0);
    let before = count(&srv, "SELECT COUNT(*) FROM users").await;
    signup(&srv, CYRILLIC, PASSWORD, "Impostor").await;
    assert_eq!(count(&srv, "SELECT COUNT(*) FROM users").await, before);
    assert!(srv.last_mail_to(LATIN).contains("looks like"));
    srv.stop().await;
}
