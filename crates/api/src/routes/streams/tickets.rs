//! Stream tickets: how a browser, which cannot set headers on a WebSocket,
//! opens a stream without a credential in the URL. A ticket is minted by an
//! authenticated request for one stream and one `Origin`, lives seconds,
//! opens one stream once, and acts as its minter, whose credential is
//! checked again when it is used and for as long as the stream lasts.

use axum::extract::State;
use axum::Json;
use http::request::Parts;
use http::{HeaderMap, StatusCode};
use palisade_core::{ApiError, Permission, PrincipalKind};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{throttled, Auth, Minter, ValidJson};
use crate::state::AppState;

/// The query parameter a ticket comes in.
pub(super) const PARAM: &str = "ticket";

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTicketRequest {
    /// The stream it opens: `/v1/events/stream` or `/v1/calls/{id}/stream`.
    #[schema(
        max_length = 100,
        pattern = "^/v1/(events|calls/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12})/stream$"
    )]
    resource: String,
    /// The `Origin` of the page that will use it; by default this
    /// request's own `Origin` (none: for a client that sends none).
    #[serde(default)]
    #[schema(max_length = 200, pattern = "^https?://[A-Za-z0-9.:\\[\\]-]+$")]
    origin: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct TicketView {
    /// `st_…`: pass it as the `ticket` query parameter, once.
    ticket: String,
    /// Seconds it stays usable.
    expires_in: i64,
    resource: String,
    origin: Option<String>,
}

/// Mints a single-use ticket that opens one stream from one origin, for a
/// browser (which cannot send an Authorization header on a WebSocket). It
/// acts as the credential that minted it, which must hold the stream's
/// permission (`events:read`; `calls:write` for a call's audio) now and
/// when the ticket is used. A call of another tenant, or of another
/// identity for an agent token, is 404.
#[utoipa::path(post, path = "/v1/stream-tickets", tag = "streams", security(("bearer" = [])),
    request_body = CreateTicketRequest,
    responses((status = 201, body = TicketView), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 404, body = palisade_core::Problem)))]
pub async fn create_ticket(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    ValidJson(req): ValidJson<CreateTicketRequest>,
) -> Result<(StatusCode, Json<TicketView>), ApiError> {
    let Resource { permission, call, path: resource } = resource_of(&req.resource)?;
    let scope = auth.scope(permission).await?;
    if let Some(id) = call {
        crate::routes::calls::visible_call(&state, &auth, &scope, &id).await?;
    }
    let minter = Minter::of_request(&state, &headers).ok_or_else(ApiError::unauthenticated)?;
    let origin = ticket_origin(&state, &auth, &minter, &headers, req.origin).await?;
    let now = state.now_ms();
    // Never longer than its minter lives.
    let ttl = i64::try_from(state.config.streams.ticket_ttl_secs.max(1)).unwrap_or(60) * 1000;
    let mut expires_at = now + ttl;
    if let Some(end) = auth.principal.restrictions().expires_at {
        expires_at = expires_at.min(end);
    }
    if let PrincipalKind::User { expires_at_ms, .. } = auth.principal.kind() {
        expires_at = expires_at.min(*expires_at_ms);
    }
    let ticket = palisade_auth::token::new_stream_ticket();
    let hash = palisade_auth::token::sha256_hex(&ticket);
    let minter_json = serde_json::to_string(&minter).map_err(ApiError::internal)?;
    let event = palisade_audit::Event::new("stream_ticket.created", Some(scope.tenant_id()), auth.principal.actor())
        .details(serde_json::json!({ "resource": resource, "origin": origin }));
    let mut tx = state.db.begin().await?;
    let new = palisade_store::stream_tickets::NewTicket {
        ticket_hash: &hash,
        resource: &resource,
        origin: origin.as_deref(),
        minter: &minter_json,
        expires_at,
    };
    palisade_store::stream_tickets::insert(&mut tx, &scope, &new).await?;
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let view = TicketView { ticket, expires_in: (expires_at - now).max(0) / 1000, resource, origin };
    Ok((StatusCode::CREATED, Json(view)))
}

/// A stream a ticket may name: the permission it needs, the call it is
/// of (if any), and its path in the form the stream compares (a call id in
/// lower case, as the stream's own path reads it).
struct Resource {
    permission: Permission,
    call: Option<String>,
    path: String,
}

