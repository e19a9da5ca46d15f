//! `GET /v1/calls/{id}/stream`: a live call's audio, both ways, in the JSON
//! messages voice-agent frameworks speak (`connected`, `start`, `media`,
//! `mark`, `stop`; the agent sends `media`, `mark` and `clear`). See
//! docs/streams.md for the format.

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::response::Response;
use base64::Engine as _;
use palisade_comms::media::FRAME_MS;
use palisade_comms::{MediaLeg, NoMedia};
use palisade_core::{ApiError, Permission};
use serde::Deserialize;
use serde_json::json;

use super::{upgrade, End, Opening, Session, StreamCaller};
use crate::extract::PathId;
use crate::state::AppState;

/// Hearing a call and speaking into it act on the call.
pub(super) const PERMISSION: Permission = Permission::CallsWrite;

/// What a ticket for a call's stream names.
pub(super) fn resource(call_id: &str) -> String {
    format!("/v1/calls/{call_id}/stream")
}

/// The longest mark name an agent may send.
const MAX_MARK: usize = 256;

/// A live call's audio (WebSocket; `calls:write`): the far end's audio as
/// `media` messages (base64 G.711 μ-law, 8 kHz, 20 ms a message); the
/// agent's `media` is played to the far end in order, `mark` reports back
/// when playback reaches it, `clear` drops what is queued. One stream per
/// call at a time. Send the credential in the `Authorization` header, or
/// a ticket from `POST /v1/stream-tickets` as `ticket`. An agent token
/// streams its identity's calls only; another tenant's call is 404, a call
/// that ended 409, and so is one whose audio does not pass through this
/// server. The stream ends with `stop` and close 1000 when the call ends.
#[utoipa::path(get, path = "/v1/calls/{id}/stream", tag = "calls", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Call id (UUID)"),
        ("ticket" = Option<String>, Query, description = "A stream ticket (`st_…`), instead of an Authorization header")),
    responses((status = 101, description = "Switching to the WebSocket protocol"),
        (status = 409, body = palisade_core::Problem)))]
pub async fn call(
    State(state): State<AppState>,
    caller: StreamCaller,
    PathId(id): PathId<uuid::Uuid>,
    hold: Option<axum::Extension<crate::ConnectionHold>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let id = id.to_string();
    caller.opens(&resource(&id))?;
    let scope = caller.auth.scope(PERMISSION).await?;
    let call = crate::routes::calls::visible_call(&state, &caller.auth, &scope, &id).await?;
    match palisade_store::calls::stream_state(state.db.reader(), &scope, &id)
        .await?
        .as_ref()
        .map(|(c, i)| (c.as_str(), i.as_str()))
    {
        Some((_, "frozen")) => return Err(ApiError::frozen()),
        Some(("queued" | "ringing" | "in_progress", _)) => {}
        _ => return Err(ApiError::conflict("The call has already ended.")),
    }
    if !caller.query.is_empty() {
        return Err(ApiError::validation("query", "takes no parameter but `ticket`"));
    }
    let ws = upgrade(ws)?;
    let details = json!({ "call_id": id });
    let session = Session::open(
        &state,
        Opening { caller, scope, permission: PERMISSION, kind: "call", details, call: Some(id.clone()), hold },
    )?;
    let frames = usize::try_from(state.config.streams.playback_buffer_secs.saturating_mul(1000 / FRAME_MS))
        .unwrap_or(usize::MAX);
    let leg = attach(&state, &id, frames, call.status == "in_progress").await?;
    let stream =
        CallStream { id, from: call.from_number, to: call.to_number, sid: uuid::Uuid::now_v7().to_string(), seq: 0 };
    Ok(super::bounded(ws, &state.config.streams).on_upgrade(move |socket| run(session, stream, leg, socket)))
}

/// Attaches to the call's audio. A call just created is handed to its
/// carrier a moment after its row is written: a call not yet answered is
/// waited for, briefly.
async fn attach(state: &AppState, id: &str, frames: usize, answered: bool) -> Result<MediaLeg, ApiError> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match state.carrier.attach_media(id, frames) {
            Ok(leg) => return Ok(leg),
            Err(NoMedia::NotHere) if !answered && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => {
                return Err(ApiError::conflict(match e {
                    NoMedia::Taken => "Another stream holds this call's audio.",
                    NoMedia::NotThrough => "This call's audio does not pass through this server.",
                    NoMedia::NotHere => {
                        "This call's audio is not on this instance: it has ended, or another instance holds it."
                    }
                }))
            }
        }
    }
}

/// What a call stream says about itself in every message.
struct CallStream {
    id: String,
    from: String,
    to: String,
    sid: String,
    seq: u64,
}

impl CallStream {
    /// A message of `event` with its sequence number and stream id.
    fn message(&mut self, event: &str, key: &str, body: serde_json::Value) -> String {
        self.seq += 1;
        let mut m = json!({ "event": event, "sequenceNumber": self.seq.to_string(), "streamSid": self.sid });
        if let Some(o) = m.as_object_mut() {
            o.insert(key.to_owned(), body);
        }
        m.to_string()
    }
}

