//! INVITE: the caller authenticated (407), then admitted by the same
//! service as `POST /v1/calls` (`palisade-admission`); a refusal is its
//! status and reason word, an admitted call a dialog that the call's life
//! drives: answered, ended by either side, canceled before the answer.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use palisade_admission::calls::Call;
use palisade_admission::life::CallObserver;
use palisade_admission::{Answer, Caller, Outcome, Refusal};
use palisade_comms::{Carrier, OutboundCall};
use palisade_core::principal::Principal;
use palisade_core::{PermissionSet, PrincipalKind, TenantId, TenantScope};

use rsipstack::dialog::dialog::{DialogState, DialogStateReceiver, TerminatedReason};
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode};

/// The tenant's pass for a new call, by the rules the API applies to
/// `POST /v1/calls` (the tenant's address lists, its key, tenant and
/// call-creation rate limits; kept there, one rule): the tenant's
/// concurrent-call quota, or the refusal as (status, reason, Retry-After).
pub type TenantGate =
    Arc<dyn Fn(Principal, std::net::IpAddr) -> Pin<Box<dyn Future<Output = Result<u32, Gated>> + Send>> + Send + Sync>;

/// A refusal of the tenant's pass: the SIP status, reason word and wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Gated {
    pub status: u16,
    pub reason: &'static str,
    pub retry_after: Option<u64>,
}

/// A refusal as SIP: status, reason word for `Warning`, `Retry-After`.
pub fn refusal_status<W>(r: &Refusal<W>) -> (u16, Option<u64>) {
    match r {
        Refusal::Frozen | Refusal::CountryNotAllowed | Refusal::MonthlyBudget | Refusal::Screened(_) => (403, None),
        Refusal::NotOwnIdentity | Refusal::NumberNotVerified => (403, None),
        Refusal::RatePerSecond { retry_after } => (503, Some(*retry_after)),
        Refusal::ConcurrentCalls => (486, None),
        Refusal::InsufficientCredits { .. } => (402, None),
        Refusal::Invalid { .. } => (400, None),
        Refusal::KeyReused | Refusal::KeyInProgress => (409, None),
        Refusal::Unavailable => (503, Some(5)),
    }
}

/// An E.164 number from a Request-URI's user part (`+` and 8 to 15 digits,
/// visual separators of RFC 3966 dropped).
pub fn dialed_number(user: Option<&str>) -> Option<String> {
    let user = user?.split(';').next()?;
    let digits: String = user.chars().filter(|c| !matches!(c, '-' | '.' | '(' | ')')).collect();
    let rest = digits.strip_prefix('+')?;
    (rest.len() >= 8 && rest.len() <= 15 && rest.bytes().all(|b| b.is_ascii_digit())).then_some(digits)
}

/// The principal a SIP device acts as: its identity alone, with what an
/// agent token may do at most.
pub fn principal(tenant: TenantId, identity: palisade_core::IdentityId) -> Principal {
    let kind = PrincipalKind::Agent { identity_id: identity, owner_user_id: None, minted_by_key: None };
    Principal::authenticated(tenant, kind, PermissionSet::agent())
}

/// The SDP answer of a call whose media we do not carry yet: the offer's
/// first audio stream, inactive.
pub fn sdp_answer(host: &str) -> Vec<u8> {
    format!(
        "v=0\r\no=palisade 0 0 IN IP4 {host}\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\nm=audio 9 RTP/AVP 0\r\na=inactive\r\n"
    )
    .into_bytes()
}

/// What an admitted call needs after the INVITE's answer.
pub struct Placed {
    pub admission: Arc<palisade_admission::Service>,
    pub carrier: Arc<dyn Carrier>,
    pub scope: TenantScope,
    pub call: palisade_store::calls::CallRow,
    pub principal: Principal,
    pub audit: palisade_audit::Context,
    /// The caller's offer's media security, as its policy admitted it.
    pub media: palisade_voice::media::Security,
}

/// Drives the caller's dialog from the call's life.
struct DialogObserver {
    dialog: InviteDialog,
    /// Ours, when the callee sends none.
    sdp: Vec<u8>,
}

impl CallObserver for DialogObserver {
    fn answered(&self, sdp: Option<&[u8]>) {
        let headers = vec![Header::ContentType("application/sdp".into())];
        let sdp = sdp.map_or_else(|| self.sdp.clone(), <[u8]>::to_vec);
        if let Err(e) = self.dialog.accept(Some(headers), Some(sdp)) {
            tracing::debug!(target: "palisade::sip", error = %e, "the caller's dialog could not be answered");
        }
    }

    fn ended(&self, status: &str, error: Option<&str>) {
        let dialog = self.dialog.clone();
        // Not answered: the INVITE fails; answered: we hang up. A media
        // refusal says why (RFC 3326 Reason): the caller's offer was not
        // kept by the far end, or could not go to it.
        let media = error.filter(|e| matches!(*e, "srtp_downgrade" | "srtp_required" | "sdes_plaintext"));
        let code = match (status, media) {
            ("failed", Some(_)) => Some(StatusCode::NotAcceptableHere),
            ("busy", _) => Some(StatusCode::BusyHere),
            ("failed", None) => Some(StatusCode::TemporarilyUnavailable),
            ("canceled", _) => Some(StatusCode::RequestTerminated),
            _ => None,
        };
        let reason = media.map(|m| format!("SIP;cause=488;text=\"{m}\""));
        tokio::spawn(async move {
            // Answered: the callee hung up, so we do; else the INVITE fails.
            let r = match code {
                None => dialog.bye().await,
                Some(code) => dialog.reject(Some(code), reason),
            };
            if let Err(e) = r {
                tracing::debug!(target: "palisade::sip", error = %e, "the caller's dialog could not be ended");
            }
        });
    }
}

