//! The abuse state in Redis: the same semantics as
//! [`LocalState`](palisade_guard::state::LocalState), one script call
//! (`EVALSHA`) per operation.
//!
//! Every key of a partition carries the hash tag `{prefix:partition}`, so
//! one operation's keys live on one node of a Redis Cluster and a script
//! may touch them together. Every entry has a time to live past which it no
//! longer matters, so Redis forgets it by itself.

use std::sync::LazyLock;
use std::time::Duration;

use palisade_guard::limits::Key;
use palisade_guard::state::{
    AbuseState, Answer, Attempt, Bucket, Decide, Health, LoginAdmission, LoginKeys, LoginRule, Standing, StrikeOutcome,
    StrikeRule, Unavailable, Verdict, MAX_BUCKETS,
};
use redis::aio::ConnectionManager;
use redis::Script;

const LIB: &str = include_str!("lua/lib.lua");

fn script(body: &str) -> Script {
    Script::new(&format!("{LIB}\n{body}"))
}

static DECIDE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/decide.lua")));
static STRIKE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/strike.lua")));
static FORGIVE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/forgive.lua")));
static NOTICE: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/notice.lua")));
static LOGIN: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/login.lua")));
static MARK: LazyLock<Script> = LazyLock::new(|| script(include_str!("lua/mark.lua")));

/// The Redis-backed state. Every call gives up after `timeout`, and then
/// answers [`Unavailable`]: what to do then is [`crate::Failover`]'s.
#[derive(Clone)]
pub struct RedisState {
    conn: ConnectionManager,
    prefix: String,
    timeout: Duration,
}

impl RedisState {
    pub fn new(conn: ConnectionManager, prefix: &str, timeout: Duration) -> RedisState {
        RedisState { conn, prefix: prefix.to_owned(), timeout }
    }

    /// The Redis key of `key` in `partition`: `{prefix:partition}:kind:id`.
    pub fn key(&self, partition: u128, key: Key) -> String {
        format!("{{{}:{partition:x}}}:{}:{:x}", self.prefix, key.kind as u8, key.id)
    }

    /// The Redis key of `key`'s rate bucket in `partition`:
    /// `{prefix:partition}:b<kind>:id`. Buckets are kept apart from the
    /// strikes, blocks and notices of the same key, as in process.
    pub fn bucket_key(&self, partition: u128, key: Key) -> String {
        format!("{{{}:{partition:x}}}:b{}:{:x}", self.prefix, key.kind as u8, key.id)
    }

    async fn run<T: redis::FromRedisValue>(&self, inv: redis::ScriptInvocation<'_>) -> Result<T, Unavailable> {
        let mut conn = self.conn.clone();
        match tokio::time::timeout(self.timeout, inv.invoke_async(&mut conn)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => {
                // Unreachable, or answering nonsense: either way not to be used.
                if on_the_way(&e) {
                    tracing::debug!(target: "palisade::redis", kind = ?e.kind(), "Redis call failed");
                } else {
                    tracing::warn!(target: "palisade::redis", kind = ?e.kind(), "Redis refused a call");
                }
                Err(Unavailable)
            }
            Err(_) => {
                tracing::debug!(target: "palisade::redis", "Redis call timed out");
                Err(Unavailable)
            }
        }
    }

