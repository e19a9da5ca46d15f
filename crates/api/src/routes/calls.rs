//! Calls: admission (as for messages, plus the tenant's concurrent-call
//! quota), the call's life through the carrier, hang-up, and the CDR
//! written once when it ends.
//!
//! Billing: admission charges the first minute (so a call that cannot pay
//! for one never rings); when the call ends, every further started minute
//! is charged, as far as the balance goes, and a call never answered gets
//! its first minute back. The CDR holds what was charged.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_audit::Event;
use palisade_comms::{CallAnswer, OutboundCall};
use palisade_core::principal::Actor;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_store::calls::{CallRow, CdrRow, NewCall};
use palisade_store::StoreError;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::admission::{self, Admitted};
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
}

impl admission::Sending for PlaceCallRequest {
    fn from(&self) -> &str {
        &self.from
    }
    fn to(&self) -> &str {
        &self.to
    }
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
    let req = body.peek();
    let key = admission::idempotency_key(&headers)?;
    let request_hash = admission::request_hash(&auth, "POST /v1/calls", &[req.from.trim(), req.to.trim()]);
    let now = state.now_ms();
    let since = now - admission::IDEMPOTENCY_TTL_MS;
    if let Some(k) = &key {
        if let Some(first) = admission::replay_if_known(&state, &scope, k, &request_hash, now).await? {
            return Ok(first);
        }
    }
    let (_, Admitted { identity, to }) = admission::admit(&state, &auth, &scope, body, now).await?;
    let prepaid = state.config.pricing.call_minute;
    let id = uuid::Uuid::now_v7().to_string();

