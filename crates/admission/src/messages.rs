//! Sending a message: admission, then one atomic write of the record, its
//! audit event, the idempotency key, the budget and the debit.

use std::future::Future;

use palisade_audit::Event;
use palisade_store::messages::{MessageRow, NewMessage};
use palisade_store::StoreError;

use crate::idempotency::{self, Answer, Known};
use crate::{outcome, sender, Caller, Outcome, Refusal, Service, Stop};

/// What an idempotency key of a message is bound to (kept as the HTTP
/// route it was first, so stored keys stay valid).
pub const OPERATION: &str = "POST /v1/messages";

/// Ten segments of Unicode text, a little more of GSM text.
pub const MAX_BODY_CHARS: usize = 1600;

/// A message as the transport received it.
pub struct Message {
    /// The sending identity: its id or its number.
    pub from: String,
    /// The E.164 destination.
    pub to: String,
    pub body: String,
    pub key: Option<String>,
}

impl Service {
    /// Admits, charges and records a message (queued), or says why not.
    /// `screen` is the transport's body check, run in admission order;
    /// `answer` renders the record as a retry with the key will get it.
    pub async fn send_message<W>(
        &self,
        caller: &Caller<'_>,
        m: Message,
        screen: impl Future<Output = Result<(), W>>,
        answer: impl FnOnce(&MessageRow) -> Answer,
    ) -> Result<Outcome<MessageRow, W>, StoreError> {
        outcome(self.send(caller, m, screen, answer).await)
    }

    async fn send<W>(
        &self,
        caller: &Caller<'_>,
        m: Message,
        screen: impl Future<Output = Result<(), W>>,
        answer: impl FnOnce(&MessageRow) -> Answer,
    ) -> Result<Outcome<MessageRow, W>, Stop<W>> {
        let scope = caller.scope;
        let hash = idempotency::request_hash(caller.principal, OPERATION, &[m.from.trim(), m.to.trim(), &m.body]);
        let now = self.now_ms();
        if let Some(k) = &m.key {
            if let Some(known) = self.known(scope, k, &hash, now).await? {
                return Ok(known);
            }
        }
        let chars = m.body.chars().count();
        if chars == 0 || chars > MAX_BODY_CHARS {
            let message = format!("must be 1 to {MAX_BODY_CHARS} characters");
            return Err(Refusal::Invalid { field: "body", message }.into());
        }
        let sender::Sender { identity, to } = sender::check(self, caller, &m.from, &m.to, screen, now).await?;
        let segments = i64::from(palisade_comms::segments::count(&m.body));
        let cost = segments.saturating_mul(self.pricing.message_segment);
        let row = MessageRow {
            id: uuid::Uuid::now_v7().to_string(),
            tenant_id: scope.tenant_id().to_string(),
            identity_id: identity.id,
            from_number: identity.number,
            to_number: to.number,
            to_country: to.country,
            body: m.body,
            segments,
            cost,
            status: "queued".into(),
            error_code: None,
            created_at: now,
            updated_at: now,
        };
        let new = NewMessage {
            id: &row.id,
            identity_id: &row.identity_id,
            from: &row.from_number,
            to: &row.to_number,
            to_country: &row.to_country,
            body: &row.body,
            segments,
            cost,
            now,
        };
        let event = Event::new("message.sent", Some(caller.principal.tenant_id()), caller.principal.actor())
            .resource("message", &row.id)
            .details(serde_json::json!({
                "identity_id": row.identity_id,
                "to": palisade_guard::phone::masked(&row.to_number),
                "to_country": row.to_country,
                "segments": segments,
                "cost": cost,
            }));
        // One atomic list, with the conditional updates as guards: the
        // record, its audit event, the idempotency key, the budget and the
        // debit (the balance can never go below zero). The guards come
        // last: on PostgreSQL the tenant's balance row stays locked from
        // its update to the commit, and every send of the tenant waits for
        // that lock. They take the key, the identity's spend and the
        // balance in the order every write takes them
        // (`palisade_store::locks`), so a send never deadlocks with a call
        // placed or ended meanwhile; a statement aborted for a conflict
        // anyway wrote nothing and runs again. On SQLite the list joins the
        // group commit.
        let keys = self.keys.of(scope).await?;
        let mut stmts = Vec::with_capacity(8);
        stmts.push(palisade_store::messages::insert_stmt(scope, &keys, &new)?);
        stmts.push(palisade_audit::append_stmt(&event, caller.audit, now).1);
        if let Some(k) = &m.key {
            let Answer { status, body } = answer(&row);
            let since = now - idempotency::TTL_MS;
            stmts.extend(palisade_store::messages::remember_stmts(scope, &keys, k, &hash, status, body, now, since)?);
        }
        if let Some(budget) = identity.monthly_budget {
            let month = &palisade_core::clock::rfc3339(now)[..7];
            stmts.extend(palisade_store::messages::budget_stmts(&row.identity_id, month, cost, budget));
        }
        if cost > 0 {
            stmts.extend(palisade_store::credits::debit_stmts(scope, cost, "message", &row.id, now));
        }
        match self.db.write_guarded(stmts).await? {
            Ok(_) => Ok(Outcome::Admitted(row)),
            // A concurrent request with this key was first: answer as it did.
            Err(palisade_store::messages::KEY_TAKEN) => {
                let k = m.key.as_deref().unwrap_or_default();
                Ok(self.known(scope, k, &hash, now).await?.unwrap_or(Outcome::Refused(Refusal::KeyInProgress)))
            }
            Err(reason) => Err(Refusal::of_guard(reason, cost).ok_or(StoreError::Refused(reason))?.into()),
        }
    }

    /// The outcome a known key gives, `None` for a new one.
    pub(crate) async fn known<T, W>(
        &self,
        scope: &palisade_core::TenantScope,
        key: &str,
        hash: &str,
        now: i64,
    ) -> Result<Option<Outcome<T, W>>, StoreError> {
        Ok(match idempotency::look_up(&self.db, &self.keys, scope, key, hash, now).await? {
            Known::Replay(a) => Some(Outcome::Replayed(a)),
            Known::Reused => Some(Outcome::Refused(Refusal::KeyReused)),
            Known::New => None,
        })
    }
}
