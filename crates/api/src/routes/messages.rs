//! Messages over HTTP: admission through [`palisade_admission`] (every
//! spending and abuse control, in order, before a carrier is touched),
//! delivery through the carrier, and reading them back.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_admission::messages::Message;
use palisade_comms::OutboundMessage;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_store::messages::MessageRow;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admission;
use super::{confine_to_own_identity, own_identity, List, Paging};
use crate::extract::{Auth, PathId, QueryParams, UnscannedJson};
use crate::reports::Report;
use crate::state::AppState;

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
    let key = admission::idempotency_key(&headers)?;
    let req = body.peek();
    let m = Message { from: req.from.clone(), to: req.to.clone(), body: req.body.clone(), key };
    let screen = async { body.scan(&state).await.map(drop) };
    let caller = admission::caller(&auth, &scope)?;
    let outcome = state
        .admission
        .send_message(&caller, m, screen, |row| admission::created(MessageView::from(row.clone())))
        .await?;
    admission::respond(&state, &auth, outcome, |row| {
        let m = OutboundMessage {
            id: row.id.clone(),
            from: row.from_number.clone(),
            to: row.to_number.clone(),
            body: row.body.clone(),
        };
        deliver(state.clone(), scope.clone(), m);
        (StatusCode::CREATED, Json(MessageView::from(row))).into_response()
    })
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
    let keys = state.keys.of(&scope).await?;
    let rows =
        palisade_store::messages::list(state.db.reader(), &scope, &keys, own_identity(&auth), p.limit()?).await?;
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
    let keys = state.keys.of(&scope).await?;
    let row = palisade_store::messages::get(state.db.reader(), &scope, &keys, &id.to_string())
        .await?
        .ok_or_else(ApiError::not_found)?;
    confine_to_own_identity(&auth, &row.identity_id)?;
    Ok(Json(row.into()))
}
