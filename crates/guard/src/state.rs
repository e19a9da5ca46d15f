//! The abuse-control state: rate-limit buckets, strike counters and the
//! blocks they lead to, behind one trait.
//!
//! Each operation is one atomic step on keys of one partition (a client
//! address, a tenant, an account), so a shared implementation can do it in
//! one round trip: one Lua script on keys sharing a Redis hash tag. The
//! in-process implementation here locks the partition's shard once.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;

use crate::limits::{Key, Kind, Limit, Step};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A shared state could not answer (unreachable, too slow). The in-process
/// state never says this; a shared one says it only for what its failure
/// policy keeps closed, and answers the rest from per-process state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the shared abuse state is unavailable")
    }
}

impl std::error::Error for Unavailable {}

pub type Answer<'a, T> = BoxFut<'a, Result<T, Unavailable>>;

/// Where the state is kept, for readiness checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// In this process only (no shared state configured).
    InProcess,
    /// Shared, and reachable.
    Shared,
    /// Shared but unreachable: answering from per-process state, or
    /// refusing, as the failure policy says.
    Degraded,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::InProcess => "in_process",
            Health::Shared => "shared",
            Health::Degraded => "degraded",
        }
    }
}

/// Most buckets one decision may name.
pub const MAX_BUCKETS: usize = 4;

/// A bucket to charge. An observed bucket never refuses: running over it
/// is reported as a spike (burst detection).
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    pub key: Key,
    pub limit: Limit,
    pub observe_only: bool,
}

impl Bucket {
    pub fn enforce(key: Key, limit: Limit) -> Bucket {
        Bucket { key, limit, observe_only: false }
    }
    pub fn observe(key: Key, limit: Limit) -> Bucket {
        Bucket { key, limit, observe_only: true }
    }
}

/// A block to look up: a refusing one stops the decision (nothing is
/// charged); an informational one is only reported.
#[derive(Debug, Clone, Copy)]
pub struct BlockCheck {
    pub key: Key,
    pub refuses: bool,
}

/// One decision: the blocks to check and the buckets to charge (distinct
/// keys, at most [`MAX_BUCKETS`]), all in one partition.
#[derive(Debug, Clone, Copy)]
pub struct Decide<'a> {
    pub partition: u128,
    pub now_ms: i64,
    pub blocks: &'a [BlockCheck],
    pub buckets: &'a [Bucket],
    /// How long a refusal or spike stays "already noted", so a flood yields
    /// one audit event per period rather than one per request.
    pub notice_ms: i64,
}

/// Where one bucket stands after a decision.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Standing {
    /// Until the bucket is full again ([`Limit::remaining`] turns it into
    /// a count).
    pub reset_ns: u64,
    /// Until a request would be admitted; 0 when this one was.
    pub retry_after_ns: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Bit i: `blocks[i]` is in force.
    pub active_blocks: u32,
    /// The first refusing block in force, and until when (ms).
    pub blocked: Option<(usize, i64)>,
    /// The bucket whose refusal lasts longest, when any refused.
    pub refused: Option<usize>,
    /// The refusal is the first for its key in the notice period.
    pub refusal_is_new: bool,
    /// An observed bucket ran over, first time in the notice period.
    pub spike: Option<usize>,
    pub standings: [Standing; MAX_BUCKETS],
}

impl Verdict {
    pub fn block_active(&self, i: usize) -> bool {
        self.active_blocks & (1 << i) != 0
    }
}

/// Counting rule for strikes (failed logins, WAF violations): `threshold`
/// strikes within `window_ms` block the key for `block_ms`.
#[derive(Debug, Clone, Copy)]
pub struct StrikeRule {
    pub threshold: u32,
    pub window_ms: i64,
    pub block_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StrikeOutcome {
    /// Strikes within the window, this one included.
    pub count: u32,
    /// Set when this strike started a block: until when (ms).
    pub blocked_until: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    /// Blocked until then (ms); nothing was counted.
    Locked { until: i64 },
    /// Counted; `started_block` is set when this strike started a block.
    Counted(StrikeOutcome),
}

/// The keys of one login attempt, all in the account's partition (so one
/// step can read and update them together).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoginKeys {
    /// The account from this client address.
    pub pair: Key,
    /// The account from any address.
    pub account: Key,
}

impl LoginKeys {
    pub fn spacing(&self) -> Key {
        Key::new(Kind::LoginSpacing, self.account.id)
    }
    pub fn trust(&self) -> Key {
        Key::new(Kind::LoginTrust, self.pair.id)
    }
}

/// The login lockout: `pair` failures from one address lock that address
/// out of the account; `account` failures from anywhere throttle the
/// account: while throttled, untrusted addresses get one attempt per
/// `spacing_ms` between them all.
#[derive(Debug, Clone, Copy)]
pub struct LoginRule {
    pub pair: StrikeRule,
    pub account: StrikeRule,
    pub spacing_ms: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginAdmission {
    /// The pair is locked (`pair_locked`), or the account is throttled and
    /// this attempt is not the one its spacing admits. Nothing was counted.
    Refused { pair_locked: bool },
    /// Counted against the pair before its outcome is known; set when this
    /// strike locked the pair: until when (ms).
    Admitted { pair_lock_started: Option<i64> },
}

pub trait AbuseState: Send + Sync + 'static {
    /// Checks the blocks, then the buckets. A refusing block in force charges
    /// nothing. Otherwise every enforced bucket is charged if all admit, and
    /// none is if any refuses.
    fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict>;

