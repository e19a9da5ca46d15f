//! The audit trail's record shape and its one append path (SPEC §8).
//! Details carry the minimum to reconstruct what happened and never a
//! message body, password, token, key or full phone number.

pub mod checkpoint;
pub mod log;
pub mod merkle;
pub mod verify;

use palisade_core::principal::Actor;
use palisade_core::{EventId, TenantId};
use palisade_store::audit::{AuditRow, NewAuditRow};
use palisade_store::Db;
use serde::Serialize;
use serde_json::Value;
use sqlx::{Any, Executor};

/// Where a request came from, attached to every event it causes.
#[derive(Debug, Clone, Default)]
pub struct Context {
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
}

/// One event, built by the code that performs the action.
#[derive(Debug, Clone)]
pub struct Event {
    pub action: &'static str,
    pub tenant_id: Option<TenantId>,
    pub actor: Actor,
    pub resource_type: Option<&'static str>,
    pub resource_id: Option<String>,
    pub details: Value,
}

impl Event {
    pub fn new(action: &'static str, tenant_id: Option<TenantId>, actor: Actor) -> Self {
        Self { action, tenant_id, actor, resource_type: None, resource_id: None, details: Value::Null }
    }

    pub fn resource(mut self, kind: &'static str, id: impl ToString) -> Self {
        self.resource_type = Some(kind);
        self.resource_id = Some(id.to_string());
        self
    }

    pub fn details(mut self, details: Value) -> Self {
        self.details = details;
        self
    }
}

/// Appends one event. Pass the transaction of the action it records so the
/// two commit or roll back together.
pub async fn append<'c>(
    ex: impl Executor<'c, Database = Any>,
    event: &Event,
    ctx: &Context,
    now_ms: i64,
) -> palisade_store::Result<EventId> {
    let (id, rows) = rows_of(event, ctx, now_ms);
    palisade_store::audit::insert(ex, &rows).await?;
    Ok(id)
}

/// Appends one event that is the whole of its action (a refusal, a failed
/// login, a CLI command): nothing else is written with it.
pub async fn record(db: &Db, event: &Event, ctx: &Context, now_ms: i64) -> palisade_store::Result<EventId> {
    let (id, stmt) = append_stmt(event, ctx, now_ms);
    db.write_all(vec![stmt]).await?;
    Ok(id)
}

/// The append as a statement for [`Db::write_all`], to commit with the
/// statements of the action it records.
pub fn append_stmt(event: &Event, ctx: &Context, now_ms: i64) -> (EventId, palisade_store::Stmt) {
    let (id, rows) = rows_of(event, ctx, now_ms);
    (id, palisade_store::audit::insert_stmt(rows))
}

/// The action of the platform's record of an operator's request behind a
/// tenant's event.
pub const OPERATOR_REQUEST: &str = "sysadmin.tenant_event";

/// The one place an event becomes rows: one, except for an operator's
/// action recorded under a tenant. The tenant's record then says only that
/// the operator acted (no address, user agent or request id: the operator's
/// details are not the tenant's to see, and the record is what a tenant's
/// inclusion proof shows byte for byte); a second record, the platform's
/// own (no tenant), keeps where the request came from and names the
/// tenant's record. Both are in the log, committed together.
fn rows_of(event: &Event, ctx: &Context, now_ms: i64) -> (EventId, Vec<NewAuditRow>) {
    let (id, row) = row_of(event, ctx, now_ms);
    let has_context = ctx.source_ip.is_some() || ctx.user_agent.is_some() || ctx.request_id.is_some();
    if !(is_operator(&event.actor) && event.tenant_id.is_some() && has_context) {
        return (id, vec![row]);
    }
    let tenant_row = NewAuditRow { source_ip: None, user_agent: None, request_id: None, ..row.clone() };
    let platform = Event {
        action: OPERATOR_REQUEST,
        tenant_id: None,
        actor: event.actor.clone(),
        resource_type: event.resource_type,
        resource_id: event.resource_id.clone(),
        details: serde_json::json!({ "tenant_id": row.tenant_id, "event_id": row.id, "action": row.action }),
    };
    let (_, platform_row) = row_of(&platform, ctx, now_ms);
    (id, vec![tenant_row, platform_row])
}

fn is_operator(actor: &Actor) -> bool {
    actor.kind == Actor::sysadmin().kind
}

/// An event as one row, with the request's context.
fn row_of(event: &Event, ctx: &Context, now_ms: i64) -> (EventId, NewAuditRow) {
    let id = EventId::new();
    let row = NewAuditRow {
        id: id.to_string(),
        ts: now_ms,
        tenant_id: event.tenant_id.map(|t| t.to_string()),
        actor_type: event.actor.kind.clone(),
        actor_id: event.actor.id.clone(),
        action: event.action.to_owned(),
        resource_type: event.resource_type.map(str::to_owned),
        resource_id: event.resource_id.clone(),
        source_ip: ctx.source_ip.clone(),
        user_agent: ctx.user_agent.as_deref().map(|u| u.chars().take(512).collect()),
        request_id: ctx.request_id.clone(),
        details: if event.details.is_null() { "{}".into() } else { event.details.to_string() },
    };
    (id, row)
}

/// An event as a tenant reads it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct EventView {
    pub id: String,
    pub seq: i64,
    /// RFC 3339.
    pub ts: String,
    pub tenant_id: Option<String>,
    pub actor: Actor,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    #[schema(value_type = Object)]
    pub details: Value,
}

impl EventView {
    /// The event as its tenant sees it: an operator's action shows the
    /// operator (`sysadmin`, no id) and nothing of where its request came
    /// from. Records written since the operator's details went to the
    /// platform's record hold none; this covers older ones.
    pub fn for_tenant(r: AuditRow) -> Self {
        let mut v = EventView::from(r);
        if is_operator(&v.actor) {
            v.actor.id = None;
            (v.source_ip, v.user_agent, v.request_id) = (None, None, None);
        }
        v
    }
}

impl From<AuditRow> for EventView {
    fn from(r: AuditRow) -> Self {
        EventView {
            id: r.id,
            seq: r.seq,
            ts: palisade_core::clock::rfc3339(r.ts),
            tenant_id: r.tenant_id,
            actor: Actor { kind: r.actor_type, id: r.actor_id },
            action: r.action,
            resource_type: r.resource_type,
            resource_id: r.resource_id,
            source_ip: r.source_ip,
            user_agent: r.user_agent,
            request_id: r.request_id,
            details: serde_json::from_str(&r.details).unwrap_or(Value::Null),
        }
    }
}
