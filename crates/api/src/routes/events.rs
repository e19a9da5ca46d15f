use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::Json;
use palisade_audit::checkpoint::Checkpoint;
use palisade_audit::merkle;
use palisade_audit::EventView;
use palisade_core::{ApiError, Permission};
use palisade_core::{EventId, TenantId};
use palisade_store::audit::{AuditFilter, Reader};
use serde::Deserialize;
use serde::Serialize;
use utoipa::IntoParams;
use utoipa::ToSchema;

use super::List;
use crate::extract::{Auth, PathId, Sysadmin};
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventQuery {
    /// Cursor: the `next_cursor` of the previous page, or the `seq` of the
    /// last event read to follow the feed. Events come in the log's order,
    /// which only grows as they become visible (an event appears once it is
    /// sequenced into the log, at most `audit.checkpoint_interval_ms` after
    /// it is written, and at once for the reader's own writes), so a client
    /// following the cursor never misses one.
    #[param(pattern = r"^[0-9]{1,18}$")]
    pub(crate) after: Option<String>,
    /// Page size, 1 to 500 (default 100).
    #[param(minimum = 1, maximum = 500)]
    pub(crate) limit: Option<i64>,
    /// Only events of this action (`auth.login`, …).
    #[param(max_length = 200)]
    pub(crate) action: Option<String>,
    #[param(max_length = 200)]
    pub(crate) resource_type: Option<String>,
    #[param(max_length = 200)]
    pub(crate) resource_id: Option<String>,
    #[param(max_length = 200)]
    pub(crate) actor_id: Option<String>,
    /// RFC 3339, inclusive.
    #[param(format = DateTime)]
    pub(crate) since: Option<String>,
    /// RFC 3339, exclusive.
    #[param(format = DateTime)]
    pub(crate) until: Option<String>,
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
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct OperatorEventQuery {
    /// Only this tenant's events; all events (platform ones too) when absent.
    #[param(value_type = Option<uuid::Uuid>)]
    tenant_id: Option<String>,
    /// As for `GET /v1/events`.
    #[param(pattern = r"^[0-9]{1,18}$")]
    after: Option<String>,
    #[param(minimum = 1, maximum = 500)]
    limit: Option<i64>,
    #[param(max_length = 200)]
    action: Option<String>,
    #[param(max_length = 200)]
    resource_type: Option<String>,
    #[param(max_length = 200)]
    resource_id: Option<String>,
    #[param(max_length = 200)]
    actor_id: Option<String>,
    #[param(format = DateTime)]
    since: Option<String>,
    #[param(format = DateTime)]
    until: Option<String>,
}

/// Every audit event of the platform, including those that belong to no
/// tenant (operator actions, failed logins for unknown addresses).
#[utoipa::path(get, path = "/sysadmin/v1/events", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
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
    let event = palisade_audit::Event::new("sysadmin.events_read", tenant, admin.proof.actor());
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    page(&state, Reader::Operator(&admin.proof, tenant), rest).await
}

/// Digits of a cursor: every `seq` fits, as does every i64 of that many digits.
const MAX_CURSOR_DIGITS: usize = 18;
/// The longest filter value: longer than any action, type or id.
const MAX_FILTER_CHARS: usize = 200;

async fn page(state: &AppState, reader: Reader<'_>, q: EventQuery) -> Result<List<EventView>, ApiError> {
    let filter = filter(q)?;
    let limit = filter.limit - 1;
    // The feed serves sequenced events only; what the reader wrote a moment
    // ago is sequenced now. A failure here only delays events (the log
    // refuses to grow when tampered with; verification says why).
    if let Err(e) = state.audit_log.catch_up(reader.tenant(), state.now_ms()).await {
        tracing::error!(error = %e, "audit integration for the event feed failed");
    }
    let view = match reader {
        Reader::Tenant(_) => EventView::for_tenant,
        Reader::Operator(..) => EventView::from,
    };
    let mut rows = palisade_store::audit::list(state.db.reader(), reader, &filter).await?;
    // The cursor is the last event's `seq` (as before paging by log order):
    // the feed continues after that event's place in the log.
    let next_cursor = if rows.len() as i64 > limit {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.seq.to_string())
    } else {
        None
    };
    Ok(List { data: rows.into_iter().map(view).collect(), next_cursor })
}

