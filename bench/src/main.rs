//! Load benchmarks. `cargo run --release -p palisade-bench -- audit [RECORDS]`
//! measures the audit log on SQLite (and on PostgreSQL when
//! PALISADE_BENCH_POSTGRES_URL is set):
//! - append throughput, with the integrator sequencing and signing a
//!   checkpoint per batch as it does in the server;
//! - the cost an audit append adds to a write transaction;
//! - `audit verify` speed over the whole log.

use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_audit::checkpoint::Signer;
use palisade_audit::log::AuditLog;
use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::{Clock, SystemClock, TenantId};
use palisade_store::Db;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let what = args.next().unwrap_or_else(|| "audit".into());
    let records: usize = args.next().map(|s| s.parse()).transpose()?.unwrap_or(1_000_000);
    anyhow::ensure!(what == "audit", "usage: palisade-bench audit [RECORDS]");
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    run("SQLite", &sqlite, dir.path(), records).await?;
    if let Ok(pg) = std::env::var("PALISADE_BENCH_POSTGRES_URL") {
        run("PostgreSQL", &pg, dir.path(), records).await?;
    }
    Ok(())
}

async fn run(name: &str, url: &str, dir: &std::path::Path, records: usize) -> anyhow::Result<()> {
    println!("== {name}, {records} records ==");
    let db = Db::connect(url, 16).await?;
    db.migrate().await?;
    let pem = palisade_auth::JwtKeys::generate_ed25519_pem()?;
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
    let integrator = log.spawn(Arc::new(SystemClock), stop_rx);

    // 1. Append throughput: WRITERS concurrent writers, each transaction
    //    appending PER_TX events, integrator running alongside.
    let started = Instant::now();
    // Concurrent writers and events per transaction (env BENCH_WRITERS, BENCH_PER_TX).
    let (writers, per_tx) = (env_or("BENCH_WRITERS", 8), env_or("BENCH_PER_TX", 50));
    println!("{writers} writers, {per_tx} events per transaction");
    let per_writer = records / writers;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let (db, log) = (db.clone(), log.clone());
        tasks.push(tokio::spawn(async move {
            let tenant = TenantId::new();
            let ctx =
                Context { source_ip: Some("127.0.0.1".into()), user_agent: Some("bench".into()), request_id: None };
            let mut done = 0;
            while done < per_writer {
                let mut tx = db.begin().await?;
                for _ in 0..per_tx.min(per_writer - done) {
                    let e = Event::new("bench.append", Some(tenant), Actor::system())
                        .resource("bench", w)
                        .details(serde_json::json!({ "n": done }));
                    palisade_audit::append(&mut *tx, &e, &ctx, SystemClock.now_ms()).await?;
                    done += 1;
                }
                tx.commit().await?;
                log.poke();
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

    // 2. Overhead on a write transaction: the same small write with and
    //    without its audit append, alternated, medians compared.
    let (mut plain, mut audited) = (Vec::new(), Vec::new());
    let ctx = Context::default();
    for i in 0..2000 {
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
    let (p, a) = (plain[plain.len() / 2], audited[audited.len() / 2]);
    println!(
        "write transaction p50: {:.3} ms plain, {:.3} ms with audit append ({:+.1}%)",
        p.as_secs_f64() * 1000.0,
        a.as_secs_f64() * 1000.0,
        (a.as_secs_f64() / p.as_secs_f64() - 1.0) * 100.0
    );
    log.integrate(SystemClock.now_ms()).await?;

    // 3a. Raw read speed of the leaf stream, for reference.
    {
        use futures_util::TryStreamExt;
        let started = Instant::now();
        let mut rows = palisade_store::audit::stream_leaves(db.reader());
        let mut n = 0u64;
        while rows.try_next().await?.is_some() {
            n += 1;
        }
        let secs = started.elapsed().as_secs_f64();
        println!("read only: {n} leaves in {secs:.2} s = {:.0} rows/s", n as f64 / secs);
    }

    // 3b. Chunked read of raw fields (what verify uses), without hashing.
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

    // 3. Full verification, as `palisade audit verify` runs it.
    let started = Instant::now();
    let report = palisade_audit::verify::verify_log(
        &db,
        log.signer().verifier(),
        Some(&dir.join(format!("{name}.jsonl"))),
        |_| {},
    )
    .await?;
    let secs = started.elapsed().as_secs_f64();
    anyhow::ensure!(report.intact(), "verification failed: {:?}", report.problems);
    println!("verify: {} records in {secs:.2} s = {:.0} records/s", report.records, report.records as f64 / secs);
    db.close().await;
    Ok(())
}
