//! The end of a call: its status, its slot, the rest of its charge (or
//! the refund of an unanswered one), its CDR, the audit event and the
//! `call.ended` and `cdr.written` webhooks, in one transaction.
//!
//! Billing: every started minute past the first (paid at admission) is
//! charged, as far as the balance goes, and a call never answered gets its
//! first minute back. The CDR holds what was charged.

use std::sync::Arc;
use std::time::Duration;

use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::TenantScope;
use palisade_store::calls::CdrRow;
use palisade_store::StoreError;

use crate::Service;

impl Service {
    /// Ends a live call now; see [`Service::end_call_at`]. When that fails,
    /// the end is retried in the background until it is written.
    pub async fn end_call(
        self: &Arc<Self>,
        scope: &TenantScope,
        id: &str,
        status: &str,
        code: Option<&str>,
        by: Option<(Actor, &Context)>,
    ) -> Result<Option<CdrRow>, StoreError> {
        let ended = Ended { at: self.now_ms(), unless_seen_since: None };
        let r = self.end_call_at(scope, id, status, code, by.clone(), ended).await;
        if r.is_err() {
            let by = by.map(|(actor, ctx)| (actor, ctx.clone()));
            let end = Ending {
                scope: scope.clone(),
                id: id.to_owned(),
                status: status.to_owned(),
                code: code.map(str::to_owned),
                by,
                ended,
            };
            self.clone().end_later(end);
        }
        r
    }

    /// Tries a failed end again, as of when it happened, until it is
    /// written (or the call turns out ended already). A call must never
    /// stay live because its end failed: it would hold its slot and its
    /// prepaid minute, have no CDR, and recovery leaves the calls of a
    /// running instance alone. If this instance stops first, recovery ends
    /// the call as an orphan.
    fn end_later(self: Arc<Self>, e: Ending) {
        tokio::spawn(async move {
            let mut pause = END_RETRY_FIRST;
            loop {
                tracing::warn!(
                    call = e.id,
                    retry_in_ms = pause.as_millis() as u64,
                    "ending a call failed; trying again"
                );
                tokio::time::sleep(pause).await;
                let by = e.by.as_ref().map(|(actor, ctx)| (actor.clone(), ctx));
                match self.end_call_at(&e.scope, &e.id, &e.status, e.code.as_deref(), by, e.ended).await {
                    Ok(_) => return,
                    Err(err) => tracing::error!(error = %err, call = e.id, "ending a call failed again"),
                }
                pause = next_pause(pause);
            }
        });
    }

    /// Ends a live call in one transaction: its status, its slot, the rest
    /// of its charge (or the refund of an unanswered one), its CDR, the
    /// audit event and the `call.ended` and `cdr.written` webhooks. `None`
    /// when it had already ended. A transaction the database aborted for a
    /// conflict runs again. `status` `hangup` ends it completed if
    /// answered, else canceled; `by` is who hung up (else the system).
    pub async fn end_call_at(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        code: Option<&str>,
        by: Option<(Actor, &Context)>,
        ended: Ended,
    ) -> Result<Option<CdrRow>, StoreError> {
        let cdr = palisade_store::locks::retrying(|| self.end_once(scope, id, status, code, by.clone(), ended)).await?;
        if let Some(cdr) = &cdr {
            self.webhook_wake.notify_one();
            self.watchers.ended(id, &cdr.status, code);
        }
        Ok(cdr)
    }

