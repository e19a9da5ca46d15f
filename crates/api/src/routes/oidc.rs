//! Single sign-on with the operator's OpenID Connect providers: `start`
//! sends the browser to the provider with a fresh state, nonce and PKCE
//! challenge, and a cookie that binds the sign-in to that browser; the
//! provider sends it back to `callback`, whose code is exchanged and whose
//! ID token must prove a verified address of an existing person. The rest
//! is a sign-in like any other (second factor, lockouts, frozen tenants).

use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use palisade_audit::Event;
use palisade_auth::token::sha256_hex;
use palisade_core::principal::Actor;
use palisade_core::ApiError;
use palisade_store::oidc::{self, Pending};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;
use utoipa::{IntoParams, ToSchema};

use super::auth::{sign_in, TokenResponse};
use crate::extract::Ctx;
use crate::ops;
use crate::state::AppState;

const COOKIE: &str = "__Host-palisade_oidc";
/// How long a browser has to come back from the provider.
const TTL_MS: i64 = 10 * 60 * 1000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn provider(state: &AppState, name: &str) -> Result<std::sync::Arc<palisade_oidc::Provider>, ApiError> {
    state.oidc.iter().find(|p| p.settings().name == name).cloned().ok_or_else(ApiError::not_found)
}

fn redirect_uri(state: &AppState, name: &str) -> String {
    format!("{}/v1/auth/oidc/{name}/callback", state.config.server.public_url.trim_end_matches('/'))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    tracing::warn!(error = %e, "an OIDC provider is unavailable");
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The sign-in provider cannot be reached; try again.")
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
        .with_extra("retry_after", 5)
}

#[derive(Serialize, ToSchema)]
pub struct ProviderView {
    name: String,
    /// Where a browser starts signing in.
    start_url: String,
}

#[derive(Serialize, ToSchema)]
pub struct Providers {
    data: Vec<ProviderView>,
}

/// The single sign-on providers the operator configured.
#[utoipa::path(get, path = "/v1/auth/oidc/providers", tag = "auth", responses((status = 200, body = Providers)))]
pub async fn providers(State(state): State<AppState>) -> Json<Providers> {
    let data = state
        .oidc
        .iter()
        .map(|p| {
            let name = p.settings().name.clone();
            ProviderView { start_url: format!("/v1/auth/oidc/{name}/start"), name }
        })
        .collect();
    Json(Providers { data })
}

/// Sends the browser to the provider (302), with a cookie that binds the
/// sign-in to this browser (`__Host-palisade_oidc`, ten minutes).
#[utoipa::path(get, path = "/v1/auth/oidc/{provider}/start", tag = "auth",
    params(("provider" = String, Path, description = "A configured provider's name")),
    responses((status = 302, description = "To the provider's sign-in page"), (status = 404, body = palisade_core::Problem),
        (status = 503, body = palisade_core::Problem)))]
pub async fn start(State(state): State<AppState>, Path(name): Path<String>) -> Result<Response, ApiError> {
    let p = provider(&state, &name)?;
    let start = p.start(&redirect_uri(&state, &name)).await.map_err(unavailable)?;
    let browser = palisade_auth::token::random_base62(43);
    let now = state.now_ms();
    let pending = Pending {
        provider: name.clone(),
        nonce: start.nonce.clone(),
        verifier_sealed: B64.encode(state.sealer.seal(start.verifier.as_bytes(), &aad(&start.state))),
        browser_hash: sha256_hex(&browser),
    };
    let mut tx = state.db.begin().await?;
    oidc::insert(&mut *tx, &sha256_hex(&start.state), &pending, now, now + TTL_MS).await?;
    tx.commit().await?;
    // Lax: the provider's redirect back is a top-level navigation from
    // another site, which a Strict cookie would not be sent with.
    let cookie = format!("{COOKIE}={browser}; Path=/; Max-Age=600; HttpOnly; Secure; SameSite=Lax");
    let mut r = StatusCode::FOUND.into_response();
    let h = r.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_str(&start.url).map_err(ApiError::internal)?);
    h.insert(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// The verifier is sealed to its own sign-in.
fn aad(state: &str) -> Vec<u8> {
    format!("oidc_logins\0{}", sha256_hex(state)).into_bytes()
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct CallbackQuery {
    #[param(max_length = 2048)]
    code: Option<String>,
    #[param(max_length = 256)]
    state: Option<String>,
    /// Set by a provider that refused (the person cancelled, …).
    #[param(max_length = 256)]
    error: Option<String>,
}

/// The cookie `start` set, if the request carries it.
fn browser_cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(COOKIE).and_then(|rest| rest.strip_prefix('=')))
}

