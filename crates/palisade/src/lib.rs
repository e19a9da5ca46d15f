//! Wiring: builds the services from configuration and runs the server.
//! The binary (`main.rs`) and the integration tests both start here.

pub mod cli;
pub mod logging;
mod oidc_http;
pub mod serve;
pub mod tls;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use palisade_api::{AppState, MasterKey, Services};
use palisade_auth::token::{new_master_key, sha256, sha256_hex};
use palisade_auth::JwtKeys;
use palisade_config::{Config, Mode};
use palisade_core::Clock;
use palisade_mail::Mailer;
use palisade_store::{create_private_dir, Db};
use tokio::net::TcpListener;

use palisade_store::settings::MASTER_KEY_SHA256 as MASTER_KEY_SETTING;

/// Opens the database (creating the data dir 0700) and applies migrations.
pub async fn open_db(config: &Config) -> anyhow::Result<Db> {
    create_private_dir(&config.server.data_dir)?;
    let db = Db::connect(&config.database_url(), config.database.max_connections).await?;
    db.migrate().await?;
    let filled = palisade_api::ops::backfill_email_skeletons(&db).await?;
    if filled > 0 {
        tracing::info!(filled, "computed the look-alike key of stored email addresses");
    }
    Ok(db)
}

/// Builds every service the API needs.
pub async fn build_state(config: Config, clock: Arc<dyn Clock>) -> anyhow::Result<AppState> {
    let db = open_db(&config).await?;
    let master_key = master_key(&config, &db).await?;
    let jwt = jwt_keys(&config)?;
    let audit_log = audit_log(&config, &db)?;
    let metrics = Arc::new(palisade_api::metrics::Metrics::new());
    let abuse_state = abuse_state(&config, &metrics).await?;
    let abuse = palisade_api::abuse::Abuse::new(&config, abuse_state, metrics.clone());
    let credentials =
        palisade_api::credentials::Credentials::start(&config, &db, &metrics, shared_invalidations(&config)?);
    let argon2 = palisade_api::ops::Argon2Slots::new(config.auth.argon2_max_concurrent, config.auth.argon2_wait_ms);
    let body_reads = palisade_api::body::UnauthenticatedReads::new(
        config.limits.unauthenticated_body_reads,
        config.limits.unauthenticated_body_secs,
    );
    let sandbox = Arc::new(
        palisade_comms::SandboxCarrier::new(
            Duration::from_millis(config.carrier.sandbox_delay_ms),
            Duration::from_secs(config.carrier.sandbox_call_secs),
            // Beside the dev outbox's mail: a sandbox number is nobody's phone.
            Some(config.server.data_dir.join("outbox")),
        )
        .with_media(config.carrier.sandbox_media_ip, metrics.clone()),
    );
    let webhook_wake = Arc::new(tokio::sync::Notify::new());
    let reports = palisade_api::reports::Reports::start(db.clone(), webhook_wake.clone());
    let data_key = webhook_key(&config)?;
    let sealer = Arc::new(palisade_seal::Sealer::new(&data_key));
    let keys = Arc::new(palisade_keys::Keyring::new(
        Arc::new(kek_for(&config, &db).await?),
        db.clone(),
        Duration::from_secs(config.keys.cache_secs),
    ));
    let mailer = match &config.mail.smtp_url {
        Some(url) => {
            let m = &config.mail;
            let settings = palisade_mail::relay::Settings {
                url: url.expose().to_owned(),
                from: m.from.clone(),
                schedule_secs: m.retry_schedule_secs.clone(),
                poll: Duration::from_millis(m.poll_ms),
                send_timeout: Duration::from_secs(m.send_timeout_secs),
                ca_pem: match &m.smtp_ca_file {
                    Some(path) => Some(std::fs::read(path).map_err(|e| {
                        anyhow::anyhow!("mail.smtp_ca_file {}: {e} (a PEM file of CA certificates)", path.display())
                    })?),
                    None => None,
                },
            };
            let relay =
                palisade_mail::relay::Relay::new(settings, db.clone(), sealer.clone(), clock.clone(), metrics.clone())?;
            Mailer::Smtp(Arc::new(relay))
        }
        // Production refuses to start without SMTP, so this is dev only.
        None => Mailer::outbox(config.server.data_dir.join("outbox"), &config.mail.from)?,
    };
    // Calls go out through the operator's SIP trunk once the edge runs and
    // one is enabled; through the sandbox until then.
    let mut trunk_carrier = palisade_sip::trunk::TrunkCarrier::new(
        sandbox,
        Arc::default(),
        sealer.clone(),
        palisade_sip::trunk::Durations {
            ring: Duration::from_secs(config.sip.trunk_ring_timeout_secs),
            call: Duration::from_secs(config.sip.max_call_secs),
        },
    );
    if let Some(signer) = stir_signer(&config)? {
        trunk_carrier = trunk_carrier.with_signer(signer, clock.clone());
    }
    let trunk_carrier = Arc::new(trunk_carrier);
    let carrier: Arc<dyn palisade_comms::Carrier> = trunk_carrier.clone();
    let number_codes = palisade_auth::code::CodeKey::derive(&data_key, "number verification");
    let email_codes = palisade_auth::code::CodeKey::derive(&data_key, "email sign-in");
    let recovery_codes = palisade_auth::code::CodeKey::derive(&data_key, "mfa recovery codes");
    let oidc = oidc_http::providers(&config)?;
    let webauthn = webauthn(&config)?;
    let sip_auth = Arc::new(sip_auth(&config, &db, &sealer, &keys, &data_key, abuse.state.clone())?);
    let webhook_client = Arc::new(webhook_client(&config)?);
    let worker = Arc::new(palisade_webhooks::worker::Worker {
        db: db.clone(),
        clock: clock.clone(),
        client: webhook_client.clone(),
        sealer: sealer.clone(),
        keys: keys.clone(),
        schedule: palisade_webhooks::worker::Schedule {
            delays_secs: config.webhooks.retry_schedule_secs.clone(),
            disable_after_ms: i64::try_from(config.webhooks.disable_after_secs).unwrap_or(i64::MAX / 1000) * 1000,
            // Past the attempt's own timeout, so a live attempt keeps its lease.
            lease_ms: i64::try_from(config.webhooks.attempt_timeout_secs).unwrap_or(15) * 1000 + 30_000,
            concurrency: config.webhooks.concurrency,
            poll: Duration::from_millis(config.webhooks.poll_ms),
        },
        wake: webhook_wake.clone(),
    });
    let webhook_worker = palisade_api::state::AbortOnDrop(worker.start());
    let admission = Arc::new(palisade_admission::Service {
        db: db.clone(),
        clock: clock.clone(),
        limits: abuse.state.clone(),
        pricing: config.pricing.clone(),
        verified_numbers: palisade_admission::NumberRule {
            required: config.numbers.require_verified,
            carrier: Some(carrier.clone()),
        },
        instance_id: uuid::Uuid::now_v7().to_string(),
        webhook_wake: webhook_wake.clone(),
        minute: Duration::from_secs(60),
        watchers: Default::default(),
        keys: keys.clone(),
        recordings: recording_storage(&config)?,
        recording_quota: config.recordings.max_bytes_per_tenant,
    });
    Ok(AppState(Arc::new(Services {
        db,
        config,
        jwt,
        master_key,
        mailer,
        clock,
        audit_log,
        abuse,
        credentials,
        metrics,
        argon2,
        body_reads,
        carrier,
        sip_carrier: trunk_carrier,
        reports,
        deliveries: tokio_util::task::TaskTracker::new(),
        webhook_client,
        sealer,
        keys,
        sip_auth,
        number_codes,
        email_codes,
        recovery_codes,
        oidc,
        webauthn,
        webhook_wake,
        webhook_worker,
        admission,
        streams: Default::default(),
    })))
}

