//! `POST /v1/erasures`: a phone number's data erased within the tenant
//! ([`crate::erasure`]).

use axum::extract::State;
use axum::Json;
use palisade_core::{ApiError, Permission};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Auth, ValidJson};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NumberErasure {
    /// The person's number (E.164), as the tenant's messages and calls hold it.
    #[schema(pattern = r"^\+[0-9]{8,15}$")]
    number: String,
}

#[derive(Serialize, ToSchema)]
pub struct NumberErased {
    /// The number as it now stands in the records.
    number: String,
    /// Messages whose body was blanked and the number masked.
    messages: u64,
    /// Calls whose number was masked.
    calls: u64,
    /// CDRs whose number was masked (nothing else in them changes).
    cdrs: u64,
    /// Webhook events (payloads kept for the delivery log) whose number was masked.
    webhook_events: u64,
    /// Recordings of those calls, removed.
    recordings: u64,
}

/// Erases what the tenant holds about a phone number that is not one of
/// its own (`tenant:manage`, a recent second factor): message bodies
/// blanked, the number masked in messages, calls, CDRs (a CDR's amounts
/// and times stay) and webhook event payloads, the calls' recordings
/// removed. Repeating the request
/// finishes one cut short.
#[utoipa::path(post, path = "/v1/erasures", tag = "tenant", request_body = NumberErasure, security(("bearer" = [])),
    responses((status = 200, body = NumberErased), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn erase_number(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<NumberErasure>,
) -> Result<Json<NumberErased>, ApiError> {
    let scope = auth.sensitive_scope(Permission::TenantManage).await?;
    let number = req.number.trim();
    palisade_guard::phone::parse_e164(number).map_err(|m| ApiError::validation("number", m))?;
    if palisade_store::identities::find_sender(&state.db, &scope, number).await?.is_some() {
        return Err(ApiError::conflict("The number is one of the tenant's identities: delete the identity instead."));
    }
    let erased = crate::erasure::erase_number(&state, &scope, number, auth.principal.actor(), &auth.ctx.audit).await?;
    Ok(Json(NumberErased {
        number: palisade_guard::phone::masked(number),
        messages: erased.messages,
        calls: erased.calls,
        cdrs: erased.cdrs,
        webhook_events: erased.webhook_events,
        recordings: erased.recordings,
    }))
}
