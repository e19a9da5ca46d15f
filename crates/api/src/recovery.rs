//! Recovery from a stop: every instance notes that it runs, ends the live
//! calls of instances no longer seen (nobody else will: their tasks died
//! with them), and fails and refunds messages that were charged but never
//! handed to a carrier.
//!
//! Messages are failed, not sent again: whether the carrier got one before
//! the stop is unknown, and a refund is better than a message sent twice.

use std::time::Duration;

use palisade_audit::Event;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, TenantId, TenantScope};

use crate::state::AppState;

/// How often an instance notes that it runs and looks for what others left.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// An instance not seen for this long has stopped.
pub const INSTANCE_GONE_MS: i64 = 60_000;
/// A message still queued this long after its send was interrupted before
/// the carrier got it (the hand-over takes moments).
pub const UNSENT_AFTER_MS: i64 = 10 * 60_000;
/// The error code of what a stop interrupted.
pub const INTERRUPTED: &str = "interrupted";
/// Rows per sweep.
const BATCH: i64 = 100;

/// Registers this instance, before it serves: a call it places must never
/// look like an orphan to another instance.
pub async fn register(state: &AppState) -> Result<(), palisade_store::StoreError> {
    palisade_store::recovery::heartbeat(&state.db, &state.instance_id, state.now_ms()).await
}

/// The heartbeat and the sweeps, until `stop`.
pub fn spawn(state: AppState, mut stop: tokio::sync::watch::Receiver<bool>) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        loop {
            tokio::select! {
                _ = tick.tick() => sweep(&state).await,
                _ = stop.changed() => break,
            }
        }
    });
}

/// One round: the heartbeat, orphaned calls, unsent messages.
pub async fn sweep(state: &AppState) {
    let now = state.now_ms();
    if let Err(e) = palisade_store::recovery::heartbeat(&state.db, &state.instance_id, now).await {
        tracing::warn!(error = %e, "could not note this instance as running");
    }
    match end_orphan_calls(state, now).await {
        Ok(n) if n > 0 => tracing::warn!(calls = n, "ended calls whose instance had stopped"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "ending orphaned calls failed"),
    }
    match fail_unsent_messages(state, now).await {
        Ok(n) if n > 0 => tracing::warn!(messages = n, "failed and refunded messages a stop kept from the carrier"),
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "failing unsent messages failed"),
    }
    if let Err(e) = palisade_store::recovery::forget_instances(&state.db, now - 7 * 86_400_000).await {
        tracing::warn!(error = %e, "forgetting old instances failed");
    }
}

fn scope_of(tenant_id: &str) -> Result<TenantScope, ApiError> {
    let tenant: TenantId = tenant_id.parse().map_err(ApiError::internal)?;
    Ok(TenantScope::for_system(tenant))
}

/// Ends, as failed `interrupted`, the live calls of stopped instances, as
/// of the last moment they were known live (billing stops there).
async fn end_orphan_calls(state: &AppState, now: i64) -> Result<usize, ApiError> {
    let mut ended = 0;
    loop {
        let orphans = palisade_store::recovery::orphan_calls(
            state.db.reader(),
            &state.instance_id,
            now - INSTANCE_GONE_MS,
            BATCH,
        )
        .await?;
        for o in &orphans {
            let (id, at) = (&o.id, o.last_known().min(now));
            // The line may still be up at the carrier: bring it down too.
            if let Err(e) = state.carrier.hang_up(id).await {
                tracing::warn!(call = id, error = %e, "the carrier could not hang up an orphaned call");
            }
            let scope = scope_of(&o.tenant_id)?;
            if crate::routes::calls::end_at(state, &scope, id, "failed", Some(INTERRUPTED), None, at).await?.is_some() {
                ended += 1;
            }
        }
        if orphans.len() < BATCH as usize {
            return Ok(ended);
        }
    }
}

/// Fails and refunds messages queued since before the hand-over window.
async fn fail_unsent_messages(state: &AppState, now: i64) -> Result<usize, ApiError> {
    let mut failed = 0;
    loop {
        let unsent = palisade_store::recovery::unsent_messages(state.db.reader(), now - UNSENT_AFTER_MS, BATCH).await?;
        for (tenant_id, id) in &unsent {
            if fail_unsent(state, &scope_of(tenant_id)?, id, now).await? {
                failed += 1;
            }
        }
        if unsent.len() < BATCH as usize {
            return Ok(failed);
        }
    }
}

/// One message, in one transaction: failed, its charge and its budget
/// given back, the audit event and the tenant's `message.failed`.
async fn fail_unsent(state: &AppState, scope: &TenantScope, id: &str, now: i64) -> Result<bool, ApiError> {
    let mut tx = state.db.begin().await?;
    let Some(m) = palisade_store::recovery::fail_unsent(&mut *tx, scope, id, INTERRUPTED, now).await? else {
        return Ok(false);
    };
    if m.cost > 0 {
        palisade_store::credits::refund(&mut *tx, scope, m.cost, id, now).await?;
        let month = &palisade_core::clock::rfc3339(m.created_at)[..7];
        palisade_store::calls::unspend(&mut *tx, &m.identity_id, month, m.cost).await?;
    }
    let event = Event::new("message.refunded", Some(scope.tenant_id()), Actor::system())
        .resource("message", id)
        .details(serde_json::json!({ "error_code": INTERRUPTED, "refunded": m.cost }));
    palisade_audit::append(&mut *tx, &event, &palisade_audit::Context::default(), now).await?;
    let data = serde_json::json!({ "id": id, "status": "failed", "error_code": INTERRUPTED });
    let failed = palisade_webhooks::events::event(scope.tenant_id(), "message.failed", data, now);
    tx.run(&palisade_store::webhooks::enqueue_stmts(&[failed])).await?;
    tx.commit().await?;
    state.webhook_wake.notify_one();
    Ok(true)
}
