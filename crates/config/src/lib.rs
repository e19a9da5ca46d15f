//! Configuration: defaults, then a TOML file (with `${VAR}` substitution),
//! then `PALISADE_<SECTION>__<KEY>` environment variables. Secrets can also
//! come from files (`*_file` keys) and never print in `Debug` output.

mod secret;
mod sip;
mod substitute;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use ipnet::IpNet;
use serde::{Deserialize, Deserializer, Serialize};

pub use secret::Secret;
pub use sip::{BruteForce, Pike, Sip, Stir};
pub use substitute::substitute_env;

/// Master keys and JWT secrets that appear in our docs and examples. Production refuses them.
pub const KNOWN_DEV_SECRETS: &[&str] = &[
    "mk_dev_master_key_do_not_use_in_production_0000000",
    "dev-jwt-secret-do-not-use-in-production-000000000",
    "changeme",
    "secret",
    "password",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Dev,
    Production,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub mode: Mode,
    pub server: Server,
    pub database: Database,
    pub admin: Admin,
    pub auth: Auth,
    pub cors: Cors,
    pub mail: Mail,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub waf: Waf,
    pub lockout: Lockout,
    pub metrics: Metrics,
    pub pricing: Pricing,
    pub carrier: CarrierConfig,
    pub numbers: Numbers,
    pub log: Log,
    pub audit: Audit,
    pub webhooks: Webhooks,
    pub inbound: Inbound,
    pub redis: Redis,
    pub sip: Sip,
    pub streams: Streams,
    pub oidc: Oidc,
    pub keys: Keys,
    pub retention: Retention,
    pub recordings: Recordings,
}

/// Where recordings' sealed audio is kept: a folder, or an S3-compatible
/// bucket when `[recordings.s3]` is set.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Recordings {
    /// A folder (one sub-folder per tenant); default `<data_dir>/recordings`.
    pub dir: Option<PathBuf>,
    pub s3: Option<RecordingsS3>,
    /// What one tenant's recordings may take in all; a recording past it is
    /// not kept (audited as `recording.refused`).
    pub max_bytes_per_tenant: u64,
}

impl Default for Recordings {
    fn default() -> Self {
        Recordings { dir: None, s3: None, max_bytes_per_tenant: 10 << 30 }
    }
}

/// An S3-compatible bucket; each tenant's recordings under `<prefix>/<tenant>/`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordingsS3 {
    /// For S3-compatible servers (MinIO, Ceph, ...); none: AWS.
    pub endpoint: Option<String>,
    pub bucket: String,
    #[serde(default = "default_region")]
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: Option<Secret>,
    pub secret_access_key_file: Option<PathBuf>,
    #[serde(default)]
    pub prefix: String,
    /// Plain `http://` to the endpoint (a server on the same host); production refuses it.
    #[serde(default)]
    pub allow_http: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

/// How long data is kept (docs/security.md "Retention"): the operator's
/// default and bounds; each tenant may choose within them.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Retention {
    /// Messages (body and record): soft deleted after this many days.
    pub messages_days: u32,
    pub messages_min_days: u32,
    pub messages_max_days: u32,
    /// Calls and CDRs: soft deleted after this many days.
    pub calls_days: u32,
    pub calls_min_days: u32,
    pub calls_max_days: u32,
    /// Recordings: removed (audio and record) after this many days.
    pub recordings_days: u32,
    pub recordings_min_days: u32,
    pub recordings_max_days: u32,
    /// A tenant's own period for finished webhook deliveries lies within
    /// these (the default is `webhooks.retention_days`).
    pub webhooks_min_days: u32,
    pub webhooks_max_days: u32,
    /// Ended sessions (signed out, revoked or expired token families with
    /// their refresh tokens): removed this many hours after they ended.
    pub sessions_hours: u32,
    pub sessions_min_hours: u32,
    pub sessions_max_hours: u32,
    /// A tenant's own audit period is at least this; at most (and by
    /// default) `audit.retention_days`.
    pub audit_min_days: u32,
    /// Between soft deletion (restorable by the operator) and removal.
    pub grace_days: u32,
    /// Rows per transaction of the sweeper.
    pub batch: u32,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            messages_days: 365,
            messages_min_days: 1,
            messages_max_days: 3650,
            calls_days: 730,
            calls_min_days: 1,
            calls_max_days: 3650,
            recordings_days: 90,
            recordings_min_days: 1,
            recordings_max_days: 3650,
            webhooks_min_days: 1,
            webhooks_max_days: 365,
            sessions_hours: 1,
            sessions_min_hours: 1,
            sessions_max_hours: 720,
            audit_min_days: 365,
            grace_days: 30,
            batch: 500,
        }
    }
}
/// Envelope encryption (docs/security.md "Data protection"): each tenant's
/// data keys are wrapped by this key-encryption key, which never enters
/// the database.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Keys {
    /// KEK versions, `v<N>:<base64 of 32 bytes>`, one per line (or
    /// separated by commas); the newest wraps, every one listed unwraps.
    /// Dev mode keeps one in the data dir (`kek`) when unset.
    pub kek: Option<Secret>,
    pub kek_file: Option<PathBuf>,
    /// How long an instance keeps a tenant's unwrapped keys in memory.
    pub cache_secs: u64,
    /// How often the job that seals old message bodies again (written
    /// before encryption, or under an older data key) runs; 0: never.
    pub reseal_interval_secs: u64,
}

impl Default for Keys {
    fn default() -> Self {
        Keys { kek: None, kek_file: None, cache_secs: 60, reseal_interval_secs: 3600 }
    }
}

/// Single sign-on: the OpenID Connect providers people may sign in with.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Oidc {
    /// `[[oidc.providers]]` tables.
    pub providers: Vec<OidcProvider>,
    /// An ID token signed by a key we do not know makes us read the
    /// provider's keys again (it rotated them), at most this often.
    pub key_refetch_secs: u64,
}

impl Default for Oidc {
    fn default() -> Self {
        Oidc { providers: Vec::new(), key_refetch_secs: 30 }
    }
}

/// One provider. Our callback is `{server.public_url}/v1/auth/oidc/{name}/callback`:
/// register it with the provider.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcProvider {
    /// In our paths: 1 to 32 of a-z, 0-9 and `-`.
    pub name: String,
    /// Exactly as the provider names itself (`https://accounts.google.com`).
    pub issuer: String,
    pub client_id: String,
    pub client_secret: Option<Secret>,
    pub client_secret_file: Option<PathBuf>,
    /// Email domains whose people may sign in through it; empty: any.
    #[serde(default)]
    pub allowed_domains: Vec<String>,
}

