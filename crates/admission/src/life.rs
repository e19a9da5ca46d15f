//! A placed call's life through the carrier: ringing, answered or not,
//! and the callee's hang-up, each recorded through this service. The
//! transport that placed it watches through a [`CallObserver`] (the SIP
//! edge answers or ends its caller's dialog; HTTP has nothing to do).

use std::sync::Arc;

use palisade_comms::{CallAnswer, Carrier, OutboundCall};
use palisade_core::TenantScope;
use palisade_store::calls::CdrRow;
use palisade_store::StoreError;

use crate::Service;

/// What the transport that placed a call hears of its life.
pub trait CallObserver: Send + Sync + 'static {
    /// The callee answered (the call is `in_progress`), with its session
    /// description if it sent one.
    fn answered(&self, _sdp: Option<&[u8]>) {}
    /// The call ended, however: `completed` (answered), `canceled`
    /// (hung up before the answer), `busy` or `failed`, with the error code
    /// of a failure (`srtp_downgrade`, `carrier_timeout`, …).
    fn ended(&self, _status: &str, _code: Option<&str>) {}
}

impl CallObserver for () {}

/// The observers of the calls this instance drives, told once when their
/// call ends, whoever ends it (the far side, the caller, an API hang-up).
#[derive(Default)]
pub struct Watchers(std::sync::Mutex<std::collections::HashMap<String, Arc<dyn CallObserver>>>);

impl Watchers {
    fn watch(&self, id: &str, observer: Arc<dyn CallObserver>) {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id.to_owned(), observer);
    }

    /// Tells the call's observer it ended (`status`, `code`), once.
    pub(crate) fn ended(&self, id: &str, status: &str, code: Option<&str>) {
        let observer = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(id);
        if let Some(o) = observer {
            o.ended(status, code);
        }
    }
}

/// What paying a live call's next minute came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extension {
    /// Paid: the call goes on.
    Paid,
    /// The call is over already.
    Over,
    /// It cannot be paid (the reason word: `insufficient_credits` or
    /// `monthly_budget`): the call must end now.
    Unpaid(&'static str),
}

impl Service {
    /// Pays an answered call's next minute ahead, as its first was paid at
    /// admission: the identity's monthly budget and the tenant's balance
    /// must cover it, or nothing is charged and the call must end.
    pub async fn extend_call(&self, scope: &TenantScope, id: &str) -> Result<Extension, StoreError> {
        let minute = self.pricing.call_minute;
        if minute <= 0 {
            return Ok(Extension::Paid);
        }
        palisade_store::locks::retrying(|| async {
            let now = self.now_ms();
            let mut tx = self.db.begin().await?;
            // The call's row first (the order of `palisade_store::locks`).
            if !palisade_store::calls::add_prepaid(&mut *tx, scope, id, minute, now).await? {
                return Ok(Extension::Over);
            }
            let Some(call) = palisade_store::calls::get(&mut *tx, scope, id).await? else {
                return Ok(Extension::Over);
            };
            let identity = match call.identity_id.parse() {
                Ok(identity) => palisade_store::identities::get(&mut *tx, scope, identity).await?,
                Err(_) => None,
            };
            if let Some(budget) = identity.and_then(|i| i.monthly_budget) {
                // The budget of the month the call was placed in, as its end is billed.
                let month = &palisade_core::clock::rfc3339(call.created_at)[..7];
                let within =
                    palisade_store::messages::spend_within_budget(&mut *tx, &call.identity_id, month, minute, budget);
                if !within.await? {
                    return Ok(Extension::Unpaid("monthly_budget"));
                }
            }
            let minutes = call.prepaid / minute;
            let reference = format!("{id}-m{minutes}");
            if !palisade_store::credits::debit(&mut *tx, scope, minute, "call", &reference, now).await? {
                return Ok(Extension::Unpaid("insufficient_credits"));
            }
            tx.commit().await?;
            Ok(Extension::Paid)
        })
        .await
    }