    /// Records a strike on `key`; the one that reaches the threshold blocks it.
    fn strike(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, StrikeOutcome>;

    /// An attempt that may fail (a login): refused if `key` is blocked,
    /// otherwise counted as a strike *before* the outcome is known, so
    /// attempts racing in parallel cannot exceed the threshold.
    fn attempt(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, Attempt>;

    /// The attempt succeeded: forgets the key's strikes, and lifts the block
    /// that this attempt's own strike started (`started_block`), if any.
    /// Any other block in force stays.
    fn forgive(&self, partition: u128, key: Key, started_block: Option<i64>) -> Answer<'_, ()>;

    /// True the first time `key` is noted in a period of `period_ms`.
    fn notice(&self, partition: u128, key: Key, now_ms: i64, period_ms: i64) -> Answer<'_, bool>;

    /// True the first time `key` is used before `until_ms`, false ever
    /// after until then: a one-time value (a SIP digest's nonce and count).
    /// Kept until `until_ms`, so the value must be worthless after it.
    fn consume_once(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) -> Answer<'_, bool> {
        self.notice(partition, key, now_ms, until_ms.saturating_sub(now_ms).max(1))
    }

    /// A login attempt (see [`LoginRule`]): refused if its pair is locked,
    /// or if the account is throttled, the pair not trusted, and another
    /// attempt was admitted within the spacing; otherwise counted against
    /// the pair up front (as [`Self::attempt`]). Failures count against the
    /// account with [`Self::strike`] once known.
    fn login_attempt(
        &self,
        partition: u128,
        keys: LoginKeys,
        rule: LoginRule,
        now_ms: i64,
    ) -> Answer<'_, LoginAdmission>;

    /// Holds `key` in force until `until_ms` (or later, if it already is):
    /// a trusted address.
    fn mark(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) -> Answer<'_, ()>;

    /// Forgets `key` entirely, a block in force included.
    fn clear(&self, partition: u128, key: Key) -> Answer<'_, ()>;

    /// Where the state is kept and whether it is reachable.
    fn health(&self) -> Health {
        Health::InProcess
    }
}

const SHARDS: usize = 64;
/// Entries per shard and map beyond which idle ones are swept first and,
/// failing that, dropped: memory stays bounded under a flood of new keys.
const SHARD_CAP: usize = 65_536;

#[derive(Debug, Clone, Copy)]
struct BucketState {
    tat: u64,
    noticed_until: u64,
}

#[derive(Debug, Default)]
struct StrikeState {
    /// Strike times (ms), oldest first, at most `threshold` kept.
    times: Vec<i64>,
    blocked_until: i64,
    noticed_until: i64,
    /// After this nothing here matters.
    expires: i64,
}

/// Keys include client addresses, which attackers choose: the hasher is
/// seeded per process (foldhash), so collisions cannot be planned, and
/// fast, because every request hashes several keys.
type Map<V> = HashMap<Key, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Shard {
    buckets: Map<BucketState>,
    strikes: Map<StrikeState>,
    sweep_buckets_at: usize,
    sweep_strikes_at: usize,
}

/// The in-process implementation: 64 shards, each a mutex over two maps.
pub struct LocalState {
    shards: Box<[Mutex<Shard>]>,
}

impl Default for LocalState {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalState {
    pub fn new() -> Self {
        LocalState { shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect() }
    }