/// SIP digest authentication: nonces keyed from the data key (every
/// instance holds it, so any instance checks another's nonce), the abuse
/// state shared like the rest.
fn sip_auth(
    config: &Config,
    db: &Db,
    sealer: &Arc<palisade_seal::Sealer>,
    keys: &Arc<palisade_keys::Keyring>,
    data_key: &[u8; 32],
    state: Arc<dyn palisade_guard::state::AbuseState>,
) -> anyhow::Result<palisade_voice::auth::DigestAuth> {
    let s = &config.sip;
    let algorithms = s
        .digest_algorithms
        .iter()
        .map(|a| palisade_digest::Algorithm::parse(a).context("sip.digest_algorithms"))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    let b = &s.bruteforce;
    Ok(palisade_voice::auth::DigestAuth {
        db: db.clone(),
        sealer: sealer.clone(),
        keys: keys.clone(),
        nonces: palisade_digest::NonceKey::derive(data_key),
        algorithms,
        nonce_ttl_ms: s.nonce_ttl_secs.saturating_mul(1000),
        domain: s.domain.clone(),
        state,
        rules: palisade_voice::auth::Rules {
            threshold: b.threshold,
            block_ms: ms(b.block_secs),
            escalation_factor: b.escalation_factor,
            max_block_ms: ms(b.max_block_secs),
            per_username_threshold: b.per_username_threshold,
            per_username_window_ms: ms(b.per_username_window_secs),
        },
        stats: Default::default(),
    })
}

