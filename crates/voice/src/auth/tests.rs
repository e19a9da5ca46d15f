use std::net::IpAddr;
use std::sync::Arc;

use palisade_core::{IdentityId, TenantId, TenantScope};
use palisade_digest::{Algorithm, NonceKey};
use palisade_guard::limits::Key;
use palisade_guard::state::{
    AbuseState, Answer, Attempt, Decide, LocalState, LoginAdmission, LoginKeys, LoginRule, StrikeOutcome, StrikeRule,
    Unavailable, Verdict,
};
use palisade_seal::Sealer;
use palisade_store::identities::{NewIdentity, Policy};
use palisade_store::Db;

use super::{DigestAuth, Outcome, Request, Rules, Started};

const NOW: i64 = 1_700_000_000_000;
const DOMAIN: &str = "sip.example.net";
const RULES: Rules = Rules {
    threshold: 5,
    block_ms: 900_000,
    escalation_factor: 2,
    max_block_ms: 2_000_000,
    per_username_threshold: 20,
    per_username_window_ms: 900_000,
};

struct World {
    _dir: tempfile::TempDir,
    auth: DigestAuth,
    realm: String,
    username: String,
    password: String,
}

async fn world_with(state: Arc<dyn AbuseState>) -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/v.db", dir.path().display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    let tenant = TenantId::new();
    palisade_store::tenants::insert(db.reader(), tenant, "t", NOW).await.unwrap();
    let scope = TenantScope::for_system(tenant);
    let id = IdentityId::new();
    let policy = Policy { rate_per_second: None, monthly_budget: None, allowed_countries: "[]", srtp: "preferred" };
    let new = NewIdentity { id, kind: "number", number: "+12025550100", country: "US", name: "n", policy, now: NOW };
    palisade_store::identities::insert(db.reader(), &scope, &new).await.unwrap();
    let sealer = Arc::new(Sealer::new(&[9; 32]));
    let keys = Arc::new(crate::tests::keyring(&db, 5));
    let tenant_keys = keys.of(&scope).await.unwrap();
    let mut tx = db.begin().await.unwrap();
    let c = crate::credentials::create(&mut tx, &tenant_keys, &scope, id, DOMAIN, NOW).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    let auth = DigestAuth {
        db,
        sealer,
        keys,
        nonces: NonceKey::new([3; 32]),
        algorithms: vec![Algorithm::Sha256, Algorithm::Md5],
        nonce_ttl_ms: 300_000,
        domain: DOMAIN.into(),
        state,
        rules: RULES,
        stats: Default::default(),
    };
    World { _dir: dir, auth, realm: c.realm, username: c.username, password: c.password }
}

async fn world() -> World {
    world_with(Arc::new(LocalState::new())).await
}

/// A world whose abuse state answers each call a moment later (as a
/// shared one does), letting every other ready task run first: requests
/// sent at once then reach each step together, whatever the database does.
async fn world_at_a_distance() -> Arc<World> {
    Arc::new(world_with(Arc::new(Distant(LocalState::new()))).await)
}

struct Distant(LocalState);

impl AbuseState for Distant {
    fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict> {
        Box::pin(async move { later(|| self.0.decide_now(&d)).await })
    }
    fn strike(&self, p: u128, key: Key, rule: StrikeRule, now: i64) -> Answer<'_, StrikeOutcome> {
        Box::pin(later(move || self.0.strike_now(p, key, rule, now)))
    }
    fn attempt(&self, p: u128, key: Key, rule: StrikeRule, now: i64) -> Answer<'_, Attempt> {
        Box::pin(later(move || self.0.attempt_now(p, key, rule, now)))
    }
    fn forgive(&self, p: u128, key: Key, started: Option<i64>) -> Answer<'_, ()> {
        Box::pin(later(move || self.0.forgive_now(p, key, started)))
    }
    fn notice(&self, p: u128, key: Key, now: i64, period: i64) -> Answer<'_, bool> {
        Box::pin(later(move || self.0.notice_now(p, key, now, period)))
    }
    fn login_attempt(&self, p: u128, keys: LoginKeys, rule: LoginRule, now: i64) -> Answer<'_, LoginAdmission> {
        Box::pin(later(move || self.0.login_attempt_now(p, keys, rule, now)))
    }
    fn mark(&self, p: u128, key: Key, now: i64, until: i64) -> Answer<'_, ()> {
        Box::pin(later(move || self.0.mark_now(p, key, now, until)))
    }
    fn clear(&self, p: u128, key: Key) -> Answer<'_, ()> {
        Box::pin(later(move || self.0.clear_now(p, key)))
    }
}

