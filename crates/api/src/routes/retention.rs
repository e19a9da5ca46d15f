//! Retention over HTTP: the tenant's period for messages within the
//! operator's bounds, and the operator's restore of soft-deleted messages.
//! The sweeper itself is [`crate::ops::apply_message_retention`].

use axum::extract::State;
use axum::Json;
use palisade_audit::Event;
use palisade_core::{ApiError, Permission, TenantId, TenantScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Auth, PathId, Sysadmin, ValidJson};
use crate::ops::message_days;
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Bounds {
    min_days: u32,
    max_days: u32,
    default_days: u32,
}

#[derive(Serialize, ToSchema)]
pub struct TenantRetention {
    /// Messages (body and record) are hidden after this many days, and
    /// removed `grace_days` later.
    messages_days: i64,
    /// Whether `messages_days` is the tenant's own choice.
    messages_chosen: bool,
    messages_bounds: Bounds,
    grace_days: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantRetentionChange {
    /// Within `messages_bounds`; `null` goes back to the operator's
    /// default. Required: a request that forgot it changes nothing.
    #[serde(deserialize_with = "present")]
    #[schema(required = true, nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    messages_days: Option<i64>,
}

/// A member that must be there, `null` allowed.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    Option::<i64>::deserialize(d)
}

async fn read(state: &AppState, scope: &TenantScope) -> Result<TenantRetention, ApiError> {
    let rules = &state.config.retention;
    let own = palisade_store::retention::messages_days(state.db.reader(), scope).await?;
    Ok(TenantRetention {
        messages_days: message_days(rules, own),
        messages_chosen: own.is_some(),
        messages_bounds: Bounds {
            min_days: rules.messages_min_days,
            max_days: rules.messages_max_days,
            default_days: rules.messages_days,
        },
        grace_days: rules.grace_days,
    })
}

/// How long the tenant's data is kept.
#[utoipa::path(get, path = "/v1/tenant/retention", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = TenantRetention), (status = 403, body = palisade_core::Problem)))]
pub async fn get(State(state): State<AppState>, auth: Auth) -> Result<Json<TenantRetention>, ApiError> {
    let scope = auth.scope(Permission::UsersRead).await?;
    Ok(Json(read(&state, &scope).await?))
}

/// Sets how long the tenant's messages are kept (`tenant:manage`, a recent
/// second factor: a shorter period deletes data).
#[utoipa::path(put, path = "/v1/tenant/retention", tag = "tenant", request_body = TenantRetentionChange,
    security(("bearer" = [])),
    responses((status = 200, body = TenantRetention), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem)))]
pub async fn put(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<TenantRetentionChange>,
) -> Result<Json<TenantRetention>, ApiError> {
    let scope = auth.sensitive_scope(Permission::TenantManage).await?;
    let rules = &state.config.retention;
    if let Some(d) = req.messages_days {
        let (min, max) = (i64::from(rules.messages_min_days), i64::from(rules.messages_max_days));
        if !(min..=max).contains(&d) {
            return Err(ApiError::validation(
                "messages_days",
                format!("must be {min} to {max} (the operator's bounds)"),
            ));
        }
    }
    let before = read(&state, &scope).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::retention::set_messages_days(&mut *tx, &scope, req.messages_days).await?;
    let event = Event::new("tenant.retention_changed", Some(scope.tenant_id()), auth.principal.actor())
        .details(serde_json::json!({ "messages_days": { "from": before.messages_days, "to": req.messages_days } }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(read(&state, &scope).await?))
}

#[derive(Serialize, ToSchema)]
pub struct Restored {
    tenant_id: String,
    /// Soft-deleted messages visible again.
    messages: u64,
}

/// The operator's restore: the tenant's soft-deleted messages (past its
/// period, within the grace period) visible again. They are hidden again at
/// the sweeper's next pass unless the tenant's period was raised first.
#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/restore-messages", tag = "sysadmin",
    security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    responses((status = 200, body = Restored), (status = 404, body = palisade_core::Problem)))]
pub async fn restore(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
) -> Result<Json<Restored>, ApiError> {
    let scope = TenantScope::for_sysadmin(&admin.proof, id);
    palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::tenants::lock(&mut *tx, &scope).await?;
    let n = palisade_store::retention::restore_messages(&mut tx, &scope).await?;
    let event = Event::new("retention.restored", Some(id), admin.proof.actor())
        .resource("tenant", id)
        .details(serde_json::json!({ "messages": n }));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(Restored { tenant_id: id.to_string(), messages: n }))
}
