//! Webhook endpoints, their subscriptions, the delivery queue and the
//! record of every attempt; inbound callbacks.
//!
//! Endpoint functions take the tenant scope. The queue functions
//! (`claim_due`, `load_delivery`, `finish_stmts`) serve the delivery worker,
//! which acts for whichever tenant a due row belongs to: each row carries its
//! tenant and everything it loads is filtered by that tenant again.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::{Dialect, Result, Stmt};

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct EndpointRow {
    pub id: String,
    pub tenant_id: String,
    pub url: String,
    pub description: String,
    /// JSON array of event types.
    pub events: String,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_until: Option<i64>,
    pub ed25519_sealed: Option<String>,
    pub ed25519_public: Option<String>,
    pub status: String,
    pub disabled_reason: Option<String>,
    pub failing_since: Option<i64>,
    pub created_at: i64,
    pub updated_at: i64,
}

const ENDPOINT_COLS: &str = "id, tenant_id, url, description, events, secret_sealed, previous_secret_sealed, \
    previous_secret_until, ed25519_sealed, ed25519_public, status, disabled_reason, failing_since, created_at, updated_at";

/// At most this many endpoints per tenant: each event fans out to all of them.
pub const MAX_ENDPOINTS: i64 = 50;

pub struct NewEndpoint<'a> {
    pub id: &'a str,
    pub url: &'a str,
    pub description: &'a str,
    pub events: &'a [String],
    pub secret_sealed: &'a str,
    pub ed25519_sealed: Option<&'a str>,
    pub ed25519_public: Option<&'a str>,
    pub now: i64,
}

fn events_json(events: &[String]) -> String {
    serde_json::to_string(events).unwrap_or_else(|_| "[]".into())
}

/// The endpoint and its subscriptions, refused (`TOO_MANY_ENDPOINTS`) when
/// the tenant already has [`MAX_ENDPOINTS`].
pub fn insert_endpoint_stmts(scope: &TenantScope, e: &NewEndpoint<'_>) -> Vec<Stmt> {
    let tenant = scope.tenant_id().to_string();
    let mut stmts = vec![Stmt::new(
        "INSERT INTO webhook_endpoints (id, tenant_id, url, description, events, secret_sealed, ed25519_sealed, \
           ed25519_public, status, created_at, updated_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8, 'enabled', $9, $9 \
         WHERE (SELECT COUNT(*) FROM webhook_endpoints WHERE tenant_id = $2) < $10",
    )
    .bind(e.id)
    .bind(tenant.clone())
    .bind(e.url)
    .bind(e.description)
    .bind(events_json(e.events))
    .bind(e.secret_sealed)
    .bind(e.ed25519_sealed)
    .bind(e.ed25519_public)
    .bind(e.now)
    .bind(MAX_ENDPOINTS)
    .or_refuse("TOO_MANY_ENDPOINTS")];
    stmts.extend(subscription_stmts(&tenant, e.id, e.events));
    stmts
}

