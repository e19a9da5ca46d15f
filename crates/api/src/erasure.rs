//! A phone number's erasure within one tenant: someone the tenant wrote to
//! or called asks to be forgotten. Their recordings go, message bodies are
//! blanked and the number masked in messages and calls, in batches (one
//! short transaction each; a request cut short is finished by repeating
//! it). CDRs keep the number: immutable billing records, they leave by
//! retention. Audited as `number.erased` with the masked number.

use palisade_audit::{Context, Event};
use palisade_core::principal::Actor;
use palisade_core::TenantScope;
use palisade_store::StoreError;

use crate::state::AppState;

/// What a number's erasure changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Erased {
    pub messages: u64,
    pub calls: u64,
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
    let batch = i64::from(state.config.retention.batch);
    let mut erased = Erased::default();
    // First: they are found through the calls' numbers.
    for r in palisade_store::erasure::recordings(state.db.reader(), scope, number).await? {
        if state.admission.remove_recording(scope, &r, actor.clone(), ctx).await? {
            erased.recordings += 1;
        }
    }
    loop {
        let mut tx = state.db.begin().await?;
        let n = palisade_store::erasure::messages(&mut tx, scope, number, &masked, batch).await?;
        tx.commit().await?;
        erased.messages += n;
        if n < u64::from(state.config.retention.batch) {
            break;
        }
    }
    loop {
        let mut tx = state.db.begin().await?;
        let n = palisade_store::erasure::calls(&mut tx, scope, number, &masked, batch).await?;
        tx.commit().await?;
        erased.calls += n;
        if n < u64::from(state.config.retention.batch) {
            break;
        }
    }
    let event = Event::new("number.erased", Some(scope.tenant_id()), actor)
        .details(serde_json::json!({ "number": masked, "erased": erased }));
    palisade_audit::record(&state.db, &event, ctx, state.now_ms()).await?;
    Ok(erased)
}
