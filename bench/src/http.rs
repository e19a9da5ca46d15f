//! `palisade-bench http [SECONDS]`: what the middleware costs. The same
//! authenticated `GET /v1/me` is served twice in one process: by the full
//! router (request id, client address, abuse controls, security and rate
//! limit headers, metrics, the JSON access log) and by the bare handler
//! with no middleware. A small keep-alive HTTP/1.1 client drives each in
//! turn with the same concurrency; the ratio of their throughputs is the
//! result (target: at least 0.7).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use palisade_config::{Config, Secret};
use palisade_core::SystemClock;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    // As `serve` logs: JSON lines through the redaction filter, here into a sink.
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    palisade::logging::init(&level, std::io::sink);
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.server.data_dir = dir.path().join("data");
    let master = palisade_auth::token::new_master_key();
    config.admin.master_key = Some(Secret::new(master.clone()));
    // Limits are checked on every request but set so the load is not refused.
    config.rate_limits.ip_per_minute = u32::MAX / 2;
    config.rate_limits.key_per_minute = u32::MAX / 2;
    config.rate_limits.tenant_per_minute = u32::MAX / 2;
    config.rate_limits.burst_ip_per_second = u32::MAX / 2;
    config.rate_limits.burst_tenant_per_second = u32::MAX / 2;
    let state = palisade::build_state(config, Arc::new(SystemClock)).await?;
    let full = palisade::start(state.clone(), "127.0.0.1:0".parse()?).await?;
    let bare_listener = TcpListener::bind("127.0.0.1:0").await?;
    let bare_addr = bare_listener.local_addr()?;
    let bare = palisade_api::routes::bare_me(state.clone()).into_make_service_with_connect_info::<SocketAddr>();
    tokio::spawn(async move { axum::serve(bare_listener, bare).await });

    let (key, token) = credentials(full.addr, &master).await?;
    let conns = crate::env_or("BENCH_CONNECTIONS", 16);
    let rounds = crate::env_or("BENCH_ROUNDS", 3);
    println!("GET /v1/me, {conns} keep-alive connections, {rounds} alternating rounds of {seconds} s each");
    for (label, cred) in [("API key", &key), ("access token", &token)] {
        let (mut b, mut f) = (0.0, 0.0);
        for _ in 0..rounds {
            // Alternating, so drift (caches, the WAL, the CPU's clock) hits both alike.
            b += load(bare_addr, cred, conns, seconds).await?;
            f += load(full.addr, cred, conns, seconds).await?;
        }
        let (b, f) = (b / rounds as f64, f / rounds as f64);
        println!("{label:>12}: bare handler {b:>8.0} req/s, full middleware {f:>8.0} req/s, ratio {:.2}", f / b);
    }
    // The middleware's own cost, without the database: a request the
    // handler refuses at once (no credential), sent in-process, one at a time.
    let n = 200_000;
    let full_router = palisade_api::router(state.clone());
    let bare_router = palisade_api::routes::bare_me(state.clone());
    let (mut b, mut f) = (Duration::ZERO, Duration::ZERO);
    for _ in 0..rounds {
        b += in_process(&bare_router, n).await?;
        f += in_process(&full_router, n).await?;
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / (n * rounds) as f64;
    println!(
        "refused at once (401, in-process): bare {:.2} µs, full middleware {:.2} µs per request: the middleware adds {:.2} µs",
        per(b),
        per(f),
        per(f) - per(b)
    );
    full.stop().await;
    Ok(())
}

/// Time for `n` sequential in-process `GET /v1/me` requests without a credential.
async fn in_process(router: &axum::Router, n: usize) -> anyhow::Result<Duration> {
    use tower::ServiceExt;
    let started = Instant::now();
    for _ in 0..n {
        let req = http::Request::get("/v1/me").body(axum::body::Body::empty())?;
        let resp = router.clone().oneshot(req).await?;
        anyhow::ensure!(resp.status() == 401, "status {}", resp.status());
    }
    Ok(started.elapsed())
}