    async fn decide_in(&self, d: Decide<'_>) -> Result<Verdict, Unavailable> {
        let blocks = &d.blocks[..d.blocks.len().min(32)];
        let mut buckets: &[Bucket] = &d.buckets[..d.buckets.len().min(MAX_BUCKETS)];
        if !distinct(buckets) {
            // As the in-process state: only the first counts.
            debug_assert!(false, "a decision names one bucket twice");
            buckets = &buckets[..1];
        }
        let mut inv = DECIDE.prepare_invoke();
        // Numbers in hexadecimal: the script converts them for a fraction
        // of what decimal costs it (decide.lua).
        inv.arg(hex(d.now_ms)).arg(hex(d.notice_ms)).arg(format!("{:x}", blocks.len()));
        for b in blocks {
            inv.key(self.key(d.partition, b.key)).arg(u8::from(b.refuses));
        }
        for b in buckets {
            inv.key(self.bucket_key(d.partition, b.key))
                .arg(format!("{:x}", b.limit.interval_ns))
                .arg(format!("{:x}", b.limit.tolerance_ns()))
                .arg(u8::from(b.observe_only));
        }
        let r: Vec<i64> = self.run(inv).await?;
        if r.len() < 6 {
            return Err(Unavailable);
        }
        let index = |v: i64| usize::try_from(v).ok();
        let mut v = Verdict {
            active_blocks: u32::try_from(r[0]).unwrap_or(0),
            blocked: index(r[1]).map(|i| (i, r[2])),
            refused: index(r[3]),
            refusal_is_new: r[4] == 1,
            spike: index(r[5]),
            ..Verdict::default()
        };
        if v.blocked.is_none() {
            let ns = |x: i64| u64::try_from(x).unwrap_or(0);
            for (i, pair) in r[6..].chunks_exact(2).take(buckets.len()).enumerate() {
                v.standings[i] = Standing { reset_ns: ns(pair[0]), retry_after_ns: ns(pair[1]) };
            }
        }
        Ok(v)
    }

    async fn strike_in(
        &self,
        partition: u128,
        key: Key,
        rule: StrikeRule,
        now_ms: i64,
        attempt: bool,
    ) -> Result<Attempt, Unavailable> {
        let mut inv = STRIKE.key(self.key(partition, key));
        inv.arg(now_ms).arg(rule.threshold).arg(rule.window_ms).arg(rule.block_ms).arg(u8::from(attempt));
        let r: (i64, i64, i64, i64) = self.run(inv).await?;
        Ok(match r {
            (0, _, _, until) => Attempt::Locked { until },
            (_, count, started, until) => Attempt::Counted(StrikeOutcome {
                count: u32::try_from(count).unwrap_or(u32::MAX),
                blocked_until: (started == 1).then_some(until),
            }),
        })
    }

    async fn login_in(
        &self,
        partition: u128,
        keys: LoginKeys,
        rule: LoginRule,
        now_ms: i64,
    ) -> Result<LoginAdmission, Unavailable> {
        let mut inv = LOGIN.prepare_invoke();
        for k in [keys.pair, keys.account, keys.trust(), keys.spacing()] {
            inv.key(self.key(partition, k));
        }
        inv.arg(now_ms).arg(rule.pair.threshold).arg(rule.pair.window_ms).arg(rule.pair.block_ms).arg(rule.spacing_ms);
        let r: (i64, i64, i64) = self.run(inv).await?;
        Ok(match r {
            (0, locked, _) => LoginAdmission::Refused { pair_locked: locked == 1 },
            (_, started, until) => LoginAdmission::Admitted { pair_lock_started: (started == 1).then_some(until) },
        })
    }

    async fn clear_in(&self, partition: u128, key: Key) -> Result<(), Unavailable> {
        let mut conn = self.conn.clone();
        let del = redis::cmd("DEL").arg(self.key(partition, key)).clone();
        match tokio::time::timeout(self.timeout, del.query_async::<i64>(&mut conn)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(Unavailable),
        }
    }
}

/// Whether a call failed on its way (Redis unreachable, the connection
/// dropped, no answer in time), not in Redis: logged at debug level, as the
/// failover counts and reports it; an error Redis answered (a script
/// refused, a wrong reply) is a warning, as it needs a person.
fn on_the_way(e: &redis::RedisError) -> bool {
    if e.is_io_error() {
        return true;
    }
    // Caused by an I/O error without saying so in its kind: redis 1.8 has
    // no such error, another version may.
    e.is_connection_dropped() || e.is_timeout()
}

/// A time for a script in hexadecimal; a time before 1970 (never a
/// clock's) as 0, which the script's arithmetic treats as long past.
fn hex(ms: i64) -> String {
    format!("{:x}", ms.max(0))
}

fn distinct(buckets: &[Bucket]) -> bool {
    buckets.iter().enumerate().all(|(i, a)| buckets[i + 1..].iter().all(|b| a.key != b.key))
}

impl AbuseState for RedisState {
    fn decide<'a>(&'a self, d: Decide<'a>) -> Answer<'a, Verdict> {
        Box::pin(self.decide_in(d))
    }

