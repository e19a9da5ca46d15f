//! Retention over HTTP: the tenant's periods (messages, recordings) within the
//! operator's bounds, and the operator's restore of soft-deleted messages.
//! The sweeper itself is [`crate::ops::apply_message_retention`].

use axum::extract::State;
use axum::Json;
use palisade_audit::Event;
use palisade_core::{ApiError, Permission, TenantId, TenantScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Auth, PathId, Sysadmin, ValidJson};
use crate::ops::{message_days, recording_days};
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
    /// Recordings (audio and record) are removed after this many days.
    recordings_days: i64,
    recordings_chosen: bool,
    recordings_bounds: Bounds,
    grace_days: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct TenantRetentionChange {
    /// Within `messages_bounds`; `null` goes back to the operator's
    /// default; absent: unchanged.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    messages_days: Option<Option<i64>>,
    /// Within `recordings_bounds`, as `messages_days`. At least one of the
    /// two is given: a request that names neither changes nothing.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    recordings_days: Option<Option<i64>>,
}

/// A member that is there (its value, `null` allowed), told apart from
/// one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

/// A chosen period within the operator's bounds.
fn within(field: &str, days: Option<Option<i64>>, min: u32, max: u32) -> Result<(), ApiError> {
    if let Some(Some(d)) = days {
        if !(i64::from(min)..=i64::from(max)).contains(&d) {
            return Err(ApiError::validation(field, format!("must be {min} to {max} (the operator's bounds)")));
        }
    }
    Ok(())
}

async fn read(state: &AppState, scope: &TenantScope) -> Result<TenantRetention, ApiError> {
    let rules = &state.config.retention;
    let own = palisade_store::retention::messages_days(state.db.reader(), scope).await?;
    let own_recordings = palisade_store::retention::recordings_days(state.db.reader(), scope).await?;
    Ok(TenantRetention {
        recordings_days: recording_days(rules, own_recordings),
        recordings_chosen: own_recordings.is_some(),
        recordings_bounds: Bounds {
            min_days: rules.recordings_min_days,
            max_days: rules.recordings_max_days,
            default_days: rules.recordings_days,
        },
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

/// Sets how long the tenant's messages and recordings are kept (`tenant:manage`, a recent
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
    if req.messages_days.is_none() && req.recordings_days.is_none() {
        return Err(ApiError::validation("messages_days", "give messages_days, recordings_days or both"));
    }
    within("messages_days", req.messages_days, rules.messages_min_days, rules.messages_max_days)?;
    within("recordings_days", req.recordings_days, rules.recordings_min_days, rules.recordings_max_days)?;
    let before = read(&state, &scope).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let mut details = serde_json::Map::new();
    if let Some(days) = req.messages_days {
        palisade_store::retention::set_messages_days(&mut *tx, &scope, days).await?;
        details.insert("messages_days".into(), serde_json::json!({ "from": before.messages_days, "to": days }));
    }
    if let Some(days) = req.recordings_days {
        palisade_store::retention::set_recordings_days(&mut *tx, &scope, days).await?;
        details.insert("recordings_days".into(), serde_json::json!({ "from": before.recordings_days, "to": days }));
    }
    let event = Event::new("tenant.retention_changed", Some(scope.tenant_id()), auth.principal.actor())
        .details(serde_json::Value::Object(details));
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
