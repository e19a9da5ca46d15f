//! Messages: admission (every spending and abuse control, in order, before
//! a carrier is touched), the atomic debit, idempotent retries, delivery
//! through the carrier, and reading them back.
//!
//! Admission order: kill-switch (423 `frozen`) → WAF (the body check,
//! after the sending identity is known) → identity `rate_per_second` (429) →
//! `country_not_allowed` (429) → `monthly_budget` (429) → credits (402
//! `insufficient_credits`). Each refusal charges nothing and sends nothing.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_audit::Event;
use palisade_comms::OutboundMessage;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_store::messages::{MessageRow, NewMessage};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admission::{self, Admitted};
use super::{confine_to_own_identity, own_identity, List, Paging};
use crate::extract::{Auth, PathId, QueryParams, UnscannedJson};
use crate::reports::Report;
use crate::state::AppState;

/// Ten segments of Unicode text, a little more of GSM text.
const MAX_BODY_CHARS: usize = 1600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SendMessageRequest {
    /// The sending identity: its id or its number.
    #[schema(min_length = 1, max_length = 64)]
    from: String,
    /// E.164 destination.
    #[schema(pattern = r"^\s*\+[0-9]{8,15}\s*$")]
    to: String,
    /// 1 to 1600 characters.
    #[schema(min_length = 1, max_length = 1600)]
    body: String,
}

