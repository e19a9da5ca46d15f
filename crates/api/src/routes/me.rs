use axum::Json;
use palisade_core::{ApiError, PrincipalKind};
use serde::Serialize;
use utoipa::ToSchema;

use crate::extract::Auth;

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
pub async fn me(auth: Auth) -> Result<Json<MeResponse>, ApiError> {
    // Answered from what authentication verified, with no database read:
    // the names are cached with the credential and invalidated with it.
    let p = &auth.profile;
    let (kind, id) = match auth.principal.kind() {
        PrincipalKind::User { user_id, .. } => ("user", user_id.to_string()),
        PrincipalKind::ApiKey { key_id, .. } => ("api_key", key_id.to_string()),
        PrincipalKind::Agent { identity_id, .. } => ("agent", identity_id.to_string()),
    };
    Ok(Json(MeResponse {
        kind,
        id,
        email: p.email.clone(),
        name: p.name.clone(),
        role: p.role.clone(),
        permissions: auth.principal.permissions().to_strings(),
        tenant: TenantRef {
            id: auth.principal.tenant_id().to_string(),
            name: p.tenant_name.clone(),
            status: p.tenant_status.clone(),
        },
    }))
}
