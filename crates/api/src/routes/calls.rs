//! Calls over HTTP: admission, progress and the end (CDR, billing,
//! webhooks) through [`palisade_admission`]; the call's life through the
//! carrier, hang-up, and reading calls, CDRs and usage back.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_admission::calls::Call;
use palisade_comms::OutboundCall;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_store::calls::{CallRow, CdrRow};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admission;
use super::{confine_to_own_identity, own_identity, List, Paging};
use crate::extract::{Auth, PathId, QueryParams, UnscannedJson};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlaceCallRequest {
    /// The calling identity: its id or its number.
    #[schema(min_length = 1, max_length = 64)]
    from: String,
    /// E.164 destination.
    #[schema(pattern = r"^\s*\+[0-9]{8,15}\s*$")]
    to: String,
    /// Record the call: once it ends, its audio is at `/v1/recordings`.
    #[serde(default)]
    record: bool,
}

#[derive(Serialize, Deserialize, ToSchema)]
pub struct CallView {
    id: String,
    identity_id: String,
    from: String,
    to: String,
    /// `queued`, `ringing`, `in_progress`, then `completed`, `busy`,
    /// `failed` or `canceled`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    error_code: Option<String>,
    /// Charged at admission (the first minute).
    prepaid: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ended_at: Option<String>,
    created_at: String,
    /// Media security: the SRTP suite (SDES), `dtls`, or `none` (plain RTP,
    /// or a call placed through the API).
    #[serde(default)]
    media: String,
    /// `outbound` (placed by the tenant) or `inbound` (brought by a trunk).
    #[serde(default = "outbound")]
    #[schema(pattern = "^(outbound|inbound)$")]
    direction: String,
    /// Caller-ID verification (STIR/SHAKEN) of an inbound call: `passed`,
    /// `failed` or `no_signature`; `null` for an outbound call.
    #[serde(default)]
    verstat: Option<String>,
    /// Why the verification failed (`iat_stale`, `tn_not_covered`, …).
    #[serde(default)]
    verstat_reason: Option<String>,
    /// SHAKEN attestation (`A`, `B` or `C`): what we sign an outbound call
    /// with, or what an inbound call's verified PASSporT says.
    #[serde(default)]
    attestation: Option<String>,
    /// Whether the call is recorded.
    #[serde(default)]
    record: bool,
}

fn outbound() -> String {
    "outbound".into()
}

impl From<CallRow> for CallView {
    fn from(c: CallRow) -> Self {
        CallView {
            id: c.id,
            identity_id: c.identity_id,
            from: c.from_number,
            to: c.to_number,
            status: c.status,
            error_code: c.error_code,
            prepaid: c.prepaid,
            answered_at: c.answered_at.map(palisade_core::clock::rfc3339),
            ended_at: c.ended_at.map(palisade_core::clock::rfc3339),
            created_at: palisade_core::clock::rfc3339(c.created_at),
            media: c.media,
            direction: c.direction,
            verstat: c.verstat,
            verstat_reason: c.verstat_reason,
            attestation: c.attestation,
            record: c.record == 1,
        }
    }
}

