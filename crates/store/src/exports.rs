//! Data exports: the job rows, their sealed archives, and the tenant's rows
//! as an export shows them (named columns only: never a hash, a sealed
//! secret or a token).

use palisade_core::TenantScope;
use palisade_seal::envelope::{Place, TenantKeys};
use sqlx::{Any, Column, Executor, Row};

use crate::sealed::{open_bytes, seal_bytes};
use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct ExportRow {
    pub id: String,
    pub tenant_id: String,
    pub subject: String,
    pub user_id: Option<String>,
    pub requested_by: String,
    pub status: String,
    pub size: Option<i64>,
    pub sha256: Option<String>,
    pub error: Option<String>,
    pub created_at: i64,
    pub finished_at: Option<i64>,
    pub expires_at: i64,
}

const COLS: &str =
    "id, tenant_id, subject, user_id, requested_by, status, size, sha256, error, created_at, finished_at, expires_at";

fn archive_place(id: &str) -> Place<'_> {
    Place { table: "exports", column: "archive", row: id }
}

pub struct NewExport<'a> {
    pub id: &'a str,
    /// `tenant` or `user`.
    pub subject: &'a str,
    pub user_id: Option<&'a str>,
    pub requested_by: &'a str,
    pub now: i64,
    pub expires_at: i64,
}

/// Records a requested export, unless the tenant has one pending already
/// (false then: one at a time per tenant).
pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, e: &NewExport<'_>) -> Result<bool> {
    let r = sqlx::query(
        "INSERT INTO exports (id, tenant_id, subject, user_id, requested_by, status, created_at, expires_at) \
         SELECT $1, $2, $3, $4, $5, 'pending', $6, $7 \
         WHERE NOT EXISTS (SELECT 1 FROM exports WHERE tenant_id = $2 AND status = 'pending')",
    )
    .bind(e.id)
    .bind(scope.tenant_id().to_string())
    .bind(e.subject)
    .bind(e.user_id)
    .bind(e.requested_by)
    .bind(e.now)
    .bind(e.expires_at)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
) -> Result<Option<ExportRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM exports WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// Takes a pending export for `until` (the worker's lease) with the
/// worker's `token`; false when it is not pending or another worker holds it.
pub async fn claim<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    token: &str,
    now: i64,
    until: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE exports SET claimed_until = $1, claim = $5 WHERE tenant_id = $2 AND id = $3 AND status = 'pending' \
         AND (claimed_until IS NULL OR claimed_until < $4)",
    )
    .bind(until)
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(now)
    .bind(token)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The archive sealed under the tenant's key, as [`finish`] stores it
/// (sealed before the write: it can be large).
pub fn seal_archive(scope: &TenantScope, keys: &TenantKeys, id: &str, archive: &[u8]) -> Result<String> {
    seal_bytes(scope, keys, archive_place(id), archive)
}

/// Pending exports nobody holds (a restart interrupted them): `(tenant, id)`.
pub async fn unclaimed<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &palisade_core::principal::SysadminProof,
    now: i64,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, id FROM exports WHERE status = 'pending' AND (claimed_until IS NULL OR claimed_until < $1) \
         ORDER BY created_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// What a finished build stores.
pub struct Finished<'a> {
    /// From [`seal_archive`].
    pub sealed: &'a str,
    pub size: usize,
    pub sha256: &'a str,
}

/// Stores the finished archive, if `token` still holds the export; false
/// when another worker took it over.
pub async fn finish<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    token: &str,
    done: &Finished<'_>,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE exports SET status = 'ready', archive_sealed = $1, size = $2, sha256 = $3, finished_at = $4, \
         claimed_until = NULL WHERE tenant_id = $5 AND id = $6 AND status = 'pending' AND claim = $7",
    )
    .bind(done.sealed)
    .bind(i64::try_from(done.size).unwrap_or(i64::MAX))
    .bind(done.sha256)
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(token)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Records a failed build, if `token` still holds the export.
pub async fn fail<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    token: &str,
    error: &str,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE exports SET status = 'failed', error = $1, finished_at = $2, claimed_until = NULL \
         WHERE tenant_id = $3 AND id = $4 AND status = 'pending' AND claim = $5",
    )
    .bind(error)
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(token)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The ready archive, opened.
pub async fn archive<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    id: &str,
) -> Result<Option<Vec<u8>>> {
    let stored: Option<Option<String>> =
        sqlx::query_scalar("SELECT archive_sealed FROM exports WHERE tenant_id = $1 AND id = $2 AND status = 'ready'")
            .bind(scope.tenant_id().to_string())
            .bind(id)
            .fetch_optional(ex)
            .await?;
    let Some(Some(stored)) = stored else { return Ok(None) };
    open_bytes(scope, keys, archive_place(id), &stored).map(Some)
}

/// Forgets exports past their expiry, archive and row.
pub async fn purge_expired(db: &crate::Db, now: i64) -> Result<u64> {
    let n = db.write_all(vec![crate::Stmt::new("DELETE FROM exports WHERE expires_at < $1").bind(now)]).await?;
    Ok(n.first().copied().unwrap_or(0))
}

/// A table of the tenant as an export shows it.
pub struct Table {
    /// The file in the archive (`<name>.jsonl`).
    pub name: &'static str,
    pub sql_table: &'static str,
    /// The columns shown: none is a hash, a sealed secret or a token.
    pub columns: &'static str,
    pub order: &'static str,
    /// Rows retention has hidden stay out, as they are out of the API.
    pub shown: &'static str,
}

