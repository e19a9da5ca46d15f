//! Data exports (GDPR) over HTTP: a tenant's (`tenant:manage`, with a
//! recent second factor) or a person's own, built as a job by
//! [`palisade_exports`]; status, then the archive. Every request and
//! download is audited.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{header, HeaderValue, StatusCode};
use palisade_audit::Event;
use palisade_core::{ApiError, Permission, TenantScope, UserId};
use palisade_store::exports::{ExportRow, NewExport};
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::{Auth, PathId};
use crate::state::AppState;

/// How long a finished archive can be downloaded.
const KEPT_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Serialize, ToSchema)]
pub struct ExportView {
    id: String,
    /// `tenant`, or `user` (a person's own data).
    subject: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<String>,
    /// `pending`, `ready`, `failed` or `expired`.
    status: String,
    /// Where the archive (`application/x-tar`) is, once ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    download_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    size: Option<i64>,
    /// SHA-256 (hex) of the archive.
    #[serde(skip_serializing_if = "Option::is_none")]
    sha256: Option<String>,
    created_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    finished_at: Option<String>,
    expires_at: String,
}

fn view(r: ExportRow, now: i64) -> ExportView {
    let status = if r.expires_at < now { "expired".to_owned() } else { r.status };
    ExportView {
        download_url: (status == "ready").then(|| format!("/v1/exports/{}/download", r.id)),
        id: r.id,
        subject: r.subject,
        user_id: r.user_id,
        status,
        size: r.size,
        sha256: r.sha256,
        created_at: palisade_core::clock::rfc3339(r.created_at),
        finished_at: r.finished_at.map(palisade_core::clock::rfc3339),
        expires_at: palisade_core::clock::rfc3339(r.expires_at),
    }
}

/// Records the request and starts the job on this instance (another takes
/// it over after a restart).
async fn request(
    state: &AppState,
    auth: &Auth,
    scope: TenantScope,
    user: Option<UserId>,
) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let now = state.now_ms();
    let id = uuid::Uuid::now_v7().to_string();
    let user_id = user.map(|u| u.to_string());
    let subject = if user.is_some() { "user" } else { "tenant" };
    let requested_by = auth.principal.actor().id.unwrap_or_default();
    let new = NewExport {
        id: &id,
        subject,
        user_id: user_id.as_deref(),
        requested_by: &requested_by,
        now,
        expires_at: now + KEPT_MS,
    };
    let event = Event::new("export.requested", Some(scope.tenant_id()), auth.principal.actor())
        .resource("export", &id)
        .details(serde_json::json!({ "subject": subject, "user_id": user_id }));
    let mut tx = state.db.begin().await?;
    // The tenant row lock orders two requests racing on PostgreSQL.
    palisade_store::tenants::lock(&mut *tx, &scope).await?;
    if !palisade_store::exports::insert(&mut *tx, &scope, &new).await? {
        return Err(ApiError::conflict("An export of the tenant is being built: wait for it to finish."));
    }
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let (job, job_scope, job_id) = (state.clone(), scope.clone(), id.clone());
    state.deliveries.spawn(async move {
        let exports =
            palisade_exports::Exports { db: job.db.clone(), keys: job.keys.clone(), clock: job.clock.clone() };
        if let Err(e) = exports.run(&job_scope, &job_id).await {
            tracing::error!(error = %e, export = %job_id, "export job failed");
        }
    });
    let row = palisade_store::exports::get(state.db.reader(), &scope, &id).await?.ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::ACCEPTED, Json(view(row, now))))
}

/// Exports everything the platform holds about the tenant (no secrets:
/// no key or password hash, sealed secret or token).
#[utoipa::path(post, path = "/v1/exports", tag = "exports", security(("bearer" = [])),
    responses((status = 202, body = ExportView), (status = 403, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn create(State(state): State<AppState>, auth: Auth) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let scope = auth.sensitive_scope(Permission::TenantManage).await?;
    request(&state, &auth, scope, None).await
}

/// Exports what the platform holds about one person: their own (any
/// person, with a recent second factor if they have one), or any of the
/// tenant's people for `tenant:manage`.
#[utoipa::path(post, path = "/v1/users/{id}/export", tag = "exports", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id (UUID)")),
    responses((status = 202, body = ExportView), (status = 403, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn create_for_user(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<UserId>,
) -> Result<(StatusCode, Json<ExportView>), ApiError> {
    let asks_for_self = matches!(auth.principal.kind(), palisade_core::principal::PrincipalKind::User { user_id, .. } if *user_id == id);
    let scope = if asks_for_self {
        auth.own_sensitive_scope()?.0
    } else {
        auth.sensitive_scope(Permission::TenantManage).await?
    };
    palisade_store::users::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    request(&state, &auth, scope, Some(id)).await
}

/// The export if the caller may see it: `tenant:manage` (for the archive
/// itself with a recent second factor, like asking for it), or the person
/// a person's export is about. Anything else is a 404.
async fn visible(
    state: &AppState,
    auth: &Auth,
    id: uuid::Uuid,
    archive: bool,
) -> Result<(TenantScope, ExportRow), ApiError> {
    let (scope, me) = if auth.principal.permissions().contains(Permission::TenantManage) {
        let scope = if archive {
            auth.sensitive_scope(Permission::TenantManage).await?
        } else {
            auth.scope(Permission::TenantManage).await?
        };
        (scope, None)
    } else {
        match auth.own_sensitive_scope() {
            Ok((scope, me)) => (scope, Some(me.to_string())),
            Err(e) if e.status() == StatusCode::FORBIDDEN && e.reason() == "mfa_required" => return Err(e),
            Err(_) => return Err(auth.scope(Permission::TenantManage).await.err().unwrap_or_else(ApiError::not_found)),
        }
    };
    let row = palisade_store::exports::get(state.db.reader(), &scope, &id.to_string())
        .await?
        .filter(|r| me.is_none() || r.user_id == me)
        .ok_or_else(ApiError::not_found)?;
    Ok((scope, row))
}

#[utoipa::path(get, path = "/v1/exports/{id}", tag = "exports", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Export id (UUID)")),
    responses((status = 200, body = ExportView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<ExportView>, ApiError> {
    let (_, row) = visible(&state, &auth, id, false).await?;
    Ok(Json(view(row, state.now_ms())))
}

/// The archive: a tar of JSON lines with `manifest.json` and `SHA256SUMS`.
#[utoipa::path(get, path = "/v1/exports/{id}/download", tag = "exports", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Export id (UUID)")),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn download(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Response, ApiError> {
    let (scope, row) = visible(&state, &auth, id, true).await?;
    let now = state.now_ms();
    if row.status != "ready" || row.expires_at < now {
        return Err(ApiError::conflict(format!("The export is {}, not ready.", view(row, now).status)));
    }
    let keys = state.keys.of(&scope).await?;
    let archive = palisade_store::exports::archive(state.db.reader(), &scope, &keys, &row.id)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let event = Event::new("export.downloaded", Some(scope.tenant_id()), auth.principal.actor())
        .resource("export", &row.id)
        .details(serde_json::json!({ "size": archive.len() }));
    palisade_audit::record(&state.db, &event, &auth.ctx.audit, now).await?;
    let disposition = format!("attachment; filename=\"palisade-export-{}.tar\"", row.id);
    let mut response = archive.into_response();
    let h = response.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/x-tar"));
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}