/// The store's filter for a query (one more than the page size, to see
/// whether a next page exists). Shared with the live stream.
pub(crate) fn filter(q: EventQuery) -> Result<AuditFilter, ApiError> {
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
    // A cursor is a `seq`: digits only (no sign), as the document says.
    let after = q
        .after
        .map(|c| match c.parse::<i64>() {
            Ok(seq) if c.len() <= MAX_CURSOR_DIGITS && c.bytes().all(|b| b.is_ascii_digit()) => Ok(seq),
            _ => Err(ApiError::validation("after", "is not a cursor from this API")),
        })
        .transpose()?;
    for (field, value) in [
        ("action", &q.action),
        ("resource_type", &q.resource_type),
        ("resource_id", &q.resource_id),
        ("actor_id", &q.actor_id),
    ] {
        if value.as_ref().is_some_and(|v| v.chars().count() > MAX_FILTER_CHARS) {
            return Err(ApiError::validation(field, format!("must be at most {MAX_FILTER_CHARS} characters")));
        }
    }
    Ok(AuditFilter {
        after_seq: after,
        action: q.action,
        resource_type: q.resource_type,
        resource_id: q.resource_id,
        actor_id: q.actor_id,
        since_ms: time("since", q.since)?,
        until_ms: time("until", q.until)?,
        limit: limit + 1,
    })
}

#[derive(Serialize, ToSchema)]
pub struct ProofView {
    event_id: String,
    /// Position of the event in the tenant's own Merkle tree (its `seq`
    /// minus one): the tree holds the tenant's events only.
    leaf_index: u64,
    /// Size of the tenant's tree the proof is for (that of `checkpoint`).
    tree_size: u64,
    /// The exact bytes (UTF-8 JSON) whose leaf hash is in the tree.
    leaf_data: String,
    /// SHA-256(0x00 || leaf_data), hex.
    leaf_hash: String,
    /// RFC 9162 inclusion path, nearest sibling first, hex.
    audit_path: Vec<String>,
    /// The signed checkpoint of the tenant's tree (origin
    /// `<audit.origin>/tenants/<tenant id>`).
    checkpoint: Checkpoint,
    /// Ed25519 public key (raw 32 bytes, base64) that signs checkpoints.
    /// Pin it from a trusted channel rather than trusting this field.
    public_key: String,
}

