//! Placing a call: admission (as for messages, plus the tenant's
//! concurrent-call quota) with its first minute charged, so a call that
//! cannot pay for one never rings; then its progress. Its end is in
//! [`crate::ending`].

use std::future::Future;

use palisade_audit::Event;
use palisade_core::TenantScope;
use palisade_store::calls::{CallRow, NewCall};
use palisade_store::StoreError;

use crate::idempotency::{self, Answer};
use crate::{outcome, sender, Caller, Outcome, Refusal, Service, Stop};

/// What an idempotency key of a call is bound to (kept as the HTTP route
/// it was first, so stored keys stay valid).
pub const OPERATION: &str = "POST /v1/calls";

/// A call as the transport received it.
pub struct Call {
    /// The calling identity: its id or its number.
    pub from: String,
    /// The E.164 destination.
    pub to: String,
    pub key: Option<String>,
    /// Record it (the carrier keeps its audio; see [`Service::keep_recording`]).
    pub record: bool,
}

/// How far we vouch for a tenant's caller ID when we sign its call
/// (STIR/SHAKEN): the caller is always authenticated here (an API
/// credential or SIP digest), so `A` when the tenant holds the calling
/// number verified, `B` when not.
pub fn attestation(identity: &palisade_store::identities::IdentityRow) -> palisade_stir::Attestation {
    if identity.number_verified_at.is_some() {
        palisade_stir::Attestation::A
    } else {
        palisade_stir::Attestation::B
    }
}

/// A call a trunk brings in, as the edge received it.
pub struct Incoming<'a> {
    pub identity: palisade_core::IdentityId,
    /// The caller's number (E.164) or `anonymous`.
    pub from: &'a str,
    /// The dialed number: the identity's.
    pub to: &'a str,
    pub verification: &'a palisade_stir::Verification,
}

/// Why a placement wrote nothing.
enum Unwritten<W> {
    Refused(Refusal<W>),
    /// Another request with the Idempotency-Key was first.
    KeyTaken,
}

impl Service {
    /// Admits a call, takes its slot, charges its first minute and records
    /// it (queued), or says why not. `screen` and `answer` as for
    /// [`Service::send_message`].
    pub async fn place_call<W>(
        &self,
        caller: &Caller<'_>,
        c: Call,
        screen: impl Future<Output = Result<(), W>>,
        answer: impl FnOnce(&CallRow) -> Answer,
    ) -> Result<Outcome<CallRow, W>, StoreError> {
        outcome(self.place(caller, c, screen, answer).await)
    }

