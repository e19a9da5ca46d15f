//! Calls out through a SIP trunk: the carrier behind `POST /v1/calls` and
//! SIP phones' calls once the operator has configured a trunk. We are a
//! back-to-back user agent: a dialog of our own towards the trunk (our
//! Call-ID, our addresses, the caller's number as the only thing of the
//! tenant's), so nothing of the caller's side (its Call-ID, its headers, a
//! tenant's credentials) reaches the carrier. The SDP passes through as it
//! is: media is not relayed yet.
//!
//! Without an enabled trunk, or before the edge runs, calls go to the
//! configured carrier (the sandbox), as messages always do.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use palisade_comms::carrier::BoxFut;
use palisade_comms::{CallAnswer, Carrier, CarrierError, NoMedia, OutboundCall, OutboundMessage};
use palisade_seal::Sealer;
use palisade_voice::trunks::{self, Transport, Trunk, TrunkTable};
use rsipstack::dialog::authenticate::Credential;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invitation::InviteOption;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::StatusCode;
use rsipstack::transport::SipAddr;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// The enabled trunks as this instance sees them, reloaded from the
/// database every `sip.trunk_reload_ms` (a change made on any instance
/// reaches all of them within it).
#[derive(Default)]
pub struct Trunks {
    table: RwLock<Arc<TrunkTable>>,
}

impl Trunks {
    pub fn now(&self) -> Arc<TrunkTable> {
        self.table.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    pub fn set(&self, table: TrunkTable) {
        *self.table.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(table);
    }

    /// Whether `ip` is one of an enabled trunk's source addresses, over
    /// the trunk's own transport: a trunk set up over TLS is not believed
    /// over plaintext UDP (where a source address is easy to forge).
    pub fn is_trunk_on(&self, ip: IpAddr, transport: Transport) -> bool {
        self.now().trunk_for(ip).is_some_and(|t| t.transport == transport)
    }

    /// Reads the trunks as stored now; on an error the table stays.
    pub async fn reload(&self, db: &palisade_store::Db) {
        match TrunkTable::load(db).await {
            Ok(table) => self.set(table),
            Err(e) => tracing::error!(target: "palisade::sip", error = %e, "reading the SIP trunks failed"),
        }
    }
}

/// Where the trunk reaches our side of a call, per transport.
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub udp: Option<SocketAddr>,
    pub tcp: Option<SocketAddr>,
    pub tls: Option<SocketAddr>,
    /// Our name, in place of an unspecified listen address.
    pub public_host: String,
}

impl Reach {
    /// Our Contact over `transport`; none without a listener for it.
    pub(crate) fn contact(&self, transport: Transport) -> Option<String> {
        let (addr, param) = match transport {
            Transport::Udp => (self.udp?, ""),
            Transport::Tcp => (self.tcp?, ";transport=tcp"),
            Transport::Tls => (self.tls?, ";transport=tls"),
        };
        let host = match addr.ip() {
            ip if ip.is_unspecified() => self.public_host.clone(),
            IpAddr::V4(ip) => ip.to_string(),
            IpAddr::V6(ip) => format!("[{ip}]"),
        };
        let scheme = if transport == Transport::Tls { "sips" } else { "sip" };
        Some(format!("{scheme}:{host}:{}{param}", addr.port()))
    }
}

/// The edge, once it runs: its dialogs and where it is reached.
struct Edge {
    dialogs: Arc<DialogLayer>,
    reach: Reach,
}

/// A call this carrier placed.
#[derive(Clone)]
enum Leg {
    /// Placed with the fallback carrier.
    Fallback,
    Trunk {
        /// The trunk it went through.
        trunk: String,
        /// Hung up while ringing: the INVITE is canceled.
        cancel: CancellationToken,
        /// Our dialog with the trunk, once answered.
        dialog: Arc<Mutex<Option<InviteDialog>>>,
        /// True once the dialog ended, however (or we hung it up).
        ended: watch::Receiver<bool>,
        end: Arc<watch::Sender<bool>>,
    },
}

/// How long a call may last, ringing and talking.
#[derive(Debug, Clone, Copy)]
pub struct Durations {
    pub ring: Duration,
    pub call: Duration,
}

/// Calls hung up lately that no leg held yet (the hang-up came before the
/// INVITE left): the INVITE must not leave. Bounded; old ones drop out.
const TOMBSTONES: usize = 4096;