/// Serves a dialog's states until it ends: requests within the call that
/// we do not serve are answered at once, so none waits on us (media
/// changes come with media); at its end the dialog leaves the layer and
/// `ended` runs with the reason.
pub(crate) fn serve_dialog_states<F, Fut>(dialogs: Arc<DialogLayer>, mut states: DialogStateReceiver, ended: F)
where
    F: FnOnce(TerminatedReason) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    tokio::spawn(async move {
        while let Some(state) = states.recv().await {
            match state {
                DialogState::Terminated(id, reason) => {
                    dialogs.remove_dialog(&id);
                    ended(reason).await;
                    return;
                }
                DialogState::Updated(_, _, handle) => {
                    let _ = handle.reply(StatusCode::NotAcceptableHere).await;
                }
                DialogState::Info(_, _, handle)
                | DialogState::Options(_, _, handle)
                | DialogState::Message(_, _, handle)
                | DialogState::Refer(_, _, handle)
                | DialogState::Notify(_, _, handle)
                | DialogState::Publish(_, _, handle) => {
                    let _ = handle.reply(StatusCode::MethodNotAllowed).await;
                }
                _ => {}
            }
        }
    });
}

/// Starts the call's life and watches its dialog: a BYE or CANCEL from the
/// caller ends the call as a hang-up (canceled and refunded before the
/// answer, completed and billed after it).
pub fn run(
    placed: Placed,
    dialogs: Arc<DialogLayer>,
    dialog: InviteDialog,
    states: DialogStateReceiver,
    sdp: Vec<u8>,
    offer: Option<Vec<u8>>,
) {
    let observer = Arc::new(DialogObserver { dialog, sdp });
    let row = &placed.call;
    let call = OutboundCall {
        id: row.id.clone(),
        from: row.from_number.clone(),
        to: row.to_number.clone(),
        offer,
        attestation: row.attestation.clone(),
        record: row.record == 1,
    };
    placed.admission.run_call(placed.carrier.clone(), placed.scope.clone(), call, observer);
    serve_dialog_states(dialogs, states, move |reason| async move {
        let status = match reason {
            TerminatedReason::UacBye | TerminatedReason::UacCancel => "hangup",
            TerminatedReason::Timeout => "failed",
            _ => return,
        };
        let by = Some((placed.principal.actor(), &placed.audit));
        let id = &placed.call.id;
        match placed.admission.end_call(&placed.scope, id, status, None, by).await {
            Ok(Some(_)) => {
                if let Err(e) = placed.carrier.hang_up(id).await {
                    tracing::warn!(target: "palisade::sip", error = %e, "the carrier did not confirm the hang-up");
                }
            }
            Ok(None) => {}
            Err(e) => tracing::error!(target: "palisade::sip", error = %e, "ending a SIP call failed"),
        }
    });
}

/// Admits an INVITE's call. `Err` is the refusal's (status, reason word,
/// Retry-After).
pub async fn admit(
    admission: &palisade_admission::Service,
    principal: &Principal,
    scope: &TenantScope,
    audit: &palisade_audit::Context,
    slots: u32,
    c: Call,
) -> Result<palisade_store::calls::CallRow, (u16, &'static str, Option<u64>)> {
    let Some(caller) = Caller::new(principal, scope, audit, slots) else {
        return Err((500, "internal", None));
    };
    let screen = async { Ok::<(), ()>(()) };
    let answer = |_: &palisade_store::calls::CallRow| Answer { status: 201, body: String::new() };
    match admission.place_call(&caller, c, screen, answer).await {
        Ok(Outcome::Admitted(row)) => Ok(row),
        Ok(Outcome::Refused(r)) => {
            let (status, retry) = refusal_status(&r);
            Err((status, r.reason(), retry))
        }
        // No key is sent, so nothing replays.
        Ok(Outcome::Replayed(_)) => Err((500, "internal", None)),
        Err(e) => {
            tracing::error!(target: "palisade::sip", error = %e, "placing a SIP call failed");
            Err((500, "internal", None))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_refusal_has_its_sip_status() {
        let cases: [(Refusal<()>, u16, Option<u64>); 7] = [
            (Refusal::Frozen, 403, None),
            (Refusal::CountryNotAllowed, 403, None),
            (Refusal::MonthlyBudget, 403, None),
            (Refusal::RatePerSecond { retry_after: 2 }, 503, Some(2)),
            (Refusal::ConcurrentCalls, 486, None),
            (Refusal::InsufficientCredits { cost: 1 }, 402, None),
            (Refusal::Screened(()), 403, None),
        ];
        for (r, status, retry) in cases {
            assert_eq!(refusal_status(&r), (status, retry), "{r:?}");
        }
        assert_eq!(Refusal::<()>::Screened(()).reason(), "blocked");
    }

    #[test]
    fn dialed_numbers_are_e164() {
        assert_eq!(dialed_number(Some("+34612345678")), Some("+34612345678".into()));
        assert_eq!(dialed_number(Some("+1-202-555-0100;phone-context=x")), Some("+12025550100".into()));
        for bad in
            [None, Some("34612345678"), Some("+123"), Some("+1234567890123456"), Some("+3461234567a"), Some("alice")]
        {
            assert_eq!(dialed_number(bad), None, "{bad:?}");
        }
    }
}
