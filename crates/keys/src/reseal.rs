//! The re-sealing job: message bodies written before encryption, or sealed
//! with an older data key version, sealed again with the tenant's newest
//! key, in small batches (the write lock is held for one batch at a time).
//! Bodies of an erased tenant are left as they are: nothing opens them.

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use palisade_seal::envelope::version_of;
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