async fn later<T>(f: impl FnOnce() -> T) -> Result<T, Unavailable> {
    tokio::task::yield_now().await;
    Ok(f())
}

fn ip(n: u8) -> IpAddr {
    IpAddr::from([192, 0, 2, n])
}

impl World {
    async fn ask(&self, authorization: Option<&str>, from: IpAddr, now: i64) -> Outcome {
        let uri = format!("sip:{}", self.realm);
        let req = Request { method: "REGISTER", uri: &uri, aor_host: &self.realm, authorization, source: from };
        self.auth.authenticate(&req, now).await
    }

    /// A fresh challenge's nonce for `alg`.
    async fn nonce(&self, alg: Algorithm, now: i64) -> String {
        let Outcome::Challenge { challenges, .. } = self.ask(None, ip(250), now).await else { panic!("no challenge") };
        let c = challenges.iter().find(|c| c.contains(&format!("algorithm={},", alg.name()))).unwrap();
        c.split("nonce=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
    }

    /// A client's answer to a REGISTER, computed here from the password.
    fn answer(&self, alg: Algorithm, nonce: &str, nc: u32, password: &str) -> String {
        self.answer_for(alg, nonce, nc, password, "REGISTER", &format!("sip:{}", self.realm))
    }

    fn answer_for(&self, alg: Algorithm, nonce: &str, nc: u32, password: &str, method: &str, uri: &str) -> String {
        answer_as(&self.realm, &self.username, alg, nonce, nc, password, method, uri)
    }

    /// A credential of another tenant: (realm, username, password).
    async fn other_tenant(&self) -> (String, String, String) {
        let tenant = TenantId::new();
        palisade_store::tenants::insert(self.auth.db.reader(), tenant, "u", NOW).await.unwrap();
        let scope = TenantScope::for_system(tenant);
        let id = IdentityId::new();
        let policy = Policy { rate_per_second: None, monthly_budget: None, allowed_countries: "[]", srtp: "preferred" };
        let new =
            NewIdentity { id, kind: "number", number: "+12025550101", country: "US", name: "n", policy, now: NOW };
        palisade_store::identities::insert(self.auth.db.reader(), &scope, &new).await.unwrap();
        let tenant_keys = self.auth.keys.of(&scope).await.unwrap();
        let mut tx = self.auth.db.begin().await.unwrap();
        let c = crate::credentials::create(&mut tx, &tenant_keys, &scope, id, DOMAIN, NOW).await.unwrap().unwrap();
        tx.commit().await.unwrap();
        (c.realm, c.username, c.password)
    }
}

#[allow(clippy::too_many_arguments)]
fn answer_as(
    realm: &str,
    username: &str,
    alg: Algorithm,
    nonce: &str,
    nc: u32,
    password: &str,
    method: &str,
    uri: &str,
) -> String {
    let head = format!(
        "Digest username=\"{username}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={}, \
         qop=auth, nc={nc:08x}, cnonce=\"c0ffee\"",
        alg.name()
    );
    let dummy = "0".repeat(alg.hex_len());
    let creds = palisade_digest::parse(&format!("{head}, response=\"{dummy}\"")).unwrap();
    let ha1 = palisade_digest::ha1(alg, username, realm, password);
    format!("{head}, response=\"{}\"", palisade_digest::response(alg, &ha1, &creds, method))
}

/// Sends REGISTERs with these answers to `realm` from `from`, all at once
/// (each is in flight before any is answered), and their outcomes in order.
async fn in_parallel(w: &Arc<World>, realm: &str, answers: Vec<String>, from: IpAddr, now: i64) -> Vec<Outcome> {
    let tasks: Vec<_> = answers
        .into_iter()
        .map(|a| {
            let (w, realm) = (w.clone(), realm.to_owned());
            tokio::spawn(async move {
                let uri = format!("sip:{realm}");
                let req =
                    Request { method: "REGISTER", uri: &uri, aor_host: &realm, authorization: Some(&a), source: from };
                w.auth.authenticate(&req, now).await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes
}

fn authenticated(o: &Outcome) -> bool {
    matches!(o, Outcome::Authenticated(_))
}

fn failed(o: &Outcome) -> bool {
    matches!(o, Outcome::Challenge { failed: true, .. })
}

#[tokio::test]
async fn challenges_offer_sha256_then_md5_for_our_realms_only() {
    let w = world().await;
    let Outcome::Challenge { challenges, failed } = w.ask(None, ip(1), NOW).await else { panic!() };
    assert!(!failed);
    assert_eq!(challenges.len(), 2);
    assert!(challenges[0].contains("algorithm=SHA-256") && challenges[1].contains("algorithm=MD5"));
    assert!(challenges.iter().all(|c| c.contains(&format!("realm=\"{}\"", w.realm)) && c.contains("qop=\"auth\"")));
    for host in ["example.com", DOMAIN, "not-a-uuid.sip.example.net", "x.evil.example"] {
        let req = Request { method: "REGISTER", uri: "sip:x", aor_host: host, authorization: None, source: ip(1) };
        assert!(matches!(w.auth.authenticate(&req, NOW).await, Outcome::UnknownRealm), "{host}");
    }
}

#[tokio::test]
async fn a_right_response_is_accepted_once_per_nonce_and_count() {
    let w = world().await;
    for alg in [Algorithm::Sha256, Algorithm::Md5] {
        let nonce = w.nonce(alg, NOW).await;
        let first = w.answer(alg, &nonce, 1, &w.password);
        let o = w.ask(Some(&first), ip(1), NOW).await;
        let Outcome::Authenticated(user) = o else { panic!("{alg:?}: {o:?}") };
        assert_eq!(user.realm, w.realm);
        // The same (nonce, nc) again, from anywhere: refused.
        assert!(failed(&w.ask(Some(&first), ip(1), NOW + 10).await), "{alg:?} replay");
        assert!(failed(&w.ask(Some(&first), ip(2), NOW + 10).await), "{alg:?} replay elsewhere");
        // The next count of the same nonce is a new answer.
        assert!(authenticated(&w.ask(Some(&w.answer(alg, &nonce, 2, &w.password)), ip(1), NOW + 20).await));
    }
    assert_eq!(w.auth.stats.replays.load(std::sync::atomic::Ordering::Relaxed), 4);
}

#[tokio::test]
async fn five_failures_block_the_address_then_even_the_right_password() {
    let w = world().await;
    let mut block = None;
    for i in 0..5 {
        let nonce = w.nonce(Algorithm::Sha256, NOW).await;
        let o = w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 1, "wrong")), ip(1), NOW + i).await;
        if i < 4 {
            assert!(failed(&o), "{i}: {o:?}");
        } else {
            block = Some(o);
        }
    }
    let Some(Outcome::Blocked { until_ms, started: Some(Started { nth: 1, .. }) }) = block else { panic!("{block:?}") };
    assert_eq!(until_ms, NOW + 4 + 900_000);
    let nonce = w.nonce(Algorithm::Sha256, NOW + 10).await;
    let right = w.answer(Algorithm::Sha256, &nonce, 1, &w.password);
    assert!(matches!(w.ask(Some(&right), ip(1), NOW + 10).await, Outcome::Blocked { started: None, .. }));
    // A request without credentials is told too; another address is not.
    assert!(matches!(w.ask(None, ip(1), NOW + 10).await, Outcome::Blocked { .. }));
    assert!(authenticated(&w.ask(Some(&right), ip(2), NOW + 10).await));
    // Once the block ends, the right password works from there again.
    let nonce = w.nonce(Algorithm::Sha256, until_ms).await;
    let right = w.answer(Algorithm::Sha256, &nonce, 1, &w.password);
    assert!(authenticated(&w.ask(Some(&right), ip(1), until_ms).await));
}

#[tokio::test]
async fn a_success_resets_the_count_and_challenges_are_not_failures() {
    let w = world().await;
    let wrong = |n: u32, nonce: &str| w.answer(Algorithm::Md5, nonce, n, "wrong");
    let nonce = w.nonce(Algorithm::Md5, NOW).await;
    for n in 1..=4 {
        assert!(failed(&w.ask(Some(&wrong(n, &nonce)), ip(1), NOW).await));
        // Asking without credentials between them counts nothing.
        assert!(matches!(w.ask(None, ip(1), NOW).await, Outcome::Challenge { failed: false, .. }));
    }
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Md5, &nonce, 5, &w.password)), ip(1), NOW).await));
    for n in 6..=9 {
        assert!(failed(&w.ask(Some(&wrong(n, &nonce)), ip(1), NOW).await), "{n}");
    }
    // Garbage counts as a failure.
    assert!(matches!(w.ask(Some("Digest nonsense"), ip(1), NOW).await, Outcome::Blocked { started: Some(_), .. }));
}