    /// One attempt of [`Service::end_call_at`]. Rows are taken in the order
    /// of [`palisade_store::locks`]: the call, the identity's spend, the
    /// tenant's slots, its balance.
    async fn end_once(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        code: Option<&str>,
        by: Option<(Actor, &Context)>,
        ended: Ended,
    ) -> Result<Option<CdrRow>, StoreError> {
        let (Ended { at, unless_seen_since }, now) = (ended, self.now_ms());
        let mut tx = self.db.begin().await?;
        let Some(call) =
            palisade_store::calls::finish(&mut *tx, scope, id, status, code, at, now, unless_seen_since).await?
        else {
            return Ok(None);
        };
        let duration_secs = call.answered_at.map_or(0, |a| ((at - a).max(0) + 999) / 1000);
        // A call coming in is not the tenant's to pay, and held no slot.
        let inbound = call.direction == "inbound";
        let billed_minutes = if inbound { 0 } else { billed_minutes(call.answered_at.is_some(), duration_secs) };
        let due = billed_minutes.saturating_mul(self.pricing.call_minute);
        // The budget of the month the call was paid in.
        let month = &palisade_core::clock::rfc3339(call.created_at)[..7];
        if due != call.prepaid {
            palisade_store::locks::spend(&mut tx, &call.identity_id, month).await?;
        }
        if !inbound {
            palisade_store::calls::release_slot(&mut *tx, scope).await?;
        }
        let balance = palisade_store::locks::balance(&mut tx, scope).await?;
        let mut cost = call.prepaid;
        if due < call.prepaid {
            palisade_store::credits::refund(&mut *tx, scope, call.prepaid - due, id, now).await?;
            palisade_store::calls::unspend(&mut *tx, &call.identity_id, month, call.prepaid - due).await?;
            cost = due;
        } else if due > call.prepaid {
            // As far as the balance goes: the call has happened.
            let charged = (due - call.prepaid).min(balance.max(0));
            let reference = format!("{id}-end");
            if charged > 0 && palisade_store::credits::debit(&mut *tx, scope, charged, "call", &reference, now).await? {
                palisade_store::calls::spend(&mut *tx, &call.identity_id, month, charged).await?;
                cost += charged;
            }
        }
        let cdr = CdrRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: call.tenant_id.clone(),
            call_id: call.id.clone(),
            identity_id: call.identity_id.clone(),
            from_number: call.from_number.clone(),
            to_number: call.to_number.clone(),
            to_country: call.to_country.clone(),
            status: call.status.clone(),
            started_at: call.created_at,
            answered_at: call.answered_at,
            ended_at: at,
            duration_secs,
            billed_minutes,
            cost,
            media: call.media.clone(),
            direction: call.direction.clone(),
            verstat: call.verstat.clone(),
            verstat_reason: call.verstat_reason.clone(),
            attestation: call.attestation.clone(),
        };
        palisade_store::calls::insert_cdr(&mut *tx, scope, &cdr).await?;
        // The carrier's events are the system's; a hang-up is its caller's.
        let default_ctx = Context::default();
        let (actor, ctx) = by.unwrap_or((Actor::system(), &default_ctx));
        let event =
            Event::new("call.ended", Some(scope.tenant_id()), actor).resource("call", id).details(serde_json::json!({
                "status": call.status,
                "error_code": code,
                "duration_secs": duration_secs,
                "billed_minutes": billed_minutes,
                "cost": cost,
                "cdr_id": cdr.id,
            }));
        palisade_audit::append(&mut *tx, &event, ctx, now).await?;
        let tenant = scope.tenant_id();
        let ended = serde_json::json!({
            "id": id, "status": call.status, "error_code": code, "duration_secs": duration_secs, "cost": cost,
            "direction": call.direction,
        });
        let written = serde_json::json!({
            "id": cdr.id, "call_id": id, "status": call.status, "duration_secs": duration_secs,
            "billed_minutes": billed_minutes, "cost": cost, "direction": cdr.direction, "verstat": cdr.verstat,
            "verstat_reason": cdr.verstat_reason, "attestation": cdr.attestation,
        });
        tx.run(&palisade_store::webhooks::enqueue_stmts(&[
            palisade_webhooks::events::event(tenant, "call.ended", ended, now),
            palisade_webhooks::events::event(tenant, "cdr.written", written, now),
        ]))
        .await?;
        tx.commit().await?;
        Ok(Some(cdr))
    }
}

/// Every started minute; an answered call pays at least one, an
/// unanswered one none.
fn billed_minutes(answered: bool, duration_secs: i64) -> i64 {
    if answered {
        ((duration_secs + 59) / 60).max(1)
    } else {
        0
    }
}

/// The first pause before a failed end is tried again, and the longest.
const END_RETRY_FIRST: Duration = Duration::from_millis(500);
const END_RETRY_MOST: Duration = Duration::from_secs(30);

/// Twice the last pause, up to the longest.
fn next_pause(pause: Duration) -> Duration {
    (pause * 2).min(END_RETRY_MOST)
}

/// When a call ended.
#[derive(Debug, Clone, Copy)]
pub struct Ended {
    /// Its duration stops here; its records are written as of now.
    pub at: i64,
    /// Recovery: end it only if its instance has not been seen since then.
    pub unless_seen_since: Option<i64>,
}

/// An end to write again later.
struct Ending {
    scope: TenantScope,
    id: String,
    status: String,
    code: Option<String>,
    by: Option<(Actor, Context)>,
    ended: Ended,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_end_is_tried_again_less_and_less_often() {
        assert_eq!(next_pause(END_RETRY_FIRST), Duration::from_secs(1));
        assert_eq!(next_pause(Duration::from_secs(20)), END_RETRY_MOST);
        assert_eq!(next_pause(END_RETRY_MOST), END_RETRY_MOST);
        assert!(END_RETRY_FIRST < END_RETRY_MOST);
    }

    #[test]
    fn every_started_minute_is_billed() {
        assert_eq!(billed_minutes(false, 100), 0);
        assert_eq!(billed_minutes(true, 0), 1);
        assert_eq!(billed_minutes(true, 60), 1);
        assert_eq!(billed_minutes(true, 61), 2);
    }
}