/// What a tenant's export holds besides its messages (read with their
/// bodies opened) and its audit events.
pub const TENANT_TABLES: &[Table] = &[
    Table { name: "tenant", sql_table: "tenants", columns: "id, name, status, created_at", order: "id", shown: "" },
    Table { name: "users", sql_table: "users", columns: "id, email, role, status, created_at", order: "id", shown: "" },
    Table {
        name: "identities",
        sql_table: "identities",
        columns: "id, kind, number, country, name, rate_per_second, monthly_budget, allowed_countries, status, \
                  srtp, created_at, updated_at",
        order: "id",
        shown: "",
    },
    Table {
        name: "api_keys",
        sql_table: "api_keys",
        columns: "id, name, prefix, permissions, role, created_by_type, created_by_id, owner_user_id, expires_at, \
                  allowed_ips, allowed_origins, status, revoked_at, last_used_at, created_at",
        order: "id",
        shown: "",
    },
    Table {
        name: "webhooks",
        sql_table: "webhook_endpoints",
        columns: "id, url, description, events, ed25519_public, status, disabled_reason, created_at, updated_at",
        order: "id",
        shown: "",
    },
    Table {
        name: "calls",
        sql_table: "calls",
        columns: "id, identity_id, direction, from_number, to_number, to_country, status, error_code, prepaid, \
                  answered_at, ended_at, created_at, updated_at, record",
        order: "id",
        shown: " AND deleted_at IS NULL",
    },
    // What each recording is; its audio is downloaded from the API (its
    // key, sealed, is not exported).
    Table {
        name: "recordings",
        sql_table: "recordings",
        columns: "id, call_id, identity_id, created_at, duration_ms, size",
        order: "id",
        shown: "",
    },
    Table {
        name: "cdrs",
        sql_table: "cdrs",
        columns: "id, call_id, identity_id, direction, from_number, to_number, to_country, status, started_at, \
                  answered_at, ended_at, duration_secs, billed_minutes, cost",
        order: "id",
        shown: " AND ended_at >= COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = $1), 0)",
    },
    Table {
        name: "credits",
        sql_table: "credit_ledger",
        columns: "id, amount, reason, reference, created_at",
        order: "id",
        shown: "",
    },
];

/// A person's own rows besides their audit events.
pub const USER_TABLES: &[Table] = &[
    Table { name: "user", sql_table: "users", columns: "id, email, role, status, created_at", order: "id", shown: "" },
    Table {
        name: "sessions",
        sql_table: "token_families",
        columns: "id, created_at, expires_at, revoked_at",
        order: "id",
        shown: "",
    },
    Table {
        name: "api_keys",
        sql_table: "api_keys",
        columns: "id, name, prefix, permissions, role, expires_at, status, revoked_at, last_used_at, created_at",
        order: "id",
        shown: "",
    },
];

/// At most this many rows of one table go into an export (the manifest
/// says when a file stopped there): an export is built in memory.
pub const MAX_ROWS: i64 = 50_000;

/// The table's rows of the tenant (of one person: `user_column` = `user`),
/// each a JSON object of the named columns.
pub async fn rows<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    table: &Table,
    user: Option<(&'static str, &str)>,
) -> Result<Vec<serde_json::Value>> {
    let tenant_col = if table.sql_table == "tenants" { "id" } else { "tenant_id" };
    let (filter, person) = match user {
        Some((column, id)) => (format!(" AND {column} = $2"), id.to_owned()),
        None => (" AND $2 = ''".to_owned(), String::new()),
    };
    let sql = format!(
        "SELECT {} FROM {} WHERE {tenant_col} = $1{filter}{} ORDER BY {} LIMIT $3",
        table.columns, table.sql_table, table.shown, table.order
    );
    let found = sqlx::query(&sql).bind(scope.tenant_id().to_string()).bind(person).bind(MAX_ROWS).fetch_all(ex).await?;
    Ok(found.iter().map(json_of).collect())
}

/// The tenant's audit events (one person's: those they did or that were
/// about them), oldest first.
pub async fn events<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: Option<&str>,
) -> Result<Vec<serde_json::Value>> {
    // In a person's export, who else acted on them and from where is not
    // theirs to see: those fields only for their own actions.
    let found = sqlx::query(
        "SELECT id, ts, actor_type, CASE WHEN $2 = '' OR actor_id = $2 THEN actor_id END AS actor_id, action, \
         resource_type, resource_id, CASE WHEN $2 = '' OR actor_id = $2 THEN source_ip END AS source_ip, \
         CASE WHEN $2 = '' OR actor_id = $2 THEN user_agent END AS user_agent, \
         CASE WHEN $2 = '' OR actor_id = $2 THEN request_id END AS request_id, details \
         FROM audit_events WHERE tenant_id = $1 AND ($2 = '' OR actor_id = $2 OR resource_id = $2) \
         ORDER BY seq LIMIT $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(user.unwrap_or_default())
    .bind(MAX_ROWS)
    .fetch_all(ex)
    .await?;
    Ok(found.iter().map(json_of).collect())
}

fn json_of(row: &sqlx::any::AnyRow) -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for (i, c) in row.columns().iter().enumerate() {
        let v = if let Ok(v) = row.try_get::<Option<i64>, _>(i) {
            v.map_or(serde_json::Value::Null, Into::into)
        } else if let Ok(v) = row.try_get::<Option<String>, _>(i) {
            v.map_or(serde_json::Value::Null, Into::into)
        } else if let Ok(v) = row.try_get::<Option<f64>, _>(i) {
            v.map_or(serde_json::Value::Null, Into::into)
        } else {
            serde_json::Value::Null
        };
        out.insert(c.name().to_owned(), v);
    }
    serde_json::Value::Object(out)
}
