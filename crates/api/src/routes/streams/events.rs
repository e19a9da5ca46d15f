//! `GET /v1/events/stream`: the tenant's audit events as they are
//! sequenced, with the filters and the cursor of `GET /v1/events`.

use std::time::Duration;

use axum::extract::ws::{WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use palisade_audit::EventView;
use palisade_core::{ApiError, Permission};
use palisade_store::audit::{AuditFilter, Reader};

use super::{upgrade, End, Opening, Session, StreamCaller};
use crate::routes::events::EventQuery;
use crate::state::AppState;

/// Events read per look unless `limit` says otherwise: a stream behind by
/// more catches up over several.
const BATCH: i64 = 500;

/// What a ticket for this stream names.
pub(super) const RESOURCE: &str = "/v1/events/stream";

/// The tenant's audit events, live (WebSocket), with the filters and cursor
/// of `GET /v1/events` (`after`: resume after that event's `cursor`; nothing
/// is lost or sent twice across a reconnect). Send the credential in the
/// `Authorization` header, or a ticket from `POST /v1/stream-tickets` as
/// `ticket`; a credential in the query string is refused. Each event is a
/// text message `{"type": "event", "cursor": "…", "event": {…}}`; reconnect
/// with `after=<cursor>` to resume. Closes with 1008 when the credential no
/// longer holds (revoked, frozen, logged out) or the connection reached its
/// limits, 1009 for a message over the size limit.
#[utoipa::path(get, path = "/v1/events/stream", tag = "events", security(("bearer" = [])),
    params(EventQuery, ("ticket" = Option<String>, Query, description = "A stream ticket (`st_…`), instead of an Authorization header")),
    responses((status = 101, description = "Switching to the WebSocket protocol")))]
pub async fn events(
    State(state): State<AppState>,
    caller: StreamCaller,
    hold: Option<axum::Extension<crate::ConnectionHold>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    caller.opens(RESOURCE)?;
    let scope = caller.auth.scope(Permission::EventsRead).await?;
    let uri: http::Uri =
        format!("/?{}", caller.query).parse().map_err(|_| ApiError::validation("query", "is not valid"))?;
    let Query(q) = Query::<EventQuery>::try_from_uri(&uri).map_err(|e| ApiError::validation("query", e.body_text()))?;
    // The filters and cursor of `GET /v1/events`; `limit` is how many
    // events one look reads.
    let filter = crate::routes::events::filter(EventQuery { limit: Some(q.limit.unwrap_or(BATCH)), ..q })?;
    let ws = upgrade(ws)?;
    let session = Session::open(
        &state,
        Opening {
            caller,
            scope,
            permission: Permission::EventsRead,
            kind: "events",
            details: serde_json::json!({}),
            call: None,
            hold,
        },
    )?;
    Ok(super::bounded(ws, &state.config.streams).on_upgrade(move |socket| run(session, filter, socket)))
}

async fn run(mut s: Session, mut filter: AuditFilter, mut socket: WebSocket) {
    let stopping = s.state.streams.stopping.clone();
    s.opened();
    let mut poll = tokio::time::interval(Duration::from_millis(s.limits.poll_ms.max(10)));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = loop {
        tokio::select! {
            _ = poll.tick() => {
                // Checked here, before anything is sent, whichever branch
                // the select favours: the credential when due, the age.
                if let Err(end) = s.due(&mut socket).await {
                    break end;
                }
                if s.paused() {
                    continue;
                }
                // A batch ends by the next check: a reader just fast
                // enough cannot keep the stream away from it.
                let until = s.next_check();
                if let Err(end) = deliver(&mut s, &mut filter, &mut socket, until).await {
                    break end;
                }
            }
            _ = stopping.cancelled() => break End { code: super::GOING_AWAY, reason: "server stopping" },
            _ = tokio::time::sleep_until(s.deadline) => {
                break End { code: super::POLICY, reason: "maximum stream duration reached; reconnect" };
            }
            msg = socket.recv() => if let Err(end) = s.received(msg) {
                break end;
            },
        }
    };
    s.close(&mut socket, end).await;
}

/// Sends the events after the cursor, moving it past each one sent, until
/// `until`; what is left goes at the next look. A log that cannot be read
/// pauses the stream as an unanswered credential check does.
async fn deliver(
    s: &mut Session,
    filter: &mut AuditFilter,
    socket: &mut WebSocket,
    until: tokio::time::Instant,
) -> Result<(), End> {
    let read = palisade_store::audit::list(s.state.db.reader(), Reader::Tenant(&s.scope), filter);
    let rows = match read.await {
        Ok(rows) => rows,
        Err(e) => {
            tracing::error!(error = %e, "event stream read failed");
            return s.unsure(tokio::time::Instant::now());
        }
    };
    let limit = usize::try_from(filter.limit - 1).unwrap_or(0);
    for row in rows.into_iter().take(limit) {
        if tokio::time::Instant::now() >= until {
            break;
        }
        let (seq, id) = (row.seq, row.id.clone());
        let mut message =
            serde_json::json!({ "type": "event", "cursor": seq.to_string(), "event": EventView::for_tenant(row) })
                .to_string();
        // Never more than the limit either way: an event too large for one
        // message is named, to be read from `GET /v1/events`.
        if message.len() > s.limits.max_message_bytes {
            message = serde_json::json!({ "type": "event_too_large", "cursor": seq.to_string(), "id": id }).to_string();
        }
        s.send(socket, message).await?;
        filter.after_seq = Some(seq);
    }
    Ok(())
}
