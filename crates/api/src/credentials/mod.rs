//! Verified credentials kept in memory ([`cache`]) and the changes that
//! drop them, on this instance and every other ([`notify`]).

pub mod cache;
pub mod notify;

use std::sync::Arc;

use palisade_config::Config;
use palisade_store::{Db, Dialect};

pub use cache::{CredentialCache, Key, Kind, Ticket};
pub use notify::Invalidations;

use crate::state::AbortOnDrop;

/// The most memory the cache takes, whatever `credential_cache_max_entries` says.
const MAX_BYTES: usize = 128 << 20;

/// The cache, and what keeps it true.
pub struct Credentials {
    pub cache: Arc<CredentialCache>,
    /// Ends with the services.
    _listener: Option<AbortOnDrop>,
}

impl Credentials {
    /// The cache configured by `auth.credential_cache_*`, told of every
    /// credential change this instance commits (through the store's hook)
    /// and of the other instances': through `shared` when given (Redis
    /// pub/sub, `auth.credential_bus = "redis"`), else PostgreSQL `LISTEN`.
    pub fn start(
        config: &Config,
        db: &Db,
        metrics: &crate::metrics::Metrics,
        shared: Option<Arc<dyn Invalidations>>,
    ) -> Credentials {
        let a = &config.auth;
        let cache = Arc::new(CredentialCache::new(
            a.credential_cache_ttl_secs,
            a.credential_cache_max_entries,
            MAX_BYTES,
            metrics.credential_cache_counters(),
        ));
        let bus: Arc<dyn Invalidations> = match (shared, db.dialect()) {
            (Some(bus), _) => bus,
            (None, Dialect::Postgres) if a.credential_cache_listen => {
                Arc::new(notify::Postgres { url: config.database_url() })
            }
            _ => Arc::new(notify::InProcess),
        };
        Credentials::with_bus(cache, db, bus)
    }

    /// With another bus (tests; a shared bus later).
    pub fn with_bus(cache: Arc<CredentialCache>, db: &Db, bus: Arc<dyn Invalidations>) -> Credentials {
        let (local, published) = (cache.clone(), bus.clone());
        db.on_credential_change(Arc::new(move |tenant: &str| {
            local.invalidate_named(tenant);
            published.publish(tenant);
        }));
        let listener = if cache.enabled() { bus.subscribe(cache.clone()).map(AbortOnDrop) } else { None };
        Credentials { cache, _listener: listener }
    }
}