pub struct TrunkCarrier {
    fallback: Arc<dyn Carrier>,
    trunks: Arc<Trunks>,
    sealer: Arc<Sealer>,
    durations: Durations,
    edge: OnceLock<Edge>,
    legs: Mutex<HashMap<String, Leg>>,
    hung_up: Mutex<std::collections::VecDeque<String>>,
    /// Calls coming in from trunks: their trunk, their call id, what ends
    /// them (their trunk going, or a hang-up through the API).
    relays: Mutex<HashMap<u64, (String, String, CancellationToken)>>,
    next_relay: std::sync::atomic::AtomicU64,
    /// Signs calls going out (STIR/SHAKEN), when configured.
    signer: Option<(Arc<palisade_stir::Signer>, Arc<dyn palisade_core::Clock>)>,
}

impl TrunkCarrier {
    pub fn new(fallback: Arc<dyn Carrier>, trunks: Arc<Trunks>, sealer: Arc<Sealer>, durations: Durations) -> Self {
        TrunkCarrier {
            fallback,
            trunks,
            sealer,
            durations,
            edge: OnceLock::new(),
            legs: Mutex::default(),
            hung_up: Mutex::default(),
            relays: Mutex::default(),
            next_relay: std::sync::atomic::AtomicU64::new(0),
            signer: None,
        }
    }

    /// Calls through a trunk carry an `Identity` header signed by `signer`.
    pub fn with_signer(mut self, signer: Arc<palisade_stir::Signer>, clock: Arc<dyn palisade_core::Clock>) -> Self {
        self.signer = Some((signer, clock));
        self
    }

    /// Our `Identity` header for the call, when we sign and the platform
    /// vouches for its caller.
    fn identity(&self, c: &OutboundCall) -> Option<rsipstack::sip::Header> {
        let (signer, clock) = self.signer.as_ref()?;
        let attest = palisade_stir::Attestation::parse(c.attestation.as_deref()?)?;
        let value = signer.identity(&c.from, &c.to, attest, clock.now_ms())?;
        Some(rsipstack::sip::Header::Other("Identity".into(), value))
    }

    pub fn durations(&self) -> Durations {
        self.durations
    }