/// Makes the tenant's endpoint creates take turns, in `tx`, before
/// [`insert_endpoint_stmts`] run in it: PostgreSQL runs transactions side
/// by side, and each would count the endpoints without the other's insert
/// (SQLite's write transactions take turns already). The tenant row's
/// `FOR NO KEY UPDATE` lock leaves the foreign-key checks of other writes
/// alone.
pub async fn serialize_endpoint_creates(tx: &mut crate::Tx, scope: &TenantScope) -> Result<()> {
    if tx.dialect() == crate::Dialect::Postgres {
        sqlx::query("SELECT 1 FROM tenants WHERE id = $1 FOR NO KEY UPDATE")
            .bind(scope.tenant_id().to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

fn subscription_stmts(tenant: &str, endpoint_id: &str, events: &[String]) -> Vec<Stmt> {
    events
        .iter()
        .map(|ev| {
            Stmt::new("INSERT INTO webhook_subscriptions (tenant_id, event_type, endpoint_id) VALUES ($1, $2, $3)")
                .bind(tenant)
                .bind(ev.as_str())
                .bind(endpoint_id)
        })
        .collect()
}

pub async fn get_endpoint<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
) -> Result<Option<EndpointRow>> {
    Ok(sqlx::query_as(&format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

pub async fn list_endpoints<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
) -> Result<Vec<EndpointRow>> {
    Ok(sqlx::query_as(&format!("SELECT {ENDPOINT_COLS} FROM webhook_endpoints WHERE tenant_id = $1 ORDER BY id"))
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

/// New URL, description and events; `enabled` re-enables a disabled
/// endpoint (and forgets its failures).
pub fn update_endpoint_stmts(
    scope: &TenantScope,
    id: &str,
    url: &str,
    description: &str,
    events: &[String],
    enable: bool,
    now: i64,
) -> Vec<Stmt> {
    let tenant = scope.tenant_id().to_string();
    let mut stmts = vec![
        Stmt::new(
            "UPDATE webhook_endpoints SET url = $3, description = $4, events = $5, updated_at = $6, \
               status = CASE WHEN $7 = 1 THEN 'enabled' ELSE status END, \
               disabled_reason = CASE WHEN $7 = 1 THEN NULL ELSE disabled_reason END, \
               failing_since = CASE WHEN $7 = 1 THEN NULL ELSE failing_since END \
             WHERE tenant_id = $1 AND id = $2",
        )
        .bind(tenant.clone())
        .bind(id)
        .bind(url)
        .bind(description)
        .bind(events_json(events))
        .bind(now)
        .bind(i64::from(enable))
        .or_refuse("NOT_FOUND"),
        Stmt::new("DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND endpoint_id = $2")
            .bind(tenant.clone())
            .bind(id),
    ];
    stmts.extend(subscription_stmts(&tenant, id, events));
    stmts
}

/// The endpoint, its subscriptions, queue and attempts.
pub fn delete_endpoint_stmts(scope: &TenantScope, id: &str) -> Vec<Stmt> {
    let tenant = scope.tenant_id().to_string();
    let by_endpoint = |sql: &'static str| Stmt::new(sql).bind(tenant.clone()).bind(id);
    vec![
        by_endpoint("DELETE FROM webhook_subscriptions WHERE tenant_id = $1 AND endpoint_id = $2"),
        by_endpoint("DELETE FROM webhook_attempts WHERE tenant_id = $1 AND endpoint_id = $2"),
        by_endpoint("DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2"),
        by_endpoint("DELETE FROM webhook_endpoints WHERE tenant_id = $1 AND id = $2").or_refuse("NOT_FOUND"),
    ]
}

/// A new current secret; the old one keeps signing until `previous_until`.
/// Refused when the current secret is no longer `previous_sealed` (a
/// concurrent rotation won; its secret stands).
pub fn rotate_secret_stmt(
    scope: &TenantScope,
    id: &str,
    new_sealed: &str,
    previous_sealed: &str,
    previous_until: i64,
    now: i64,
) -> Stmt {
    Stmt::new(
        "UPDATE webhook_endpoints SET secret_sealed = $3, previous_secret_sealed = $4, previous_secret_until = $5, \
           updated_at = $6 WHERE tenant_id = $1 AND id = $2 AND secret_sealed = $4",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(new_sealed)
    .bind(previous_sealed)
    .bind(previous_until)
    .bind(now)
    .or_refuse("NOT_FOUND")
}

/// One event to queue for every enabled endpoint of its tenant subscribed
/// to its type (or to `*`).
pub struct NewEvent {
    pub id: String,
    pub tenant_id: String,
    pub event_type: &'static str,
    pub payload: String,
    pub now: i64,
    /// Queue it only if this message's status can still move to this one
    /// (a carrier report that changes nothing is no event).
    pub if_message_moves: Option<(String, &'static str)>,
    /// Not for this endpoint (the one an event is about, when disabled).
    pub except_endpoint: Option<String>,
}

/// Which of `tenants` have an enabled endpoint.
pub async fn tenants_with_endpoints(db: &crate::Db, tenants: Vec<String>) -> Result<std::collections::HashSet<String>> {
    if tenants.is_empty() {
        return Ok(Default::default());
    }
    let marks: Vec<String> = (1..=tenants.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT DISTINCT tenant_id FROM webhook_endpoints WHERE status = 'enabled' AND tenant_id IN ({})",
        marks.join(", ")
    );
    let q = tenants.iter().fold(sqlx::query_scalar::<_, String>(&sql).persistent(false), |q, t| q.bind(t));
    Ok(q.fetch_all(db.reader()).await?.into_iter().collect())
}

/// Queues events: two statements (the events, their deliveries), to run
/// in the same atomic list as the change they report (an event is never
/// lost nor sent for a change that was undone), and BEFORE that change in
/// the list: the conditions read the state before it (on PostgreSQL the
/// list shares one snapshot anyway). Events of tenants without a matching
/// endpoint leave no row. The two statements read only subscriptions and
/// messages, never each other's rows, so they fit a combined PostgreSQL
/// statement. The events go in as one JSON value: one text to prepare,
/// whatever their number.
pub fn enqueue_stmts(events: &[NewEvent]) -> Vec<Stmt> {
    // The message is matched through the endpoint (`w.tenant_id`, equal to
    // the event's): a condition on the event alone was checked first, one
    // message lookup per event, even for a tenant without endpoints.
    const WANTED: &str = "s.tenant_id = v.tenant_id AND s.event_type IN (v.event_type, '*') \
        AND w.tenant_id = v.tenant_id AND w.status = 'enabled' \
        AND (v.except_endpoint IS NULL OR w.id <> v.except_endpoint) \
        AND (v.message_id IS NULL OR EXISTS (SELECT 1 FROM messages m WHERE m.tenant_id = w.tenant_id \
          AND m.id = v.message_id AND m.status NOT IN ('delivered', 'failed') \
          AND NOT (m.status = 'sent' AND v.message_status = 'sent')))";
    const FIELDS: [&str; 8] =
        ["id", "tenant_id", "event_type", "payload", "at", "message_id", "message_status", "except_endpoint"];
    fn events_sql(rows: &str) -> String {
        format!(
            "INSERT INTO webhook_events (id, tenant_id, event_type, payload, created_at) \
             SELECT v.id, v.tenant_id, v.event_type, v.payload, v.at FROM {rows} \
             WHERE EXISTS (SELECT 1 FROM webhook_subscriptions s JOIN webhook_endpoints w ON w.id = s.endpoint_id \
               WHERE {WANTED})"
        )
    }
    fn deliveries_sql(rows: &str) -> String {
        format!(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id, status, attempts, next_attempt_at, \
               lease_until, created_at, updated_at) \
             SELECT DISTINCT s.endpoint_id, v.id, v.tenant_id, 'pending', 0, v.at, 0, v.at, v.at \
             FROM {rows}, webhook_subscriptions s JOIN webhook_endpoints w ON w.id = s.endpoint_id \
             WHERE {WANTED}"
        )
    }
    static POSTGRES_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let typed = FIELDS.map(|f| format!("{f} {}", if f == "at" { "BIGINT" } else { "TEXT" })).join(", ");
        format!("jsonb_to_recordset($1::jsonb) AS v({typed})")
    });
    static SQLITE_ROWS: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        let fields = FIELDS.map(|f| format!("json_extract(value, '$.{f}') AS {f}")).join(", ");
        format!("(SELECT {fields} FROM json_each($1)) AS v")
    });
    static EVENTS: std::sync::LazyLock<(String, String)> =
        std::sync::LazyLock::new(|| (events_sql(&POSTGRES_ROWS), events_sql(&SQLITE_ROWS)));
    static DELIVERIES: std::sync::LazyLock<(String, String)> =
        std::sync::LazyLock::new(|| (deliveries_sql(&POSTGRES_ROWS), deliveries_sql(&SQLITE_ROWS)));
    if events.is_empty() {
        return Vec::new();
    }
    let rows: Vec<serde_json::Value> = events
        .iter()
        .map(|e| {
            let (message, status) = match &e.if_message_moves {
                Some((m, s)) => (Some(m.as_str()), Some(*s)),
                None => (None, None),
            };
            serde_json::json!({
                "id": e.id,
                "tenant_id": e.tenant_id,
                "event_type": e.event_type,
                "payload": e.payload,
                "at": e.now,
                "message_id": message,
                "message_status": status,
                "except_endpoint": e.except_endpoint,
            })
        })
        .collect();
    let rows = serde_json::Value::Array(rows).to_string();
    // Planned each time: they join tables that grow (messages, endpoints).
    vec![
        Stmt::per_dialect(EVENTS.0.as_str(), EVENTS.1.as_str()).bind(rows.as_str()).planned_each_time(),
        Stmt::per_dialect(DELIVERIES.0.as_str(), DELIVERIES.1.as_str()).bind(rows).planned_each_time(),
    ]
}

/// Queues an event for one endpoint of the scope's tenant (a test event;
/// a disabled endpoint's is recorded as skipped); refused (`NOT_FOUND`) if
/// there is no such endpoint.
pub fn enqueue_to_endpoint_stmts(scope: &TenantScope, e: &NewEvent, endpoint_id: &str) -> Vec<Stmt> {
    let tenant = scope.tenant_id().to_string();
    vec![
        Stmt::new(
            "INSERT INTO webhook_events (id, tenant_id, event_type, payload, created_at) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(e.id.as_str())
        .bind(tenant.clone())
        .bind(e.event_type)
        .bind(e.payload.as_str())
        .bind(e.now),
        Stmt::new(
            "INSERT INTO webhook_deliveries (endpoint_id, event_id, tenant_id, status, attempts, next_attempt_at, \
               lease_until, created_at, updated_at) \
             SELECT id, $2, tenant_id, 'pending', 0, $3, 0, $3, $3 FROM webhook_endpoints WHERE tenant_id = $1 AND id = $4",
        )
        .bind(tenant)
        .bind(e.id.as_str())
        .bind(e.now)
        .bind(endpoint_id)
        .or_refuse("NOT_FOUND"),
    ]
}

/// A leased delivery: the worker owns it until `lease_until`.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub endpoint_id: String,
    pub event_id: String,
    pub tenant_id: String,
    /// This attempt's number, from 1.
    #[sqlx(rename = "attempts")]
    pub attempt: i64,
}

/// Leases up to `limit` due deliveries until `lease_until`; the attempt
/// counts when it is recorded (a lease lost in a crash uses up no retry). A leased row is not due again before its lease ends, so its
/// `next_attempt_at` moves there too: the due-index scan then never walks
/// the rows in flight (it did, thousands per claim under a backlog). Several workers (and instances) can claim at once: a row is
/// claimed by one of them only.
pub async fn claim_due(db: &crate::Db, now: i64, lease_until: i64, limit: i64) -> Result<Vec<Claimed>> {
    let lock = match db.dialect() {
        Dialect::Postgres => "FOR UPDATE SKIP LOCKED",
        Dialect::Sqlite => "",
    };
    let sql = format!(
        "UPDATE webhook_deliveries SET lease_until = $1, next_attempt_at = $1, updated_at = $2 \
         WHERE (tenant_id, endpoint_id, event_id) IN (SELECT tenant_id, endpoint_id, event_id FROM webhook_deliveries \
           WHERE status = 'pending' AND next_attempt_at <= $2 AND lease_until <= $2 \
           ORDER BY next_attempt_at LIMIT $3 {lock}) \
         RETURNING endpoint_id, event_id, tenant_id, attempts + 1 AS attempts"
    );
    let mut tx = db.begin().await?;
    if db.dialect() == Dialect::Postgres {
        // A claim lost in a crash costs only its lease: no need to wait for
        // the disk (nor to hold the rows' locks across a sync).
        sqlx::query("SET LOCAL synchronous_commit = off").execute(&mut *tx).await?;
    }
    let rows: Vec<Claimed> = sqlx::query_as(&sql).bind(lease_until).bind(now).bind(limit).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows)
}

/// Everything one attempt needs: the event and the endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryJob {
    pub event_type: String,
    pub payload: String,
    pub url: String,
    pub secret_sealed: String,
    pub previous_secret_sealed: Option<String>,
    pub previous_secret_until: Option<i64>,
    pub ed25519_sealed: Option<String>,
    pub endpoint_status: String,
    pub failing_since: Option<i64>,
    pub tenant_status: String,
}

pub async fn load_delivery<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    endpoint_id: &str,
    event_id: &str,
) -> Result<Option<DeliveryJob>> {
    Ok(sqlx::query_as(
        "SELECT e.event_type, e.payload, w.url, w.secret_sealed, \
           w.previous_secret_sealed, w.previous_secret_until, w.ed25519_sealed, w.status AS endpoint_status, \
           w.failing_since, t.status AS tenant_status \
         FROM webhook_deliveries d JOIN webhook_events e ON e.id = d.event_id AND e.tenant_id = d.tenant_id \
           JOIN webhook_endpoints w ON w.id = d.endpoint_id AND w.tenant_id = d.tenant_id \
           JOIN tenants t ON t.id = d.tenant_id \
         WHERE d.tenant_id = $1 AND d.endpoint_id = $2 AND d.event_id = $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(endpoint_id)
    .bind(event_id)
    .fetch_optional(ex)
    .await?)
}

/// What one attempt found.
pub struct AttemptRecord<'a> {
    pub attempt: i64,
    pub at: i64,
    pub status_code: Option<i64>,
    pub latency_ms: i64,
    pub response_excerpt: &'a str,
    pub error_class: Option<&'a str>,
    /// `delivered`, `retry`, `failed` (schedule exhausted), `gone` (410),
    /// `skipped` (endpoint disabled or deleted).
    pub outcome: &'static str,
}

