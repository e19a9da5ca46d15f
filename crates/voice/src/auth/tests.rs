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
    let policy = Policy { rate_per_second: None, monthly_budget: None, allowed_countries: "[]" };
    let new = NewIdentity { id, kind: "number", number: "+12025550100", country: "US", name: "n", policy, now: NOW };
    palisade_store::identities::insert(db.reader(), &scope, &new).await.unwrap();
    let sealer = Arc::new(Sealer::new(&[9; 32]));
    let mut tx = db.begin().await.unwrap();
    let c = crate::credentials::create(&mut tx, &sealer, &scope, id, DOMAIN, NOW).await.unwrap().unwrap();
    tx.commit().await.unwrap();
    let auth = DigestAuth {
        db,
        sealer,
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
        let head = format!(
            "Digest username=\"{}\", realm=\"{}\", nonce=\"{nonce}\", uri=\"{uri}\", algorithm={}, qop=auth, \
             nc={nc:08x}, cnonce=\"c0ffee\"",
            self.username,
            self.realm,
            alg.name()
        );
        let dummy = "0".repeat(alg.hex_len());
        let creds = palisade_digest::parse(&format!("{head}, response=\"{dummy}\"")).unwrap();
        let ha1 = palisade_digest::ha1(alg, &self.username, &self.realm, password);
        format!("{head}, response=\"{}\"", palisade_digest::response(alg, &ha1, &creds, method))
    }
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