    /// Pays the call's minutes one ahead while it lasts; returns the reason
    /// word when one cannot be paid (the call must end), `None` when the
    /// call is over.
    async fn pay_as_it_goes(&self, scope: &TenantScope, id: &str) -> Option<&'static str> {
        loop {
            tokio::time::sleep(self.minute).await;
            match self.extend_call(scope, id).await {
                Ok(Extension::Paid) => {}
                Ok(Extension::Over) => return None,
                Ok(Extension::Unpaid(reason)) => return Some(reason),
                // Tried again at the next minute; the end bills what is due.
                Err(e) => tracing::error!(error = %e, "paying a call's next minute failed"),
            }
        }
    }

    /// Drives a call admitted by [`Service::place_call`] in the background.
    pub fn run_call(
        self: &Arc<Self>,
        carrier: Arc<dyn Carrier>,
        scope: TenantScope,
        call: OutboundCall,
        observer: Arc<dyn CallObserver>,
    ) {
        let svc = self.clone();
        tokio::spawn(async move {
            let step = |status: &'static str, answered: bool| {
                let (svc, scope, id) = (svc.clone(), scope.clone(), call.id.clone());
                async move {
                    svc.call_progress(&scope, &id, status, answered).await.unwrap_or_else(|e| {
                        tracing::error!(error = %e, "recording a call's progress failed");
                        false
                    })
                }
            };
            // Told when the call ends however it ends, here too: a hang-up
            // through the API must not leave this task waiting.
            let (over_tx, over) = tokio::sync::oneshot::channel();
            let watched = Arc::new(Watched { inner: observer.clone(), over: std::sync::Mutex::new(Some(over_tx)) });
            svc.watchers.watch(&call.id, watched);
            let end = |status: &'static str, code: Option<&'static str>| {
                let (svc, scope, id) = (svc.clone(), scope.clone(), call.id.clone());
                async move {
                    log_end(svc.end_call(&scope, &id, status, code, None).await);
                    // Written: its observer was told (as the CDR says). Over
                    // already or not written yet: told now.
                    svc.watchers.ended(&id, status, code);
                }
            };
            // A step that finds the call over (hung up) or cannot be recorded
            // ends it as failed, which does nothing if it is over already,
            // rather than leave it live (holding its slot and prepaid minute).
            if !step("ringing", false).await {
                end("failed", Some("interrupted")).await;
                return;
            }
            match carrier.place_call(&call).await {
                Err(e) => end("failed", Some(e.code())).await,
                Ok(CallAnswer::Busy) => end("busy", None).await,
                Ok(CallAnswer::Answered { sdp }) => {
                    if !step("in_progress", true).await {
                        // Over already (hung up), or not recordable: make sure.
                        let _ = carrier.hang_up(&call.id).await;
                        // Nothing to keep of a call never recorded as answered.
                        drop(carrier.take_recording(&call.id));
                        end("failed", Some("interrupted")).await;
                        return;
                    }
                    observer.answered(sdp.as_deref());
                    tokio::select! {
                        () = carrier.callee_hangs_up(&call.id) => end("completed", None).await,
                        unpaid = svc.pay_as_it_goes(&scope, &call.id) => {
                            // Out of credit or budget, or ended elsewhere (a
                            // hang-up on another instance): the line comes down now.
                            let _ = carrier.hang_up(&call.id).await;
                            end("completed", unpaid).await;
                        }
                        // Ended on this instance (a hang-up): its line is down.
                        _ = over => {
                            let _ = carrier.hang_up(&call.id).await;
                        }
                    }
                    if call.record {
                        svc.record(&*carrier, &scope, &call.id).await;
                    }
                }
            }
        });
    }

    /// Keeps the recording the carrier made of the call, if it made one.
    async fn record(&self, carrier: &dyn Carrier, scope: &TenantScope, id: &str) {
        let Some(audio) = carrier.take_recording(id) else { return };
        if let Err(e) = self.keep_recording(scope, id, &audio).await {
            tracing::error!(error = %e, call = id, "keeping a call's recording failed");
        }
    }
}

/// The transport's observer, and word to the call's task that it ended.
struct Watched {
    inner: Arc<dyn CallObserver>,
    over: std::sync::Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
}

/// Only told of the end: the answer goes to the transport's observer itself.
impl CallObserver for Watched {
    fn ended(&self, status: &str, code: Option<&str>) {
        self.inner.ended(status, code);
        if let Some(tx) = self.over.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() {
            let _ = tx.send(());
        }
    }
}

fn log_end(r: Result<Option<CdrRow>, StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "ending a call failed");
    }
}