/// WebSocket streams (`GET /v1/events/stream`): what one connection may
/// hold and how fast it notices a credential that ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Streams {
    /// Largest message either way; a larger one closes with 1009.
    pub max_message_bytes: usize,
    /// Bytes one connection may carry in each direction; then it closes
    /// with 1008 and the client reconnects.
    pub max_connection_bytes: u64,
    /// Longest life of a connection (1008 with a reason; reconnect).
    pub max_duration_secs: u64,
    /// How often a stream looks for new events.
    pub poll_ms: u64,
    /// How often a stream checks that its credential still holds (revoked,
    /// frozen, logged out): the most a kill-switch waits to reach it.
    pub recheck_ms: u64,
    /// A connection that neither sends nor answers a ping this long closes.
    pub idle_timeout_secs: u64,
    /// Longest wait for a client to take a message; a slower reader is cut
    /// off rather than buffered for.
    pub send_timeout_ms: u64,
    /// Open streams at once in this instance, per tenant, and per acting
    /// person, key or identity.
    pub max_total: usize,
    pub max_per_tenant: usize,
    pub max_per_credential: usize,
    /// Messages a client may send per second on one stream (a burst of
    /// twice as many); beyond, the stream closes with 1008. A call's
    /// audio is 50 frames a second.
    pub max_client_messages_per_sec: u32,
    /// Audio a call stream may queue ahead towards the far end; what would
    /// go beyond is refused (an `error` message), not buffered.
    pub playback_buffer_secs: u64,
    /// Life of a stream ticket (`POST /v1/stream-tickets`), at most its
    /// minter's.
    pub ticket_ttl_secs: u64,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            max_message_bytes: 1 << 20,
            max_connection_bytes: 100 << 20,
            max_duration_secs: 3600,
            poll_ms: 250,
            recheck_ms: 500,
            idle_timeout_secs: 60,
            send_timeout_ms: 10_000,
            max_total: 10_000,
            max_per_tenant: 100,
            max_per_credential: 10,
            max_client_messages_per_sec: 100,
            playback_buffer_secs: 60,
            ticket_ttl_secs: 60,
        }
    }
}

/// Redis, shared by several instances: rate-limit buckets, WAF counters
/// and blocks, login and credential lockouts. Unset: all of that is kept
/// in this process (one instance).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Redis {
    /// `redis://[user:password@]host[:port][/db]`, or `rediss://…` for TLS.
    pub url: Option<Secret>,
    /// Starts every key, so deployments (and test runs) can share a Redis.
    pub key_prefix: String,
    /// How long one call may take before it counts as a failure.
    pub timeout_ms: u64,
    /// How long connecting may take.
    pub connect_timeout_ms: u64,
    /// After a failure, calls go to the failure policy without trying
    /// Redis for this long; then one call tries again.
    pub retry_ms: u64,
    /// What each class does while Redis is unreachable.
    pub on_failure: RedisFailure,
}

impl Default for Redis {
    fn default() -> Self {
        Self {
            url: None,
            key_prefix: "palisade".into(),
            timeout_ms: 250,
            connect_timeout_ms: 1000,
            retry_ms: 1000,
            on_failure: RedisFailure::default(),
        }
    }
}

/// The failure policy, per class of state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisFailure {
    /// Per-address, per-credential, per-tenant, endpoint-class and
    /// identity buckets, burst detection and audit notices.
    pub rate_limits: FailMode,
    /// WAF violation counters and blocks.
    pub waf: FailMode,
    /// `/v1/auth/*` buckets, login lockouts and throttles.
    pub auth: FailMode,
    /// Failed-credential counters and the address lock they lead to.
    pub credentials: FailMode,
    /// SIP digest state: used (nonce, nc) pairs, failure counters and the
    /// blocks they lead to. Closed by default: a per-process fallback would
    /// let a replayed digest pass on another instance.
    pub sip: FailMode,
}

