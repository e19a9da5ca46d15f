use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use palisade_audit::EventView;
use palisade_core::TenantId;
use palisade_core::{ApiError, Permission};
use palisade_store::audit::{AuditFilter, Reader};
use serde::Deserialize;
use utoipa::IntoParams;

use super::List;
use crate::extract::{Auth, Sysadmin};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Cursor: the `next_cursor` of the previous page.
    after: Option<String>,
    /// Page size, 1 to 500 (default 100).
    limit: Option<i64>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    actor_id: Option<String>,
    /// RFC 3339, inclusive.
    since: Option<String>,
    /// RFC 3339, exclusive.
    until: Option<String>,
}

/// The tenant's own audit events, oldest first.
#[utoipa::path(get, path = "/v1/events", tag = "events", security(("bearer" = [])), params(EventQuery),
    responses((status = 200, body = List<EventView>), (status = 400, body = palisade_core::Problem)))]
pub async fn list(
    State(state): State<AppState>,
    auth: Auth,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<List<EventView>, ApiError> {
    let scope = auth.scope(Permission::EventsRead).await?;
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    page(&state, Reader::Tenant(&scope), q).await
}

/// The tenant query plus `tenant_id`. (Spelled out: `serde(flatten)` loses
/// the number types of query strings.)
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct OperatorEventQuery {
    /// Only this tenant's events; all events (platform ones too) when absent.
    tenant_id: Option<String>,
    after: Option<String>,
    limit: Option<i64>,
    action: Option<String>,
    resource_type: Option<String>,
    resource_id: Option<String>,
    actor_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
}

/// Every audit event of the platform, including those that belong to no
/// tenant (operator actions, failed logins for unknown addresses).
#[utoipa::path(get, path = "/sysadmin/v1/events", tag = "sysadmin", security(("master_key" = [])),
    params(OperatorEventQuery),
    responses((status = 200, body = List<EventView>), (status = 400, body = palisade_core::Problem)))]
pub async fn list_all(
    State(state): State<AppState>,
    admin: Sysadmin,
    query: Result<Query<OperatorEventQuery>, QueryRejection>,
) -> Result<List<EventView>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::validation("query", e.body_text()))?;
    let tenant = q
        .tenant_id
        .map(|t| t.parse::<TenantId>().map_err(|_| ApiError::validation("tenant_id", "must be a tenant id")))
        .transpose()?;
    let rest = EventQuery {
        after: q.after,
        limit: q.limit,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        actor_id: q.actor_id,
        since: q.since,
        until: q.until,
    };
    page(&state, Reader::Operator(&admin.proof, tenant), rest).await
}

async fn page(state: &AppState, reader: Reader<'_>, q: EventQuery) -> Result<List<EventView>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::validation("limit", "must be between 1 and 500"));
    }
    let time = |field: &str, v: Option<String>| -> Result<Option<i64>, ApiError> {
        v.map(|s| {
            palisade_core::clock::parse_rfc3339(&s).ok_or_else(|| ApiError::validation(field, "must be RFC 3339"))
        })
        .transpose()
    };
    let after = q
        .after
        .map(|c| c.parse::<i64>().map_err(|_| ApiError::validation("after", "is not a cursor from this API")))
        .transpose()?;
    let filter = AuditFilter {
        after_seq: after,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        actor_id: q.actor_id,
        since_ms: time("since", q.since)?,
        until_ms: time("until", q.until)?,
        limit: limit + 1,
    };
    let mut rows = palisade_store::audit::list(state.db.reader(), reader, &filter).await?;
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    Ok(List { data: rows.into_iter().map(EventView::from).collect(), next_cursor })
}