#[tokio::test]
async fn an_expired_nonce_with_the_right_password_is_stale_not_a_failure() {
    let w = world().await;
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    let late = NOW + 300_001;
    for n in 1..=6 {
        let o = w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, n, &w.password)), ip(1), late).await;
        let Outcome::Challenge { challenges, failed } = o else { panic!("{o:?}") };
        assert!(!failed && challenges.iter().all(|c| c.ends_with("stale=true")));
    }
    // With a wrong password it is a failure.
    assert!(failed(&w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 7, "wrong")), ip(1), late).await));
}

#[tokio::test]
async fn repeat_offenders_are_blocked_longer() {
    let w = world().await;
    let mut now = NOW;
    let mut lengths = Vec::new();
    for _ in 0..3 {
        let nonce = w.nonce(Algorithm::Md5, now).await;
        let mut last = None;
        for n in 1..=5 {
            last = Some(w.ask(Some(&w.answer(Algorithm::Md5, &nonce, n, "wrong")), ip(1), now).await);
        }
        let Some(Outcome::Blocked { until_ms, started: Some(_) }) = last else { panic!("{last:?}") };
        // Really held that long.
        let nonce = w.nonce(Algorithm::Md5, until_ms - 1).await;
        let right = w.answer(Algorithm::Md5, &nonce, 1, &w.password);
        assert!(matches!(w.ask(Some(&right), ip(1), until_ms - 1).await, Outcome::Blocked { .. }));
        lengths.push(until_ms - now);
        now = until_ms;
    }
    // 15 min, 30 min, then the cap.
    assert_eq!(lengths, [900_000, 1_800_000, 2_000_000]);
}

