//! The retention sweeper: one pass per data type over every active tenant,
//! each tenant with its own period within the operator's bounds
//! (`retention.*`). Work goes in batches of `retention.batch`, one short
//! transaction each and none for a tenant with nothing due, so the write
//! lock is never held long and a pass stopped midway resumes at the next.
//! What went is counted in the tenant's audit trail (`retention.applied`);
//! a tenant that fails is logged and the pass goes on.

use std::future::Future;

use palisade_audit::{Context, Event};
use palisade_core::principal::{Actor, SysadminProof};
use palisade_core::{TenantId, TenantScope};
use palisade_store::retention::{self as store, Kind};
use palisade_store::{Db, StoreError};

const DAY_MS: i64 = 86_400_000;

const HOUR_MS: i64 = 3_600_000;

/// The operator's `(default, min, max)` for `kind`, in days (sessions: in
/// hours). A default of 0 keeps webhook deliveries, and audit records
/// (`audit.retention_days = 0`).
pub fn period_rule(config: &palisade_config::Config, kind: Kind) -> (u32, u32, u32) {
    let rules = &config.retention;
    match kind {
        Kind::Webhooks => (config.webhooks.retention_days, rules.webhooks_min_days, rules.webhooks_max_days),
        Kind::Messages => (rules.messages_days, rules.messages_min_days, rules.messages_max_days),
        Kind::Calls => (rules.calls_days, rules.calls_min_days, rules.calls_max_days),
        Kind::Recordings => (rules.recordings_days, rules.recordings_min_days, rules.recordings_max_days),
        Kind::Sessions => (rules.sessions_hours, rules.sessions_min_hours, rules.sessions_max_hours),
        // A tenant may keep its trail a shorter time than the platform, never longer.
        Kind::Audit => {
            let platform = config.audit.retention_days;
            (platform, rules.audit_min_days, if platform == 0 { 36_500 } else { platform })
        }
    }
}

/// The tenant's period for `kind`: its own choice within the operator's
/// bounds (a choice outside bounds changed since is clamped), else the
/// operator's default.
pub fn period(config: &palisade_config::Config, kind: Kind, own: Option<i64>) -> i64 {
    let (default, min, max) = period_rule(config, kind);
    own.map_or(i64::from(default), |d| d.clamp(i64::from(min), i64::from(max)))
}

/// Runs `step` (one batch, one transaction) until a batch comes back
/// short of `rules.batch`; the total.
async fn in_batches<F, Fut>(rules: &palisade_config::Retention, mut step: F) -> Result<u64, StoreError>
where
    F: FnMut(i64) -> Fut,
    Fut: Future<Output = Result<u64, StoreError>>,
{
    let batch = i64::from(rules.batch);
    let mut total = 0;
    loop {
        let n = step(batch).await?;
        total += n;
        if n < u64::from(rules.batch) {
            return Ok(total);
        }
    }
}

async fn record(db: &Db, id: TenantId, details: serde_json::Value, now: i64) -> Result<(), StoreError> {
    let event = Event::new("retention.applied", Some(id), Actor::system()).details(details);
    palisade_audit::record(db, &event, &Context::default(), now).await.map(drop)
}

/// Messages: soft deletion past the period, removal past the grace period
/// (hours folded into the usage archive). `(soft deleted, removed)`.
pub async fn apply_message_retention(
    db: &Db,
    config: &palisade_config::Config,
    proof: &SysadminProof,
    clock: &dyn palisade_core::Clock,
) -> Result<(u64, u64), StoreError> {
    let rules = &config.retention;
    let mut totals = (0, 0);
    for (tenant, own) in store::tenants(db.reader(), proof, Kind::Messages).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        let days = period(config, Kind::Messages, own);
        match retain_messages(db, rules, &TenantScope::for_sysadmin(proof, id), days, clock.now_ms()).await {
            Ok((soft, removed)) => {
                totals.0 += soft;
                totals.1 += removed;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "message retention failed for a tenant"),
        }
    }
    Ok(totals)
}

async fn retain_messages(
    db: &Db,
    rules: &palisade_config::Retention,
    scope: &TenantScope,
    days: i64,
    now: i64,
) -> Result<(u64, u64), StoreError> {
    let (soft_before, purge_before) = (now - days * DAY_MS, now - i64::from(rules.grace_days) * DAY_MS);
    if !store::messages_due(db.reader(), scope, soft_before, purge_before).await? {
        return Ok((0, 0));
    }
    let soft = in_batches(rules, |batch| async move {
        let mut tx = db.begin().await?;
        let n = store::soft_delete_messages(&mut tx, scope, soft_before, now, batch).await?;
        tx.commit().await?;
        Ok(n)
    })
    .await?;
    let removed = in_batches(rules, |batch| async move {
        let mut tx = db.begin().await?;
        palisade_store::tenants::lock(&mut *tx, scope).await?;
        let n = store::purge_messages(&mut tx, scope, purge_before, batch).await?;
        tx.commit().await?;
        Ok(n)
    })
    .await?;
    if soft + removed > 0 {
        let details = serde_json::json!({
            "messages": { "soft_deleted": soft, "removed": removed, "days": days, "grace_days": rules.grace_days },
        });
        record(db, scope.tenant_id(), details, now).await?;
    }
    Ok((soft, removed))
}