/// The abuse state: in this process, or with `redis.url` shared through
/// Redis under the configured failure policy.
async fn abuse_state(
    config: &Config,
    metrics: &Arc<palisade_api::metrics::Metrics>,
) -> anyhow::Result<Arc<dyn palisade_guard::state::AbuseState>> {
    let r = &config.redis;
    if r.url.is_none() {
        return Ok(Arc::new(palisade_guard::state::LocalState::new()));
    }
    let conn = palisade_cluster::redis::connect(r)?;
    if palisade_cluster::redis::ping(&conn, Duration::from_millis(r.connect_timeout_ms)).await {
        tracing::info!(prefix = %r.key_prefix, "abuse state shared through Redis");
    } else {
        // Started anyway, degraded: the failure policy applies until it answers.
        tracing::error!(prefix = %r.key_prefix, "Redis does not answer; starting with the failure policy in force");
    }
    let shared = palisade_cluster::RedisState::new(conn, &r.key_prefix, Duration::from_millis(r.timeout_ms));
    let observer = Arc::new(RedisMetrics(metrics.clone()));
    Ok(Arc::new(palisade_cluster::Failover::new(shared, r.on_failure, Duration::from_millis(r.retry_ms), observer)))
}

/// With `auth.credential_bus = "redis"`, credential changes travel between
/// instances over Redis pub/sub (the channel `<key_prefix>:credentials`);
/// otherwise over PostgreSQL `LISTEN`/`NOTIFY` (or not at all, on SQLite).
fn shared_invalidations(config: &Config) -> anyhow::Result<Option<Arc<dyn palisade_api::credentials::Invalidations>>> {
    if config.auth.credential_bus != palisade_config::CredentialBus::Redis || !config.auth.credential_cache_listen {
        return Ok(None);
    }
    let bus = palisade_cluster::broadcast::Broadcast::new(&config.redis, "credentials")?;
    Ok(Some(Arc::new(RedisInvalidations(Arc::new(bus)))))
}

struct RedisInvalidations(Arc<palisade_cluster::broadcast::Broadcast>);

impl palisade_api::credentials::Invalidations for RedisInvalidations {
    fn publish(&self, tenant: &str) {
        self.0.publish(tenant);
    }

    fn subscribe(
        self: Arc<Self>,
        cache: Arc<palisade_api::credentials::CredentialCache>,
    ) -> Option<tokio::task::JoinHandle<()>> {
        // Off until subscribed: changes made meanwhile would be missed.
        cache.set_live(false);
        Some(self.0.clone().listen(Arc::new(CacheListener(cache))))
    }
}

struct CacheListener(Arc<palisade_api::credentials::CredentialCache>);

impl palisade_cluster::broadcast::Listener for CacheListener {
    fn live(&self, live: bool) {
        self.0.set_live(live);
    }
    fn message(&self, tenant: &str) {
        self.0.invalidate_named(tenant);
    }
}

/// Redis failures, counted in the metrics.
struct RedisMetrics(Arc<palisade_api::metrics::Metrics>);

impl palisade_cluster::Observer for RedisMetrics {
    fn failure(&self) {
        self.0.redis_failure();
    }
    fn degraded(&self, degraded: bool) {
        self.0.redis_degraded(degraded);
    }
}

/// Passkeys' relying party: `auth.webauthn`, or named after
/// `server.public_url`. `None` (passkeys answer 409) when the URL's host is
/// an address: a passkey is bound to a domain name.
fn webauthn(config: &Config) -> anyhow::Result<Option<Arc<webauthn_rs::Webauthn>>> {
    let w = &config.auth.webauthn;
    let origin_text = w.origin.as_deref().unwrap_or(&config.server.public_url);
    let origin =
        url::Url::parse(origin_text).with_context(|| format!("auth.webauthn.origin: {origin_text} is not a URL"))?;
    let rp_id = match (&w.rp_id, origin.host()) {
        (Some(id), _) => id.clone(),
        (None, Some(url::Host::Domain(d))) => d.to_owned(),
        (None, _) => {
            tracing::info!("passkeys are off: server.public_url names no domain (set auth.webauthn.rp_id and origin)");
            return Ok(None);
        }
    };
    let built = webauthn_rs::WebauthnBuilder::new(&rp_id, &origin)
        .and_then(|b| b.rp_name(&w.rp_name).build())
        .map_err(|e| anyhow::anyhow!("auth.webauthn: rp_id {rp_id} does not fit origin {origin} ({e})"))?;
    Ok(Some(Arc::new(built)))
}

