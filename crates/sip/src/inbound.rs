//! Calls a trunk brings in, relayed to the callee's registered device as a
//! back-to-back user agent: the trunk's dialog on one side, ours with the
//! device on the other, each end's answer and hang-up carried across. The
//! device is reached where its registration came from, never at a host
//! its Contact names (a device cannot point us at another host).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use palisade_store::sip::RegistrationRow;
use rsipstack::dialog::dialog::DialogStateReceiver;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::{Header, StatusCode, StatusCodeKind};
use rsipstack::transport::SipAddr;
use tokio::sync::watch;

use crate::trunk::Reach;
use palisade_voice::trunks::Transport;

/// Our INVITE to the device of `binding`, from `caller` (an E.164 number
/// or `anonymous`), carrying the trunk's offer; none when the binding
/// cannot be reached (no listener of its transport, an unreadable address).
pub(crate) fn leg_to(
    binding: &RegistrationRow,
    caller: &str,
    reach: &Reach,
    offer: Option<Vec<u8>>,
) -> Option<InviteOption> {
    let transport = Transport::parse(&binding.transport)?;
    let source: std::net::SocketAddr = binding.source_addr.parse().ok()?;
    let destination = SipAddr {
        r#type: Some(match transport {
            Transport::Udp => rsipstack::sip::Transport::Udp,
            Transport::Tcp => rsipstack::sip::Transport::Tcp,
            Transport::Tls => rsipstack::sip::Transport::Tls,
        }),
        addr: source.into(),
    };
    // Every request of the INVITE's transaction goes where the device
    // registered from too: the CANCEL is built from the INVITE and has no
    // destination of its own, so a Route names it (never the host of the
    // Contact the device wrote).
    let host = match source.ip() {
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let route = match transport {
        Transport::Udp => format!("<sip:{host}:{};lr>", source.port()),
        Transport::Tcp => format!("<sip:{host}:{};transport=tcp;lr>", source.port()),
        Transport::Tls => format!("<sips:{host}:{};transport=tls;lr>", source.port()),
    };
    Some(InviteOption {
        caller: format!("sip:{caller}@{}", reach.public_host).parse().ok()?,
        callee: binding.contact_uri.parse().ok()?,
        destination: Some(destination),
        headers: Some(vec![Header::Route(route.into())]),
        // Ours, naming no host and no library.
        call_id: Some(uuid::Uuid::new_v4().simple().to_string()),
        contact: reach.contact(transport)?.parse().ok()?,
        content_type: offer.as_ref().map(|_| "application/sdp".to_owned()),
        offer,
        ..Default::default()
    })
}

/// The trunk's status for the device's final answer (not 2xx): busy and
/// the device's refusals (4xx, 6xx) carried across; a challenge, a server
/// error (a 503 upstream would take the whole trunk out of service, RFC
/// 3261 §16.7) or anything odd is "unavailable".
fn carried(code: &StatusCode) -> StatusCode {
    match u16::from(code.clone()) {
        401 | 407 => StatusCode::TemporarilyUnavailable,
        400..=499 | 600..=699 => code.clone(),
        _ => StatusCode::TemporarilyUnavailable,
    }
}

/// Calls coming in relayed at once, in all and per identity (this
/// instance): a carrier, or whoever poses as one, cannot ring a tenant's
/// devices without bound.
pub(crate) struct Live {
    max_total: usize,
    per_identity: usize,
    held: Mutex<(usize, HashMap<String, usize>)>,
}

impl Live {
    pub(crate) fn new(max_total: usize, per_identity: usize) -> Live {
        Live { max_total, per_identity, held: Mutex::default() }
    }

    /// One more call for `identity`; none over either cap.
    pub(crate) fn hold(self: &Arc<Self>, identity: &str) -> Option<LiveGuard> {
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, map) = &mut *held;
        let mine = map.get(identity).copied().unwrap_or(0);
        if *total >= self.max_total || mine >= self.per_identity {
            return None;
        }
        map.insert(identity.to_owned(), mine + 1);
        *total += 1;
        Some(LiveGuard { live: self.clone(), identity: identity.to_owned() })
    }
}

pub(crate) struct LiveGuard {
    live: Arc<Live>,
    identity: String,
}

