//! Live streams over WebSocket (SPEC §14). `GET /v1/events/stream`: the
//! tenant's audit events as they are sequenced, with the filters and the
//! cursor of `GET /v1/events`. Everything is decided before the upgrade
//! (no 101 without a credential that holds); afterwards the stream checks
//! at intervals that it still does, and closes when it does not.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, RawQuery, State};
use axum::response::Response;
use http::HeaderMap;
use palisade_audit::EventView;
use palisade_auth::Credential;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_store::audit::{AuditFilter, Reader};

use super::events::EventQuery;
use crate::extract::{still_holds, Auth, Ctx};
use crate::state::AppState;

/// Events read per look unless `limit` says otherwise: a stream behind by
/// more catches up over several.
const BATCH: i64 = 500;

/// Query parameter names that carry credentials elsewhere. Such a request
/// is refused before anything else reads it: query strings end up in
/// proxies' and browsers' histories.
const CREDENTIAL_PARAMS: [&str; 13] = [
    "api_key",
    "apikey",
    "x-api-key",
    "key",
    "token",
    "access_token",
    "refresh_token",
    "auth",
    "authorization",
    "bearer",
    "jwt",
    "password",
    "secret",
];

/// Prefixes of the platform's other secrets (refresh tokens, e-mail tokens).
const SECRET_PREFIXES: [&str; 2] = [palisade_auth::token::REFRESH_PREFIX, palisade_auth::token::EMAIL_TOKEN_PREFIX];

