//! The failure policy: the shared state while Redis answers; while it does
//! not, each class of state either answers from this process's own state
//! (limits N times looser with N instances) or refuses ([`Unavailable`]),
//! as configured. After a failure, Redis is left alone for `retry_ms`,
//! then one call tries it again; the first success ends the degraded state.
//! The first retry of an outage comes sooner ([`FIRST_RETRY_MS`]), so one
//! lost reply does not refuse logins for a whole `retry_ms`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_config::{FailMode, RedisFailure};
use palisade_guard::limits::{Key, Kind};
use palisade_guard::state::{
    AbuseState, Answer, Attempt, Decide, Health, LocalState, LoginAdmission, LoginKeys, LoginRule, StrikeOutcome,
    StrikeRule, Unavailable, Verdict,
};

/// After the failure that starts an outage, the first retry comes this
/// soon (or after `retry_ms`, if shorter); the next ones every `retry_ms`.
/// An outage that starts within `retry_ms` of the last one's end gets no
/// quick retry: a Redis that keeps failing does not flap every 20 ms.
pub const FIRST_RETRY_MS: u64 = 20;

const NEVER: u64 = u64::MAX;

/// Told about Redis failures (metrics).
pub trait Observer: Send + Sync + 'static {
    /// A call failed or timed out.
    fn failure(&self);
    /// Redis became unreachable (`true`) or reachable again.
    fn degraded(&self, degraded: bool);
}

impl Observer for () {
    fn failure(&self) {}
    fn degraded(&self, _: bool) {}
}

/// The shared state with its failure policy.
pub struct Failover<S> {
    shared: S,
    local: LocalState,
    policy: RedisFailure,
    link: Link,
    observer: Arc<dyn Observer>,
}

/// Whether Redis is worth a try.
struct Link {
    origin: Instant,
    retry_ms: u64,
    degraded: AtomicBool,
    /// While degraded: when (ms since `origin`) the next call may try.
    retry_at: AtomicU64,
    /// When (ms since `origin`) the last outage ended: a failure soon after
    /// (a Redis that keeps failing) waits `retry_ms`, not the quick retry.
    recovered_at: AtomicU64,
}

