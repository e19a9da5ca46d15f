//! The same assertions against the in-process state and the Redis state:
//! the two must not differ in anything a caller can see. The Redis
//! variants need PALISADE_TEST_REDIS_URL (at build time, else they are
//! ignored, and so reported as skipped); each test uses its own key prefix.

use std::time::Duration;

use palisade_cluster::RedisState;
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::state::{
    AbuseState, Attempt, BlockCheck, Bucket, Decide, LocalState, LoginAdmission, LoginKeys, LoginRule, StrikeOutcome,
    StrikeRule, Verdict,
};

const T0: i64 = 1_700_000_000_000;

fn local() -> LocalState {
    LocalState::new()
}

/// A Redis state under a fresh random key prefix.
async fn redis() -> RedisState {
    let url = std::env::var("PALISADE_TEST_REDIS_URL").expect("PALISADE_TEST_REDIS_URL is not set");
    let config = palisade_config::Redis {
        url: Some(palisade_config::Secret::new(url)),
        key_prefix: format!("test-{:016x}", rand::random::<u64>()),
        ..Default::default()
    };
    let conn = palisade_cluster::redis::connect(&config).expect("connect");
    RedisState::new(conn, &config.key_prefix, Duration::from_secs(5))
}

macro_rules! conformance {
    ($($name:ident),* $(,)?) => {
        mod in_process {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name(&super::local()).await
                }
            )*
        }
        mod in_redis {
            $(
                #[tokio::test]
                #[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
                async fn $name() {
                    super::$name(&super::redis().await).await
                }
            )*
        }
    };
}

conformance!(
    a_refusal_charges_no_bucket,
    the_longest_refusal_wins,
    strikes_block_and_blocks_stop_decisions,
    informational_blocks_do_not_stop,
    attempts_count_first_and_success_forgives,
    logins_lock_pairs_and_space_throttled_accounts,
    spikes_are_reported_once_per_period_and_never_refuse,
    notices_once_per_period,
    one_time_values_are_used_once,
    concurrent_uses_of_one_value_admit_one,
    a_strike_one_window_old_no_longer_counts,
    a_pair_lock_ends_on_time,
    of_equal_refusals_the_first_is_named,
    decisions_of_zero_to_four_buckets,
    marks_hold_and_clears_forget,
    per_second_limits_refill_by_the_nanosecond,
    concurrent_decisions_never_over_admit,
    a_keys_bucket_and_its_strikes_are_apart,
    of_refusing_blocks_the_first_is_named,
    a_refusal_is_new_again_when_its_notice_ends,
    a_stale_success_does_not_lift_a_later_block,
);

fn lim(name: &'static str, per_min: u32) -> Limit {
    Limit::per_minute(name, per_min).unwrap()
}

async fn decide(s: &dyn AbuseState, now: i64, blocks: &[BlockCheck], buckets: &[Bucket]) -> Verdict {
    s.decide(Decide { partition: 7, now_ms: now, blocks, buckets, notice_ms: 60_000 }).await.unwrap()
}

async fn strike(s: &dyn AbuseState, p: u128, key: Key, rule: StrikeRule, now: i64) -> StrikeOutcome {
    s.strike(p, key, rule, now).await.unwrap()
}

async fn attempt(s: &dyn AbuseState, key: Key, rule: StrikeRule, now: i64) -> Attempt {
    s.attempt(7, key, rule, now).await.unwrap()
}

async fn login(s: &dyn AbuseState, keys: LoginKeys, rule: LoginRule, now: i64) -> LoginAdmission {
    s.login_attempt(1, keys, rule, now).await.unwrap()
}

async fn a_refusal_charges_no_bucket(s: &dyn AbuseState) {
    let tight = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 2));
    let loose = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 100));
    for _ in 0..2 {
        assert!(decide(s, T0, &[], &[loose, tight]).await.refused.is_none());
    }
    for _ in 0..10 {
        assert_eq!(decide(s, T0, &[], &[loose, tight]).await.refused, Some(1));
    }
    let v = decide(s, T0, &[], &[loose]).await;
    assert_eq!(loose.limit.remaining(v.standings[0].reset_ns), 100 - 3);
}

