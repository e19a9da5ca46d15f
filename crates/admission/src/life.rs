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
    /// The callee answered (the call is `in_progress`).
    fn answered(&self) {}
    /// The call ended on the far side or failed: `completed` (the callee
    /// hung up), `busy` or `failed`.
    fn ended(&self, _status: &str) {}
}

impl CallObserver for () {}

impl Service {
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
            let end = |status: &'static str, code: Option<&'static str>| {
                let (svc, scope, id, observer) = (svc.clone(), scope.clone(), call.id.clone(), observer.clone());
                async move {
                    log_end(svc.end_call(&scope, &id, status, code, None).await);
                    observer.ended(status);
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
                Ok(CallAnswer::Answered) => {
                    if !step("in_progress", true).await {
                        // Over already (hung up), or not recordable: make sure.
                        let _ = carrier.hang_up(&call.id).await;
                        end("failed", Some("interrupted")).await;
                        return;
                    }
                    observer.answered();
                    if let Some(after) = carrier.callee_hangs_up_after() {
                        tokio::time::sleep(after).await;
                        end("completed", None).await;
                    }
                }
            }
        });
    }
}

fn log_end(r: Result<Option<CdrRow>, StoreError>) {
    if let Err(e) = r {
        tracing::error!(error = %e, "ending a call failed");
    }
}