    let new = NewCall {
        id: &id,
        identity_id: &identity.id,
        from: &identity.number,
        to: &to.number,
        to_country: &to.country,
        prepaid,
        instance: &state.instance_id,
        now,
    };
    let event = Event::new("call.placed", Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("call", &id)
        .details(serde_json::json!({
            "identity_id": identity.id,
            "to": palisade_guard::phone::masked(&to.number),
            "to_country": to.country,
            "prepaid": prepaid,
        }));
    // The call as it is inserted, so the key can be stored first.
    let view = CallView::from(CallRow {
        id: id.clone(),
        tenant_id: scope.tenant_id().to_string(),
        identity_id: identity.id.clone(),
        from_number: identity.number.clone(),
        to_number: to.number.clone(),
        to_country: to.country.clone(),
        status: "queued".into(),
        error_code: None,
        prepaid,
        answered_at: None,
        ended_at: None,
        created_at: now,
        updated_at: now,
    });
    let stored = match &key {
        Some(k) => Some((k.as_str(), serde_json::to_string(&view).map_err(ApiError::internal)?)),
        None => None,
    };
    let slots = i64::from(auth.concurrent_calls);
    let ctx = &auth.ctx.audit;
    // One transaction, taking rows in the order of `palisade_store::locks`:
    // the key, the identity's spend, the tenant's slots, its balance. Run
    // again if the database aborts it for a conflict.
    let placed = palisade_store::locks::retrying(|| async {
        let mut tx = state.db.begin().await?;
        if let Some((k, body)) = &stored {
            let r = palisade_store::messages::remember(&mut *tx, &scope, k, &request_hash, 201, body, now, since).await;
            match r {
                Err(e) if e.is_unique_violation() => return Ok(Err(Refused::KeyTaken)),
                r => r?,
            }
        }
        if let Err(e) = admission::within_budget(&mut tx, &identity, prepaid, now).await? {
            return Ok(Err(Refused::Answer(e)));
        }
        if !palisade_store::calls::take_slot(&mut *tx, &scope, slots).await? {
            let e = admission::too_many("concurrent_calls", "The tenant's concurrent-call quota is reached.", None);
            return Ok(Err(Refused::Answer(e)));
        }
        if let Err(e) = admission::debit(&mut tx, &scope, prepaid, "call", &id, now).await? {
            return Ok(Err(Refused::Answer(e)));
        }
        palisade_store::calls::insert(&mut *tx, &scope, &new).await?;
        palisade_audit::append(&mut *tx, &event, ctx, now).await?;
        tx.commit().await?;
        Ok(Ok(()))
    })
    .await?;
    match placed {
        Ok(()) => {}
        Err(Refused::Answer(e)) => return Err(e),
        // A concurrent request with this key was first: answer as it did.
        Err(Refused::KeyTaken) => {
            let k = key.as_deref().unwrap_or_default();
            return admission::replay_winner(&state, &scope, k, &request_hash, now).await;
        }
    }
    run_call(state.clone(), scope, OutboundCall { id, from: identity.number, to: to.number });
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

/// Why a placement wrote nothing.
enum Refused {
    /// The answer to give (a budget, the quota, the credits).
    Answer(ApiError),
    /// Another request with the Idempotency-Key was first.
    KeyTaken,
}

/// The call's life: ringing, answered or not, and, if the carrier ends it,
/// the end. A hang-up through the API may end it first; then every later
/// step finds it over and does nothing.
fn run_call(state: AppState, scope: TenantScope, call: OutboundCall) {
    tokio::spawn(async move {
        let carrier = state.carrier.clone();
        let step = |status: &'static str, answered: bool| {
            let (state, scope, id) = (state.clone(), scope.clone(), call.id.clone());
            async move {
                let now = state.now_ms();
                let answered_at = answered.then_some(now);
                let moved = palisade_store::locks::retrying(|| async {
                    let mut tx = state.db.begin().await?;
                    let moved =
                        palisade_store::calls::progress(&mut *tx, &scope, &id, status, answered_at, now).await?;
                    if moved && answered {
                        let data = serde_json::json!({ "id": id, "status": status });
                        let started = palisade_webhooks::events::event(scope.tenant_id(), "call.started", data, now);
                        tx.run(&palisade_store::webhooks::enqueue_stmts(&[started])).await?;
                    }
                    tx.commit().await?;
                    Ok(moved)
                });
                let moved = moved.await;
                if matches!(moved, Ok(true)) && answered {
                    state.webhook_wake.notify_one();
                }
                moved.unwrap_or_else(|e| {
                    tracing::error!(error = %e, "recording a call's progress failed");
                    false
                })
            }
        };
        // A step that finds the call over (hung up) or cannot be recorded
        // ends it as failed, which does nothing if it is over already,
        // rather than leave it live (holding its slot and prepaid minute).
        if !step("ringing", false).await {
            log_end(end(&state, &scope, &call.id, "failed", Some("interrupted"), None).await);
            return;
        }
        match carrier.place_call(&call).await {
            Err(e) => log_end(end(&state, &scope, &call.id, "failed", Some(e.code()), None).await),
            Ok(CallAnswer::Busy) => log_end(end(&state, &scope, &call.id, "busy", None, None).await),
            Ok(CallAnswer::Answered) => {
                if !step("in_progress", true).await {
                    // Over already (hung up), or not recordable: make sure.
                    let _ = carrier.hang_up(&call.id).await;
                    log_end(end(&state, &scope, &call.id, "failed", Some("interrupted"), None).await);
                    return;
                }
                if let Some(after) = carrier.callee_hangs_up_after() {
                    tokio::time::sleep(after).await;
                    log_end(end(&state, &scope, &call.id, "completed", None, None).await);
                }
            }
        }
    });
}

fn log_end(r: Result<Option<CdrRow>, ApiError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "ending a call failed");
    }
}

/// Ends a live call now; see [`end_at`]. When that fails, the end is
/// retried in the background until it is written.
async fn end(
    state: &AppState,
    scope: &TenantScope,
    id: &str,
    status: &str,
    code: Option<&str>,
    by: Option<(Actor, &palisade_audit::Context)>,
) -> Result<Option<CdrRow>, ApiError> {
    let ended = Ended { at: state.now_ms(), unless_seen_since: None };
    let r = end_at(state, scope, id, status, code, by.clone(), ended).await;
    if r.is_err() {
        let by = by.map(|(actor, ctx)| (actor, ctx.clone()));
        end_later(state.clone(), scope.clone(), id.to_owned(), status.to_owned(), code.map(str::to_owned), by, ended);
    }
    r
}

/// The first pause before a failed end is tried again, and the longest.
const END_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(500);
const END_RETRY_MOST: std::time::Duration = std::time::Duration::from_secs(30);

