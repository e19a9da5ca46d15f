//! `palisade-bench webhooks [SECONDS]`: outbound webhook deliveries, on
//! SQLite (and on PostgreSQL when PALISADE_BENCH_POSTGRES_URL is set; each
//! run uses a fresh database).
//!
//! 1. End to end: the real server (`palisade::build_state` + `start`, its
//!    delivery worker as configured) delivers to a local receiver, an axum
//!    server on 127.0.0.1 that verifies every request's `v1` signature with
//!    the endpoint's secret and answers 200. One tenant, BENCH_ENDPOINTS
//!    endpoints (default 1) subscribed to `webhook.test`, created over HTTP.
//!    Events are queued as the server queues them alongside a change:
//!    `palisade_store::webhooks::enqueue_stmts` lists (BENCH_BATCH events
//!    per `Db::write_all`, default 100), then the worker is woken. For
//!    SECONDS a producer keeps at most BENCH_BACKLOG deliveries (default
//!    2000) queued but not yet received; then the run waits until the
//!    receiver has counted every delivery AND the queue shows them all
//!    `delivered`. Columns: deliveries/s over that whole time; deliveries
//!    the receiver verified (`delivered`) and refused (`invalid`, must be
//!    0); attempts that did not deliver (`retried`); latency from enqueue
//!    to receipt (the payload carries the enqueue instant) under that load
//!    (mostly time in the backlog), with the queue idle (200 events one at
//!    a time, the worker woken as API routes wake it), and idle but not
//!    woken (8 events spread over a poll period, as the carrier-report
//!    writer queues `message.*` events: the next poll finds them); the
//!    mean number of rows the worker holds leased, sampled every 50 ms
//!    (it claims `concurrency × 4` per batch). Run with the default
//!    `webhooks.concurrency` and with 64.
//! 2. Per-delivery costs: the SSRF guard's URL check and address filter,
//!    the guarded client's `post` against a bare reqwest client posting the
//!    same signed request to the same receiver, signing a 1 KiB body, and
//!    opening the endpoint's sealed secret (done on every attempt).

use std::collections::HashMap;
use std::hint::black_box;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use bytes::Bytes;
use http::{HeaderMap, StatusCode};
use palisade_config::{Config, Secret};
use palisade_core::{Clock, SystemClock, TenantId};
use palisade_guard::ssrf::SsrfPolicy;
use palisade_webhooks::client::{ClientSettings, WebhookClient};
use palisade_webhooks::signature::{self, WebhookSecret};
use serde_json::json;

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let default_concurrency = Config::default().webhooks.concurrency;
    let settings = [default_concurrency, 64];
    let (endpoints, backlog) = (crate::env_or("BENCH_ENDPOINTS", 1), crate::env_or("BENCH_BACKLOG", 2000));
    println!(
        "end to end: {endpoints} endpoint(s), ≤ {backlog} deliveries queued, {seconds} s of load, then drained; \
         latency = enqueue → receipt"
    );
    println!(
        "{:>10} {:>11} {:>12} {:>9} {:>7} {:>7} {:>22} {:>18} {:>17} {:>11}",
        "backend",
        "concurrency",
        "deliveries/s",
        "delivered",
        "invalid",
        "retried",
        "loaded p50 / p99 ms",
        "idle p50 / p99 ms",
        "unwoken min/max",
        "mean leased"
    );
    println!(
        "  (delivered: verified by the receiver, all phases; retried: attempts that did not deliver; idle: one at \
         a time, worker woken; unwoken: not woken, found by the poll; mean leased: rows claimed and not yet \
         finished, of batches of concurrency × 4)"
    );
    for &c in &settings {
        deliveries("SQLite", None, dir.path(), seconds, c).await?;
    }
    if let Ok(base) = std::env::var("PALISADE_BENCH_POSTGRES_URL") {
        for &c in &settings {
            let (url, name) = crate::fresh_postgres_db(&base).await?;
            let result = deliveries("PostgreSQL", Some(url), dir.path(), seconds, c).await;
            crate::drop_postgres_db(&base, &name).await?;
            result?;
        }
    }
    per_delivery_costs().await?;
    println!(
        "reproduce: cargo build --release -p palisade-bench && [PALISADE_BENCH_POSTGRES_URL=postgres://…] \
         [BENCH_ENDPOINTS=1 BENCH_BACKLOG=2000 BENCH_BATCH=100] ./target/release/palisade-bench webhooks {seconds}"
    );
    Ok(())
}

