//! Calls, the concurrent-call slots, call detail records and usage.

use palisade_core::{IdentityId, TenantScope};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CallRow {
    pub id: String,
    pub tenant_id: String,
    pub identity_id: String,
    pub from_number: String,
    pub to_number: String,
    pub to_country: String,
    pub status: String,
    pub error_code: Option<String>,
    pub prepaid: i64,
    pub answered_at: Option<i64>,
    pub ended_at: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
    /// Its media security: the SDES suite, `dtls`, or `none`.
    pub media: String,
    /// `outbound` (placed by the tenant) or `inbound` (a trunk brought it).
    pub direction: String,
    /// Caller-ID verification of an inbound call: `passed`, `failed` or
    /// `no_signature`; why it failed.
    pub verstat: Option<String>,
    pub verstat_reason: Option<String>,
    /// The SHAKEN attestation: the one we sign an outbound call with, or the
    /// one an inbound call's verified PASSporT carries.
    pub attestation: Option<String>,
    /// 1 when the call is to be recorded.
    pub record: i64,
}

const COLS: &str = "id, tenant_id, identity_id, from_number, to_number, to_country, status, error_code, prepaid, \
    answered_at, ended_at, created_at, updated_at, media, direction, verstat, verstat_reason, attestation, record";

/// Statuses of a call that is not over.
pub const LIVE: &str = "('queued', 'ringing', 'in_progress')";

pub struct NewCall<'a> {
    pub id: &'a str,
    pub identity_id: &'a str,
    pub from: &'a str,
    pub to: &'a str,
    pub to_country: &'a str,
    pub prepaid: i64,
    /// The running instance that drives the call.
    pub instance: &'a str,
    pub now: i64,
    /// `outbound` calls start `queued`, `inbound` ones `ringing`.
    pub direction: &'a str,
    pub verstat: Option<&'a str>,
    pub verstat_reason: Option<&'a str>,
    pub attestation: Option<&'a str>,
    pub record: bool,
}

impl<'a> NewCall<'a> {
    /// The row as it is inserted, driven by `instance`.
    pub fn of(row: &'a CallRow, instance: &'a str) -> NewCall<'a> {
        NewCall {
            id: &row.id,
            identity_id: &row.identity_id,
            from: &row.from_number,
            to: &row.to_number,
            to_country: &row.to_country,
            prepaid: row.prepaid,
            instance,
            now: row.created_at,
            direction: &row.direction,
            verstat: row.verstat.as_deref(),
            verstat_reason: row.verstat_reason.as_deref(),
            attestation: row.attestation.as_deref(),
            record: row.record == 1,
        }
    }
}

pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, c: &NewCall<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO calls (id, tenant_id, identity_id, from_number, to_number, to_country, status, prepaid, \
         instance_id, created_at, updated_at, direction, verstat, verstat_reason, attestation, record) \
         VALUES ($1, $2, $3, $4, $5, $6, CASE WHEN $10 = 'inbound' THEN 'ringing' ELSE 'queued' END, $7, $8, $9, $9, \
           $10, $11, $12, $13, $14)",
    )
    .bind(c.id)
    .bind(scope.tenant_id().to_string())
    .bind(c.identity_id)
    .bind(c.from)
    .bind(c.to)
    .bind(c.to_country)
    .bind(c.prepaid)
    .bind(c.instance)
    .bind(c.now)
    .bind(c.direction)
    .bind(c.verstat)
    .bind(c.verstat_reason)
    .bind(c.attestation)
    .bind(i64::from(c.record))
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, id: &str) -> Result<Option<CallRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM calls WHERE tenant_id = $1 AND id = $2 AND deleted_at IS NULL"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// A call's status and its identity's (`active`, `frozen`): what a stream
/// of its audio checks while open. `None`: no such call (or identity).
pub async fn stream_state<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
) -> Result<Option<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT c.status, i.status FROM calls c \
         JOIN identities i ON i.tenant_id = c.tenant_id AND i.id = c.identity_id \
         WHERE c.tenant_id = $1 AND c.id = $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .fetch_optional(ex)
    .await?)
}

