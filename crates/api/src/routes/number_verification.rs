//! Proving control of an identity's number: the carrier delivers a code
//! to the number and the tenant enters it, or the operator vouches. Until
//! then the number is not the tenant's alone (several tenants may have
//! registered it) and, where the carrier reaches real phones, its identity
//! sends and calls nothing.

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::code::CodeKey;
use palisade_core::{ApiError, IdentityId, Permission, TenantId, TenantScope};
use palisade_store::identities::{IdentityRow, VerifiedBy};
use palisade_store::number_verifications::{self as codes, Attempt, Bounds, Target};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::admission::too_many;
use super::identities::IdentityView;
use crate::extract::{Auth, PathId, Sysadmin, ValidJson};
use crate::state::AppState;

fn bounds(state: &AppState) -> Bounds {
    let n = &state.config.numbers;
    let ms = |secs: u64| i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX / 2);
    Bounds {
        ttl_ms: ms(n.code_ttl_secs),
        resend_ms: ms(n.resend_secs),
        per_day: i64::from(n.codes_per_day),
        attempts: i64::from(n.code_attempts),
        lock_ms: ms(n.lock_secs),
        number_codes_per_day: i64::from(n.codes_per_number_per_day),
        number_tries_per_day: i64::from(n.tries_per_number_per_day),
    }
}

fn secs_ceil(ms: i64) -> u64 {
    u64::try_from((ms + 999) / 1000).unwrap_or(0).max(1)
}

fn event(action: &'static str, auth: &Auth, identity: &IdentityRow) -> Event {
    Event::new(action, Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("identity", &identity.id)
        .details(serde_json::json!({ "number": palisade_guard::phone::masked(&identity.number) }))
}

/// The identity, if it may still be verified.
async fn unverified(state: &AppState, scope: &TenantScope, id: IdentityId) -> Result<IdentityRow, ApiError> {
    let row = palisade_store::identities::get(state.db.reader(), scope, id).await?.ok_or_else(ApiError::not_found)?;
    if row.number_verified_at.is_some() {
        return Err(ApiError::conflict("The identity's number is verified already."));
    }
    if row.status != "active" {
        return Err(ApiError::frozen());
    }
    Ok(row)
}

#[derive(Serialize, ToSchema)]
pub struct VerificationSent {
    /// Seconds the code stays valid.
    expires_in: u64,
    /// Seconds before another code can be sent.
    resend_after: u64,
}

/// Sends a six-digit code to the identity's number, from the platform;
/// it costs one message segment. One code is pending at a time: a new one
/// replaces it.
#[utoipa::path(post, path = "/v1/identities/{id}/verification", tag = "identities", security(("bearer" = [])),
    params(("id" = String, Path, description = "Identity id (UUID)")),
    responses((status = 202, body = VerificationSent), (status = 402, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 429, body = palisade_core::Problem)))]
pub async fn send_code(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<(StatusCode, Json<VerificationSent>), ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let identity = unverified(&state, &scope, id).await?;
    let target = Target { scope: &scope, number: &identity.number, identity: id };
    let b = bounds(&state);
    let code = CodeKey::new_code();
    let hash = state.number_codes.digest(&identity.id, &code);
    let cost = state.config.pricing.message_segment;
    let reference = format!("nv_{}", uuid::Uuid::now_v7().simple());
    let now = state.now_ms();
    let sent = VerificationSent { expires_in: b.ttl_ms as u64 / 1000, resend_after: secs_ceil(b.resend_ms) };
    let mut tx = state.db.begin().await?;
    match codes::record_code(&mut tx, target, &hash, b, now).await? {
        Ok(()) => {}
        // Frozen, verified or deleted since it was read.
        Err(0) => return Err(ApiError::conflict("The identity changed meanwhile; read it again.")),
        Err(wait) => {
            let secs = secs_ceil(wait);
            return Err(too_many("rate_limited", "A code was sent recently; wait before asking again.", Some(secs)));
        }
    }
    // Whoever asks, one phone gets only so many codes a day. Past that the
    // answer is the same, but nothing is sent or charged: a refusal would
    // tell this tenant that others text the number.
    if !codes::count_code_to_number(&mut tx, target, b, now).await? {
        tx.commit().await?;
        tracing::warn!(identity = %identity.id, "a verification code was suppressed: the number's daily cap is reached");
        return Ok((StatusCode::ACCEPTED, Json(sent)));
    }
    super::admission::debit(&mut tx, &scope, cost, "number_verification", &reference, now).await??;
    palisade_audit::append(&mut *tx, &event("identity.verification_sent", &auth, &identity), &auth.ctx.audit, now)
        .await?;
    tx.commit().await?;

    // Charged and recorded: the hand-over runs to its end even if the
    // client goes away, so a failure is always answered with its refund.
    let task_state = state.clone();
    let number = identity.number.clone();
    let delivery = tokio::spawn(async move {
        let text =
            format!("Your verification code is {code}. It proves this number is yours to send from; do not share it.");
        let Err(e) = task_state.carrier.send_code(&number, &text).await else { return Ok(()) };
        // The code is void either way: nobody guesses at a code that may
        // never have reached the phone. Only a definite refusal is
        // refunded: a timeout may have delivered it.
        let refund = e == palisade_comms::CarrierError::Undeliverable;
        let mut tx = task_state.db.begin().await?;
        codes::void(&mut tx, Target { scope: &scope, number: &number, identity: id }).await?;
        if refund {
            palisade_store::credits::refund(&mut *tx, &scope, cost, &reference, task_state.now_ms()).await?;
        }
        tx.commit().await?;
        Err::<(), ApiError>(ApiError::new(
            StatusCode::BAD_GATEWAY,
            e.code(),
            "The code could not be delivered to the number; it is void.",
        ))
    });
    match delivery.await {
        Ok(Ok(())) => Ok((StatusCode::ACCEPTED, Json(sent))),
        Ok(Err(e)) => {
            tracing::warn!(identity = %identity.id, reason = e.reason(), "a verification code was not delivered");
            Err(e)
        }
        Err(e) => Err(ApiError::internal(e)),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// The six digits delivered to the number.
    #[schema(min_length = 6, max_length = 6, pattern = "^[0-9]{6}$")]
    code: String,
}

/// Verifies the number with the code it received. Wrong codes are counted
/// before they are compared: after the last allowed try the code is dead
/// and the identity waits (429).
#[utoipa::path(post, path = "/v1/identities/{id}/verification/confirm", tag = "identities",
    security(("bearer" = [])), params(("id" = String, Path, description = "Identity id (UUID)")),
    request_body = ConfirmRequest,
    responses((status = 200, body = IdentityView), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 429, body = palisade_core::Problem)))]