async fn the_longest_refusal_wins(s: &dyn AbuseState) {
    let a = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 1));
    let b = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 2));
    assert!(decide(s, T0, &[], &[a]).await.refused.is_none());
    assert!(decide(s, T0, &[], &[b]).await.refused.is_none());
    assert!(decide(s, T0, &[], &[b]).await.refused.is_none());
    let v = decide(s, T0, &[], &[b, a]).await;
    assert_eq!(v.refused, Some(1));
    assert_eq!(v.standings[1].retry_after_ns, 60_000_000_000);
    assert_eq!(v.standings[0].retry_after_ns, 30_000_000_000);
    assert!(v.refusal_is_new);
    assert!(!decide(s, T0 + 1, &[], &[b, a]).await.refusal_is_new);
    assert!(decide(s, T0 + 60_001, &[], &[b, a]).await.refused.is_none());
}

async fn strikes_block_and_blocks_stop_decisions(s: &dyn AbuseState) {
    let key = Key::new(Kind::Waf, 9);
    let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 900_000 };
    for i in 0..5 {
        assert_eq!(strike(s, 7, key, rule, T0 + i * 40_000).await.blocked_until, None);
    }
    let t = T0 + 500_000;
    assert_eq!(strike(s, 7, key, rule, t).await.count, 1);
    assert_eq!(strike(s, 7, key, rule, t + 1).await.count, 2);
    assert_eq!(strike(s, 7, key, rule, t + 2).await.blocked_until, Some(t + 2 + 900_000));
    let bucket = Bucket::enforce(Key::new(Kind::Ip, 9), lim("ip", 10));
    let blocks = [BlockCheck { key: Key::new(Kind::Login, 9), refuses: false }, BlockCheck { key, refuses: true }];
    let v = decide(s, t + 3, &blocks, &[bucket]).await;
    assert_eq!(v.blocked, Some((1, t + 2 + 900_000)));
    assert!(v.block_active(1) && !v.block_active(0));
    let v = decide(s, t + 2 + 900_000, &blocks, &[bucket]).await;
    assert_eq!(v.blocked, None);
    assert_eq!(bucket.limit.remaining(v.standings[0].reset_ns), 9);
}

async fn informational_blocks_do_not_stop(s: &dyn AbuseState) {
    let key = Key::new(Kind::CredentialFailure, 1);
    let rule = StrikeRule { threshold: 1, window_ms: 1000, block_ms: 1000 };
    strike(s, 7, key, rule, T0).await;
    let bucket = Bucket::enforce(Key::new(Kind::Ip, 1), lim("ip", 10));
    let v = decide(s, T0, &[BlockCheck { key, refuses: false }], &[bucket]).await;
    assert!(v.block_active(0) && v.blocked.is_none() && v.refused.is_none());
}

async fn attempts_count_first_and_success_forgives(s: &dyn AbuseState) {
    let key = Key::new(Kind::Login, 1);
    let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 60_000 };
    let counted = |a: Attempt| match a {
        Attempt::Counted(o) => o,
        Attempt::Locked { .. } => panic!("locked"),
    };
    counted(attempt(s, key, rule, T0).await);
    counted(attempt(s, key, rule, T0).await);
    let ok = counted(attempt(s, key, rule, T0).await);
    assert!(ok.blocked_until.is_some());
    s.forgive(7, key, ok.blocked_until).await.unwrap();
    assert_eq!(counted(attempt(s, key, rule, T0).await).count, 1);
    counted(attempt(s, key, rule, T0).await);
    let third = counted(attempt(s, key, rule, T0).await);
    assert!(third.blocked_until.is_some());
    assert_eq!(attempt(s, key, rule, T0).await, Attempt::Locked { until: T0 + 60_000 });
    s.forgive(7, key, None).await.unwrap();
    assert!(matches!(attempt(s, key, rule, T0 + 59_999).await, Attempt::Locked { .. }));
    assert!(matches!(attempt(s, key, rule, T0 + 60_000).await, Attempt::Counted(_)));
    // Forgiving what was never counted changes nothing.
    s.forgive(7, Key::new(Kind::Login, 99), Some(T0)).await.unwrap();
    assert_eq!(counted(attempt(s, Key::new(Kind::Login, 99), rule, T0).await).count, 1);
}

