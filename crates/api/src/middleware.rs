//! The one request middleware: request id, client address, security headers,
//! problem documents for every error, and the access log line.

use std::cell::Cell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use palisade_core::error::{PROBLEM_CONTENT_TYPE, REQUEST_ID};
use palisade_core::ApiError;
use uuid::Uuid;

use crate::state::AppState;

tokio::task_local! {
    /// The tenant the request acted for, once authentication knows it.
    pub static TENANT: Cell<Option<Uuid>>;
}

/// The client's address as resolved from the socket and trusted proxies.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// The request id, as an extension for extractors.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

static SECURITY_HEADERS: [(HeaderName, &str); 7] = [
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
    (HeaderName::from_static("permissions-policy"), "camera=(), microphone=(), geolocation=()"),
    (header::CACHE_CONTROL, "no-store"),
];

pub async fn request(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    let request_id = sane_request_id(req.headers()).unwrap_or_else(|| Uuid::new_v4().to_string());
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // Proxies may add a header line rather than extend the first one, so
    // every line counts, in order; the rightmost untrusted hop is the client.
    let xff: Vec<&str> = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let xff = (!xff.is_empty()).then(|| xff.join(","));
    let client = palisade_guard::net::client_ip(peer, xff.as_deref(), &state.config.server.trust_proxy);
    let method = req.method().clone();
    let route =
        req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned()).unwrap_or_else(|| "unmatched".into());
    req.extensions_mut().insert(ClientIp(client));
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let tenant = Cell::new(None);
    let (mut resp, tenant) = REQUEST_ID
        .scope(
            request_id.clone(),
            TENANT.scope(tenant, async move {
                let resp = next.run(req).await;
                (resp, TENANT.with(Cell::get))
            }),
        )
        .await;

    if method != http::Method::GET && method != http::Method::HEAD {
        // Writes (and refusals, which are audited too) wake the integrator.
        state.audit_log.poke();
    }
    let status = resp.status();
    if (status.is_client_error() || status.is_server_error()) && !is_problem(resp.headers()) {
        resp = REQUEST_ID.sync_scope(request_id.clone(), || ApiError::from_status(status).into_response());
    }
    let h = resp.headers_mut();
    for (name, value) in &SECURITY_HEADERS {
        h.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }

    tracing::info!(
        target: "palisade::access",
        request_id = %request_id,
        method = %method,
        route = %route,
        status = resp.status().as_u16(),
        // Microsecond precision; more digits are noise.
        latency_ms = (started.elapsed().as_secs_f64() * 1e6).round() / 1e3,
        client_ip = %client,
        tenant = tenant.map(|t| t.to_string()).unwrap_or_default(),
        "request"
    );
    resp
}

/// Records the tenant for the access log.
pub fn note_tenant(id: Uuid) {
    let _ = TENANT.try_with(|c| c.set(Some(id)));
}

fn is_problem(h: &HeaderMap) -> bool {
    h.get(header::CONTENT_TYPE).is_some_and(|v| v.as_bytes() == PROBLEM_CONTENT_TYPE.as_bytes())
}

/// A client-supplied id is echoed only if short and made of safe characters,
/// so it cannot inject into logs or headers.
fn sane_request_id(h: &HeaderMap) -> Option<String> {
    let v = h.get("x-request-id")?.to_str().ok()?;
    let ok = !v.is_empty()
        && v.len() <= 128
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then(|| v.to_owned())
}

/// The router's fallback: unknown paths are a problem document 404.
pub async fn not_found() -> Response {
    ApiError::not_found().into_response()
}
