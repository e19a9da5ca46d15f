//! Recovery from a stop: every instance notes that it runs, ends the live
//! calls of instances no longer seen (nobody else will: their tasks died
//! with them), and fails and refunds messages that were charged but not
//! recorded as handed to a carrier.
//!
//! Messages are failed, not sent again: one whose instance stopped just
//! after the hand-over, before the `sent` report was written, may have
//! reached the carrier, and a refund is better than a message sent twice.
//! Instances compare heartbeats written by their own clocks: keep clocks
//! in sync (NTP).

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use palisade_audit::Event;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, TenantId, TenantScope};

use crate::state::AppState;
use palisade_admission::ending::Ended;

/// How often an instance notes that it runs and looks for what others left.
pub const HEARTBEAT: Duration = Duration::from_secs(10);
/// An instance not seen for this long has stopped.
pub use palisade_store::recovery::INSTANCE_GONE_MS;
/// A message still queued this long was not handed over by its instance
/// (the hand-over and its report take moments).
pub const UNSENT_AFTER_MS: i64 = 10 * 60_000;
/// The error code of what a stop interrupted.
pub const INTERRUPTED: &str = "interrupted";
/// Rows per sweep.
const BATCH: i64 = 100;

/// The KEK versions this instance holds, as the instances table keeps them.
fn kek_versions(state: &AppState) -> String {
    state.keys.kek().versions().iter().map(u32::to_string).collect::<Vec<_>>().join(",")
}

/// Registers this instance, before it serves: a call it places must never
/// look like an orphan to another instance.
pub async fn register(state: &AppState) -> Result<(), palisade_store::StoreError> {
    palisade_store::recovery::heartbeat(&state.db, &state.admission.instance_id, state.now_ms(), &kek_versions(state))
        .await
}

/// The heartbeat and the sweeps, until `stop`. They run apart, so a slow
/// sweep never delays the heartbeat. The sweeps wait until this instance's
/// heartbeats have succeeded for [`INSTANCE_GONE_MS`] without a break:
/// after the database was unreachable, every instance's heartbeat failed,
/// and the others must have been seen again before anyone counts them gone
/// (and the carrier reports held back meanwhile must have been written
/// before a queued message counts as never handed over).
pub fn spawn(state: AppState, stop: tokio::sync::watch::Receiver<bool>) {
    let healthy_since = Arc::new(AtomicI64::new(0));
    let (s, h) = (state.clone(), healthy_since.clone());
    every_beat(stop.clone(), move || {
        let (s, h) = (s.clone(), h.clone());
        async move { beat(&s, &h).await }
    });
    every_beat(stop, move || {
        let (s, h) = (state.clone(), healthy_since.clone());
        async move {
            let since = h.load(Ordering::Relaxed);
            if since != 0 && s.now_ms() - since >= INSTANCE_GONE_MS {
                sweep(&s).await;
            }
        }
    });
}

/// Runs `job` every [`HEARTBEAT`] (the first at once) until `stop`.
fn every_beat<F, Fut>(mut stop: tokio::sync::watch::Receiver<bool>, mut job: F)
where
    F: FnMut() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(HEARTBEAT);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => job().await,
                _ = stop.changed() => break,
            }
        }
    });
}

/// Notes that this instance runs; `healthy_since` is when the current run
/// of successful heartbeats began (0 after a failure).
async fn beat(state: &AppState, healthy_since: &AtomicI64) {
    use Ordering::Relaxed;
    let now = state.now_ms();
    match palisade_store::recovery::heartbeat(&state.db, &state.admission.instance_id, now, &kek_versions(state)).await
    {
        Ok(()) => {
            let _ = healthy_since.compare_exchange(0, now, Relaxed, Relaxed);
        }
        Err(e) => {
            healthy_since.store(0, Relaxed);
            tracing::warn!(error = %e, "could not note this instance as running");
        }
    }
}

