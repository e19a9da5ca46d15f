//! The SIP edge (`[sip]`, env `PALISADE_SIP__*`). Off unless a listener is
//! set. See docs/sip.md.

use std::net::SocketAddr;
use std::path::PathBuf;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Sip {
    /// `ip:port` listeners; each unset one is off.
    pub udp_listen: Option<String>,
    pub tcp_listen: Option<String>,
    pub tls_listen: Option<String>,
    /// PEM files for the TLS listener.
    pub tls_cert_file: Option<PathBuf>,
    pub tls_key_file: Option<PathBuf>,
    /// CA whose client certificates are accepted (optional).
    pub tls_client_ca_file: Option<PathBuf>,
    /// With a client CA: refuse clients without a certificate.
    pub tls_require_client_cert: bool,
    /// Sources served over UDP and TCP; any other gets no answer. TLS
    /// serves everyone.
    #[serde(deserialize_with = "crate::nets")]
    pub plaintext_allowed_cidrs: Vec<IpNet>,
    /// Our name in `Via`, `Contact` and `Warning` headers.
    pub public_host: String,
    /// Realms are `<tenant id>.<domain>`.
    pub domain: String,
    /// Offered in this order: `SHA-256`, `MD5`.
    pub digest_algorithms: Vec<String>,
    pub nonce_ttl_secs: u64,
    pub min_expires_secs: u32,
    pub max_expires_secs: u32,
    pub default_expires_secs: u32,
    pub max_contacts_per_identity: u32,
    /// Bounds on one message and on what one source may hold.
    pub max_message_bytes: usize,
    pub max_headers: usize,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    pub max_connections_per_address: usize,
    pub tls_handshake_timeout_ms: u64,
    pub idle_timeout_secs: u64,
    pub max_transactions_per_source: usize,
    pub pike: Pike,
    pub bruteforce: BruteForce,
    /// How often each instance rereads the trunks (a change made on one
    /// reaches every instance within it).
    pub trunk_reload_ms: u64,
    /// How long a call through a trunk may ring before we give up.
    pub trunk_ring_timeout_secs: u64,
    /// CAs whose certificates trunks reached over TLS may present (PEM);
    /// without it, TLS trunks cannot be called.
    pub trunk_ca_file: Option<PathBuf>,
    /// The longest a call through the edge may last (a backstop when a BYE
    /// is lost).
    pub max_call_secs: u64,
    /// Calls coming in from trunks relayed at once, in all and per identity.
    pub max_inbound_calls: usize,
    pub max_inbound_calls_per_identity: usize,
    /// STIR/SHAKEN: signing calls going out, verifying calls coming in.
    pub stir: Stir,
}

/// STIR/SHAKEN (`[sip.stir]`, env `PALISADE_SIP__STIR__*`). Keys and
/// certificates come from here only, never from a tenant.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Stir {
    /// Our signing key: an ECDSA P-256 key, PKCS#8 PEM, as a file or as
    /// the PEM text itself (`signing_key`, e.g. `${STIR_KEY}`).
    pub signing_key_file: Option<PathBuf>,
    pub signing_key: Option<crate::Secret>,
    /// Where our certificate chain is served (`x5u` and `info`), https.
    pub certificate_url: Option<String>,
    /// The STI-CA roots whose certificates we believe (PEM). Without them no
    /// inbound PASSporT can pass.
    pub trust_anchors_file: Option<PathBuf>,
    /// How far a PASSporT's `iat` may be from now.
    pub iat_window_secs: u64,
    /// Fetched certificates are kept this long.
    pub cert_cache_secs: u64,
    pub cert_max_bytes: usize,
    pub cert_fetch_timeout_ms: u64,
    /// Non-public networks certificates may be fetched from anyway (the
    /// SSRF guard refuses them otherwise).
    #[serde(deserialize_with = "crate::nets")]
    pub allowed_private_cidrs: Vec<IpNet>,
    /// The only hosts certificates are fetched from (your STI-CAs' and
    /// carriers' certificate repositories); empty: any public host.
    pub cert_hosts: Vec<String>,
    /// Certificate fetches in flight at once per instance.
    pub max_concurrent_fetches: usize,
}