    /// Rereads the trunks every `every` until `cancel`; calls through a
    /// trunk that is gone or disabled end then (its requests are no longer
    /// served, so its BYE could not reach us).
    pub fn keep_fresh(self: &Arc<Self>, db: palisade_store::Db, every: Duration, cancel: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    () = tokio::time::sleep(every) => {
                        this.trunks.reload(&db).await;
                        this.end_orphans().await;
                    }
                    () = cancel.cancelled() => return,
                }
            }
        });
    }

    /// Ends the calls of trunks no longer enabled.
    async fn end_orphans(self: &Arc<Self>) {
        let table = self.trunks.now();
        let live = |id: &str| table.has(id);
        let orphans: Vec<String> = self
            .legs()
            .iter()
            .filter_map(|(call, leg)| match leg {
                Leg::Trunk { trunk, .. } if !live(trunk) => Some(call.clone()),
                _ => None,
            })
            .collect();
        for call in orphans {
            tracing::info!(target: "palisade::sip", call, "ending a call: its trunk is gone");
            // Not waited for: a carrier that no longer answers us holds its
            // BYE's transaction until it times out.
            let this = self.clone();
            tokio::spawn(async move {
                let _ = this.hang_up(&call).await;
            });
        }
        let relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        for (trunk, _, end) in relays.values() {
            if !live(trunk) {
                end.cancel();
            }
        }
    }

    /// Registers the call `call` coming in from `trunk`: cancelled when the
    /// trunk goes or the call is hung up; the guard forgets it.
    pub(crate) fn relay_started(self: &Arc<Self>, trunk: &str, call: &str) -> RelayGuard {
        let id = self.next_relay.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let end = CancellationToken::new();
        let entry = (trunk.to_owned(), call.to_owned(), end.clone());
        self.relays.lock().unwrap_or_else(PoisonError::into_inner).insert(id, entry);
        RelayGuard { carrier: self.clone(), id, end }
    }

    /// Ends the relayed call `call`, if it is one of ours.
    fn end_relay(&self, call: &str) -> bool {
        let relays = self.relays.lock().unwrap_or_else(PoisonError::into_inner);
        let found = relays.values().find(|(_, c, _)| c == call);
        if let Some((_, _, end)) = found {
            end.cancel();
        }
        found.is_some()
    }

    /// Whether the call was hung up before its INVITE left (and forget it).
    fn was_hung_up(&self, call_id: &str) -> bool {
        let mut dead = self.hung_up.lock().unwrap_or_else(PoisonError::into_inner);
        match dead.iter().position(|c| c == call_id) {
            Some(i) => {
                dead.remove(i);
                true
            }
            None => false,
        }
    }

    fn remember_hung_up(&self, call_id: &str) {
        let mut dead = self.hung_up.lock().unwrap_or_else(PoisonError::into_inner);
        if dead.len() >= TOMBSTONES {
            dead.pop_front();
        }
        dead.push_back(call_id.to_owned());
    }

    pub fn trunks(&self) -> &Arc<Trunks> {
        &self.trunks
    }

    /// Called once by the edge when it runs.
    pub(crate) fn attach(&self, dialogs: Arc<DialogLayer>, reach: Reach) {
        let _ = self.edge.set(Edge { dialogs, reach });
    }

    /// The trunk for a new call: the oldest enabled one, with the edge to
    /// reach it.
    /// The trunk a call would go out through now, if any.
    pub(crate) fn outbound_trunk(&self) -> Option<Trunk> {
        self.route().map(|(_, t)| t)
    }

    fn route(&self) -> Option<(&Edge, Trunk)> {
        let edge = self.edge.get()?;
        Some((edge, self.trunks.now().outbound()?.clone()))
    }

    fn legs(&self) -> std::sync::MutexGuard<'_, HashMap<String, Leg>> {
        self.legs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn place_through(&self, edge: &Edge, trunk: &Trunk, c: &OutboundCall) -> Result<CallAnswer, CarrierError> {
        // SDES keys only over TLS; SRTP where the trunk requires it (our
        // own offer, for an API call, is plain). A device's INVITE was
        // checked so before admission already.
        use palisade_voice::media::{check_towards_trunk, Refused};
        match check_towards_trunk(trunk.srtp, c.offer.as_deref(), trunk.transport == Transport::Tls) {
            Ok(()) => {}
            Err(Refused::SdesPlaintext) => return Err(CarrierError::KeysInTheClear),
            Err(_) => return Err(CarrierError::SrtpRequired),
        }
        let opt = self.invite_option(edge, trunk, c)?;
        let (states_tx, states) = edge.dialogs.new_dialog_state_channel();
        let (ended_tx, ended) = watch::channel(false);
        let ended_tx = Arc::new(ended_tx);
        let cancel = CancellationToken::new();
        let slot = Arc::new(Mutex::new(None));
        let end = ended_tx.clone();
        let leg = Leg::Trunk { trunk: trunk.id.clone(), cancel: cancel.clone(), dialog: slot.clone(), ended, end };
        self.legs().insert(c.id.clone(), leg);
        if self.was_hung_up(&c.id) {
            self.legs().remove(&c.id);
            return Err(CarrierError::Unavailable);
        }
        crate::calls::serve_dialog_states(edge.dialogs.clone(), states, move |_| async move {
            let _ = ended_tx.send(true);
        });
        let outcome = tokio::select! {
            r = edge.dialogs.do_invite(opt, states_tx) => r,
            // Dropping the INVITE's future cancels it (CANCEL once it rings).
            () = cancel.cancelled() => return Err(CarrierError::Unavailable),
            () = tokio::time::sleep(self.durations.ring) => {
                self.legs().remove(&c.id);
                return Err(CarrierError::Timeout);
            }
        };
        let answer = match outcome {
            Ok((dialog, Some(resp))) if resp.status_code.kind() == rsipstack::sip::StatusCodeKind::Successful => {
                *slot.lock().unwrap_or_else(PoisonError::into_inner) = Some(dialog.clone());
                if cancel.is_cancelled() {
                    // Hung up as it was answered: the hang-up found no dialog yet.
                    let _ = dialog.hangup().await;
                    return Err(CarrierError::Unavailable);
                }
                let sdp = (!resp.body.is_empty()).then(|| resp.body.clone());
                // Never connected weaker than the caller offered: the
                // carrier's leg comes down and the call fails.
                if let Err(r) = answer_kept(c.offer.as_deref(), sdp.as_deref()) {
                    tracing::info!(target: "palisade::sip", trunk = %trunk.name, reason = r.reason(), "a trunk's answer was refused");
                    let _ = dialog.hangup().await;
                    self.legs().remove(&c.id);
                    return Err(CarrierError::MediaDowngrade);
                }
                return Ok(CallAnswer::Answered { sdp });
            }
            Ok((_, Some(resp))) => refused(&resp.status_code),
            Ok((_, None)) => Err(CarrierError::Unavailable),
            Err(e) => {
                tracing::warn!(target: "palisade::sip", trunk = %trunk.name, error = %e, "a call through the trunk failed");
                Err(CarrierError::Unavailable)
            }
        };
        self.legs().remove(&c.id);
        answer
    }

    /// Our INVITE towards the trunk: the caller's number at our host, the
    /// dialed number at the trunk, our Contact, the trunk's credentials.
    fn invite_option(&self, edge: &Edge, trunk: &Trunk, c: &OutboundCall) -> Result<InviteOption, CarrierError> {
        let broken = |what: &str| {
            tracing::error!(target: "palisade::sip", trunk = %trunk.name, "a trunk call cannot be placed: {what}");
            CarrierError::Unavailable
        };
        let uri = trunks::parse_uri(&trunk.uri).map_err(|_| broken("its URI"))?;
        let host = if uri.host.contains(':') { format!("[{}]", uri.host) } else { uri.host.clone() };
        let port = uri.port.unwrap_or(if trunk.transport == Transport::Tls { 5061 } else { 5060 });
        let scheme = if uri.secure || trunk.transport == Transport::Tls { "sips" } else { "sip" };
        let contact = edge.reach.contact(trunk.transport).ok_or_else(|| broken("no listener for its transport"))?;
        let parse = |s: String| s.parse::<rsipstack::sip::Uri>().map_err(|_| broken("an address"));
        let callee = parse(format!("{scheme}:{}@{host}:{port}", c.to))?;
        let caller = parse(format!("sip:{}@{}", c.from, edge.reach.public_host))?;
        let mut destination =
            SipAddr::try_from(&parse(format!("sip:{host}:{port}"))?).map_err(|_| broken("its host"))?;
        destination.r#type = Some(match trunk.transport {
            Transport::Udp => rsipstack::sip::Transport::Udp,
            Transport::Tcp => rsipstack::sip::Transport::Tcp,
            Transport::Tls => rsipstack::sip::Transport::Tls,
        });
        let credential = match (&trunk.auth_username, trunks::open_password(&self.sealer, trunk)) {
            (Some(username), Ok(Some(password))) => {
                Some(Credential { username: username.clone(), password, realm: None, auth_username: None })
            }
            (_, Err(e)) => {
                tracing::error!(target: "palisade::sip", trunk = %trunk.name, error = %e, "a trunk's password cannot be opened");
                return Err(CarrierError::Unavailable);
            }
            _ => None,
        };
        // An API call brings no offer: ours, holding no media yet.
        let offer = c.offer.clone().unwrap_or_else(|| crate::calls::sdp_answer(&edge.reach.public_host));
        Ok(InviteOption {
            headers: self.identity(c).map(|h| vec![h]),
            caller,
            callee,
            destination: Some(destination),
            content_type: Some("application/sdp".into()),
            offer: Some(offer),
            contact: parse(contact)?,
            credential,
            // Ours, naming no host and no library.
            call_id: Some(uuid::Uuid::new_v4().simple().to_string()),
            ..Default::default()
        })
    }
}

