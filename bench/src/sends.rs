//! `palisade-bench sends [SECONDS]`: sustained `POST /v1/messages` through
//! the whole admission path (authentication, rate limits, WAF, identity
//! policy, the atomic debit, the record, its audit event) and the sandbox
//! carrier's delivery updates, on SQLite (and on PostgreSQL when
//! PALISADE_BENCH_POSTGRES_URL is set, once with one instance and once with
//! two instances on the same database, the connections split between them).
//! Prints sends per second and the p50 / p99 latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_config::{Config, Secret};
use palisade_core::SystemClock;
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    // BENCH_SKIP_SQLITE=1: PostgreSQL alone (for profiling it).
    if std::env::var("BENCH_SKIP_SQLITE").is_err() {
        one("SQLite", None, dir.path(), seconds, 1).await?;
    }
    if let Ok(base) = std::env::var("PALISADE_BENCH_POSTGRES_URL") {
        for (label, instances) in [("PostgreSQL", 1), ("PG x2", 2)] {
            let (url, name) = crate::fresh_postgres_db(&base).await?;
            let result = one(label, Some(url), dir.path(), seconds, instances).await;
            crate::drop_postgres_db(&base, &name).await?;
            result?;
        }
    }
    Ok(())
}

async fn one(
    label: &str,
    db_url: Option<String>,
    dir: &std::path::Path,
    seconds: u64,
    instances: usize,
) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.data_dir = dir.join(format!("data-{}", label.replace(' ', "-")));
    config.database.url = db_url.map(Secret::new);
    let master = palisade_auth::token::new_master_key();
    config.admin.master_key = Some(Secret::new(master.clone()));
    config.carrier.sandbox_delay_ms = 50;
    // The limits are checked on every send but set so the load is not refused.
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.key_per_minute, r.tenant_per_minute, r.message_create_per_minute) =
        (u32::MAX / 2, u32::MAX / 2, u32::MAX / 2, u32::MAX / 2);
    (r.burst_ip_per_second, r.burst_tenant_per_second) = (u32::MAX / 2, u32::MAX / 2);
    let state = palisade::build_state(config.clone(), Arc::new(SystemClock)).await?;
    let server = palisade::start(state, "127.0.0.1:0".parse()?).await?;
    // Further instances share the database and the keys the first made.
    let mut servers = vec![];
    for i in 1..instances {
        let mut peer = config.clone();
        peer.server.data_dir = dir.join(format!("data-{}-{i}", label.replace(' ', "-")));
        std::fs::create_dir_all(&peer.server.data_dir)?;
        for shared in ["master.key", "jwt-ed25519.pem", "audit-ed25519.pem", "webhook-secrets.key"] {
            let from = config.server.data_dir.join(shared);
            if from.exists() {
                std::fs::copy(&from, peer.server.data_dir.join(shared))?;
            }
        }
        let state = palisade::build_state(peer, Arc::new(SystemClock)).await?;
        servers.push(palisade::start(state, "127.0.0.1:0".parse()?).await?);
    }
    let addrs: Vec<SocketAddr> = std::iter::once(server.addr).chain(servers.iter().map(|s| s.addr)).collect();
    // BENCH_TENANTS (default 1): connections spread over this many tenants,
    // each with its own key, identity and balance.
    let tenants = crate::env_or("BENCH_TENANTS", 1).clamp(1, 8);
    let mut requests = Vec::with_capacity(tenants);
    for n in 0..tenants {
        requests.push(sender_request(server.addr, &master, n).await?);
    }
    let conns = crate::env_or("BENCH_CONNECTIONS", 32);
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..conns)
        .map(|i| tokio::spawn(sender(addrs[i % addrs.len()], requests[i % tenants].clone(), deadline)))
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort();
    let pct = |p: f64| latencies[((latencies.len() as f64 * p) as usize).min(latencies.len() - 1)];
    println!(
        "{label:>10}: {:.0} sends/s over {seconds} s ({} sends, {conns} connections, {tenants} tenant(s), {instances} instance(s)), p50 {:.2} ms, p99 {:.2} ms",
        latencies.len() as f64 / elapsed,
        latencies.len(),
        pct(0.5).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
    );
    for s in servers {
        s.stop().await;
    }
    server.stop().await;
    Ok(())
}

/// Tenant `n` with credits, an identity and an integration key: the raw
/// `POST /v1/messages` request its connections send.
async fn sender_request(addr: SocketAddr, master: &str, n: usize) -> anyhow::Result<Arc<[u8]>> {
    let (_, token) = crate::http::credentials_for(addr, master, n).await?;
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    let key = crate::http::integration_key(addr, &token, "sender").await?;
    let tenant: serde_json::Value =
        c.get(format!("{base}/v1/me")).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
    let tenant_id = tenant["tenant"]["id"].as_str().unwrap_or_default().to_owned();
    c.post(format!("{base}/sysadmin/v1/tenants/{tenant_id}/credits"))
        .bearer_auth(master)
        .json(&json!({"amount": 1_000_000_000_000i64}))
        .send()
        .await?
        .error_for_status()?;
    let number = format!("+3461234567{n}");
    c.post(format!("{base}/v1/identities"))
        .bearer_auth(&token)
        .json(&json!({"number": number, "policy": {"allowed_countries": ["ES"]}}))
        .send()
        .await?
        .error_for_status()?;
    let body = format!(r#"{{"from":"{number}","to":"+34699000111","body":"Your code is 123456"}}"#);
    let request = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: bench\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    Ok(request.into_bytes().into())
}

async fn sender(addr: SocketAddr, request: Arc<[u8]>, deadline: Instant) -> anyhow::Result<Vec<Duration>> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut buf = vec![0u8; 16 * 1024];
    let mut out = Vec::new();
    while Instant::now() < deadline {
        let t = Instant::now();
        s.write_all(&request).await?;
        let status = crate::http::read_response(&mut s, &mut buf).await?;
        anyhow::ensure!(status == 201, "status {status}");
        out.push(t.elapsed());
    }
    Ok(out)
}
