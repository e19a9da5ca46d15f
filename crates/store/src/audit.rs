//! The audit table. Rows are only ever inserted.

use palisade_core::principal::SysadminProof;
use palisade_core::{TenantId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AuditRow {
    pub seq: i64,
    pub id: String,
    pub ts: i64,
    pub tenant_id: Option<String>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

/// An event to append; `seq` is assigned by the database.
#[derive(Debug, Clone, Default)]
pub struct NewAuditRow {
    pub id: String,
    pub ts: i64,
    pub tenant_id: Option<String>,
    pub actor_type: String,
    pub actor_id: Option<String>,
    pub action: String,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub source_ip: Option<String>,
    pub user_agent: Option<String>,
    pub request_id: Option<String>,
    pub details: String,
}

pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, r: &NewAuditRow) -> Result<()> {
    sqlx::query(
        "INSERT INTO audit_events (id, ts, tenant_id, actor_type, actor_id, action, resource_type, resource_id, \
         source_ip, user_agent, request_id, details) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
    )
    .bind(&r.id)
    .bind(r.ts)
    .bind(&r.tenant_id)
    .bind(&r.actor_type)
    .bind(&r.actor_id)
    .bind(&r.action)
    .bind(&r.resource_type)
    .bind(&r.resource_id)
    .bind(&r.source_ip)
    .bind(&r.user_agent)
    .bind(&r.request_id)
    .bind(&r.details)
    .execute(ex)
    .await?;
    Ok(())
}

#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub after_seq: Option<i64>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub actor_id: Option<String>,
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub limit: i64,
}

/// A tenant's own events, oldest first, after the cursor.
/// Whose events to read: one tenant's, or (operator only) the platform's,
/// optionally narrowed to one tenant.
pub enum Reader<'a> {
    Tenant(&'a TenantScope),
    Operator(&'a SysadminProof, Option<TenantId>),
}

pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    reader: Reader<'_>,
    f: &AuditFilter,
) -> Result<Vec<AuditRow>> {
    let tenant = match reader {
        Reader::Tenant(scope) => Some(scope.tenant_id()),
        Reader::Operator(_, tenant) => tenant,
    };
    // Optional filters are bound as NULL and short-circuited in SQL, so the
    // statement text is fixed and every value is a bound parameter.
    Ok(sqlx::query_as(
        "SELECT seq, id, ts, tenant_id, actor_type, actor_id, action, resource_type, resource_id, source_ip, \
           user_agent, request_id, details FROM audit_events \
         WHERE ($1 IS NULL OR tenant_id = $1) AND seq > $2 \
           AND ($3 IS NULL OR action = $3) AND ($4 IS NULL OR resource_type = $4) \
           AND ($5 IS NULL OR resource_id = $5) AND ($6 IS NULL OR actor_id = $6) \
           AND ($7 IS NULL OR ts >= $7) AND ($8 IS NULL OR ts < $8) \
         ORDER BY seq LIMIT $9",
    )
    .bind(tenant.map(|t| t.to_string()))
    .bind(f.after_seq.unwrap_or(0))
    .bind(&f.action)
    .bind(&f.resource_type)
    .bind(&f.resource_id)
    .bind(&f.actor_id)
    .bind(f.since_ms)
    .bind(f.until_ms)
    .bind(f.limit)
    .fetch_all(ex)
    .await?)
}