impl Default for Stir {
    fn default() -> Self {
        Stir {
            signing_key_file: None,
            signing_key: None,
            certificate_url: None,
            trust_anchors_file: None,
            iat_window_secs: 60,
            cert_cache_secs: 3600,
            cert_max_bytes: 16 * 1024,
            cert_fetch_timeout_ms: 2000,
            allowed_private_cidrs: Vec::new(),
            cert_hosts: Vec::new(),
            max_concurrent_fetches: 16,
        }
    }
}

impl Stir {
    /// Whether calls going out are signed.
    pub fn signs(&self) -> bool {
        self.signing_key_file.is_some() || self.signing_key.is_some()
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.signs() != self.certificate_url.is_some() {
            return Err(ConfigError(
                "sip.stir: a signing key needs certificate_url (the https URL of its certificate chain), and \
                 certificate_url needs a signing key"
                    .into(),
            ));
        }
        if !(10..=600).contains(&self.iat_window_secs)
            || !(60..=86_400).contains(&self.cert_cache_secs)
            || !(1024..=1024 * 1024).contains(&self.cert_max_bytes)
            || !(100..=30_000).contains(&self.cert_fetch_timeout_ms)
            || !(1..=1024).contains(&self.max_concurrent_fetches)
        {
            return Err(ConfigError(
                "sip.stir: iat_window_secs must be 10 to 600, cert_cache_secs 60 to 86400, cert_max_bytes 1024 to \
                 1048576, cert_fetch_timeout_ms 100 to 30000 and max_concurrent_fetches 1 to 1024"
                    .into(),
            ));
        }
        Ok(())
    }
}

impl Default for Sip {
    fn default() -> Self {
        Self {
            udp_listen: None,
            tcp_listen: None,
            tls_listen: None,
            tls_cert_file: None,
            tls_key_file: None,
            tls_client_ca_file: None,
            tls_require_client_cert: false,
            plaintext_allowed_cidrs: vec![
                "127.0.0.1/32".parse().unwrap_or_default(),
                "::1/128".parse().unwrap_or_default(),
            ],
            public_host: "localhost".into(),
            domain: "sip.palisade.invalid".into(),
            digest_algorithms: vec!["SHA-256".into(), "MD5".into()],
            nonce_ttl_secs: 300,
            min_expires_secs: 60,
            max_expires_secs: 3600,
            default_expires_secs: 3600,
            max_contacts_per_identity: 5,
            max_message_bytes: 8192,
            max_headers: 64,
            max_header_bytes: 2048,
            max_connections: 4096,
            max_connections_per_address: 16,
            tls_handshake_timeout_ms: 5000,
            idle_timeout_secs: 180,
            max_transactions_per_source: 64,
            pike: Pike::default(),
            bruteforce: BruteForce::default(),
            trunk_reload_ms: 2000,
            trunk_ring_timeout_secs: 60,
            trunk_ca_file: None,
            max_call_secs: 14_400,
            max_inbound_calls: 1000,
            max_inbound_calls_per_identity: 8,
            stir: Stir::default(),
        }
    }
}

/// The flood guard: more than `max_requests` in `window_ms` from one
/// address, and it gets no answer until it slows down.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Pike {
    pub window_ms: u64,
    pub max_requests: u32,
    /// From a trunk's source address (a carrier's traffic is many callers').
    pub trunk_max_requests: u32,
}

impl Default for Pike {
    fn default() -> Self {
        Self { window_ms: 2000, max_requests: 30, trunk_max_requests: 3000 }
    }
}

/// Failed digest authentications: `threshold` from one address block it
/// for `block_secs`, each further block of the day `escalation_factor`
/// times longer up to `max_block_secs`; `per_username_threshold` failures
/// for one username in `per_username_window_secs` block the username.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BruteForce {
    pub threshold: u32,
    pub block_secs: u64,
    pub escalation_factor: u32,
    pub max_block_secs: u64,
    pub per_username_threshold: u32,
    pub per_username_window_secs: u64,
}

impl Default for BruteForce {
    fn default() -> Self {
        Self {
            threshold: 5,
            block_secs: 900,
            escalation_factor: 2,
            max_block_secs: 86_400,
            per_username_threshold: 20,
            per_username_window_secs: 900,
        }
    }
}

