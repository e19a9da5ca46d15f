//! Messages, the per-identity monthly spend, the debit that pays for a
//! message, and idempotency keys.

use palisade_core::{IdentityId, TenantScope};
use palisade_seal::envelope::{Place, TenantKeys};
use sqlx::{Any, Executor};

use crate::sealed::{open, seal};
use crate::Result;

/// Where a message's body is sealed.
fn body_place(id: &str) -> Place<'_> {
    Place { table: "messages", column: "body", row: id }
}

/// Where an idempotent request's stored answer is sealed (it may hold a
/// message body).
fn answer_place(key: &str) -> Place<'_> {
    Place { table: "idempotency_keys", column: "response", row: key }
}

fn opened(scope: &TenantScope, keys: &TenantKeys, mut m: MessageRow) -> Result<MessageRow> {
    m.body = open(scope, keys, body_place(&m.id), &m.body)?;
    Ok(m)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct MessageRow {
    pub id: String,
    pub tenant_id: String,
    pub identity_id: String,
    pub from_number: String,
    pub to_number: String,
    pub to_country: String,
    pub body: String,
    pub segments: i64,
    pub cost: i64,
    pub status: String,
    pub error_code: Option<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, tenant_id, identity_id, from_number, to_number, to_country, body, segments, cost, status, \
    error_code, created_at, updated_at";

pub struct NewMessage<'a> {
    pub id: &'a str,
    pub identity_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub to_country: &'a str,
    pub body: &'a str,
    pub segments: i64,
    pub cost: i64,
    pub now: i64,
}

/// The tenant's messages, newest first; only one identity's when given.
pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    identity: Option<IdentityId>,
    limit: i64,
) -> Result<Vec<MessageRow>> {
    let rows: Vec<MessageRow> = sqlx::query_as(&format!(
        "SELECT {COLS} FROM messages WHERE tenant_id = $1 AND ($2 = '' OR identity_id = $2) AND deleted_at IS NULL \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(identity.map(|i| i.to_string()).unwrap_or_default())
    .bind(limit)
    .fetch_all(ex)
    .await?;
    rows.into_iter().map(|m| opened(scope, keys, m)).collect()
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    id: &str,
) -> Result<Option<MessageRow>> {
    let row: Option<MessageRow> =
        sqlx::query_as(&format!("SELECT {COLS} FROM messages WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"))
            .bind(scope.tenant_id().to_string())
            .bind(id)
            .fetch_optional(ex)
            .await?;
    row.map(|m| opened(scope, keys, m)).transpose()
}

/// The tenant a message belongs to, for a carrier's verified status
/// callback (the carrier is the platform's, and names only the message).
pub async fn tenant_of<'c>(ex: impl Executor<'c, Database = Any>, id: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT tenant_id FROM messages WHERE id = $1").bind(id).fetch_optional(ex).await?)
}

/// Adds `cost` to the identity's spend this month unless that would pass
/// `budget`; false when it would (nothing changes).
pub async fn spend_within_budget<'c, E>(ex: &mut E, identity: &str, month: &str, cost: i64, budget: i64) -> Result<bool>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    sqlx::query("INSERT INTO identity_spend (identity_id, month, spent) VALUES ($1, $2, 0) ON CONFLICT DO NOTHING")
        .bind(identity)
        .bind(month)
        .execute(&mut *ex)
        .await?;
    let r = sqlx::query(
        "UPDATE identity_spend SET spent = spent + $3 WHERE identity_id = $1 AND month = $2 AND spent + $3 <= $4",
    )
    .bind(identity)
    .bind(month)
    .bind(cost)
    .bind(budget)
    .execute(&mut *ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct IdempotentResponse {
    pub request_hash: String,
    pub status: i64,
    pub response: String,
}

/// A stored response for `key`, if younger than `since`.
pub async fn idempotent<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    key: &str,
    since: i64,
) -> Result<Option<IdempotentResponse>> {
    let row: Option<IdempotentResponse> = sqlx::query_as(
        "SELECT request_hash, status, response FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2 AND created_at >= $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(key)
    .bind(since)
    .fetch_optional(ex)
    .await?;
    row.map(|mut r| {
        r.response = open(scope, keys, answer_place(key), &r.response)?;
        Ok(r)
    })
    .transpose()
}

/// Stores the response; a unique violation means another request with
/// the same key won. An expired row for the key is replaced.
#[allow(clippy::too_many_arguments)]
pub async fn remember<'c, E>(
    ex: &mut E,
    scope: &TenantScope,
    keys: &TenantKeys,
    key: &str,
    request_hash: &str,
    status: i64,
    response: &str,
    now: i64,
    expired_before: i64,
) -> Result<()>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    let response = seal(scope, keys, answer_place(key), response)?;
    sqlx::query("DELETE FROM idempotency_keys WHERE tenant_id = $1 AND idem_key = $2 AND created_at < $3")
        .bind(scope.tenant_id().to_string())
        .bind(key)
        .bind(expired_before)
        .execute(&mut *ex)
        .await?;
    sqlx::query(
        "INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, status, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(scope.tenant_id().to_string())
    .bind(key)
    .bind(request_hash)
    .bind(status)
    .bind(&response)
    .bind(now)
    .execute(&mut *ex)
    .await?;
    Ok(())
}

/// Forgets idempotency keys older than `before` (they live 24 hours).
pub async fn purge_idempotency_keys(db: &crate::Db, before: i64) -> Result<u64> {
    let n =
        db.write_all(vec![crate::Stmt::new("DELETE FROM idempotency_keys WHERE created_at < $1").bind(before)]).await?;
    Ok(n.first().copied().unwrap_or(0))
}

/// [`spend_within_budget`] as statements: refused with `monthly_budget`.
pub fn budget_stmts(identity: &str, month: &str, cost: i64, budget: i64) -> Vec<crate::Stmt> {
    // One upsert (the month's first spend inserts, later ones add), guarded:
    // a list's statements must not depend on each other's effects.
    vec![crate::Stmt::new(
        "INSERT INTO identity_spend (identity_id, month, spent) \
         SELECT $1, $2, CAST($3 AS BIGINT) WHERE CAST($3 AS BIGINT) <= CAST($4 AS BIGINT) \
         ON CONFLICT (identity_id, month) DO UPDATE SET spent = identity_spend.spent + excluded.spent \
         WHERE identity_spend.spent + excluded.spent <= CAST($4 AS BIGINT)",
    )
    .bind(identity)
    .bind(month)
    .bind(cost)
    .bind(budget)
    .or_refuse("monthly_budget")]
}

/// Records a new message (queued), its body sealed.
pub fn insert_stmt(scope: &TenantScope, keys: &TenantKeys, m: &NewMessage<'_>) -> Result<crate::Stmt> {
    let body = seal(scope, keys, body_place(m.id), m.body)?;
    Ok(crate::Stmt::new(
        "INSERT INTO messages (id, tenant_id, identity_id, from_number, to_number, to_country, body, segments, cost, \
         status, created_at, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, 'queued', $10, $10)",
    )
    .bind(m.id)
    .bind(scope.tenant_id().to_string())
    .bind(m.identity_id)
    .bind(m.from)
    .bind(m.to)
    .bind(m.to_country)
    .bind(body)
    .bind(m.segments)
    .bind(m.cost)
    .bind(m.now)
    .merged_as_rows())
}

/// [`remember`] as one guarded statement.
#[allow(clippy::too_many_arguments)]
pub fn remember_stmts(
    scope: &TenantScope,
    keys: &TenantKeys,
    key: &str,
    request_hash: &str,
    status: i64,
    response: String,
    now: i64,
    expired_before: i64,
) -> Result<Vec<crate::Stmt>> {
    let response = seal(scope, keys, answer_place(key), &response)?;
    // Takes the key, or an expired record of it; refused (`KEY_TAKEN`) when a
    // live record holds it: another request with the key was first.
    Ok(vec![crate::Stmt::new(
        "INSERT INTO idempotency_keys (tenant_id, idem_key, request_hash, status, response, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6) \
         ON CONFLICT (tenant_id, idem_key) DO UPDATE SET request_hash = excluded.request_hash, \
           status = excluded.status, response = excluded.response, created_at = excluded.created_at \
         WHERE idempotency_keys.created_at < $7",
    )
    .bind(scope.tenant_id().to_string())
    .bind(key)
    .bind(request_hash)
    .bind(status)
    .bind(response)
    .bind(now)
    .bind(expired_before)
    .or_refuse(KEY_TAKEN)])
}

/// Refusal of [`remember_stmts`]: a live record holds the key.
pub const KEY_TAKEN: &str = "idempotency_key_taken";

/// A status a carrier reported for one message.
pub struct StatusReport<'a> {
    pub scope: &'a TenantScope,
    pub id: &'a str,
    /// `sent`, `delivered` or `failed`.
    pub status: &'a str,
    pub error_code: Option<&'a str>,
    pub carrier_ref: Option<&'a str>,
    pub at_ms: i64,
}