impl Link {
    fn now(&self) -> u64 {
        u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// True when this call should go to Redis: always while it answers;
    /// while it does not, one call per `retry_ms`.
    fn should_try(&self) -> bool {
        self.should_try_at(self.now())
    }

    /// [`Link::should_try`] at `now` (ms since `origin`).
    fn should_try_at(&self, now: u64) -> bool {
        if !self.degraded.load(Ordering::Acquire) {
            return true;
        }
        let at = self.retry_at.load(Ordering::Acquire);
        now >= at
            && self.retry_at.compare_exchange(at, now + self.retry_ms, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl<S: AbuseState> Failover<S> {
    pub fn new(shared: S, policy: RedisFailure, retry: Duration, observer: Arc<dyn Observer>) -> Failover<S> {
        let link = Link {
            origin: Instant::now(),
            retry_ms: u64::try_from(retry.as_millis()).unwrap_or(1000).max(1),
            degraded: AtomicBool::new(false),
            retry_at: AtomicU64::new(0),
            recovered_at: AtomicU64::new(NEVER),
        };
        Failover { shared, local: LocalState::new(), policy, link, observer }
    }

    /// The per-process state answering while Redis does not.
    pub fn local(&self) -> &LocalState {
        &self.local
    }

    fn mode(&self, kind: Kind) -> FailMode {
        let p = &self.policy;
        match kind {
            Kind::AuthIp | Kind::Login | Kind::LoginAccount | Kind::LoginSpacing | Kind::LoginTrust => p.auth,
            Kind::CredentialFailure => p.credentials,
            Kind::Waf => p.waf,
            Kind::SipNonce | Kind::SipAuth | Kind::SipAuthUser | Kind::SipBlockCount | Kind::StirPassport => p.sip,
            Kind::SipFlood
            | Kind::Ip
            | Kind::Credential
            | Kind::Tenant
            | Kind::MessageCreate
            | Kind::CallCreate
            | Kind::IdentityRate
            | Kind::Burst
            | Kind::Notice => p.rate_limits,
        }
    }

    fn failed(&self) {
        self.observer.failure();
        let now = self.link.now();
        let recovered = self.link.recovered_at.load(Ordering::Acquire);
        let settled = recovered == NEVER || now.saturating_sub(recovered) >= self.link.retry_ms;
        let starts = !self.link.degraded.load(Ordering::Acquire);
        let wait = if starts && settled { self.link.retry_ms.min(FIRST_RETRY_MS) } else { self.link.retry_ms };
        self.link.retry_at.store(now + wait, Ordering::Release);
        if !self.link.degraded.swap(true, Ordering::AcqRel) {
            tracing::error!(target: "palisade::redis", "Redis is unreachable: shared limits are degraded");
            self.observer.degraded(true);
        }
    }

    fn succeeded(&self) {
        if self.link.degraded.load(Ordering::Acquire) && self.link.degraded.swap(false, Ordering::AcqRel) {
            self.link.recovered_at.store(self.link.now(), Ordering::Release);
            tracing::warn!(target: "palisade::redis", "Redis answers again: shared limits restored");
            self.observer.degraded(false);
        }
    }

    async fn run<T, F: Future<Output = Result<T, Unavailable>>>(
        &self,
        mode: FailMode,
        shared: impl FnOnce() -> F,
        local: impl FnOnce(&LocalState) -> T,
    ) -> Result<T, Unavailable> {
        if self.link.should_try() {
            match shared().await {
                Ok(v) => {
                    self.succeeded();
                    return Ok(v);
                }
                Err(Unavailable) => self.failed(),
            }
        }
        match mode {
            FailMode::Local => Ok(local(&self.local)),
            FailMode::Closed => Err(Unavailable),
        }
    }
}

/// The strictest of the modes.
fn strictest(modes: impl Iterator<Item = FailMode>) -> FailMode {
    let mut m = FailMode::Local;
    for x in modes {
        if x == FailMode::Closed {
            m = x;
        }
    }
    m
}

impl<S: AbuseState> AbuseState for Failover<S> {
    /// Closed when any bucket, or any refusing block, is of a closed class.
    fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict> {
        let kinds =
            d.buckets.iter().map(|b| b.key.kind).chain(d.blocks.iter().filter(|b| b.refuses).map(|b| b.key.kind));
        let mode = strictest(kinds.map(|k| self.mode(k)));
        Box::pin(self.run(mode, move || self.shared.decide(d), move |l| l.decide_now(&d)))
    }

    fn strike(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, StrikeOutcome> {
        let shared = move || self.shared.strike(partition, key, rule, now_ms);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.strike_now(partition, key, rule, now_ms)))
    }

    fn attempt(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, Attempt> {
        let shared = move || self.shared.attempt(partition, key, rule, now_ms);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.attempt_now(partition, key, rule, now_ms)))
    }

    fn forgive(&self, partition: u128, key: Key, started_block: Option<i64>) -> Answer<'_, ()> {
        let shared = move || self.shared.forgive(partition, key, started_block);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.forgive_now(partition, key, started_block)))
    }

    fn notice(&self, partition: u128, key: Key, now_ms: i64, period_ms: i64) -> Answer<'_, bool> {
        let shared = move || self.shared.notice(partition, key, now_ms, period_ms);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.notice_now(partition, key, now_ms, period_ms)))
    }

    fn login_attempt(
        &self,
        partition: u128,
        keys: LoginKeys,
        rule: LoginRule,
        now_ms: i64,
    ) -> Answer<'_, LoginAdmission> {
        let shared = move || self.shared.login_attempt(partition, keys, rule, now_ms);
        let mode = self.mode(keys.pair.kind);
        Box::pin(self.run(mode, shared, move |l| l.login_attempt_now(partition, keys, rule, now_ms)))
    }

    fn mark(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) -> Answer<'_, ()> {
        let shared = move || self.shared.mark(partition, key, now_ms, until_ms);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.mark_now(partition, key, now_ms, until_ms)))
    }

    fn clear(&self, partition: u128, key: Key) -> Answer<'_, ()> {
        let shared = move || self.shared.clear(partition, key);
        Box::pin(self.run(self.mode(key.kind), shared, move |l| l.clear_now(partition, key)))
    }

    fn health(&self) -> Health {
        if self.link.degraded.load(Ordering::Acquire) {
            Health::Degraded
        } else {
            Health::Shared
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_guard::limits::Limit;
    use palisade_guard::state::Bucket;
    use std::sync::atomic::AtomicUsize;

    const T0: i64 = 1_700_000_000_000;

    /// A shared state that can be switched off; counts the calls it gets.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        calls: AtomicUsize,
        inner: LocalState,
    }

    impl Flaky {
        fn answer<'a, T: Send + 'a>(&'a self, v: impl FnOnce(&LocalState) -> T + Send + 'a) -> Answer<'a, T> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                if self.down.load(Ordering::SeqCst) {
                    Err(Unavailable)
                } else {
                    Ok(v(&self.inner))
                }
            })
        }
    }

    /// The handle the failover holds; the test keeps another.
    struct Handle(Arc<Flaky>);

    impl AbuseState for Handle {
        fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict> {
            self.0.answer(move |l| l.decide_now(&d))
        }
        fn strike(&self, p: u128, key: Key, rule: StrikeRule, now: i64) -> Answer<'_, StrikeOutcome> {
            self.0.answer(move |l| l.strike_now(p, key, rule, now))
        }
        fn attempt(&self, p: u128, key: Key, rule: StrikeRule, now: i64) -> Answer<'_, Attempt> {
            self.0.answer(move |l| l.attempt_now(p, key, rule, now))
        }
        fn forgive(&self, p: u128, key: Key, started: Option<i64>) -> Answer<'_, ()> {
            self.0.answer(move |l| l.forgive_now(p, key, started))
        }
        fn notice(&self, p: u128, key: Key, now: i64, period: i64) -> Answer<'_, bool> {
            self.0.answer(move |l| l.notice_now(p, key, now, period))
        }
        fn login_attempt(&self, p: u128, keys: LoginKeys, rule: LoginRule, now: i64) -> Answer<'_, LoginAdmission> {
            self.0.answer(move |l| l.login_attempt_now(p, keys, rule, now))
        }
        fn mark(&self, p: u128, key: Key, now: i64, until: i64) -> Answer<'_, ()> {
            self.0.answer(move |l| l.mark_now(p, key, now, until))
        }
        fn clear(&self, p: u128, key: Key) -> Answer<'_, ()> {
            self.0.answer(move |l| l.clear_now(p, key))
        }
    }

    #[derive(Default)]
    struct Seen {
        failures: AtomicUsize,
        degraded: AtomicBool,
    }

    impl Observer for Seen {
        fn failure(&self) {
            self.failures.fetch_add(1, Ordering::SeqCst);
        }
        fn degraded(&self, d: bool) {
            self.degraded.store(d, Ordering::SeqCst);
        }
    }

    fn decision<'a>(buckets: &'a [Bucket]) -> Decide<'a> {
        Decide { partition: 1, now_ms: T0, blocks: &[], buckets, notice_ms: 60_000 }
    }

    #[tokio::test]
    async fn brute_force_classes_fail_closed_the_rest_falls_back() {
        let flaky = Arc::new(Flaky::default());
        let seen = Arc::new(Seen::default());
        let f = Failover::new(Handle(flaky.clone()), RedisFailure::default(), Duration::from_millis(100), seen.clone());
        let ip = [Bucket::enforce(Key::new(Kind::Ip, 1), Limit::per_minute("ip", 1).unwrap())];
        let auth = [ip[0], Bucket::enforce(Key::new(Kind::AuthIp, 1), Limit::per_minute("auth_ip", 10).unwrap())];
        assert!(f.decide(decision(&ip)).await.unwrap().refused.is_none());
        assert_eq!(f.health(), Health::Shared);
        flaky.down.store(true, Ordering::SeqCst);
        // Local limits: the shared bucket's charge is not known here.
        assert!(f.decide(decision(&ip)).await.unwrap().refused.is_none());
        assert_eq!(f.decide(decision(&ip)).await.unwrap().refused, Some(0));
        assert_eq!(f.health(), Health::Degraded);
        assert!(seen.degraded.load(Ordering::SeqCst));
        // Auth-route buckets, logins, failed-credential counts: refused.
        assert_eq!(f.decide(decision(&auth)).await, Err(Unavailable));
        let rule = StrikeRule { threshold: 5, window_ms: 1000, block_ms: 1000 };
        let keys = LoginKeys { pair: Key::new(Kind::Login, 1), account: Key::new(Kind::LoginAccount, 1) };
        let login = LoginRule { pair: rule, account: rule, spacing_ms: 1000 };
        assert_eq!(f.login_attempt(1, keys, login, T0).await, Err(Unavailable));
        assert_eq!(f.strike(1, Key::new(Kind::CredentialFailure, 1), rule, T0).await, Err(Unavailable));
        assert_eq!(f.mark(1, keys.trust(), T0, T0 + 1).await, Err(Unavailable));
        // WAF strikes and notices fall back.
        assert_eq!(f.strike(1, Key::new(Kind::Waf, 1), rule, T0).await.unwrap().count, 1);
        assert!(f.notice(1, Key::new(Kind::Notice, 1), T0, 1000).await.unwrap());
        // Within the retry period Redis was tried once, by the first call.
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
        assert_eq!(seen.failures.load(Ordering::SeqCst), 1);
        // After it, one call tries again; Redis back: shared again.
        tokio::time::sleep(Duration::from_millis(120)).await;
        flaky.down.store(false, Ordering::SeqCst);
        // The shared bucket kept its charge from before the outage.
        assert_eq!(f.decide(decision(&auth)).await.unwrap().refused, Some(0));
        assert_eq!(f.health(), Health::Shared);
        assert!(!seen.degraded.load(Ordering::SeqCst));
        assert!(matches!(f.login_attempt(1, keys, login, T0).await, Ok(LoginAdmission::Admitted { .. })));
    }

    #[tokio::test]
    async fn a_lone_failure_degrades_briefly_an_outage_retries_at_its_pace() {
        let flaky = Arc::new(Flaky::default());
        let f = Failover::new(Handle(flaky.clone()), RedisFailure::default(), Duration::from_secs(60), Arc::new(()));
        let ip = [Bucket::enforce(Key::new(Kind::Ip, 1), Limit::per_minute("ip", 100).unwrap())];
        // One lost reply: Redis is tried again after FIRST_RETRY_MS, not 60 s.
        flaky.down.store(true, Ordering::SeqCst);
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(f.health(), Health::Degraded);
        flaky.down.store(false, Ordering::SeqCst);
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 1, "retried before FIRST_RETRY_MS");
        tokio::time::sleep(Duration::from_millis(FIRST_RETRY_MS + 10)).await;
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(f.health(), Health::Shared);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
        // Failing again right after: no quick retry (no flapping every 20 ms).
        flaky.down.store(true, Ordering::SeqCst);
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3);
        tokio::time::sleep(Duration::from_millis(FIRST_RETRY_MS + 10)).await;
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 3, "a recent outage retried quickly");
        assert_eq!(f.health(), Health::Degraded);
        // A real outage from the start: after the early retry fails too, the next waits retry_ms.
        let flaky = Arc::new(Flaky::default());
        flaky.down.store(true, Ordering::SeqCst);
        let f = Failover::new(Handle(flaky.clone()), RedisFailure::default(), Duration::from_secs(60), Arc::new(()));
        assert!(f.decide(decision(&ip)).await.is_ok());
        tokio::time::sleep(Duration::from_millis(FIRST_RETRY_MS + 10)).await;
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2);
        tokio::time::sleep(Duration::from_millis(FIRST_RETRY_MS + 10)).await;
        assert!(f.decide(decision(&ip)).await.is_ok());
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 2, "retried before retry_ms");
        assert_eq!(f.health(), Health::Degraded);
    }

    /// While degraded, the call that finds the retry time past tries, and
    /// moves it a period on: the calls made meanwhile (while its try is
    /// on its way) do not try too.
    #[test]
    fn one_call_a_period_tries_while_degraded() {
        let link = |retry_ms| Link {
            origin: Instant::now(),
            retry_ms,
            degraded: AtomicBool::new(true),
            retry_at: AtomicU64::new(5),
            recovered_at: AtomicU64::new(NEVER),
        };
        let l = link(1000);
        assert!(!l.should_try_at(4));
        assert!(l.should_try_at(5));
        assert!(!l.should_try_at(5));
        assert!(!l.should_try_at(1004));
        assert!(l.should_try_at(1005));
        assert!(!l.should_try_at(1005));
        let l = link(1);
        assert!(l.should_try_at(5));
        assert!(!l.should_try_at(5));
        assert!(l.should_try_at(6));
        // Not degraded: every call tries.
        l.degraded.store(false, Ordering::SeqCst);
        assert!(l.should_try_at(0) && l.should_try_at(0));
    }

    /// Each kind of key is of one class, and follows that class's mode
    /// only: the login and credential counters fail closed by default,
    /// whatever the rate limits do.
    #[test]
    fn every_kind_follows_its_own_class() {
        use FailMode::{Closed, Local};
        let classes: [(&str, &[Kind]); 5] = [
            ("auth", &[Kind::AuthIp, Kind::Login, Kind::LoginAccount, Kind::LoginSpacing, Kind::LoginTrust]),
            ("credentials", &[Kind::CredentialFailure]),
            ("waf", &[Kind::Waf]),
            ("sip", &[Kind::SipNonce, Kind::SipAuth, Kind::SipAuthUser, Kind::SipBlockCount, Kind::StirPassport]),
            (
                "rate_limits",
                &[
                    Kind::Ip,
                    Kind::Credential,
                    Kind::Tenant,
                    Kind::MessageCreate,
                    Kind::CallCreate,
                    Kind::IdentityRate,
                    Kind::Burst,
                    Kind::Notice,
                    Kind::SipFlood,
                ],
            ),
        ];
        for (closed, _) in classes {
            let mode = |c: &str| if c == closed { Closed } else { Local };
            let policy = RedisFailure {
                auth: mode("auth"),
                credentials: mode("credentials"),
                waf: mode("waf"),
                rate_limits: mode("rate_limits"),
                sip: mode("sip"),
            };
            let f = Failover::new(LocalState::new(), policy, Duration::from_secs(1), Arc::new(()));
            for (class, kinds) in classes {
                for &kind in kinds {
                    assert_eq!(f.mode(kind), mode(class), "{kind:?} with {closed} closed");
                }
            }
        }
        let f = Failover::new(LocalState::new(), RedisFailure::default(), Duration::from_secs(1), Arc::new(()));
        for kind in [Kind::AuthIp, Kind::Login, Kind::LoginAccount, Kind::LoginSpacing, Kind::LoginTrust] {
            assert_eq!(f.mode(kind), Closed, "{kind:?}");
        }
        assert_eq!(f.mode(Kind::CredentialFailure), Closed);
        for kind in [Kind::SipNonce, Kind::SipAuth, Kind::SipAuthUser, Kind::SipBlockCount] {
            assert_eq!(f.mode(kind), Closed, "{kind:?}");
        }
    }

    /// What the fallback counted is in the state `local()` shows: the
    /// state the server's sweeps and readiness look at.
    #[tokio::test]
    async fn local_is_the_state_that_answers_during_an_outage() {
        let flaky = Arc::new(Flaky::default());
        flaky.down.store(true, Ordering::SeqCst);
        let f = Failover::new(Handle(flaky), RedisFailure::default(), Duration::from_secs(60), Arc::new(()));
        let rule = StrikeRule { threshold: 5, window_ms: 60_000, block_ms: 60_000 };
        let key = Key::new(Kind::Waf, 1);
        assert_eq!(f.strike(1, key, rule, T0).await.unwrap().count, 1);
        assert_eq!(f.strike(1, key, rule, T0).await.unwrap().count, 2);
        assert_eq!(f.local().strike_now(1, key, rule, T0).count, 3);
        assert_eq!(f.strike(1, key, rule, T0).await.unwrap().count, 4);
    }

    #[tokio::test]
    async fn the_policy_is_per_class() {
        let flaky = Arc::new(Flaky::default());
        flaky.down.store(true, Ordering::SeqCst);
        let policy = RedisFailure {
            rate_limits: FailMode::Closed,
            waf: FailMode::Closed,
            auth: FailMode::Local,
            credentials: FailMode::Local,
            sip: FailMode::Local,
        };
        let f = Failover::new(Handle(flaky), policy, Duration::from_secs(60), Arc::new(()));
        let ip = [Bucket::enforce(Key::new(Kind::Ip, 1), Limit::per_minute("ip", 1).unwrap())];
        assert_eq!(f.decide(decision(&ip)).await, Err(Unavailable));
        let rule = StrikeRule { threshold: 5, window_ms: 1000, block_ms: 1000 };
        assert_eq!(f.strike(1, Key::new(Kind::Waf, 1), rule, T0).await, Err(Unavailable));
        assert_eq!(f.strike(1, Key::new(Kind::CredentialFailure, 1), rule, T0).await.unwrap().count, 1);
        assert!(f.attempt(1, Key::new(Kind::Login, 1), rule, T0).await.is_ok());
        // A refusing WAF block check is closed too; an informational one not.
        let checks = [palisade_guard::state::BlockCheck { key: Key::new(Kind::Waf, 1), refuses: true }];
        let d = Decide { partition: 1, now_ms: T0, blocks: &checks, buckets: &[], notice_ms: 1 };
        assert_eq!(f.decide(d).await, Err(Unavailable));
        let checks = [palisade_guard::state::BlockCheck { key: Key::new(Kind::Waf, 1), refuses: false }];
        let login = [Bucket::enforce(Key::new(Kind::AuthIp, 1), Limit::per_minute("auth_ip", 1).unwrap())];
        let d = Decide { partition: 1, now_ms: T0, blocks: &checks, buckets: &login, notice_ms: 1 };
        assert!(f.decide(d).await.is_ok());
        // A closed class among local ones closes the decision.
        let both = [login[0], ip[0]];
        let d = Decide { partition: 1, now_ms: T0, blocks: &[], buckets: &both, notice_ms: 1 };
        assert_eq!(f.decide(d).await, Err(Unavailable));
    }
}