/// Where the provider sends the browser back: the code is exchanged, the
/// ID token checked, and the person whose verified address it names signs
/// in (the login response, or the second-factor challenge).
#[utoipa::path(get, path = "/v1/auth/oidc/{provider}/callback", tag = "auth",
    params(("provider" = String, Path, description = "A configured provider's name"), CallbackQuery),
    responses((status = 200, body = TokenResponse), (status = 401, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 404, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 503, body = palisade_core::Problem)))]
pub async fn callback(
    State(state): State<AppState>,
    ctx: Ctx,
    Path(name): Path<String>,
    Query(q): Query<CallbackQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let p = provider(&state, &name)?;
    let now = state.now_ms();
    let refused = |reason: &'static str| refuse(&state, &ctx, &name, reason);
    let Some(st) = q.state.as_deref() else { return Err(refused("state_missing").await) };
    // Used once, whatever happens next.
    let mut tx = state.db.begin().await?;
    let pending = oidc::take(&mut *tx, &sha256_hex(st), now).await?;
    tx.commit().await?;
    let Some(pending) = pending.filter(|p| p.provider == name) else { return Err(refused("state_unknown").await) };
    // Started by this browser: a link made elsewhere does not sign it in.
    let same_browser = browser_cookie(&headers)
        .is_some_and(|c| bool::from(sha256_hex(c).as_bytes().ct_eq(pending.browser_hash.as_bytes())));
    if !same_browser {
        return Err(refused("browser_mismatch").await);
    }
    if q.error.is_some() {
        return Err(refused("provider_refused").await);
    }
    let Some(code) = q.code.as_deref() else { return Err(refused("code_missing").await) };
    let verifier = B64
        .decode(&pending.verifier_sealed)
        .ok()
        .and_then(|b| state.sealer.open(&b, &aad(st)).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| ApiError::internal("a sealed PKCE verifier does not open"))?;
    let identity = match p.finish(code, &verifier, &pending.nonce, &redirect_uri(&state, &name), now / 1000).await {
        Ok(i) => i,
        Err(palisade_oidc::Error::Rejected(reason)) => return Err(refused(reason).await),
        Err(e @ palisade_oidc::Error::Unavailable(_)) => return Err(unavailable(e)),
    };
    // The address as login reads it, and exactly the person's own: forms
    // that only fold to it (other letters, other scripts) are other mailboxes.
    let Some(email) = palisade_guard::email::normalize(&identity.email).filter(|e| *e == identity.email) else {
        return Err(refused("no_account").await);
    };
    let user = ops::registered(state.db.reader(), &email).await?.same();
    let Some(user) = user.filter(|u| u.email == email && (u.status == "active" || u.status == "pending")) else {
        return Err(refused("no_account").await);
    };
    let (tenant_id, user_id) = (
        palisade_core::TenantId::from_str(&user.tenant_id).map_err(ApiError::internal)?,
        palisade_core::UserId::from_str(&user.id).map_err(ApiError::internal)?,
    );
    let scope = palisade_core::TenantScope::for_system(tenant_id);
    // Only a provider the person's tenant chose speaks for its people.
    if !oidc::tenant_providers(state.db.reader(), &scope).await?.contains(&name) {
        return Err(refused("provider_not_enabled").await);
    }
    // The provider's account that first signed the person in is the only
    // one that does: another account given the same address later is not.
    let mut tx = state.db.begin().await?;
    let link = oidc::link(&mut tx, &scope, user_id, &name, &identity.subject, state.now_ms()).await?;
    tx.commit().await?;
    if link == oidc::Link::Other {
        return Err(refused("subject_mismatch").await);
    }
    let who = serde_json::json!({ "provider": name, "subject": identity.subject });
    let tokens = sign_in(&state, &ctx, &user, "oidc", who, state.now_ms()).await?;
    let mut r = Json(tokens).into_response();
    let clear = format!("{COOKIE}=; Path=/; Max-Age=0; HttpOnly; Secure; SameSite=Lax");
    r.headers_mut().insert(header::SET_COOKIE, HeaderValue::from_str(&clear).map_err(ApiError::internal)?);
    r.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

/// A sign-in the provider's answer did not prove: 401 with the reason
/// word (`oidc_error`), audited.
async fn refuse(state: &AppState, ctx: &Ctx, provider: &str, reason: &'static str) -> ApiError {
    // A callback naming no live sign-in is anyone's noise: not audited.
    if !matches!(reason, "state_missing" | "state_unknown") {
        let event = Event::new("auth.sso_failed", None, Actor::anonymous())
            .details(serde_json::json!({ "provider": provider, "reason": reason }));
        if let Err(e) = palisade_audit::record(&state.db, &event, &ctx.audit, state.now_ms()).await {
            tracing::error!(error = %e, "audit append failed");
        }
    }
    ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthenticated",
        "The sign-in with the provider did not prove who you are.",
    )
    .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    .with_extra("oidc_error", reason)
}