impl Default for RedisFailure {
    fn default() -> Self {
        Self {
            rate_limits: FailMode::Local,
            waf: FailMode::Local,
            auth: FailMode::Closed,
            credentials: FailMode::Closed,
            sip: FailMode::Closed,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FailMode {
    /// Answer from this process's own state (limits N times looser with N
    /// instances).
    Local,
    /// Refuse the request (503 `unavailable`, with `Retry-After`).
    Closed,
}

/// Outbound webhooks (SPEC §10).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Webhooks {
    /// 32 bytes, base64: encrypts endpoint secrets at rest (AES-256-GCM).
    /// Dev mode generates one in the data dir when unset.
    pub encryption_key: Option<Secret>,
    pub encryption_key_file: Option<PathBuf>,
    /// Private networks that endpoints may reach anyway (tests, private
    /// deployments). Empty by default: every private address is refused.
    #[serde(deserialize_with = "nets")]
    pub allowed_private_cidrs: Vec<IpNet>,
    /// Seconds to wait before each attempt; the first is normally 0.
    #[serde(deserialize_with = "list_or_csv")]
    pub retry_schedule_secs: Vec<u64>,
    pub attempt_timeout_secs: u64,
    pub connect_timeout_secs: u64,
    /// After a rotation the old secret keeps signing this long.
    pub rotation_grace_secs: u64,
    /// An endpoint that has failed without a single success this long is disabled.
    pub disable_after_secs: u64,
    /// Deliveries in flight at once per instance.
    pub concurrency: usize,
    /// How often an idle worker looks for due retries.
    pub poll_ms: u64,
    /// Finished deliveries, their attempts and events, and inbound
    /// callbacks are removed after this many days; 0 keeps them.
    pub retention_days: u32,
}

impl Default for Webhooks {
    fn default() -> Self {
        Self {
            encryption_key: None,
            encryption_key_file: None,
            allowed_private_cidrs: Vec::new(),
            retry_schedule_secs: vec![0, 5, 300, 1800, 7200, 18000, 36000, 36000],
            attempt_timeout_secs: 15,
            connect_timeout_secs: 5,
            rotation_grace_secs: 24 * 3600,
            disable_after_secs: 5 * 24 * 3600,
            concurrency: 16,
            poll_ms: 1000,
            retention_days: 30,
        }
    }
}

/// Signed callbacks from carriers and payment providers (`POST /v1/inbound/{provider}`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Inbound {
    /// Accepted distance between a callback's timestamp and now.
    pub tolerance_secs: u64,
    /// One entry per provider name, e.g. `[inbound.providers.stripe]`.
    pub providers: std::collections::BTreeMap<String, InboundProvider>,
}

impl Default for Inbound {
    fn default() -> Self {
        Self { tolerance_secs: 300, providers: Default::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InboundProvider {
    /// `payment` (tops up credits) or `carrier` (message and call status).
    pub kind: InboundKind,
    /// The shared HMAC secret (`whsec_…` or raw), or read from `secret_file`.
    pub secret: Option<Secret>,
    pub secret_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboundKind {
    Payment,
    Carrier,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Server {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Proxies (CIDRs) whose `X-Forwarded-For` is believed. Empty: the socket address is the client.
    #[serde(deserialize_with = "nets")]
    pub trust_proxy: Vec<IpNet>,
    pub tls: Tls,
    /// Base URL used in links sent by mail.
    pub public_url: String,
    /// Connections open at once, all clients together; one more is closed
    /// as soon as it is accepted. Keep it below the open-file limit.
    pub max_connections: usize,
    /// Connections open at once from one socket address (IPv6: one /64).
    /// A trusted proxy (`trust_proxy`) counts toward the total only.
    pub max_connections_per_address: usize,
    /// Time for a request's headers to arrive, from the connection's start
    /// or from the first byte of a next request.
    pub header_timeout_secs: u64,
    /// How long a connection may wait, between requests, for the next one.
    pub idle_timeout_secs: u64,
    /// Time for a request body to arrive, extended by one second per
    /// `body_min_bytes_per_sec` bytes received (a minimum average rate).
    pub body_timeout_secs: u64,
    /// 0: the whole body within `body_timeout_secs`.
    pub body_min_bytes_per_sec: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tls {
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Time for a TLS handshake to complete after the connection opened.
    pub handshake_timeout_secs: u64,
}

impl Default for Tls {
    fn default() -> Self {
        Self { cert_file: None, key_file: None, handshake_timeout_secs: 10 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Database {
    /// `sqlite://...` or `postgres://...`; empty means SQLite in the data dir.
    pub url: Option<Secret>,
    pub max_connections: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Admin {
    /// The break-glass key for `/sysadmin`; `"disabled"` refuses it (once
    /// an operator account exists: `palisade admin operator create`).
    pub master_key: Option<Secret>,
    pub master_key_file: Option<PathBuf>,
    /// How long an operator's sign-in lasts.
    pub operator_session_secs: u64,
}

impl Default for Admin {
    fn default() -> Self {
        Admin { master_key: None, master_key_file: None, operator_session_secs: 900 }
    }
}

impl Admin {
    /// `admin.master_key = "disabled"`: operators only.
    pub fn master_key_disabled(&self) -> bool {
        self.master_key.as_ref().is_some_and(|k| k.expose() == "disabled")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Auth {
    /// PEM (PKCS#8) Ed25519 private key for EdDSA access tokens.
    pub jwt_private_key_file: Option<PathBuf>,
    /// HS256 secret, at least 32 bytes, used only when no Ed25519 key is set.
    pub jwt_secret: Option<Secret>,
    pub jwt_secret_file: Option<PathBuf>,
    pub issuer: String,
    pub access_token_ttl_secs: u64,
    pub refresh_token_ttl_secs: u64,
    /// How far in the future an access token's `iat` or `nbf` may lie
    /// (instances' clocks differ a little); past it the token is refused.
    /// At most 300.
    pub clock_skew_secs: u64,
    /// Password hashes computed at once (each takes 19 MiB and a core for
    /// tens of milliseconds). 0: twice the number of cores.
    pub argon2_max_concurrent: usize,
    /// How long a request waits for a free slot before a 503.
    pub argon2_wait_ms: u64,
    /// How long a verified credential (key, agent token, session) is used
    /// from memory before it is read again. Changes reach every instance
    /// within a second anyway; this bounds a lost message. 0: no cache.
    /// At most 60.
    pub credential_cache_ttl_secs: u64,
    /// How many verified credentials an instance keeps in memory.
    pub credential_cache_max_entries: usize,
    /// Hear other instances' credential changes. Off, only the TTL bounds
    /// how long another instance's revocation takes here: for tests of
    /// that bound, never for several instances.
    pub credential_cache_listen: bool,
    /// How they travel: `postgres` (the database announces every committed
    /// change, whoever made it: servers, the CLI, an operator's SQL),
    /// `redis` (pub/sub under `redis.key_prefix`, published by the servers
    /// after each commit: for connection poolers that cannot LISTEN), or
    /// `auto`: `postgres` on PostgreSQL, else nothing to hear.
    pub credential_bus: CredentialBus,
    /// Sign-in codes by mail (`POST /v1/auth/email-code`).
    pub email_code: EmailCode,
    /// Second factors (TOTP, recovery codes) and step-up.
    pub mfa: Mfa,
    /// Passkeys (WebAuthn).
    pub webauthn: Webauthn,
}

/// Passkeys (WebAuthn): who the relying party is. Unset, both come from
/// `server.public_url` (whose host must then be a name, not an address).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Webauthn {
    /// The domain passkeys are bound to (`example.com`); the origin's host
    /// or a parent of it.
    pub rp_id: Option<String>,
    /// Where the pages that use passkeys are served (`https://app.example.com`).
    pub origin: Option<String>,
    /// The name an authenticator shows.
    pub rp_name: String,
}

impl Default for Webauthn {
    fn default() -> Self {
        Webauthn { rp_id: None, origin: None, rp_name: "Palisade".into() }
    }
}

/// Second factors: TOTP (RFC 6238) with one-time recovery codes.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mfa {
    /// The issuer an authenticator app shows next to the account.
    pub issuer: String,
    /// How long the `mfa_token` a sign-in gets instead of tokens lives.
    pub challenge_ttl_secs: u64,
    /// Wrong second factors in a row (over every challenge and step-up of
    /// a person) before the second factor waits `lockout_secs`.
    pub max_tries: u32,
    pub lockout_secs: u64,
    /// How recent a second factor must be for a sensitive operation.
    pub step_up_secs: u64,
}

impl Default for Mfa {
    fn default() -> Self {
        Mfa { issuer: "Palisade".into(), challenge_ttl_secs: 300, max_tries: 5, lockout_secs: 900, step_up_secs: 600 }
    }
}

/// Six-digit sign-in codes sent by mail.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EmailCode {
    /// How long a code is good for.
    pub ttl_secs: u64,
    /// Wrong tries that kill a code; then the address waits `lockout_secs`.
    pub max_tries: u32,
    pub lockout_secs: u64,
    /// Codes one address may be sent per `send_window_secs`.
    pub max_sends: u32,
    pub send_window_secs: u64,
}

impl Default for EmailCode {
    fn default() -> Self {
        EmailCode { ttl_secs: 600, max_tries: 5, lockout_secs: 900, max_sends: 5, send_window_secs: 3600 }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CredentialBus {
    #[default]
    Auto,
    Postgres,
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Cors {
    #[serde(deserialize_with = "list_or_csv")]
    pub allowed_origins: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Mail {
    /// `smtps://user:pass@host:465` or `smtp://user:pass@host:587?tls=required`.
    pub smtp_url: Option<Secret>,
    pub from: String,
    /// A relay on this host without TLS (`smtp://127.0.0.1:25`): refused
    /// unless set; never for another host.
    pub smtp_allow_plaintext: bool,
    /// Seconds between a failed attempt and the next; after the last, the
    /// mail is given up (logged and counted).
    pub retry_schedule_secs: Vec<u64>,
    /// PEM certificates trusted for the relay besides the public roots (a
    /// relay whose certificate a private CA signed).
    pub smtp_ca_file: Option<PathBuf>,
    /// How often the mail worker looks for mail due, when nothing wakes it.
    pub poll_ms: u64,
    /// The longest one SMTP delivery may take.
    pub send_timeout_secs: u64,
}

impl Mail {
    /// TLS to the relay: `smtps://` (implicit TLS) or STARTTLS required
    /// (`smtp://…?tls=required`); a plaintext relay only on loopback and
    /// only when the operator says so.
    fn check_smtp_url(&self) -> Result<(), ConfigError> {
        let Some(raw) = &self.smtp_url else { return Ok(()) };
        let bad = |why: &str| ConfigError(format!("mail.smtp_url {why}"));
        let url = url::Url::parse(raw.expose()).map_err(|_| bad("is not a valid smtp:// or smtps:// URL"))?;
        let tls = url.query_pairs().filter(|(k, _)| k == "tls").map(|(_, v)| v.into_owned()).collect::<Vec<_>>();
        match (url.scheme(), tls.as_slice()) {
            ("smtps", []) => Ok(()),
            ("smtp", [t]) if t == "required" => Ok(()),
            ("smtp", [] | [_]) if tls.iter().all(|t| t == "opportunistic") => {
                let loopback = match url.host() {
                    // smtp: is not a special scheme: an IPv4 address reads as a name.
                    Some(url::Host::Domain(d)) => {
                        d.eq_ignore_ascii_case("localhost")
                            || d.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
                    }
                    Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                    Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                    None => false,
                };
                if self.smtp_allow_plaintext && loopback {
                    Ok(())
                } else {
                    Err(bad("must use TLS: smtps://…, or smtp://…?tls=required (STARTTLS); a relay on this host \
                         may go without with mail.smtp_allow_plaintext = true"))
                }
            }
            _ => Err(bad("must be smtps://… or smtp://… with at most one tls= (required)")),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Hard cap for any request body (SPEC: 25 MiB).
    pub max_body_bytes: usize,
    /// Stricter cap for JSON bodies, which are parsed into memory whole.
    pub max_json_bytes: usize,
    pub max_json_depth: usize,
    pub max_text_chars: usize,
    /// Bodies read at once, across the process, before anyone is
    /// authenticated (inbound callbacks, `/v1/auth/*`); one more is refused
    /// at once (503 with `Retry-After`). Bounds their memory to this many
    /// times `max_json_bytes`.
    pub unauthenticated_body_reads: usize,
    /// How long such a body may take to arrive (it holds one of those
    /// slots meanwhile); slower is 408.
    pub unauthenticated_body_secs: u64,
}

/// Request rates (SPEC §7), per minute; 0 turns a limit off. Tenants can
/// be given their own through the sysadmin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimits {
    /// Every request from one client address (IPv6: one /64).
    pub ip_per_minute: u32,
    /// `/v1/auth/**` requests from one client address.
    pub auth_ip_per_minute: u32,
    /// One API key, agent token or person.
    pub key_per_minute: u32,
    /// All credentials of one tenant together.
    pub tenant_per_minute: u32,
    pub message_create_per_minute: u32,
    pub call_create_per_minute: u32,
    /// Burst detection, per second: a client address or tenant running over
    /// this is logged and audited (not refused).
    pub burst_ip_per_second: u32,
    pub burst_tenant_per_second: u32,
    /// Calls of one tenant live at once.
    pub concurrent_calls_per_tenant: u32,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            ip_per_minute: 200,
            auth_ip_per_minute: 10,
            key_per_minute: 60,
            tenant_per_minute: 1000,
            message_create_per_minute: 100,
            call_create_per_minute: 100,
            burst_ip_per_second: 50,
            burst_tenant_per_second: 200,
            concurrent_calls_per_tenant: 10,
        }
    }
}

/// Content rules and address lists (SPEC §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Waf {
    /// A free-text field with more links than this is refused.
    pub max_urls: usize,
    /// A free-text field with more phone numbers than this is refused.
    pub max_phone_numbers: usize,
    /// This many refusals within `violation_window_secs` from one key or
    /// address block it for `block_secs`.
    pub violations_to_block: u32,
    pub violation_window_secs: u32,
    pub block_secs: u32,
    /// When set, only these addresses (CIDRs) may call the API.
    #[serde(deserialize_with = "nets")]
    pub ip_allow: Vec<IpNet>,
    /// These addresses may not.
    #[serde(deserialize_with = "nets")]
    pub ip_deny: Vec<IpNet>,
}

impl Default for Waf {
    fn default() -> Self {
        Self {
            max_urls: 5,
            max_phone_numbers: 3,
            violations_to_block: 10,
            violation_window_secs: 60,
            block_secs: 900,
            ip_allow: Vec::new(),
            ip_deny: Vec::new(),
        }
    }
}

/// Brute-force lockouts (SPEC §7).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Lockout {
    /// Failed logins for one account from one client address within
    /// `window_secs` that lock that address out of the account.
    pub login_failures: u32,
    /// Failed logins for one account from any addresses within
    /// `window_secs` that throttle it for `lock_secs`: attempts from
    /// addresses not trusted for it are then admitted one per
    /// `account_spacing_secs`, all addresses together.
    pub account_login_failures: u32,
    pub account_spacing_secs: u32,
    /// How long an address where the account's password was right (a
    /// login, a password reset) stays exempt from its throttle; 0: never.
    pub trusted_address_secs: u32,
    /// Failed credential checks (API keys, agent tokens, the master key)
    /// from one address within `window_secs` that lock that address out
    /// of credential checks.
    pub credential_failures_per_ip: u32,
    pub window_secs: u32,
    pub lock_secs: u32,
}

impl Default for Lockout {
    fn default() -> Self {
        Self {
            login_failures: 5,
            account_login_failures: 20,
            account_spacing_secs: 30,
            trusted_address_secs: 30 * 24 * 3600,
            credential_failures_per_ip: 10,
            window_secs: 900,
            lock_secs: 900,
        }
    }
}

/// Prices in integer minor units of the credits (e.g. cents).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pricing {
    /// Per SMS segment of an outbound message.
    pub message_segment: i64,
    /// Per started minute of a call.
    pub call_minute: i64,
}

impl Default for Pricing {
    fn default() -> Self {
        Self { message_segment: 5, call_minute: 10 }
    }
}

/// The carrier that delivers messages and places calls.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CarrierConfig {
    /// Only `sandbox` (built in, no account needed) for now.
    pub kind: String,
    /// How long the sandbox takes to report a message delivered or to
    /// answer a call.
    pub sandbox_delay_ms: u64,
    /// How long a sandbox call lasts before the callee hangs up.
    pub sandbox_call_secs: u64,
    /// Where the sandbox's SRTP echo listens (for SIP callers that offer
    /// SRTP); the address SIP devices reach it at.
    pub sandbox_media_ip: std::net::IpAddr,
}

impl Default for CarrierConfig {
    fn default() -> Self {
        Self {
            kind: "sandbox".into(),
            sandbox_delay_ms: 200,
            sandbox_call_secs: 10,
            sandbox_media_ip: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        }
    }
}

/// Proving control of a number: a code the carrier delivers to it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Numbers {
    /// Whether an identity sends and calls only once its number is
    /// verified. A carrier that reaches real phones always requires it;
    /// the sandbox reaches none, so by default it does not.
    pub require_verified: bool,
    /// How long a code stays valid.
    pub code_ttl_secs: u64,
    /// Wrong codes before the code is dead and the identity waits `lock_secs`.
    pub code_attempts: u32,
    pub lock_secs: u64,
    /// Least time between two codes for one identity.
    pub resend_secs: u64,
    /// Most codes a tenant sends one number in a day (per day since the
    /// first; deleting and registering the number again resets nothing).
    pub codes_per_day: u32,
    /// Most codes one number receives in a day, whoever asks; beyond it
    /// codes are silently not sent (no charge).
    pub codes_per_number_per_day: u32,
    /// Most tries at codes for one number compared in a day, whoever
    /// tries; beyond it tries are refused as wrong.
    pub tries_per_number_per_day: u32,
}

impl Default for Numbers {
    fn default() -> Self {
        Self {
            require_verified: false,
            code_ttl_secs: 600,
            code_attempts: 5,
            lock_secs: 900,
            resend_secs: 60,
            codes_per_day: 5,
            codes_per_number_per_day: 10,
            tries_per_number_per_day: 20,
        }
    }
}

/// Prometheus metrics.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Metrics {
    /// Address of the separate listener serving `/metrics`, e.g.
    /// `127.0.0.1:9464`. Empty: no metrics listener. Keep it off the
    /// public network; it has no authentication.
    pub listen: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Audit {
    /// PEM (PKCS#8) Ed25519 private key that signs audit checkpoints.
    pub signing_key_file: Option<PathBuf>,
    /// Names this log in its checkpoints.
    pub origin: String,
    /// Records older than this are removed (whole ranges, from the oldest,
    /// with a signed statement). 0 keeps everything. Default: 7 years.
    pub retention_days: u32,
    /// Least time between integration runs, each of which signs one
    /// checkpoint per batch: bounds how many checkpoints a busy log makes
    /// (and so the checkpoint file's growth and verification time). Proofs
    /// for newer events integrate on demand. Default 1000.
    pub checkpoint_interval_ms: u64,
}

impl Default for Audit {
    fn default() -> Self {
        Self { signing_key_file: None, origin: "palisade".into(), retention_days: 2557, checkpoint_interval_ms: 1000 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Log {
    /// `tracing` filter directive, e.g. `info` or `palisade=debug,info`.
    pub level: String,
}

impl Default for Server {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./data"),
            trust_proxy: Vec::new(),
            tls: Tls::default(),
            public_url: "http://127.0.0.1:8080".into(),
            max_connections: 4096,
            max_connections_per_address: 256,
            header_timeout_secs: 10,
            idle_timeout_secs: 60,
            body_timeout_secs: 20,
            body_min_bytes_per_sec: 1024,
        }
    }
}

impl Default for Database {
    fn default() -> Self {
        Self { url: None, max_connections: 16 }
    }
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            jwt_private_key_file: None,
            jwt_secret: None,
            jwt_secret_file: None,
            issuer: "palisade".into(),
            access_token_ttl_secs: 3600,
            refresh_token_ttl_secs: 7 * 24 * 3600,
            clock_skew_secs: 60,
            argon2_max_concurrent: 0,
            argon2_wait_ms: 2000,
            credential_cache_ttl_secs: 5,
            credential_cache_max_entries: 100_000,
            credential_cache_listen: true,
            credential_bus: CredentialBus::Auto,
            email_code: EmailCode::default(),
            mfa: Mfa::default(),
            webauthn: Webauthn::default(),
        }
    }
}

impl Default for Mail {
    fn default() -> Self {
        Self {
            smtp_url: None,
            from: "Palisade <noreply@localhost>".into(),
            smtp_allow_plaintext: false,
            smtp_ca_file: None,
            retry_schedule_secs: vec![30, 120, 600, 1800, 3600, 7200, 21_600],
            poll_ms: 1000,
            send_timeout_secs: 30,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 25 * 1024 * 1024,
            max_json_bytes: 1024 * 1024,
            max_json_depth: 32,
            max_text_chars: 8192,
            unauthenticated_body_reads: 64,
            unauthenticated_body_secs: 10,
        }
    }
}

impl Default for Log {
    fn default() -> Self {
        Self { level: "info".into() }
    }
}

/// A configuration problem, phrased as what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn list_or_csv<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    // Numbers too: defaults such as the retry schedule serialize as numbers,
    // and an env value like `5` arrives as one.
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        Text(String),
        Number(u64),
    }
    impl Item {
        fn text(self) -> String {
            match self {
                Item::Text(s) => s,
                Item::Number(n) => n.to_string(),
            }
        }
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        List(Vec<Item>),
        One(Item),
    }
    let items: Vec<String> = match Raw::deserialize(d)? {
        Raw::List(v) => v.into_iter().map(Item::text).collect(),
        Raw::One(s) => s.text().split(',').map(str::to_owned).collect(),
    };
    items
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<T>().map_err(|e| serde::de::Error::custom(format!("`{s}`: {e}"))))
        .collect()
}

/// CIDRs, where a bare address means that one host.
#[derive(Debug)]
struct Net(IpNet);

impl std::str::FromStr for Net {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        s.parse::<IpNet>()
            .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
            .map(|n| Net(n.trunc()))
            .map_err(|_| "not an IP address or CIDR".to_owned())
    }
}

pub(crate) fn nets<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Ok(list_or_csv::<D, Net>(d)?.into_iter().map(|n| n.0).collect())
}

impl Config {
    /// Loads from `path` (must exist) or `./palisade.toml` if present, then env.
    pub fn load(path: Option<&Path>) -> Result<Config, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        let file = match path {
            Some(p) => Some(p.to_path_buf()),
            None => Some(PathBuf::from("palisade.toml")).filter(|p| p.exists()),
        };
        if let Some(file) = file {
            let raw = std::fs::read_to_string(&file)
                .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", file.display())))?;
            let text = substitute_env(&raw, |k| std::env::var(k).ok())
                .map_err(|e| ConfigError(format!("{}: {e}", file.display())))?;
            fig = fig.merge(Toml::string(&text));
        }
        fig = fig.merge(env_provider());
        let mut cfg: Config = fig.extract().map_err(|e| {
            ConfigError(format!("invalid configuration: {e} (check palisade.toml and PALISADE_* variables)"))
        })?;
        cfg.resolve_files()?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads the `*_file` secrets into their values.
    pub fn resolve_files(&mut self) -> Result<(), ConfigError> {
        fn read(path: &Path, key: &str) -> Result<Secret, ConfigError> {
            std::fs::read_to_string(path)
                .map(|s| Secret::new(s.trim().to_owned()))
                .map_err(|e| ConfigError(format!("{key}: cannot read {}: {e}", path.display())))
        }
        if self.admin.master_key.is_none() {
            if let Some(p) = &self.admin.master_key_file {
                self.admin.master_key = Some(read(p, "admin.master_key_file")?);
            }
        }
        if self.auth.jwt_secret.is_none() {
            if let Some(p) = &self.auth.jwt_secret_file {
                self.auth.jwt_secret = Some(read(p, "auth.jwt_secret_file")?);
            }
        }
        if self.webhooks.encryption_key.is_none() {
            if let Some(p) = &self.webhooks.encryption_key_file {
                self.webhooks.encryption_key = Some(read(p, "webhooks.encryption_key_file")?);
            }
        }
        if let Some(s3) = &mut self.recordings.s3 {
            if s3.secret_access_key.is_none() {
                if let Some(p) = &s3.secret_access_key_file {
                    s3.secret_access_key = Some(read(p, "recordings.s3.secret_access_key_file")?);
                }
            }
        }
        if self.keys.kek.is_none() {
            if let Some(p) = &self.keys.kek_file {
                self.keys.kek = Some(read(p, "keys.kek_file")?);
            }
        }
        if self.sip.stir.signing_key.is_none() {
            if let Some(p) = &self.sip.stir.signing_key_file {
                self.sip.stir.signing_key = Some(read(p, "sip.stir.signing_key_file")?);
            }
        }
        for p in self.oidc.providers.iter_mut() {
            if p.client_secret.is_none() {
                if let Some(f) = &p.client_secret_file {
                    p.client_secret = Some(read(f, &format!("oidc.providers.{}.client_secret_file", p.name))?);
                }
            }
        }
        for (name, p) in self.inbound.providers.iter_mut() {
            if p.secret.is_none() {
                if let Some(f) = &p.secret_file {
                    p.secret = Some(read(f, &format!("inbound.providers.{name}.secret_file"))?);
                }
            }
        }
        Ok(())
    }

