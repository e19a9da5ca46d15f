//! Tenants' data keys: each tenant's own, wrapped by the key-encryption key
//! (KEK) from configuration, made on first use, unwrapped once and kept in
//! memory for a short while, rotated and destroyed by the operator.
//!
//! The crypto is `palisade_seal::envelope`; the rows are
//! `palisade_store::tenant_keys`; sealing a column is the store's, which
//! takes a tenant's [`TenantKeys`] with its scope.

pub mod reseal;
pub mod rotate;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use palisade_core::TenantScope;
use palisade_seal::envelope::random_key;
pub use palisade_seal::envelope::{Kek, KeyError, LocalKek, TenantKeys};
use palisade_store::{Db, StoreError};

/// How long an instance keeps a tenant's unwrapped keys: a new data key
/// version or an erasure made on another instance applies within it.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// Tenants kept in memory at most; past it the cache starts again.
const MAX_TENANTS: usize = 100_000;

/// How long a new data key version only opens before it seals: longer than
/// any instance keeps a tenant's keys (`keys.cache_secs` is at most an
/// hour, whatever each instance was given), plus slack for clocks.
pub const SETTLE_MS: i64 = 3600 * 1000 + 5_000;

pub struct Keyring {
    kek: Arc<dyn Kek>,
    db: Db,
    ttl: Duration,
    cache: Mutex<HashMap<String, (Arc<TenantKeys>, Instant)>>,
}

impl Keyring {
    pub fn new(kek: Arc<dyn Kek>, db: Db, ttl: Duration) -> Keyring {
        Keyring { kek, db, ttl, cache: Mutex::new(HashMap::new()) }
    }

    pub fn kek(&self) -> &dyn Kek {
        self.kek.as_ref()
    }