async fn logins_lock_pairs_and_space_throttled_accounts(s: &dyn AbuseState) {
    let rule = LoginRule {
        pair: StrikeRule { threshold: 2, window_ms: 60_000, block_ms: 60_000 },
        account: StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 60_000 },
        spacing_ms: 10_000,
    };
    let keys = |ip: u128| LoginKeys { pair: Key::new(Kind::Login, ip), account: Key::new(Kind::LoginAccount, 1) };
    let admitted = |a: LoginAdmission| matches!(a, LoginAdmission::Admitted { .. });
    assert!(admitted(login(s, keys(10), rule, T0).await));
    assert_eq!(login(s, keys(10), rule, T0).await, LoginAdmission::Admitted { pair_lock_started: Some(T0 + 60_000) });
    assert_eq!(login(s, keys(10), rule, T0).await, LoginAdmission::Refused { pair_locked: true });
    assert!(admitted(login(s, keys(11), rule, T0).await));
    s.mark(1, keys(12).trust(), T0, T0 + 3_600_000).await.unwrap();
    for _ in 0..3 {
        strike(s, 1, keys(0).account, rule.account, T0).await;
    }
    assert!(admitted(login(s, keys(20), rule, T0).await));
    assert_eq!(login(s, keys(21), rule, T0 + 9_999).await, LoginAdmission::Refused { pair_locked: false });
    assert!(admitted(login(s, keys(21), rule, T0 + 10_000).await));
    assert!(admitted(login(s, keys(12), rule, T0 + 10_001).await));
    assert!(admitted(login(s, keys(12), rule, T0 + 10_001).await));
    assert!(!admitted(login(s, keys(12), rule, T0 + 10_001).await));
    s.clear(1, keys(0).account).await.unwrap();
    assert!(admitted(login(s, keys(22), rule, T0 + 10_002).await));
    assert!(admitted(login(s, keys(23), rule, T0 + 10_002).await));
}

async fn spikes_are_reported_once_per_period_and_never_refuse(s: &dyn AbuseState) {
    let burst = Bucket::observe(Key::new(Kind::Burst, 1), Limit::per_second("burst", 2).unwrap());
    let mut spikes = 0;
    for _ in 0..20 {
        let v = decide(s, T0, &[], &[burst]).await;
        assert!(v.refused.is_none());
        spikes += usize::from(v.spike.is_some());
    }
    assert_eq!(spikes, 1);
    // An observed bucket beside an enforced one: the spike is reported, the
    // request admitted and charged.
    let key = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 100));
    let v = decide(s, T0 + 60_000, &[], &[key, burst]).await;
    assert_eq!((v.refused, v.spike), (None, None));
    assert_eq!(key.limit.remaining(v.standings[0].reset_ns), 99);
}

async fn notices_once_per_period(s: &dyn AbuseState) {
    let key = Key::new(Kind::Notice, 1);
    assert!(s.notice(7, key, T0, 60_000).await.unwrap());
    assert!(!s.notice(7, key, T0 + 59_999, 60_000).await.unwrap());
    assert!(s.notice(7, key, T0 + 60_000, 60_000).await.unwrap());
    // Another partition is another key.
    assert!(s.notice(8, key, T0, 60_000).await.unwrap());
}

async fn one_time_values_are_used_once(s: &dyn AbuseState) {
    let key = Key::new(Kind::SipNonce, 1);
    assert!(s.consume_once(7, key, T0, T0 + 300_000).await.unwrap());
    assert!(!s.consume_once(7, key, T0 + 299_999, T0 + 300_000).await.unwrap());
    assert!(s.consume_once(7, Key::new(Kind::SipNonce, 2), T0, T0 + 300_000).await.unwrap());
    assert!(s.consume_once(8, key, T0, T0 + 300_000).await.unwrap());
}