    /// Providers: plain names, once each, an issuer URL (https in
    /// production), a client id and a secret.
    fn check_oidc(&self) -> Result<(), ConfigError> {
        if self.oidc.key_refetch_secs > 3600 {
            return Err(ConfigError("oidc.key_refetch_secs must be at most 3600".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for p in &self.oidc.providers {
            let name = &p.name;
            let ok_name = (1..=32).contains(&name.len())
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok_name || !seen.insert(name.as_str()) {
                return Err(ConfigError(format!(
                    "oidc.providers: name {name:?} must be 1 to 32 of a-z, 0-9 and -, and given once"
                )));
            }
            let scheme_ok = match url::Url::parse(&p.issuer) {
                Ok(u) if u.scheme() == "https" => true,
                Ok(u) if u.scheme() == "http" => self.mode != Mode::Production,
                _ => false,
            };
            if !scheme_ok {
                return Err(ConfigError(format!(
                    "oidc.providers.{name}.issuer must be an https URL (http only outside production)"
                )));
            }
            if p.client_id.trim().is_empty() || p.client_secret.as_ref().is_none_or(|s| s.expose().is_empty()) {
                return Err(ConfigError(format!(
                    "oidc.providers.{name}: set client_id, and client_secret or client_secret_file"
                )));
            }
        }
        Ok(())
    }

    /// Checks that hold in every mode, then the production refusals.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen_addr()?;
        let r = &self.retention;
        if r.messages_min_days == 0
            || r.messages_min_days > r.messages_days
            || r.messages_days > r.messages_max_days
            || r.calls_min_days == 0
            || r.calls_min_days > r.calls_days
            || r.calls_days > r.calls_max_days
            || r.webhooks_min_days == 0
            || r.webhooks_min_days > r.webhooks_max_days
            || (self.webhooks.retention_days != 0
                && !(r.webhooks_min_days..=r.webhooks_max_days).contains(&self.webhooks.retention_days))
            || r.recordings_min_days == 0
            || r.recordings_min_days > r.recordings_days
            || r.recordings_days > r.recordings_max_days
            || r.sessions_min_hours == 0
            || r.sessions_min_hours > r.sessions_hours
            || r.sessions_hours > r.sessions_max_hours
            || r.audit_min_days == 0
            || (self.audit.retention_days != 0 && r.audit_min_days > self.audit.retention_days)
            || !(1..=10_000).contains(&r.batch)
            || r.grace_days == 0
        {
            return Err(ConfigError(
                "retention: need 1 <= messages_min_days <= messages_days <= messages_max_days, the same of \
                 calls_*, recordings_* and sessions_*_hours, webhooks_min_days <= webhooks.retention_days \
                 (unless 0) <= webhooks_max_days, 1 <= audit_min_days <= audit.retention_days (unless 0), \
                 grace_days >= 1 and batch 1 to 10000"
                    .into(),
            ));
        }
        if let Some(s3) = &self.recordings.s3 {
            if s3.bucket.is_empty() || s3.access_key_id.is_empty() || s3.secret_access_key.is_none() {
                return Err(ConfigError(
                    "recordings.s3 needs bucket, access_key_id and secret_access_key (or secret_access_key_file)"
                        .into(),
                ));
            }
            let plain = s3.endpoint.as_deref().is_some_and(|e| e.to_ascii_lowercase().starts_with("http://"));
            if plain && !s3.allow_http {
                return Err(ConfigError(
                    "recordings.s3.endpoint is http://: use https://, or set allow_http for a server on this host"
                        .into(),
                ));
            }
        }
        if !(1..=3600).contains(&self.keys.cache_secs) {
            return Err(ConfigError("keys.cache_secs must be 1 to 3600".into()));
        }
        if let Some(kek) = &self.keys.kek {
            // The message names the entry, never its key.
            palisade_seal::envelope::LocalKek::parse(kek.expose())
                .map_err(|e| ConfigError(format!("keys.kek: {e} (`palisade keys new-kek` prints a fresh entry)")))?;
        }
        self.sip.validate()?;
        self.mail.check_smtp_url()?;
        let e = &self.auth.email_code;
        if !(60..=3600).contains(&e.ttl_secs)
            || !(1..=10).contains(&e.max_tries)
            || !(60..=86_400).contains(&e.lockout_secs)
            || !(1..=100).contains(&e.max_sends)
            || !(60..=86_400).contains(&e.send_window_secs)
        {
            return Err(ConfigError(
                "auth.email_code: ttl_secs must be 60 to 3600, max_tries 1 to 10, lockout_secs 60 to 86400, \
                 max_sends 1 to 100 and send_window_secs 60 to 86400"
                    .into(),
            ));
        }
        let m = &self.auth.mfa;
        if !(30..=1800).contains(&m.challenge_ttl_secs)
            || !(1..=10).contains(&m.max_tries)
            || !(300..=86_400).contains(&m.lockout_secs)
            || !(30..=86_400).contains(&m.step_up_secs)
            || m.issuer.trim().is_empty()
            || m.issuer.contains(':')
            || m.issuer.len() > 64
        {
            return Err(ConfigError(
                "auth.mfa: challenge_ttl_secs must be 30 to 1800, max_tries 1 to 10, lockout_secs 300 to 86400, \
                 step_up_secs 30 to 86400, and issuer 1 to 64 characters without ':'"
                    .into(),
            ));
        }
        if self.mail.retry_schedule_secs.is_empty()
            || self.mail.retry_schedule_secs.len() > 50
            || self.mail.retry_schedule_secs.iter().any(|&d| d == 0 || d > 7 * 86_400)
            || self.mail.poll_ms == 0
            || !(1..=600).contains(&self.mail.send_timeout_secs)
        {
            return Err(ConfigError(
                "mail: retry_schedule_secs must list 1 to 50 delays of 1 s to 7 days, poll_ms be at least 1 and send_timeout_secs \
                 1 to 600"
                    .into(),
            ));
        }
        let n = &self.numbers;
        if !(60..=3600).contains(&n.code_ttl_secs)
            || !(1..=10).contains(&n.code_attempts)
            || n.codes_per_day == 0
            || n.codes_per_number_per_day == 0
            || n.tries_per_number_per_day == 0
        {
            return Err(ConfigError(
                "numbers: code_ttl_secs must be 60 to 3600, code_attempts 1 to 10, and codes_per_day, \
                 codes_per_number_per_day and tries_per_number_per_day at least 1"
                    .into(),
            ));
        }
        let st = &self.streams;
        if !(1..=3600).contains(&st.ticket_ttl_secs)
            || st.max_client_messages_per_sec == 0
            || !(1..=3600).contains(&st.playback_buffer_secs)
        {
            return Err(ConfigError(
                "streams: ticket_ttl_secs must be 1 to 3600, max_client_messages_per_sec at least 1, \
                 playback_buffer_secs 1 to 3600"
                    .into(),
            ));
        }
        if self.auth.access_token_ttl_secs == 0 || self.auth.access_token_ttl_secs > 24 * 3600 {
            return Err(ConfigError("auth.access_token_ttl_secs must be between 1 and 86400 (24 h)".into()));
        }
        match self.auth.credential_bus {
            CredentialBus::Redis if self.redis.url.is_none() => {
                return Err(ConfigError("auth.credential_bus = \"redis\" needs redis.url".into()))
            }
            CredentialBus::Postgres if !is_postgres(&self.database_url()) => {
                return Err(ConfigError("auth.credential_bus = \"postgres\" needs a PostgreSQL database.url".into()))
            }
            _ => {}
        }
        if self.auth.credential_cache_ttl_secs > 60 {
            return Err(ConfigError("auth.credential_cache_ttl_secs must be at most 60".into()));
        }
        if self.auth.clock_skew_secs > 300 {
            return Err(ConfigError("auth.clock_skew_secs must be at most 300 (5 min)".into()));
        }
        if let Some(s) = &self.auth.jwt_secret {
            if s.expose().len() < 32 {
                return Err(ConfigError("auth.jwt_secret must be at least 32 bytes".into()));
            }
        }
        let refresh = self.auth.refresh_token_ttl_secs;
        if refresh < self.auth.access_token_ttl_secs || refresh > 90 * 24 * 3600 {
            return Err(ConfigError(
                "auth.refresh_token_ttl_secs must be at least the access token lifetime and at most 90 days".into(),
            ));
        }
        match (&self.server.tls.cert_file, &self.server.tls.key_file) {
            (Some(cert), Some(key)) => {
                for (name, path) in [("server.tls.cert_file", cert), ("server.tls.key_file", key)] {
                    std::fs::File::open(path)
                        .map_err(|e| ConfigError(format!("{name}: cannot read {}: {e}", path.display())))?;
                }
            }
            (None, None) => {}
            _ => return Err(ConfigError("server.tls needs both cert_file and key_file".into())),
        }
        if !self.metrics.listen.is_empty() && self.metrics.listen.parse::<SocketAddr>().is_err() {
            return Err(ConfigError(format!(
                "metrics.listen `{}` is not an address like 127.0.0.1:9464 (or empty for none)",
                self.metrics.listen
            )));
        }
        let w = &self.waf;
        if w.violations_to_block == 0 || w.violation_window_secs == 0 || w.block_secs == 0 {
            return Err(ConfigError(
                "waf.violations_to_block, violation_window_secs and block_secs must be above 0".into(),
            ));
        }
        let l = &self.lockout;
        if l.login_failures == 0
            || l.account_login_failures == 0
            || l.account_spacing_secs == 0
            || l.credential_failures_per_ip == 0
            || l.window_secs == 0
            || l.lock_secs == 0
        {
            return Err(ConfigError(
                "lockout.login_failures, account_login_failures, account_spacing_secs, credential_failures_per_ip, \
                 window_secs and lock_secs must be above 0"
                    .into(),
            ));
        }
        if self.pricing.message_segment < 0 || self.pricing.call_minute < 0 {
            return Err(ConfigError("pricing.message_segment and pricing.call_minute must not be negative".into()));
        }
        if self.carrier.kind != "sandbox" {
            return Err(ConfigError(format!(
                "carrier.kind `{}` is unknown; the only carrier is `sandbox`",
                self.carrier.kind
            )));
        }
        let wh = &self.webhooks;
        if wh.retry_schedule_secs.is_empty() || wh.retry_schedule_secs.len() > 20 || wh.retry_schedule_secs[0] != 0 {
            return Err(ConfigError(
                "webhooks.retry_schedule_secs needs 1 to 20 entries (seconds before each attempt), the first 0: \
                 a delivery's first attempt is at once"
                    .into(),
            ));
        }
        if wh.attempt_timeout_secs == 0 || wh.connect_timeout_secs == 0 || wh.concurrency == 0 || wh.poll_ms == 0 {
            return Err(ConfigError(
                "webhooks.attempt_timeout_secs, connect_timeout_secs, concurrency and poll_ms must be above 0".into(),
            ));
        }
        if let Some(k) = &wh.encryption_key {
            if decode_key32(k.expose()).is_none() {
                return Err(ConfigError(
                    "webhooks.encryption_key must be 32 random bytes in base64 (`openssl rand -base64 32`)".into(),
                ));
            }
        }
        let sv = &self.server;
        if sv.max_connections == 0
            || sv.max_connections_per_address == 0
            || sv.header_timeout_secs == 0
            || sv.idle_timeout_secs == 0
            || sv.body_timeout_secs == 0
            || sv.tls.handshake_timeout_secs == 0
        {
            return Err(ConfigError(
                "server.max_connections, max_connections_per_address, header_timeout_secs, idle_timeout_secs, \
                 body_timeout_secs and tls.handshake_timeout_secs must be above 0"
                    .into(),
            ));
        }
        if self.limits.unauthenticated_body_reads == 0 || self.limits.unauthenticated_body_secs == 0 {
            return Err(ConfigError(
                "limits.unauthenticated_body_reads and limits.unauthenticated_body_secs must be above 0".into(),
            ));
        }
        self.check_oidc()?;
        if !(60..=43_200).contains(&self.admin.operator_session_secs) {
            return Err(ConfigError("admin.operator_session_secs must be 60 to 43200".into()));
        }
        for (name, p) in &self.inbound.providers {
            let ok_name = !name.is_empty()
                && name.len() <= 40
                && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
            if !ok_name {
                return Err(ConfigError(format!("inbound.providers.{name}: names are 1 to 40 of a-z, 0-9, - and _")));
            }
            match &p.secret {
                Some(s) if s.expose().len() >= 16 => {}
                _ => {
                    return Err(ConfigError(format!(
                        "inbound.providers.{name}: set secret or secret_file (at least 16 characters)"
                    )))
                }
            }
        }
        let o = &self.audit.origin;
        if o.is_empty() || o.len() > 100 || !o.chars().all(|c| c.is_ascii_graphic()) {
            return Err(ConfigError("audit.origin must be 1 to 100 printable ASCII characters without spaces".into()));
        }
        for origin in &self.cors.allowed_origins {
            let o = origin.trim();
            let ok = o == "*"
                || (o.starts_with("https://") || o.starts_with("http://")) && !o.ends_with('/') && o.is_ascii();
            if !ok {
                return Err(ConfigError(format!(
                    "cors.allowed_origins: `{o}` is not an origin like https://app.example.com"
                )));
            }
        }
        self.redis.validate()?;
        if self.mode == Mode::Production {
            self.production_refusals()?;
        }
        Ok(())
    }

    fn production_refusals(&self) -> Result<(), ConfigError> {
        let refuse = |m: &str| Err(ConfigError(format!("refusing to start in production: {m}")));
        match &self.admin.master_key {
            None => return refuse("no master key; set PALISADE_ADMIN__MASTER_KEY or admin.master_key_file"),
            Some(_) if self.admin.master_key_disabled() => {}
            Some(k) if is_known_default(k.expose()) || !k.expose().starts_with("mk_") || k.expose().len() < 46 => {
                return refuse("the master key is a known default or too weak; generate one with `palisade admin master-key rotate`")
            }
            _ => {}
        }
        match (&self.auth.jwt_private_key_file, &self.auth.jwt_secret) {
            (None, None) => {
                return refuse("no token signing key; set auth.jwt_private_key_file (Ed25519 PEM) or auth.jwt_secret")
            }
            (None, Some(s)) if is_known_default(s.expose()) => {
                return refuse("auth.jwt_secret is a known default; generate a random one")
            }
            _ => {}
        }
        if self.recordings.s3.as_ref().is_some_and(|s3| s3.allow_http) {
            return refuse("recordings.s3.allow_http sends recordings' requests in clear; use an https endpoint");
        }
        if self.audit.signing_key_file.is_none() {
            return refuse("no audit signing key; set audit.signing_key_file (Ed25519 PEM, `palisade keys generate-jwt-key` makes one)");
        }
        if self.webhooks.encryption_key.is_none() {
            return refuse("no webhooks.encryption_key (32 random bytes, base64) to encrypt endpoint secrets at rest");
        }
        if self.keys.kek.is_none() {
            return refuse("no keys.kek (a line v1:<32 random bytes, base64>) to wrap the tenants' data keys");
        }
        if self.cors.allowed_origins.iter().any(|o| o.trim() == "*") {
            return refuse("cors.allowed_origins contains `*`; list the exact origins");
        }
        if let Some(url) = &self.database.url {
            if is_postgres(url.expose()) && !postgres_url_is_safe(url.expose()) {
                return refuse("database.url must use sslmode=require or verify-full (or a unix socket)");
            }
        }
        // TLS, or a plaintext relay on this host by explicit choice, is
        // checked in every mode (Config::validate).
        if self.mail.smtp_url.is_none() {
            return refuse("mail.smtp_url is not set; production sends real mail (smtps://… or smtp://…?tls=required)");
        }
        if let Some(url) = &self.redis.url {
            if redis_url_info(url.expose()).is_ok_and(|i| !i.tls && !i.loopback) {
                return refuse("redis.url must use TLS (rediss://) unless Redis is on this host");
            }
        }
        if !self.tls_enabled() && self.server.trust_proxy.is_empty() {
            return refuse(
                "configure server.tls (cert_file, key_file) or server.trust_proxy for the TLS-terminating proxy",
            );
        }
        Ok(())
    }

    pub fn tls_enabled(&self) -> bool {
        self.server.tls.cert_file.is_some() || self.server.tls.key_file.is_some()
    }

    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.server.listen.parse().map_err(|_| {
            ConfigError(format!("server.listen `{}` is not an address like 127.0.0.1:8080", self.server.listen))
        })
    }

    /// The database URL, defaulting to SQLite inside the data dir.
    pub fn database_url(&self) -> String {
        match &self.database.url {
            Some(u) if !u.expose().is_empty() => u.expose().to_owned(),
            _ => format!("sqlite://{}", self.server.data_dir.join("palisade.db").display()),
        }
    }
}

impl Redis {
    fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.url {
            // The message never repeats the URL: it may hold a password.
            redis_url_info(url.expose()).map_err(|m| ConfigError(format!("redis.url: {m}")))?;
        }
        let p = &self.key_prefix;
        let ok = !p.is_empty()
            && p.len() <= 64
            && p.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'));
        if !ok {
            return Err(ConfigError("redis.key_prefix must be 1 to 64 of A-Z, a-z, 0-9, -, _, . and :".into()));
        }
        if !(1..=10_000).contains(&self.timeout_ms)
            || !(1..=60_000).contains(&self.connect_timeout_ms)
            || !(1..=60_000).contains(&self.retry_ms)
        {
            return Err(ConfigError(
                "redis.timeout_ms must be 1 to 10000, connect_timeout_ms and retry_ms 1 to 60000".into(),
            ));
        }
        Ok(())
    }
}

/// What a Redis URL says about its transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RedisUrlInfo {
    pub tls: bool,
    pub loopback: bool,
}

/// Checks a Redis URL's shape: `redis://` or `rediss://`, a host, an
/// optional port and database number. Read with the URL parser the Redis
/// client uses, so the host judged here is the host it connects to. Errors
/// never include the URL.
pub fn redis_url_info(url: &str) -> Result<RedisUrlInfo, &'static str> {
    let u = url::Url::parse(url).map_err(|_| "not a URL")?;
    let tls = match u.scheme() {
        "rediss" => true,
        "redis" => false,
        _ => return Err("must start with redis:// or rediss:// (TLS)"),
    };
    // `#insecure` turns certificate checks off in the client; a fragment or
    // query means nothing else to it.
    if u.fragment().is_some() || u.query().is_some() {
        return Err("no ?query or #fragment (the client would read `#insecure` as: do not verify)");
    }
    let host = u.host_str().filter(|h| !h.is_empty()).ok_or("no host")?;
    if u.port() == Some(0) {
        return Err("the port must be a number from 1 to 65535");
    }
    let path = u.path().trim_start_matches('/');
    if !path.is_empty() && path.parse::<u16>().is_err() {
        return Err("the path must be a database number, like /0");
    }
    Ok(RedisUrlInfo { tls, loopback: is_loopback_name(host) })
}

