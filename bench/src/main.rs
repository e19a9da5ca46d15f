//! Load benchmarks. `cargo run --release -p palisade-bench -- audit [RECORDS]`
//! measures the audit log on SQLite (and on PostgreSQL when
//! PALISADE_BENCH_POSTGRES_URL is set; each run uses a fresh database):
//! - append throughput: many concurrent writers, one event per write (as
//!   requests append them), with the integrator sequencing and signing a
//!   checkpoint per batch as it does in the server;
//! - the cost an append adds to a write transaction, and that cost as a
//!   share of a whole write request (POST /v1/api-keys over HTTP);
//! - `audit verify` speed over the whole log.
//!
//! With BENCH_KEEP=DIR the PostgreSQL database is kept and DIR records how
//! to reach it; `cargo run --release -p palisade-bench -- audit-verify DIR`
//! then times full verification of it alone (BENCH_VERIFY_RUNS times).
//!
//! `cargo run --release -p palisade-bench -- http [SECONDS]` measures what
//! the middleware costs (see `http.rs`).
//!
//! `cargo run --release -p palisade-bench -- auth [SECONDS]` measures an
//! authenticated request against `/healthz` (see `auth.rs`).
//!
//! `cargo run --release -p palisade-bench -- webhooks [SECONDS]` measures
//! webhook deliveries (see `webhooks.rs`).
//!
//! `cargo run --release -p palisade-bench -- streams [STREAMS] [SECONDS]`
//! measures concurrent call-audio streams (see `streams.rs`).
//!
//! `cargo run --release -p palisade-bench -- decisions [SECONDS]` measures
//! rate-limit decisions with the state in Redis (see `decisions.rs`).

mod auth;
mod decisions;
mod http;
mod sends;
mod streams;
mod webhooks;

// The same allocator as the server binary.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_audit::checkpoint::Signer;
use palisade_audit::log::AuditLog;
use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::{Clock, SystemClock, TenantId};
use palisade_store::Db;
use serde_json::{json, Value};
use sqlx::Connection;

pub(crate) fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "audit".into());
    if what == "sends" {
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
        return sends::run(seconds).await;
    }
    if what == "streams" {
        let n = args.next().map(|s| s.parse()).transpose()?.unwrap_or(500);
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
        return streams::run(n, seconds).await;
    }
    if what == "streams-server" {
        return streams::serve().await;
    }
    if what == "webhooks" {
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(10);
        return webhooks::run(seconds).await;
    }
    if what == "auth" {
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
        return auth::run(seconds).await;
    }
    if what == "decisions" {
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
        return decisions::run(seconds).await;
    }
    if what == "http" {
        let seconds = args.next().map(|s| s.parse()).transpose()?.unwrap_or(5);
        return http::run(seconds).await;
    }
    if what == "audit-verify" {
        let dir = std::path::PathBuf::from(args.next().unwrap_or_else(|| ".".into()));
        return verify_kept(&dir).await;
    }
    let records: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    anyhow::ensure!(
        what == "audit",
        "usage: palisade-bench audit [RECORDS] | auth [SECONDS] | decisions [SECONDS] | http [SECONDS] | sends [SECONDS] | webhooks [SECONDS]"
    );
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    // BENCH_ONLY_POSTGRES=1 skips the SQLite run.
    if std::env::var("BENCH_ONLY_POSTGRES").is_err() {
        run("SQLite", &sqlite, None, dir.path(), records).await?;
    }
    if let Ok(base) = std::env::var("PALISADE_BENCH_POSTGRES_URL") {
        let (url, name) = fresh_postgres_db(&base).await?;
        let (http_url, http_name) = fresh_postgres_db(&base).await?;
        let result = run("PostgreSQL", &url, Some(http_url), dir.path(), records).await;
        let mut c = sqlx::AnyConnection::connect(&base).await?;
        let mut drop = vec![http_name];
        match std::env::var("BENCH_KEEP") {
            Ok(keep) if result.is_ok() => {
                let keep = std::path::Path::new(&keep);
                std::fs::create_dir_all(keep)?;
                std::fs::write(keep.join("url"), &url)?;
                std::fs::copy(dir.path().join("PostgreSQL.pem"), keep.join("key.pem"))?;
                std::fs::copy(dir.path().join("PostgreSQL.jsonl"), keep.join("checkpoints.jsonl"))?;
                println!("kept {name} ({})", keep.display());
            }
            _ => drop.push(name),
        }
        for n in drop {
            sqlx::query(&format!("DROP DATABASE IF EXISTS {n} WITH (FORCE)")).execute(&mut c).await?;
        }
        result?;
    }
    Ok(())
}

