//! `palisade-bench auth [SECONDS]`: what authentication costs. On one
//! server, in alternating rounds with the same concurrency: `/healthz`
//! (no credential, no database), `GET /v1/me` with an API key served from
//! the verified-credential cache, and the same with the cache off (a second
//! server on the same database with `auth.credential_cache_ttl_secs = 0`:
//! every request reads the key from the database). Target: the cached
//! `/v1/me` at least 0.5x `/healthz`. With PALISADE_BENCH_POSTGRES_URL set,
//! it runs again on PostgreSQL (a fresh database).

use std::sync::Arc;

use palisade_config::{Config, Secret};
use palisade_core::SystemClock;

use crate::http::{credentials, load_path};

pub async fn run(seconds: u64) -> anyhow::Result<()> {
    let level = std::env::var("BENCH_LOG").unwrap_or_else(|_| "info".into());
    palisade::logging::init(&level, std::io::sink);
    let dir = tempfile::tempdir()?;
    let sqlite = format!("sqlite://{}", dir.path().join("bench.db").display());
    bench("SQLite", &sqlite, dir.path(), seconds).await?;
    if let Ok(base) = std::env::var("PALISADE_BENCH_POSTGRES_URL") {
        let (url, name) = crate::fresh_postgres_db(&base).await?;
        let result = bench("PostgreSQL", &url, dir.path(), seconds).await;
        crate::drop_postgres_db(&base, &name).await?;
        result?;
    }
    Ok(())
}

async fn bench(label: &str, url: &str, dir: &std::path::Path, seconds: u64) -> anyhow::Result<()> {
    let mut config = Config::default();
    config.server.data_dir = dir.join(format!("data-{label}"));
    config.database.url = Some(Secret::new(url.to_owned()));
    let master = palisade_auth::token::new_master_key();
    config.admin.master_key = Some(Secret::new(master.clone()));
    // Limits are checked on every request but set so the load is not refused.
    let r = &mut config.rate_limits;
    (r.ip_per_minute, r.key_per_minute, r.tenant_per_minute) = (u32::MAX / 2, u32::MAX / 2, u32::MAX / 2);
    (r.burst_ip_per_second, r.burst_tenant_per_second) = (u32::MAX / 2, u32::MAX / 2);
    let cached =
        palisade::start(palisade::build_state(config.clone(), Arc::new(SystemClock)).await?, "127.0.0.1:0".parse()?)
            .await?;
    let mut uncached_config = config.clone();
    uncached_config.auth.credential_cache_ttl_secs = 0;
    uncached_config.server.data_dir = dir.join(format!("data-{label}-uncached"));
    std::fs::create_dir_all(&uncached_config.server.data_dir)?;
    for f in ["jwt-ed25519.pem", "webhook-secrets.key", "audit-ed25519.pem"] {
        let from = config.server.data_dir.join(f);
        if from.exists() {
            std::fs::copy(&from, uncached_config.server.data_dir.join(f))?;
        }
    }
    let uncached =
        palisade::start(palisade::build_state(uncached_config, Arc::new(SystemClock)).await?, "127.0.0.1:0".parse()?)
            .await?;
    let (key, _) = credentials(cached.addr, &master).await?;
    let conns = crate::env_or("BENCH_CONNECTIONS", 16);
    let rounds = crate::env_or("BENCH_ROUNDS", 3);
    println!("{label}: {conns} keep-alive connections, {rounds} alternating rounds of {seconds} s each");
    let (mut h, mut c, mut u) = (0.0, 0.0, 0.0);
    for _ in 0..rounds {
        h += load_path(cached.addr, "/healthz", None, conns, seconds).await?;
        c += load_path(cached.addr, "/v1/me", Some(&key), conns, seconds).await?;
        u += load_path(uncached.addr, "/v1/me", Some(&key), conns, seconds).await?;
    }
    let (h, c, u) = (h / rounds as f64, c / rounds as f64, u / rounds as f64);
    println!("{label:>10}: GET /healthz                    {h:>8.0} req/s");
    println!("{label:>10}: GET /v1/me, API key, cached     {c:>8.0} req/s  ({:.2}x /healthz)", c / h);
    println!("{label:>10}: GET /v1/me, API key, cache off  {u:>8.0} req/s  ({:.2}x /healthz)", u / h);
    uncached.stop().await;
    cached.stop().await;
    Ok(())
}
