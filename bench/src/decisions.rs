//! `palisade-bench decisions [SECONDS]`: the abuse-control decision with
//! the state in Redis (`redis.url`), as the server makes it: through the
//! failure policy, one script call per decision (a request's tenant pass:
//! a block check and the key, tenant and burst buckets).
//! - throughput: many decisions in flight at once over the one
//!   multiplexed connection (BENCH_CONCURRENCY, default 64), on keys of
//!   10,000 tenants (target: at least 40,000 decisions/s);
//! - latency: one decision at a time, in Redis and in process; the
//!   difference of their medians is what Redis adds to a request.
//!
//! Redis: PALISADE_BENCH_REDIS_URL, else redis://127.0.0.1:6379; the keys
//! go under a fresh prefix and expire by themselves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_cluster::{Failover, RedisState};
use palisade_config::{Redis, Secret};
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::state::{AbuseState, BlockCheck, Bucket, Decide, LocalState};

const TENANTS: u64 = 10_000;

fn decide_one(state: &dyn AbuseState, n: u64, now_ms: i64) -> impl std::future::Future<Output = bool> + Send + '_ {
    let huge = Limit::per_minute("x", u32::MAX / 2).unwrap();
    let id = u128::from(n % TENANTS);
    async move {
        let blocks = [BlockCheck { key: Key::new(Kind::Waf, id), refuses: true }];
        let buckets = [
            Bucket::enforce(Key::new(Kind::Credential, id), huge),
            Bucket::enforce(Key::new(Kind::Tenant, id), huge),
            Bucket::observe(Key::new(Kind::Burst, id), huge),
        ];
        let d = Decide { partition: id, now_ms, blocks: &blocks, buckets: &buckets, notice_ms: 60_000 };
        matches!(state.decide(d).await, Ok(v) if v.refused.is_none())
    }
}

fn now_ms() -> i64 {
    i64::try_from(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis()).unwrap()
}

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let url = std::env::var("PALISADE_BENCH_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let config = Redis {
        url: Some(Secret::new(url)),
        key_prefix: format!("bench-{:016x}", rand::random::<u64>()),
        ..Default::default()
    };
    let conn = palisade_cluster::redis::connect(&config)?;
    anyhow::ensure!(palisade_cluster::redis::ping(&conn, Duration::from_secs(2)).await, "Redis does not answer");
    let shared = RedisState::new(conn, &config.key_prefix, Duration::from_millis(config.timeout_ms));
    let redis: Arc<dyn AbuseState> =
        Arc::new(Failover::new(shared, config.on_failure, Duration::from_millis(config.retry_ms), Arc::new(())));
    let local: Arc<dyn AbuseState> = Arc::new(LocalState::new());

    // Warm up: scripts loaded, connection up.
    for n in 0..1_000 {
        anyhow::ensure!(decide_one(&*redis, n, now_ms()).await, "a decision was refused or failed");
    }

    let concurrency = crate::env_or("BENCH_CONCURRENCY", 64);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let start = Instant::now();
    let tasks: Vec<_> = (0..concurrency)
        .map(|t| {
            let (redis, done, failed, stop) = (redis.clone(), done.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = t as u64 * 7_919;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    if decide_one(&*redis, n, now_ms()).await {
                        done.fetch_add(1, Ordering::Relaxed);
                    } else {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await?;
    }
    let secs = start.elapsed().as_secs_f64();
    let rate = done.load(Ordering::Relaxed) as f64 / secs;
    println!(
        "Redis-backed decisions: {rate:>8.0}/s ({concurrency} in flight, {} failed) (target: 40,000/s)",
        failed.load(Ordering::Relaxed)
    );

    let n = crate::env_or("BENCH_SAMPLES", 20_000) as u64;
    let mut out = Vec::new();
    for (label, state) in [("in process", &local), ("Redis", &redis)] {
        let mut times = Vec::with_capacity(n as usize);
        for i in 0..n {
            let t = Instant::now();
            decide_one(&**state, i, now_ms()).await;
            times.push(t.elapsed());
        }
        times.sort();
        let pct = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)];
        let (p50, p99) = (pct(0.50), pct(0.99));
        println!("{label:>12}: one at a time, p50 {:>7.1} µs, p99 {:>7.1} µs", us(p50), us(p99));
        out.push(p50);
    }
    println!("Redis adds {:.1} µs at the median to a decision", us(out[1].saturating_sub(out[0])));
    Ok(())
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}
