//! The audit trail's record shape and its one append path (SPEC §8).
//! Details carry the minimum to reconstruct what happened and never a
//! message body, password, token, key or full phone number.

pub mod checkpoint;
#[cfg(test)]
mod db_tests;
pub mod log;
pub mod merkle;
pub mod sequencer;
pub mod tenant;
pub mod verify;
#[cfg(test)]
mod verify_tests;

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
    // Which operator acted is the platform's to know, not the tenant's.
    let named = event.actor.id.is_some();
    if !(is_operator(&event.actor) && event.tenant_id.is_some() && (has_context || named)) {
        return (id, vec![row]);
    }
    let tenant_row = NewAuditRow { source_ip: None, user_agent: None, request_id: None, actor_id: None, ..row.clone() };
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
    actor.kind == Actor::sysadmin().kind || actor.kind == "operator"
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

#[cfg(test)]
mod tests {
    use palisade_core::UserId;

    use super::*;

    fn ctx(ip: bool, ua: bool, rid: bool) -> Context {
        Context {
            source_ip: ip.then(|| "192.0.2.1".to_owned()),
            user_agent: ua.then(|| "curl/8".to_owned()),
            request_id: rid.then(|| "r1".to_owned()),
        }
    }

    #[test]
    fn one_row_with_its_context() {
        let tenant = TenantId::new();
        let user = UserId::new();
        let e = Event::new("api_key.created", Some(tenant), Actor::user(user))
            .resource("api_key", "k1")
            .details(serde_json::json!({"name": "ci"}));
        let (id, rows) = rows_of(&e, &ctx(true, true, true), 42);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!((r.id.clone(), r.ts, r.tenant_id.clone()), (id.to_string(), 42, Some(tenant.to_string())));
        assert_eq!((r.actor_type.as_str(), r.actor_id.clone()), ("user", Some(user.to_string())));
        assert_eq!(
            (r.action.as_str(), r.resource_type.as_deref(), r.resource_id.as_deref()),
            ("api_key.created", Some("api_key"), Some("k1"))
        );
        assert_eq!(
            (r.source_ip.as_deref(), r.user_agent.as_deref(), r.request_id.as_deref()),
            (Some("192.0.2.1"), Some("curl/8"), Some("r1"))
        );
        assert_eq!(r.details, r#"{"name":"ci"}"#);
        let bare = rows_of(&Event::new("x", None, Actor::system()), &Context::default(), 1).1;
        assert_eq!(bare[0].details, "{}");
        let long = Context { user_agent: Some("u".repeat(600)), ..Context::default() };
        assert_eq!(rows_of(&e, &long, 1).1[0].user_agent.as_ref().map(String::len), Some(512));
    }

    #[test]
    fn an_operators_request_context_goes_to_the_platforms_record() {
        let tenant = TenantId::new();
        let e = Event::new("tenant.frozen", Some(tenant), Actor::sysadmin()).resource("tenant", tenant);
        for c in [ctx(true, false, false), ctx(false, true, false), ctx(false, false, true)] {
            let (id, rows) = rows_of(&e, &c, 7);
            assert_eq!(rows.len(), 2, "{c:?}");
            let (mine, platform) = (&rows[0], &rows[1]);
            assert_eq!((mine.id.clone(), mine.tenant_id.clone()), (id.to_string(), Some(tenant.to_string())));
            assert_eq!((&mine.source_ip, &mine.user_agent, &mine.request_id), (&None, &None, &None), "{c:?}");
            assert_eq!((platform.action.as_str(), &platform.tenant_id), (OPERATOR_REQUEST, &None));
            assert_eq!(
                (&platform.source_ip, &platform.user_agent, &platform.request_id),
                (&c.source_ip, &c.user_agent, &c.request_id)
            );
            let d: Value = serde_json::from_str(&platform.details).unwrap();
            assert_eq!(
                d,
                serde_json::json!({"tenant_id": tenant.to_string(), "event_id": id.to_string(), "action": "tenant.frozen"})
            );
        }
        // No context (the CLI), or no tenant: one record.
        assert_eq!(rows_of(&e, &Context::default(), 7).1.len(), 1);
        let platform_only = Event::new("sysadmin.login", None, Actor::sysadmin());
        assert_eq!(rows_of(&platform_only, &ctx(true, true, true), 7).1.len(), 1);
        // An operator account's request is split the same way, and the
        // tenant's record does not name the operator (the platform's does).
        let by_operator = Event::new("tenant.frozen", Some(tenant), Actor::operator("op-1"));
        for c in [ctx(true, true, true), Context::default()] {
            let rows = rows_of(&by_operator, &c, 7).1;
            assert_eq!(rows.len(), 2);
            assert_eq!((rows[0].actor_id.as_deref(), rows[1].actor_id.as_deref()), (None, Some("op-1")));
        }
    }

    #[test]
    fn tenants_see_no_operator_details() {
        let row = |actor_type: &str| AuditRow {
            seq: 1,
            id: "e".into(),
            ts: 0,
            tenant_id: Some("t".into()),
            actor_type: actor_type.into(),
            actor_id: Some("a".into()),
            action: "x".into(),
            resource_type: None,
            resource_id: None,
            source_ip: Some("192.0.2.1".into()),
            user_agent: Some("ua".into()),
            request_id: Some("r".into()),
            details: r#"{"k":1}"#.into(),
        };
        for operator in ["sysadmin", "operator"] {
            let v = EventView::for_tenant(row(operator));
            assert_eq!((v.actor.id, v.source_ip, v.user_agent, v.request_id), (None, None, None, None), "{operator}");
        }
        let v = EventView::for_tenant(row("user"));
        assert_eq!((v.actor.id.as_deref(), v.source_ip.as_deref()), (Some("a"), Some("192.0.2.1")));
        assert_eq!((v.ts.as_str(), v.details), ("1970-01-01T00:00:00Z", serde_json::json!({"k": 1})));
    }
}