/// What happens to the delivery after an attempt.
pub enum Next {
    Delivered,
    RetryAt(i64),
    Failed,
}

/// Records the attempt and moves the delivery on, atomically. The update
/// applies only while this worker's lease is the row's (`lease_until`), so
/// a worker that overran its lease cannot overwrite a newer attempt.
pub fn finish_stmts(
    scope: &TenantScope,
    c: &Claimed,
    lease_until: i64,
    rec: &AttemptRecord<'_>,
    next: Next,
) -> Vec<Stmt> {
    let tenant = scope.tenant_id().to_string();
    let (status, next_at) = match next {
        Next::Delivered => ("delivered", rec.at),
        Next::RetryAt(t) => ("pending", t),
        Next::Failed => ("failed", rec.at),
    };
    vec![
        Stmt::new(
            "INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, tenant_id, attempted_at, status_code, \
               latency_ms, response_excerpt, error_class, outcome) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
        )
        .bind(c.endpoint_id.as_str())
        .bind(c.event_id.as_str())
        .bind(rec.attempt)
        .bind(tenant.clone())
        .bind(rec.at)
        .bind(rec.status_code)
        .bind(rec.latency_ms)
        .bind(rec.response_excerpt)
        .bind(rec.error_class)
        .bind(rec.outcome),
        Stmt::new(
            "UPDATE webhook_deliveries SET status = $4, next_attempt_at = $5, lease_until = 0, updated_at = $6, \
               attempts = $8 WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 AND lease_until = $7",
        )
        .bind(tenant)
        .bind(c.endpoint_id.as_str())
        .bind(c.event_id.as_str())
        .bind(status)
        .bind(next_at)
        .bind(rec.at)
        .bind(lease_until)
        .bind(rec.attempt)
        .or_refuse("LEASE_LOST"),
    ]
}