/// A replay racing its original: exactly one of them is accepted.
async fn concurrent_uses_of_one_value_admit_one(s: &dyn AbuseState) {
    let key = Key::new(Kind::SipNonce, 3);
    let tries = (0..16).map(|_| s.consume_once(7, key, T0, T0 + 300_000));
    let firsts = futures_join(tries).await.into_iter().filter(|r| *r == Ok(true)).count();
    assert_eq!(firsts, 1);
}

async fn a_strike_one_window_old_no_longer_counts(s: &dyn AbuseState) {
    let key = Key::new(Kind::Waf, 1);
    let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 1_000 };
    assert_eq!(strike(s, 7, key, rule, T0).await.count, 1);
    assert_eq!(strike(s, 7, key, rule, T0 + 30_000).await.count, 2);
    assert_eq!(strike(s, 7, key, rule, T0 + 60_000).await, StrikeOutcome { count: 2, blocked_until: None });
    assert_eq!(
        strike(s, 7, key, rule, T0 + 60_001).await,
        StrikeOutcome { count: 3, blocked_until: Some(T0 + 61_001) }
    );
    for count in [1, 2, 3, 3, 3] {
        assert_eq!(strike(s, 7, key, rule, T0 + 60_002).await, StrikeOutcome { count, blocked_until: None });
    }
    assert_eq!(strike(s, 7, key, rule, T0 + 61_001).await.blocked_until, Some(T0 + 62_001));
    let one = StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 60_000 };
    let k = Key::new(Kind::CredentialFailure, 2);
    assert_eq!(strike(s, 7, k, one, T0).await.blocked_until, Some(T0 + 60_000));
    assert_eq!(strike(s, 7, k, one, T0 + 1).await.count, 1);
    assert_eq!(strike(s, 7, k, one, T0 + 2).await.count, 1);
}

async fn a_pair_lock_ends_on_time(s: &dyn AbuseState) {
    let rule = LoginRule {
        pair: StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 60_000 },
        account: StrikeRule { threshold: 100, window_ms: 60_000, block_ms: 60_000 },
        spacing_ms: 10_000,
    };
    let keys = LoginKeys { pair: Key::new(Kind::Login, 1), account: Key::new(Kind::LoginAccount, 1) };
    assert_eq!(login(s, keys, rule, T0).await, LoginAdmission::Admitted { pair_lock_started: Some(T0 + 60_000) });
    assert_eq!(login(s, keys, rule, T0 + 59_999).await, LoginAdmission::Refused { pair_locked: true });
    assert!(matches!(login(s, keys, rule, T0 + 60_000).await, LoginAdmission::Admitted { .. }));
}

async fn of_equal_refusals_the_first_is_named(s: &dyn AbuseState) {
    let a = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 1));
    let b = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 1));
    assert!(decide(s, T0, &[], &[a, b]).await.refused.is_none());
    let v = decide(s, T0, &[], &[a, b]).await;
    assert_eq!(v.standings[0].retry_after_ns, v.standings[1].retry_after_ns);
    assert_eq!(v.refused, Some(0));
}

async fn decisions_of_zero_to_four_buckets(s: &dyn AbuseState) {
    let v = decide(s, T0, &[], &[]).await;
    assert_eq!(v, Verdict::default());
    let b = |kind, n| Bucket::enforce(Key::new(kind, 1), lim("x", n));
    let three = [b(Kind::Ip, 10), b(Kind::Credential, 10), b(Kind::Tenant, 1)];
    assert!(decide(s, T0, &[], &three).await.refused.is_none());
    assert_eq!(decide(s, T0, &[], &three).await.refused, Some(2));
    let four = [three[0], three[1], b(Kind::MessageCreate, 10), b(Kind::CallCreate, 10)];
    let v = decide(s, T0, &[], &four).await;
    assert!(v.refused.is_none());
    let left = [0, 1, 2, 3].map(|i| four[i].limit.remaining(v.standings[i].reset_ns));
    assert_eq!(left, [8, 8, 9, 9]);
}

