//! The re-sealing job: message bodies written before encryption, or sealed
//! with an older data key version, sealed again with the tenant's newest
//! key, in small batches (the write lock is held for one batch at a time).
//! Bodies of an erased tenant are left as they are: nothing opens them.
//! Other sealed columns ([`SealedColumn`]: secrets, recordings' keys) are
//! moved the same way, from an older data key version or from the
//! platform's static key, which sealed secrets before tenants had keys.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use palisade_seal::envelope::{version_of, Place};
use palisade_seal::Sealer;
use palisade_store::StoreError;

use crate::Keyring;

const BATCH: i64 = 200;

impl Keyring {
    /// One pass over every message; how many bodies were sealed again.
    pub async fn reseal_messages(&self, proof: &SysadminProof) -> palisade_store::Result<u64> {
        let (mut after, mut done) = (String::new(), 0);
        loop {
            let rows = palisade_store::messages::stored_bodies_after(self.db.reader(), proof, &after, BATCH).await?;
            let Some(last) = rows.last() else { return Ok(done) };
            after = last.0.clone();
            let mut work = Vec::new();
            for (id, tenant, stored) in rows {
                let scope = TenantScope::for_system(
                    tenant.parse::<TenantId>().map_err(|_| StoreError::Corrupt(format!("tenant id {tenant}")))?,
                );
                let keys = match self.of(&scope).await {
                    Ok(keys) => keys,
                    Err(StoreError::Refused("tenant_erased")) => continue,
                    Err(e) => return Err(e),
                };
                if version_of(&stored) != Some(keys.newest()) {
                    work.push((scope, keys, id, stored));
                }
            }
            if work.is_empty() {
                continue;
            }
            let mut tx = self.db.begin().await?;
            for (scope, keys, id, stored) in &work {
                // One body that does not open (altered, or under a key this
                // instance does not hold yet) holds up no other.
                match palisade_store::messages::reseal_body(&mut *tx, scope, keys, id, stored).await {
                    Ok(true) => done += 1,
                    Ok(false) => {}
                    Err(StoreError::Corrupt(e)) => tracing::warn!(error = %e, "a message body does not open"),
                    Err(e) => return Err(e),
                }
            }
            tx.commit().await?;
        }
    }
}

/// A column sealed under tenants' keys: where it is, where a value lives
/// (its AAD), and, for a column whose older values the platform's static
/// key sealed, the AAD it sealed them with.
pub struct SealedColumn {
    pub column: palisade_store::static_sealed::Column,
    pub place: for<'a> fn(&'a str) -> Place<'a>,
    pub legacy_aad: Option<fn(&str, &str) -> Vec<u8>>,
}

impl Keyring {
    /// One pass over `columns`: every value the static key sealed, or
    /// sealed under an older data key version, is opened and sealed again
    /// under its tenant's newest key, so that a database copy holds nothing
    /// the static key alone opens and an old data key can be let go. A
    /// value that does not open is logged and left; an erased tenant's are
    /// left (its erasure removed them). How many were sealed again.
    pub async fn reseal_columns(
        &self,
        proof: &SysadminProof,
        legacy: &Sealer,
        columns: &[SealedColumn],
    ) -> palisade_store::Result<u64> {
        use palisade_store::static_sealed;
        let mut done = 0;
        for c in columns {
            let mut after = String::new();
            loop {
                let rows = static_sealed::after(self.db.reader(), proof, &c.column, &after, BATCH).await?;
                let Some(last) = rows.last() else { break };
                after = last.0.clone();
                let mut work = Vec::new();
                for (id, tenant, stored) in rows {
                    let Ok(tenant_id) = tenant.parse::<TenantId>() else { continue };
                    let scope = TenantScope::for_system(tenant_id);
                    let keys = match self.of(&scope).await {
                        Ok(keys) => keys,
                        Err(StoreError::Refused("tenant_erased")) => continue,
                        // One tenant's keys that do not open (a KEK version
                        // this instance lacks) hold up no other tenant.
                        Err(e) => {
                            tracing::warn!(error = %e, tenant, "a tenant's keys did not open; its values wait");
                            continue;
                        }
                    };
                    let opened = match (version_of(&stored), c.legacy_aad) {
                        // Under the key new values get already (a newer one has not settled).
                        (Some(v), _) if v == keys.newest() => continue,
                        (Some(_), _) => keys.open((c.place)(&id), &stored).ok(),
                        (None, Some(aad)) => {
                            B64.decode(&stored).ok().and_then(|blob| legacy.open(&blob, &aad(&tenant, &id)).ok())
                        }
                        (None, None) => None,
                    };
                    match opened {
                        Some(plain) => {
                            let sealed = keys.seal((c.place)(&id), &plain);
                            work.push((scope, id, stored, sealed));
                        }
                        None => tracing::warn!(table = c.column.table, row = id, "a sealed value does not open"),
                    }
                }
                if work.is_empty() {
                    continue;
                }
                let mut tx = self.db.begin().await?;
                for (scope, id, old, new) in &work {
                    if static_sealed::replace(&mut *tx, scope, &c.column, id, old, new).await? {
                        done += 1;
                    }
                }
                tx.commit().await?;
            }
        }
        Ok(done)
    }
}
