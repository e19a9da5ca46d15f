//! `palisade-bench streams [STREAMS] [SECONDS]`: concurrent call-audio
//! streams (`GET /v1/calls/{id}/stream`), each carrying 50 frames a second
//! both ways, against a server in its own process (this binary, as
//! `streams-server`), so that its memory is its own. The sandbox's far end
//! sends a frame every 20 ms and plays back what the client sends.
//!
//! Measured per run (STREAMS, default 500; BENCH_STREAMS="250,500,1000" runs
//! several):
//! - frame lateness: for each stream, how much later than its schedule each
//!   far-end frame arrives (arrival minus the frame's `timestamp`, less the
//!   stream's smallest such difference: the delay the server adds beyond
//!   its best case), p50 / p99 / max over every frame after a warm-up;
//! - echo time: from sending a frame to receiving it played back (includes
//!   up to a frame of playback pacing);
//! - the server's resident memory per open stream (its RSS with the calls
//!   placed, before and after the streams open).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures_util::{SinkExt, StreamExt};
use palisade_config::{Config, Secret};
use palisade_core::SystemClock;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const MASTER_ENV: &str = "PALISADE_BENCH_MASTER_KEY";

/// The server side: started by [`run`] as a child process; prints its
/// address and serves until its stdin closes.
pub async fn serve() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut config = Config::default();
    config.server.data_dir = dir.path().join("data");
    config.admin.master_key = Some(Secret::new(std::env::var(MASTER_ENV)?));
    config.carrier.sandbox_delay_ms = 10;
    config.carrier.sandbox_call_secs = 3600;
    // Every limit is in force but set above the load.
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.key_per_minute, r.tenant_per_minute, r.call_create_per_minute) =
        (u32::MAX / 2, u32::MAX / 2, u32::MAX / 2, u32::MAX / 2);
    (r.burst_ip_per_second, r.burst_tenant_per_second) = (u32::MAX / 2, u32::MAX / 2);
    r.concurrent_calls_per_tenant = 100_000;
    config.server.max_connections_per_address = 100_000;
    config.server.max_connections = 100_000;
    let s = &mut config.streams;
    (s.max_total, s.max_per_tenant, s.max_per_credential) = (100_000, 100_000, 100_000);
    let state = palisade::build_state(config, Arc::new(SystemClock)).await?;
    let server = palisade::start(state, "127.0.0.1:0".parse()?).await?;
    println!("{}", server.addr);
    // Until the parent goes.
    tokio::task::spawn_blocking(|| {
        let mut line = String::new();
        let _ = std::io::stdin().read_line(&mut line);
    })
    .await?;
    server.stop().await;
    Ok(())
}

pub async fn run(streams: usize, seconds: u64) -> anyhow::Result<()> {
    let counts: Vec<usize> = std::env::var("BENCH_STREAMS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![streams]);
    for n in counts {
        one(n, seconds).await?;
    }
    Ok(())
}

async fn one(n: usize, seconds: u64) -> anyhow::Result<()> {
    let master = palisade_auth::token::new_master_key();
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("streams-server")
        .env(MASTER_ENV, &master)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let pid = child.id();
    let out = child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?;
    let line = tokio::task::spawn_blocking(move || {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut std::io::BufReader::new(out), &mut line).map(|_| line)
    })
    .await??;
    let addr: SocketAddr = line.trim().parse()?;
    let (key, calls) = setup(addr, &master, n).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let warmup = Duration::from_secs(2);
    let start = Instant::now() + Duration::from_secs(1);
    let measure_from = start + warmup;
    let until = measure_from + Duration::from_secs(seconds);
    let mut tasks = Vec::with_capacity(n);
    for id in calls {
        tasks.push(tokio::spawn(stream(addr, key.clone(), id, measure_from, until)));
    }
    // All open and flowing: the server's memory with them.
    tokio::time::sleep_until((measure_from + Duration::from_secs(seconds / 2)).into()).await;
    let during = rss_kib(pid);
    let (mut lateness, mut echoes, mut failed) = (Vec::new(), Vec::new(), 0usize);
    for t in tasks {
        match t.await? {
            Ok((l, e)) => {
                lateness.extend(l);
                echoes.extend(e);
            }
            Err(e) => {
                failed += 1;
                if failed == 1 {
                    eprintln!("a stream failed: {e}");
                }
            }
        }
    }
    drop(child.stdin.take());
    tokio::task::spawn_blocking(move || child.wait()).await??;
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(f64::total_cmp);
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    let frames = lateness.len();
    println!(
        "{n} streams x 50 frames/s each way over {seconds} s ({frames} frames received, {} echoed, {failed} streams failed):\n  \
         frame lateness p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; echo p50 {:.2} ms, p99 {:.2} ms\n  \
         server RSS {:.1} MiB with the calls, {:.1} MiB with the streams: {:.1} KiB per stream",
        echoes.len(),
        pct(&mut lateness, 0.5),
        pct(&mut lateness, 0.99),
        pct(&mut lateness, 1.0),
        pct(&mut echoes, 0.5),
        pct(&mut echoes, 0.99),
        before as f64 / 1024.0,
        during as f64 / 1024.0,
        (during.saturating_sub(before)) as f64 / n as f64,
    );
    Ok(())
}