/// What a pass of call retention did to one tenant, or to all.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CallsSwept {
    pub calls_soft_deleted: u64,
    pub calls_removed: u64,
    pub cdrs_hidden: u64,
    pub cdrs_removed: u64,
}

/// Calls and CDRs: past the period calls are soft deleted and CDRs hidden
/// (they stay immutable); past the grace period both are removed, a CDR
/// only under an append-only expiry and after its hour was folded into the
/// usage archive (usage keeps every hour).
pub async fn apply_call_retention(
    db: &Db,
    config: &palisade_config::Config,
    proof: &SysadminProof,
    clock: &dyn palisade_core::Clock,
) -> Result<CallsSwept, StoreError> {
    let rules = &config.retention;
    let mut all = CallsSwept::default();
    for (tenant, own) in store::tenants(db.reader(), proof, Kind::Calls).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        let days = period(config, Kind::Calls, own);
        match retain_calls(db, rules, &TenantScope::for_sysadmin(proof, id), days, clock.now_ms()).await {
            Ok(s) => {
                all.calls_soft_deleted += s.calls_soft_deleted;
                all.calls_removed += s.calls_removed;
                all.cdrs_hidden += s.cdrs_hidden;
                all.cdrs_removed += s.cdrs_removed;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "call retention failed for a tenant"),
        }
    }
    Ok(all)
}

async fn retain_calls(
    db: &Db,
    rules: &palisade_config::Retention,
    scope: &TenantScope,
    days: i64,
    now: i64,
) -> Result<CallsSwept, StoreError> {
    let grace = i64::from(rules.grace_days) * DAY_MS;
    let (soft_before, purge_before) = (now - days * DAY_MS, now - grace);
    // The CDRs' mark moves by whole hours (few moves to remember); they go
    // a grace period after they were hidden, not after they ended.
    let cdr_hide_before = soft_before - soft_before.rem_euclid(3_600_000);
    let cdr_purge_before = store::cdrs_removable_before(db.reader(), scope, purge_before).await?;
    if !store::calls_due(db.reader(), scope, soft_before, purge_before, cdr_hide_before, cdr_purge_before).await? {
        return Ok(CallsSwept::default());
    }
    let calls_soft_deleted = in_batches(rules, |batch| async move {
        let mut tx = db.begin().await?;
        let n = store::soft_delete_calls(&mut tx, scope, soft_before, now, batch).await?;
        tx.commit().await?;
        Ok(n)
    })
    .await?;
    let mut tx = db.begin().await?;
    let cdrs_hidden = store::hide_cdrs(&mut tx, scope, cdr_hide_before, now).await?;
    tx.commit().await?;
    let calls_removed = in_batches(rules, |batch| async move {
        let mut tx = db.begin().await?;
        palisade_store::tenants::lock(&mut *tx, scope).await?;
        let n = store::purge_calls(&mut tx, scope, purge_before, batch).await?;
        tx.commit().await?;
        Ok(n)
    })
    .await?;
    let cdrs_removed = if cdr_purge_before > 0 {
        in_batches(rules, |batch| async move {
            let mut tx = db.begin().await?;
            palisade_store::tenants::lock(&mut *tx, scope).await?;
            let n = store::purge_cdrs(&mut tx, scope, cdr_purge_before, now, batch).await?;
            tx.commit().await?;
            Ok(n)
        })
        .await?
    } else {
        0
    };
    let swept = CallsSwept { calls_soft_deleted, calls_removed, cdrs_hidden, cdrs_removed };
    if swept != CallsSwept::default() {
        let details = serde_json::json!({
            "calls": { "soft_deleted": calls_soft_deleted, "removed": calls_removed, "days": days,
                "grace_days": rules.grace_days },
            "cdrs": { "hidden": cdrs_hidden, "removed": cdrs_removed },
        });
        record(db, scope.tenant_id(), details, now).await?;
    }
    Ok(swept)
}

