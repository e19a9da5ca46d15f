use std::sync::Arc;

use ipnet::IpNet;
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
    /// SHA-256 of the master key; the key itself is never kept.
    pub master_key_hash: [u8; 32],
    pub mailer: Mailer,
    pub clock: Arc<dyn Clock>,
    pub trusted_proxies: Vec<IpNet>,
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
}