/// A tenant with credit, an identity, a key that may stream, and `n` live
/// calls: (key, call ids).
async fn setup(addr: SocketAddr, master: &str, n: usize) -> anyhow::Result<(String, Vec<String>)> {
    let c = reqwest::Client::new();
    let base = format!("http://{addr}");
    let (_, token) = crate::http::credentials_for(addr, master, 0).await?;
    let me: Value = c.get(format!("{base}/v1/me")).bearer_auth(&token).send().await?.error_for_status()?.json().await?;
    let tenant = me["tenant"]["id"].as_str().or(me["tenant_id"].as_str()).unwrap_or_default().to_owned();
    c.post(format!("{base}/sysadmin/v1/tenants/{tenant}/credits"))
        .bearer_auth(master)
        .json(&json!({"amount": 1_000_000_000}))
        .send()
        .await?
        .error_for_status()?;
    let from = "+34612345678";
    c.post(format!("{base}/v1/identities"))
        .bearer_auth(&token)
        .json(&json!({"number": from}))
        .send()
        .await?
        .error_for_status()?;
    let key = crate::http::integration_key(addr, &token, "agents").await?;
    let mut calls = Vec::with_capacity(n);
    for _ in 0..n {
        let call: Value = c
            .post(format!("{base}/v1/calls"))
            .bearer_auth(&key)
            .json(&json!({"from": from, "to": "+34699000111"}))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        calls.push(call["id"].as_str().unwrap_or_default().to_owned());
    }
    Ok((key, calls))
}

/// One agent: sends a numbered frame every 20 ms and reads everything;
/// returns the lateness of each far-end frame (ms, after `measure_from`)
/// and the echo time of each of its own frames that came back.
async fn stream(
    addr: SocketAddr,
    key: String,
    call: String,
    measure_from: Instant,
    until: Instant,
) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let mut req = format!("ws://{addr}/v1/calls/{call}/stream").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {key}").parse()?);
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
    let (mut tx, mut rx) = ws.split();
    let opened = Instant::now();
    // Frames sent, by number: when.
    let sent: Arc<std::sync::Mutex<Vec<Instant>>> = Arc::default();
    let sender = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let mut n: u32 = 0;
            while Instant::now() < until {
                tick.tick().await;
                let mut frame = [0x55u8; 160];
                frame[..4].copy_from_slice(&n.to_be_bytes());
                let payload = base64::engine::general_purpose::STANDARD.encode(frame);
                sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.push(Instant::now());
                let m = json!({"event": "media", "media": {"payload": payload}}).to_string();
                tx.send(Message::Text(m.into())).await?;
                n += 1;
            }
            anyhow::Ok(())
        })
    };
    // (arrival minus the frame's timestamp, in ms), measured frames only.
    let mut offsets = Vec::new();
    let mut echoes = Vec::new();
    // Until the end of the run; how the connection then ends is no measure.
    while let Ok(Some(msg)) = tokio::time::timeout_at(until.into(), rx.next()).await {
        let Message::Text(text) = msg? else { continue };
        let now = Instant::now();
        let m: Value = serde_json::from_str(&text)?;
        if m["event"] != "media" {
            continue;
        }
        let ts: f64 = m["media"]["timestamp"].as_str().and_then(|t| t.parse().ok()).unwrap_or(0.0);
        let payload = base64::engine::general_purpose::STANDARD.decode(m["media"]["payload"].as_str().unwrap_or(""))?;
        if now >= measure_from && now < until {
            offsets.push(now.duration_since(opened).as_secs_f64() * 1e3 - ts);
            if payload.len() == 160 && payload[4..] == [0x55; 156] {
                let n = u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]]) as usize;
                let at = sent.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.get(n).copied();
                if let Some(at) = at {
                    echoes.push(now.duration_since(at).as_secs_f64() * 1e3);
                }
            }
        }
        if now >= until {
            break;
        }
    }
    sender.abort();
    let best = offsets.iter().copied().fold(f64::INFINITY, f64::min);
    Ok((offsets.into_iter().map(|o| o - best).collect(), echoes))
}

/// A process's resident memory, KiB (Linux).
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}