/// Whether the callee's answer keeps the media security of the caller's
/// offer (an offer the edge admitted; none: ours, plain).
fn answer_kept(offer: Option<&[u8]>, answer: Option<&[u8]>) -> Result<(), palisade_voice::media::Refused> {
    use palisade_voice::media::{check_answer, security_of, Security};
    let offered = offer.map_or(Ok(Security::None), security_of)?;
    // Keys in an answer to an offer that had none answer nothing asked.
    if answer.is_some_and(palisade_voice::media::has_keys) && !matches!(offered, Security::Sdes(_)) {
        return Err(palisade_voice::media::Refused::SrtpDowngrade);
    }
    check_answer(&offered, answer).map(|_| ())
}

/// A final answer other than 2xx, as the call's outcome.
fn refused(code: &StatusCode) -> Result<CallAnswer, CarrierError> {
    match u16::from(code.clone()) {
        486 | 600 => Ok(CallAnswer::Busy),
        404 | 484 | 603 | 604 => Err(CarrierError::Undeliverable),
        408 | 480 => Err(CarrierError::Timeout),
        _ => Err(CarrierError::Unavailable),
    }
}

impl Carrier for TrunkCarrier {
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>> {
        Box::pin(async move {
            match self.route() {
                Some((edge, trunk)) => self.place_through(edge, &trunk, c).await,
                None => {
                    self.legs().insert(c.id.clone(), Leg::Fallback);
                    let r = self.fallback.place_call(c).await;
                    if !matches!(r, Ok(CallAnswer::Answered { .. })) {
                        self.legs().remove(&c.id);
                    }
                    r
                }
            }
        })
    }

