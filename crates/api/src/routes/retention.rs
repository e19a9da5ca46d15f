//! Retention over HTTP: the tenant's periods (per data type) within the
//! operator's bounds, and the operator's restore of soft-deleted messages.
//! The sweeper itself is [`crate::retention`].

use axum::extract::State;
use axum::Json;
use palisade_audit::Event;
use palisade_core::{ApiError, Permission, TenantId, TenantScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Auth, PathId, Sysadmin, ValidJson};
use palisade_store::retention::Kind;

use crate::retention::{period, period_rule};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Bounds {
    min_days: u32,
    max_days: u32,
    default_days: u32,
}

#[derive(Serialize, ToSchema)]
pub struct HourBounds {
    min_hours: u32,
    max_hours: u32,
    default_hours: u32,
}

#[derive(Serialize, ToSchema)]
pub struct TenantRetention {
    /// Messages (body and record) are hidden after this many days, and
    /// removed `grace_days` later.
    messages_days: i64,
    /// Whether `messages_days` is the tenant's own choice.
    messages_chosen: bool,
    messages_bounds: Bounds,
    /// Calls and CDRs are hidden after this many days, and removed
    /// `grace_days` later (usage keeps their hours).
    calls_days: i64,
    calls_chosen: bool,
    calls_bounds: Bounds,
    /// Recordings (audio and record) are removed after this many days.
    recordings_days: i64,
    recordings_chosen: bool,
    recordings_bounds: Bounds,
    /// Finished webhook deliveries (with their attempts and events) are
    /// removed after this many days; 0 keeps them.
    webhooks_days: i64,
    webhooks_chosen: bool,
    webhooks_bounds: Bounds,
    /// Ended sessions (signed out, revoked or expired, with their refresh
    /// tokens) are removed this many hours after they ended.
    sessions_hours: i64,
    sessions_chosen: bool,
    sessions_bounds: HourBounds,
    /// The tenant's audit records are removed after this many days, under
    /// a signed statement (the log still verifies); 0 keeps them. Never
    /// longer than the platform's period (`audit_bounds.max_days`).
    audit_days: i64,
    audit_chosen: bool,
    audit_bounds: Bounds,
    grace_days: u32,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(min_properties = 1)]
pub struct TenantRetentionChange {
    /// Within `messages_bounds`; `null` goes back to the operator's
    /// default; absent: unchanged. At least one member is given: a request
    /// that names none changes nothing.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    messages_days: Option<Option<i64>>,
    /// Within `calls_bounds`, as `messages_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    calls_days: Option<Option<i64>>,
    /// Within `recordings_bounds`, as `messages_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    recordings_days: Option<Option<i64>>,
    /// Within `webhooks_bounds`, as `messages_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    webhooks_days: Option<Option<i64>>,
    /// Within `sessions_bounds` (hours), as `messages_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 876000)]
    sessions_hours: Option<Option<i64>>,
    /// Within `audit_bounds`, as `messages_days`.
    #[serde(default, deserialize_with = "present")]
    #[schema(nullable, value_type = Option<i64>, minimum = 1, maximum = 36500)]
    audit_days: Option<Option<i64>>,
}

/// A member that is there (its value, `null` allowed), told apart from
/// one left out (`None`).
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Option<i64>>, D::Error> {
    Option::<i64>::deserialize(d).map(Some)
}

fn bounds(config: &palisade_config::Config, kind: Kind) -> Bounds {
    let (default_days, min_days, max_days) = period_rule(config, kind);
    Bounds { min_days, max_days, default_days }
}