/// Gives a leased delivery back without an attempt, due again at `until`
/// (its tenant is frozen).
pub fn postpone_stmt(scope: &TenantScope, c: &Claimed, lease_until: i64, until: i64) -> Stmt {
    Stmt::new(
        "UPDATE webhook_deliveries SET next_attempt_at = $4, lease_until = 0 \
         WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 AND lease_until = $5",
    )
    .bind(scope.tenant_id().to_string())
    .bind(c.endpoint_id.as_str())
    .bind(c.event_id.as_str())
    .bind(until)
    .bind(lease_until)
}

/// A delivery whose endpoint or event is gone (an event queued while its
/// endpoint was being deleted): nothing will ever send it.
pub fn drop_orphan_stmt(scope: &TenantScope, c: &Claimed, lease_until: i64) -> Stmt {
    Stmt::new(
        "DELETE FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 \
           AND lease_until = $4",
    )
    .bind(scope.tenant_id().to_string())
    .bind(c.endpoint_id.as_str())
    .bind(c.event_id.as_str())
    .bind(lease_until)
}

/// Success clears the endpoint's failure clock; a failure starts it.
pub fn endpoint_health_stmt(scope: &TenantScope, endpoint_id: &str, success: bool, now: i64) -> Stmt {
    let tenant = scope.tenant_id().to_string();
    if success {
        // Conditional: the common case (healthy and staying so) writes nothing,
        // so concurrent deliveries to one endpoint do not queue on its row.
        Stmt::new(
            "UPDATE webhook_endpoints SET failing_since = NULL \
             WHERE tenant_id = $1 AND id = $2 AND failing_since IS NOT NULL",
        )
        .bind(tenant)
        .bind(endpoint_id)
    } else {
        Stmt::new(
            "UPDATE webhook_endpoints SET failing_since = $3 WHERE tenant_id = $1 AND id = $2 AND failing_since IS NULL",
        )
        .bind(tenant)
        .bind(endpoint_id)
        .bind(now)
    }
}