/// Records the media security a live call was admitted with (the SIP edge
/// knows it from the caller's offer).
pub async fn set_media<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    media: &str,
) -> Result<()> {
    sqlx::query(&format!("UPDATE calls SET media = $3 WHERE tenant_id = $1 AND id = $2 AND status IN {LIVE}"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .bind(media)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    identity: Option<IdentityId>,
    limit: i64,
) -> Result<Vec<CallRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM calls WHERE tenant_id = $1 AND ($2 = '' OR identity_id = $2) AND deleted_at IS NULL \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(identity.map(|i| i.to_string()).unwrap_or_default())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Takes one of the tenant's `max` concurrent-call slots; false when all
/// are taken.
pub async fn take_slot<E>(ex: &mut E, scope: &TenantScope, max: i64) -> Result<bool>
where
    for<'e> &'e mut E: Executor<'e, Database = Any>,
{
    let tenant = scope.tenant_id().to_string();
    sqlx::query("INSERT INTO call_slots (tenant_id, active) VALUES ($1, 0) ON CONFLICT DO NOTHING")
        .bind(&tenant)
        .execute(&mut *ex)
        .await?;
    let r = sqlx::query("UPDATE call_slots SET active = active + 1 WHERE tenant_id = $1 AND active < $2")
        .bind(&tenant)
        .bind(max)
        .execute(&mut *ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

pub async fn release_slot<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<()> {
    sqlx::query("UPDATE call_slots SET active = active - 1 WHERE tenant_id = $1 AND active > 0")
        .bind(scope.tenant_id().to_string())
        .execute(ex)
        .await?;
    Ok(())
}

/// Adds `amount` to an answered live call's prepaid charge (its next
/// minute); false when it is no longer in progress. Takes the call's row
/// first, in the order of [`crate::locks`].
pub async fn add_prepaid<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    amount: i64,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE calls SET prepaid = prepaid + $3, updated_at = $4 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'in_progress'",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(amount)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// A live call moves to `status` (ringing, in_progress); false if it is over.
pub async fn progress<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    status: &str,
    answered_at: Option<i64>,
    now: i64,
) -> Result<bool> {
    let r = sqlx::query(&format!(
        "UPDATE calls SET status = $3, answered_at = COALESCE($4, answered_at), updated_at = $5 \
         WHERE tenant_id = $1 AND id = $2 AND status IN {LIVE}"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(status)
    .bind(answered_at)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Ends a live call as of `at`: the one caller that gets the row back
/// writes its CDR. `status` `hangup` means `completed` if it was answered,
/// else `canceled`, decided in the same statement (an answer may race it).
/// With `unseen_since`, only if the call's instance has not been seen
/// since then (checked in the same statement: a heartbeat that lands after
/// the orphan was listed keeps its call).
#[allow(clippy::too_many_arguments)]
pub async fn finish<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    status: &str,
    error_code: Option<&str>,
    at: i64,
    now: i64,
    unseen_since: Option<i64>,
) -> Result<Option<CallRow>> {
    Ok(sqlx::query_as(&format!(
        "UPDATE calls SET status = CASE WHEN $3 <> 'hangup' THEN $3 WHEN answered_at IS NULL THEN 'canceled' \
           ELSE 'completed' END, error_code = $4, ended_at = $5, updated_at = $6 \
         WHERE tenant_id = $1 AND id = $2 AND status IN {LIVE} \
           AND (CAST($7 AS BIGINT) IS NULL OR NOT EXISTS (SELECT 1 FROM instances \
             WHERE instances.id = calls.instance_id AND instances.seen_at >= CAST($7 AS BIGINT))) \
         RETURNING {COLS}"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(status)
    .bind(error_code)
    .bind(at)
    .bind(now)
    .bind(unseen_since)
    .fetch_optional(ex)
    .await?)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct CdrRow {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    pub identity_id: String,
    pub from_number: String,
    pub to_number: String,
    pub to_country: String,
    pub status: String,
    pub started_at: i64,
    pub answered_at: Option<i64>,
    pub ended_at: i64,
    pub duration_secs: i64,
    pub billed_minutes: i64,
    pub cost: i64,
    /// The call's media security, as on the call.
    pub media: String,
    /// As on the call.
    pub direction: String,
    pub verstat: Option<String>,
    pub verstat_reason: Option<String>,
    pub attestation: Option<String>,
}

/// A CDR the API shows: not hidden by retention (`$1` is the tenant).
const CDR_SHOWN: &str = "ended_at >= COALESCE((SELECT cdrs_hidden_before FROM tenants WHERE id = $1), 0)";

const CDR_COLS: &str = "id, tenant_id, call_id, identity_id, from_number, to_number, to_country, status, started_at, \
    answered_at, ended_at, duration_secs, billed_minutes, cost, media, direction, verstat, verstat_reason, attestation";

pub async fn insert_cdr<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, c: &CdrRow) -> Result<()> {
    sqlx::query(&format!(
        "INSERT INTO cdrs ({CDR_COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, \
         $16, $17, $18, $19)"
    ))
    .bind(&c.id)
    .bind(scope.tenant_id().to_string())
    .bind(&c.call_id)
    .bind(&c.identity_id)
    .bind(&c.from_number)
    .bind(&c.to_number)
    .bind(&c.to_country)
    .bind(&c.status)
    .bind(c.started_at)
    .bind(c.answered_at)
    .bind(c.ended_at)
    .bind(c.duration_secs)
    .bind(c.billed_minutes)
    .bind(c.cost)
    .bind(&c.media)
    .bind(&c.direction)
    .bind(&c.verstat)
    .bind(&c.verstat_reason)
    .bind(&c.attestation)
    .execute(ex)
    .await?;
    Ok(())
}

pub async fn get_cdr<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
) -> Result<Option<CdrRow>> {
    Ok(sqlx::query_as(&format!("SELECT {CDR_COLS} FROM cdrs WHERE tenant_id = $1 AND id = $2 AND {CDR_SHOWN}"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

pub async fn list_cdrs<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    identity: Option<IdentityId>,
    limit: i64,
) -> Result<Vec<CdrRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CDR_COLS} FROM cdrs WHERE tenant_id = $1 AND ($2 = '' OR identity_id = $2) AND {CDR_SHOWN} \
         ORDER BY id DESC LIMIT $3"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(identity.map(|i| i.to_string()).unwrap_or_default())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// One hour of usage.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UsageRow {
    pub hour: i64,
    pub count: i64,
    /// Segments for messages, billed minutes for calls.
    pub units: i64,
    pub cost: i64,
}

/// Hourly totals of messages (by creation) or CDRs (by end) in [from, to).
pub async fn hourly<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    of_calls: bool,
    from: i64,
    to: i64,
) -> Result<Vec<UsageRow>> {
    // Rows removed by retention count through the hourly archive.
    let (rows, kind) = if of_calls {
        (
            "SELECT (ended_at / 3600000) * 3600000 AS hour, COUNT(*) AS count, \
               CAST(SUM(billed_minutes) AS BIGINT) AS units, CAST(SUM(cost) AS BIGINT) AS cost \
             FROM cdrs WHERE tenant_id = $1 AND ended_at >= $2 AND ended_at < $3 GROUP BY 1",
            "calls",
        )
    } else {
        (
            "SELECT (created_at / 3600000) * 3600000 AS hour, COUNT(*) AS count, \
               CAST(SUM(segments) AS BIGINT) AS units, CAST(SUM(cost) AS BIGINT) AS cost \
             FROM messages WHERE tenant_id = $1 AND created_at >= $2 AND created_at < $3 GROUP BY 1",
            "messages",
        )
    };
    let sql = format!(
        "SELECT hour, CAST(SUM(count) AS BIGINT) AS count, CAST(SUM(units) AS BIGINT) AS units, \
           CAST(SUM(cost) AS BIGINT) AS cost FROM ({rows} \
           UNION ALL SELECT hour, count, units, cost FROM usage_archive \
           WHERE tenant_id = $1 AND kind = '{kind}' AND hour > $2 - 3600000 AND hour < $3) u \
         GROUP BY hour ORDER BY hour"
    );
    Ok(sqlx::query_as(&sql).bind(scope.tenant_id().to_string()).bind(from).bind(to).fetch_all(ex).await?)
}

/// Counts minutes a call went on for past what admission prepaid: they
/// were spent whatever the budget says (the call happened), and count
/// against the next admissions.
pub async fn spend<'c>(ex: impl Executor<'c, Database = Any>, identity: &str, month: &str, amount: i64) -> Result<()> {
    sqlx::query(
        "INSERT INTO identity_spend (identity_id, month, spent) VALUES ($1, $2, $3) \
         ON CONFLICT (identity_id, month) DO UPDATE SET spent = identity_spend.spent + excluded.spent",
    )
    .bind(identity)
    .bind(month)
    .bind(amount)
    .execute(ex)
    .await?;
    Ok(())
}

/// Gives back `amount` of an identity's monthly spend (a refund).
pub async fn unspend<'c>(
    ex: impl Executor<'c, Database = Any>,
    identity: &str,
    month: &str,
    amount: i64,
) -> Result<()> {
    sqlx::query("UPDATE identity_spend SET spent = spent - $3 WHERE identity_id = $1 AND month = $2 AND spent >= $3")
        .bind(identity)
        .bind(month)
        .bind(amount)
        .execute(ex)
        .await?;
    Ok(())
}