pub async fn confirm(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
    ValidJson(req): ValidJson<ConfirmRequest>,
) -> Result<Json<IdentityView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let identity = unverified(&state, &scope, id).await?;
    let target = Target { scope: &scope, number: &identity.number, identity: id };
    let code = req.code.trim();
    if code.len() != 6 || !code.bytes().all(|c| c.is_ascii_digit()) {
        return Err(ApiError::validation("code", "must be the six digits delivered to the number"));
    }
    let b = bounds(&state);
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let (stored, last) = match codes::take_attempt(&mut tx, target, b, now).await? {
        Attempt::Take { code_hash, last } => (code_hash, last),
        Attempt::Locked(wait) => {
            let secs = secs_ceil(wait);
            return Err(too_many("rate_limited", "Too many wrong codes; wait, then ask for a new one.", Some(secs)));
        }
        Attempt::NoCode => return Err(wrong_code()),
    };
    if !state.number_codes.matches(&identity.id, code, &stored) {
        if last {
            codes::lock(&mut tx, target, b, now).await?;
        }
        palisade_audit::append(
            &mut *tx,
            &event("identity.verification_failed", &auth, &identity),
            &auth.ctx.audit,
            now,
        )
        .await?;
        // The try counts even though the answer is a refusal.
        tx.commit().await?;
        return Err(wrong_code());
    }
    match palisade_store::identities::verify_number(&mut *tx, &scope, id, VerifiedBy::Carrier, now).await {
        Err(e) if e.is_unique_violation() => return Err(held_elsewhere()),
        Ok(false) => return Err(ApiError::not_found()),
        r => r?,
    };
    codes::void(&mut tx, target).await?;
    palisade_audit::append(&mut *tx, &event("identity.number_verified", &auth, &identity), &auth.ctx.audit, now)
        .await?;
    let row = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok(Json(row.try_into()?))
}

fn wrong_code() -> ApiError {
    ApiError::validation("code", "is wrong or expired; ask for a new code if it expired")
}

/// Only someone who holds the phone gets here, so saying so leaks nothing.
fn held_elsewhere() -> ApiError {
    ApiError::conflict("Another account holds this number verified; ask the operator to reassign it.")
}

#[derive(Serialize, ToSchema)]
pub struct OperatorVerified {
    id: String,
    tenant_id: String,
    number_verified: bool,
    /// `carrier` or `operator`: how it was verified (first time counts).
    number_verified_by: String,
}

/// The operator assigns the number to the identity's tenant: verified
/// without a code.
#[utoipa::path(post, path = "/sysadmin/v1/identities/{id}/verify", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = String, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = OperatorVerified), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn operator_verify(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<OperatorVerified>, ApiError> {
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let tenant =
        palisade_store::identities::tenant_of(&mut *tx, &admin.proof, id).await?.ok_or_else(ApiError::not_found)?;
    let tenant = tenant.parse::<TenantId>().map_err(ApiError::internal)?;
    let scope = TenantScope::for_sysadmin(&admin.proof, tenant);
    match palisade_store::identities::verify_number(&mut *tx, &scope, id, VerifiedBy::Operator, now).await {
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::conflict("Another identity holds this number verified; delete or reassign it first."))
        }
        Ok(false) => return Err(ApiError::not_found()),
        r => r?,
    };
    let row = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let event = Event::new("identity.number_verified", Some(tenant), admin.proof.actor())
        .resource("identity", id)
        .details(serde_json::json!({
            "number": palisade_guard::phone::masked(&row.number),
            "by": row.number_verified_by,
        }));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(OperatorVerified {
        id: row.id,
        tenant_id: row.tenant_id,
        number_verified: true,
        number_verified_by: row.number_verified_by.unwrap_or_default(),
    }))
}