/// Recordings: removed for good past the period (row, key and file; audio
/// has no soft delete). How many.
pub async fn apply_recording_retention(
    admission: &palisade_admission::Service,
    config: &palisade_config::Config,
    proof: &SysadminProof,
) -> Result<u64, StoreError> {
    let rules = &config.retention;
    let mut total = 0;
    for (tenant, own) in store::tenants(admission.db.reader(), proof, Kind::Recordings).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        let scope = TenantScope::for_sysadmin(proof, id);
        let days = period(config, Kind::Recordings, own);
        let now = admission.now_ms();
        let removed = in_batches(rules, |batch| admission.expire_recordings(&scope, now - days * DAY_MS, batch)).await;
        match removed {
            Ok(0) => {}
            Ok(n) => {
                record(&admission.db, id, serde_json::json!({ "recordings": { "removed": n, "days": days } }), now)
                    .await?;
                total += n;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "recording retention failed for a tenant"),
        }
    }
    Ok(total)
}

/// Finished webhook deliveries (their attempts and events): removed after
/// the tenant's period (0, the operator's default, keeps them); pending ones
/// stay. Inbound callbacks, which are no tenant's, go after
/// `webhooks.retention_days`. How many rows.
pub async fn apply_webhook_retention(
    db: &Db,
    config: &palisade_config::Config,
    proof: &SysadminProof,
    clock: &dyn palisade_core::Clock,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for (tenant, own) in store::tenants(db.reader(), proof, Kind::Webhooks).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        let days = period(config, Kind::Webhooks, own);
        if days <= 0 {
            continue;
        }
        let now = clock.now_ms();
        let scope = TenantScope::for_sysadmin(proof, id);
        match palisade_store::webhooks::purge_deliveries(db, Some(&scope), now - days * DAY_MS).await {
            Ok(0) => {}
            Ok(n) => {
                record(db, id, serde_json::json!({ "webhooks": { "removed": n, "days": days } }), now).await?;
                total += n;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "webhook retention failed for a tenant"),
        }
    }
    let days = i64::from(config.webhooks.retention_days);
    if days > 0 {
        total += palisade_store::webhooks::purge_inbound(db, clock.now_ms() - days * DAY_MS).await?;
    }
    Ok(total)
}

/// Ended sessions (signed out, revoked or expired): removed the tenant's
/// period (in hours) after they ended, with their refresh tokens. How many.
pub async fn apply_session_retention(
    db: &Db,
    config: &palisade_config::Config,
    proof: &SysadminProof,
    clock: &dyn palisade_core::Clock,
) -> Result<u64, StoreError> {
    let rules = &config.retention;
    let mut total = 0;
    for (tenant, own) in store::tenants(db.reader(), proof, Kind::Sessions).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        let hours = period(config, Kind::Sessions, own);
        let scope = TenantScope::for_sysadmin(proof, id);
        let now = clock.now_ms();
        let removed = in_batches(rules, |batch| {
            let scope = &scope;
            async move {
                let mut tx = db.begin().await?;
                let n = store::remove_sessions(&mut tx, scope, now - hours * HOUR_MS, batch).await?;
                tx.commit().await?;
                Ok(n)
            }
        })
        .await;
        match removed {
            Ok(0) => {}
            Ok(n) => {
                record(db, id, serde_json::json!({ "sessions": { "removed": n, "hours": hours } }), now).await?;
                total += n;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "session retention failed for a tenant"),
        }
    }
    Ok(total)
}

/// Audit records of tenants that chose a period shorter than the
/// platform's (`audit.retention_days` removes everyone's older ones): each
/// such tenant's older records go under a signed statement of its own
/// (at most one a day), so the log and every tenant's tree still verify.
/// How many records.
pub async fn apply_audit_retention(
    log: &palisade_audit::log::AuditLog,
    db: &Db,
    config: &palisade_config::Config,
    proof: &SysadminProof,
    clock: &dyn palisade_core::Clock,
) -> Result<u64, palisade_audit::log::LogError> {
    let platform = i64::from(config.audit.retention_days);
    let mut total = 0;
    for (tenant, own) in store::tenants(db.reader(), proof, Kind::Audit).await? {
        let Ok(id) = tenant.parse::<TenantId>() else { continue };
        if own.is_none() {
            continue;
        }
        let days = period(config, Kind::Audit, own);
        if platform != 0 && days >= platform {
            continue;
        }
        let now = clock.now_ms();
        let scope = TenantScope::for_sysadmin(proof, id);
        match log.expire_tenant(&scope, now - days * DAY_MS, now, i64::from(config.retention.batch)).await {
            Ok(0) => {}
            Ok(n) => {
                record(db, id, serde_json::json!({ "audit": { "removed": n, "days": days } }), now).await?;
                total += n;
            }
            Err(e) => tracing::warn!(error = %e, tenant = %id, "audit retention failed for a tenant"),
        }
    }
    Ok(total)
}