/// The key that seals webhook secrets: configured, or in dev mode generated
/// on first start into `data/webhook-secrets.key` (0600).
pub(crate) fn webhook_key(config: &Config) -> anyhow::Result<[u8; 32]> {
    use base64::Engine;
    if let Some(k) = &config.webhooks.encryption_key {
        return palisade_config::decode_key32(k.expose()).context("webhooks.encryption_key: 32 bytes in base64");
    }
    anyhow::ensure!(config.mode == Mode::Dev, "no webhooks.encryption_key configured");
    let path = config.server.data_dir.join("webhook-secrets.key");
    if !path.exists() {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let text = base64::engine::general_purpose::STANDARD.encode(key);
        write_private(&path, format!("{text}\n").as_bytes())?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    palisade_config::decode_key32(&text)
        .with_context(|| format!("{} does not hold a 32-byte base64 key", path.display()))
}

/// Where dev mode keeps its KEK when `keys.kek` is unset.
pub(crate) fn dev_kek_path(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join("kek")
}

/// The key-encryption key: `keys.kek` (or its file), or in dev mode the one
/// kept in the data dir, made on first start (never over keys that exist:
/// a lost KEK file is to be restored, not replaced).
pub(crate) async fn kek_for(config: &Config, db: &Db) -> anyhow::Result<palisade_keys::LocalKek> {
    if config.keys.kek.is_none() && !dev_kek_path(config).exists() {
        let proof = palisade_core::principal::SysadminProof::verified();
        let wrapped = palisade_store::tenant_keys::kek_versions(db.reader(), &proof).await?;
        anyhow::ensure!(
            wrapped.is_empty(),
            "{} is missing but tenants' keys exist, wrapped by it: restore the file from where it was kept",
            dev_kek_path(config).display()
        );
    }
    kek(config)
}

/// [`kek_for`] without the check (the CLI, with the database not open yet).
pub(crate) fn kek(config: &Config) -> anyhow::Result<palisade_keys::LocalKek> {
    if let Some(k) = &config.keys.kek {
        return palisade_keys::LocalKek::parse(k.expose()).map_err(|e| anyhow::anyhow!("keys.kek: {e}"));
    }
    anyhow::ensure!(config.mode == Mode::Dev, "no keys.kek configured");
    let path = dev_kek_path(config);
    if !path.exists() {
        let line = palisade_keys::LocalKek::new_line(1);
        write_private(
            &path,
            format!(
                "# Palisade's key-encryption key (dev mode): keep it with backups apart from the database.\n{line}\n"
            )
            .as_bytes(),
        )?;
    }
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))?;
    palisade_keys::LocalKek::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))
}

/// Our STIR/SHAKEN signer, when `sip.stir` has a key.
fn stir_signer(config: &Config) -> anyhow::Result<Option<Arc<palisade_stir::Signer>>> {
    let stir = &config.sip.stir;
    let (Some(key), Some(url)) = (&stir.signing_key, &stir.certificate_url) else { return Ok(None) };
    if config.mode == Mode::Production && !url.starts_with("https://") {
        anyhow::bail!("sip.stir.certificate_url must be an https URL in production");
    }
    let signer = palisade_stir::Signer::new(key.expose().as_bytes(), url)
        .map_err(|e| anyhow::anyhow!("sip.stir.signing_key: {e}"))?;
    Ok(Some(Arc::new(signer)))
}

/// Certificates behind `info` come through the outbound guard.
struct CertFetch(palisade_webhooks::client::WebhookClient);

impl palisade_stir::Fetch for CertFetch {
    fn fetch<'a>(&'a self, url: &'a str) -> palisade_stir::verifier::BoxFut<'a, Option<Vec<u8>>> {
        Box::pin(self.0.get(url))
    }
}

/// The verifier of calls coming in: the configured STI-CA anchors (none:
/// no PASSporT can pass), certificates fetched through the SSRF guard
/// (https only in production), replays remembered in the shared state.
fn stir_verifier(state: &AppState) -> anyhow::Result<Arc<palisade_stir::Verifier>> {
    let config = &state.config;
    let stir = &config.sip.stir;
    let anchors = match &stir.trust_anchors_file {
        Some(path) => {
            let pem = std::fs::read(path)
                .with_context(|| format!("sip.stir.trust_anchors_file: cannot read {}", path.display()))?;
            palisade_stir::certs::Anchors::from_pem(&pem).map_err(|e| {
                anyhow::anyhow!(
                    "sip.stir.trust_anchors_file: {} {e} (give the STI-CA root certificates, PEM)",
                    path.display()
                )
            })?
        }
        None => palisade_stir::certs::Anchors::default(),
    };
    let production = config.mode == Mode::Production;
    let timeout = Duration::from_millis(stir.cert_fetch_timeout_ms);
    let settings = palisade_webhooks::client::ClientSettings {
        policy: palisade_guard::ssrf::SsrfPolicy {
            allowed_private: stir.allowed_private_cidrs.clone(),
            require_https: production,
        },
        connect_timeout: timeout,
        total_timeout: timeout,
        max_response_bytes: stir.cert_max_bytes,
        // No version: a caller choosing the URL learns nothing of ours.
        user_agent: "Palisade-STIR".into(),
    };
    let client = palisade_webhooks::client::WebhookClient::with_system_resolver(settings)?;
    let settings = palisade_stir::Settings {
        iat_window_secs: i64::try_from(stir.iat_window_secs).unwrap_or(60),
        cert_cache_secs: i64::try_from(stir.cert_cache_secs).unwrap_or(3600),
        require_https: production,
        max_concurrent_fetches: stir.max_concurrent_fetches,
        allowed_hosts: stir.cert_hosts.clone(),
        ..Default::default()
    };
    let fetch = Arc::new(CertFetch(client));
    Ok(Arc::new(palisade_stir::Verifier::new(anchors, fetch, state.abuse.state.clone(), settings)))
}