/// A key's rate bucket and its strikes, marks and notices are two
/// entries: noting one does not touch the other.
async fn a_keys_bucket_and_its_strikes_are_apart(s: &dyn AbuseState) {
    let key = Key::new(Kind::Credential, 9);
    let b = Bucket::enforce(key, lim("key", 1));
    assert!(decide(s, T0, &[], &[b]).await.refused.is_none());
    // A notice, a strike and a clear of the same key.
    assert!(s.notice(7, key, T0, 60_000).await.unwrap());
    strike(s, 7, key, StrikeRule { threshold: 5, window_ms: 60_000, block_ms: 60_000 }, T0).await;
    s.clear(7, key).await.unwrap();
    // The bucket still holds its one charge, and its first refusal is new.
    let v = decide(s, T0 + 1, &[], &[b]).await;
    assert_eq!(v.refused, Some(0));
    assert!(v.refusal_is_new);
    // And the notice of the bucket did not take the key's own.
    assert!(s.notice(7, Key::new(Kind::Credential, 10), T0 + 1, 60_000).await.unwrap());
}

async fn of_refusing_blocks_the_first_is_named(s: &dyn AbuseState) {
    let (a, b, c) = (Key::new(Kind::Waf, 21), Key::new(Kind::Waf, 22), Key::new(Kind::Waf, 23));
    s.mark(7, a, T0, T0 + 5_000).await.unwrap();
    s.mark(7, b, T0, T0 + 9_000).await.unwrap();
    s.mark(7, c, T0, T0 + 7_000).await.unwrap();
    let checks = [BlockCheck { key: a, refuses: true }, BlockCheck { key: b, refuses: true }];
    let v = decide(s, T0 + 1, &checks, &[]).await;
    assert_eq!(v.blocked, Some((0, T0 + 5_000)));
    assert!(v.block_active(0) && v.block_active(1));
    let checks = [BlockCheck { key: a, refuses: false }, checks[1], BlockCheck { key: c, refuses: true }];
    let v = decide(s, T0 + 1, &checks, &[]).await;
    assert_eq!(v.blocked, Some((1, T0 + 9_000)));
    // The first block over, the next refusing one is named.
    let v = decide(s, T0 + 5_000, &[BlockCheck { key: a, refuses: true }, checks[2]], &[]).await;
    assert_eq!(v.blocked, Some((1, T0 + 7_000)));
    assert!(!v.block_active(0));
}

/// A refusal is reported as new once per notice period: again at the
/// very millisecond the period ends.
async fn a_refusal_is_new_again_when_its_notice_ends(s: &dyn AbuseState) {
    let b = Bucket::enforce(Key::new(Kind::Credential, 31), lim("key", 1));
    let at =
        |now| Decide { partition: 7, now_ms: now, blocks: &[], buckets: std::slice::from_ref(&b), notice_ms: 1_000 };
    assert!(s.decide(at(T0)).await.unwrap().refused.is_none());
    let v = s.decide(at(T0 + 1)).await.unwrap();
    assert_eq!((v.refused, v.refusal_is_new), (Some(0), true));
    let v = s.decide(at(T0 + 1_000)).await.unwrap();
    assert_eq!((v.refused, v.refusal_is_new), (Some(0), false));
    let v = s.decide(at(T0 + 1_001)).await.unwrap();
    assert_eq!((v.refused, v.refusal_is_new), (Some(0), true));
}