fn resource_of(resource: &str) -> Result<Resource, ApiError> {
    if resource == super::events::RESOURCE {
        return Ok(Resource { permission: Permission::EventsRead, call: None, path: resource.to_owned() });
    }
    let call = resource
        .strip_prefix("/v1/calls/")
        .and_then(|r| r.strip_suffix("/stream"))
        .filter(|id| id.len() == 36)
        .and_then(|id| uuid::Uuid::parse_str(id).ok());
    match call {
        Some(id) => {
            let id = id.to_string();
            Ok(Resource { permission: super::calls::PERMISSION, path: super::calls::resource(&id), call: Some(id) })
        }
        None => Err(ApiError::validation("resource", "must be `/v1/events/stream` or `/v1/calls/{id}/stream`")),
    }
}

/// The origin the ticket is bound to: the one asked for, which a browser
/// request (one with an `Origin`) cannot make another than its own; it
/// must be one the credential, and every key above it, may be used from.
async fn ticket_origin(
    state: &AppState,
    auth: &Auth,
    minter: &Minter,
    headers: &HeaderMap,
    asked: Option<String>,
) -> Result<Option<String>, ApiError> {
    let own = headers.get(http::header::ORIGIN).and_then(|o| o.to_str().ok()).map(str::to_owned);
    let origin = match (asked.map(|o| o.trim().to_owned()), own) {
        (Some(a), Some(o)) if a != o => {
            return Err(ApiError::validation("origin", "must be this request's own Origin"));
        }
        (Some(a), _) => Some(a),
        (None, o) => o,
    };
    if let Some(o) = &origin {
        if !crate::routes::api_keys::valid_origin(o) {
            return Err(ApiError::validation("origin", "is not an origin like https://app.example.com"));
        }
        // As if the page itself used the credential.
        let mut from_page = headers.clone();
        let value = http::HeaderValue::from_str(o).map_err(|_| ApiError::validation("origin", "is not valid"))?;
        from_page.insert(http::header::ORIGIN, value);
        match minter.authenticate(state, &auth.ctx, &from_page).await {
            Ok(_) => {}
            Err(e) if e.status() == http::StatusCode::UNAUTHORIZED => {
                return Err(auth.denied("the origin is not one this credential may be used from"));
            }
            Err(e) => return Err(e),
        }
    }
    Ok(origin)
}

/// Uses a ticket up and authenticates its minter as it is now, from where
/// this request comes: the stream's `Auth`, what it checks again, and the
/// resource the ticket opens. An unknown, used or expired ticket counts as
/// a failed credential (the address's lockout).
pub(super) async fn redeem(
    parts: &mut Parts,
    state: &AppState,
    ticket: &str,
) -> Result<(Auth, Minter, String), ApiError> {
    if parts.headers.contains_key(http::header::AUTHORIZATION) || parts.headers.contains_key("x-api-key") {
        return Err(ApiError::validation(PARAM, "send either a ticket or an Authorization header, not both"));
    }
    let ctx = crate::extract::ctx_of(parts);
    let headers = parts.headers.clone();
    let origin = headers.get(http::header::ORIGIN).map(|o| o.as_bytes().to_vec());
    let mut minted = None;
    let checked = async {
        let t = use_up(state, ticket).await?.ok_or_else(ApiError::unauthenticated)?;
        // Bound to the page it was minted for, or to no page at all.
        if t.origin.as_deref().map(str::as_bytes) != origin.as_deref() {
            return Err(ApiError::unauthenticated());
        }
        let minter: Minter = serde_json::from_str(&t.minter).map_err(ApiError::internal)?;
        let authenticated = minter.authenticate(state, &ctx, &headers).await?;
        if authenticated.0.tenant_id().to_string() != t.tenant_id {
            return Err(ApiError::unauthenticated());
        }
        minted = Some((minter, t.resource));
        Ok(authenticated)
    };
    let authenticated = throttled(state, parts, &ctx, "stream_ticket", checked).await?;
    let (minter, resource) = minted.ok_or_else(ApiError::unauthenticated)?;
    let auth = Auth::admitted(parts, state, ctx, authenticated).await?;
    Ok((auth, minter, resource))
}

async fn use_up(state: &AppState, ticket: &str) -> Result<Option<palisade_store::stream_tickets::Redeemed>, ApiError> {
    if !palisade_auth::token::has_shape(ticket, palisade_auth::token::STREAM_TICKET_PREFIX, 43) {
        return Ok(None);
    }
    let hash = palisade_auth::token::sha256_hex(ticket);
    if !palisade_store::stream_tickets::live(state.db.reader(), &hash, state.now_ms()).await? {
        return Ok(None);
    }
    let mut tx = state.db.begin().await?;
    let t = palisade_store::stream_tickets::redeem(&mut *tx, &hash, state.now_ms()).await?;
    tx.commit().await?;
    Ok(t)
}