/// The tenant's audit events, live (WebSocket), with the filters and cursor
/// of `GET /v1/events` (`after`: resume after that event's `cursor`; nothing
/// is lost or sent twice across a reconnect). Send the credential in the
/// `Authorization` header; one in the query string is refused. Each event
/// is a text message `{"type": "event", "cursor": "…", "event": {…}}`;
/// reconnect with `after=<cursor>` to resume. Closes with 1008 when the
/// credential no longer holds (revoked, frozen, logged out) or the
/// connection reached its limits, 1009 for a message over the size limit.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", security(("bearer" = [])), params(EventQuery),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
pub async fn events(
    State(state): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    auth: Result<Auth, ApiError>,
    query: Result<Query<EventQuery>, QueryRejection>,
    hold: Option<axum::Extension<crate::ConnectionHold>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if raw.as_deref().is_some_and(credential_in_query) {
        return Err(ApiError::new(
            http::StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "Credentials are not accepted in the query string: send an Authorization header.",
        )
        .with_header(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer")));
    }
    let auth = auth?;
    let scope = auth.scope(Permission::EventsRead).await?;
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    // The filters and cursor of `GET /v1/events`; `limit` is how many
    // events one look reads.
    let filter = super::events::filter(EventQuery { limit: Some(q.limit.unwrap_or(BATCH)), ..q })?;
    // A plain request (no WebSocket handshake): 426, naming the protocol.
    let ws = ws.map_err(|_| {
        ApiError::new(
            http::StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "This is a WebSocket endpoint: open it with a WebSocket handshake.",
        )
        .with_header(http::header::UPGRADE, http::HeaderValue::from_static("websocket"))
    })?;
    if state.streams.stopping.is_cancelled() {
        return Err(ApiError::new(http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The server is stopping."));
    }
    let limits = &state.config.streams;
    // Counted by who acts (a person, key or identity), not by the token:
    // logging in again or refreshing gives no more streams.
    let actor = auth.principal.actor();
    let who = format!("{}:{}", actor.kind, actor.id.as_deref().unwrap_or(""));
    let Some(slot) = state.streams.admit(&scope, &who, limits) else {
        return Err(ApiError::new(
            http::StatusCode::TOO_MANY_REQUESTS,
            "rate_limited",
            "Too many open streams; close one first.",
        ));
    };
    let max = limits.max_message_bytes;
    let stream = EventStream {
        state: state.clone(),
        scope,
        actor,
        filter,
        headers,
        ctx: auth.ctx,
        _slot: slot,
        _hold: hold.map(|axum::Extension(h)| h.0),
        // Taken before the upgrade: a stop waits for this stream too.
        _running: state.streams.running.token(),
    };
    Ok(ws.max_message_size(max).max_frame_size(max).on_upgrade(move |socket| stream.run(socket)))
}

/// Whether the query string carries something that looks like a
/// credential: a parameter named like one, or a value of a credential's
/// form (an API key, agent token, master key or JWT).
fn credential_in_query(raw: &str) -> bool {
    url::form_urlencoded::parse(raw.as_bytes()).any(|(k, v)| {
        CREDENTIAL_PARAMS.iter().any(|c| k.eq_ignore_ascii_case(c))
            || !matches!(Credential::classify(v.trim()), Credential::Malformed)
            || v.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
            || SECRET_PREFIXES.iter().any(|p| v.trim().starts_with(p))
    })
}

/// Open streams per tenant and per credential, in this instance, and what
/// closes them all when the server stops.
#[derive(Default)]
pub struct OpenStreams {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    stopping: tokio_util::sync::CancellationToken,
    running: tokio_util::task::TaskTracker,
}

impl OpenStreams {
    /// Closes every open stream (1001) and waits, at most `wait`, for them
    /// to have said so and written their audit event.
    pub async fn close_all(&self, wait: Duration) {
        self.stopping.cancel();
        self.running.close();
        if tokio::time::timeout(wait, self.running.wait()).await.is_err() {
            tracing::warn!(left = self.running.len(), "stopping with streams still closing");
        }
    }

    fn admit(&self, scope: &TenantScope, who: &str, limits: &palisade_config::Streams) -> Option<Slot> {
        let keys = [String::new(), format!("t:{}", scope.tenant_id()), format!("c:{who}")];
        let caps = [limits.max_total, limits.max_per_tenant, limits.max_per_credential];
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        if keys.iter().zip(caps).any(|(k, cap)| counts.get(k).copied().unwrap_or(0) >= cap) {
            return None;
        }
        for k in &keys {
            *counts.entry(k.clone()).or_default() += 1;
        }
        Some(Slot { counts: self.counts.clone(), keys })
    }
}

/// One open stream's place in the counts, given back when it ends.
struct Slot {
    counts: Arc<Mutex<HashMap<String, usize>>>,
    /// All streams (""), the tenant's, the actor's.
    keys: [String; 3],
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

struct EventStream {
    state: AppState,
    scope: TenantScope,
    actor: palisade_core::principal::Actor,
    filter: AuditFilter,
    headers: HeaderMap,
    ctx: Ctx,
    _slot: Slot,
    /// The connection's place under the listener's caps.
    _hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
    _running: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// Bytes a stream carried each way.
struct Io {
    sent: u64,
    received: u64,
}

/// How long a stream waits for the database to answer its credential check
/// before it closes (1011): meanwhile it sends nothing.
const UNSURE_AT_MOST: Duration = Duration::from_secs(10);

/// The longest one credential check may take; longer counts as no answer
/// (the stream is not polled for its other events meanwhile).
const CHECK_AT_MOST: Duration = Duration::from_secs(2);

/// Why a stream ended: its close code and reason, and the audit's word.
struct End {
    code: u16,
    reason: &'static str,
}

const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
/// The client went without a close: nothing to send it.
const CLIENT_GONE: &str = "client gone";

impl EventStream {
    async fn run(mut self, mut socket: WebSocket) {
        let stopping = self.state.streams.stopping.clone();
        let limits = self.state.config.streams.clone();
        let started = tokio::time::Instant::now();
        let mut io = Io { sent: 0, received: 0 };
        self.audit("stream.opened", serde_json::json!({ "stream": "events" }));
        let mut poll = tokio::time::interval(Duration::from_millis(limits.poll_ms.max(10)));
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let recheck = Duration::from_millis(limits.recheck_ms.max(10));
        let mut checked = tokio::time::Instant::now();
        let mut unsure_since: Option<tokio::time::Instant> = None;
        let deadline = started + Duration::from_secs(limits.max_duration_secs);
        let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
        let mut heard = tokio::time::Instant::now();
        let mut pinged = false;
        let send_timeout = Duration::from_millis(limits.send_timeout_ms.max(1));
        let end = loop {
            tokio::select! {
                _ = poll.tick() => {
                    // Checked here, before anything is sent, whichever branch
                    // the select favours: the credential when due, the age.
                    let now = tokio::time::Instant::now();
                    if now >= deadline {
                        break End { code: POLICY, reason: "maximum stream duration reached; reconnect" };
                    }
                    if now.duration_since(checked) >= recheck {
                        let check = still_holds(&self.state, &self.headers, &self.ctx, Permission::EventsRead);
                        match tokio::time::timeout(CHECK_AT_MOST, check).await.unwrap_or(Err(())) {
                            Ok(true) => (checked, unsure_since) = (tokio::time::Instant::now(), None),
                            Ok(false) => break End { code: POLICY, reason: "credential no longer valid" },
                            // The database did not answer (in time): nothing
                            // is sent until it does, and not for long.
                            Err(()) => {
                                let since = *unsure_since.get_or_insert(now);
                                if now.duration_since(since) > UNSURE_AT_MOST {
                                    break End { code: 1011, reason: "internal error" };
                                }
                                continue;
                            }
                        }
                    }
                    // A batch ends by the next check: a reader just fast
                    // enough cannot keep the stream away from it.
                    let until = (checked + recheck).min(deadline);
                    match self.deliver(&mut socket, &mut io, until, send_timeout, &limits).await {
                        Ok(true) => {}
                        // The log could not be read: as for the check.
                        Ok(false) => {
                            let since = *unsure_since.get_or_insert(now);
                            if now.duration_since(since) > UNSURE_AT_MOST {
                                break End { code: 1011, reason: "internal error" };
                            }
                        }
                        Err(end) => break end,
                    }
                    // Idle: a ping first, then the cut.
                    if heard.elapsed() > idle {
                        if pinged {
                            break End { code: POLICY, reason: "idle timeout" };
                        }
                        pinged = true;
                        let ping = tokio::time::timeout(send_timeout, socket.send(Message::Ping(Default::default())));
                        if !matches!(ping.await, Ok(Ok(()))) {
                            break End { code: POLICY, reason: "client too slow" };
                        }
                    }
                }
                _ = stopping.cancelled() => {
                    break End { code: GOING_AWAY, reason: "server stopping" };
                }
                _ = tokio::time::sleep_until(deadline) => {
                    break End { code: POLICY, reason: "maximum stream duration reached; reconnect" };
                }
                msg = socket.recv() => match msg {
                    None => break End { code: GOING_AWAY, reason: CLIENT_GONE },
                    Some(Err(e)) => {
                        use tokio_tungstenite::tungstenite::Error as WsError;
                        let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<WsError>());
                        if matches!(cause, Some(WsError::Capacity(_))) {
                            break End { code: TOO_BIG, reason: "message too big" };
                        }
                        break End { code: GOING_AWAY, reason: CLIENT_GONE };
                    }
                    Some(Ok(Message::Close(_))) => break End { code: NORMAL, reason: "closed by the client" },
                    Some(Ok(m)) => {
                        heard = tokio::time::Instant::now();
                        pinged = false;
                        io.received += message_len(&m);
                        if io.received > limits.max_connection_bytes {
                            break End { code: POLICY, reason: "connection byte limit reached; reconnect" };
                        }
                    }
                }
            }
        };
        if end.reason != CLIENT_GONE {
            let frame = CloseFrame { code: end.code, reason: end.reason.into() };
            let _ = tokio::time::timeout(send_timeout, socket.send(Message::Close(Some(frame)))).await;
        }
        self.audit(
            "stream.closed",
            serde_json::json!({
                "stream": "events",
                "code": end.code,
                "reason": end.reason,
                "bytes_sent": io.sent,
                "bytes_received": io.received,
                "seconds": started.elapsed().as_secs(),
            }),
        );
    }

    /// Sends the events after the cursor, moving it past each one sent,
    /// until `until`; what is left goes at the next look. `false` when the
    /// log could not be read.
    async fn deliver(
        &mut self,
        socket: &mut WebSocket,
        io: &mut Io,
        until: tokio::time::Instant,
        send_timeout: Duration,
        limits: &palisade_config::Streams,
    ) -> Result<bool, End> {
        let read = palisade_store::audit::list(self.state.db.reader(), Reader::Tenant(&self.scope), &self.filter);
        let rows = match read.await {
            Ok(rows) => rows,
            Err(e) => {
                tracing::error!(error = %e, "event stream read failed");
                return Ok(false);
            }
        };
        let limit = usize::try_from(self.filter.limit - 1).unwrap_or(0);
        for row in rows.into_iter().take(limit) {
            if tokio::time::Instant::now() >= until {
                break;
            }
            let (seq, id) = (row.seq, row.id.clone());
            let mut message =
                serde_json::json!({ "type": "event", "cursor": seq.to_string(), "event": EventView::for_tenant(row) })
                    .to_string();
            // Never more than the limit either way: an event too large for
            // one message is named, to be read from `GET /v1/events`.
            if message.len() > limits.max_message_bytes {
                message =
                    serde_json::json!({ "type": "event_too_large", "cursor": seq.to_string(), "id": id }).to_string();
            }
            io.sent += message.len() as u64;
            if io.sent > limits.max_connection_bytes {
                return Err(End { code: POLICY, reason: "connection byte limit reached; reconnect" });
            }
            match tokio::time::timeout(send_timeout, socket.send(Message::Text(message.into()))).await {
                Ok(Ok(())) => self.filter.after_seq = Some(seq),
                Ok(Err(_)) => return Err(End { code: GOING_AWAY, reason: CLIENT_GONE }),
                Err(_) => return Err(End { code: POLICY, reason: "client too slow" }),
            }
        }
        Ok(true)
    }

    fn audit(&self, action: &'static str, details: serde_json::Value) {
        let event =
            palisade_audit::Event::new(action, Some(self.scope.tenant_id()), self.actor.clone()).details(details);
        let (state, ctx) = (self.state.clone(), self.ctx.audit.clone());
        tokio::spawn(async move {
            if let Err(e) = palisade_audit::record(&state.db, &event, &ctx, state.now_ms()).await {
                tracing::error!(error = %e, "audit append failed");
            }
        });
    }
}

fn message_len(m: &Message) -> u64 {
    (match m {
        Message::Text(t) => t.len(),
        Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
        Message::Close(_) => 0,
    }) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_in_the_query_string_are_found() {
        let key = format!("ak_{}", "a".repeat(32));
        for raw in [
            format!("api_key={key}"),
            format!("after=5&x={key}"),
            "token=anything".to_owned(),
            "Access_Token=x".to_owned(),
            "a=Bearer%20xyz".to_owned(),
            "jwt=e30.e30.sig".to_owned(),
            "after=e30.e30.sig".to_owned(),
            format!("x=rt_{}", "b".repeat(32)),
            "refresh_token=1".to_owned(),
        ] {
            assert!(credential_in_query(&raw), "{raw}");
        }
        for raw in ["", "after=12&action=auth.login", "resource_id=key_1", "since=2026-01-01T00:00:00Z"] {
            assert!(!credential_in_query(raw), "{raw}");
        }
    }
}
