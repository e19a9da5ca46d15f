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
    let permissions = auth.principal.permissions().to_strings();
    // The tenant and the principal's own row are read at once: on
    // PostgreSQL each read is a round trip.
    let tenant = async {
        let t = palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
        Ok::<_, ApiError>(TenantRef { id: t.id, name: t.name, status: t.status })
    };
    let own = async {
        Ok::<_, ApiError>(match auth.principal.kind() {
            PrincipalKind::User { user_id, .. } => {
                let u = palisade_store::users::get(state.db.reader(), &scope, *user_id)
                    .await?
                    .ok_or_else(ApiError::not_found)?;
                ("user", u.id, Some(u.email), None, Some(u.role))
            }
            PrincipalKind::ApiKey { key_id, .. } => {
                let k = palisade_store::api_keys::get(state.db.reader(), &scope, *key_id)
                    .await?
                    .ok_or_else(ApiError::not_found)?;
                ("api_key", k.id, None, Some(k.name), k.role)
            }
            PrincipalKind::Agent { identity_id, .. } => {
                let i = palisade_store::identities::get(state.db.reader(), &scope, *identity_id)
                    .await?
                    .ok_or_else(ApiError::not_found)?;
                ("agent", i.id, None, Some(i.name), None)
            }
        })
    };
    let (tenant, (kind, id, email, name, role)) = tokio::try_join!(tenant, own)?;
    Ok(Json(MeResponse { kind, id, email, name, role, permissions, tenant }))
}