/// An inclusion proof of one of the tenant's events in the tenant's own
/// tree against its latest signed checkpoint, checkable offline (see
/// docs/audit.md).
#[utoipa::path(get, path = "/v1/events/{id}/proof", tag = "events", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Event id (UUID)")),
    responses((status = 200, body = ProofView), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn proof(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<EventId>,
) -> Result<Json<ProofView>, ApiError> {
    let scope = auth.scope(Permission::EventsRead).await?;
    let tenant = scope.tenant_id();
    let event = palisade_store::audit::event_of_tenant(state.db.reader(), &scope, &id.to_string())
        .await?
        .ok_or_else(ApiError::not_found)?;
    let log = &state.audit_log;
    let mut leaf = palisade_store::audit::tenant_leaf_of_event(state.db.reader(), tenant, event.seq).await?;
    if leaf.is_none() {
        // Not sequenced yet: do it now rather than make the caller wait.
        log.catch_up(Some(tenant), state.now_ms()).await.map_err(ApiError::internal)?;
        leaf = palisade_store::audit::tenant_leaf_of_event(state.db.reader(), tenant, event.seq).await?;
    }
    let not_yet = || ApiError::conflict("The event is not in a signed checkpoint yet; retry shortly.");
    let (index, leaf_hash) = leaf.ok_or_else(not_yet)?;
    let checkpoint = log
        .latest_tenant_checkpoint(tenant)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("no checkpoint although the event is sequenced"))?;
    let head = checkpoint.head().ok_or_else(|| ApiError::internal("stored checkpoint is malformed"))?;
    let index = u64::try_from(index).map_err(ApiError::internal)?;
    if index >= head.tree_size {
        return Err(not_yet());
    }
    let path =
        log.tenant_inclusion_path(&tenant.to_string(), index, head.tree_size).await.map_err(ApiError::internal)?;
    let data = palisade_audit::tenant::tenant_leaf_data(&event, index as i64 + 1);
    Ok(Json(ProofView {
        event_id: event.id.clone(),
        leaf_index: index,
        tree_size: head.tree_size,
        leaf_data: String::from_utf8(data).map_err(ApiError::internal)?,
        leaf_hash,
        audit_path: path.iter().map(hex::encode).collect(),
        public_key: log.signer().verifier().public_key_b64(),
        checkpoint,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct VerifyView {
    /// `intact` or `tampered`.
    status: &'static str,
    /// How many of the tenant's most recent events were re-hashed and
    /// found in the tenant's tree.
    checked_events: u64,
    /// Events not yet sequenced into a checkpoint.
    pending_events: u64,
    /// Size of the tenant's own tree (its events only).
    tree_size: u64,
    root_hash: String,
    /// The latest signed checkpoint of the tenant's tree.
    checkpoint: Option<Checkpoint>,
    problems: Vec<String>,
}

const VERIFY_RECENT: i64 = 1000;

/// What the tenant can check of the log cheaply: the latest checkpoint of
/// the log and of the tenant's own tree verify; the stored trees are those
/// signed, have no gaps and are not shorter than the checkpoint file says;
/// the tenant's 1,000 most recent events still hash to their leaves; and
/// the newest one is provably in the tenant's signed tree. (Full
/// verification: `palisade audit verify`.) Nothing here reveals the size
/// of the platform's log.
#[utoipa::path(get, path = "/v1/events/verify", tag = "events", security(("bearer" = [])),
    responses((status = 200, body = VerifyView)))]
pub async fn verify(State(state): State<AppState>, auth: Auth) -> Result<Json<VerifyView>, ApiError> {
    let scope = auth.scope(Permission::EventsRead).await?;
    let tenant = scope.tenant_id();
    let log = &state.audit_log;
    let verifier = log.signer().verifier();
    let mut problems = Vec::new();
    // Read in this order so that an integration running meanwhile can only
    // make later reads larger, never raise a false alarm.
    let file_max = log.file_max_size();
    let log_checkpoint = log.latest_checkpoint().await.map_err(ApiError::internal)?;
    let log_head = log_checkpoint.as_ref().and_then(|c| verifier.verify(c));
    let checkpoint = log.latest_tenant_checkpoint(tenant).await.map_err(ApiError::internal)?;
    let head = checkpoint.as_ref().and_then(|c| verifier.verify_tenant(c, &tenant.to_string()));
    // The log as stored must be the tree last signed, no smaller than what
    // the checkpoint file has vouched for, and without gaps.
    let (size, frontier, leaves) = palisade_store::audit::head(state.db.reader()).await?;
    let (size, leaves) = (u64::try_from(size).unwrap_or(0), u64::try_from(leaves).unwrap_or(0));
    if let Some(h) = &log_head {
        let stored_root = merkle::Frontier::decode(size, &frontier).map(|f| f.root());
        if h.tree_size == size && stored_root != Some(h.root) {
            problems.push("the stored tree does not match the latest signed checkpoint".to_owned());
        }
        if h.tree_size > size || leaves != size {
            problems.push("leaves were removed from or added to the log".to_owned());
        }
    }
    if file_max > size {
        problems.push("the log is shorter than a checkpoint already written to the checkpoint file".to_owned());
    }
    // The same of the tenant's own tree, which must also lie within the log.
    let (t_size, t_frontier, t_leaves, t_last) = palisade_store::audit::tenant_head(state.db.reader(), tenant).await?;
    let (t_size, t_leaves) = (u64::try_from(t_size).unwrap_or(0), u64::try_from(t_leaves).unwrap_or(0));
    if let Some(h) = &head {
        let stored_root = merkle::Frontier::decode(t_size, &t_frontier).map(|f| f.root());
        if h.tree_size == t_size && stored_root != Some(h.root) {
            problems.push("the tenant's stored tree does not match its latest signed checkpoint".to_owned());
        }
        if h.tree_size > t_size || t_leaves != t_size {
            problems.push("leaves were removed from or added to the tenant's tree".to_owned());
        }
    }
    if t_last.is_some_and(|l| u64::try_from(l).unwrap_or(u64::MAX) >= size) {
        problems.push("the tenant's tree holds events the log no longer has".to_owned());
    }
    let (mut checked, mut pending) = (0, 0);
    let mut newest = None;
    for (row, stored) in palisade_store::audit::recent_of_tenant(state.db.reader(), &scope, VERIFY_RECENT).await? {
        match stored {
            None => pending += 1,
            Some((index, h))
                if merkle::decode_hash(&h) == Some(palisade_audit::tenant::tenant_leaf_hash(&row, index + 1)) =>
            {
                checked += 1;
                newest.get_or_insert((index, h));
            }
            Some(_) => problems.push(format!("event {} no longer matches its logged hash", row.id)),
        }
    }
    // The newest of them must be provably in the tenant's signed tree.
    if let (Some((index, leaf_hash)), Some(h)) = (newest, &head) {
        let index = index as u64;
        if index < h.tree_size {
            let proven = match log.tenant_inclusion_path(&tenant.to_string(), index, h.tree_size).await {
                Ok(path) => merkle::decode_hash(&leaf_hash)
                    .is_some_and(|lh| merkle::verify_inclusion(&lh, index, h.tree_size, &path, &h.root)),
                Err(_) => false,
            };
            if !proven {
                problems.push("the tenant's newest event is not provably in the signed tree".to_owned());
            }
        }
    }
    if checkpoint.is_some() && head.is_none() || log_checkpoint.is_some() && log_head.is_none() {
        problems.push("the latest checkpoint's signature does not verify".to_owned());
    }
    Ok(Json(VerifyView {
        status: if problems.is_empty() { "intact" } else { "tampered" },
        checked_events: checked,
        pending_events: pending,
        tree_size: head.as_ref().map_or(0, |h| h.tree_size),
        root_hash: head.as_ref().map(|h| hex::encode(h.root)).unwrap_or_default(),
        checkpoint,
        problems,
    }))
}

#[derive(Serialize, ToSchema)]
pub struct LogVerifyView {
    /// `intact` or `tampered`.
    status: &'static str,
    /// Records re-hashed into the rebuilt tree.
    records: u64,
    /// Distinct signed tree sizes checked.
    checkpoints: u64,
    /// Events written but not yet sequenced (covered by no checkpoint).
    pending_events: u64,
    problems: Vec<String>,
}

/// Full verification of the whole cluster's log, as `palisade audit
/// verify` runs it, against the checkpoints in the database and this
/// instance's witness file (when it has one): every record is re-hashed,
/// the log's and every tenant's tree rebuilt. It reads the whole log, so it
/// takes as long as the log is large.
#[utoipa::path(get, path = "/sysadmin/v1/events/verify", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    responses((status = 200, body = LogVerifyView), (status = 409, body = palisade_core::Problem)))]
pub async fn verify_all(State(state): State<AppState>, admin: Sysadmin) -> Result<Json<LogVerifyView>, ApiError> {
    // One at a time per instance: each reads the whole log.
    static RUNNING: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Ok(_running) = RUNNING.try_lock() else {
        return Err(ApiError::conflict("a full verification is already running; try again when it ends"));
    };
    let event = palisade_audit::Event::new("sysadmin.audit_verified", None, admin.proof.actor());
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    let log = &state.audit_log;
    let file = log.checkpoint_file();
    let files: Vec<&std::path::Path> = if file.exists() { vec![file] } else { Vec::new() };
    let report = palisade_audit::verify::verify_log(&state.db, log.signer().verifier(), &files, |_| {})
        .await
        .map_err(ApiError::internal)?;
    Ok(Json(LogVerifyView {
        status: if report.intact() { "intact" } else { "tampered" },
        records: report.records,
        checkpoints: report.checkpoints,
        pending_events: report.pending,
        problems: report.problems,
    }))
}