/// Places a call as one of the tenant's identities.
#[utoipa::path(post, path = "/v1/calls", tag = "calls", security(("bearer" = [])), request_body = PlaceCallRequest,
    params(("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first response; no second call or charge")),
    responses((status = 201, body = CallView), (status = 400, body = palisade_core::Problem),
        (status = 402, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 429, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    body: UnscannedJson<PlaceCallRequest>,
) -> Result<Response, ApiError> {
    let scope = auth.scope(Permission::CallsWrite).await?;
    let key = admission::idempotency_key(&headers)?;
    let req = body.peek();
    let c = Call { from: req.from.clone(), to: req.to.clone(), key, record: req.record };
    let screen = async { body.scan(&state).await.map(drop) };
    let caller = admission::caller(&auth, &scope)?;
    let outcome =
        state.admission.place_call(&caller, c, screen, |row| admission::created(CallView::from(row.clone()))).await?;
    admission::respond(&state, &auth, outcome, |row| {
        let call = OutboundCall {
            id: row.id.clone(),
            from: row.from_number.clone(),
            to: row.to_number.clone(),
            offer: None,
            attestation: row.attestation.clone(),
            record: row.record == 1,
        };
        state.admission.run_call(state.carrier.clone(), scope.clone(), call, std::sync::Arc::new(()));
        (StatusCode::CREATED, Json(CallView::from(row))).into_response()
    })
}

/// The call's life: ringing, answered or not, and, if the carrier ends it,
/// the end. A hang-up through the API may end it first; then every later
/// step finds it over and does nothing.
pub(super) async fn visible_call(
    state: &AppState,
    auth: &Auth,
    scope: &TenantScope,
    id: &str,
) -> Result<CallRow, ApiError> {
    let call = palisade_store::calls::get(state.db.reader(), scope, id).await?.ok_or_else(ApiError::not_found)?;
    confine_to_own_identity(auth, &call.identity_id)?;
    Ok(call)
}

/// Ends a live call now; its CDR is written before the answer.
#[utoipa::path(post, path = "/v1/calls/{id}/hangup", tag = "calls", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Call id (UUID)")),
    responses((status = 200, body = CallView), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn hangup(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<CallView>, ApiError> {
    let scope = auth.scope(Permission::CallsWrite).await?;
    let id = id.to_string();
    let call = visible_call(&state, &auth, &scope, &id).await?;
    if !matches!(call.status.as_str(), "queued" | "ringing" | "in_progress") {
        return Err(ApiError::conflict("The call has already ended."));
    }
    // Completed if answered, else canceled: decided in the same statement.
    let by = Some((auth.principal.actor(), &auth.ctx.audit));
    let ended = state.admission.end_call(&scope, &id, "hangup", None, by).await;
    if matches!(ended, Ok(None)) {
        return Err(ApiError::conflict("The call has already ended."));
    }
    // Ended, or to be ended as of now by the background retry: the line
    // comes down either way.
    if let Err(e) = state.carrier.hang_up(&id).await {
        tracing::warn!(error = %e, call = id, "the carrier did not confirm the hang-up");
    }
    ended?;
    let call = palisade_store::calls::get(state.db.reader(), &scope, &id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(call.into()))
}

#[utoipa::path(get, path = "/v1/calls", tag = "calls", security(("bearer" = [])), params(Paging),
    responses((status = 200, body = List<CallView>)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    QueryParams(p): QueryParams<Paging>,
) -> Result<List<CallView>, ApiError> {
    let scope = auth.scope(Permission::CallsRead).await?;
    let rows = palisade_store::calls::list(state.db.reader(), &scope, own_identity(&auth), p.limit()?).await?;
    Ok(List { data: rows.into_iter().map(CallView::from).collect(), next_cursor: None })
}

#[utoipa::path(get, path = "/v1/calls/{id}", tag = "calls", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Call id (UUID)")),
    responses((status = 200, body = CallView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<CallView>, ApiError> {
    let scope = auth.scope(Permission::CallsRead).await?;
    Ok(Json(visible_call(&state, &auth, &scope, &id.to_string()).await?.into()))
}

#[derive(Serialize, ToSchema)]
pub struct CdrView {
    id: String,
    call_id: String,
    identity_id: String,
    from: String,
    to: String,
    to_country: String,
    /// How the call ended: `completed`, `busy`, `failed` or `canceled`.
    status: String,
    started_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    answered_at: Option<String>,
    ended_at: String,
    duration_secs: i64,
    billed_minutes: i64,
    /// Minor units charged for the call in all.
    cost: i64,
    /// Media security: the SRTP suite (SDES), `dtls`, or `none`.
    media: String,
    /// As on the call.
    direction: String,
    verstat: Option<String>,
    verstat_reason: Option<String>,
    attestation: Option<String>,
}

impl From<CdrRow> for CdrView {
    fn from(c: CdrRow) -> Self {
        CdrView {
            id: c.id,
            call_id: c.call_id,
            identity_id: c.identity_id,
            from: c.from_number,
            to: c.to_number,
            to_country: c.to_country,
            status: c.status,
            started_at: palisade_core::clock::rfc3339(c.started_at),
            answered_at: c.answered_at.map(palisade_core::clock::rfc3339),
            ended_at: palisade_core::clock::rfc3339(c.ended_at),
            duration_secs: c.duration_secs,
            billed_minutes: c.billed_minutes,
            cost: c.cost,
            media: c.media,
            direction: c.direction,
            verstat: c.verstat,
            verstat_reason: c.verstat_reason,
            attestation: c.attestation,
        }
    }
}

/// Call detail records, newest first: written once when a call ends, never
/// changed (the database refuses it).
#[utoipa::path(get, path = "/v1/cdrs", tag = "calls", security(("bearer" = [])), params(Paging),
    responses((status = 200, body = List<CdrView>)))]
pub async fn list_cdrs(
    State(state): State<AppState>,
    auth: Auth,
    QueryParams(p): QueryParams<Paging>,
) -> Result<List<CdrView>, ApiError> {
    let scope = auth.scope(Permission::CdrsRead).await?;
    let rows = palisade_store::calls::list_cdrs(state.db.reader(), &scope, own_identity(&auth), p.limit()?).await?;
    Ok(List { data: rows.into_iter().map(CdrView::from).collect(), next_cursor: None })
}

#[utoipa::path(get, path = "/v1/cdrs/{id}", tag = "calls", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "CDR id (UUID)")),
    responses((status = 200, body = CdrView), (status = 404, body = palisade_core::Problem)))]
pub async fn get_cdr(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<CdrView>, ApiError> {
    let scope = auth.scope(Permission::CdrsRead).await?;
    let cdr = palisade_store::calls::get_cdr(state.db.reader(), &scope, &id.to_string())
        .await?
        .ok_or_else(ApiError::not_found)?;
    confine_to_own_identity(&auth, &cdr.identity_id)?;
    Ok(Json(cdr.into()))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    /// Only `hour` (the default).
    #[param(inline)]
    #[allow(dead_code)] // One value: read only to refuse others.
    granularity: Option<Granularity>,
    /// RFC 3339; default 24 hours before `until`.
    #[param(format = DateTime)]
    since: Option<String>,
    /// RFC 3339; default now. At most 31 days after `since`.
    #[param(format = DateTime)]
    until: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
}

#[derive(Serialize, ToSchema, Default)]
pub struct UsageTotals {
    count: i64,
    /// Segments for messages, billed minutes for calls.
    units: i64,
    cost: i64,
}

#[derive(Serialize, ToSchema)]
pub struct UsageHour {
    hour: String,
    messages: UsageTotals,
    calls: UsageTotals,
}

/// Hourly usage: messages by when they were sent, calls by when they ended.
#[utoipa::path(get, path = "/v1/usage", tag = "billing", security(("bearer" = [])), params(UsageQuery),
    responses((status = 200, body = List<UsageHour>), (status = 400, body = palisade_core::Problem)))]