impl Drop for LiveGuard {
    fn drop(&mut self) {
        let mut held = self.live.held.lock().unwrap_or_else(PoisonError::into_inner);
        let (total, map) = &mut *held;
        if let Some(n) = map.get_mut(&self.identity) {
            *n -= 1;
            *total -= 1;
            if *n == 0 {
                map.remove(&self.identity);
            }
        }
    }
}

/// What keeps a relayed call counted and tells it to end.
pub(crate) struct Hold {
    /// Held for its drop: the call counts while it lasts.
    pub(crate) _live: LiveGuard,
    pub(crate) trunk: crate::trunk::RelayGuard,
    pub(crate) durations: crate::trunk::Durations,
    /// Both legs are TLS: SDES keys may cross (an offer the device makes in
    /// its answer, to a trunk INVITE without one, too).
    pub(crate) keys_allowed: bool,
    /// The call's record, moved along as the relay goes.
    pub(crate) call: Recorded,
}

/// An inbound call as the API shows it: answered, then ended, through
/// admission (its CDR and webhooks, as for calls going out).
pub(crate) struct Recorded {
    pub(crate) admission: std::sync::Arc<palisade_admission::Service>,
    pub(crate) scope: palisade_core::TenantScope,
    pub(crate) id: String,
}

impl Recorded {
    async fn answered(&self) {
        if let Err(e) = self.admission.call_progress(&self.scope, &self.id, "in_progress", true).await {
            tracing::error!(target: "palisade::sip", error = %e, call = self.id, "recording an answer failed");
        }
    }

    /// `hangup`: completed once answered, canceled before.
    pub(crate) async fn ended(&self, status: &str, code: Option<&str>) {
        // A failed end is retried in the background by admission.
        let _ = self.admission.end_call(&self.scope, &self.id, status, code, None).await;
    }
}

/// Until the dialog behind `end` has ended.
async fn ended(end: &mut watch::Receiver<bool>) {
    let _ = end.wait_for(|e| *e).await;
}

