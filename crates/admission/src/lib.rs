//! Admission of what costs money (messages, calls) and the life of a call
//! after it: every rule once, whatever the transport. The HTTP routes and
//! the SIP edge only translate their protocol to and from this service.
//!
//! Admission order: the sending identity (an agent token only as its
//! own) → kill-switch (`frozen`) → a verified number where required → the
//! transport's body screen (the WAF) → the destination → the identity's
//! `rate_per_second` → `country_not_allowed` → then, in one atomic write,
//! `monthly_budget` → (calls) `concurrent_calls` → `insufficient_credits`.
//! Each refusal charges nothing and sends nothing.

pub mod calls;
pub mod ending;
pub mod idempotency;
pub mod life;
pub mod messages;
pub mod recording;
mod refusal;
mod sender;

#[cfg(test)]
mod tests;

use std::sync::Arc;

use palisade_audit::Context;
use palisade_config::Pricing;
use palisade_core::{Clock, Principal, TenantScope};
use palisade_guard::state::AbuseState;
use palisade_store::{Db, StoreError};

pub use idempotency::Answer;
pub use refusal::Refusal;

/// What admission needs from the running server.
pub struct Service {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    /// Where the identities' rate buckets live (shared in a cluster).
    pub limits: Arc<dyn AbuseState>,
    pub pricing: Pricing,
    /// Identities send and call only once their number is verified.
    pub verified_numbers: NumberRule,
    /// This running instance: it drives the calls it placed.
    pub instance_id: String,
    /// Wakes the webhook delivery worker when events were queued.
    pub webhook_wake: Arc<tokio::sync::Notify>,
    /// How often an answered call pays its next minute ahead (a minute;
    /// shorter only in tests).
    pub minute: std::time::Duration,
    /// The observers of the calls this instance drives.
    pub watchers: life::Watchers,
    /// Tenants' data keys: bodies and stored answers are sealed under them.
    pub keys: Arc<palisade_keys::Keyring>,
    /// Where recordings' sealed audio is kept, and how much of it a tenant
    /// may have in all.
    pub recordings: Arc<dyn palisade_recordings::Storage>,
    pub recording_quota: u64,
}

/// When identities send and call only with a verified number: the operator
/// says so, or the carrier reaches real phones now (a trunk added at run
/// time makes it so), where a number shown as the caller must be theirs.
pub struct NumberRule {
    pub required: bool,
    pub carrier: Option<Arc<dyn palisade_comms::Carrier>>,
}

impl NumberRule {
    pub fn applies(&self) -> bool {
        self.required || self.carrier.as_ref().is_some_and(|c| c.reaches_phones())
    }
}

impl Service {
    pub fn now_ms(&self) -> i64 {
        self.clock.now_ms()
    }
}

/// Who asks, as the transport authenticated them. Built only by
/// [`Caller::new`], which holds the scope to the principal's own tenant: a
/// transport cannot charge one tenant for another's principal.
pub struct Caller<'a> {
    pub(crate) principal: &'a Principal,
    pub(crate) scope: &'a TenantScope,
    /// Client address, user agent and request id, for the audit trail.
    pub(crate) audit: &'a Context,
    /// The tenant's concurrent-call quota.
    pub(crate) call_slots: u32,
}

impl<'a> Caller<'a> {
    /// `None` when `scope` is not the principal's tenant.
    pub fn new(principal: &'a Principal, scope: &'a TenantScope, audit: &'a Context, call_slots: u32) -> Option<Self> {
        (scope.tenant_id() == principal.tenant_id()).then_some(Caller { principal, scope, audit, call_slots })
    }
}

/// What became of a request. `W` is the transport's own refusal from its
/// body screen (see [`Refusal::Screened`]).
#[derive(Debug)]
pub enum Outcome<T, W> {
    /// Written and charged: the transport hands it on (carrier, SIP leg).
    Admitted(T),
    /// A retry with a known Idempotency-Key: the first answer again.
    Replayed(Answer),
    Refused(Refusal<W>),
}

/// Inside the service: a refusal or a store error, both with `?`.
enum Stop<W> {
    Refused(Refusal<W>),
    Store(StoreError),
}

impl<W> From<StoreError> for Stop<W> {
    fn from(e: StoreError) -> Self {
        Stop::Store(e)
    }
}

impl<W> From<Refusal<W>> for Stop<W> {
    fn from(r: Refusal<W>) -> Self {
        Stop::Refused(r)
    }
}

/// The public shape of a result built with [`Stop`].
fn outcome<T, W>(r: Result<Outcome<T, W>, Stop<W>>) -> Result<Outcome<T, W>, StoreError> {
    match r {
        Ok(o) => Ok(o),
        Err(Stop::Refused(r)) => Ok(Outcome::Refused(r)),
        Err(Stop::Store(e)) => Err(e),
    }
}
