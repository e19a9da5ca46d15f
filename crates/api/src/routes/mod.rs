//! The router. Every `/v1` handler is registered through `routes!` so it
//! appears in the OpenAPI document, which the isolation test walks.

mod admission;
mod api_keys;
mod auth;
mod billing;
pub(crate) mod calls;
mod email_code;
mod erasure;
mod events;
mod exports;
mod health;
mod identities;
mod inbound;
mod me;
mod messages;
mod mfa;
mod number_verification;
mod oidc;
mod operators;
mod passkeys;
mod recordings;
mod retention;
pub use mfa::SEALED_COLUMNS as TOTP_SEALED;
pub use operators::totp_aad as operators_totp_aad;
mod sip;
pub mod streams;
mod sysadmin;
mod trunks;
mod users;
mod webhooks;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, Method};
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_http::limit::RequestBodyLimitLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::openapi::ApiDoc;
use crate::state::AppState;

pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi())
        .routes(routes!(auth::signup))
        .routes(routes!(auth::verify_email))
        .routes(routes!(auth::password_reset))
        .routes(routes!(auth::password_reset_confirm))
        .routes(routes!(auth::login))
        .routes(routes!(email_code::request))
        .routes(routes!(email_code::verify))
        .routes(routes!(oidc::providers))
        .routes(routes!(oidc::start))
        .routes(routes!(oidc::callback))
        .routes(routes!(passkeys::challenge_options))
        .routes(routes!(passkeys::step_up_options))
        .routes(routes!(passkeys::sign_in_start))
        .routes(routes!(passkeys::sign_in))
        .routes(routes!(mfa::complete))
        .routes(routes!(mfa::step_up))
        .routes(routes!(auth::refresh))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::accept_invite))
        .routes(routes!(me::me))
        .routes(routes!(mfa::status))
        .routes(routes!(passkeys::register_start))
        .routes(routes!(passkeys::register_finish, passkeys::list))
        .routes(routes!(passkeys::remove))
        .routes(routes!(mfa::enrol, mfa::remove))
        .routes(routes!(mfa::confirm))
        .routes(routes!(mfa::new_recovery_codes))
        .routes(routes!(mfa::get_security, mfa::put_security))
        .routes(routes!(retention::get, retention::put))
        .routes(routes!(retention::restore))
        .routes(routes!(retention::restore_calls))
        .routes(routes!(erasure::erase_number))
        .routes(routes!(api_keys::create, api_keys::list))
        .routes(routes!(api_keys::get, api_keys::revoke))
        .routes(routes!(api_keys::rotate))
        .routes(routes!(users::invite, users::list))
        .routes(routes!(users::get, users::update, users::remove))
        .routes(routes!(users::reset_mfa))
        .routes(routes!(exports::create_for_user))
        .routes(routes!(exports::create))
        .routes(routes!(exports::get))
        .routes(routes!(exports::download))
        .routes(routes!(identities::create, identities::list))
        .routes(routes!(identities::get, identities::update, identities::remove))
        .routes(routes!(identities::agent_token))
        .routes(routes!(identities::freeze))
        .routes(routes!(identities::unfreeze))
        .routes(routes!(sip::create_credential, sip::list_credentials))
        .routes(routes!(sip::revoke_credential))
        .routes(routes!(sip::registrations))
        .routes(routes!(number_verification::send_code))
        .routes(routes!(number_verification::confirm))
        .routes(routes!(billing::balance))
        .routes(routes!(messages::create, messages::list))
        .routes(routes!(messages::get))
        .routes(routes!(calls::create, calls::list))
        .routes(routes!(calls::get))
        .routes(routes!(calls::hangup))
        .routes(routes!(calls::list_cdrs))
        .routes(routes!(calls::get_cdr))
        .routes(routes!(calls::usage))
        .routes(routes!(recordings::list))
        .routes(routes!(recordings::get, recordings::remove))
        .routes(routes!(recordings::audio))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::remove))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::deliveries))
        .routes(routes!(webhooks::replay))
        .routes(routes!(webhooks::test))
        .routes(routes!(inbound::receive))
        .routes(routes!(inbound::replay))
        .routes(routes!(events::list))
        .routes(routes!(events::verify))
        .routes(routes!(events::proof))
        .routes(routes!(streams::events::events))
        .routes(routes!(streams::calls::call))
        .routes(routes!(streams::tickets::create_ticket))
        .routes(routes!(operators::login))
        .routes(routes!(operators::logout))
        .routes(routes!(sysadmin::create_tenant, sysadmin::list_tenants))
        .routes(routes!(events::list_all))
        .routes(routes!(events::verify_all))
        .routes(routes!(sysadmin::freeze_tenant))
        .routes(routes!(sysadmin::unfreeze_tenant))
        .routes(routes!(sysadmin::erase_tenant))
        .routes(routes!(sysadmin::freeze_api_key))
        .routes(routes!(sysadmin::unfreeze_api_key))
        .routes(routes!(sysadmin::get_tenant_limits, sysadmin::put_tenant_limits))
        .routes(routes!(sysadmin::top_up))
        .routes(routes!(sysadmin::freeze_identity))
        .routes(routes!(sysadmin::unfreeze_identity))
        .routes(routes!(number_verification::operator_verify))
        .routes(routes!(trunks::create, trunks::list))
        .routes(routes!(trunks::get, trunks::update, trunks::remove))
        .split_for_parts();
    let doc = crate::openapi::document(doc, state.config.limits.max_text_chars);
    let doc_json: Arc<[u8]> = serde_json::to_vec(&doc).unwrap_or_default().into();

    let mut app = api
        .route(
            "/v1/openapi.json",
            get(move || {
                let body = doc_json.clone();
                async move { ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_vec()) }
            }),
        )
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .fallback(crate::middleware::not_found)
        // Body limits apply to declared and chunked bodies alike.
        .layer(DefaultBodyLimit::disable())
        .layer(RequestBodyLimitLayer::new(state.config.limits.max_body_bytes));
    if let Some(cors) = cors(&state) {
        app = app.layer(cors);
    }
    app.layer(axum::middleware::from_fn_with_state(state.clone(), crate::middleware::request)).with_state(state)
}