/// A success forgives the block its own attempt started, not one started
/// since by other attempts.
async fn a_stale_success_does_not_lift_a_later_block(s: &dyn AbuseState) {
    let key = Key::new(Kind::Login, 41);
    let rule = StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 60_000 };
    let first = match attempt(s, key, rule, T0).await {
        Attempt::Counted(o) => o.blocked_until,
        Attempt::Locked { .. } => panic!("locked"),
    };
    assert_eq!(first, Some(T0 + 60_000));
    let second = match attempt(s, key, rule, T0 + 60_000).await {
        Attempt::Counted(o) => o.blocked_until,
        Attempt::Locked { .. } => panic!("locked"),
    };
    assert_eq!(second, Some(T0 + 120_000));
    s.forgive(7, key, first).await.unwrap();
    assert_eq!(attempt(s, key, rule, T0 + 60_001).await, Attempt::Locked { until: T0 + 120_000 });
    s.forgive(7, key, second).await.unwrap();
    assert!(matches!(attempt(s, key, rule, T0 + 60_002).await, Attempt::Counted(_)));
}

async fn marks_hold_and_clears_forget(s: &dyn AbuseState) {
    let key = Key::new(Kind::Waf, 3);
    let check = [BlockCheck { key, refuses: true }];
    let ip = Bucket::enforce(Key::new(Kind::Ip, 3), lim("ip", 10));
    s.mark(7, key, T0, T0 + 5_000).await.unwrap();
    // A shorter mark does not shorten it.
    s.mark(7, key, T0, T0 + 1_000).await.unwrap();
    assert_eq!(decide(s, T0 + 4_999, &check, &[ip]).await.blocked, Some((0, T0 + 5_000)));
    s.clear(7, key).await.unwrap();
    assert_eq!(decide(s, T0 + 4_999, &check, &[ip]).await.blocked, None);
    // Clearing what is not there is fine.
    s.clear(7, Key::new(Kind::Waf, 4)).await.unwrap();
}

async fn per_second_limits_refill_by_the_nanosecond(s: &dyn AbuseState) {
    // 7 per second: an interval of 142,857,142 ns, not a whole millisecond.
    let l = Limit::per_second("ident", 7).unwrap();
    let b = Bucket::enforce(Key::new(Kind::IdentityRate, 1), l);
    let mut admitted = 0;
    for _ in 0..20 {
        admitted += usize::from(decide(s, T0, &[], &[b]).await.refused.is_none());
    }
    assert_eq!(admitted, 14);
    let v = decide(s, T0, &[], &[b]).await;
    assert_eq!(v.standings[0].retry_after_ns, l.interval_ns);
    assert_eq!(v.standings[0].reset_ns, 14 * l.interval_ns);
    assert_eq!(decide(s, T0 + 142, &[], &[b]).await.refused, Some(0));
    let v = decide(s, T0 + 143, &[], &[b]).await;
    assert_eq!(v.refused, None);
    assert_eq!(v.standings[0].reset_ns, 14 * l.interval_ns - 143_000_000 + l.interval_ns);
}

async fn concurrent_decisions_never_over_admit(s: &dyn AbuseState) {
    let b = Bucket::enforce(Key::new(Kind::Tenant, 5), lim("tenant", 100));
    let bs = [b];
    let calls = (0..300).map(|_| decide(s, T0, &[], &bs));
    let verdicts = futures_join(calls).await;
    assert_eq!(verdicts.iter().filter(|v| v.refused.is_none()).count(), 100);
}