    fn shard(&self, partition: u128) -> std::sync::MutexGuard<'_, Shard> {
        // Partitions are addresses and random ids; fold and mix the bits.
        let x = (partition as u64) ^ ((partition >> 64) as u64);
        let i = (x.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize % SHARDS;
        // A panic while holding the lock cannot leave a shard half-updated
        // in a way that matters more than losing the lock would.
        self.shards[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The decision, synchronously (what `decide` runs).
    pub fn decide_now(&self, d: &Decide<'_>) -> Verdict {
        let mut v = Verdict::default();
        let now_ns = ms_to_ns(d.now_ms);
        let notice_ns = ms_to_ns(d.notice_ms);
        let mut shard = self.shard(d.partition);
        for (i, b) in d.blocks.iter().enumerate().take(32) {
            if let Some(s) = shard.strikes.get(&b.key) {
                if s.blocked_until > d.now_ms {
                    v.active_blocks |= 1 << i;
                    if b.refuses && v.blocked.is_none() {
                        v.blocked = Some((i, s.blocked_until));
                    }
                }
            }
        }
        if v.blocked.is_some() {
            return v;
        }
        let mut buckets = &d.buckets[..d.buckets.len().min(MAX_BUCKETS)];
        if !distinct(buckets) {
            // A caller's mistake; charging one bucket twice in one step
            // cannot be done atomically, so only the first counts.
            debug_assert!(false, "a decision names one bucket twice");
            buckets = &buckets[..1];
        }
        let shard = &mut *shard;
        // One lookup per bucket: the entries are borrowed together (keys in
        // one decision are distinct) and updated in place.
        let mut found = lookup(&mut shard.buckets, buckets);
        let mut next = [0u64; MAX_BUCKETS];
        let mut worst = 0;
        for (i, b) in buckets.iter().enumerate() {
            let tat = found[i].as_ref().map_or(0, |s| s.tat);
            match b.limit.step(tat, now_ns) {
                Step::Admit { tat, reset_ns } => {
                    next[i] = tat;
                    v.standings[i] = Standing { reset_ns, retry_after_ns: 0 };
                }
                Step::Refuse { retry_after_ns, reset_ns } => {
                    v.standings[i] = Standing { reset_ns, retry_after_ns };
                    if b.observe_only {
                        v.spike.get_or_insert(i);
                    } else if v.refused.is_none() || retry_after_ns > worst {
                        worst = retry_after_ns;
                        v.refused = Some(i);
                    }
                }
            }
        }
        // A bucket that refused exists: it ran over. Report each refusal or
        // spike once per notice period.
        let noted = |i: usize, found: &mut [Option<&mut BucketState>; MAX_BUCKETS]| match found[i].as_deref_mut() {
            Some(st) if st.noticed_until <= now_ns => {
                st.noticed_until = now_ns.saturating_add(notice_ns);
                true
            }
            _ => false,
        };
        if let Some(i) = v.refused {
            v.refusal_is_new = noted(i, &mut found);
        }
        if let Some(i) = v.spike {
            if !noted(i, &mut found) {
                v.spike = None;
            }
        }
        // Charge: every bucket if none refused; observed ones always.
        let mut missing = [false; MAX_BUCKETS];
        for (i, b) in buckets.iter().enumerate() {
            if next[i] == 0 || (v.refused.is_some() && !b.observe_only) {
                continue;
            }
            match found[i].as_deref_mut() {
                Some(st) => st.tat = next[i],
                None => missing[i] = true,
            }
        }
        for (i, b) in buckets.iter().enumerate() {
            if missing[i] {
                insert_bucket(shard, b.key, next[i], now_ns);
            }
        }
        v
    }

    pub fn strike_now(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> StrikeOutcome {
        strike_in(&mut self.shard(partition), key, rule, now_ms)
    }

    pub fn attempt_now(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Attempt {
        let mut shard = self.shard(partition);
        if let Some(s) = shard.strikes.get(&key).filter(|s| s.blocked_until > now_ms) {
            return Attempt::Locked { until: s.blocked_until };
        }
        Attempt::Counted(strike_in(&mut shard, key, rule, now_ms))
    }

    pub fn forgive_now(&self, partition: u128, key: Key, started_block: Option<i64>) {
        let mut shard = self.shard(partition);
        if let Some(s) = shard.strikes.get_mut(&key) {
            s.times.clear();
            if started_block.is_some_and(|until| s.blocked_until == until) {
                s.blocked_until = 0;
            }
        }
    }

    pub fn notice_now(&self, partition: u128, key: Key, now_ms: i64, period_ms: i64) -> bool {
        let mut guard = self.shard(partition);
        let shard = &mut *guard;
        if !shard.strikes.contains_key(&key) && !make_room_for_strike(shard, now_ms) {
            return false;
        }
        let s = shard.strikes.entry(key).or_default();
        if s.noticed_until > now_ms {
            return false;
        }
        s.noticed_until = now_ms.saturating_add(period_ms);
        s.expires = s.expires.max(s.noticed_until);
        true
    }

    pub fn login_attempt_now(&self, partition: u128, keys: LoginKeys, rule: LoginRule, now_ms: i64) -> LoginAdmission {
        let mut guard = self.shard(partition);
        let shard = &mut *guard;
        let in_force = |shard: &Shard, k: &Key| shard.strikes.get(k).is_some_and(|s| s.blocked_until > now_ms);
        if in_force(shard, &keys.pair) {
            return LoginAdmission::Refused { pair_locked: true };
        }
        if in_force(shard, &keys.account) && !in_force(shard, &keys.trust()) {
            let spacing = keys.spacing();
            if !shard.strikes.contains_key(&spacing) && !make_room_for_strike(shard, now_ms) {
                return LoginAdmission::Refused { pair_locked: false };
            }
            let s = shard.strikes.entry(spacing).or_default();
            if s.noticed_until > now_ms {
                return LoginAdmission::Refused { pair_locked: false };
            }
            s.noticed_until = now_ms.saturating_add(rule.spacing_ms);
            s.expires = s.expires.max(s.noticed_until);
        }
        LoginAdmission::Admitted { pair_lock_started: strike_in(shard, keys.pair, rule.pair, now_ms).blocked_until }
    }

    pub fn mark_now(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) {
        let mut guard = self.shard(partition);
        let shard = &mut *guard;
        if !shard.strikes.contains_key(&key) && !make_room_for_strike(shard, now_ms) {
            return;
        }
        let s = shard.strikes.entry(key).or_default();
        s.blocked_until = s.blocked_until.max(until_ms);
        s.expires = s.expires.max(s.blocked_until);
    }

    pub fn clear_now(&self, partition: u128, key: Key) {
        self.shard(partition).strikes.remove(&key);
    }

    /// Entries held, for tests and metrics.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|s| {
                let s = s.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                s.buckets.len() + s.strikes.len()
            })
            .sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn strike_in(shard: &mut Shard, key: Key, rule: StrikeRule, now_ms: i64) -> StrikeOutcome {
    if !shard.strikes.contains_key(&key) && !make_room_for_strike(shard, now_ms) {
        // Full of blocks: refuse to track more rather than grow or unblock.
        return StrikeOutcome { count: 0, blocked_until: None };
    }
    let s = shard.strikes.entry(key).or_default();
    s.times.retain(|t| *t > now_ms - rule.window_ms);
    s.times.push(now_ms);
    let keep = rule.threshold.max(1) as usize;
    let extra = s.times.len().saturating_sub(keep);
    s.times.drain(..extra);
    let count = u32::try_from(s.times.len()).unwrap_or(u32::MAX);
    let mut blocked_until = None;
    if count >= rule.threshold && s.blocked_until <= now_ms {
        s.blocked_until = now_ms.saturating_add(rule.block_ms);
        s.times.clear();
        blocked_until = Some(s.blocked_until);
    }
    s.expires = s.expires.max(now_ms.saturating_add(rule.window_ms)).max(s.blocked_until);
    StrikeOutcome { count, blocked_until }
}

fn ms_to_ns(ms: i64) -> u64 {
    u64::try_from(ms).unwrap_or(0).saturating_mul(1_000_000)
}

fn distinct(buckets: &[Bucket]) -> bool {
    buckets.iter().enumerate().all(|(i, a)| buckets[i + 1..].iter().all(|b| a.key != b.key))
}

/// The entries of up to four distinct keys, borrowed together.
fn lookup<'m>(map: &'m mut Map<BucketState>, buckets: &[Bucket]) -> [Option<&'m mut BucketState>; MAX_BUCKETS] {
    let k = |i: usize| &buckets[i].key;
    match buckets.len() {
        0 => [None, None, None, None],
        1 => [map.get_mut(k(0)), None, None, None],
        2 => {
            let [a, b] = map.get_disjoint_mut([k(0), k(1)]);
            [a, b, None, None]
        }
        3 => {
            let [a, b, c] = map.get_disjoint_mut([k(0), k(1), k(2)]);
            [a, b, c, None]
        }
        _ => map.get_disjoint_mut([k(0), k(1), k(2), k(3)]),
    }
}

/// Adds a bucket, sweeping full (idle) buckets first when the map has
/// grown: a bucket whose arrival time has passed is the same as no bucket.
fn insert_bucket(shard: &mut Shard, key: Key, tat: u64, now_ns: u64) {
    if shard.buckets.len() >= shard.sweep_buckets_at.max(1024) {
        shard.buckets.retain(|_, s| s.tat > now_ns || s.noticed_until > now_ns);
        if shard.buckets.len() >= SHARD_CAP {
            // Still full of live buckets: forget some. They restart full,
            // which errs towards admitting rather than growing without bound.
            let drop: Vec<Key> = shard.buckets.keys().take(SHARD_CAP / 4).copied().collect();
            for k in drop {
                shard.buckets.remove(&k);
            }
        }
        shard.sweep_buckets_at = (shard.buckets.len() * 2).min(SHARD_CAP);
    }
    shard.buckets.insert(key, BucketState { tat, noticed_until: 0 });
}

/// Makes room for one more strike entry. Blocks in force are never dropped
/// to make room (a flood must not lift a block); false when there is none.
fn make_room_for_strike(shard: &mut Shard, now_ms: i64) -> bool {
    if shard.strikes.len() < shard.sweep_strikes_at.max(1024) {
        return true;
    }
    shard.strikes.retain(|_, s| s.expires > now_ms);
    if shard.strikes.len() >= SHARD_CAP {
        // Cheap-to-make entries go first (notices, per-address key
        // failures), so a flood of them cannot wipe accounts' counts.
        shard
            .strikes
            .retain(|k, s| s.blocked_until > now_ms || !matches!(k.kind, Kind::Notice | Kind::CredentialFailure));
    }
    if shard.strikes.len() >= SHARD_CAP {
        // Trust marks next: losing one only loses an exemption, and they are
        // cheap to make in bulk (one success per address).
        shard.strikes.retain(|k, _| k.kind != Kind::LoginTrust);
    }
    if shard.strikes.len() >= SHARD_CAP {
        // Used one-time values stay too: forgetting one would let it replay.
        shard.strikes.retain(|k, s| {
            s.blocked_until > now_ms
                || (matches!(k.kind, Kind::SipNonce | Kind::StirPassport) && s.noticed_until > now_ms)
        });
    }
    shard.sweep_strikes_at = (shard.strikes.len() * 2).min(SHARD_CAP);
    shard.strikes.len() < SHARD_CAP
}

impl AbuseState for LocalState {
    fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict> {
        ready(self.decide_now(&d))
    }

    fn strike(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, StrikeOutcome> {
        ready(self.strike_now(partition, key, rule, now_ms))
    }

    fn attempt(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, Attempt> {
        ready(self.attempt_now(partition, key, rule, now_ms))
    }

    fn forgive(&self, partition: u128, key: Key, started_block: Option<i64>) -> Answer<'_, ()> {
        self.forgive_now(partition, key, started_block);
        ready(())
    }

    fn notice(&self, partition: u128, key: Key, now_ms: i64, period_ms: i64) -> Answer<'_, bool> {
        ready(self.notice_now(partition, key, now_ms, period_ms))
    }

    fn login_attempt(
        &self,
        partition: u128,
        keys: LoginKeys,
        rule: LoginRule,
        now_ms: i64,
    ) -> Answer<'_, LoginAdmission> {
        ready(self.login_attempt_now(partition, keys, rule, now_ms))
    }

    fn mark(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) -> Answer<'_, ()> {
        self.mark_now(partition, key, now_ms, until_ms);
        ready(())
    }