/// A new, empty database next to `base` (same server and options).
pub(crate) async fn drop_postgres_db(base: &str, name: &str) -> anyhow::Result<()> {
    let mut c = sqlx::AnyConnection::connect(base).await?;
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await?;
    Ok(())
}

pub(crate) async fn fresh_postgres_db(base: &str) -> anyhow::Result<(String, String)> {
    sqlx::any::install_default_drivers();
    let name = format!("palisade_bench_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::AnyConnection::connect(base).await?;
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await?;
    let (head, query) = base.split_once('?').map(|(h, q)| (h, Some(q))).unwrap_or((base, None));
    let scheme_end = head.find("://").map(|i| i + 3).unwrap_or(0);
    let host = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    let url = match query {
        Some(q) => format!("{host}/{name}?{q}"),
        None => format!("{host}/{name}"),
    };
    Ok((url, name))
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 * p) as usize).min(sorted.len() - 1)]
}

async fn run(
    name: &str,
    url: &str,
    http_db: Option<String>,
    dir: &std::path::Path,
    records: usize,
) -> anyhow::Result<()> {
    println!("== {name}, {records} records ==");
    let db = Db::connect(url, 16).await?;
    db.migrate().await?;
    let pem = palisade_auth::JwtKeys::generate_ed25519_pem()?;
    std::fs::write(dir.join(format!("{name}.pem")), &pem)?;
    let log = AuditLog::new(db.clone(), Signer::from_pem(&pem, "bench")?, dir.join(format!("{name}.jsonl")));
    if std::env::var("BENCH_RAW").is_ok() {
        // Raw cost of appends in one transaction, no integrator.
        let t = Instant::now();
        let mut tx = db.begin().await?;
        let ctx = Context::default();
        for i in 0..10_000 {
            let e = Event::new("bench.raw", None, Actor::system()).details(serde_json::json!({ "n": i }));
            palisade_audit::append(&mut *tx, &e, &ctx, SystemClock.now_ms()).await?;
        }
        tx.commit().await?;
        println!("raw: 10000 appends in one transaction: {:.0}/s", 10_000.0 / t.elapsed().as_secs_f64());
        let t = Instant::now();
        let mut tx = db.begin().await?;
        for i in 0..10_000 {
            sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
                .bind(format!("k{i}"))
                .bind("v")
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        println!("raw: 10000 two-column inserts in one transaction: {:.0}/s", 10_000.0 / t.elapsed().as_secs_f64());
        if url.starts_with("sqlite:") {
            // The same through the native SQLite driver, for comparison with `Any`.
            let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect(url).await?;
            let t = Instant::now();
            let mut tx = pool.begin().await?;
            for i in 0..10_000 {
                sqlx::query("INSERT INTO settings (name, value) VALUES ($1, $2)")
                    .bind(format!("n{i}"))
                    .bind("v")
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            println!("raw: the same through the native driver: {:.0}/s", 10_000.0 / t.elapsed().as_secs_f64());
            pool.close().await;
        }
    }
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    // As the server runs it (audit.checkpoint_interval_ms default).
    let integrator = log.spawn(Arc::new(SystemClock), Duration::from_millis(1000), stop_rx);

    // 1. Append throughput: WRITERS concurrent writers (env BENCH_WRITERS),
    //    each appending one event per write, as concurrent requests do.
    let writers = env_or("BENCH_WRITERS", 64);
    println!("{writers} concurrent writers, one event per write");
    let started = Instant::now();
    let per_writer = records / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, log) = (db.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = TenantId::new();
            let ctx =
                Context { source_ip: Some("127.0.0.1".into()), user_agent: Some("bench".into()), request_id: None };
            for n in 0..per_writer {
                let e = Event::new("bench.append", Some(tenant), Actor::system())
                    .resource("bench", w)
                    .details(json!({ "n": n }));
                palisade_audit::record(&db, &e, &ctx, SystemClock.now_ms()).await?;
                if n % 64 == 0 {
                    log.poke();
                }
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let appended = Instant::now();
    // Wait until the integrator has sequenced and signed everything.
    loop {
        let pending: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_pending").fetch_one(db.reader()).await?;
        if pending == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let total = started.elapsed().as_secs_f64();
    let n = (per_writer * writers) as f64;
    let checkpoints: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_checkpoints").fetch_one(db.reader()).await?;
    println!(
        "append: {:.0} events/s committed ({:.1} s), {:.0} events/s sequenced and signed ({:.1} s, {checkpoints} checkpoints)",
        n / appended.duration_since(started).as_secs_f64(),
        appended.duration_since(started).as_secs_f64(),
        n / total,
        total
    );
    let _ = stop_tx.send(true);
    integrator.await?;

    // 2. The cost of an append: the same small write with and without its
    //    audit append, alternated, medians compared; as a statement list
    //    (Db::write_all, what POST /v1/api-keys uses) and inside a sqlx
    //    transaction (the other write paths).
    let ctx = Context::default();
    db.write_all(vec![palisade_store::Stmt::new("INSERT INTO settings (name, value) VALUES ($1, $2)")
        .bind("bench")
        .bind("0")])
        .await?;
    let (mut plain, mut audited) = (Vec::new(), Vec::new());
    for i in 0..4000 {
        let t = Instant::now();
        let mut stmts = vec![palisade_store::Stmt::new("UPDATE settings SET value = $1 WHERE name = $2")
            .bind(i.to_string())
            .bind("bench")];
        if i % 2 == 1 {
            let e = Event::new("bench.write", None, Actor::system());
            stmts.push(palisade_audit::append_stmt(&e, &ctx, SystemClock.now_ms()).1);
        }
        db.write_all(stmts).await?;
        if i % 2 == 1 { &mut audited } else { &mut plain }.push(t.elapsed());
    }
    plain.sort();
    audited.sort();
    let (p, a) = (percentile(&plain, 0.5), percentile(&audited, 0.5));
    let append_cost = a.saturating_sub(p);
    println!(
        "statement-list write p50: {:.3} ms plain, {:.3} ms with audit append: the append costs {:.3} ms",
        p.as_secs_f64() * 1000.0,
        a.as_secs_f64() * 1000.0,
        append_cost.as_secs_f64() * 1000.0,
    );
    let (mut plain, mut audited) = (Vec::new(), Vec::new());
    for i in 0..4000 {
        let t = Instant::now();
        let mut tx = db.begin().await?;
        palisade_store::settings::put(&mut *tx, "bench", &i.to_string()).await?;
        if i % 2 == 1 {
            let e = Event::new("bench.write", None, Actor::system());
            palisade_audit::append(&mut *tx, &e, &ctx, SystemClock.now_ms()).await?;
        }
        tx.commit().await?;
        if i % 2 == 1 { &mut audited } else { &mut plain }.push(t.elapsed());
    }
    plain.sort();
    audited.sort();
    let (p, a) = (percentile(&plain, 0.5), percentile(&audited, 0.5));
    let tx_append_cost = a.saturating_sub(p);
    println!(
        "sqlx transaction p50: {:.3} ms plain, {:.3} ms with audit append: the append costs {:.3} ms",
        p.as_secs_f64() * 1000.0,
        a.as_secs_f64() * 1000.0,
        tx_append_cost.as_secs_f64() * 1000.0,
    );
    // A request benchmark that cannot run (a limit refused it) does not
    // stop the rest.
    let request = match write_request_p50(dir, name, http_db).await {
        Ok(r) => r,
        Err(e) => {
            println!("write request benchmark skipped: {e}");
            Duration::from_secs(1)
        }
    };
    println!(
        "write request (POST /v1/api-keys over HTTP) p50: {:.3} ms; its append is {:.1}% of it \
         (an append in a sqlx transaction would be {:.1}%)",
        request.as_secs_f64() * 1000.0,
        append_cost.as_secs_f64() / request.as_secs_f64() * 100.0,
        tx_append_cost.as_secs_f64() / request.as_secs_f64() * 100.0
    );
    log.integrate(SystemClock.now_ms()).await?;

    // 3a. Chunked read of raw fields (what verify uses), without hashing.
    {
        let started = Instant::now();
        let last = palisade_store::audit::max_leaf_index(db.reader()).await?.unwrap_or(-1);
        let (mut from, mut bytes, mut lines) = (0i64, 0usize, 0usize);
        while from <= last {
            let chunk = palisade_store::audit::leaf_fields_chunk(&db, from, from + 20_000).await?;
            bytes += chunk.len();
            lines += palisade_store::audit::split_records(&chunk).map_or(0, |r| r.len());
            from += 20_000;
        }
        let secs = started.elapsed().as_secs_f64();
        println!(
            "chunked read: {lines} leaves, {} MB in {secs:.2} s = {:.0} rows/s",
            bytes / 1_000_000,
            lines as f64 / secs
        );
        let sample = palisade_store::audit::leaf_chunk(&db, 5, 6).await?; // one record's JSON, for size
        let record = sample.splitn(4, ' ').nth(3).unwrap_or("");
        let started = Instant::now();
        let mut h = [0u8; 32];
        for _ in 0..lines {
            h = palisade_audit::merkle::leaf_hash(record.as_bytes());
        }
        println!(
            "hashing alone: {:.0} leaves/s ({} bytes each, {:02x})",
            lines as f64 / started.elapsed().as_secs_f64(),
            record.len(),
            h[0]
        );
    }

    // 3. Full verification, as `palisade audit verify` runs it
    //    (BENCH_VERIFY_REPEAT extra runs first, for profiling).
    for _ in 0..env_or("BENCH_VERIFY_REPEAT", 0) {
        palisade_audit::verify::verify_log(&db, log.signer().verifier(), &[], |_| {}).await?;
    }
    let started = Instant::now();
    let report =
        palisade_audit::verify::verify_log(&db, log.signer().verifier(), &[&dir.join(format!("{name}.jsonl"))], |_| {})
            .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.intact(), "verification failed: {:?}", report.problems);
    println!("verify: {} records in {secs:.2} s = {:.0} records/s", report.records, report.records as f64 / secs);
    db.close().await;
    Ok(())
}

/// Full verification of a database kept by BENCH_KEEP.
async fn verify_kept(dir: &std::path::Path) -> anyhow::Result<()> {
    let url = std::fs::read_to_string(dir.join("url"))?;
    let signer = Signer::from_pem(&std::fs::read_to_string(dir.join("key.pem"))?, "bench")?;
    let db = Db::connect(url.trim(), 16).await?;
    let file = dir.join("checkpoints.jsonl");
    for _ in 0..env_or("BENCH_VERIFY_RUNS", 2) {
        let started = Instant::now();
        let report = palisade_audit::verify::verify_log(&db, signer.verifier(), &[&file], |_| {}).await?;
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(report.intact(), "verification failed: {:?}", report.problems);
        println!("verify: {} records in {secs:.2} s = {:.0} records/s", report.records, report.records as f64 / secs);
    }
    db.close().await;
    Ok(())
}

/// Median latency of a real audited write request: the server on its own
/// database, one client on a kept-alive connection creating API keys.
async fn write_request_p50(dir: &std::path::Path, name: &str, db_url: Option<String>) -> anyhow::Result<Duration> {
    let mut config = palisade_config::Config::default();
    config.server.data_dir = dir.join(format!("{name}-server"));
    let master_key = palisade_auth::token::new_master_key();
    config.admin.master_key = Some(palisade_config::Secret::new(master_key.clone()));
    config.log.level = "error".into();
    // One client sends thousands of writes: not what the limits are for.
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.key_per_minute, r.tenant_per_minute) = (1 << 20, 1 << 20, 1 << 20);
    (r.burst_ip_per_second, r.burst_tenant_per_second) = (1 << 20, 1 << 20);
    if let Some(url) = db_url {
        config.database.url = Some(palisade_config::Secret::new(url));
    }
    let state = palisade::build_state(config, Arc::new(SystemClock)).await?;
    let running = palisade::start(state, "127.0.0.1:0".parse()?).await?;
    let base = format!("http://{}", running.addr);
    let client = reqwest::Client::new();
    let password = "violet tram ocean ninety";
    let email = format!("bench-{}@example.com", uuid::Uuid::new_v4().simple());
    let r = client
        .post(format!("{base}/sysadmin/v1/tenants"))
        .bearer_auth(&master_key)
        .json(&json!({"name": "Bench", "owner": {"email": email, "password": password}}))
        .send()
        .await?;
    anyhow::ensure!(r.status() == 201, "tenant: {}", r.text().await?);
    let r: Value = client
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .json()
        .await?;
    let token = r["access_token"].as_str().unwrap_or_default().to_owned();
    let mut times = Vec::new();
    for i in 0..2200 {
        let t = Instant::now();
        let r = client
            .post(format!("{base}/v1/api-keys"))
            .bearer_auth(&token)
            .json(&json!({"name": format!("k{i}"), "permissions": ["messages:read"]}))
            .send()
            .await?;
        let status = r.status();
        r.bytes().await?;
        anyhow::ensure!(status == 201, "api key: {status}");
        if i >= 200 {
            times.push(t.elapsed());
        }
    }
    times.sort();
    running.stop().await;
    Ok(percentile(&times, 0.5))
}
