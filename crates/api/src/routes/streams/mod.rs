//! Live streams over WebSocket (SPEC §14): the tenant's events
//! (`events.rs`) and a call's audio (`calls.rs`), opened with an
//! `Authorization` header or a single-use ticket (`tickets.rs`).
//! Everything is decided before the upgrade (no 101 without a credential
//! that holds); afterwards a stream checks at intervals that it still
//! does, and closes when it does not. What every stream shares is here.

pub mod calls;
pub mod events;
pub mod tickets;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use http::request::Parts;
use http::HeaderMap;
use palisade_auth::Credential;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, Permission, TenantScope};
use tokio::time::Instant;

use crate::extract::{still_holds, Auth, Ctx, Minter};
use crate::state::AppState;

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

/// Whether the query string carries something that looks like a
/// credential: a parameter named like one, or a value of a credential's
/// form (an API key, agent token, master key or JWT). A stream ticket,
/// made for the query string, is not one.
fn credential_in_query(raw: &str) -> bool {
    url::form_urlencoded::parse(raw.as_bytes()).any(|(k, v)| {
        CREDENTIAL_PARAMS.iter().any(|c| k.eq_ignore_ascii_case(c))
            || !matches!(Credential::classify(v.trim()), Credential::Malformed)
            || v.get(..7).is_some_and(|p| p.eq_ignore_ascii_case("bearer "))
            || SECRET_PREFIXES.iter().any(|p| v.trim().starts_with(p))
    })
}

/// Who opens a stream: authenticated before the upgrade from the
/// `Authorization` header, or from a `ticket` query parameter (used up
/// here, whatever follows). `query` is the query string without the ticket.
pub struct StreamCaller {
    pub auth: Auth,
    /// What the stream checks again at intervals.
    minter: Minter,
    /// The resource a ticket was minted for; `None` for a header.
    ticket_resource: Option<String>,
    query: String,
    headers: HeaderMap,
}

impl FromRequestParts<AppState> for StreamCaller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let raw = parts.uri.query().unwrap_or("").to_owned();
        if credential_in_query(&raw) {
            return Err(refused(
                "Credentials are not accepted in the query string: send an Authorization header or a stream ticket.",
            ));
        }
        let (tickets, rest): (Vec<_>, Vec<_>) =
            url::form_urlencoded::parse(raw.as_bytes()).partition(|(k, _)| k == tickets::PARAM);
        let query = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(&rest).finish();
        let headers = parts.headers.clone();
        let (auth, minter, ticket_resource) = match tickets.as_slice() {
            [] => {
                let auth = Auth::from_request_parts(parts, state).await?;
                let minter = Minter::of_request(state, &headers).ok_or_else(ApiError::unauthenticated)?;
                (auth, minter, None)
            }
            [(_, ticket)] => {
                let (auth, minter, resource) = tickets::redeem(parts, state, ticket).await?;
                (auth, minter, Some(resource))
            }
            _ => return Err(ApiError::validation(tickets::PARAM, "must be given once")),
        };
        Ok(StreamCaller { auth, minter, ticket_resource, query, headers })
    }
}

impl StreamCaller {
    /// A ticket opens only the stream it was minted for (401 otherwise: it
    /// is used up either way).
    fn opens(&self, resource: &str) -> Result<(), ApiError> {
        match &self.ticket_resource {
            Some(r) if r != resource => Err(refused("The ticket was minted for another stream.")),
            _ => Ok(()),
        }
    }
}