#[tokio::test]
async fn a_username_guessed_from_many_addresses_stays_open_to_its_own_devices() {
    let w = world().await;
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    // The device authenticates from its usual address first.
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 1, &w.password)), ip(200), NOW).await));
    // Twenty addresses, one guess each: no address is blocked...
    for n in 0..20u8 {
        let o = w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 100 + u32::from(n), "guess")), ip(n), NOW).await;
        assert!(failed(&o), "{n}: {o:?}");
    }
    // ...but the username now refuses a new address, even with the right
    // password, without counting it against that address (it may be the
    // owner's new one); the device's usual address still gets in.
    let right = |n: u32| w.answer(Algorithm::Sha256, &nonce, n, &w.password);
    for n in 0..10 {
        let o = w.ask(Some(&right(200 + n)), ip(100), NOW).await;
        assert!(matches!(o, Outcome::Blocked { started: None, .. }), "{o:?}");
    }
    assert!(authenticated(&w.ask(Some(&right(300)), ip(200), NOW).await));
    // Once the username's window has passed, the new address is fine: it
    // was never blocked itself.
    let later = NOW + 900_001;
    let nonce = w.nonce(Algorithm::Sha256, later).await;
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 1, &w.password)), ip(100), later).await));
}

#[tokio::test]
async fn an_answer_for_another_request_uri_is_a_failure() {
    let w = world().await;
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    let target = format!("sip:+34611111111@{}", w.realm);
    let answer = w.answer_for(Algorithm::Sha256, &nonce, 1, &w.password, "INVITE", &target);
    let (realm, auth) = (w.realm.as_str(), answer.as_str());
    let invite = |uri| Request { method: "INVITE", uri, aor_host: realm, authorization: Some(auth), source: ip(1) };
    // The same answer presented for another target (a captured INVITE
    // re-sent to another number): a failure.
    let other = format!("sip:+34600000000@{}", w.realm);
    assert!(failed(&w.auth.authenticate(&invite(&other), NOW).await));
    // It was not consumed: presented for its own target it still works.
    assert!(authenticated(&w.auth.authenticate(&invite(&target), NOW).await));
}