/// Runs the futures concurrently (on one task: what matters is that
/// their round trips overlap).
async fn futures_join<F: std::future::Future>(fs: impl Iterator<Item = F>) -> Vec<F::Output> {
    let mut set: Vec<std::pin::Pin<Box<F>>> = fs.map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = set.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

/// A random run of every operation, against both states at once: every
/// answer must be the same.
#[tokio::test]
#[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
async fn redis_answers_as_the_local_state_does() {
    use rand::{Rng, SeedableRng};
    let (l, r) = (local(), redis().await);
    let seed = rand::random::<u64>();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let limits = [lim("a", 3), lim("b", 10), Limit::per_second("c", 7).unwrap(), Limit::per_second("d", 1).unwrap()];
    let strike_rule = StrikeRule { threshold: 3, window_ms: 5_000, block_ms: 7_000 };
    let login_rule = LoginRule {
        pair: StrikeRule { threshold: 2, window_ms: 5_000, block_ms: 6_000 },
        account: StrikeRule { threshold: 3, window_ms: 5_000, block_ms: 8_000 },
        spacing_ms: 1_500,
    };
    let kinds = [Kind::Ip, Kind::Credential, Kind::Tenant, Kind::Burst];
    let mut now = T0;
    for step in 0..3_000 {
        now += rng.gen_range(0..400);
        let p = rng.gen_range(0..2u128);
        let id = rng.gen_range(0..3u128);
        let ctx = format!("seed {seed}, step {step}");
        match rng.gen_range(0..8) {
            0..=2 => {
                let n = rng.gen_range(0..=4);
                let buckets: Vec<Bucket> = (0..n)
                    .map(|i| {
                        let key = Key::new(kinds[i], id + i as u128);
                        if rng.gen_bool(0.2) {
                            Bucket::observe(key, limits[i])
                        } else {
                            Bucket::enforce(key, limits[i])
                        }
                    })
                    .collect();
                let blocks = [
                    BlockCheck { key: Key::new(Kind::Waf, id), refuses: rng.gen_bool(0.5) },
                    BlockCheck { key: Key::new(Kind::CredentialFailure, id), refuses: false },
                ];
                let d = Decide { partition: p, now_ms: now, blocks: &blocks, buckets: &buckets, notice_ms: 2_000 };
                assert_eq!(l.decide(d).await, r.decide(d).await, "{ctx}");
            }
            3 => {
                let key = Key::new([Kind::Waf, Kind::CredentialFailure][rng.gen_range(0..2)], id);
                assert_eq!(l.strike(p, key, strike_rule, now).await, r.strike(p, key, strike_rule, now).await, "{ctx}");
            }
            4 => {
                let key = Key::new(Kind::Waf, id);
                let a = l.attempt(p, key, strike_rule, now).await;
                assert_eq!(a, r.attempt(p, key, strike_rule, now).await, "{ctx}");
                if let (Ok(Attempt::Counted(o)), true) = (a, rng.gen_bool(0.3)) {
                    l.forgive(p, key, o.blocked_until).await.unwrap();
                    r.forgive(p, key, o.blocked_until).await.unwrap();
                }
            }
            5 => {
                let keys = LoginKeys { pair: Key::new(Kind::Login, id), account: Key::new(Kind::LoginAccount, p) };
                let a = l.login_attempt(p, keys, login_rule, now).await;
                assert_eq!(a, r.login_attempt(p, keys, login_rule, now).await, "{ctx}");
                if rng.gen_bool(0.5) {
                    let x = l.strike(p, keys.account, login_rule.account, now).await;
                    assert_eq!(x, r.strike(p, keys.account, login_rule.account, now).await, "{ctx}");
                } else if rng.gen_bool(0.3) {
                    let until = now + 3_000;
                    l.mark(p, keys.trust(), now, until).await.unwrap();
                    r.mark(p, keys.trust(), now, until).await.unwrap();
                }
            }
            6 => {
                let key = Key::new(Kind::Notice, id);
                assert_eq!(l.notice(p, key, now, 1_000).await, r.notice(p, key, now, 1_000).await, "{ctx}");
            }
            _ => {
                let key = Key::new([Kind::Waf, Kind::LoginAccount, Kind::Login][rng.gen_range(0..3)], id);
                l.clear(p, key).await.unwrap();
                r.clear(p, key).await.unwrap();
            }
        }
    }
}

/// Redis only: every bucket write gives the key a life long enough for
/// what it holds, and a later write never cuts it short.
#[tokio::test]
#[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
async fn bucket_entries_expire_and_live_long_enough() {
    let s = redis().await;
    let url = std::env::var("PALISADE_TEST_REDIS_URL").unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let key = Key::new(Kind::Credential, 5);
    let name = s.bucket_key(7, key);
    let ttl = |c: &mut redis::aio::MultiplexedConnection| {
        let mut c = c.clone();
        let name = name.clone();
        async move { redis::cmd("PTTL").arg(&name).query_async::<i64>(&mut c).await.unwrap() }
    };
    // 2 a minute: one charge is 30 s of arrival time.
    let b = Bucket::enforce(key, lim("key", 2));
    assert!(s
        .decide(Decide { partition: 7, now_ms: now, blocks: &[], buckets: &[b], notice_ms: 600_000 })
        .await
        .unwrap()
        .refused
        .is_none());
    let first = ttl(&mut conn).await;
    assert!((30_000..=32_000).contains(&first), "life after one charge: {first} ms");
    assert!(s
        .decide(Decide { partition: 7, now_ms: now, blocks: &[], buckets: &[b], notice_ms: 600_000 })
        .await
        .unwrap()
        .refused
        .is_none());
    let second = ttl(&mut conn).await;
    assert!((60_000..=62_000).contains(&second), "life after two charges: {second} ms");
    // A refusal is noted for the notice period (10 min): the entry lives
    // as long, or a repeated refusal would count as new.
    let v =
        s.decide(Decide { partition: 7, now_ms: now, blocks: &[], buckets: &[b], notice_ms: 600_000 }).await.unwrap();
    assert!(v.refused.is_some() && v.refusal_is_new);
    let noted = ttl(&mut conn).await;
    assert!((600_000..=602_000).contains(&noted), "life after a noted refusal: {noted} ms");
    // A later charge (a minute on, the bucket has room) keeps the notice's life.
    let later = now + 60_000;
    assert!(s
        .decide(Decide { partition: 7, now_ms: later, blocks: &[], buckets: &[b], notice_ms: 600_000 })
        .await
        .unwrap()
        .refused
        .is_none());
    assert!(ttl(&mut conn).await >= noted - 61_000);
}

/// Redis only: a strike's entry lives at least its window, a mark's until
/// its end (each with the scripts' second of slack), no longer.
#[tokio::test]
#[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
async fn strike_and_mark_entries_live_as_long_as_they_matter() {
    let s = redis().await;
    let url = std::env::var("PALISADE_TEST_REDIS_URL").unwrap();
    let conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    let ttl = |name: String| {
        let mut c = conn.clone();
        async move { redis::cmd("PTTL").arg(&name).query_async::<i64>(&mut c).await.unwrap() }
    };
    let strikes = Key::new(Kind::Waf, 51);
    strike(&s, 7, strikes, StrikeRule { threshold: 5, window_ms: 60_000, block_ms: 600_000 }, now).await;
    let life = ttl(s.key(7, strikes)).await;
    assert!((60_000..=61_000).contains(&life), "a strike's life: {life} ms");
    let marked = Key::new(Kind::LoginTrust, 52);
    s.mark(7, marked, now, now + 120_000).await.unwrap();
    let life = ttl(s.key(7, marked)).await;
    assert!((120_000..=121_000).contains(&life), "a mark's life: {life} ms");
}

/// Redis only: a bucket whose stored value is not one the script wrote is
/// an error (left to the failure policy), never read as an empty bucket.
#[tokio::test]
#[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
async fn an_unreadable_bucket_is_an_error_not_a_fresh_bucket() {
    let s = redis().await;
    let url = std::env::var("PALISADE_TEST_REDIS_URL").unwrap();
    let mut conn = redis::Client::open(url).unwrap().get_multiplexed_async_connection().await.unwrap();
    let key = Key::new(Kind::Credential, 6);
    let b = Bucket::enforce(key, lim("key", 1));
    assert!(decide(&s, T0, &[], &[b]).await.refused.is_none());
    assert_eq!(decide(&s, T0, &[], &[b]).await.refused, Some(0));
    redis::cmd("SET").arg(s.bucket_key(7, key)).arg("garbage").query_async::<()>(&mut conn).await.unwrap();
    let d = Decide { partition: 7, now_ms: T0, blocks: &[], buckets: &[b], notice_ms: 60_000 };
    assert!(s.decide(d).await.is_err());
}