/// Moves messages forward (queued → sent → delivered | failed), all in one
/// statement that takes the reports as one JSON value (one text to
/// prepare, whatever their number); a message already at that status or a
/// final one is left alone, so a late report never moves it back. At most
/// one report per message in `reports` (an UPDATE changes a row once).
pub fn set_status_stmts(reports: &[StatusReport<'_>]) -> Vec<crate::Stmt> {
    const SET: &str =
        "UPDATE messages SET status = r.status, error_code = COALESCE(r.error_code, messages.error_code), \
        carrier_ref = COALESCE(r.carrier_ref, messages.carrier_ref), updated_at = r.at";
    const WHERE: &str = "WHERE messages.tenant_id = r.tenant_id AND messages.id = r.id \
        AND messages.status NOT IN ('delivered', 'failed') AND NOT (messages.status = 'sent' AND r.status = 'sent')";
    static POSTGRES: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "{SET} FROM jsonb_to_recordset($1::jsonb) AS r(tenant_id TEXT, id TEXT, status TEXT, error_code TEXT, \
               carrier_ref TEXT, at BIGINT) {WHERE}"
        )
    });
    static SQLITE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let field = |f: &str| format!("json_extract(value, '$.{f}') AS {f}");
        let fields = ["tenant_id", "id", "status", "error_code", "carrier_ref", "at"].map(field).join(", ");
        format!("{SET} FROM (SELECT {fields} FROM json_each($1)) AS r {WHERE}")
    });
    if reports.is_empty() {
        return Vec::new();
    }
    let rows: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "tenant_id": r.scope.tenant_id().to_string(),
                "id": r.id,
                "status": r.status,
                "error_code": r.error_code,
                "carrier_ref": r.carrier_ref,
                "at": r.at_ms,
            })
        })
        .collect();
    // Planned each time: a kept plan from when `messages` was small would
    // scan the whole table at every batch later.
    vec![crate::Stmt::per_dialect(POSTGRES.as_str(), SQLITE.as_str())
        .bind(serde_json::Value::Array(rows).to_string())
        .planned_each_time()]
}

/// Messages after `after` (by id) of every tenant, at most `limit`, as
/// `(id, tenant_id, body as stored)`: the re-sealing job's pass.
pub async fn stored_bodies_after<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &palisade_core::principal::SysadminProof,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String, String)>> {
    Ok(sqlx::query_as("SELECT id, tenant_id, body FROM messages WHERE id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await?)
}

/// Seals a body again with the tenant's newest key, if it is still as
/// `stored` (a plaintext body from before encryption, or an older key's).
pub async fn reseal_body<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    id: &str,
    stored: &str,
) -> Result<bool> {
    let body = seal(scope, keys, body_place(id), &open(scope, keys, body_place(id), stored)?)?;
    let r = sqlx::query("UPDATE messages SET body = $1 WHERE tenant_id = $2 AND id = $3 AND body = $4")
        .bind(body)
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .bind(stored)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}