impl Sip {
    /// Whether any listener is configured.
    pub fn enabled(&self) -> bool {
        self.udp_listen.is_some() || self.tcp_listen.is_some() || self.tls_listen.is_some()
    }

    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (name, v) in
            [("udp_listen", &self.udp_listen), ("tcp_listen", &self.tcp_listen), ("tls_listen", &self.tls_listen)]
        {
            if let Some(v) = v {
                v.parse::<SocketAddr>()
                    .map_err(|_| ConfigError(format!("sip.{name} must be ip:port (e.g. 0.0.0.0:5060), not {v:?}")))?;
            }
        }
        if self.tls_listen.is_some() && (self.tls_cert_file.is_none() || self.tls_key_file.is_none()) {
            return Err(ConfigError("sip.tls_listen needs sip.tls_cert_file and sip.tls_key_file".into()));
        }
        if self.tls_require_client_cert && self.tls_client_ca_file.is_none() {
            return Err(ConfigError("sip.tls_require_client_cert needs sip.tls_client_ca_file".into()));
        }
        let host_ok = |h: &str| {
            !h.is_empty() && h.len() <= 253 && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b))
        };
        if !host_ok(&self.public_host) || !host_ok(&self.domain) || self.domain.contains(':') {
            return Err(ConfigError(
                "sip.public_host and sip.domain must be host names (letters, digits, '-' and '.')".into(),
            ));
        }
        let mut seen = Vec::new();
        for a in &self.digest_algorithms {
            if !(a == "SHA-256" || a == "MD5") || seen.contains(&a) {
                return Err(ConfigError(format!(
                    "sip.digest_algorithms: {a:?} is not \"SHA-256\" or \"MD5\", or is listed twice"
                )));
            }
            seen.push(a);
        }
        if seen.is_empty() {
            return Err(ConfigError("sip.digest_algorithms must name at least one of \"SHA-256\", \"MD5\"".into()));
        }
        if !(30..=3600).contains(&self.nonce_ttl_secs) {
            return Err(ConfigError("sip.nonce_ttl_secs must be 30 to 3600".into()));
        }
        if self.min_expires_secs == 0
            || self.min_expires_secs > self.default_expires_secs
            || self.default_expires_secs > self.max_expires_secs
            || self.max_expires_secs > 86_400
        {
            return Err(ConfigError(
                "sip: expects 1 <= min_expires_secs <= default_expires_secs <= max_expires_secs <= 86400".into(),
            ));
        }
        if !(100..=60_000).contains(&self.trunk_reload_ms) || !(5..=600).contains(&self.trunk_ring_timeout_secs) {
            return Err(ConfigError(
                "sip: trunk_reload_ms must be 100 to 60000 and trunk_ring_timeout_secs 5 to 600".into(),
            ));
        }
        if !(60..=86_400).contains(&self.max_call_secs)
            || self.max_inbound_calls == 0
            || self.max_inbound_calls_per_identity == 0
            || self.pike.trunk_max_requests == 0
        {
            return Err(ConfigError(
                "sip: max_call_secs must be 60 to 86400; max_inbound_calls, max_inbound_calls_per_identity and \
                 pike.trunk_max_requests at least 1"
                    .into(),
            ));
        }
        let b = &self.bruteforce;
        if self.max_contacts_per_identity == 0
            || !(512..=65_535).contains(&self.max_message_bytes)
            || self.max_headers == 0
            || self.max_header_bytes < 128
            || self.max_connections == 0
            || self.max_connections_per_address == 0
            || self.tls_handshake_timeout_ms == 0
            || self.idle_timeout_secs == 0
            || self.max_transactions_per_source == 0
            || self.pike.window_ms == 0
            || self.pike.max_requests == 0
            || b.threshold == 0
            || b.block_secs == 0
            || b.escalation_factor == 0
            || b.max_block_secs < b.block_secs
            || b.per_username_threshold == 0
            || b.per_username_window_secs == 0
        {
            return Err(ConfigError(
                "sip: limits must be at least 1 (max_message_bytes 512 to 65535, max_header_bytes at least 128, \
                 bruteforce.max_block_secs at least bruteforce.block_secs)"
                    .into(),
            ));
        }
        self.stir.validate()
    }
}