    fn strike(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, StrikeOutcome> {
        Box::pin(async move {
            match self.strike_in(partition, key, rule, now_ms, false).await? {
                Attempt::Counted(o) => Ok(o),
                // Not asked to check the block: cannot happen.
                Attempt::Locked { .. } => Err(Unavailable),
            }
        })
    }

    fn attempt(&self, partition: u128, key: Key, rule: StrikeRule, now_ms: i64) -> Answer<'_, Attempt> {
        Box::pin(self.strike_in(partition, key, rule, now_ms, true))
    }

    fn forgive(&self, partition: u128, key: Key, started_block: Option<i64>) -> Answer<'_, ()> {
        Box::pin(async move {
            let mut inv = FORGIVE.key(self.key(partition, key));
            inv.arg(u8::from(started_block.is_some())).arg(started_block.unwrap_or(0));
            self.run::<i64>(inv).await.map(drop)
        })
    }

    fn notice(&self, partition: u128, key: Key, now_ms: i64, period_ms: i64) -> Answer<'_, bool> {
        Box::pin(async move {
            let mut inv = NOTICE.key(self.key(partition, key));
            inv.arg(now_ms).arg(period_ms);
            self.run::<i64>(inv).await.map(|n| n == 1)
        })
    }

    fn login_attempt(
        &self,
        partition: u128,
        keys: LoginKeys,
        rule: LoginRule,
        now_ms: i64,
    ) -> Answer<'_, LoginAdmission> {
        Box::pin(self.login_in(partition, keys, rule, now_ms))
    }

    fn mark(&self, partition: u128, key: Key, now_ms: i64, until_ms: i64) -> Answer<'_, ()> {
        Box::pin(async move {
            let mut inv = MARK.key(self.key(partition, key));
            inv.arg(now_ms).arg(until_ms);
            self.run::<i64>(inv).await.map(drop)
        })
    }

    fn clear(&self, partition: u128, key: Key) -> Answer<'_, ()> {
        Box::pin(self.clear_in(partition, key))
    }

    fn health(&self) -> Health {
        Health::Shared
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_guard::limits::{Kind, Limit};

    fn bucket(kind: Kind, id: u128) -> Bucket {
        Bucket::enforce(Key::new(kind, id), Limit::per_minute("x", 10).unwrap())
    }

    /// A decision that names one bucket twice is cut to its first (as in
    /// process); `distinct` is what notices it.
    #[test]
    fn distinct_finds_a_bucket_named_twice() {
        let (a, b, c) = (bucket(Kind::Ip, 1), bucket(Kind::Ip, 2), bucket(Kind::Tenant, 1));
        assert!(distinct(&[]));
        assert!(distinct(&[a]));
        assert!(distinct(&[a, b, c]));
        assert!(!distinct(&[a, a]));
        assert!(!distinct(&[a, b, a]));
        assert!(!distinct(&[a, b, c, b]));
        // The same id under another kind is another bucket.
        assert!(distinct(&[bucket(Kind::Ip, 1), bucket(Kind::Credential, 1)]));
    }

    #[test]
    fn link_failures_are_told_from_errors_redis_answered() {
        use std::io;
        let kinds = [
            io::ErrorKind::Other,
            io::ErrorKind::TimedOut,
            io::ErrorKind::ConnectionReset,
            io::ErrorKind::ConnectionRefused,
        ];
        for kind in kinds {
            assert!(on_the_way(&redis::RedisError::from(io::Error::new(kind, "x"))), "{kind:?}");
        }
        assert!(on_the_way(&redis::RedisError::from((redis::ErrorKind::Io, "dropped"))));
        for kind in [redis::ErrorKind::Extension, redis::ErrorKind::UnexpectedReturnType, redis::ErrorKind::Parse] {
            assert!(!on_the_way(&redis::RedisError::from((kind, "refused"))), "{kind:?}");
        }
    }

    #[test]
    fn times_go_to_the_scripts_in_hexadecimal_and_never_negative() {
        assert_eq!(hex(0), "0");
        assert_eq!(hex(255), "ff");
        assert_eq!(hex(1_700_000_000_000), "18bcfe56800");
        assert_eq!(hex(-5), "0");
    }
}