async fn read(state: &AppState, scope: &TenantScope) -> Result<TenantRetention, ApiError> {
    let c = &state.config;
    let mut own = [None; 6];
    for (slot, kind) in own.iter_mut().zip(KINDS) {
        *slot = palisade_store::retention::days(state.db.reader(), scope, kind).await?;
    }
    let [messages, calls, recordings, webhooks, sessions, audit] = own;
    let (default_hours, min_hours, max_hours) = period_rule(c, Kind::Sessions);
    Ok(TenantRetention {
        messages_days: period(c, Kind::Messages, messages),
        messages_chosen: messages.is_some(),
        messages_bounds: bounds(c, Kind::Messages),
        calls_days: period(c, Kind::Calls, calls),
        calls_chosen: calls.is_some(),
        calls_bounds: bounds(c, Kind::Calls),
        recordings_days: period(c, Kind::Recordings, recordings),
        recordings_chosen: recordings.is_some(),
        recordings_bounds: bounds(c, Kind::Recordings),
        webhooks_days: period(c, Kind::Webhooks, webhooks),
        webhooks_chosen: webhooks.is_some(),
        webhooks_bounds: bounds(c, Kind::Webhooks),
        sessions_hours: period(c, Kind::Sessions, sessions),
        sessions_chosen: sessions.is_some(),
        sessions_bounds: HourBounds { min_hours, max_hours, default_hours },
        audit_days: period(c, Kind::Audit, audit),
        audit_chosen: audit.is_some(),
        audit_bounds: bounds(c, Kind::Audit),
        grace_days: c.retention.grace_days,
    })
}

const KINDS: [Kind; 6] = [Kind::Messages, Kind::Calls, Kind::Recordings, Kind::Webhooks, Kind::Sessions, Kind::Audit];

/// How long the tenant's data is kept.
#[utoipa::path(get, path = "/v1/tenant/retention", tag = "tenant", security(("bearer" = [])),
    responses((status = 200, body = TenantRetention), (status = 403, body = palisade_core::Problem)))]
pub async fn get(State(state): State<AppState>, auth: Auth) -> Result<Json<TenantRetention>, ApiError> {
    let scope = auth.scope(Permission::UsersRead).await?;
    Ok(Json(read(&state, &scope).await?))
}

/// Sets how long the tenant's messages, calls, recordings, webhook
/// deliveries, ended sessions and audit records are kept (`tenant:manage`,
/// a recent second factor: a shorter period deletes data).
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
    let changes = [
        ("messages_days", Kind::Messages, req.messages_days),
        ("calls_days", Kind::Calls, req.calls_days),
        ("recordings_days", Kind::Recordings, req.recordings_days),
        ("webhooks_days", Kind::Webhooks, req.webhooks_days),
        ("sessions_hours", Kind::Sessions, req.sessions_hours),
        ("audit_days", Kind::Audit, req.audit_days),
    ];
    if changes.iter().all(|(_, _, days)| days.is_none()) {
        return Err(ApiError::validation(
            "messages_days",
            "give messages_days, calls_days, recordings_days, webhooks_days, sessions_hours or audit_days",
        ));
    }
    for (field, kind, days) in changes {
        let (_, min, max) = period_rule(&state.config, kind);
        if let Some(Some(d)) = days {
            if !(i64::from(min)..=i64::from(max)).contains(&d) {
                return Err(ApiError::validation(field, format!("must be {min} to {max} (the operator's bounds)")));
            }
        }
    }
    let before = serde_json::to_value(read(&state, &scope).await?).unwrap_or_default();
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let mut details = serde_json::Map::new();
    for (field, kind, days) in changes {
        if let Some(days) = days {
            palisade_store::retention::set_days(&mut *tx, &scope, kind, days).await?;
            details.insert(field.into(), serde_json::json!({ "from": before[field], "to": days }));
        }
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

#[derive(Serialize, ToSchema)]
pub struct RestoredCalls {
    tenant_id: String,
    /// Soft-deleted calls visible again.
    calls: u64,
    /// Hidden CDRs visible again.
    cdrs: u64,
}

/// The operator's restore of calls: the tenant's soft-deleted calls and
/// hidden CDRs (within the grace period) visible again, as for messages.
#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/restore-calls", tag = "sysadmin",
    security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    responses((status = 200, body = RestoredCalls), (status = 404, body = palisade_core::Problem)))]
pub async fn restore_calls(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
) -> Result<Json<RestoredCalls>, ApiError> {
    let scope = TenantScope::for_sysadmin(&admin.proof, id);
    palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::tenants::lock(&mut *tx, &scope).await?;
    let (calls, cdrs) = palisade_store::retention::restore_calls(&mut tx, &scope).await?;
    let event = Event::new("retention.restored", Some(id), admin.proof.actor())
        .resource("tenant", id)
        .details(serde_json::json!({ "calls": calls, "cdrs": cdrs }));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(RestoredCalls { tenant_id: id.to_string(), calls, cdrs }))
}