/// One round of both sweeps (the background task runs it only after a
/// minute of successful heartbeats).
pub async fn sweep(state: &AppState) {
    let now = state.now_ms();
    let calls = end_orphan_calls(state, now).await;
    if calls > 0 {
        tracing::warn!(calls, "ended calls whose instance had stopped");
    }
    let messages = fail_unsent_messages(state, now).await;
    if messages > 0 {
        tracing::warn!(messages, "failed and refunded messages not recorded as handed to the carrier");
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
/// of the last moment they were known live (billing stops there). A call
/// that cannot be ended is logged and skipped until the next round.
async fn end_orphan_calls(state: &AppState, now: i64) -> usize {
    let (mut ended, mut cursor) = (0, String::new());
    let before = now - INSTANCE_GONE_MS;
    loop {
        let listed = palisade_store::recovery::orphan_calls(
            state.db.reader(),
            &state.admission.instance_id,
            before,
            &cursor,
            BATCH,
        )
        .await;
        let orphans = match listed {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "listing orphaned calls failed");
                return ended;
            }
        };
        for o in &orphans {
            let at = o.last_known().min(now);
            // The line may still be up at the carrier: bring it down too.
            if let Err(e) = state.carrier.hang_up(&o.id).await {
                tracing::warn!(call = o.id, error = %e, "the carrier could not hang up an orphaned call");
            }
            let done = match scope_of(&o.tenant_id) {
                Ok(scope) => {
                    let ended = Ended { at, unless_seen_since: Some(before) };
                    state
                        .admission
                        .end_call_at(&scope, &o.id, "failed", Some(INTERRUPTED), None, ended)
                        .await
                        .map_err(ApiError::from)
                }
                Err(e) => Err(e),
            };
            match done {
                Ok(Some(_)) => ended += 1,
                Ok(None) => {}
                Err(e) => tracing::warn!(call = o.id, error = %e, "ending an orphaned call failed"),
            }
        }
        match orphans.last() {
            Some(last) if orphans.len() == BATCH as usize => cursor.clone_from(&last.id),
            _ => return ended,
        }
    }
}

/// Fails and refunds messages queued since before the hand-over window. A
/// message that cannot be is logged and skipped until the next round.
async fn fail_unsent_messages(state: &AppState, now: i64) -> usize {
    let (mut failed, mut cursor) = (0, String::new());
    loop {
        let listed =
            palisade_store::recovery::unsent_messages(state.db.reader(), now - UNSENT_AFTER_MS, &cursor, BATCH).await;
        let unsent = match listed {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, "listing unsent messages failed");
                return failed;
            }
        };
        for (tenant_id, id) in &unsent {
            let done = match scope_of(tenant_id) {
                Ok(scope) => fail_unsent(state, &scope, id, now).await,
                Err(e) => Err(e),
            };
            match done {
                Ok(true) => failed += 1,
                Ok(false) => {}
                Err(e) => tracing::warn!(message = id, error = %e, "failing an unsent message failed"),
            }
        }
        match unsent.last() {
            Some((_, last)) if unsent.len() == BATCH as usize => cursor.clone_from(last),
            _ => return failed,
        }
    }
}

/// One message, in one transaction: failed, its charge and its budget
/// given back, the audit event and the tenant's `message.failed`. Rows in
/// the order of [`palisade_store::locks`]: the message, the identity's
/// spend, the balance. Run again if the database aborts it for a conflict.
async fn fail_unsent(state: &AppState, scope: &TenantScope, id: &str, now: i64) -> Result<bool, ApiError> {
    let failed = palisade_store::locks::retrying(|| fail_unsent_once(state, scope, id, now)).await?;
    if failed {
        state.webhook_wake.notify_one();
    }
    Ok(failed)
}

async fn fail_unsent_once(
    state: &AppState,
    scope: &TenantScope,
    id: &str,
    now: i64,
) -> Result<bool, palisade_store::StoreError> {
    let mut tx = state.db.begin().await?;
    let Some(m) = palisade_store::recovery::fail_unsent(&mut *tx, scope, id, INTERRUPTED, now).await? else {
        return Ok(false);
    };
    if m.cost > 0 {
        let month = &palisade_core::clock::rfc3339(m.created_at)[..7];
        palisade_store::calls::unspend(&mut *tx, &m.identity_id, month, m.cost).await?;
        palisade_store::credits::refund(&mut *tx, scope, m.cost, id, now).await?;
    }
    let event = Event::new("message.refunded", Some(scope.tenant_id()), Actor::system())
        .resource("message", id)
        .details(serde_json::json!({ "error_code": INTERRUPTED, "refunded": m.cost }));
    palisade_audit::append(&mut *tx, &event, &palisade_audit::Context::default(), now).await?;
    let data = serde_json::json!({ "id": id, "status": "failed", "error_code": INTERRUPTED });
    let failed = palisade_webhooks::events::event(scope.tenant_id(), "message.failed", data, now);
    tx.run(&palisade_store::webhooks::enqueue_stmts(&[failed])).await?;
    tx.commit().await?;
    Ok(true)
}