/// Tries a failed end again, as of when it happened, until it is written
/// (or the call turns out ended already). A call must never stay live
/// because its end failed: it would hold its slot and its prepaid minute,
/// have no CDR, and recovery leaves the calls of a running instance alone.
/// If this instance stops first, recovery ends the call as an orphan.
fn end_later(
    state: AppState,
    scope: TenantScope,
    id: String,
    status: String,
    code: Option<String>,
    by: Option<(Actor, palisade_audit::Context)>,
    ended: Ended,
) {
    tokio::spawn(async move {
        let mut pause = END_RETRY_FIRST;
        loop {
            tracing::warn!(call = id, retry_in_ms = pause.as_millis() as u64, "ending a call failed; trying again");
            tokio::time::sleep(pause).await;
            let by = by.as_ref().map(|(actor, ctx)| (actor.clone(), ctx));
            match end_at(&state, &scope, &id, &status, code.as_deref(), by, ended).await {
                Ok(_) => return,
                Err(e) => tracing::error!(error = %e, call = id, "ending a call failed again"),
            }
            pause = (pause * 2).min(END_RETRY_MOST);
        }
    });
}

/// When a call ended.
#[derive(Clone, Copy)]
pub(crate) struct Ended {
    /// Its duration stops here; its records are written as of now.
    pub at: i64,
    /// Recovery: end it only if its instance has not been seen since then.
    pub unless_seen_since: Option<i64>,
}

/// Ends a live call in one transaction: its status, its slot, the rest of
/// its charge (or the refund of an unanswered one), its CDR and the audit
/// event. `None` when it had already ended. A transaction the database
/// aborted for a conflict runs again.
pub(crate) async fn end_at(
    state: &AppState,
    scope: &TenantScope,
    id: &str,
    status: &str,
    code: Option<&str>,
    by: Option<(Actor, &palisade_audit::Context)>,
    ended: Ended,
) -> Result<Option<CdrRow>, ApiError> {
    let end = Ending { state, scope, id, status, code, by, ended };
    let cdr = palisade_store::locks::retrying(|| end.once()).await?;
    if cdr.is_some() {
        state.webhook_wake.notify_one();
    }
    Ok(cdr)
}

/// What [`end_at`] was asked, for each attempt.
struct Ending<'a> {
    state: &'a AppState,
    scope: &'a TenantScope,
    id: &'a str,
    status: &'a str,
    code: Option<&'a str>,
    by: Option<(Actor, &'a palisade_audit::Context)>,
    ended: Ended,
}

impl Ending<'_> {
    /// One attempt. Rows are taken in the order of
    /// [`palisade_store::locks`]: the call, the identity's spend, the
    /// tenant's slots, its balance.
    async fn once(&self) -> Result<Option<CdrRow>, StoreError> {
        let (state, scope, id, code) = (self.state, self.scope, self.id, self.code);
        let (Ended { at, unless_seen_since }, now) = (self.ended, state.now_ms());
        let mut tx = state.db.begin().await?;
        let Some(call) =
            palisade_store::calls::finish(&mut *tx, scope, id, self.status, code, at, now, unless_seen_since).await?
        else {
            return Ok(None);
        };
        let duration_secs = call.answered_at.map_or(0, |a| ((at - a).max(0) + 999) / 1000);
        // Every started minute; an answered call pays at least one.
        let billed_minutes = if call.answered_at.is_some() { ((duration_secs + 59) / 60).max(1) } else { 0 };
        let due = billed_minutes.saturating_mul(state.config.pricing.call_minute);
        // The budget of the month the call was paid in.
        let month = &palisade_core::clock::rfc3339(call.created_at)[..7];
        if due != call.prepaid {
            palisade_store::locks::spend(&mut tx, &call.identity_id, month).await?;
        }
        palisade_store::calls::release_slot(&mut *tx, scope).await?;
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
        };
        palisade_store::calls::insert_cdr(&mut *tx, scope, &cdr).await?;
        // The carrier's events are the system's; a hang-up is its caller's.
        let default_ctx = palisade_audit::Context::default();
        let (actor, ctx) = self.by.clone().unwrap_or((Actor::system(), &default_ctx));
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
        });
        let written = serde_json::json!({
            "id": cdr.id, "call_id": id, "status": call.status, "duration_secs": duration_secs,
            "billed_minutes": billed_minutes, "cost": cost,
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

/// The call, if the caller may see it (an agent token: its identity's only).
async fn visible_call(state: &AppState, auth: &Auth, scope: &TenantScope, id: &str) -> Result<CallRow, ApiError> {
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
    let ended = end(&state, &scope, &id, "hangup", None, by).await;
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
