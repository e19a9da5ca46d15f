//! Recordings over HTTP: their metadata, the audio (opened chunk by chunk
//! as it is sent, with Range requests) and deletion. An agent token sees
//! its own identity's recordings only; every download and deletion is
//! audited. Recordings are made by [`palisade_admission`] when a recorded
//! call ends.

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use palisade_audit::Event;
use palisade_core::{ApiError, Permission, TenantScope};
use palisade_recordings::{FileKey, ObjectKey};
use palisade_store::recordings::RecordingRow;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{confine_to_own_identity, own_identity, List};
use crate::extract::{Auth, PathId, QueryParams};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct RecordingView {
    id: String,
    call_id: String,
    identity_id: String,
    created_at: String,
    duration_ms: i64,
    /// Bytes of the WAV file (8 kHz mono 16-bit PCM).
    size: i64,
    /// Where its audio is: `GET` it (Range requests work).
    audio_url: String,
}

impl From<RecordingRow> for RecordingView {
    fn from(r: RecordingRow) -> Self {
        RecordingView {
            audio_url: format!("/v1/recordings/{}/audio", r.id),
            id: r.id,
            call_id: r.call_id,
            identity_id: r.identity_id,
            created_at: palisade_core::clock::rfc3339(r.created_at),
            duration_ms: r.duration_ms,
            size: r.size,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecordingQuery {
    /// At most this many, newest first (1–100, default 50).
    #[param(minimum = 1, maximum = 100)]
    limit: Option<i64>,
    /// Only this call's.
    call_id: Option<uuid::Uuid>,
}

#[utoipa::path(get, path = "/v1/recordings", tag = "recordings", security(("bearer" = [])), params(RecordingQuery),
    responses((status = 200, body = List<RecordingView>), (status = 400, body = palisade_core::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    QueryParams(q): QueryParams<RecordingQuery>,
) -> Result<List<RecordingView>, ApiError> {
    let scope = auth.scope(Permission::RecordingsRead).await?;
    let limit = q.limit.unwrap_or(50);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 100"));
    }
    let call = q.call_id.map(|c| c.to_string());
    let rows = palisade_store::recordings::list(state.db.reader(), &scope, own_identity(&auth), call.as_deref(), limit)
        .await?;
    Ok(List { data: rows.into_iter().map(RecordingView::from).collect(), next_cursor: None })
}

async fn visible(state: &AppState, auth: &Auth, scope: &TenantScope, id: &str) -> Result<RecordingRow, ApiError> {
    let row = palisade_store::recordings::get(state.db.reader(), scope, id).await?.ok_or_else(ApiError::not_found)?;
    confine_to_own_identity(auth, &row.identity_id)?;
    Ok(row)
}

#[utoipa::path(get, path = "/v1/recordings/{id}", tag = "recordings", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Recording id (UUID)")),
    responses((status = 200, body = RecordingView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<RecordingView>, ApiError> {
    let scope = auth.scope(Permission::RecordingsRead).await?;
    Ok(Json(visible(&state, &auth, &scope, &id.to_string()).await?.into()))
}

/// Bytes opened and sent at a time: whole chunks of the sealed file.
const PIECE: u64 = 16 * palisade_recordings::sealed::CHUNK;

/// The audio as WAV, decrypted as it is sent. One byte range
/// (`Range: bytes=…`) gets 206 with `Content-Range`; several ranges are
/// answered with the whole file, as HTTP allows.
#[utoipa::path(get, path = "/v1/recordings/{id}/audio", tag = "recordings", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Recording id (UUID)"),
        ("Range" = Option<String>, Header, description = "One byte range, `bytes=<first>-<last>`")),
    responses((status = 200, content_type = "audio/wav", body = Vec<u8>),
        (status = 206, content_type = "audio/wav", body = Vec<u8>),
        (status = 404, body = palisade_core::Problem), (status = 416, body = palisade_core::Problem)))]
pub async fn audio(
    State(state): State<AppState>,
    auth: Auth,
    headers: HeaderMap,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Response, ApiError> {
    let scope = auth.scope(Permission::RecordingsRead).await?;
    let row = visible(&state, &auth, &scope, &id.to_string()).await?;
    let size = u64::try_from(row.size).unwrap_or(0);
    let range = match headers.get(header::RANGE) {
        None => None,
        Some(v) => requested_range(v, size).map_err(|()| unsatisfiable(size))?,
    };
    let keys = state.keys.of(&scope).await?;
    let file_key = FileKey::from_bytes(&row.file_key(&scope, &keys)?)
        .ok_or_else(|| ApiError::internal("a recording's key is malformed"))?;
    let (start, end) = range.unwrap_or((0, size));
    let event = Event::new("recording.downloaded", Some(scope.tenant_id()), auth.principal.actor())
        .resource("recording", &row.id)
        .details(serde_json::json!({ "call_id": row.call_id, "from": start, "to": end }));
    palisade_audit::record(&state.db, &event, &auth.ctx.audit, state.now_ms()).await?;
    let object = ObjectKey::new(scope.tenant_id(), id);
    // The first piece before the answer: a missing or damaged file is an
    // error response, not a cut-off body.
    let storage = state.admission.recordings.clone();
    let first_end = end.min(start + PIECE);
    let first = palisade_recordings::read_range(&*storage, &object, &file_key, size, start..first_end)
        .await
        .map_err(|e| ApiError::internal(format!("reading recording {}: {e}", row.id)))?;
    let rest = futures_util::stream::unfold(first_end, move |at| {
        let (storage, object, file_key) = (storage.clone(), object.clone(), file_key.clone());
        async move {
            if at >= end {
                return None;
            }
            let to = end.min(at + PIECE);
            let piece = palisade_recordings::read_range(&*storage, &object, &file_key, size, at..to).await;
            Some((piece.map(bytes::Bytes::from), to))
        }
    });
    let body = futures_util::stream::once(std::future::ready(Ok(bytes::Bytes::from(first)))).chain(rest);
    let mut response = Body::from_stream(body).into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("audio/wav"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if range.is_some() {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{size}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
        *response.status_mut() = StatusCode::PARTIAL_CONTENT;
    }
    Ok(response)
}

/// The one range asked for as `start..end`; `None` to send the whole file:
/// a header that is not one byte range (another unit, bad syntax, several
/// ranges) is ignored, as HTTP says. `Err` when the range is not within the
/// file.
fn requested_range(v: &HeaderValue, size: u64) -> Result<Option<(u64, u64)>, ()> {
    // A list of thousands of ranges would cost the parser's pairwise
    // overlap check: one range is short.
    let Some(text) = v.to_str().ok().filter(|t| t.len() <= 64 && !t.contains(',')) else { return Ok(None) };
    let Ok(parsed) = http_range_header::parse_range_header(text) else { return Ok(None) };
    let ranges = parsed.validate(size).map_err(drop)?;
    match ranges.as_slice() {
        [one] if one.start() <= one.end() && *one.end() < size => Ok(Some((*one.start(), one.end() + 1))),
        [_] => Err(()),
        _ => Ok(None),
    }
}

fn unsatisfiable(size: u64) -> ApiError {
    ApiError::new(StatusCode::RANGE_NOT_SATISFIABLE, "range_not_satisfiable", "The range is not within the recording.")
        .with_header(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes */{size}")).unwrap_or(HeaderValue::from_static("bytes */0")),
        )
}

/// Deletes the recording: its audio and its record (`recordings:manage`,
/// which agent tokens never hold, and a recent second factor for a person
/// who has one).
#[utoipa::path(delete, path = "/v1/recordings/{id}", tag = "recordings", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Recording id (UUID)")),
    responses((status = 204), (status = 403, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.sensitive_scope(Permission::RecordingsManage).await?;
    let row = visible(&state, &auth, &scope, &id.to_string()).await?;
    let removed = state.admission.remove_recording(&scope, &row, auth.principal.actor(), &auth.ctx.audit).await?;
    if !removed {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}