impl admission::Sending for SendMessageRequest {
    fn from(&self) -> &str {
        &self.from
    }
    fn to(&self) -> &str {
        &self.to
    }
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct MessageView {
    id: String,
    identity_id: String,
    from: String,
    to: String,
    body: String,
    /// `queued`, `sent`, `delivered` or `failed`.
    status: String,
    /// Why a message failed (`undeliverable`, `carrier_timeout`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    segments: i64,
    /// Minor units charged.
    cost: i64,
    created_at: String,
    updated_at: String,
}

impl From<MessageRow> for MessageView {
    fn from(m: MessageRow) -> Self {
        MessageView {
            id: m.id,
            identity_id: m.identity_id,
            from: m.from_number,
            to: m.to_number,
            body: m.body,
            status: m.status,
            error_code: m.error_code,
            segments: m.segments,
            cost: m.cost,
            created_at: palisade_core::clock::rfc3339(m.created_at),
            updated_at: palisade_core::clock::rfc3339(m.updated_at),
        }
    }
}

/// Sends a message as one of the tenant's identities.
#[utoipa::path(post, path = "/v1/messages", tag = "messages", security(("bearer" = [])),
    request_body = SendMessageRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first response; no second charge")),
    responses((status = 201, body = MessageView), (status = 400, body = palisade_core::Problem),
        (status = 402, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 429, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: UnscannedJson<SendMessageRequest>,
) -> Result<Response, ApiError> {
    let scope = auth.scope(Permission::MessagesWrite).await?;
    let req = body.peek();
    let key = admission::idempotency_key(&headers)?;
    let request_hash =
        admission::request_hash(&auth, "POST /v1/messages", &[req.from.trim(), req.to.trim(), &req.body]);
    let now = state.now_ms();
    if let Some(k) = &key {
        if let Some(first) = admission::replay_if_known(&state, &scope, k, &request_hash, now).await? {
            return Ok(first);
        }
    }

    let chars = req.body.chars().count();
    if chars == 0 || chars > MAX_BODY_CHARS {
        return Err(ApiError::validation("body", format!("must be 1 to {MAX_BODY_CHARS} characters")));
    }
    let (req, Admitted { identity, to }) = admission::admit(&state, &auth, &scope, body, now).await?;
    let segments = i64::from(palisade_comms::segments::count(&req.body));
    let cost = segments.saturating_mul(state.config.pricing.message_segment);
    let id = uuid::Uuid::now_v7().to_string();

    let new = NewMessage {
        id: &id,
        identity_id: &identity.id,
        from: &identity.number,
        to: &to.number,
        to_country: &to.country,
        body: &req.body,
        segments,
        cost,
        now,
    };
    let view = MessageView {
        id: id.clone(),
        identity_id: identity.id.clone(),
        from: identity.number.clone(),
        to: to.number.clone(),
        body: req.body.clone(),
        status: "queued".into(),
        error_code: None,
        segments,
        cost,
        created_at: palisade_core::clock::rfc3339(now),
        updated_at: palisade_core::clock::rfc3339(now),
    };
    let event = Event::new("message.sent", Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("message", &id)
        .details(serde_json::json!({
            "identity_id": identity.id,
            "to": palisade_guard::phone::masked(&to.number),
            "to_country": to.country,
            "segments": segments,
            "cost": cost,
        }));
    // One atomic list, with the conditional updates as guards: the record,
    // its audit event, the idempotency key, the budget and the debit (the
    // balance can never go below zero). The guards come last: on PostgreSQL
    // the tenant's balance row stays locked from its update to the commit,
    // and every send of the tenant waits for that lock. They take the key,
    // the identity's spend and the balance in the order every write takes
    // them (`palisade_store::locks`), so a send never deadlocks with a call
    // placed or ended meanwhile; a statement aborted for a conflict anyway
    // wrote nothing and runs again. On SQLite the list joins the group
    // commit.
    let mut stmts = Vec::with_capacity(8);
    stmts.push(palisade_store::messages::insert_stmt(&scope, &new));
    stmts.push(palisade_audit::append_stmt(&event, &auth.ctx.audit, now).1);
    if let Some(k) = &key {
        let body = serde_json::to_string(&view).map_err(ApiError::internal)?;
        let since = now - admission::IDEMPOTENCY_TTL_MS;
        stmts.extend(palisade_store::messages::remember_stmts(&scope, k, &request_hash, 201, body, now, since));
    }
    if let Some(budget) = identity.monthly_budget {
        let month = &palisade_core::clock::rfc3339(now)[..7];
        stmts.extend(palisade_store::messages::budget_stmts(&identity.id, month, cost, budget));
    }
    if cost > 0 {
        stmts.extend(palisade_store::credits::debit_stmts(&scope, cost, "message", &id, now));
    }
    match state.db.write_guarded(stmts).await? {
        Ok(_) => {}
        Err(palisade_store::messages::KEY_TAKEN) => {
            // A concurrent request with this key was first: answer as it did.
            let k = key.as_deref().unwrap_or_default();
            return admission::replay_winner(&state, &scope, k, &request_hash, now).await;
        }
        Err(reason) => return Err(admission::refusal(reason, cost)),
    }
    deliver(state.clone(), scope, OutboundMessage { id, from: identity.number, to: to.number, body: req.body });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Hands the message to the carrier and records what it reports. Carrier
/// errors are kept as stable codes; a carrier's own words stay in the log.
fn deliver(state: AppState, scope: TenantScope, m: OutboundMessage) {
    let tracker = state.deliveries.clone();
    tracker.spawn(async move {
        let carrier = state.carrier.clone();
        let report = |status, error_code, carrier_ref| Report {
            scope: scope.clone(),
            message_id: m.id.clone(),
            status,
            error_code,
            carrier_ref,
            at_ms: state.now_ms(),
        };
        let last = match carrier.send_message(&m).await {
            Ok(reference) => {
                state.reports.record(report("sent", None, Some(reference))).await;
                match carrier.delivery_report(&m).await {
                    Ok(()) => report("delivered", None, None),
                    Err(e) => report("failed", Some(e.code()), None),
                }
            }
            Err(e) => report("failed", Some(e.code()), None),
        };
        state.reports.record(last).await;
    });
}

/// The tenant's messages, newest first; an agent token sees its identity's only.
#[utoipa::path(get, path = "/v1/messages", tag = "messages", security(("bearer" = [])), params(Paging),
    responses((status = 200, body = List<MessageView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    QueryParams(p): QueryParams<Paging>,
) -> Result<List<MessageView>, ApiError> {
    let scope = auth.scope(Permission::MessagesRead).await?;
    let rows = palisade_store::messages::list(state.db.reader(), &scope, own_identity(&auth), p.limit()?).await?;
    Ok(List { data: rows.into_iter().map(MessageView::from).collect(), next_cursor: None })
}

#[utoipa::path(get, path = "/v1/messages/{id}", tag = "messages", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Message id (UUID)")),
    responses((status = 200, body = MessageView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<MessageView>, ApiError> {
    let scope = auth.scope(Permission::MessagesRead).await?;
    let row = palisade_store::messages::get(state.db.reader(), &scope, &id.to_string())
        .await?
        .ok_or_else(ApiError::not_found)?;
    confine_to_own_identity(&auth, &row.identity_id)?;
    Ok(Json(row.into()))
}