/// The test receiver: verifies signatures, counts, answers 200.
struct Receiver {
    base: Instant,
    /// By endpoint number (the path's last segment).
    secrets: RwLock<Vec<WebhookSecret>>,
    valid: AtomicU64,
    invalid: AtomicU64,
    /// Enqueue → receipt, from the payload's `t_us` (µs since `base`).
    latencies_us: Mutex<Vec<u64>>,
}

impl Receiver {
    async fn start(base: Instant) -> anyhow::Result<(Arc<Receiver>, SocketAddr)> {
        let r = Arc::new(Receiver {
            base,
            secrets: RwLock::new(Vec::new()),
            valid: AtomicU64::new(0),
            invalid: AtomicU64::new(0),
            latencies_us: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new().route("/hook/{n}", axum::routing::post(receive)).with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        Ok((r, addr))
    }

    fn received(&self) -> u64 {
        self.valid.load(Ordering::Relaxed) + self.invalid.load(Ordering::Relaxed)
    }

    /// Until `target` requests have come in (10 s at most).
    async fn wait_for(&self, target: u64) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.received() < target {
            anyhow::ensure!(Instant::now() < deadline, "{} of {target} deliveries received", self.received());
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        Ok(())
    }

    /// The latencies recorded so far, sorted, and forgotten.
    fn take_latencies(&self) -> Vec<Duration> {
        let mut v: Vec<Duration> = std::mem::take(&mut *self.latencies_us.lock().expect("lock"))
            .into_iter()
            .map(Duration::from_micros)
            .collect();
        v.sort();
        v
    }
}

async fn receive(State(r): State<Arc<Receiver>>, Path(n): Path<usize>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
    let secret = r.secrets.read().expect("lock").get(n).cloned();
    let valid = secret.is_some_and(|s| {
        signature::verify_headers(&[s], &[], &headers, &body, now, signature::DEFAULT_TOLERANCE_SECS).is_ok()
    });
    if !valid {
        r.invalid.fetch_add(1, Ordering::Relaxed);
        return StatusCode::OK;
    }
    r.valid.fetch_add(1, Ordering::Relaxed);
    let sent = serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["data"]["t_us"].as_u64());
    if let Some(sent) = sent {
        let at = r.base.elapsed().as_micros() as u64;
        r.latencies_us.lock().expect("lock").push(at.saturating_sub(sent));
    }
    StatusCode::OK
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// One server with `webhooks.concurrency = concurrency` on its own database.
async fn deliveries(
    label: &str,
    db_url: Option<String>,
    dir: &std::path::Path,
    seconds: u64,
    concurrency: usize,
) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.data_dir = dir.join(format!("data-{label}-{concurrency}"));
    config.database.url = db_url.map(Secret::new);
    let master = palisade_auth::token::new_master_key();
    config.admin.master_key = Some(Secret::new(master.clone()));
    config.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse()?];
    config.webhooks.concurrency = concurrency;
    let state = palisade::build_state(config, Arc::new(SystemClock)).await?;
    let server = palisade::start(state.clone(), "127.0.0.1:0".parse()?).await?;
    let base = Instant::now();
    let (receiver, receiver_addr) = Receiver::start(base).await?;