/// A tenant, an API key and an access token, made through the API.
pub(crate) async fn credentials(addr: SocketAddr, master: &str) -> anyhow::Result<(String, String)> {
    credentials_for(addr, master, 0).await
}

/// Tenant number `n`'s read-only key and owner token.
pub(crate) async fn credentials_for(addr: SocketAddr, master: &str, n: usize) -> anyhow::Result<(String, String)> {
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    let email = if n == 0 { "owner@bench.example.com".to_owned() } else { format!("owner{n}@bench.example.com") };
    let password = "violet tram ocean ninety";
    c.post(format!("{base}/sysadmin/v1/tenants"))
        .bearer_auth(master)
        .json(&json!({"name": format!("Bench {n}"), "owner": {"email": email, "password": password}}))
        .send()
        .await?
        .error_for_status()?;
    let login: serde_json::Value = c
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"email": email, "password": password}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["access_token"].as_str().unwrap_or_default().to_owned();
    let key: serde_json::Value = c
        .post(format!("{base}/v1/api-keys"))
        .bearer_auth(&token)
        .json(&json!({"name": "bench", "role": "read_only"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok((key["key"].as_str().unwrap_or_default().to_owned(), token))
}

/// A new `integration` key named `name`, made with `token`.
pub(crate) async fn integration_key(addr: SocketAddr, token: &str, name: &str) -> anyhow::Result<String> {
    let key: serde_json::Value = reqwest::Client::new()
        .post(format!("http://{addr}/v1/api-keys"))
        .bearer_auth(token)
        .json(&json!({"name": name, "role": "integration"}))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(key["key"].as_str().unwrap_or_default().to_owned())
}

/// Requests per second over `seconds`, from `conns` connections each
/// sending one request at a time.
async fn load(addr: SocketAddr, cred: &str, conns: usize, seconds: u64) -> anyhow::Result<f64> {
    load_path(addr, "/v1/me", Some(cred), conns, seconds).await
}

/// [`load`] of any path, with or without a credential.
pub(crate) async fn load_path(
    addr: SocketAddr,
    path: &str,
    cred: Option<&str>,
    conns: usize,
    seconds: u64,
) -> anyhow::Result<f64> {
    let auth = cred.map(|c| format!("Authorization: Bearer {c}\r\n")).unwrap_or_default();
    let request = format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes();
    let request: Arc<[u8]> = request.into();
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (request, done) = (request.clone(), done.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            let mut buf = vec![0u8; 16 * 1024];
            while Instant::now() < deadline {
                s.write_all(&request).await?;
                let status = read_response(&mut s, &mut buf).await?;
                anyhow::ensure!(status == 200, "status {status}");
                done.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    let started = Instant::now();
    for t in tasks {
        t.await??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

/// Reads one response with a Content-Length body; returns its status.
pub(crate) async fn read_response(s: &mut TcpStream, buf: &mut [u8]) -> anyhow::Result<u16> {
    let mut have = 0;
    loop {
        let n = s.read(&mut buf[have..]).await?;
        anyhow::ensure!(n > 0, "connection closed");
        have += n;
        let Some(head_end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
            anyhow::ensure!(have < buf.len(), "response head too large");
            continue;
        };
        let head = std::str::from_utf8(&buf[..head_end])?;
        let status: u16 = head.get(9..12).unwrap_or("0").parse()?;
        let len: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-length")))
            .map(|(_, v)| v.trim().parse())
            .transpose()?
            .unwrap_or(0);
        let total = head_end + 4 + len;
        anyhow::ensure!(total <= buf.len(), "response too large");
        while have < total {
            let n = s.read(&mut buf[have..total]).await?;
            anyhow::ensure!(n > 0, "connection closed");
            have += n;
        }
        return Ok(status);
    }
}