async fn run(mut s: Session, mut c: CallStream, mut leg: MediaLeg, mut socket: WebSocket) {
    let stopping = s.state.streams.stopping.clone();
    s.opened();
    let mut tick = tokio::time::interval(Duration::from_millis(s.limits.poll_ms.max(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let connected = json!({ "event": "connected", "protocol": "Call", "version": "1.0.0" }).to_string();
    let mut chunk: u64 = 0;
    let end = match s.send(&mut socket, connected).await {
        Err(end) => end,
        Ok(()) => loop {
            tokio::select! {
                // The stop and the checks first, then what the client says
                // (rate-limited), then traffic towards it.
                biased;
                _ = stopping.cancelled() => break End { code: super::GOING_AWAY, reason: "server stopping" },
                _ = tick.tick() => if let Err(end) = s.due(&mut socket).await {
                    break end;
                },
                msg = socket.recv() => match s.received(msg) {
                    Err(end) => break end,
                    // Nothing a client says is acted on while its credential
                    // is unconfirmed.
                    Ok(None) => {}
                    Ok(Some(_)) if s.paused() => {}
                    Ok(Some(m)) => if let Err(end) = heard(&mut s, &mut c, &leg, &mut socket, m).await {
                        break end;
                    },
                },
                frame = leg.audio.recv() => {
                    let Some(frame) = frame else {
                        break End { code: super::NORMAL, reason: super::CALL_ENDED };
                    };
                    chunk += 1;
                    // Unconfirmed credential: the audio is not heard meanwhile.
                    if s.paused() {
                        continue;
                    }
                    if let Err(end) = send_frame(&mut s, &mut c, &mut socket, chunk, &frame).await {
                        break end;
                    }
                }
                // Held back while the credential is unconfirmed.
                Some(name) = leg.marks.recv(), if !s.paused() => {
                    let mark = c.message("mark", "mark", json!({ "name": name }));
                    if let Err(end) = s.send(&mut socket, mark).await {
                        break end;
                    }
                }
            }
        },
    };
    let end = match end {
        End { reason: super::CALL_ENDED, .. } => {
            let stop = c.message("stop", "stop", json!({ "callSid": c.id, "reason": super::CALL_ENDED }));
            s.send(&mut socket, stop).await.err().unwrap_or(end)
        }
        end => end,
    };
    s.close(&mut socket, end).await;
}

/// The far end's frame as a `media` message; the first is preceded by
/// `start`, which says what the audio is.
async fn send_frame(
    s: &mut Session,
    c: &mut CallStream,
    socket: &mut WebSocket,
    chunk: u64,
    frame: &[u8],
) -> Result<(), End> {
    if c.seq == 0 {
        let start = json!({
            "streamSid": c.sid,
            "callSid": c.id,
            "from": c.from,
            "to": c.to,
            "tracks": ["inbound", "outbound"],
            "mediaFormat": { "encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1 },
        });
        let start = c.message("start", "start", start);
        s.send(socket, start).await?;
        if s.paused() {
            return Ok(());
        }
    }
    let media = json!({
        "track": "inbound",
        "chunk": chunk.to_string(),
        // Milliseconds of audio since the stream began.
        "timestamp": ((chunk - 1) * FRAME_MS).to_string(),
        "payload": base64::engine::general_purpose::STANDARD.encode(frame),
    });
    let media = c.message("media", "media", media);
    s.send(socket, media).await
}

/// A message from the agent.
#[derive(Deserialize)]
struct AgentMessage {
    event: String,
    #[serde(rename = "streamSid")]
    stream_sid: Option<String>,
    media: Option<AgentMedia>,
    mark: Option<AgentMark>,
}

#[derive(Deserialize)]
struct AgentMedia {
    payload: String,
}

#[derive(Deserialize)]
struct AgentMark {
    name: String,
}

/// Acts on the agent's message. A message that cannot be acted on changes
/// nothing and is answered with an `error` message; binary messages close
/// the stream (1003): the protocol is JSON text.
async fn heard(
    s: &mut Session,
    c: &mut CallStream,
    leg: &MediaLeg,
    socket: &mut WebSocket,
    m: Message,
) -> Result<(), End> {
    let Message::Text(text) = m else {
        return Err(End { code: super::UNSUPPORTED, reason: "binary messages are not accepted; send JSON text" });
    };
    let refusal = match act(c, leg, text.as_str()) {
        Ok(()) => return Ok(()),
        Err(r) => r,
    };
    let error = c.message("error", "error", json!({ "reason": refusal.0, "detail": refusal.1 }));
    s.send(socket, error).await
}

/// Why an agent's message was not acted on: a reason word and a sentence.
struct Refusal(&'static str, &'static str);

fn act(c: &CallStream, leg: &MediaLeg, text: &str) -> Result<(), Refusal> {
    let invalid = |d| Refusal("invalid_message", d);
    let m: AgentMessage = serde_json::from_str(text)
        .map_err(|_| invalid("Messages are JSON objects with an `event`: `media`, `mark` or `clear`."))?;
    if m.stream_sid.as_ref().is_some_and(|sid| *sid != c.sid) {
        return Err(invalid("`streamSid` is not this stream's."));
    }
    match m.event.as_str() {
        "media" => {
            let payload = m.media.ok_or_else(|| invalid("`media.payload` is required."))?.payload;
            let audio = base64::engine::general_purpose::STANDARD
                .decode(payload.as_bytes())
                .map_err(|_| invalid("`media.payload` is not base64."))?;
            leg.playback
                .push_audio(&audio)
                .map_err(|_| Refusal("playback_buffer_full", "Too much audio is queued; wait for marks, or `clear`."))
        }
        "mark" => {
            let name = m.mark.ok_or_else(|| invalid("`mark.name` is required."))?.name;
            if name.is_empty() || name.chars().count() > MAX_MARK {
                return Err(invalid("`mark.name` must be 1 to 256 characters."));
            }
            leg.playback.mark(name).map_err(|_| Refusal("playback_buffer_full", "Too much is queued; `clear` first."))
        }
        "clear" => {
            leg.playback.clear();
            Ok(())
        }
        _ => Err(invalid("`event` must be `media`, `mark` or `clear`.")),
    }
}