/// A shared state that cannot be reached (the failure policy closed).
struct Down;

impl AbuseState for Down {
    fn decide<'a>(&'a self, _: Decide<'a>) -> Answer<'a, Verdict> {
        Box::pin(async { Err(Unavailable) })
    }
    fn strike(&self, _: u128, _: Key, _: StrikeRule, _: i64) -> Answer<'_, StrikeOutcome> {
        Box::pin(async { Err(Unavailable) })
    }
    fn attempt(&self, _: u128, _: Key, _: StrikeRule, _: i64) -> Answer<'_, Attempt> {
        Box::pin(async { Err(Unavailable) })
    }
    fn forgive(&self, _: u128, _: Key, _: Option<i64>) -> Answer<'_, ()> {
        Box::pin(async { Err(Unavailable) })
    }
    fn notice(&self, _: u128, _: Key, _: i64, _: i64) -> Answer<'_, bool> {
        Box::pin(async { Err(Unavailable) })
    }
    fn login_attempt(&self, _: u128, _: LoginKeys, _: LoginRule, _: i64) -> Answer<'_, LoginAdmission> {
        Box::pin(async { Err(Unavailable) })
    }
    fn mark(&self, _: u128, _: Key, _: i64, _: i64) -> Answer<'_, ()> {
        Box::pin(async { Err(Unavailable) })
    }
    fn clear(&self, _: u128, _: Key) -> Answer<'_, ()> {
        Box::pin(async { Err(Unavailable) })
    }
}

#[tokio::test]
async fn without_the_shared_state_nothing_is_authenticated() {
    let w = world_with(Arc::new(Down)).await;
    let nonce = NonceKey::new([3; 32]).mint(&w.realm, Algorithm::Sha256, NOW as u64);
    let right = w.answer(Algorithm::Sha256, &nonce, 1, &w.password);
    assert!(matches!(w.ask(Some(&right), ip(1), NOW).await, Outcome::Unavailable));
    assert!(matches!(w.ask(None, ip(1), NOW).await, Outcome::Unavailable));
}