    /// The tenant's keys, its first one made if it has none. Refused
    /// (`tenant_erased`) for an erased tenant: its keys are gone for good.
    pub async fn of(&self, scope: &TenantScope) -> palisade_store::Result<Arc<TenantKeys>> {
        let tenant = scope.tenant_id().to_string();
        if let Some((keys, at)) = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&tenant) {
            if at.elapsed() < self.ttl {
                return Ok(keys.clone());
            }
        }
        let mut rows = palisade_store::tenant_keys::list(self.db.reader(), scope).await?;
        if rows.is_empty() {
            if palisade_store::tenant_keys::erased_at(self.db.reader(), scope).await?.is_some() {
                return Err(StoreError::Refused("tenant_erased"));
            }
            self.add_version(scope, 1).await?;
            // Ours or a racing instance's: the row is the one truth.
            rows = palisade_store::tenant_keys::list(self.db.reader(), scope).await?;
            if rows.is_empty() {
                return Err(StoreError::Refused("tenant_erased"));
            }
        }
        let keys = Arc::new(self.unwrap_rows(&tenant, &rows)?);
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if cache.len() >= MAX_TENANTS {
            cache.clear();
        }
        cache.insert(tenant, (keys.clone(), Instant::now()));
        Ok(keys)
    }

    /// Adds data key `version` for the tenant (no-op when it exists; false
    /// then, or when the tenant is erased or gone).
    pub(crate) async fn add_version(&self, scope: &TenantScope, version: u32) -> palisade_store::Result<bool> {
        let tenant = scope.tenant_id().to_string();
        // Under a KEK version every running instance holds (during a rolling
        // restart that adds one, the older), so every instance opens it.
        let wrap_with = self.common_kek_version().await?;
        let (kek_version, wrapped) = self
            .kek
            .wrap_with(wrap_with, &tenant, version, &random_key())
            .map_err(|e| StoreError::Setup(format!("KEK: {e}")))?;
        let mut tx = self.db.begin().await?;
        // Waits for an erasure under way: it updates the tenant row first.
        palisade_store::tenants::lock(&mut *tx, scope).await?;
        let added = palisade_store::tenant_keys::add(
            &mut *tx,
            scope,
            i64::from(version),
            i64::from(kek_version),
            &B64.encode(wrapped),
            now_ms(),
        )
        .await?;
        tx.commit().await?;
        self.forget(&tenant);
        Ok(added)
    }

    fn unwrap_rows(
        &self,
        tenant: &str,
        rows: &[palisade_store::tenant_keys::KeyRow],
    ) -> palisade_store::Result<TenantKeys> {
        let mut keys = Vec::with_capacity(rows.len());
        for r in rows {
            let corrupt = |e: String| StoreError::Corrupt(format!("data key v{} of tenant {tenant}: {e}", r.version));
            let version = u32::try_from(r.version).map_err(|e| corrupt(e.to_string()))?;
            let kek_version = u32::try_from(r.kek_version).map_err(|e| corrupt(e.to_string()))?;
            let wrapped = B64.decode(&r.wrapped).map_err(|e| corrupt(e.to_string()))?;
            let key = self.kek.unwrap(kek_version, tenant, version, &wrapped).map_err(|e| corrupt(e.to_string()))?;
            keys.push((version, key, r.created_at));
        }
        // A version seals only once every instance can have loaded it (its
        // cache of the tenant's keys lasts `ttl`): until then, the one
        // before it seals, and the new one only opens.
        let settled = now_ms() - SETTLE_MS;
        let oldest = keys.iter().map(|(v, _, _)| *v).min().unwrap_or(0);
        let sealing = keys.iter().filter(|(_, _, at)| *at <= settled).map(|(v, _, _)| *v).max().unwrap_or(oldest);
        Ok(TenantKeys::new(tenant, keys.into_iter().map(|(v, k, _)| (v, k))).sealing_with(sealing))
    }

    /// The newest KEK version this instance and every other running one
    /// hold (this instance's newest when it runs alone).
    async fn common_kek_version(&self) -> palisade_store::Result<u32> {
        let proof = palisade_core::principal::SysadminProof::verified();
        let since = now_ms() - palisade_store::recovery::INSTANCE_GONE_MS;
        let live = palisade_store::recovery::kek_versions_of_live(self.db.reader(), &proof, since).await?;
        let mut mine = self.kek.versions();
        mine.retain(|v| {
            live.iter().all(|(_, theirs)| theirs.is_none() || rotate::versions(theirs.as_deref()).contains(v))
        });
        Ok(mine.last().copied().unwrap_or_else(|| self.kek.newest()))
    }

    /// The tenant's keys if it has any; never makes one (for paths an
    /// unauthenticated caller reaches).
    pub async fn existing(&self, scope: &TenantScope) -> palisade_store::Result<Option<Arc<TenantKeys>>> {
        match self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&scope.tenant_id().to_string()) {
            Some((keys, at)) if at.elapsed() < self.ttl => return Ok(Some(keys.clone())),
            _ => {}
        }
        if palisade_store::tenant_keys::list(self.db.reader(), scope).await?.is_empty() {
            return Ok(None);
        }
        self.of(scope).await.map(Some)
    }

    /// Drops the tenant's keys from this instance's memory.
    pub fn forget(&self, tenant: &str) {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).remove(tenant);
    }

    /// Crypto-shredding of a frozen tenant: destroys its keys in `tx`, marks
    /// it erased (so none is made again and it stays frozen) and removes
    /// what it held in clear or under the static key (values from before
    /// encryption, stored answers, SIP credentials, webhook secrets).
    /// Everything sealed under its keys stops opening once `tx` commits,
    /// on this instance at once, on the others within the cache's time to
    /// live. Copies of the database taken before hold the keys wrapped under
    /// the KEK of then: they stay readable until that KEK version is
    /// retired (see [`rotate`]). `None`: not frozen, or erased already.
    pub async fn destroy(
        &self,
        tx: &mut palisade_store::Tx,
        scope: &TenantScope,
    ) -> palisade_store::Result<Option<u64>> {
        let n = palisade_store::tenant_keys::destroy(tx, scope, now_ms()).await?;
        self.forget(&scope.tenant_id().to_string());
        Ok(n)
    }
}

fn now_ms() -> i64 {
    palisade_core::Clock::now_ms(&palisade_core::SystemClock)
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keyring(redacted)")
    }
}

#[cfg(test)]
mod tests;