/// `localhost` or a loopback address (IPv6 with or without brackets).
fn is_loopback_name(host: &str) -> bool {
    let bare = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn env_provider() -> Env {
    // Only `SECTION__KEY` and `MODE` are config; other PALISADE_* variables
    // (e.g. the test suite's) are not.
    Env::prefixed("PALISADE_")
        .filter(|k| k.as_str().contains("__") || k.as_str().eq_ignore_ascii_case("mode"))
        .split("__")
}

fn is_known_default(s: &str) -> bool {
    KNOWN_DEV_SECRETS.iter().any(|d| d.eq_ignore_ascii_case(s.trim()))
}

/// A 32-byte key written in standard base64.
pub fn decode_key32(s: &str) -> Option<[u8; 32]> {
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD.decode(s.trim()).ok()?;
    bytes.try_into().ok()
}

pub fn is_postgres(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// TLS to the database is required unless the connection stays on this
/// machine: a unix socket or a loopback address, where there is no network
/// to protect. The URL is read as the database client reads it (decoded
/// query keys, the last of a repeated key, `host=` over the authority), and
/// anything that could make the two disagree is refused: a fragment,
/// `hostaddr`, several hosts, a host left to the environment.
pub fn postgres_url_is_safe(url: &str) -> bool {
    let Ok(u) = url::Url::parse(url) else { return false };
    if u.fragment().is_some() {
        return false;
    }
    let (mut host_param, mut tls) = (None, false);
    for (k, v) in u.query_pairs() {
        match &*k {
            "sslmode" | "ssl-mode" => tls = matches!(&*v, "require" | "verify-full" | "verify-ca"),
            "host" => host_param = Some(v.into_owned()),
            "hostaddr" => return false,
            _ => {}
        }
    }
    if tls {
        return true;
    }
    let host = match host_param {
        Some(h) => h,
        None => {
            let raw = u.host_str().unwrap_or("");
            match url::form_urlencoded::parse(format!("h={raw}").as_bytes()).next() {
                Some((_, h)) => h.into_owned(),
                None => String::new(),
            }
        }
    };
    if host.is_empty() {
        // The client takes the host from PGHOST, else the local default.
        return std::env::var("PGHOST").map_or(true, |h| is_local_host(&h)) && std::env::var_os("PGHOSTADDR").is_none();
    }
    is_local_host(&host)
}

/// A unix socket path, or a loopback name or address.
fn is_local_host(host: &str) -> bool {
    host.starts_with('/') || is_loopback_name(host)
}

#[cfg(test)]
mod tests;
