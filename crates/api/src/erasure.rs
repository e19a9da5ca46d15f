//! A phone number's erasure within one tenant: someone the tenant wrote to
//! or called asks to be forgotten. Message bodies are blanked and the
//! number masked in messages, calls (live ones too), CDRs (only the
//! number: a CDR's amounts and times stay as written) and webhook event
//! payloads, then the recordings
//! of masked calls go, in batches (one short transaction each; a request
//! cut short is finished by repeating it).
//! Audited as `number.erased` with the masked number, however far it got.

use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::TenantScope;
use palisade_store::erasure::Masked;
use palisade_store::StoreError;

use crate::state::AppState;

/// What a number's erasure changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub messages: u64,
    pub calls: u64,
    pub cdrs: u64,
    pub webhook_events: u64,
    pub recordings: u64,
}

pub async fn erase_number(
    state: &AppState,
    scope: &TenantScope,
    number: &str,
    actor: Actor,
    ctx: &Context,
) -> Result<Erased, StoreError> {
    let masked = palisade_guard::phone::masked(number);
    let mut erased = Erased::default();
    let done = erase(state, scope, number, &masked, &actor, ctx, &mut erased).await;
    // Recorded however far it got: what was changed was changed.
    let event = Event::new("number.erased", Some(scope.tenant_id()), actor)
        .details(serde_json::json!({ "number": masked, "erased": erased, "complete": done.is_ok() }));
    palisade_audit::record(&state.db, &event, ctx, state.now_ms()).await?;
    done.map(|()| erased)
}

async fn erase(
    state: &AppState,
    scope: &TenantScope,
    number: &str,
    masked: &str,
    actor: &Actor,
    ctx: &Context,
    erased: &mut Erased,
) -> Result<(), StoreError> {
    let batch = i64::from(state.config.retention.batch);
    let full = u64::from(state.config.retention.batch);
    // Messages, then calls; after the calls, CDRs (a live call's is written
    // masked); then the events kept for the delivery log.
    for table in [Masked::Messages, Masked::Calls, Masked::Cdrs, Masked::WebhookEvents] {
        loop {
            let mut tx = state.db.begin().await?;
            let n = palisade_store::erasure::mask(&mut tx, scope, table, number, masked, batch).await?;
            tx.commit().await?;
            *match table {
                Masked::Messages => &mut erased.messages,
                Masked::Calls => &mut erased.calls,
                Masked::Cdrs => &mut erased.cdrs,
                Masked::WebhookEvents => &mut erased.webhook_events,
            } += n;
            if n < full {
                break;
            }
        }
    }
    // After the calls: a recording kept meanwhile is found too, and one
    // being kept now sees its call masked and keeps nothing.
    loop {
        let found = palisade_store::erasure::recordings(state.db.reader(), scope, batch).await?;
        let n = found.len() as u64;
        for r in found {
            if state.admission.remove_recording(scope, &r, actor.clone(), ctx).await? {
                erased.recordings += 1;
            }
        }
        if n < full {
            return Ok(());
        }
    }
}
