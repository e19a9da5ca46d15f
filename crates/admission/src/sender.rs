//! The checks that need no transaction, in admission order.

use std::future::Future;
use std::str::FromStr;

use palisade_core::PrincipalKind;
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::phone::E164;
use palisade_guard::state::{Bucket, Decide};
use palisade_store::identities::IdentityRow;
use palisade_store::StoreError;

use crate::{Caller, Refusal, Service, Stop};

/// What the checks admitted.
pub(crate) struct Sender {
    pub identity: IdentityRow,
    pub to: E164,
}

/// The sending identity (an agent token only as its own), the
/// kill-switch, a verified number where required, the transport's
/// `screen`, the destination, the identity's rate, the destination's
/// country. `screen` runs only once the identity may send: a frozen
/// identity is `frozen` whatever its body says.
pub(crate) async fn check<W>(
    svc: &Service,
    caller: &Caller<'_>,
    from: &str,
    to: &str,
    screen: impl Future<Output = Result<(), W>>,
    now: i64,
) -> Result<Sender, Stop<W>> {
    let identity = palisade_store::identities::find_sender(&svc.db, caller.scope, from.trim())
        .await?
        .ok_or_else(|| invalid("from", "is not one of your identities (id or number)"))?;
    if let PrincipalKind::Agent { identity_id, .. } = caller.principal.kind() {
        if identity_id.to_string() != identity.id {
            return Err(Refusal::NotOwnIdentity.into());
        }
    }
    if identity.status != "active" {
        return Err(Refusal::Frozen.into());
    }
    // A number shown as the sender must be the tenant's to show.
    if identity.number_verified_at.is_none() && svc.verified_numbers.applies() {
        return Err(Refusal::NumberNotVerified.into());
    }
    screen.await.map_err(Refusal::Screened)?;
    let to = palisade_guard::phone::parse_e164(to.trim()).map_err(|m| invalid("to", m))?;
    within_rate(svc, &identity, now).await?;
    let allowed: Vec<String> = serde_json::from_str(&identity.allowed_countries).map_err(corrupt)?;
    if !allowed.is_empty() && !allowed.contains(&to.country) {
        return Err(Refusal::CountryNotAllowed.into());
    }
    Ok(Sender { identity, to })
}

/// The identity's `rate_per_second`, if it has one.
async fn within_rate<W>(svc: &Service, identity: &IdentityRow, now: i64) -> Result<(), Stop<W>> {
    let Some(limit) =
        identity.rate_per_second.and_then(|r| Limit::per_second("rate_per_second", u32::try_from(r).ok()?))
    else {
        return Ok(());
    };
    let id = uuid::Uuid::from_str(&identity.id).map_err(corrupt)?;
    let bucket = [Bucket::enforce(Key::uuid(Kind::IdentityRate, id), limit)];
    let decide = Decide { partition: id.as_u128(), now_ms: now, blocks: &[], buckets: &bucket, notice_ms: 60_000 };
    let v = svc.limits.decide(decide).await.map_err(|_| Refusal::Unavailable)?;
    match v.refused {
        Some(i) => {
            let retry_after = v.standings[i].retry_after_ns.div_ceil(1_000_000_000).max(1);
            Err(Refusal::RatePerSecond { retry_after }.into())
        }
        None => Ok(()),
    }
}

fn invalid<W>(field: &'static str, message: impl Into<String>) -> Stop<W> {
    Stop::Refused(Refusal::Invalid { field, message: message.into() })
}

fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}