/// The outbound client: private networks only as configured, https only in
/// production.
fn webhook_client(config: &Config) -> anyhow::Result<palisade_webhooks::client::WebhookClient> {
    let w = &config.webhooks;
    let settings = palisade_webhooks::client::ClientSettings {
        policy: palisade_guard::ssrf::SsrfPolicy {
            allowed_private: w.allowed_private_cidrs.clone(),
            require_https: config.mode == Mode::Production,
        },
        connect_timeout: Duration::from_secs(w.connect_timeout_secs),
        total_timeout: Duration::from_secs(w.attempt_timeout_secs),
        max_response_bytes: 64 * 1024,
        user_agent: format!("Palisade-Webhooks/{}", env!("CARGO_PKG_VERSION")),
    };
    Ok(palisade_webhooks::client::WebhookClient::new(settings, Arc::new(palisade_webhooks::client::SystemResolver))?)
}

/// The configured master key wins. In dev mode without one, a key is
/// generated on first start and written to `data/master.key` (0600); only
/// its hash is kept, in the database.
async fn master_key(config: &Config, db: &Db) -> anyhow::Result<MasterKey> {
    if config.admin.master_key_disabled() {
        // Nobody could administer the platform: refuse rather than start so.
        if palisade_store::operators::count_active(db.reader()).await? == 0 {
            anyhow::bail!(
                "admin.master_key is \"disabled\" but no operator account exists: create one first with \
                 `palisade admin operator create --email ADDRESS` (the password on standard input)"
            );
        }
        return Ok(MasterKey::Disabled);
    }
    if let Some(k) = &config.admin.master_key {
        return Ok(MasterKey::Configured(sha256(k.expose())));
    }
    if palisade_store::settings::get(db.reader(), MASTER_KEY_SETTING).await?.is_none() {
        let path = rotate_master_key(config, db).await?;
        eprintln!(
            "palisade: generated a sysadmin master key; it is in {} (readable by you only). \
             Use it as `Authorization: Bearer $(cat {})` on /sysadmin routes.",
            path.display(),
            path.display()
        );
    }
    Ok(MasterKey::Stored)
}

/// Generates a new master key, stores its hash and writes the key to
/// `data/master.key` (0600). Returns the file's path.
pub async fn rotate_master_key(config: &Config, db: &Db) -> anyhow::Result<std::path::PathBuf> {
    let key = new_master_key();
    let path = config.server.data_dir.join("master.key");
    write_private(&path, format!("{key}\n").as_bytes())?;
    let mut tx = db.begin().await?;
    palisade_store::settings::put(&mut *tx, MASTER_KEY_SETTING, &sha256_hex(&key)).await?;
    tx.commit().await?;
    Ok(path)
}

/// Writes a file only the owner can read, replacing any previous one.
pub fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    opts.open(&tmp).and_then(|mut f| f.write_all(bytes)).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// Ed25519 from a PEM file, else HS256 from a secret, else (dev only) a
/// generated Ed25519 key kept in the data dir.
fn jwt_keys(config: &Config) -> anyhow::Result<JwtKeys> {
    let issuer = &config.auth.issuer;
    if let Some(path) = &config.auth.jwt_private_key_file {
        let pem = std::fs::read_to_string(path)
            .with_context(|| format!("auth.jwt_private_key_file: cannot read {}", path.display()))?;
        return Ok(JwtKeys::ed25519_from_pem(&pem, issuer)?);
    }
    if let Some(secret) = &config.auth.jwt_secret {
        return Ok(JwtKeys::hs256(secret.expose().as_bytes(), issuer)?);
    }
    anyhow::ensure!(config.mode == Mode::Dev, "no token signing key configured");
    let path = config.server.data_dir.join("jwt-ed25519.pem");
    if !path.exists() {
        write_private(&path, JwtKeys::generate_ed25519_pem()?.as_bytes())?;
    }
    let pem = std::fs::read_to_string(&path)?;
    Ok(JwtKeys::ed25519_from_pem(&pem, issuer)?)
}

/// Where the checkpoint file lives: beside the database, outside it.
pub fn checkpoint_file(config: &Config) -> std::path::PathBuf {
    config.server.data_dir.join("audit-checkpoints.jsonl")
}

/// The audit checkpoint signer: from `audit.signing_key_file`, else (dev
/// only) a key generated once into the data dir.
pub fn audit_signer(config: &Config) -> anyhow::Result<palisade_audit::checkpoint::Signer> {
    let path = match &config.audit.signing_key_file {
        Some(p) => p.clone(),
        None => {
            anyhow::ensure!(config.mode == Mode::Dev, "no audit signing key configured");
            let p = config.server.data_dir.join("audit-ed25519.pem");
            if !p.exists() {
                write_private(&p, JwtKeys::generate_ed25519_pem()?.as_bytes())?;
            }
            p
        }
    };
    let pem = std::fs::read_to_string(&path)
        .with_context(|| format!("audit.signing_key_file: cannot read {}", path.display()))?;
    Ok(palisade_audit::checkpoint::Signer::from_pem(&pem, &config.audit.origin)?)
}