/// Disables an enabled endpoint; changes nothing (0 rows) if it already was.
pub fn disable_stmt(scope: &TenantScope, endpoint_id: &str, reason: &str, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $3, updated_at = $4, \
           failing_since = COALESCE(failing_since, $4) WHERE tenant_id = $1 AND id = $2 AND status = 'enabled'",
    )
    .bind(scope.tenant_id().to_string())
    .bind(endpoint_id)
    .bind(reason)
    .bind(now)
}

/// Sends a delivery again at once, whatever its state (the attempts go on
/// numbering after the earlier ones); refused (`NOT_FOUND`) while an
/// attempt is in flight, which would otherwise run twice at once.
pub fn replay_stmt(scope: &TenantScope, endpoint_id: &str, event_id: &str, now: i64) -> Stmt {
    Stmt::new(
        "UPDATE webhook_deliveries SET status = 'pending', next_attempt_at = $4, lease_until = 0, updated_at = $4 \
         WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3 AND lease_until <= $4",
    )
    .bind(scope.tenant_id().to_string())
    .bind(endpoint_id)
    .bind(event_id)
    .bind(now)
    .or_refuse("NOT_FOUND")
}

/// A delivery with one of its attempts (none yet: the attempt columns are
/// NULL): one row per attempt, newest delivery first, attempts in order.
/// Whether the endpoint has this delivery.
pub async fn delivery_exists<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    endpoint_id: &str,
    event_id: &str,
) -> Result<bool> {
    let found: Option<i64> = sqlx::query_scalar(
        "SELECT 1 FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 AND event_id = $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(endpoint_id)
    .bind(event_id)
    .fetch_optional(ex)
    .await?;
    Ok(found.is_some())
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct DeliveryAttemptRow {
    pub event_id: String,
    pub event_type: String,
    pub status: String,
    pub next_attempt_at: i64,
    pub created_at: i64,
    pub updated_at: i64,
    pub attempt: Option<i64>,
    pub attempted_at: Option<i64>,
    pub status_code: Option<i64>,
    pub latency_ms: Option<i64>,
    pub response_excerpt: Option<String>,
    pub error_class: Option<String>,
    pub outcome: Option<String>,
}

/// An endpoint's `limit` newest deliveries with their attempts, in one
/// statement so a delivery and its attempts come from the same snapshot.
pub async fn list_deliveries<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    endpoint_id: &str,
    limit: i64,
) -> Result<Vec<DeliveryAttemptRow>> {
    Ok(sqlx::query_as(
        "SELECT d.event_id, e.event_type, d.status, d.next_attempt_at, d.created_at, d.updated_at, \
           a.attempt, a.attempted_at, a.status_code, a.latency_ms, a.response_excerpt, a.error_class, a.outcome \
         FROM (SELECT * FROM webhook_deliveries WHERE tenant_id = $1 AND endpoint_id = $2 \
               ORDER BY event_id DESC LIMIT $3) d \
           JOIN webhook_events e ON e.id = d.event_id AND e.tenant_id = d.tenant_id \
           LEFT JOIN webhook_attempts a ON a.endpoint_id = d.endpoint_id AND a.event_id = d.event_id \
             AND a.tenant_id = d.tenant_id \
         ORDER BY d.event_id DESC, a.attempt",
    )
    .bind(scope.tenant_id().to_string())
    .bind(endpoint_id)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// An inbound callback as received, verified or not.
pub struct NewInbound<'a> {
    pub id: &'a str,
    pub provider: &'a str,
    pub provider_event_id: Option<&'a str>,
    pub verified: bool,
    pub failure: Option<&'a str>,
    pub headers: &'a str,
    pub payload: &'a str,
    pub outcome: Option<&'a str>,
    pub now: i64,
}

pub fn insert_inbound_stmt(c: &NewInbound<'_>) -> Stmt {
    Stmt::new(
        "INSERT INTO inbound_callbacks (id, provider, provider_event_id, verified, failure, headers, payload, \
           outcome, received_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(c.id)
    .bind(c.provider)
    .bind(c.provider_event_id)
    .bind(i64::from(c.verified))
    .bind(c.failure)
    .bind(c.headers)
    .bind(c.payload)
    .bind(c.outcome)
    .bind(c.now)
}

/// The provider event acts once: a second insert is a unique violation.
pub fn claim_effect_stmt(provider: &str, provider_event_id: &str, callback_id: &str, now: i64) -> Stmt {
    Stmt::new(
        "INSERT INTO inbound_effects (provider, provider_event_id, callback_id, created_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(provider)
    .bind(provider_event_id)
    .bind(callback_id)
    .bind(now)
}

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct InboundRow {
    pub id: String,
    pub provider: String,
    pub provider_event_id: Option<String>,
    pub verified: i64,
    pub failure: Option<String>,
    pub headers: String,
    pub payload: String,
    pub outcome: Option<String>,
    pub received_at: i64,
}

/// For the operator: a stored callback (any provider, any tenant).
pub async fn get_inbound<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &palisade_core::principal::SysadminProof,
    id: &str,
) -> Result<Option<InboundRow>> {
    Ok(sqlx::query_as(
        "SELECT id, provider, provider_event_id, verified, failure, headers, payload, outcome, received_at \
         FROM inbound_callbacks WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(ex)
    .await?)
}

pub fn set_inbound_outcome_stmt(id: &str, outcome: &str) -> Stmt {
    Stmt::new("UPDATE inbound_callbacks SET outcome = $2 WHERE id = $1").bind(id).bind(outcome)
}

/// Retention: finished deliveries (with their attempts) last updated before
/// `before`, events no delivery needs any more, and inbound callbacks
/// received before it. Pending deliveries stay, and so do the records that
/// make a payment act once (`inbound_effects`). One statement per
/// transaction, so housekeeping never holds the write lock for long.
pub async fn purge(db: &crate::Db, before: i64) -> Result<u64> {
    Ok(purge_deliveries(db, None, before).await? + purge_inbound(db, before).await?)
}

/// Finished deliveries (with their attempts) and events no delivery needs,
/// older than `before`: of one tenant, or of all (`None`). How many rows.
pub async fn purge_deliveries(db: &crate::Db, scope: Option<&TenantScope>, before: i64) -> Result<u64> {
    let tenant = scope.map(|s| s.tenant_id().to_string()).unwrap_or_default();
    let mut n = 0;
    for sql in [
        "DELETE FROM webhook_attempts WHERE ($2 = '' OR tenant_id = $2) AND EXISTS (SELECT 1 FROM webhook_deliveries d \
           WHERE d.tenant_id = webhook_attempts.tenant_id AND d.endpoint_id = webhook_attempts.endpoint_id \
           AND d.event_id = webhook_attempts.event_id AND d.status <> 'pending' AND d.updated_at < $1)",
        "DELETE FROM webhook_deliveries WHERE ($2 = '' OR tenant_id = $2) AND status <> 'pending' AND updated_at < $1",
        "DELETE FROM webhook_events WHERE ($2 = '' OR tenant_id = $2) AND created_at < $1 \
           AND NOT EXISTS (SELECT 1 FROM webhook_deliveries d WHERE d.event_id = webhook_events.id)",
    ] {
        let mut tx = db.begin().await?;
        n += sqlx::query(sql).bind(before).bind(&tenant).execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
    }
    Ok(n)
}

/// Inbound callbacks (a provider's, not a tenant's) older than `before`.
pub async fn purge_inbound(db: &crate::Db, before: i64) -> Result<u64> {
    let mut tx = db.begin().await?;
    let n = sqlx::query("DELETE FROM inbound_callbacks WHERE received_at < $1")
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
    tx.commit().await?;
    Ok(n)
}