    fn callee_hangs_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, ()> {
        Box::pin(async move {
            let leg = self.legs().get(call_id).cloned();
            match leg {
                Some(Leg::Fallback) => self.fallback.callee_hangs_up(call_id).await,
                Some(Leg::Trunk { mut ended, dialog, .. }) => {
                    let over = tokio::time::timeout(self.durations.call, async {
                        let _ = ended.wait_for(|e| *e).await;
                    });
                    if over.await.is_err() {
                        // At the longest a call may last: we hang up.
                        let answered = dialog.lock().unwrap_or_else(PoisonError::into_inner).take();
                        if let Some(d) = answered {
                            let _ = d.hangup().await;
                        }
                    }
                }
                // Not ours (over already): nothing to wait for.
                None => return,
            }
            self.legs().remove(call_id);
        })
    }

    fn hang_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            let leg = self.legs().remove(call_id);
            match leg {
                Some(Leg::Trunk { cancel, dialog, end, .. }) => {
                    cancel.cancel();
                    // Over for us now, whenever the carrier confirms.
                    let _ = end.send(true);
                    let answered = dialog.lock().unwrap_or_else(PoisonError::into_inner).take();
                    match answered {
                        Some(d) => d.hangup().await.map_err(|e| {
                            tracing::debug!(target: "palisade::sip", error = %e, "our BYE to the trunk failed");
                            CarrierError::Unavailable
                        }),
                        None => Ok(()),
                    }
                }
                Some(Leg::Fallback) => self.fallback.hang_up(call_id).await,
                // A call a trunk brought in: both its legs come down.
                None if self.end_relay(call_id) => Ok(()),
                None => {
                    // Perhaps not placed yet: its INVITE must not leave.
                    self.remember_hung_up(call_id);
                    self.fallback.hang_up(call_id).await
                }
            }
        })
    }

    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>> {
        self.fallback.send_message(m)
    }

    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>> {
        self.fallback.delivery_report(m)
    }

    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        self.fallback.send_code(to, text)
    }

    /// Through a trunk, calls reach real phones.
    fn reaches_phones(&self) -> bool {
        self.fallback.reaches_phones() || self.route().is_some()
    }

    /// Only the sandbox records (a trunk's media never passes through us).
    fn take_recording(&self, call_id: &str) -> Option<Vec<u8>> {
        self.fallback.take_recording(call_id)
    }

    /// A call through a trunk passes its SDP through as it is: its media
    /// flows between the caller and the carrier, never through us.
    fn attach_media(&self, call_id: &str, playback_frames: usize) -> Result<palisade_comms::MediaLeg, NoMedia> {
        let leg = self.legs().get(call_id).map(|l| matches!(l, Leg::Fallback));
        match leg {
            Some(true) => self.fallback.attach_media(call_id, playback_frames),
            Some(false) => Err(NoMedia::NotThrough),
            None => Err(NoMedia::NotHere),
        }
    }
}

/// A call coming in from a trunk, known to the carrier while it lasts.
pub(crate) struct RelayGuard {
    carrier: Arc<TrunkCarrier>,
    id: u64,
    /// Cancelled when the trunk goes.
    pub(crate) end: CancellationToken,
}

impl Drop for RelayGuard {
    fn drop(&mut self) {
        self.carrier.relays.lock().unwrap_or_else(PoisonError::into_inner).remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_contact_is_the_listener_of_the_trunks_transport() {
        let reach = Reach {
            udp: Some("0.0.0.0:5060".parse().unwrap()),
            tcp: Some("192.0.2.7:5070".parse().unwrap()),
            tls: None,
            public_host: "sip.example.com".into(),
        };
        assert_eq!(reach.contact(Transport::Udp).as_deref(), Some("sip:sip.example.com:5060"));
        assert_eq!(reach.contact(Transport::Tcp).as_deref(), Some("sip:192.0.2.7:5070;transport=tcp"));
        assert_eq!(reach.contact(Transport::Tls), None);
    }

    #[test]
    fn a_trunks_refusal_is_the_calls_outcome() {
        assert_eq!(refused(&StatusCode::BusyHere), Ok(CallAnswer::Busy));
        assert_eq!(refused(&StatusCode::NotFound), Err(CarrierError::Undeliverable));
        assert_eq!(refused(&StatusCode::RequestTimeout), Err(CarrierError::Timeout));
        assert_eq!(refused(&StatusCode::ServiceUnavailable), Err(CarrierError::Unavailable));
    }
}
