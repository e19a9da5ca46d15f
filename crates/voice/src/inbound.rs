//! Calls a trunk brings in: they reach the identity whose number is
//! verified as the dialed one (one on the platform), at the device it
//! registered last. Transport-neutral: the edge only translates.

use palisade_core::{IdentityId, TenantId, TenantScope};
use palisade_store::sip::RegistrationRow;

use crate::Result;

/// Where a call to a number goes.
#[derive(Debug)]
pub enum Callee {
    /// No identity holds the number verified: 404.
    Unknown,
    /// The identity or its tenant is frozen: 403.
    Frozen,
    /// No device of the identity is registered now: 480.
    NotRegistered,
    /// Its most recently registered device.
    Device { scope: TenantScope, identity: IdentityId, binding: Box<RegistrationRow> },
}

pub async fn callee(db: &palisade_store::Db, number: &str, now_ms: i64) -> Result<Callee> {
    let Some(holder) = palisade_store::sip::verified_holder(db.reader(), number).await? else {
        return Ok(Callee::Unknown);
    };
    if !holder.active {
        return Ok(Callee::Frozen);
    }
    let (Ok(tenant), Ok(identity)) = (holder.tenant_id.parse::<TenantId>(), holder.identity_id.parse::<IdentityId>())
    else {
        return Ok(Callee::Unknown);
    };
    let scope = TenantScope::for_system(tenant);
    let bindings = palisade_store::sip::list_registrations(db.reader(), &scope, identity, now_ms).await?;
    Ok(match bindings.into_iter().max_by_key(|b| b.updated_at) {
        Some(binding) => Callee::Device { scope, identity, binding: Box::new(binding) },
        None => Callee::NotRegistered,
    })
}