/// A 401 that says why (what it says is known to whoever sent it).
fn refused(detail: &'static str) -> ApiError {
    ApiError::new(http::StatusCode::UNAUTHORIZED, "unauthenticated", detail)
        .with_header(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"))
}

/// A plain request (no WebSocket handshake) gets 426, naming the protocol.
fn upgrade(
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<WebSocketUpgrade, ApiError> {
    ws.map_err(|_| {
        ApiError::new(
            http::StatusCode::UPGRADE_REQUIRED,
            "upgrade_required",
            "This is a WebSocket endpoint: open it with a WebSocket handshake.",
        )
        .with_header(http::header::UPGRADE, http::HeaderValue::from_static("websocket"))
    })
}

/// Bytes read from a stream's socket at a time. Tungstenite allocates its
/// read buffer up front (128 KiB by default): per open stream that is most
/// of its memory, while the messages here are small (a call's frame is
/// about 300 bytes). Larger messages are still read whole, in pieces.
const READ_BUFFER: usize = 8 * 1024;

/// The WebSocket's bounds: the message size limit (1009 beyond) and the
/// read buffer.
fn bounded(ws: WebSocketUpgrade, limits: &palisade_config::Streams) -> WebSocketUpgrade {
    let max = limits.max_message_bytes;
    ws.max_message_size(max).max_frame_size(max).read_buffer_size(READ_BUFFER)
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

/// Why a stream ended: its close code and reason, and the audit's word.
struct End {
    code: u16,
    reason: &'static str,
}

const POLICY: u16 = 1008;
const TOO_BIG: u16 = 1009;
const NORMAL: u16 = 1000;
const GOING_AWAY: u16 = 1001;
const UNSUPPORTED: u16 = 1003;
const INTERNAL: u16 = 1011;
/// The client went without a close: nothing to send it.
const CLIENT_GONE: &str = "client gone";
/// A call's stream ends with its call.
const CALL_ENDED: &str = "call ended";

/// The longest a call stream goes without reading its call.
const CALL_AT_LEAST: Duration = Duration::from_secs(5);

/// How soon a check that got no answer is tried again.
const RETRY: Duration = Duration::from_millis(250);

fn limits_recheck(limits: &palisade_config::Streams) -> u64 {
    limits.recheck_ms.max(10)
}

/// How long a stream waits for the database to answer its credential check
/// before it closes (1011): meanwhile it sends nothing.
const UNSURE_AT_MOST: Duration = Duration::from_secs(10);

/// The longest one credential check may take; longer counts as no answer.
const CHECK_AT_MOST: Duration = Duration::from_secs(2);

/// One open stream's bounds and bookkeeping, whatever it carries: its
/// credential's re-checks, age, idle time, bytes and message rate, its
/// place under the caps, and its audit events.
struct Session {
    state: AppState,
    scope: TenantScope,
    actor: Actor,
    minter: Minter,
    headers: HeaderMap,
    ctx: Ctx,
    permission: Permission,
    limits: palisade_config::Streams,
    /// What the audit calls it (`events`, `call`).
    kind: &'static str,
    details: serde_json::Value,
    /// A call's audio: the call, whose status and identity are checked
    /// with the credential.
    call: Option<String>,
    /// The tenant's invalidation mark and the time of the call's last check.
    call_checked: Option<(Option<u64>, Instant)>,
    started: Instant,
    deadline: Instant,
    /// When the credential is checked next.
    next_check_at: Instant,
    unsure_since: Option<Instant>,
    heard: Instant,
    pinged: bool,
    sent: u64,
    received: u64,
    /// Client messages allowed now (a bucket refilled at the rate).
    allowance: f64,
    refilled: Instant,
    _slot: Slot,
    /// The connection's place under the listener's caps.
    _hold: Option<Arc<dyn std::any::Any + Send + Sync>>,
    _running: tokio_util::task::task_tracker::TaskTrackerToken,
}

/// What a stream needs from its handler before the upgrade.
struct Opening {
    caller: StreamCaller,
    scope: TenantScope,
    permission: Permission,
    kind: &'static str,
    details: serde_json::Value,
    call: Option<String>,
    hold: Option<axum::Extension<crate::ConnectionHold>>,
}

impl Session {
    /// Takes the stream's place under the caps (429 when full; 503 when
    /// the server is stopping).
    fn open(state: &AppState, o: Opening) -> Result<Session, ApiError> {
        if state.streams.stopping.is_cancelled() {
            return Err(ApiError::new(http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", "The server is stopping."));
        }
        let limits = state.config.streams.clone();
        // Counted by who acts (a person, key or identity), not by the token:
        // logging in again or refreshing gives no more streams.
        let actor = o.caller.auth.principal.actor();
        let who = format!("{}:{}", actor.kind, actor.id.as_deref().unwrap_or(""));
        let Some(slot) = state.streams.admit(&o.scope, &who, &limits) else {
            return Err(ApiError::new(
                http::StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "Too many open streams; close one first.",
            ));
        };
        let now = Instant::now();
        Ok(Session {
            state: state.clone(),
            scope: o.scope,
            actor,
            minter: o.caller.minter,
            headers: o.caller.headers,
            ctx: o.caller.auth.ctx,
            permission: o.permission,
            deadline: now + Duration::from_secs(limits.max_duration_secs),
            allowance: f64::from(limits.max_client_messages_per_sec) * 2.0,
            limits,
            kind: o.kind,
            details: o.details,
            call: o.call,
            call_checked: None,
            started: now,
            next_check_at: now + Duration::from_millis(limits_recheck(&state.config.streams)),
            unsure_since: None,
            heard: now,
            pinged: false,
            sent: 0,
            received: 0,
            refilled: now,
            _slot: slot,
            _hold: o.hold.map(|axum::Extension(h)| h.0),
            // Taken before the upgrade: a stop waits for this stream too.
            _running: state.streams.running.token(),
        })
    }

    fn recheck(&self) -> Duration {
        Duration::from_millis(limits_recheck(&self.limits))
    }

    fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.limits.send_timeout_ms.max(1))
    }

    /// When the next credential check is due (or the stream's end, if sooner).
    fn next_check(&self) -> Instant {
        self.next_check_at.min(self.deadline)
    }

    /// The credential has not been confirmed lately (the database did not
    /// answer): nothing is sent meanwhile.
    fn paused(&self) -> bool {
        self.unsure_since.is_some()
    }

    /// What is due now: the age limit, the credential's re-check, the idle
    /// ping and cut. `Err` ends the stream.
    async fn due(&mut self, socket: &mut WebSocket) -> Result<(), End> {
        let now = Instant::now();
        if now >= self.deadline {
            return Err(End { code: POLICY, reason: "maximum stream duration reached; reconnect" });
        }
        if now >= self.next_check_at {
            self.check().await?;
        }
        if self.heard.elapsed() > Duration::from_secs(self.limits.idle_timeout_secs.max(1)) {
            if self.pinged {
                return Err(End { code: POLICY, reason: "idle timeout" });
            }
            self.pinged = true;
            self.send_message(socket, Message::Ping(Default::default())).await?;
        }
        Ok(())
    }

    /// Checks that the credential still holds (and, for a call's audio,
    /// that the call is live and its identity not frozen). Unanswered: the
    /// stream pauses, and asks again soon.
    async fn check(&mut self) -> Result<(), End> {
        let now = Instant::now();
        let check = async {
            if !still_holds(&self.state, &self.minter, &self.headers, &self.ctx, self.permission).await? {
                return Ok(Some(End { code: POLICY, reason: "credential no longer valid" }));
            }
            self.check_call().await
        };
        let outcome = tokio::time::timeout(CHECK_AT_MOST, check).await.unwrap_or(Err(()));
        let after = Instant::now();
        match outcome {
            Ok(None) => {
                (self.next_check_at, self.unsure_since) = (after + self.recheck(), None);
                Ok(())
            }
            Ok(Some(end)) => {
                // Decided: what is still said before the close (a call's
                // `stop`) goes without checking again.
                self.next_check_at = self.deadline;
                Err(end)
            }
            Err(()) => {
                // Counted from the answer (or the timeout), not from the ask.
                self.next_check_at = after + self.recheck().min(RETRY);
                self.unsure(now)
            }
        }
    }

    /// For a call's audio: whether the call is still live and its identity
    /// not frozen. Read again when something of the tenant changed (every
    /// instance hears of a freeze at once), and at least every
    /// `CALL_AT_LEAST` (a hang-up on another instance); never while
    /// invalidations are not being heard.
    async fn check_call(&mut self) -> Result<Option<End>, ()> {
        let Some(id) = &self.call else { return Ok(None) };
        let mark = self.state.credentials.cache.mark(self.scope.tenant_id());
        let fresh =
            self.call_checked.is_some_and(|(m, at)| mark.is_some() && m == mark && at.elapsed() < CALL_AT_LEAST);
        if fresh {
            return Ok(None);
        }
        let read_at = Instant::now();
        let call =
            palisade_store::calls::stream_state(self.state.db.reader(), &self.scope, id).await.map_err(|_| ())?;
        self.call_checked = Some((mark, read_at));
        Ok(match call.as_ref().map(|(c, i)| (c.as_str(), i.as_str())) {
            Some(("queued" | "ringing" | "in_progress", "active")) => None,
            Some((_, "frozen")) => Some(End { code: POLICY, reason: "identity frozen" }),
            _ => Some(End { code: NORMAL, reason: CALL_ENDED }),
        })
    }

    /// Something the stream depends on did not answer: it waits, not long.
    fn unsure(&mut self, now: Instant) -> Result<(), End> {
        let since = *self.unsure_since.get_or_insert(now);
        if now.duration_since(since) > UNSURE_AT_MOST {
            return Err(End { code: INTERNAL, reason: "internal error" });
        }
        Ok(())
    }

    /// A client message, counted against the bytes and rate; what the
    /// stream should read (text or binary), or why it ends.
    fn received(&mut self, msg: Option<Result<Message, axum::Error>>) -> Result<Option<Message>, End> {
        let m = match msg {
            None => return Err(End { code: GOING_AWAY, reason: CLIENT_GONE }),
            Some(Err(e)) => {
                use tokio_tungstenite::tungstenite::Error as WsError;
                let cause = std::error::Error::source(&e).and_then(|s| s.downcast_ref::<WsError>());
                if matches!(cause, Some(WsError::Capacity(_))) {
                    return Err(End { code: TOO_BIG, reason: "message too big" });
                }
                return Err(End { code: GOING_AWAY, reason: CLIENT_GONE });
            }
            Some(Ok(Message::Close(_))) => return Err(End { code: NORMAL, reason: "closed by the client" }),
            Some(Ok(m)) => m,
        };
        self.heard = Instant::now();
        self.pinged = false;
        self.received += message_len(&m);
        if self.received > self.limits.max_connection_bytes {
            return Err(End { code: POLICY, reason: "connection byte limit reached; reconnect" });
        }
        let rate = f64::from(self.limits.max_client_messages_per_sec.max(1));
        let now = Instant::now();
        self.allowance = (self.allowance + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate * 2.0);
        self.refilled = now;
        if self.allowance < 1.0 {
            return Err(End { code: POLICY, reason: "message rate exceeded" });
        }
        self.allowance -= 1.0;
        Ok(matches!(m, Message::Text(_) | Message::Binary(_)).then_some(m))
    }

    /// Sends one text message, within the connection's byte limit and the
    /// send timeout (a slow reader is cut off, never buffered for).
    async fn send(&mut self, socket: &mut WebSocket, text: String) -> Result<(), End> {
        self.sent += text.len() as u64;
        if self.sent > self.limits.max_connection_bytes {
            return Err(End { code: POLICY, reason: "connection byte limit reached; reconnect" });
        }
        self.send_message(socket, Message::Text(text.into())).await
    }

    /// Sends one message within the send timeout, running the checks that
    /// fall due meanwhile.
    async fn send_message(&mut self, socket: &mut WebSocket, message: Message) -> Result<(), End> {
        let send = tokio::time::timeout(self.send_timeout(), socket.send(message));
        tokio::pin!(send);
        // A reader slow to take the message does not hold the checks back.
        loop {
            tokio::select! {
                sent = &mut send => return match sent {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(_)) => Err(End { code: GOING_AWAY, reason: CLIENT_GONE }),
                    Err(_) => Err(End { code: POLICY, reason: "client too slow" }),
                },
                () = tokio::time::sleep_until(self.next_check()) => {
                    if Instant::now() >= self.deadline {
                        return Err(End { code: POLICY, reason: "maximum stream duration reached; reconnect" });
                    }
                    self.check().await?;
                }
            }
        }
    }

    /// Says why it ends (unless the client is gone) and audits it.
    async fn close(self, socket: &mut WebSocket, end: End) {
        if end.reason != CLIENT_GONE {
            let frame = CloseFrame { code: end.code, reason: end.reason.into() };
            let _ = tokio::time::timeout(self.send_timeout(), socket.send(Message::Close(Some(frame)))).await;
        }
        let mut details = serde_json::json!({
            "stream": self.kind,
            "code": end.code,
            "reason": end.reason,
            "bytes_sent": self.sent,
            "bytes_received": self.received,
            "seconds": self.started.elapsed().as_secs(),
        });
        merge(&mut details, &self.details);
        self.audit("stream.closed", details);
    }

    fn opened(&self) {
        let mut details = serde_json::json!({ "stream": self.kind });
        merge(&mut details, &self.details);
        self.audit("stream.opened", details);
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

fn merge(into: &mut serde_json::Value, from: &serde_json::Value) {
    if let (Some(into), Some(from)) = (into.as_object_mut(), from.as_object()) {
        into.extend(from.iter().map(|(k, v)| (k.clone(), v.clone())));
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
            format!("ticket={key}"),
            "refresh_token=1".to_owned(),
        ] {
            assert!(credential_in_query(&raw), "{raw}");
        }
        let ticket = palisade_auth::token::new_stream_ticket();
        for raw in [
            "",
            "after=12&action=auth.login",
            "resource_id=key_1",
            "since=2026-01-01T00:00:00Z",
            &format!("ticket={ticket}"),
        ] {
            assert!(!credential_in_query(raw), "{raw}");
        }
    }
}
