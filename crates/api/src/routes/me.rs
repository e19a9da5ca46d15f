use axum::extract::State;
use axum::Json;
use palisade_core::{ApiError, PrincipalKind};
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::Auth;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct TenantRef {
    id: String,
    name: String,
    status: String,
}

#[derive(Serialize, ToSchema)]
pub struct MeResponse {
    /// `user` or `api_key`.
    #[serde(rename = "type")]
    kind: &'static str,
    id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    role: Option<String>,
    permissions: Vec<String>,
    tenant: TenantRef,
}

/// The calling principal and its tenant.
#[utoipa::path(get, path = "/v1/me", tag = "me", security(("bearer" = [])),
    responses((status = 200, body = MeResponse), (status = 401, body = palisade_core::Problem)))]
pub async fn me(State(state): State<AppState>, auth: Auth) -> Result<Json<MeResponse>, ApiError> {
    let scope = auth.principal.own_scope();
    let tenant = palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let tenant = TenantRef { id: tenant.id, name: tenant.name, status: tenant.status };
    let permissions = auth.principal.permissions().to_strings();
    let resp = match auth.principal.kind() {
        PrincipalKind::User { user_id, .. } => {
            let u = palisade_store::users::get(state.db.reader(), &scope, *user_id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            MeResponse {
                kind: "user",
                id: u.id,
                email: Some(u.email),
                name: None,
                role: Some(u.role),
                permissions,
                tenant,
            }
        }
        PrincipalKind::ApiKey { key_id, .. } => {
            let k = palisade_store::api_keys::get(state.db.reader(), &scope, *key_id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            MeResponse { kind: "api_key", id: k.id, email: None, name: Some(k.name), role: k.role, permissions, tenant }
        }
        PrincipalKind::Agent { identity_id, .. } => {
            let i = palisade_store::identities::get(state.db.reader(), &scope, *identity_id)
                .await?
                .ok_or_else(ApiError::not_found)?;
            MeResponse { kind: "agent", id: i.id, email: None, name: Some(i.name), role: None, permissions, tenant }
        }
    };
    Ok(Json(resp))
}