#[tokio::test]
async fn after_one_success_an_address_authenticates_many_at_once() {
    // A PBX registering its phones from one address, many in flight.
    let w = world_at_a_distance().await;
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 1, &w.password)), ip(1), NOW).await));
    let answers = (2..22).map(|n| w.answer(Algorithm::Sha256, &nonce, n, &w.password)).collect();
    let outcomes = in_parallel(&w, &w.realm, answers, ip(1), NOW + 1).await;
    assert!(outcomes.iter().all(authenticated), "{outcomes:?}");
    // Still trusted the next day, and 29 days on (a success renews the
    // trust once a day)...
    let mut now = NOW;
    for days in [1, 29, 58] {
        now = NOW + days * 86_400_000;
        let nonce = w.nonce(Algorithm::Sha256, now).await;
        let answers = (1..21).map(|n| w.answer(Algorithm::Sha256, &nonce, n, &w.password)).collect();
        let outcomes = in_parallel(&w, &w.realm, answers, ip(1), now).await;
        assert!(outcomes.iter().all(authenticated), "day {days}: {outcomes:?}");
    }
    // ...but not once unused for longer than the trust lasts.
    let later = now + super::TRUST_MS + 1;
    let nonce = w.nonce(Algorithm::Sha256, later).await;
    let answers = (1..21).map(|n| w.answer(Algorithm::Sha256, &nonce, n, &w.password)).collect();
    let outcomes = in_parallel(&w, &w.realm, answers, ip(1), later).await;
    assert!(outcomes.iter().any(|o| matches!(o, Outcome::Blocked { .. })), "{outcomes:?}");
}

/// Twenty wrong guesses at once from `from`: only the first `threshold`
/// are even checked; then the right password is refused.
async fn parallel_guesses_stop_at_the_threshold(
    w: &Arc<World>,
    realm: &str,
    username: &str,
    password: &str,
    from: IpAddr,
) {
    let nonce = NonceKey::new([3; 32]).mint(realm, Algorithm::Sha256, NOW as u64);
    let uri = format!("sip:{realm}");
    let answer = |n: u32, p: &str| answer_as(realm, username, Algorithm::Sha256, &nonce, n, p, "REGISTER", &uri);
    let failures = || w.auth.stats.failures.load(std::sync::atomic::Ordering::Relaxed);
    let before = failures();
    let outcomes = in_parallel(w, realm, (1..=20).map(|n| answer(n, "guess")).collect(), from, NOW + 10).await;
    assert_eq!(failures() - before, 5, "checked: {outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| failed(o)).count(), 4, "{outcomes:?}");
    let started = outcomes.iter().filter(|o| matches!(o, Outcome::Blocked { started: Some(_), .. })).count();
    assert_eq!(started, 1, "{outcomes:?}");
    let req = Request { method: "REGISTER", uri: &uri, aor_host: realm, authorization: None, source: from };
    let right = answer(21, password);
    let o = w.auth.authenticate(&Request { authorization: Some(&right), ..req }, NOW + 20).await;
    assert!(matches!(o, Outcome::Blocked { started: None, .. }), "{o:?}");
}

#[tokio::test]
async fn an_untrusted_address_gets_no_more_guesses_in_parallel_than_the_threshold() {
    let w = world_at_a_distance().await;
    parallel_guesses_stop_at_the_threshold(&w, &w.realm, &w.username, &w.password, ip(1)).await;
}

#[tokio::test]
async fn trust_in_one_realm_gives_no_parallel_guesses_in_another() {
    // An address that authenticates with its own tenant's credential...
    let w = world_at_a_distance().await;
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Sha256, &nonce, 1, &w.password)), ip(1), NOW).await));
    // ...is counted up front against another tenant's usernames.
    let (realm, username, password) = w.other_tenant().await;
    parallel_guesses_stop_at_the_threshold(&w, &realm, &username, &password, ip(1)).await;
}