fn audit_log(config: &Config, db: &Db) -> anyhow::Result<Arc<palisade_audit::log::AuditLog>> {
    Ok(palisade_audit::log::AuditLog::new(db.clone(), audit_signer(config)?, checkpoint_file(config)))
}

/// How long a stop waits for hand-overs to the carrier, then for their
/// reports to be written.
const DRAIN: Duration = Duration::from_secs(10);

/// A running server.
pub struct Running {
    pub addr: SocketAddr,
    /// The metrics listener's address, when `metrics.listen` is set.
    pub metrics_addr: Option<SocketAddr>,
    pub state: AppState,
    /// The SIP edge, when a SIP listener is configured.
    pub sip: Option<palisade_sip::Edge>,
    shutdown: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
    integrator: tokio::task::JoinHandle<()>,
}

impl Running {
    pub async fn stop(self) {
        if let Some(sip) = &self.sip {
            sip.shutdown();
        }
        let _ = self.shutdown.send(true);
        let _ = self.task.await;
        // Upgraded connections are no longer the server's: close them.
        self.state.streams.close_all(DRAIN).await;
        // No request is in flight any more: let the hand-overs to the
        // carrier finish and their reports be written, so a deploy leaves
        // no message that looks never sent (recovery would refund it).
        self.state.deliveries.close();
        if tokio::time::timeout(DRAIN, self.state.deliveries.wait()).await.is_err() {
            tracing::warn!(left = self.state.deliveries.len(), "stopping with messages still being handed over");
        }
        if tokio::time::timeout(DRAIN, self.state.reports.flush()).await.is_err() {
            tracing::warn!("stopping with carrier reports not yet written");
        }
        // The integrator writes the shutdown checkpoint before it ends.
        let _ = self.integrator.await;
        if let Err(e) = palisade_store::recovery::leave(&self.state.db, &self.state.admission.instance_id).await {
            tracing::warn!(error = %e, "could not mark this instance stopped");
        }
        self.state.db.close().await;
    }
}

/// Binds `listen` (port 0 picks a free one) and serves until stopped.
pub async fn start(state: AppState, listen: SocketAddr) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let app = palisade_api::router(state.clone());
    let tls = match (&state.config.server.tls.cert_file, &state.config.server.tls.key_file) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(tls::server_config(cert, key)?)),
        _ => None,
    };
    let limits = serve::Limits::from_config(&state.config.server);
    serve::raise_open_file_limit(limits.max_connections);
    let metrics_addr = match state.config.metrics.listen.as_str() {
        "" => None,
        addr => {
            let l =
                TcpListener::bind(addr).await.with_context(|| format!("metrics.listen: cannot listen on {addr}"))?;
            let bound = l.local_addr()?;
            let app = palisade_api::metrics::router(state.metrics.clone());
            tokio::spawn(serve::serve(l, None, app, limits.clone(), state.metrics.clone(), rx.clone()));
            Some(bound)
        }
    };
    palisade_api::recovery::register(&state).await.context("cannot register this instance in the database")?;
    palisade_api::recovery::spawn(state.clone(), rx.clone());
    spawn_housekeeping(state.clone(), rx.clone());
    spawn_resealing(state.clone(), rx.clone());
    if let Mailer::Smtp(relay) = &state.mailer {
        let cancel = tokio_util::sync::CancellationToken::new();
        relay.start(cancel.clone());
        let mut stop = rx.clone();
        tokio::spawn(async move {
            let _ = stop.wait_for(|s| *s).await;
            cancel.cancel();
        });
    }
    let interval = std::time::Duration::from_millis(state.config.audit.checkpoint_interval_ms);
    let integrator = state.audit_log.spawn(state.clock.clone(), interval, rx.clone());
    let sip = palisade_sip::start(
        &state.config.sip,
        palisade_sip::Services {
            auth: state.sip_auth.clone(),
            db: state.db.clone(),
            clock: state.clock.clone(),
            instance_id: state.admission.instance_id.clone(),
            admission: state.admission.clone(),
            carrier: state
                .sip_carrier
                .clone()
                .downcast::<palisade_sip::trunk::TrunkCarrier>()
                .map_err(|_| anyhow::anyhow!("the SIP carrier is not the trunk carrier"))?,
            tenant_gate: tenant_gate(&state),
            stir: stir_verifier(&state)?,
        },
        tls::sip_config(&state.config.sip)?,
    )
    .await
    .context("cannot start the SIP listeners (sip.*_listen)")?;
    let task = tokio::spawn(serve::serve(listener, tls, app, limits, state.metrics.clone(), rx));
    Ok(Running { addr, metrics_addr, state, sip, shutdown: tx, task, integrator })
}

