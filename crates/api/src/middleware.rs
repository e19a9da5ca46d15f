//! The one request middleware: request id, client address, the address pass
//! of the abuse controls, security headers, rate-limit headers, problem
//! documents for every error, metrics and the access log line.

use std::cell::RefCell;
use std::net::{IpAddr, SocketAddr};
use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::{header, HeaderMap, HeaderName, HeaderValue};
use palisade_core::error::{PROBLEM_CONTENT_TYPE, REQUEST_ID};
use palisade_core::ApiError;
use uuid::Uuid;

use crate::abuse::RateNotes;
use crate::state::AppState;

/// What the layers under the middleware learn for the response and the log.
#[derive(Default)]
pub struct Notes {
    /// The tenant the request acted for, once authentication knows it.
    pub tenant: Option<Uuid>,
    pub rate: RateNotes,
}

tokio::task_local! {
    pub static NOTES: RefCell<Notes>;
}

/// The client's address as resolved from the socket and trusted proxies.
#[derive(Debug, Clone, Copy)]
pub struct ClientIp(pub IpAddr);

/// The request id, as an extension for extractors.
#[derive(Debug, Clone)]
pub struct RequestId(pub String);

static SECURITY_HEADERS: [(HeaderName, &str); 8] = [
    (header::STRICT_TRANSPORT_SECURITY, "max-age=31536000; includeSubDomains"),
    (header::CONTENT_SECURITY_POLICY, "default-src 'none'; frame-ancestors 'none'"),
    (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
    (header::X_FRAME_OPTIONS, "DENY"),
    (header::REFERRER_POLICY, "strict-origin-when-cross-origin"),
    (HeaderName::from_static("permissions-policy"), "camera=(), microphone=(), geolocation=()"),
    // `0` turns off the legacy XSS auditor, whose filtering could itself be
    // abused to blank or alter parts of a page; CSP is the protection.
    (HeaderName::from_static("x-xss-protection"), "0"),
    (header::CACHE_CONTROL, "no-store"),
];

pub async fn request(State(state): State<AppState>, mut req: Request, next: Next) -> Response {
    let started = Instant::now();
    // A v4 UUID from the thread's CSPRNG rather than a getrandom call (a
    // system call) per request: ids must be unique, not secret.
    let request_id = sane_request_id(req.headers())
        .unwrap_or_else(|| uuid::Builder::from_random_bytes(rand::random()).into_uuid().to_string());
    let peer =
        req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip()).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    // Proxies may add a header line rather than extend the first one, so
    // every line counts, in order; the rightmost untrusted hop is the client.
    let xff: Vec<&str> = req.headers().get_all("x-forwarded-for").iter().filter_map(|v| v.to_str().ok()).collect();
    let xff = (!xff.is_empty()).then(|| xff.join(","));
    let client = palisade_guard::net::client_ip(peer, xff.as_deref(), &state.config.server.trust_proxy);
    let method = req.method().clone();
    let route = req.extensions().get::<MatchedPath>().cloned();
    let path = req.uri().path();
    // Probes stay outside the limits: a load balancer must always reach them.
    let guarded = path != "/healthz" && path != "/readyz";
    // Sign-ins, people's and operators', get the tighter limit.
    let auth_route = path.starts_with("/v1/auth/") || path.starts_with("/sysadmin/v1/auth/");
    req.extensions_mut().insert(ClientIp(client));
    req.extensions_mut().insert(RequestId(request_id.clone()));

    let st = state.clone();
    let rid = request_id.clone();
    let (mut resp, notes) = REQUEST_ID
        .scope(
            request_id.clone(),
            NOTES.scope(RefCell::new(Notes::default()), async move {
                let resp = if guarded {
                    let ua = req.headers().get(header::USER_AGENT).cloned();
                    let ctx = move || audit_context(ua, client, &rid);
                    match st.abuse.address_pass(&st.db, st.now_ms(), client, auth_route, ctx).await {
                        Ok(pass) => {
                            req.extensions_mut().insert(pass);
                            next.run(req).await
                        }
                        Err(e) => e.into_response(),
                    }
                } else {
                    next.run(req).await
                };
                (resp, NOTES.with(|n| n.take()))
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
    // Room for what is added below, so the map grows once.
    h.reserve(SECURITY_HEADERS.len() + 3);
    notes.rate.write_headers(h);
    for (name, value) in &SECURITY_HEADERS {
        h.insert(name.clone(), HeaderValue::from_static(value));
    }
    if let Ok(v) = HeaderValue::from_str(&request_id) {
        h.insert(HeaderName::from_static("x-request-id"), v);
    }

    let elapsed = started.elapsed().as_secs_f64();
    let route = route.as_ref().map(MatchedPath::as_str);
    state.metrics.request(&method, route, resp.status().as_u16(), elapsed);
    tracing::info!(
        target: "palisade::access",
        request_id = %request_id,
        method = %method,
        route = route.unwrap_or("unmatched"),
        status = resp.status().as_u16(),
        // Microsecond precision; more digits are noise.
        latency_ms = (elapsed * 1e6).round() / 1e3,
        client_ip = %client,
        tenant = notes.tenant.map(|t| t.to_string()).unwrap_or_default(),
        "request"
    );
    resp
}

/// Records the tenant for the access log.
pub fn note_tenant(id: Uuid) {
    let _ = NOTES.try_with(|n| n.borrow_mut().tenant = Some(id));
}

/// The audit context of a request refused before any extractor ran.
fn audit_context(user_agent: Option<HeaderValue>, client: IpAddr, request_id: &str) -> palisade_audit::Context {
    palisade_audit::Context {
        source_ip: Some(client.to_string()),
        user_agent: user_agent.as_ref().and_then(|v| v.to_str().ok()).map(palisade_guard::input::sanitize_line),
        request_id: Some(request_id.to_owned()),
    }
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