#[tokio::test]
async fn a_trusted_address_is_still_blocked_after_five_failures_in_a_row() {
    let w = world_at_a_distance().await;
    let nonce = w.nonce(Algorithm::Md5, NOW).await;
    assert!(authenticated(&w.ask(Some(&w.answer(Algorithm::Md5, &nonce, 1, &w.password)), ip(1), NOW).await));
    let mut last = None;
    for n in 2..=6 {
        let o = w.ask(Some(&w.answer(Algorithm::Md5, &nonce, n, "wrong")), ip(1), NOW + 1).await;
        if n < 6 {
            assert!(failed(&o), "{n}: {o:?}");
        }
        last = Some(o);
    }
    let Some(Outcome::Blocked { until_ms, started: Some(Started { nth: 1, .. }) }) = last else { panic!("{last:?}") };
    assert_eq!(until_ms, NOW + 1 + 900_000);
    // The right password is refused while it lasts, without being checked.
    let right = w.answer(Algorithm::Md5, &nonce, 7, &w.password);
    assert!(matches!(w.ask(Some(&right), ip(1), NOW + 2).await, Outcome::Blocked { started: None, .. }));
    assert!(matches!(w.ask(None, ip(1), NOW + 2).await, Outcome::Blocked { .. }));
    // Failures sent at once from a trusted address: one starts the block,
    // the others find it started.
    let later = until_ms;
    let nonce = w.nonce(Algorithm::Md5, later).await;
    let answers = (1..=12).map(|n| w.answer(Algorithm::Md5, &nonce, n, "wrong")).collect();
    let outcomes = in_parallel(&w, &w.realm, answers, ip(1), later).await;
    let started: Vec<_> = outcomes.iter().filter(|o| matches!(o, Outcome::Blocked { started: Some(_), .. })).collect();
    assert_eq!(started.len(), 1, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| failed(o)).count(), 4, "{outcomes:?}");
    // The second block of the day is longer.
    let Outcome::Blocked { until_ms, started: Some(Started { nth: 2, .. }) } = started[0] else { panic!() };
    assert_eq!(*until_ms, later + 1_800_000);
}

/// Revokes the live credential of `username` in `realm`.
async fn revoke(db: &Db, realm: &str, username: &str) {
    let row = palisade_store::sip::credential_by_username(db.reader(), username).await.unwrap().unwrap();
    let scope = TenantScope::for_system(realm.split('.').next().unwrap().parse().unwrap());
    let identity: IdentityId = row.identity_id.parse().unwrap();
    let mut tx = db.begin().await.unwrap();
    palisade_store::sip::revoke_credential(&mut tx, &scope, identity, username, NOW).await.unwrap().unwrap();
    tx.commit().await.unwrap();
}

#[tokio::test]
async fn a_revoked_credential_fails_at_once_here_and_within_a_moment_elsewhere() {
    let w = world().await;
    // Revoked through this instance: the next answer fails.
    let nonce = w.nonce(Algorithm::Sha256, NOW).await;
    let right = |n: u32| w.answer(Algorithm::Sha256, &nonce, n, &w.password);
    assert!(authenticated(&w.ask(Some(&right(1)), ip(1), NOW).await));
    assert!(authenticated(&w.ask(Some(&right(2)), ip(1), NOW + 1).await));
    revoke(&w.auth.db, &w.realm, &w.username).await;
    crate::credentials::forget(&w.username);
    assert!(failed(&w.ask(Some(&right(3)), ip(1), NOW + 2).await));
    // Revoked through another instance (nothing forgotten here): the
    // credential opened a moment ago still answers, for a moment only.
    let (realm, username, password) = w.other_tenant().await;
    let nonce = NonceKey::new([3; 32]).mint(&realm, Algorithm::Sha256, NOW as u64);
    let uri = format!("sip:{realm}");
    let ask = |n: u32, now: i64| {
        let answer = answer_as(&realm, &username, Algorithm::Sha256, &nonce, n, &password, "REGISTER", &uri);
        let (w, realm, uri) = (&w, realm.clone(), uri.clone());
        async move {
            let req = Request {
                method: "REGISTER",
                uri: &uri,
                aor_host: &realm,
                authorization: Some(&answer),
                source: ip(2),
            };
            w.auth.authenticate(&req, now).await
        }
    };
    assert!(authenticated(&ask(1, NOW).await));
    revoke(&w.auth.db, &realm, &username).await;
    let ttl = crate::credentials::RECENT_TTL_MS;
    assert!(authenticated(&ask(2, NOW + ttl - 1).await));
    assert!(failed(&ask(3, NOW + ttl).await));
}
