//! How credential changes reach every instance's cache.
//!
//! The instance that commits a change drops its own entries at once (the
//! store's hook, after the commit). [`Invalidations`] carries the change to
//! the others: in process (one instance), PostgreSQL `LISTEN`/`NOTIFY`, or
//! another bus behind the same trait.

use std::sync::Arc;
use std::time::Duration;

use super::cache::CredentialCache;

/// The channel migration 0020's triggers notify, with the tenant as payload.
pub const CHANNEL: &str = "palisade_credentials";

/// A bus between instances for "this tenant's credentials changed".
pub trait Invalidations: Send + Sync + 'static {
    /// Tells the other instances, after the change committed.
    fn publish(&self, tenant: &str);

    /// Delivers the other instances' changes to `cache` until the task is
    /// aborted. While it cannot hear them it keeps the cache off
    /// ([`CredentialCache::set_live`]), and it starts again from empty
    /// whenever messages may have been lost. `None`: nothing to hear.
    fn subscribe(self: Arc<Self>, cache: Arc<CredentialCache>) -> Option<tokio::task::JoinHandle<()>>;
}

/// One instance: nobody else changes its credentials.
pub struct InProcess;

impl Invalidations for InProcess {
    fn publish(&self, _tenant: &str) {}

    fn subscribe(self: Arc<Self>, _cache: Arc<CredentialCache>) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}

/// PostgreSQL: the database itself announces every committed change (the
/// triggers of migration 0020), so `publish` has nothing to add and no
/// write path can leave one out; each instance listens.
pub struct Postgres {
    pub url: String,
}

impl Invalidations for Postgres {
    fn publish(&self, _tenant: &str) {}

    fn subscribe(self: Arc<Self>, cache: Arc<CredentialCache>) -> Option<tokio::task::JoinHandle<()>> {
        // Off until the first LISTEN is in place.
        cache.set_live(false);
        Some(tokio::spawn(async move { self.listen(cache).await }))
    }
}

impl Postgres {
    async fn listen(&self, cache: Arc<CredentialCache>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            match self.session(&cache).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => {
                    tracing::warn!(error = %e, "credential invalidations: listener lost; cache off until it is back")
                }
            }
            cache.set_live(false);
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// One connection's worth: returns when it is lost.
    async fn session(&self, cache: &CredentialCache) -> Result<(), sqlx::Error> {
        let mut listener = sqlx::postgres::PgListener::connect(&self.url).await?;
        listener.listen(CHANNEL).await?;
        // Whatever changed while nobody listened is unknown: start empty.
        cache.set_live(true);
        tracing::debug!("credential invalidations: listening");
        // `try_recv` answers None when the connection dropped (messages may
        // be lost): start over on a fresh one rather than reconnect quietly.
        while let Some(n) = listener.try_recv().await? {
            cache.invalidate_named(n.payload());
        }
        Ok(())
    }
}