    fn clear(&self, partition: u128, key: Key) -> Answer<'_, ()> {
        self.clear_now(partition, key);
        ready(())
    }
}

fn ready<'a, T: Send + 'a>(v: T) -> Answer<'a, T> {
    Box::pin(std::future::ready(Ok(v)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn lim(name: &'static str, per_min: u32) -> Limit {
        Limit::per_minute(name, per_min).unwrap()
    }

    fn decide(s: &LocalState, now: i64, blocks: &[BlockCheck], buckets: &[Bucket]) -> Verdict {
        s.decide_now(&Decide { partition: 7, now_ms: now, blocks, buckets, notice_ms: 60_000 })
    }

    /// Readiness reports and logs print these words.
    #[test]
    fn health_and_unavailability_are_named() {
        let names = [Health::InProcess, Health::Shared, Health::Degraded].map(Health::as_str);
        assert_eq!(names, ["in_process", "shared", "degraded"]);
        assert_eq!(Unavailable.to_string(), "the shared abuse state is unavailable");
    }

    #[test]
    fn a_refusal_charges_no_bucket() {
        let s = LocalState::new();
        let tight = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 2));
        let loose = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 100));
        for _ in 0..2 {
            assert!(decide(&s, T0, &[], &[loose, tight]).refused.is_none());
        }
        for _ in 0..10 {
            let v = decide(&s, T0, &[], &[loose, tight]);
            assert_eq!(v.refused, Some(1));
        }
        // The tenant bucket was charged twice, not twelve times.
        let v = decide(&s, T0, &[], &[loose]);
        assert_eq!(loose.limit.remaining(v.standings[0].reset_ns), 100 - 3);
    }

    #[test]
    fn the_longest_refusal_wins() {
        let s = LocalState::new();
        let a = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 1));
        let b = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 2));
        assert!(decide(&s, T0, &[], &[a]).refused.is_none());
        assert!(decide(&s, T0, &[], &[b]).refused.is_none());
        assert!(decide(&s, T0, &[], &[b]).refused.is_none());
        // Both refuse: the key waits 60 s, the tenant 30 s.
        let v = decide(&s, T0, &[], &[b, a]);
        assert_eq!(v.refused, Some(1));
        assert_eq!(v.standings[1].retry_after_ns, 60_000_000_000);
        assert!(v.refusal_is_new);
        assert!(!decide(&s, T0 + 1, &[], &[b, a]).refusal_is_new);
        assert!(decide(&s, T0 + 60_001, &[], &[b, a]).refused.is_none());
    }

    #[test]
    fn strikes_block_and_blocks_stop_decisions() {
        let s = LocalState::new();
        let key = Key::new(Kind::Waf, 9);
        let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 900_000 };
        // Strikes spread wider than the window never add up.
        for i in 0..5 {
            assert_eq!(s.strike_now(7, key, rule, T0 + i * 40_000).blocked_until, None);
        }
        let t = T0 + 500_000;
        assert_eq!(s.strike_now(7, key, rule, t).count, 1);
        assert_eq!(s.strike_now(7, key, rule, t + 1).count, 2);
        assert_eq!(s.strike_now(7, key, rule, t + 2).blocked_until, Some(t + 2 + 900_000));
        let bucket = Bucket::enforce(Key::new(Kind::Ip, 9), lim("ip", 10));
        let blocks = [BlockCheck { key: Key::new(Kind::Login, 9), refuses: false }, BlockCheck { key, refuses: true }];
        let v = decide(&s, t + 3, &blocks, &[bucket]);
        assert_eq!(v.blocked, Some((1, t + 2 + 900_000)));
        assert!(v.block_active(1) && !v.block_active(0));
        // The block ends on time, and nothing was charged meanwhile.
        let v = decide(&s, t + 2 + 900_000, &blocks, &[bucket]);
        assert_eq!(v.blocked, None);
        assert_eq!(bucket.limit.remaining(v.standings[0].reset_ns), 9);
    }

    #[test]
    fn informational_blocks_do_not_stop() {
        let s = LocalState::new();
        let key = Key::new(Kind::CredentialFailure, 1);
        let rule = StrikeRule { threshold: 1, window_ms: 1000, block_ms: 1000 };
        s.strike_now(7, key, rule, T0);
        let bucket = Bucket::enforce(Key::new(Kind::Ip, 1), lim("ip", 10));
        let v = decide(&s, T0, &[BlockCheck { key, refuses: false }], &[bucket]);
        assert!(v.block_active(0) && v.blocked.is_none() && v.refused.is_none());
    }

    #[test]
    fn attempts_count_first_and_success_forgives() {
        let s = LocalState::new();
        let key = Key::new(Kind::Login, 1);
        let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 60_000 };
        let counted = |a: Attempt| match a {
            Attempt::Counted(o) => o,
            Attempt::Locked { .. } => panic!("locked"),
        };
        // Two failures, then a success: forgotten.
        counted(s.attempt_now(7, key, rule, T0));
        counted(s.attempt_now(7, key, rule, T0));
        let ok = counted(s.attempt_now(7, key, rule, T0));
        // The third attempt's own strike started the block...
        assert!(ok.blocked_until.is_some());
        // ...and its success lifts it again.
        s.forgive_now(7, key, ok.blocked_until);
        assert_eq!(counted(s.attempt_now(7, key, rule, T0)).count, 1);
        // Attempts in flight all count: the threshold holds under a race.
        counted(s.attempt_now(7, key, rule, T0));
        let third = counted(s.attempt_now(7, key, rule, T0));
        assert!(third.blocked_until.is_some());
        assert!(matches!(s.attempt_now(7, key, rule, T0), Attempt::Locked { .. }));
        // A success of another, earlier attempt does not lift this block.
        s.forgive_now(7, key, None);
        assert!(matches!(s.attempt_now(7, key, rule, T0 + 59_999), Attempt::Locked { .. }));
        assert!(matches!(s.attempt_now(7, key, rule, T0 + 60_000), Attempt::Counted(_)));
    }

    #[test]
    fn logins_lock_pairs_and_space_throttled_accounts() {
        let s = LocalState::new();
        let rule = LoginRule {
            pair: StrikeRule { threshold: 2, window_ms: 60_000, block_ms: 60_000 },
            account: StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 60_000 },
            spacing_ms: 10_000,
        };
        let keys = |ip: u128| LoginKeys { pair: Key::new(Kind::Login, ip), account: Key::new(Kind::LoginAccount, 1) };
        let admitted = |a: LoginAdmission| matches!(a, LoginAdmission::Admitted { .. });
        // Two attempts lock the pair; another address is not affected.
        assert!(admitted(s.login_attempt_now(1, keys(10), rule, T0)));
        assert!(admitted(s.login_attempt_now(1, keys(10), rule, T0)));
        assert_eq!(s.login_attempt_now(1, keys(10), rule, T0), LoginAdmission::Refused { pair_locked: true });
        assert!(admitted(s.login_attempt_now(1, keys(11), rule, T0)));
        // Three failures from anywhere throttle the account: one attempt per
        // 10 s from untrusted addresses, all together.
        s.mark_now(1, keys(12).trust(), T0, T0 + 3_600_000);
        for _ in 0..3 {
            s.strike_now(1, keys(0).account, rule.account, T0);
        }
        assert!(admitted(s.login_attempt_now(1, keys(20), rule, T0)));
        assert_eq!(s.login_attempt_now(1, keys(21), rule, T0 + 9_999), LoginAdmission::Refused { pair_locked: false });
        assert!(admitted(s.login_attempt_now(1, keys(21), rule, T0 + 10_000)));
        // A trusted address is not spaced (its own pair still locks).
        assert!(admitted(s.login_attempt_now(1, keys(12), rule, T0 + 10_001)));
        assert!(admitted(s.login_attempt_now(1, keys(12), rule, T0 + 10_001)));
        assert!(!admitted(s.login_attempt_now(1, keys(12), rule, T0 + 10_001)));
        // Clearing the account ends the throttle.
        s.clear_now(1, keys(0).account);
        assert!(admitted(s.login_attempt_now(1, keys(22), rule, T0 + 10_002)));
        assert!(admitted(s.login_attempt_now(1, keys(23), rule, T0 + 10_002)));
    }

    #[test]
    fn floods_of_cheap_entries_do_not_evict_account_counts() {
        let s = LocalState::new();
        let rule = StrikeRule { threshold: 5, window_ms: 900_000, block_ms: 900_000 };
        let account = Key::new(Kind::Login, 1);
        s.strike_now(7, account, rule, T0);
        for id in 0..(SHARD_CAP as u128 + 100) {
            s.strike_now(7, Key::new(Kind::CredentialFailure, id + 10), rule, T0);
        }
        assert_eq!(s.strike_now(7, account, rule, T0).count, 2);
    }

    #[test]
    fn spikes_are_reported_once_per_period_and_never_refuse() {
        let s = LocalState::new();
        let burst = Bucket::observe(Key::new(Kind::Burst, 1), Limit::per_second("burst", 2).unwrap());
        let spikes = (0..20).filter(|_| decide(&s, T0, &[], &[burst]).spike.is_some()).count();
        assert_eq!(spikes, 1);
        assert!((0..20).all(|_| decide(&s, T0, &[], &[burst]).refused.is_none()));
    }

    #[test]
    fn notices_once_per_period() {
        let s = LocalState::new();
        let key = Key::new(Kind::Notice, 1);
        assert!(s.notice_now(7, key, T0, 60_000));
        assert!(!s.notice_now(7, key, T0 + 59_999, 60_000));
        assert!(s.notice_now(7, key, T0 + 60_000, 60_000));
    }

    /// The in-process state answers at once: its futures are ready.
    fn now<T>(mut f: Answer<'_, T>) -> Result<T, Unavailable> {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        match f.as_mut().poll(&mut cx) {
            std::task::Poll::Ready(v) => v,
            std::task::Poll::Pending => panic!("the in-process state waited"),
        }
    }

    #[test]
    fn a_one_time_value_is_used_once_until_it_lapses() {
        let s = LocalState::new();
        let key = Key::new(Kind::SipNonce, 1);
        assert_eq!(now(s.consume_once(7, key, T0, T0 + 300_000)), Ok(true));
        assert_eq!(now(s.consume_once(7, key, T0 + 299_999, T0 + 300_000)), Ok(false));
        // Another value, or the same one in another partition, is new.
        assert_eq!(now(s.consume_once(7, Key::new(Kind::SipNonce, 2), T0, T0 + 300_000)), Ok(true));
        assert_eq!(now(s.consume_once(8, key, T0, T0 + 300_000)), Ok(true));
        // Past its life the value is worthless (the nonce has expired), so
        // forgetting it is safe.
        assert_eq!(now(s.consume_once(7, key, T0 + 300_000, T0 + 600_000)), Ok(true));
    }

    #[test]
    fn a_flood_of_strikes_does_not_forget_used_one_time_values() {
        let s = LocalState::new();
        let rule = StrikeRule { threshold: 100, window_ms: 60_000, block_ms: 1 };
        let used = Key::new(Kind::SipNonce, u128::MAX);
        assert!(s.notice_now(7, used, T0, 300_000));
        // One partition, so one shard fills up with other entries.
        for id in 0..(SHARD_CAP as u128 + 10) {
            s.strike_now(7, Key::new(Kind::SipAuth, id), rule, T0);
        }
        assert!(!s.notice_now(7, used, T0 + 1, 300_000), "a used value was forgotten under pressure");
    }

    #[test]
    fn only_used_one_time_values_outlive_a_full_shard() {
        let s = LocalState::new();
        let rule = StrikeRule { threshold: 100, window_ms: 60_000, block_ms: 1 };
        // A shard full of live notices of another kind: they make room.
        for id in 0..SHARD_CAP as u128 {
            assert!(s.notice_now(7, Key::new(Kind::SipAuth, id), T0, 300_000));
        }
        let key = Key::new(Kind::SipAuthUser, 1);
        assert_eq!(s.strike_now(7, key, rule, T0 + 1).count, 1, "no room was made");
    }

    #[test]
    fn trust_marks_stay_while_there_is_room() {
        let s = LocalState::new();
        let trusted = Key::new(Kind::LoginTrust, u128::MAX);
        s.mark_now(7, trusted, T0, T0 + 86_400_000);
        // Past the sweep threshold, far below the cap: sweeps run, trust
        // stays (only a full shard gives it up).
        for id in 0..4096u128 {
            s.notice_now(7, Key::new(Kind::SipAuth, id), T0, 300_000);
        }
        let blocks = [BlockCheck { key: trusted, refuses: false }];
        let v = s.decide_now(&Decide { partition: 7, now_ms: T0 + 1, blocks: &blocks, buckets: &[], notice_ms: 0 });
        assert!(v.block_active(0), "a trust mark was dropped with room to spare");
    }

    #[test]
    fn trust_marks_make_room_before_counting_stops() {
        let s = LocalState::new();
        let rule = StrikeRule { threshold: 5, window_ms: 60_000, block_ms: 60_000 };
        // One partition full of trust marks (each held for a month).
        for id in 0..SHARD_CAP as u128 {
            s.mark_now(7, Key::new(Kind::LoginTrust, id), T0, T0 + 30 * 86_400_000);
        }
        // Failures are still counted there, up to the block.
        let key = Key::new(Kind::SipAuth, u128::MAX);
        for n in 1..=5 {
            assert_eq!(s.strike_now(7, key, rule, T0).count, n, "strike {n} was not counted");
        }
        assert!(matches!(s.attempt_now(7, key, rule, T0 + 1), Attempt::Locked { .. }));
    }

    #[test]
    fn memory_stays_bounded() {
        let s = LocalState::new();
        let l = lim("ip", 10);
        // All keys in one shard, so its cap is what is tested.
        for id in 0..(SHARD_CAP as u128 + 10_000) {
            let b = Bucket::enforce(Key::new(Kind::Ip, id), l);
            decide(&s, T0, &[], &[b]);
        }
        assert!(s.len() <= SHARD_CAP, "{}", s.len());
        // Live buckets are dropped a quarter at a time, not all at once.
        assert!(s.len() > SHARD_CAP / 2, "{}", s.len());
        // Idle buckets are swept: a minute later new keys replace them.
        for id in 0..10_000u128 {
            let b = Bucket::enforce(Key::new(Kind::Ip, 1 << 100 | id), l);
            decide(&s, T0 + 120_000, &[], &[b]);
        }
        assert!(s.len() < 20_000, "{}", s.len());
    }

    #[test]
    fn concurrent_decisions_never_over_admit() {
        let s = std::sync::Arc::new(LocalState::new());
        let b = Bucket::enforce(Key::new(Kind::Tenant, 5), lim("tenant", 100));
        let admitted: usize = std::thread::scope(|scope| {
            let hs: Vec<_> = (0..4)
                .map(|_| {
                    let s = s.clone();
                    scope.spawn(move || (0..100).filter(|_| decide(&s, T0, &[], &[b]).refused.is_none()).count())
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(admitted, 100);
    }

    #[test]
    fn a_strike_one_window_old_no_longer_counts() {
        let s = LocalState::new();
        let key = Key::new(Kind::Waf, 1);
        let rule = StrikeRule { threshold: 3, window_ms: 60_000, block_ms: 1_000 };
        assert_eq!(s.strike_now(7, key, rule, T0).count, 1);
        assert_eq!(s.strike_now(7, key, rule, T0 + 30_000).count, 2);
        assert_eq!(s.strike_now(7, key, rule, T0 + 60_000), StrikeOutcome { count: 2, blocked_until: None });
        assert_eq!(
            s.strike_now(7, key, rule, T0 + 60_001),
            StrikeOutcome { count: 3, blocked_until: Some(T0 + 61_001) }
        );
        // During the block strikes still count, up to the threshold, and
        // start no second block.
        for count in [1, 2, 3, 3, 3] {
            assert_eq!(s.strike_now(7, key, rule, T0 + 60_002), StrikeOutcome { count, blocked_until: None });
        }
        // The block ends on time, and the strikes made meanwhile start the next.
        assert_eq!(s.strike_now(7, key, rule, T0 + 61_001).blocked_until, Some(T0 + 62_001));
        // A threshold of one: each strike during its block counts once.
        let one = StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 60_000 };
        let k = Key::new(Kind::CredentialFailure, 2);
        assert_eq!(s.strike_now(7, k, one, T0).blocked_until, Some(T0 + 60_000));
        assert_eq!(s.strike_now(7, k, one, T0 + 1).count, 1);
        assert_eq!(s.strike_now(7, k, one, T0 + 2).count, 1);
    }

    #[test]
    fn a_pair_lock_ends_on_time() {
        let s = LocalState::new();
        let rule = LoginRule {
            pair: StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 60_000 },
            account: StrikeRule { threshold: 100, window_ms: 60_000, block_ms: 60_000 },
            spacing_ms: 10_000,
        };
        let keys = LoginKeys { pair: Key::new(Kind::Login, 1), account: Key::new(Kind::LoginAccount, 1) };
        assert_eq!(
            s.login_attempt_now(1, keys, rule, T0),
            LoginAdmission::Admitted { pair_lock_started: Some(T0 + 60_000) }
        );
        assert_eq!(s.login_attempt_now(1, keys, rule, T0 + 59_999), LoginAdmission::Refused { pair_locked: true });
        assert!(matches!(s.login_attempt_now(1, keys, rule, T0 + 60_000), LoginAdmission::Admitted { .. }));
    }

    #[test]
    fn of_equal_refusals_the_first_is_named() {
        let s = LocalState::new();
        let a = Bucket::enforce(Key::new(Kind::Credential, 1), lim("key", 1));
        let b = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 1));
        assert!(decide(&s, T0, &[], &[a, b]).refused.is_none());
        let v = decide(&s, T0, &[], &[a, b]);
        assert_eq!(v.standings[0].retry_after_ns, v.standings[1].retry_after_ns);
        assert_eq!(v.refused, Some(0));
    }

    #[test]
    fn decisions_of_zero_to_four_buckets() {
        let s = LocalState::new();
        let v = decide(&s, T0, &[], &[]);
        assert!(v.refused.is_none() && v.blocked.is_none() && v.spike.is_none());
        let b = |kind, n| Bucket::enforce(Key::new(kind, 1), lim("x", n));
        let three = [b(Kind::Ip, 10), b(Kind::Credential, 10), b(Kind::Tenant, 1)];
        assert!(decide(&s, T0, &[], &three).refused.is_none());
        assert_eq!(decide(&s, T0, &[], &three).refused, Some(2));
        let four = [three[0], three[1], b(Kind::MessageCreate, 10), b(Kind::CallCreate, 10)];
        let v = decide(&s, T0, &[], &four);
        assert!(v.refused.is_none());
        // The refusal charged none of the three: two requests each so far.
        assert_eq!([0, 1, 2, 3].map(|i| four[i].limit.remaining(v.standings[i].reset_ns)), [8, 8, 9, 9]);
    }

    #[test]
    #[cfg(debug_assertions)]
    #[should_panic(expected = "names one bucket twice")]
    fn naming_a_bucket_twice_is_a_mistake() {
        let s = LocalState::new();
        let b = Bucket::enforce(Key::new(Kind::Ip, 1), lim("ip", 10));
        let other = Bucket::enforce(Key::new(Kind::Tenant, 1), lim("tenant", 10));
        decide(&s, T0, &[], &[other, b, b]);
    }

    #[test]
    fn sweeps_keep_charged_and_noticed_buckets() {
        let s = LocalState::new();
        let l = lim("ip", 10);
        let hot = Bucket::enforce(Key::new(Kind::Ip, u128::MAX), l);
        for _ in 0..10 {
            assert!(decide(&s, T0, &[], &[hot]).refused.is_none());
        }
        let burst = Bucket::observe(Key::new(Kind::Burst, u128::MAX), Limit::per_second("burst", 2).unwrap());
        assert_eq!((0..20).filter(|_| decide(&s, T0, &[], &[burst]).spike.is_some()).count(), 1);
        // Enough other keys to sweep the shard, once the burst bucket is idle.
        for id in 0..3_000u128 {
            decide(&s, T0 + 5_000, &[], &[Bucket::enforce(Key::new(Kind::Ip, id), l)]);
        }
        // The charged bucket still refuses; the spike was already noted.
        assert!(decide(&s, T0 + 5_000, &[], &[hot]).refused.is_some());
        assert_eq!((0..20).filter(|_| decide(&s, T0 + 10_000, &[], &[burst]).spike.is_some()).count(), 0);
    }

    /// A bucket full again at the sweep's instant (its arrival time, or the
    /// end of its notice, is now) is the same as none: the sweep drops it.
    #[test]
    fn sweeps_drop_buckets_full_at_that_instant() {
        let s = LocalState::new();
        let ip = |id: u128| Bucket::enforce(Key::new(Kind::Ip, id), lim("ip", 10));
        // One request each: full again 6 s later. The next new key sweeps.
        for id in 0..1_024u128 {
            decide(&s, T0, &[], &[ip(id)]);
        }
        let t1 = T0 + 6_000;
        decide(&s, t1, &[], &[ip(5_000)]);
        assert_eq!(s.len(), 1);
        // A burst bucket full again after 2 s, its spike noted for 60 s.
        let burst = Bucket::observe(Key::new(Kind::Burst, 1), Limit::per_second("burst", 2).unwrap());
        assert_eq!((0..20).filter(|_| decide(&s, t1, &[], &[burst]).spike.is_some()).count(), 1);
        for id in 0..1_022u128 {
            decide(&s, t1, &[], &[ip(id)]);
        }
        assert_eq!(s.len(), 1_024);
        decide(&s, t1 + 60_000, &[], &[ip(6_000)]);
        assert_eq!(s.len(), 1);
    }

    /// After a sweep that keeps many live buckets, the next waits until the
    /// map has doubled: sweeps stay rare, their cost spread over inserts.
    #[test]
    fn sweeps_wait_for_the_map_to_double() {
        let s = LocalState::new();
        let short = |id: u128| Bucket::enforce(Key::new(Kind::Ip, id), Limit::per_second("ip", 1_000).unwrap());
        let long = |id: u128| Bucket::enforce(Key::new(Kind::Tenant, id), lim("tenant", 10));
        // 424 buckets full again after 1 ms, 600 after 6 s.
        for id in 0..424u128 {
            decide(&s, T0, &[], &[short(id)]);
        }
        for id in 0..600u128 {
            decide(&s, T0, &[], &[long(id)]);
        }
        // The sweep keeps the 600: the next is due at 1 200 entries.
        decide(&s, T0 + 1_000, &[], &[short(10_000)]);
        assert_eq!(s.len(), 601);
        for id in 0..423u128 {
            decide(&s, T0 + 1_000, &[], &[short(20_000 + id)]);
        }
        assert_eq!(s.len(), 1_024);
        // 424 idle buckets, but no sweep yet.
        decide(&s, T0 + 2_000, &[], &[short(30_000)]);
        assert_eq!(s.len(), 1_025);
    }

    #[test]
    fn entries_are_counted() {
        let s = LocalState::new();
        assert!(s.is_empty());
        s.strike_now(7, Key::new(Kind::Waf, 1), StrikeRule { threshold: 3, window_ms: 1, block_ms: 1 }, T0);
        assert!(!s.is_empty());
        assert_eq!(s.len(), 1);
        decide(&s, T0, &[], &[Bucket::enforce(Key::new(Kind::Ip, 1), lim("ip", 10))]);
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn a_shard_full_of_blocks_takes_nothing_more() {
        let s = LocalState::new();
        let block = StrikeRule { threshold: 1, window_ms: 60_000, block_ms: 3_600_000 };
        let rule = LoginRule {
            pair: StrikeRule { threshold: 5, window_ms: 60_000, block_ms: 60_000 },
            account: block,
            spacing_ms: 10_000,
        };
        let keys = LoginKeys { pair: Key::new(Kind::Login, 1), account: Key::new(Kind::LoginAccount, 1) };
        // An IPv6 client's partition: its /64 in the high bits.
        let p = 1u128 << 64;
        // The account is throttled, then blocks fill its shard.
        s.strike_now(p, keys.account, block, T0);
        for id in 0..SHARD_CAP as u128 {
            s.strike_now(p, Key::new(Kind::Waf, id), block, T0);
        }
        assert_eq!(s.len(), SHARD_CAP);
        // Nothing new is tracked there: no strike, notice, mark or spacing.
        let new = Key::new(Kind::Waf, u128::MAX);
        assert_eq!(s.strike_now(p, new, block, T0), StrikeOutcome { count: 0, blocked_until: None });
        assert!(!s.notice_now(p, Key::new(Kind::Notice, 1), T0, 60_000));
        s.mark_now(p, keys.trust(), T0, T0 + 60_000);
        assert_eq!(s.login_attempt_now(p, keys, rule, T0), LoginAdmission::Refused { pair_locked: false });
        assert_eq!(s.len(), SHARD_CAP);
        // The blocks hold.
        assert!(matches!(s.attempt_now(p, Key::new(Kind::Waf, 5), block, T0 + 1), Attempt::Locked { .. }));
        // Other partitions live in other shards, with room of their own.
        assert!((2..18u128).any(|n| s.strike_now(n << 64, new, block, T0).count == 1));
    }

    #[test]
    fn sweeps_drop_what_has_expired_and_only_that() {
        let s = LocalState::new();
        let rule = StrikeRule { threshold: 2, window_ms: 1_000, block_ms: 1_000 };
        for id in 0..1_500u128 {
            s.strike_now(7, Key::new(Kind::CredentialFailure, id), rule, T0);
        }
        // Below the cap nothing live is dropped, cheap or not.
        assert_eq!(s.strike_now(7, Key::new(Kind::CredentialFailure, 0), rule, T0).blocked_until, Some(T0 + 1_000));
        // At their expiry all of them go at the next sweep.
        for id in 0..600u128 {
            s.strike_now(7, Key::new(Kind::Waf, id), rule, T0 + 1_000);
        }
        assert!(s.len() < 1_000, "{}", s.len());
    }

    /// A flood of new keys of `kind` lifts no block in force, but forgets
    /// one that ends at that instant.
    fn flood_keeps_blocks(kind: Kind) {
        let s = LocalState::new();
        let held = Key::new(kind, u128::MAX);
        let ending = Key::new(kind, u128::MAX - 1);
        let long = StrikeRule { threshold: 1, window_ms: 1_000, block_ms: 900_000 };
        let short = StrikeRule { threshold: 2, window_ms: 900_000, block_ms: 1_000 };
        s.strike_now(7, held, long, T0);
        s.strike_now(7, ending, short, T0 - 1_000);
        assert_eq!(s.strike_now(7, ending, short, T0 - 1_000).blocked_until, Some(T0));
        assert_eq!(s.strike_now(7, ending, short, T0 - 500).count, 1);
        let flood = StrikeRule { threshold: 5, window_ms: 900_000, block_ms: 900_000 };
        for id in 0..(SHARD_CAP as u128 + 100) {
            s.strike_now(7, Key::new(kind, id), flood, T0);
        }
        assert!(matches!(s.attempt_now(7, held, long, T0), Attempt::Locked { .. }), "{kind:?}");
        assert_eq!(s.strike_now(7, ending, short, T0), StrikeOutcome { count: 1, blocked_until: None }, "{kind:?}");
    }

    #[test]
    fn floods_lift_no_block() {
        flood_keeps_blocks(Kind::CredentialFailure);
        flood_keeps_blocks(Kind::Login);
    }
}
