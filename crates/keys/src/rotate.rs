//! The operator's key work: re-wrapping every data key under the newest
//! KEK version (data untouched), new data key versions for new writes, and
//! what a KEK version is still needed for before it can be retired.
//!
//! Retiring a KEK version (removing it from configuration once no key is
//! wrapped under it) is what makes an erasure hold for database copies
//! taken before it: they hold the erased tenant's keys only under KEK
//! versions that no longer exist.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use palisade_store::tenant_keys::{self, KeyRow};
use palisade_store::StoreError;

use crate::Keyring;

const BATCH: i64 = 200;

/// What a rotation did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Rotated {
    /// Data keys now wrapped under the newest KEK version.
    pub rewrapped: u64,
    /// Tenants given a new data key version.
    pub new_data_keys: u64,
}

impl Keyring {
    /// Re-wraps every data key not under the newest KEK version. Fails,
    /// naming the version, when a key is wrapped under a version that is
    /// no longer configured (put it back, rotate, then retire it).
    pub async fn rewrap_all(&self, proof: &SysadminProof) -> palisade_store::Result<u64> {
        let newest = i64::from(self.kek.newest());
        let mut done = 0;
        loop {
            let rows = tenant_keys::wrapped_under_older(self.db.reader(), proof, newest, BATCH).await?;
            if rows.is_empty() {
                return Ok(done);
            }
            let mut tx = self.db.begin().await?;
            for row in &rows {
                let (kek_version, wrapped) = self.rewrapped(row)?;
                if tenant_keys::rewrap(&mut *tx, proof, row, kek_version, &wrapped).await? {
                    done += 1;
                }
            }
            tx.commit().await?;
            for row in &rows {
                self.forget(&row.tenant_id);
            }
        }
    }

    fn rewrapped(&self, row: &KeyRow) -> palisade_store::Result<(i64, String)> {
        let corrupt = |e: String| {
            StoreError::Setup(format!(
                "data key v{} of tenant {} (under KEK v{}): {e}",
                row.version, row.tenant_id, row.kek_version
            ))
        };
        let version = u32::try_from(row.version).map_err(|e| corrupt(e.to_string()))?;
        let old = u32::try_from(row.kek_version).map_err(|e| corrupt(e.to_string()))?;
        let blob = B64.decode(&row.wrapped).map_err(|e| corrupt(e.to_string()))?;
        let key = self.kek.unwrap(old, &row.tenant_id, version, &blob).map_err(|e| corrupt(e.to_string()))?;
        let (new, wrapped) = self.kek.wrap(&row.tenant_id, version, &key);
        Ok((i64::from(new), B64.encode(wrapped)))
    }

    /// A new data key version for every tenant that has keys: new values
    /// are sealed with it; older ones still open (and the re-sealing job
    /// moves them to it).
    pub async fn new_data_keys(&self, proof: &SysadminProof) -> palisade_store::Result<u64> {
        let mut made = 0;
        for tenant in tenant_keys::tenants(self.db.reader(), proof).await? {
            let id: TenantId = tenant.parse().map_err(|_| StoreError::Corrupt(format!("tenant id {tenant}")))?;
            let scope = TenantScope::for_system(id);
            let newest = self.of(&scope).await?.newest();
            if self.add_version(&scope, newest + 1).await? {
                made += 1;
            }
        }
        Ok(made)
    }

    /// The running instances (seen since `since`) that do not hold KEK
    /// `version`: a key wrapped under it would not open there.
    pub async fn instances_without(
        &self,
        proof: &SysadminProof,
        since: i64,
        version: u32,
    ) -> palisade_store::Result<Vec<String>> {
        let live = palisade_store::recovery::kek_versions_of_live(self.db.reader(), proof, since).await?;
        Ok(live.into_iter().filter(|(_, v)| !versions(v.as_deref()).contains(&version)).map(|(id, _)| id).collect())
    }

    /// The running instances that wrap new keys under one of `versions`
    /// (their newest): those versions cannot be retired yet.
    pub async fn instances_wrapping_with(
        &self,
        proof: &SysadminProof,
        since: i64,
        retiring: &[u32],
    ) -> palisade_store::Result<Vec<String>> {
        let live = palisade_store::recovery::kek_versions_of_live(self.db.reader(), proof, since).await?;
        Ok(live
            .into_iter()
            .filter(|(_, v)| versions(v.as_deref()).last().is_none_or(|newest| retiring.contains(newest)))
            .map(|(id, _)| id)
            .collect())
    }

    /// `palisade keys rotate`: every data key re-wrapped under the newest
    /// KEK version, and with `data_keys`, a new data key version per tenant.
    pub async fn rotate(&self, proof: &SysadminProof, data_keys: bool) -> palisade_store::Result<Rotated> {
        let new_data_keys = if data_keys { self.new_data_keys(proof).await? } else { 0 };
        let rewrapped = self.rewrap_all(proof).await?;
        Ok(Rotated { rewrapped, new_data_keys })
    }

    /// The configured KEK versions no key is wrapped under any more: safe to
    /// remove from configuration (the newest stays: it wraps new keys).
    pub async fn retirable(&self, proof: &SysadminProof) -> palisade_store::Result<Vec<u32>> {
        let used: Vec<i64> =
            tenant_keys::kek_versions(self.db.reader(), proof).await?.into_iter().map(|(v, _)| v).collect();
        let newest = self.kek.newest();
        Ok(self.kek.versions().into_iter().filter(|v| *v != newest && !used.contains(&i64::from(*v))).collect())
    }
}

/// An instance's KEK versions as the instances table keeps them.
pub(crate) fn versions(list: Option<&str>) -> Vec<u32> {
    let mut v: Vec<u32> = list.unwrap_or("").split(',').filter_map(|v| v.trim().parse().ok()).collect();
    v.sort_unstable();
    v
}
