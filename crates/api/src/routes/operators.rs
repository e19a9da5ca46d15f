//! Operators sign in to `/sysadmin` with a password and a TOTP code, for a
//! short session (`admin.operator_session_secs`); whatever they do there
//! is audited under their id. The master key stays for break-glass, or is
//! turned off (`admin.master_key = "disabled"`).

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{new_operator_token, sha256_hex};
use palisade_auth::totp::Totp;
use palisade_core::principal::Actor;
use palisade_core::ApiError;
use serde::Deserialize;
use utoipa::ToSchema;

use super::auth::AccessTokenResponse;
use crate::extract::{Ctx, Sysadmin, ValidJson};
use crate::state::AppState;

/// What an operator's TOTP secret is sealed to.
pub fn totp_aad(operator_id: &str) -> Vec<u8> {
    format!("operators\0{operator_id}").into_bytes()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OperatorLogin {
    #[schema(max_length = 254)]
    email: String,
    #[schema(max_length = 256)]
    password: String,
    /// The six digits of the operator's authenticator app.
    #[schema(pattern = r"^\s*[0-9]{6}\s*$")]
    code: String,
}

fn refused() -> ApiError {
    super::auth::sign_in_refused("Invalid email, password or code.")
}

/// An operator signs in: password and TOTP code in one request, one answer
/// for every failure (with the login lockouts, and TOTP tries counted
/// before the code is compared).
#[utoipa::path(post, path = "/sysadmin/v1/auth/login", tag = "sysadmin", request_body = OperatorLogin,
    responses((status = 200, body = AccessTokenResponse), (status = 400, body = palisade_core::Problem),
        (status = 401, body = palisade_core::Problem)))]
pub async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<OperatorLogin>,
) -> Result<Json<AccessTokenResponse>, ApiError> {
    let email = palisade_guard::email::normalize(&req.email).unwrap_or_else(|| req.email.trim().to_lowercase());
    // Locks of their own: no address a person can type (input holds no
    // control characters) names the same lock.
    let account = format!("\u{0}operator\u{0}{email}");
    let dummy = || palisade_auth::password::dummy_hash().to_owned();
    let Some(attempt) = state.abuse.login_attempt(&account, ctx.client_ip, state.now_ms()).await? else {
        state.argon2.verify(req.password, dummy()).await?;
        let now = state.now_ms();
        if state.abuse.notice_locked_login(&account, now).await {
            let event = Event::new("operator.login_refused_locked", None, Actor::anonymous())
                .details(serde_json::json!({ "email": email }));
            palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
        }
        return Err(refused());
    };
    let operator = palisade_store::operators::by_email(state.db.reader(), &email).await?;
    let phc = operator.as_ref().map(|o| o.password_hash.clone()).unwrap_or_else(dummy);
    let password_ok = state.argon2.verify(req.password, phc).await? && operator.is_some();
    let now = state.now_ms();
    let operator = match operator.filter(|o| password_ok && o.disabled_at.is_none()) {
        Some(o) => o,
        None => {
            state.abuse.login_failed(attempt, now).await?;
            let event = Event::new("operator.login_failed", None, Actor::anonymous())
                .details(serde_json::json!({ "reason": "password", "email": email }));
            palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
            return Err(refused());
        }
    };
    // The second factor: counted, compared, used once.
    let rules = &state.config.auth.mfa;
    let lock_until = now + i64::try_from(rules.lockout_secs).unwrap_or(900) * 1000;
    let mut tx = state.db.begin().await?;
    let row = palisade_store::operators::take_try(&mut *tx, &operator.id, now, i64::from(rules.max_tries), lock_until)
        .await?;
    tx.commit().await?;
    let step = match &row {
        Some(r) => {
            let secret = base64::engine::general_purpose::STANDARD
                .decode(&r.totp_sealed)
                .ok()
                .and_then(|b| state.sealer.open(&b, &totp_aad(&r.id)).ok())
                .ok_or_else(|| ApiError::internal("an operator's TOTP secret does not open"))?;
            let generator = Totp::new(secret, &rules.issuer, "-").ok_or_else(|| ApiError::internal("TOTP secret"))?;
            generator.step_of(&req.code, u64::try_from(now / 1000).unwrap_or(0))
        }
        None => None,
    };
    let accepted = match step {
        Some(step) => {
            let mut tx = state.db.begin().await?;
            let fresh =
                palisade_store::operators::accept_step(&mut *tx, &operator.id, i64::try_from(step).unwrap_or(i64::MAX))
                    .await?;
            tx.commit().await?;
            fresh
        }
        None => false,
    };
    if !accepted {
        // Counted like a wrong password (never a different lock), so the
        // answer and its side effects do not tell a right password.
        state.abuse.login_failed(attempt, now).await?;
        let event = Event::new("operator.login_failed", None, Actor::operator(&operator.id))
            .details(serde_json::json!({ "reason": "code", "locked": row.is_none() }));
        palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
        return Err(refused());
    }
    state.abuse.login_succeeded(attempt).await?;
    state.abuse.trust_login_address(attempt, now).await;
    let token = new_operator_token();
    let ttl = state.config.admin.operator_session_secs;
    let mut tx = state.db.begin().await?;
    let expires = now + i64::try_from(ttl).unwrap_or(900) * 1000;
    palisade_store::operators::create_session(&mut *tx, &sha256_hex(&token), &operator.id, now, expires).await?;
    let event = Event::new("operator.login", None, Actor::operator(&operator.id))
        .details(serde_json::json!({ "expires_in": ttl }));
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(AccessTokenResponse { access_token: token, token_type: "Bearer", expires_in: ttl }))
}

/// Ends the operator's session (the master key has none: nothing ends).
#[utoipa::path(post, path = "/sysadmin/v1/auth/logout", tag = "sysadmin",
    security(("operator" = []), ("master_key" = [])),
    responses((status = 204), (status = 401, body = palisade_core::Problem)))]
pub async fn logout(State(state): State<AppState>, admin: Sysadmin) -> Result<StatusCode, ApiError> {
    if let Some(hash) = &admin.operator_session {
        let now = state.now_ms();
        let mut tx = state.db.begin().await?;
        palisade_store::operators::revoke_session(&mut *tx, hash, now).await?;
        let event = Event::new("operator.logout", None, admin.proof.actor());
        palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
        tx.commit().await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