/// Rings the device and carries each side's answer and hang-up to the
/// other; the trunk's CANCEL cancels the device's INVITE.
pub(crate) fn relay(
    dialogs: Arc<DialogLayer>,
    trunk: InviteDialog,
    trunk_states: DialogStateReceiver,
    opt: InviteOption,
    hold: Hold,
) {
    let ring: Duration = hold.durations.ring;
    let (trunk_end_tx, mut trunk_end) = watch::channel(false);
    crate::calls::serve_dialog_states(dialogs.clone(), trunk_states, move |_| async move {
        let _ = trunk_end_tx.send(true);
    });
    // What the carrier offered (checked at the INVITE): the device's answer
    // may not be weaker.
    let offered = opt
        .offer
        .as_deref()
        .map_or(Ok(palisade_voice::media::Security::None), palisade_voice::media::security_of)
        .unwrap_or(palisade_voice::media::Security::None);
    tokio::spawn(async move {
        let (device_tx, device_states) = dialogs.new_dialog_state_channel();
        let (device_end_tx, mut device_end) = watch::channel(false);
        crate::calls::serve_dialog_states(dialogs.clone(), device_states, move |_| async move {
            let _ = device_end_tx.send(true);
        });
        let gone = hold.trunk.end.clone();
        let call = &hold.call;
        let outcome = tokio::select! {
            r = dialogs.do_invite(opt, device_tx) => r,
            // Dropping the device's INVITE cancels it.
            () = ended(&mut trunk_end) => {
                call.ended("hangup", None).await;
                return;
            }
            () = gone.cancelled() => {
                let _ = trunk.reject(Some(StatusCode::TemporarilyUnavailable), None);
                call.ended("failed", Some("trunk_gone")).await;
                return;
            }
            () = tokio::time::sleep(ring) => {
                let _ = trunk.reject(Some(StatusCode::RequestTimeout), None);
                call.ended("failed", Some("no_answer")).await;
                return;
            }
        };
        let device = match outcome {
            Ok((device, Some(resp))) if resp.status_code.kind() == StatusCodeKind::Successful => {
                let headers = vec![Header::ContentType("application/sdp".into())];
                let sdp = (!resp.body.is_empty()).then(|| resp.body.clone());
                let keys = !hold.keys_allowed && sdp.as_deref().is_some_and(palisade_voice::media::has_keys);
                if keys || palisade_voice::media::check_answer(&offered, sdp.as_deref()).is_err() {
                    tracing::info!(target: "palisade::sip", "a device answered a trunk's SRTP offer with weaker media");
                    let _ = trunk.reject(Some(StatusCode::NotAcceptableHere), None);
                    let _ = device.hangup().await;
                    call.ended("failed", Some("srtp_downgrade")).await;
                    return;
                }
                if let Err(e) = trunk.accept(Some(headers), sdp) {
                    tracing::debug!(target: "palisade::sip", error = %e, "the trunk's call could not be answered");
                    let _ = device.hangup().await;
                    call.ended("failed", Some("carrier_unavailable")).await;
                    return;
                }
                call.answered().await;
                device
            }
            Ok((_, Some(resp))) => {
                let status = carried(&resp.status_code);
                let _ = trunk.reject(Some(status.clone()), None);
                match u16::from(status) {
                    486 | 600 => call.ended("busy", None).await,
                    _ => call.ended("failed", Some("declined")).await,
                }
                return;
            }
            Ok((_, None)) | Err(_) => {
                let _ = trunk.reject(Some(StatusCode::TemporarilyUnavailable), None);
                call.ended("failed", Some("unreachable")).await;
                return;
            }
        };
        tokio::select! {
            () = ended(&mut trunk_end) => {
                let _ = device.hangup().await;
            }
            () = ended(&mut device_end) => {
                let _ = trunk.bye().await;
            }
            // The trunk is gone, or the call reached the longest a call may
            // last: both sides are hung up.
            () = gone.cancelled() => {
                let _ = device.hangup().await;
                let _ = trunk.bye().await;
            }
            () = tokio::time::sleep(hold.durations.call) => {
                let _ = device.hangup().await;
                let _ = trunk.bye().await;
            }
        }
        call.ended("hangup", None).await;
        drop(hold);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding(contact: &str, transport: &str, source: &str) -> RegistrationRow {
        RegistrationRow {
            identity_id: "i".into(),
            credential_id: "c".into(),
            contact_uri: contact.into(),
            transport: transport.into(),
            source_addr: source.into(),
            instance_id: "x".into(),
            call_id: "c".into(),
            cseq: 1,
            user_agent: None,
            expires_at: 0,
            updated_at: 0,
        }
    }

    #[test]
    fn the_device_is_reached_where_it_registered_from() {
        let reach = Reach {
            udp: Some("127.0.0.1:5060".parse().unwrap()),
            public_host: "sip.test".into(),
            ..Default::default()
        };
        let b = binding("sip:alice@10.9.9.9:5999", "udp", "127.0.0.1:40000");
        let opt = leg_to(&b, "+34612000111", &reach, None).unwrap();
        assert_eq!(opt.destination.unwrap().addr.to_string(), "127.0.0.1:40000");
        assert_eq!(opt.callee.to_string(), "sip:alice@10.9.9.9:5999");
        assert_eq!(opt.caller.to_string(), "sip:+34612000111@sip.test");
        // Its CANCEL follows the INVITE there, not to the Contact's host.
        let route = opt.headers.unwrap()[0].to_string();
        assert_eq!(route, "Route: <sip:127.0.0.1:40000;lr>");
        assert!(!opt.call_id.unwrap().contains('@'));
        // No listener of the binding's transport: unreachable.
        assert!(leg_to(&binding("sip:a@h", "tcp", "127.0.0.1:1"), "anonymous", &reach, None).is_none());
    }

    #[test]
    fn a_devices_refusal_is_carried_and_a_challenge_or_server_error_is_not() {
        assert_eq!(carried(&StatusCode::BusyHere), StatusCode::BusyHere);
        assert_eq!(carried(&StatusCode::Decline), StatusCode::Decline);
        assert_eq!(carried(&StatusCode::ProxyAuthenticationRequired), StatusCode::TemporarilyUnavailable);
        assert_eq!(carried(&StatusCode::ServiceUnavailable), StatusCode::TemporarilyUnavailable);
        assert_eq!(carried(&StatusCode::ServerInternalError), StatusCode::TemporarilyUnavailable);
    }

    #[test]
    fn live_calls_are_capped_in_all_and_per_identity() {
        let live = Arc::new(Live::new(3, 2));
        let a1 = live.hold("a").unwrap();
        let _a2 = live.hold("a").unwrap();
        assert!(live.hold("a").is_none(), "over the identity's cap");
        let _b1 = live.hold("b").unwrap();
        assert!(live.hold("c").is_none(), "over the total");
        drop(a1);
        assert!(live.hold("a").is_some(), "a call ended gives its place back");
    }
}
