//! Columns sealed under the tenant's data keys. The keys must be the
//! scope's own: a value is sealed and opened with its table, column, tenant
//! and row as associated data.

use palisade_core::TenantScope;
use palisade_seal::envelope::{Place, TenantKeys};

use crate::{Result, StoreError};

fn own<'k>(scope: &TenantScope, keys: &'k TenantKeys) -> Result<&'k TenantKeys> {
    if keys.tenant() == scope.tenant_id().to_string() {
        Ok(keys)
    } else {
        Err(StoreError::Corrupt("another tenant's keys were given".into()))
    }
}

pub(crate) fn seal(scope: &TenantScope, keys: &TenantKeys, place: Place<'_>, text: &str) -> Result<String> {
    Ok(own(scope, keys)?.seal_text(place, text))
}

pub(crate) fn open(scope: &TenantScope, keys: &TenantKeys, place: Place<'_>, stored: &str) -> Result<String> {
    own(scope, keys)?
        .open_text(place, stored)
        .map_err(|e| StoreError::Corrupt(format!("{}.{} of {}: {e}", place.table, place.column, place.row)))
}

pub(crate) fn seal_bytes(scope: &TenantScope, keys: &TenantKeys, place: Place<'_>, bytes: &[u8]) -> Result<String> {
    Ok(own(scope, keys)?.seal(place, bytes))
}

pub(crate) fn open_bytes(scope: &TenantScope, keys: &TenantKeys, place: Place<'_>, stored: &str) -> Result<Vec<u8>> {
    own(scope, keys)?
        .open(place, stored)
        .map_err(|e| StoreError::Corrupt(format!("{}.{} of {}: {e}", place.table, place.column, place.row)))
}