pub async fn usage(
    State(state): State<AppState>,
    auth: Auth,
    QueryParams(q): QueryParams<UsageQuery>,
) -> Result<List<UsageHour>, ApiError> {
    let scope = auth.scope(Permission::BillingRead).await?;
    let parse = |v: &Option<String>, field: &str| {
        v.as_deref()
            .map(|s| {
                palisade_core::clock::parse_rfc3339(s)
                    .ok_or_else(|| ApiError::validation(field, "must be an RFC 3339 time"))
            })
            .transpose()
    };
    let until = parse(&q.until, "until")?.unwrap_or_else(|| state.now_ms() + 1);
    let since = parse(&q.since, "since")?.unwrap_or(until - 24 * 3600 * 1000);
    if since >= until || until - since > 31 * 24 * 3600 * 1000 {
        return Err(ApiError::validation("since", "must be before `until`, at most 31 days"));
    }
    let messages = palisade_store::calls::hourly(state.db.reader(), &scope, false, since, until).await?;
    let calls = palisade_store::calls::hourly(state.db.reader(), &scope, true, since, until).await?;
    let mut hours: std::collections::BTreeMap<i64, UsageHour> = std::collections::BTreeMap::new();
    for (rows, is_call) in [(messages, false), (calls, true)] {
        for r in rows {
            let h = hours.entry(r.hour).or_insert_with(|| UsageHour {
                hour: palisade_core::clock::rfc3339(r.hour),
                messages: UsageTotals::default(),
                calls: UsageTotals::default(),
            });
            let t = UsageTotals { count: r.count, units: r.units, cost: r.cost };
            if is_call {
                h.calls = t;
            } else {
                h.messages = t;
            }
        }
    }
    Ok(List { data: hours.into_values().collect(), next_cursor: None })
}