/// The tenant's pass for a SIP call, by the rules of `POST /v1/calls`:
/// the tenant's address lists and its key, tenant and call-creation
/// limits (the API's `tenant_pass`), then its concurrent-call quota.
/// Unreadable limits refuse.
fn tenant_gate(state: &AppState) -> palisade_sip::calls::TenantGate {
    let state = state.clone();
    Arc::new(move |principal, client| {
        let state = state.clone();
        Box::pin(async move {
            let gated = |e: &palisade_core::ApiError| palisade_sip::calls::Gated {
                // A rate limit is "try later" in SIP.
                status: if e.status().as_u16() == 429 { 503 } else { e.status().as_u16() },
                reason: e.reason(),
                retry_after: e.retry_after(),
            };
            let scope = palisade_core::TenantScope::for_system(principal.tenant_id());
            let stored = match palisade_store::tenants::limits(state.db.reader(), &scope).await {
                Ok(stored) => stored,
                Err(e) => {
                    tracing::error!(error = %e, "reading a tenant's limits failed");
                    return Err(palisade_sip::calls::Gated {
                        status: 503,
                        reason: "unavailable",
                        retry_after: Some(5),
                    });
                }
            };
            let policy = state.abuse.tenant_policy(stored.as_deref());
            let class = Some(palisade_api::abuse::Class::CallCreate);
            let ctx = || palisade_audit::Context { source_ip: Some(client.to_string()), ..Default::default() };
            match state.abuse.tenant_pass(&state.db, state.now_ms(), &principal, &policy, class, client, ctx).await {
                Ok(_) => Ok(policy.concurrent_calls),
                Err(e) => Err(gated(&e)),
            }
        })
    })
}

/// Removes audit records older than `audit.retention_days` (0: never).
pub async fn apply_audit_retention(state: &AppState) -> anyhow::Result<Option<(u64, u64)>> {
    let days = i64::from(state.config.audit.retention_days);
    if days == 0 {
        return Ok(None);
    }
    let now = state.now_ms();
    let expired = state.audit_log.expire(now - days * 24 * 3600 * 1000, now).await?;
    if let Some((up_to, removed)) = expired {
        tracing::info!(up_to_leaf = up_to, removed, "audit records past retention removed");
    }
    Ok(expired)
}

/// Audit records of tenants whose own period is shorter than the
/// platform's, under a signed statement of each. How many.
pub async fn apply_tenant_audit_retention(state: &AppState) -> Result<u64, palisade_audit::log::LogError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_audit_retention(
        &state.audit_log,
        &state.db,
        &state.config,
        &proof,
        state.clock.as_ref(),
    )
    .await
}

/// Ended sessions past their tenant's period (`retention.sessions_*`,
/// hours). How many.
pub async fn apply_session_retention(state: &AppState) -> Result<u64, palisade_store::StoreError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_session_retention(&state.db, &state.config, &proof, state.clock.as_ref()).await
}

/// Message retention (`retention.*`, each tenant's own period): soft
/// deletion, then removal after the grace period. `(soft deleted, removed)`.
pub async fn apply_retention(state: &AppState) -> Result<(u64, u64), palisade_store::StoreError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_message_retention(&state.db, &state.config, &proof, state.clock.as_ref()).await
}

/// Where recordings are kept: the S3 bucket if one is configured, else the folder.
fn recording_storage(config: &Config) -> anyhow::Result<Arc<dyn palisade_recordings::Storage>> {
    let r = &config.recordings;
    let Some(s3) = &r.s3 else {
        let dir = r.dir.clone().unwrap_or_else(|| config.server.data_dir.join("recordings"));
        return Ok(Arc::new(palisade_recordings::local::LocalStorage::new(dir)));
    };
    let settings = palisade_recordings::s3::S3Settings {
        endpoint: s3.endpoint.clone(),
        bucket: s3.bucket.clone(),
        region: s3.region.clone(),
        access_key_id: s3.access_key_id.clone(),
        secret_access_key: s3.secret_access_key.as_ref().map(|k| k.expose().to_owned()).unwrap_or_default(),
        prefix: s3.prefix.clone(),
        allow_http: s3.allow_http,
    };
    let storage = palisade_recordings::s3::S3Storage::new(settings)
        .map_err(|e| anyhow::anyhow!("recordings.s3: {e} (check endpoint, bucket and prefix)"))?;
    Ok(Arc::new(storage))
}

/// Call retention (`retention.calls_*`, each tenant's own period): calls
/// soft deleted and CDRs hidden, then both removed after the grace period.
pub async fn apply_call_retention(
    state: &AppState,
) -> Result<palisade_api::retention::CallsSwept, palisade_store::StoreError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_call_retention(&state.db, &state.config, &proof, state.clock.as_ref()).await
}