    async fn place<W>(
        &self,
        caller: &Caller<'_>,
        c: Call,
        screen: impl Future<Output = Result<(), W>>,
        answer: impl FnOnce(&CallRow) -> Answer,
    ) -> Result<Outcome<CallRow, W>, Stop<W>> {
        let scope = caller.scope;
        // A recorded call is another request than an unrecorded one (keys
        // stored before recordings keep their hash).
        let parts = [c.from.trim(), c.to.trim(), "record"];
        let hash = idempotency::request_hash(caller.principal, OPERATION, &parts[..if c.record { 3 } else { 2 }]);
        let now = self.now_ms();
        let since = now - idempotency::TTL_MS;
        if let Some(k) = &c.key {
            if let Some(known) = self.known(scope, k, &hash, now).await? {
                return Ok(known);
            }
        }
        let sender::Sender { identity, to } = sender::check(self, caller, &c.from, &c.to, screen, now).await?;
        let prepaid = self.pricing.call_minute;
        let row = CallRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: scope.tenant_id().to_string(),
            identity_id: identity.id.clone(),
            from_number: identity.number.clone(),
            to_number: to.number,
            to_country: to.country,
            status: "queued".into(),
            error_code: None,
            prepaid,
            answered_at: None,
            ended_at: None,
            created_at: now,
            updated_at: now,
            media: "none".into(),
            direction: "outbound".into(),
            verstat: None,
            verstat_reason: None,
            attestation: Some(attestation(&identity).as_str().to_owned()),
            record: i64::from(c.record),
        };
        let new = NewCall::of(&row, &self.instance_id);
        let event = Event::new("call.placed", Some(caller.principal.tenant_id()), caller.principal.actor())
            .resource("call", &row.id)
            .details(serde_json::json!({
                "identity_id": row.identity_id,
                "to": palisade_guard::phone::masked(&row.to_number),
                "to_country": row.to_country,
                "prepaid": prepaid,
                "record": c.record,
            }));
        // The key's answer is the call as it is inserted, so it is stored first.
        let stored = c.key.as_deref().map(|k| (k, answer(&row)));
        let slots = i64::from(caller.call_slots);
        // One transaction, taking rows in the order of
        // `palisade_store::locks`: the key, the identity's spend, the
        // tenant's slots, its balance. Run again if the database aborts it
        // for a conflict.
        // Before the transaction: making a tenant's first key writes.
        let keys = self.keys.of(scope).await?;
        let placed = palisade_store::locks::retrying(|| async {
            let mut tx = self.db.begin().await?;
            if let Some((k, a)) = &stored {
                let r =
                    palisade_store::messages::remember(&mut *tx, scope, &keys, k, &hash, a.status, &a.body, now, since);
                match r.await {
                    Err(e) if e.is_unique_violation() => return Ok(Err(Unwritten::KeyTaken)),
                    r => r?,
                }
            }
            if let Some(budget) = identity.monthly_budget {
                let month = &palisade_core::clock::rfc3339(now)[..7];
                let ok = palisade_store::messages::spend_within_budget(&mut *tx, &identity.id, month, prepaid, budget)
                    .await?;
                if !ok {
                    return Ok(Err(Unwritten::Refused(Refusal::MonthlyBudget)));
                }
            }
            if !palisade_store::calls::take_slot(&mut *tx, scope, slots).await? {
                return Ok(Err(Unwritten::Refused(Refusal::ConcurrentCalls)));
            }
            if prepaid > 0 && !palisade_store::credits::debit(&mut *tx, scope, prepaid, "call", &row.id, now).await? {
                return Ok(Err(Unwritten::Refused(Refusal::InsufficientCredits { cost: prepaid })));
            }
            palisade_store::calls::insert(&mut *tx, scope, &new).await?;
            palisade_audit::append(&mut *tx, &event, caller.audit, now).await?;
            tx.commit().await?;
            Ok(Ok(()))
        })
        .await?;
        match placed {
            Ok(()) => Ok(Outcome::Admitted(row)),
            Err(Unwritten::Refused(r)) => Err(Stop::Refused(r)),
            // A concurrent request with this key was first: answer as it did.
            Err(Unwritten::KeyTaken) => {
                let k = c.key.as_deref().unwrap_or_default();
                Ok(self.known(scope, k, &hash, now).await?.unwrap_or(Outcome::Refused(Refusal::KeyInProgress)))
            }
        }
    }

    /// Records a call coming in (ringing) with its caller-ID verification,
    /// the `call.received` audit event and webhook. Nothing is charged: an
    /// inbound call takes no slot and no credit.
    pub async fn receive_call(
        &self,
        scope: &TenantScope,
        c: Incoming<'_>,
        audit: &palisade_audit::Context,
    ) -> Result<CallRow, StoreError> {
        let now = self.now_ms();
        let v = c.verification;
        let country = palisade_guard::phone::parse_e164(c.to).map(|e| e.country).unwrap_or_default();
        let row = CallRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: scope.tenant_id().to_string(),
            identity_id: c.identity.to_string(),
            from_number: c.from.to_owned(),
            to_number: c.to.to_owned(),
            to_country: country,
            status: "ringing".into(),
            error_code: None,
            prepaid: 0,
            answered_at: None,
            ended_at: None,
            created_at: now,
            updated_at: now,
            media: "none".into(),
            direction: "inbound".into(),
            verstat: Some(v.verstat.as_str().to_owned()),
            verstat_reason: v.failure.map(|f| f.reason().to_owned()),
            attestation: v.attestation.map(|a| a.as_str().to_owned()),
            record: 0,
        };
        let new = NewCall::of(&row, &self.instance_id);
        let stir = serde_json::json!({
            "verstat": row.verstat, "verstat_reason": row.verstat_reason, "attestation": row.attestation,
        });
        let event = Event::new("call.received", Some(scope.tenant_id()), palisade_core::principal::Actor::system())
            .resource("call", &row.id)
            .details(serde_json::json!({
                "identity_id": row.identity_id,
                "from": palisade_guard::phone::masked(&row.from_number),
                "stir": stir,
            }));
        let data = serde_json::json!({
            "id": row.id, "status": row.status, "direction": "inbound", "from": row.from_number, "to": row.to_number,
            "identity_id": row.identity_id, "verstat": row.verstat, "verstat_reason": row.verstat_reason,
            "attestation": row.attestation,
        });
        palisade_store::locks::retrying(|| async {
            let mut tx = self.db.begin().await?;
            palisade_store::calls::insert(&mut *tx, scope, &new).await?;
            palisade_audit::append(&mut *tx, &event, audit, now).await?;
            let received = palisade_webhooks::events::event(scope.tenant_id(), "call.received", data.clone(), now);
            tx.run(&palisade_store::webhooks::enqueue_stmts(&[received])).await?;
            tx.commit().await
        })
        .await?;
        self.webhook_wake.notify_one();
        Ok(row)
    }

    /// Records the call's progress (`ringing`, or `in_progress` once
    /// answered, with its `call.started` webhook). False when the call is
    /// over already.
    pub async fn call_progress(
        &self,
        scope: &TenantScope,
        id: &str,
        status: &str,
        answered: bool,
    ) -> Result<bool, StoreError> {
        let now = self.now_ms();
        let answered_at = answered.then_some(now);
        let moved = palisade_store::locks::retrying(|| async {
            let mut tx = self.db.begin().await?;
            let moved = palisade_store::calls::progress(&mut *tx, scope, id, status, answered_at, now).await?;
            if moved && answered {
                let data = serde_json::json!({ "id": id, "status": status });
                let started = palisade_webhooks::events::event(scope.tenant_id(), "call.started", data, now);
                tx.run(&palisade_store::webhooks::enqueue_stmts(&[started])).await?;
            }
            tx.commit().await?;
            Ok(moved)
        })
        .await?;
        if moved && answered {
            self.webhook_wake.notify_one();
        }
        Ok(moved)
    }
}