/// No origin is allowed unless configured.
fn cors(state: &AppState) -> Option<CorsLayer> {
    let configured = &state.config.cors.allowed_origins;
    if configured.is_empty() {
        return None;
    }
    // `*` is refused in production by the config check; dev may use it.
    let allow = if configured.iter().any(|o| o.trim() == "*") {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(configured.iter().filter_map(|o| HeaderValue::from_str(o.trim()).ok()))
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST, Method::PATCH, Method::DELETE])
            .allow_headers([
                header::AUTHORIZATION,
                header::CONTENT_TYPE,
                header::HeaderName::from_static("x-api-key"),
                header::HeaderName::from_static("x-request-id"),
                header::HeaderName::from_static("idempotency-key"),
            ])
            .expose_headers([header::HeaderName::from_static("x-request-id")])
            .max_age(std::time::Duration::from_secs(600)),
    )
}

/// `{ "data": [...] }`, the shape of every list response.
#[derive(serde::Serialize, utoipa::ToSchema)]
pub struct List<T> {
    pub data: Vec<T>,
    /// Pass as `after` to read the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

impl<T: serde::Serialize> IntoResponse for List<T> {
    fn into_response(self) -> axum::response::Response {
        axum::Json(self).into_response()
    }
}

/// Paging of the newest-first lists (messages, calls, CDRs).
#[derive(serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// At most this many, newest first (1–100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
}

impl Paging {
    fn limit(&self) -> Result<i64, palisade_core::ApiError> {
        let l = self.limit.unwrap_or(50);
        if !(1..=100).contains(&l) {
            return Err(palisade_core::ApiError::validation("limit", "must be between 1 and 100"));
        }
        Ok(l)
    }
}

/// The identity an agent token is confined to; `None` for other callers.
fn own_identity(auth: &crate::extract::Auth) -> Option<palisade_core::IdentityId> {
    match auth.principal.kind() {
        palisade_core::PrincipalKind::Agent { identity_id, .. } => Some(*identity_id),
        _ => None,
    }
}

/// 404, as for an unknown id, when an agent token asks for a record of
/// another identity (messages, calls, CDRs).
fn confine_to_own_identity(auth: &crate::extract::Auth, identity_id: &str) -> Result<(), palisade_core::ApiError> {
    match own_identity(auth) {
        Some(own) if own.to_string() != identity_id => Err(palisade_core::ApiError::not_found()),
        _ => Ok(()),
    }
}

fn rfc3339_opt(ms: Option<i64>) -> Option<String> {
    ms.map(palisade_core::clock::rfc3339)
}

/// `GET /v1/me` alone: the handler with its extractors and no middleware or
/// layers. The baseline of the middleware benchmark (`palisade-bench http`).
pub fn bare_me(state: AppState) -> Router {
    Router::new().route("/v1/me", get(me::me)).with_state(state)
}
