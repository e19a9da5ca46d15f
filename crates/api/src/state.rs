use std::sync::Arc;

use palisade_audit::log::AuditLog;
use palisade_auth::JwtKeys;
use palisade_config::Config;
use palisade_core::Clock;
use palisade_mail::Mailer;
use palisade_store::Db;

/// Everything a handler may use. Cheap to clone.
#[derive(Clone)]
pub struct AppState(pub Arc<Services>);

pub struct Services {
    pub db: Db,
    pub config: Config,
    pub jwt: JwtKeys,
    pub master_key: MasterKey,
    pub mailer: Mailer,
    pub clock: Arc<dyn Clock>,
    pub audit_log: Arc<AuditLog>,
    pub abuse: crate::abuse::Abuse,
    /// Verified credentials kept in memory, and what drops them.
    pub credentials: crate::credentials::Credentials,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub argon2: crate::ops::Argon2Slots,
    /// Read slots for bodies sent before authentication.
    pub body_reads: crate::body::UnauthenticatedReads,
    pub carrier: Arc<dyn palisade_comms::Carrier>,
    /// The same carrier's SIP side (palisade-sip's trunk carrier), handed to
    /// the SIP edge when it starts; opaque here, HTTP has no business with it.
    pub sip_carrier: Arc<dyn std::any::Any + Send + Sync>,
    pub reports: crate::reports::Reports,
    /// Messages being handed to the carrier: a graceful stop waits for them
    /// (and then for their reports to be written).
    pub deliveries: tokio_util::task::TaskTracker,
    /// The only way out to tenants' webhook URLs (SSRF-guarded).
    pub webhook_client: Arc<palisade_webhooks::client::WebhookClient>,
    /// Seals endpoint secrets at rest.
    pub sealer: Arc<palisade_seal::Sealer>,
    /// Tenants' data keys: message bodies and stored answers are sealed
    /// under them.
    pub keys: Arc<palisade_keys::Keyring>,
    /// SIP digest authentication and its abuse rules (the SIP edge's).
    pub sip_auth: Arc<palisade_voice::auth::DigestAuth>,
    /// Keys the hashes of codes that prove control of a number.
    pub number_codes: palisade_auth::code::CodeKey,
    /// Keys the hashes of sign-in codes sent by mail.
    pub email_codes: palisade_auth::code::CodeKey,
    /// Passkeys' relying party, when it can be named (see `auth.webauthn`).
    pub webauthn: Option<Arc<webauthn_rs::Webauthn>>,
    /// The single sign-on providers, as configured.
    pub oidc: Arc<[Arc<palisade_oidc::Provider>]>,
    /// Keys recovery codes' hashes (second factors).
    pub recovery_codes: palisade_auth::code::CodeKey,
    /// Wakes the delivery worker when something was queued.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    pub webhook_worker: AbortOnDrop,
    /// Admission of messages and calls, and the calls' lives after it. Its
    /// `instance_id` is this running instance: it drives the calls it
    /// placed (see [`crate::recovery`]).
    pub admission: Arc<palisade_admission::Service>,
    /// Open WebSocket streams, counted against their caps.
    pub streams: crate::routes::streams::OpenStreams,
}

/// A background task that ends with the services that started it.
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Where the master key's hash lives; the key itself is never kept.
pub enum MasterKey {
    /// SHA-256 of the key from configuration.
    Configured([u8; 32]),
    /// The generated key's hash in the database, read on each use so a
    /// rotation takes effect at once on every instance.
    Stored,
    /// `admin.master_key = "disabled"`: operator accounts only.
    Disabled,
}

impl std::ops::Deref for AppState {
    type Target = Services;
    fn deref(&self) -> &Services {
        &self.0
    }
}

impl AppState {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    /// Whether identities send and call only with a verified number.
    pub fn requires_verified_numbers(&self) -> bool {
        self.admission.verified_numbers.applies()
    }
}