/// Webhook retention (`webhooks.retention_days`, each tenant's own period
/// within `retention.webhooks_*`): finished deliveries removed. How many rows.
pub async fn apply_webhook_retention(state: &AppState) -> Result<u64, palisade_store::StoreError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_webhook_retention(&state.db, &state.config, &proof, state.clock.as_ref()).await
}

/// Recording retention (`retention.recordings_*`, each tenant's own
/// period): recordings past it removed for good. How many.
pub async fn apply_recording_retention(state: &AppState) -> Result<u64, palisade_store::StoreError> {
    let proof = palisade_core::principal::SysadminProof::verified();
    palisade_api::retention::apply_recording_retention(&state.admission, &state.config, &proof).await
}

/// Every ten minutes: expired revocations and tokens, old idempotency keys,
/// audit and webhook retention.
/// Sign-in code rows a day past their code, lock and send window.
async fn purge_email_codes(state: &AppState, before: i64) -> Result<u64, palisade_store::StoreError> {
    let mut tx = state.db.begin().await?;
    let n = palisade_store::email_codes::purge(&mut *tx, before).await?;
    tx.commit().await?;
    Ok(n)
}

/// Seals old message bodies again (written before encryption, or under an
/// older data key), at start and every `keys.reseal_interval_secs`.
/// One pass moving tenants' sealed secrets and recordings' keys under
/// their tenant's newest data key: from an older version, or from the
/// platform's static key (webhook secrets, SIP HA1s, TOTP secrets written
/// before tenants had keys).
pub async fn reseal_columns(state: &AppState) -> Result<u64, palisade_store::StoreError> {
    let columns: Vec<palisade_keys::reseal::SealedColumn> = palisade_webhooks::worker::SEALED_COLUMNS
        .into_iter()
        .chain(palisade_voice::credentials::SEALED_COLUMNS)
        .chain([palisade_api::routes::TOTP_SEALED, palisade_admission::recording::SEALED_COLUMNS])
        .collect();
    let proof = palisade_core::principal::SysadminProof::verified();
    state.keys.reseal_columns(&proof, &state.sealer, &columns).await
}

fn spawn_resealing(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    let every = state.config.keys.reseal_interval_secs;
    if every == 0 {
        return;
    }
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(every));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    let proof = palisade_core::principal::SysadminProof::verified();
                    match state.keys.reseal_messages(&proof).await {
                        Ok(n) if n > 0 => tracing::info!(sealed = n, "message bodies sealed with their tenant's newest key"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sealing message bodies again failed"),
                    }
                    match reseal_columns(&state).await {
                        Ok(n) if n > 0 => tracing::info!(sealed = n, "secrets and recordings' keys sealed with their tenant's newest key"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "sealing secrets again failed"),
                    }
                }
                _ = stop.changed() => break,
            }
        }
    });
}

fn spawn_housekeeping(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(600));
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    match palisade_store::tokens::purge_expired(&state.db, state.now_ms()).await {
                        Ok(n) if n > 0 => tracing::info!(removed = n, "purged expired tokens"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "purging expired tokens failed"),
                    }
                    let day_ago = state.now_ms() - 24 * 3600 * 1000;
                    if let Err(e) = purge_email_codes(&state, day_ago).await {
                        tracing::warn!(error = %e, "purging sign-in codes failed");
                    }
                    if let Err(e) = palisade_store::messages::purge_idempotency_keys(&state.db, day_ago).await {
                        tracing::warn!(error = %e, "purging idempotency keys failed");
                    }
                    if let Err(e) = apply_webhook_retention(&state).await {
                        tracing::warn!(error = %e, "webhook retention failed");
                    }
                    if let Err(e) = apply_audit_retention(&state).await {
                        tracing::warn!(error = %e, "audit retention failed");
                    }
                    if let Err(e) = apply_tenant_audit_retention(&state).await {
                        tracing::warn!(error = %e, "tenants' audit retention failed");
                    }
                    if let Err(e) = apply_session_retention(&state).await {
                        tracing::warn!(error = %e, "session retention failed");
                    }
                    if let Err(e) = apply_retention(&state).await {
                        tracing::warn!(error = %e, "message retention failed");
                    }
                    if let Err(e) = apply_call_retention(&state).await {
                        tracing::warn!(error = %e, "call retention failed");
                    }
                    if let Err(e) = apply_recording_retention(&state).await {
                        tracing::warn!(error = %e, "recording retention failed");
                    }
                    if let Err(e) = palisade_store::exports::purge_expired(&state.db, state.now_ms()).await {
                        tracing::warn!(error = %e, "removing expired exports failed");
                    }
                    // Exports a stop interrupted (their lease ran out), off this loop.
                    let exports = palisade_exports::Exports {
                        db: state.db.clone(),
                        keys: state.keys.clone(),
                        clock: state.clock.clone(),
                    };
                    state.deliveries.spawn(async move {
                        if let Err(e) = exports.resume().await {
                            tracing::warn!(error = %e, "resuming exports failed");
                        }
                    });
                }
                _ = stop.changed() => break,
            }
        }
    });
}