    // The tenant and its endpoints, through the API.
    let (_, token) = crate::http::credentials(server.addr, &master).await?;
    let c = reqwest::Client::new();
    let api = format!("http://{}", server.addr);
    let me: serde_json::Value =
        c.get(format!("{api}/v1/me")).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
    let tenant: TenantId = me["tenant"]["id"].as_str().unwrap_or_default().parse()?;
    let endpoints = crate::env_or("BENCH_ENDPOINTS", 1);
    for n in 0..endpoints {
        let created: serde_json::Value = c
            .post(format!("{api}/v1/webhooks"))
            .bearer_auth(&token)
            .json(&json!({"url": format!("http://{receiver_addr}/hook/{n}"), "events": ["webhook.test"]}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        let secret = WebhookSecret::parse(created["secret"].as_str().unwrap_or_default())?;
        receiver.secrets.write().expect("lock").push(secret);
    }
    let endpoints = endpoints as u64;

    // Queues `n` events (each fans out to every endpoint) in one write, as
    // the server queues events with the change they report, and (if `wake`)
    // wakes the worker.
    let enqueue = |n: usize, wake: bool| {
        let events: Vec<_> = (0..n)
            .map(|_| {
                let t_us = base.elapsed().as_micros() as u64;
                palisade_webhooks::events::event(tenant, "webhook.test", json!({ "t_us": t_us }), SystemClock.now_ms())
            })
            .collect();
        let (db, notify) = (state.db.clone(), state.webhook_wake.clone());
        async move {
            db.write_all(palisade_store::webhooks::enqueue_stmts(&events)).await?;
            if wake {
                notify.notify_one();
            }
            anyhow::Ok(n as u64 * endpoints)
        }
    };
    let delivered_in_db = || async {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'delivered'")
            .fetch_one(state.db.reader())
            .await?;
        anyhow::Ok(n as u64)
    };

    // Loaded: keep the queue full for `seconds`, then drain it.
    let (backlog, batch) = (crate::env_or("BENCH_BACKLOG", 2000) as u64, crate::env_or("BENCH_BATCH", 100));
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let (mut queued, mut leased_sum, mut samples, mut last_sample) = (0u64, 0i64, 0i64, started);
    while Instant::now() < deadline {
        if queued.saturating_sub(receiver.received()) + batch as u64 * endpoints <= backlog {
            queued += enqueue(batch, true).await?;
        } else {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        // How many rows the worker holds leased (claimed, not yet finished).
        if last_sample.elapsed() >= Duration::from_millis(50) {
            last_sample = Instant::now();
            let leased: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM webhook_deliveries WHERE status = 'pending' AND lease_until > 0",
            )
            .fetch_one(state.db.reader())
            .await?;
            (leased_sum, samples) = (leased_sum + leased, samples + 1);
        }
    }
    let drain_deadline = Instant::now() + Duration::from_secs(120);
    while receiver.received() < queued || delivered_in_db().await? < queued {
        anyhow::ensure!(Instant::now() < drain_deadline, "not drained: {} of {queued} received", receiver.received());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed();
    let loaded = receiver.take_latencies();

    // Idle: one event at a time, each delivered before the next.
    for _ in 0..200 {
        let target = receiver.received() + enqueue(1, true).await?;
        receiver.wait_for(target).await?;
    }
    let idle = receiver.take_latencies();
    // Idle, not woken (as the carrier-report writer queues `message.*`
    // events): found by the next poll. Spread over the poll period.
    let mut unwoken = Vec::new();
    if concurrency == Config::default().webhooks.concurrency {
        let poll = Config::default().webhooks.poll_ms;
        for i in 0..8 {
            tokio::time::sleep(Duration::from_millis(i * poll / 8)).await;
            let target = receiver.received() + enqueue(1, false).await?;
            receiver.wait_for(target).await?;
        }
        unwoken = receiver.take_latencies();
    }
    let attempts: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_attempts WHERE outcome <> 'delivered'")
        .fetch_one(state.db.reader())
        .await?;
    let pct = |v: &[Duration], p: f64| ms(crate::percentile(v, p));
    println!(
        "{label:>10} {concurrency:>11} {:>12.0} {:>9} {:>7} {:>7} {:>22} {:>18} {:>17} {:>11.1}",
        queued as f64 / elapsed.as_secs_f64(),
        receiver.valid.load(Ordering::Relaxed),
        receiver.invalid.load(Ordering::Relaxed),
        attempts,
        format!("{:.1} / {:.1}", pct(&loaded, 0.5), pct(&loaded, 0.99)),
        format!("{:.2} / {:.2}", pct(&idle, 0.5), pct(&idle, 0.99)),
        if unwoken.is_empty() {
            "-".to_owned()
        } else {
            format!("{:.0} / {:.0}", pct(&unwoken, 0.0), pct(&unwoken, 1.0))
        },
        leased_sum as f64 / samples.max(1) as f64,
    );
    anyhow::ensure!(receiver.invalid.load(Ordering::Relaxed) == 0, "invalid signatures received");
    server.stop().await;
    Ok(())
}

/// Nanoseconds per call of `f`, over `n` calls.
fn ns_per(n: u32, mut f: impl FnMut()) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        f();
    }
    t.elapsed().as_secs_f64() * 1e9 / f64::from(n)
}

async fn per_delivery_costs() -> anyhow::Result<()> {
    println!("per delivery:");
    // The guard's checks, on a typical endpoint under the production policy.
    let strict = SsrfPolicy::default();
    let url = "https://hooks.example.com/palisade/events?source=palisade";
    let addrs: Vec<IpAddr> = vec!["93.184.215.14".parse()?, "2606:2800:21f:cb07:6820:80da:af6b:8b2c".parse()?];
    let n = 1_000_000;
    let check = ns_per(n, || {
        black_box(strict.check_url(black_box(url)).is_ok());
    });
    let filter = ns_per(n, || {
        black_box(strict.filter_resolved(black_box(&addrs)).is_ok());
    });
    println!("  SSRF check_url {check:.0} ns + filter_resolved (2 addresses) {filter:.0} ns, on {url}");

    let secret = WebhookSecret::generate();
    let body = Bytes::from(format!(r#"{{"type":"webhook.test","data":{{"pad":"{}"}}}}"#, "x".repeat(990)));
    let sign = ns_per(200_000, || {
        black_box(signature::sign_v1(&secret, "msg_2a7Yp0", 1_700_000_000, black_box(&body)));
    });
    let sealer = palisade_seal::Sealer::new(&[7; 32]);
    let sealed = sealer.seal(secret.to_string_whsec().as_bytes(), b"webhook-endpoint/t/e");
    let open = ns_per(200_000, || {
        black_box(sealer.open(black_box(&sealed), b"webhook-endpoint/t/e").is_ok());
    });
    println!("  sign_v1 on a {} byte body {sign:.0} ns; opening the sealed secret {open:.0} ns", body.len());

    // The guarded client against a bare one, same request, same receiver.
    let (receiver, addr) = Receiver::start(Instant::now()).await?;
    receiver.secrets.write().expect("lock").push(secret.clone());
    let lax = SsrfPolicy { allowed_private: vec!["127.0.0.0/8".parse()?], require_https: false };
    let guarded = WebhookClient::with_system_resolver(ClientSettings { policy: lax.clone(), ..Default::default() })?;
    let bare = reqwest::Client::builder().no_proxy().build()?;
    let url = format!("http://{addr}/hook/0");
    let local_check = ns_per(n, || {
        black_box(lax.check_url(black_box(&url)).is_ok());
    });
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs() as i64;
    let mut headers = HeaderMap::new();
    headers.insert("content-type", "application/json".parse()?);
    for (name, value) in signature::standard_headers("msg_2a7Yp0", now, &body, &[secret], None) {
        headers.insert(name, value.parse()?);
    }
    // Alternating rounds, which one goes first alternating too; the median
    // round counts, so a burst of other work on the machine hits neither.
    let (requests, rounds) = (crate::env_or("BENCH_REQUESTS", 10_000), 5);
    let mut results: HashMap<(&str, usize), Vec<f64>> = HashMap::new();
    for round in 0..rounds {
        for conns in [1, 16] {
            let order = if round % 2 == 0 { ["guarded", "bare"] } else { ["bare", "guarded"] };
            for which in order {
                let t = Instant::now();
                let tasks: Vec<_> = (0..conns)
                    .map(|_| {
                        let (guarded, bare, url, headers, body) =
                            (guarded.clone(), bare.clone(), url.clone(), headers.clone(), body.clone());
                        tokio::spawn(async move {
                            for _ in 0..requests / conns {
                                let status = if which == "guarded" {
                                    guarded.post(&url, headers.clone(), body.clone()).await.status
                                } else {
                                    let r = bare.post(&url).headers(headers.clone()).body(body.clone()).send().await?;
                                    let status = r.status().as_u16();
                                    r.bytes().await?;
                                    Some(status)
                                };
                                anyhow::ensure!(status == Some(200), "status {status:?}");
                            }
                            anyhow::Ok(())
                        })
                    })
                    .collect();
                for task in tasks {
                    task.await??;
                }
                let us = t.elapsed().as_secs_f64() * 1e6 / (requests / conns * conns) as f64;
                results.entry((which, conns)).or_default().push(us);
            }
        }
    }
    anyhow::ensure!(receiver.invalid.load(Ordering::Relaxed) == 0, "invalid signatures received");
    let median = |which, conns: usize| {
        let mut v = results[&(which, conns)].clone();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    for conns in [1, 16] {
        let (g, b) = (median("guarded", conns), median("bare", conns));
        println!(
            "  POST to the local receiver, {conns:>2} at a time (median of {rounds} rounds): guarded client {g:.1} µs, \
             bare reqwest {b:.1} µs per request: the guard and its wrapper add {:.1} µs ({:.0}% of the request; \
             check_url alone on this URL {:.0} ns)",
            g - b,
            (g - b) / g * 100.0,
            local_check
        );
    }
    println!("  ({} signatures verified by the receiver, 0 invalid)", receiver.valid.load(Ordering::Relaxed));
    Ok(())
}
