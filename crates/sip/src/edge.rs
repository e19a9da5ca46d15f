//! The listeners and the request loop: our sockets and gates in front of
//! the stack's transaction layer, then each request translated to the
//! transport-neutral services and their answer back to SIP.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use palisade_config::Sip;
use palisade_core::Clock;
use palisade_voice::auth::{DigestAuth, Outcome};
use palisade_voice::registrar::{self, Bounds};
use palisade_voice::trunks::Transport as Kind;
use rsipstack::dialog::dialog::Dialog;
use rsipstack::dialog::dialog_layer::DialogLayer;
use rsipstack::dialog::invite_dialog::InviteDialog;
use rsipstack::sip::transport::Transport;
use rsipstack::sip::{Header, Method, StatusCode};
use rsipstack::transaction::endpoint::TransportEventInspector;
use rsipstack::transaction::Transaction;
use rsipstack::transport::connection::TransportEvent;
use rsipstack::transport::tcp::TcpConnection;
use rsipstack::transport::tls::TlsConnection;
use rsipstack::transport::udp::UdpConnection;
use rsipstack::transport::{SipAddr, SipConnection, TransportLayer};
use rsipstack::EndpointBuilder;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::counts::Counts;
use crate::gate::Gate;
use crate::message::{self, Contact, Fields, Limits};

/// What the edge needs from the running server.
pub struct Services {
    pub auth: Arc<DigestAuth>,
    pub db: palisade_store::Db,
    pub clock: Arc<dyn Clock>,
    pub instance_id: String,
    /// Admission and the life of calls, shared with `POST /v1/calls`.
    pub admission: Arc<palisade_admission::Service>,
    /// Calls go out through the operator's trunk, or the configured
    /// carrier without one.
    pub carrier: Arc<crate::trunk::TrunkCarrier>,
    pub tenant_gate: crate::calls::TenantGate,
    /// Caller-ID verification of calls coming in (STIR/SHAKEN).
    pub stir: Arc<palisade_stir::Verifier>,
}

/// The running edge; dropping it does not stop it, [`Edge::shutdown`] does.
pub struct Edge {
    cancel: CancellationToken,
    pub udp_addr: Option<SocketAddr>,
    pub tcp_addr: Option<SocketAddr>,
    pub tls_addr: Option<SocketAddr>,
}

impl Edge {
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

const ALLOW: &str = "REGISTER, OPTIONS, INVITE, ACK, CANCEL, BYE";

/// Requests handled at once; more wait (the stack retransmits over UDP).
const IN_FLIGHT: usize = 256;

struct Handler {
    services: Services,
    dialogs: Arc<DialogLayer>,
    bounds: Bounds,
    limits: Limits,
    public_host: String,
    /// Where devices reach us, per transport.
    reach: crate::trunk::Reach,
    /// Calls coming in from trunks, relayed now.
    inbound_live: Arc<crate::inbound::Live>,
    /// Requests in progress per source.
    per_source: Counts,
}

/// Starts the listeners the configuration names; `None` when it names none.
/// `tls` is the TLS listener's configuration (certificate, client CAs).
pub async fn start(
    cfg: &Sip,
    services: Services,
    tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>,
) -> std::io::Result<Option<Edge>> {
    if !cfg.enabled() {
        return Ok(None);
    }
    let cancel = CancellationToken::new();
    let trunks = services.carrier.trunks().clone();
    trunks.reload(&services.db).await;
    services.carrier.keep_fresh(services.db.clone(), Duration::from_millis(cfg.trunk_reload_ms), cancel.child_token());
    let gate = Arc::new(Gate::new(cfg.plaintext_allowed_cidrs.clone(), cfg.pike, trunks.clone()));
    let layer = TransportLayer::new(cancel.child_token());
    layer.set_stream_idle_timeout(Duration::from_secs(cfg.idle_timeout_secs));
    if let Some(file) = &cfg.trunk_ca_file {
        // Trunks reached over TLS must present a certificate from these.
        let ca_certs = Some(std::fs::read(file)?);
        layer.set_tls_config(rsipstack::transport::tls::TlsConfig { ca_certs, ..Default::default() });
    }
    let clock = services.clock.clone();
    {
        // UDP: before the datagram is even parsed.
        let (gate, clock) = (gate.clone(), clock.clone());
        layer.set_whitelist(move |ip: IpAddr| {
            let ok = gate.plaintext_allowed(ip, Kind::Udp) && gate.admit(ip, clock.now_ms());
            async move { ok }
        });
    }
    let io = |e: rsipstack::Error| std::io::Error::other(e.to_string());
    let mut edge = Edge { cancel: cancel.clone(), udp_addr: None, tcp_addr: None, tls_addr: None };
    if let Some(addr) = &cfg.udp_listen {
        let addr: SocketAddr = addr.parse().map_err(std::io::Error::other)?;
        let udp = UdpConnection::create_connection(addr, None, Some(cancel.child_token())).await.map_err(io)?;
        edge.udp_addr = udp.get_addr().get_socketaddr().ok();
        layer.add_transport(udp.into());
    }
    let streams = Arc::new(Counts::new(cfg.max_connections, cfg.max_connections_per_address));
    let endpoint = EndpointBuilder::new()
        .with_cancel_token(cancel.child_token())
        .with_transport_layer(layer)
        .with_user_agent("Palisade")
        .with_transport_inspector(Box::new(Inspector {
            gate: gate.clone(),
            clock: clock.clone(),
            streams: streams.clone(),
            trunks: trunks.clone(),
        }))
        .build();
    let accepting = |tls| Accept {
        endpoint: endpoint.inner.clone(),
        gate: gate.clone(),
        streams: streams.clone(),
        cancel: cancel.child_token(),
        tls,
        handshake: Duration::from_millis(cfg.tls_handshake_timeout_ms),
        clock: clock.clone(),
    };
    if let Some(addr) = &cfg.tcp_listen {
        let listener = TcpListener::bind(addr.as_str()).await?;
        edge.tcp_addr = Some(listener.local_addr()?);
        tokio::spawn(accepting(None).run(listener));
    }
    if let (Some(addr), Some(tls)) = (&cfg.tls_listen, tls) {
        let listener = TcpListener::bind(addr.as_str()).await?;
        edge.tls_addr = Some(listener.local_addr()?);
        tokio::spawn(accepting(Some(tokio_rustls::TlsAcceptor::from(tls))).run(listener));
    }
    let mut incoming = endpoint.incoming_transactions().map_err(io)?;
    let dialogs = Arc::new(DialogLayer::new(endpoint.inner.clone()));
    let reach = crate::trunk::Reach {
        udp: edge.udp_addr,
        tcp: edge.tcp_addr,
        tls: edge.tls_addr,
        public_host: cfg.public_host.clone(),
    };
    services.carrier.attach(dialogs.clone(), reach.clone());
    let handler = Arc::new(Handler {
        reach,
        inbound_live: Arc::new(crate::inbound::Live::new(cfg.max_inbound_calls, cfg.max_inbound_calls_per_identity)),
        services,
        dialogs,
        bounds: Bounds {
            min_expires_secs: cfg.min_expires_secs,
            max_expires_secs: cfg.max_expires_secs,
            default_expires_secs: cfg.default_expires_secs,
            max_contacts: cfg.max_contacts_per_identity,
        },
        limits: Limits {
            max_message_bytes: cfg.max_message_bytes,
            max_headers: cfg.max_headers,
            max_header_bytes: cfg.max_header_bytes,
        },
        public_host: cfg.public_host.clone(),
        per_source: Counts::new(usize::MAX, cfg.max_transactions_per_source),
    });
    let serve_cancel = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            () = endpoint.serve() => {}
            () = serve_cancel.cancelled() => endpoint.shutdown(),
        }
    });
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let loop_cancel = cancel.clone();
    tokio::spawn(async move {
        loop {
            let tx = tokio::select! {
                tx = incoming.recv() => match tx { Some(tx) => tx, None => break },
                () = loop_cancel.cancelled() => break,
            };
            // Full: the request is dropped (a UDP client retransmits),
            // never queued behind the ones in progress.
            let Ok(permit) = slots.clone().try_acquire_owned() else {
                tracing::warn!(target: "palisade::sip", "SIP edge at its limit of requests in progress: one dropped");
                continue;
            };
            let handler = handler.clone();
            tokio::spawn(async move {
                handler.handle(tx).await;
                drop(permit);
            });
        }
    });
    Ok(Some(edge))
}

/// A stream listener's accept loop: caps per address and in all, then
/// plaintext only from the allowed networks, or a TLS handshake under a
/// deadline (TLS serves every address).
struct Accept {
    endpoint: rsipstack::transaction::endpoint::EndpointInnerRef,
    gate: Arc<Gate>,
    streams: Arc<Counts>,
    cancel: CancellationToken,
    tls: Option<tokio_rustls::TlsAcceptor>,
    handshake: Duration,
    clock: Arc<dyn Clock>,
}

impl Accept {
    async fn run(self, listener: TcpListener) {
        let Ok(local) = listener.local_addr() else { return };
        let transport = if self.tls.is_some() { Transport::Tls } else { Transport::Tcp };
        let local = SipAddr { r#type: Some(transport), addr: local.into() };
        let this = Arc::new(self);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r { Ok(x) => x, Err(_) => continue },
                () = this.cancel.cancelled() => return,
            };
            let ip = palisade_guard::net::canonical(peer.ip());
            // Plaintext from elsewhere gets no service: closed unread. A new
            // connection counts against the address's rate like a request,
            // so handshakes cannot be had for free.
            let plaintext_refused = this.tls.is_none() && !this.gate.plaintext_allowed(ip, Kind::Tcp);
            if plaintext_refused || !this.gate.admit(ip, this.clock.now_ms()) || !this.streams.try_hold(ip) {
                drop(stream);
                continue;
            }
            let (this, local) = (this.clone(), local.clone());
            tokio::spawn(async move {
                if !this.serve(stream, peer, local).await {
                    this.streams.release(ip);
                }
            });
        }
    }

    /// Hands the connection to the stack; false when it never got there.
    async fn serve(&self, stream: tokio::net::TcpStream, peer: SocketAddr, local: SipAddr) -> bool {
        let token = Some(self.cancel.child_token());
        let conn: SipConnection = match &self.tls {
            None => match TcpConnection::from_stream(stream, local, token) {
                Ok(c) => c.into(),
                Err(_) => return false,
            },
            Some(acceptor) => {
                let Ok(Ok(tls)) = tokio::time::timeout(self.handshake, acceptor.accept(stream)).await else {
                    return false;
                };
                let remote = SipAddr { r#type: Some(Transport::Tls), addr: peer.into() };
                match TlsConnection::from_server_stream(tls, local, remote, token).await {
                    Ok(c) => c.into(),
                    Err(_) => return false,
                }
            }
        };
        // Registers the connection and serves it.
        self.endpoint.transport_layer.add_connection(conn);
        true
    }
}

/// Sees every parsed message before the transaction layer: the flood guard
/// for stream transports (UDP met it before parsing), the release of a
/// closed connection's slot, and where we answer: see [`pin_to_source`].
struct Inspector {
    gate: Arc<Gate>,
    clock: Arc<dyn Clock>,
    streams: Arc<Counts>,
    trunks: Arc<crate::trunk::Trunks>,
}

/// The transport of a connection, as trunks name them.
fn kind_of(conn: &SipConnection) -> Kind {
    match conn.transport() {
        Transport::Tcp => Kind::Tcp,
        Transport::Tls => Kind::Tls,
        _ => Kind::Udp,
    }
}

/// A device (anyone but a trunk) is answered, and sent our requests within
/// a call, where its messages come from: its Contact (in requests and in
/// its answers to ours) is replaced by its source address and its
/// Record-Route dropped, so a device cannot point the edge at another host.
/// A REGISTER keeps its Contact: that is the binding (the registrar keeps
/// the source apart and sends there).
fn pin_to_source(msg: &mut rsipstack::sip::SipMessage, from: SocketAddr, kind: Kind) {
    let headers = match msg {
        rsipstack::sip::SipMessage::Request(r) if r.method == Method::Register => return,
        rsipstack::sip::SipMessage::Request(r) => &mut r.headers,
        rsipstack::sip::SipMessage::Response(r) => &mut r.headers,
    };
    let had_contact = headers.iter().any(|h| matches!(h, Header::Contact(_)));
    if had_contact {
        pin_contact(headers, from, kind);
    } else {
        headers.retain(|h| !matches!(h, Header::RecordRoute(_)));
    }
}

/// Replaces a message's Contact by its source address (over `kind`) and
/// drops its Record-Route.
fn pin_contact(headers: &mut rsipstack::sip::Headers, from: SocketAddr, kind: Kind) {
    let host = match from {
        SocketAddr::V4(a) => a.to_string(),
        SocketAddr::V6(a) => format!("[{}]:{}", a.ip(), a.port()),
    };
    let transport = match kind {
        Kind::Udp => "",
        Kind::Tcp => ";transport=tcp",
        Kind::Tls => ";transport=tls",
    };
    headers.retain(|h| !matches!(h, Header::Contact(_) | Header::RecordRoute(_)));
    headers.push(Header::Contact(format!("<sip:{host}{transport}>").into()));
}

#[async_trait::async_trait]
impl TransportEventInspector for Inspector {
    async fn handle(&self, mut event: TransportEvent) -> Option<TransportEvent> {
        match &mut event {
            TransportEvent::Incoming(msg, conn, from) => {
                let from = from.get_socketaddr().ok()?;
                if conn.is_reliable() && !self.gate.admit(from.ip(), self.clock.now_ms()) {
                    return None;
                }
                let kind = kind_of(conn);
                if !self.trunks.is_trunk_on(from.ip(), kind) {
                    pin_to_source(msg, from, kind);
                }
            }
            TransportEvent::Closed(conn) if conn.is_reliable() => {
                if let Some(addr) = conn.get_remote_addr().and_then(|a| a.get_socketaddr().ok()) {
                    self.streams.release(palisade_guard::net::canonical(addr.ip()));
                }
            }
            _ => {}
        }
        Some(event)
    }
}

/// What a request gets: a response now, a call whose dialog answers, or
/// a trunk's call relayed to a device (our INVITE to it).
enum Answered {
    Reply(Reply),
    Call(Box<crate::calls::Placed>),
    Inbound(Box<(rsipstack::dialog::invitation::InviteOption, crate::inbound::Hold)>),
}

/// A response: status, extra headers.
struct Reply {
    status: u16,
    headers: Vec<(&'static str, String)>,
}

impl Reply {
    fn new(status: u16) -> Reply {
        Reply { status, headers: Vec::new() }
    }

    fn with(mut self, name: &'static str, value: impl Into<String>) -> Reply {
        self.headers.push((name, value.into()));
        self
    }
}

impl Handler {
    fn warning(&self, status: u16, reason: &str) -> Reply {
        // RFC 3261 §20.43: our own host as the agent, the reason quoted.
        Reply::new(status).with("Warning", format!("399 {} \"{reason}\"", self.public_host))
    }

    async fn handle(&self, mut tx: Transaction) {
        let source = tx.connection.as_ref().and_then(|c| c.get_remote_addr()).and_then(|a| a.get_socketaddr().ok());
        let Some(source) = source else { return };
        if tx.original.method == Method::Ack {
            return;
        }
        // One source holds only so many requests at once, those within a
        // call included.
        let Some(held) = self.per_source.hold(source.ip()) else {
            self.send(&mut tx, Reply::new(503).with("Retry-After", "5")).await;
            return;
        };
        // Every request is checked before any rule, those within a call too.
        let req = &tx.original;
        let method = req.method.to_string();
        let lines: Vec<String> = req.headers.iter().map(ToString::to_string).collect();
        let fields = Fields::from_lines(lines.iter().map(String::as_str));
        let size = lines.iter().map(|l| l.len() + 2).sum::<usize>() + req.body.len();
        let checked = match fields.check(&method, size, &self.limits) {
            Ok(c) => c,
            Err(m) => {
                let reply = self.warning(m.status, m.reason);
                self.send(&mut tx, reply).await;
                return;
            }
        };
        // A request within a call (BYE, re-INVITE) goes to its dialog.
        if let Some(Dialog::Invite(mut dialog)) = self.dialogs.match_dialog(&tx) {
            if let Err(e) = dialog.handle(&mut tx).await {
                tracing::debug!(target: "palisade::sip", error = %e, "an in-dialog request failed");
            }
            drop(held);
            return;
        }
        // A trunk's INVITE may wait on a certificate fetch (STIR): the
        // carrier hears 100 Trying at once, so it neither retransmits nor
        // gives up on us meanwhile.
        if tx.original.method == Method::Invite {
            let kind = tx.connection.as_ref().map_or(Kind::Udp, kind_of);
            if self.services.carrier.trunks().is_trunk_on(source.ip(), kind) {
                if let Err(e) = tx.send_trying().await {
                    tracing::debug!(target: "palisade::sip", error = %e, "100 Trying not sent");
                }
            }
        }
        let answered = self.answer(&tx, &fields, checked, source).await;
        drop(held);
        match answered {
            Answered::Reply(reply) => self.send(&mut tx, reply).await,
            Answered::Call(placed) => self.start_call(tx, *placed, source),
            Answered::Inbound(relayed) => {
                let (opt, hold) = *relayed;
                if let Some((dialog, states)) = self.server_dialog(&mut tx, source) {
                    crate::inbound::relay(self.dialogs.clone(), dialog.clone(), states, opt, hold);
                    self.serve_invite(tx, dialog);
                } else {
                    hold.call.ended("failed", Some("internal")).await;
                    self.send(&mut tx, self.warning(500, "internal")).await;
                }
            }
        }
    }

    async fn send(&self, tx: &mut Transaction, reply: Reply) {
        let headers = reply.headers.into_iter().map(|(n, v)| Header::Other(n.to_owned(), v)).collect();
        if let Err(e) = tx.reply_with(StatusCode::from(reply.status), headers, None).await {
            tracing::debug!(target: "palisade::sip", error = %e, "SIP reply not sent");
        }
    }

    /// The dialog that answers an INVITE from now on. Requests we send
    /// within it (our BYE) go back where the INVITE came from, never to a
    /// host the caller names: its Contact is replaced by its source address
    /// and its Record-Route dropped.
    fn server_dialog(
        &self,
        tx: &mut Transaction,
        source: SocketAddr,
    ) -> Option<(InviteDialog, rsipstack::dialog::dialog::DialogStateReceiver)> {
        let kind = tx.connection.as_ref().map_or(Kind::Udp, kind_of);
        pin_contact(&mut tx.original.headers, source, kind);
        let (states_tx, states_rx) = self.dialogs.new_dialog_state_channel();
        // Our listener of its transport (our public name where it listens
        // on an unspecified address).
        let contact = self.reach.contact(kind).and_then(|c| c.parse().ok());
        match self.dialogs.get_or_create_server_invite(tx, states_tx, None, contact) {
            Ok(d) => Some((d, states_rx)),
            Err(e) => {
                tracing::error!(target: "palisade::sip", error = %e, "no dialog for an INVITE");
                None
            }
        }
    }

    /// The INVITE's transaction, served by its dialog until it ends.
    fn serve_invite(&self, mut tx: Transaction, mut dialog: InviteDialog) {
        tokio::spawn(async move {
            if let Err(e) = dialog.handle(&mut tx).await {
                tracing::debug!(target: "palisade::sip", error = %e, "an INVITE's dialog ended with an error");
            }
        });
    }

    /// An admitted call: its dialog answers the INVITE from now on.
    fn start_call(&self, mut tx: Transaction, placed: crate::calls::Placed, source: SocketAddr) {
        let Some((dialog, states_rx)) = self.server_dialog(&mut tx, source) else {
            let (admission, scope, id) = (placed.admission.clone(), placed.scope.clone(), placed.call.id.clone());
            let reply = self.warning(500, "internal");
            let headers = reply.headers.into_iter().map(|(n, v)| Header::Other(n.to_owned(), v)).collect();
            tokio::spawn(async move {
                // Ended as failed: the first minute comes back.
                let _ = admission.end_call(&scope, &id, "failed", Some("interrupted"), None).await;
                let _ = tx.reply_with(StatusCode::ServerInternalError, headers, None).await;
            });
            return;
        };
        let offer = (!tx.original.body.is_empty()).then(|| tx.original.body.clone());
        // Ours when the callee sends none: never weaker than the offer.
        let sdp = palisade_voice::media::declining_answer(&self.public_host, &placed.media, offer.as_deref());
        crate::calls::run(placed, self.dialogs.clone(), dialog.clone(), states_rx, sdp, offer);
        self.serve_invite(tx, dialog);
    }

    async fn answer(
        &self,
        tx: &Transaction,
        fields: &Fields,
        checked: message::Checked,
        source: SocketAddr,
    ) -> Answered {
        Answered::Reply(match tx.original.method {
            Method::Register => self.register(tx, fields, checked.cseq, source).await,
            Method::Invite => return self.invite(tx, fields, source).await,
            Method::Options => Reply::new(200).with("Allow", ALLOW),
            Method::Bye | Method::Cancel => Reply::new(481),
            _ => Reply::new(405).with("Allow", ALLOW),
        })
    }

    /// A new call: the caller authenticated (407), then admitted.
    async fn invite(&self, tx: &Transaction, fields: &Fields, source: SocketAddr) -> Answered {
        let reply = |r: Reply| Answered::Reply(r);
        // A re-INVITE of a dialog we do not have.
        if fields.one("to").is_some_and(|t| t.contains(";tag=")) {
            return reply(Reply::new(481));
        }
        // A body is an offer only as SDP: anything else (a multipart body
        // included) is refused rather than read as one (RFC 3261 §21.4.13).
        if !tx.original.body.is_empty() && !message::is_sdp(fields.one("content-type")) {
            return reply(Reply::new(415).with("Accept", "application/sdp"));
        }
        // A trunk's call: the trunk is known by its address (over its own
        // transport), not by digest.
        let kind = tx.connection.as_ref().map_or(Kind::Udp, kind_of);
        if let Some(trunk) = self.services.carrier.trunks().now().trunk_for(source.ip()).filter(|t| t.transport == kind)
        {
            let (id, policy, stir) = (trunk.id.clone(), trunk.srtp, trunk.stir_inbound);
            return self.inbound(tx, fields, source, &id, policy, stir).await;
        }
        let Some((from_user, aor_host)) = fields.one("from").and_then(message::uri_of).and_then(message::user_host)
        else {
            return reply(self.warning(400, "from"));
        };
        // Where the caller is reached within the call (RFC 3261 §8.1.1.8).
        match message::contacts(fields.all("contact")).as_deref() {
            Ok([message::Contact::Uri { .. }]) => {}
            _ => return reply(self.warning(400, "contact")),
        }
        let mut it = fields.all("proxy-authorization");
        let authorization = it.next();
        if it.next().is_some() {
            return reply(self.warning(400, "proxy_authorization"));
        }
        let now = self.services.clock.now_ms();
        let uri = tx.original.uri.to_string();
        let request =
            palisade_voice::auth::Request { method: "INVITE", uri: &uri, aor_host, authorization, source: source.ip() };
        let user = match self.authenticated(&request, source, now, true).await {
            Ok(user) => user,
            Err(r) => return reply(r),
        };
        if from_user != Some(user.username.as_str()) {
            return reply(self.warning(403, "aor_mismatch"));
        }
        let dialed = message::user_host(&uri).and_then(|(user, _)| crate::calls::dialed_number(user));
        let Some(to) = dialed else { return reply(self.warning(404, "not_a_number")) };
        // Recording, as `record` on `POST /v1/calls` asks for it.
        let asked: Vec<&str> = fields.all("palisade-record").map(str::trim).collect();
        let record = match asked.as_slice() {
            [] | ["false"] => false,
            ["true"] => true,
            // Anything else, or the header twice.
            _ => return reply(self.warning(400, "palisade_record")),
        };
        let scope = user.scope();
        // The media the identity's policy admits, before anything is charged.
        let offer = (!tx.original.body.is_empty()).then_some(tx.original.body.as_slice());
        let media = match self.media_of(&scope, user.identity, offer, kind == Kind::Tls).await {
            Ok(media) => media,
            Err(r) => return reply(r),
        };
        // Where it will go out through a trunk, that trunk's rules too, now:
        // refused with its reason and nothing charged.
        if let Some(trunk) = self.services.carrier.outbound_trunk() {
            let tls = trunk.transport == Kind::Tls;
            if let Err(r) = palisade_voice::media::check_towards_trunk(trunk.srtp, offer, tls) {
                return reply(self.warning(r.status(), r.reason()));
            }
        }
        let principal = crate::calls::principal(user.tenant, user.identity);
        let audit = palisade_audit::Context {
            source_ip: Some(source.ip().to_string()),
            user_agent: fields.one("user-agent").map(|u| u.chars().take(256).collect()),
            request_id: None,
        };
        let slots = match (self.services.tenant_gate)(principal.clone(), source.ip()).await {
            Ok(slots) => slots,
            Err(g) => {
                let r = self.warning(g.status, g.reason);
                return reply(match g.retry_after {
                    Some(secs) => r.with("Retry-After", secs.to_string()),
                    None => r,
                });
            }
        };
        let s = &self.services;
        let call = palisade_admission::calls::Call { from: user.identity.to_string(), to, key: None, record };
        match crate::calls::admit(&s.admission, &principal, &scope, &audit, slots, call).await {
            Ok(mut call) => {
                // On the call and, when it ends, its CDR.
                call.media = media.label();
                let recorded = async {
                    let mut tx = s.db.begin().await?;
                    palisade_store::calls::set_media(&mut *tx, &scope, &call.id, &call.media).await?;
                    tx.commit().await
                };
                if let Err(e) = recorded.await {
                    tracing::error!(target: "palisade::sip", error = %e, "recording a call's media security failed");
                }
                Answered::Call(Box::new(crate::calls::Placed {
                    admission: s.admission.clone(),
                    carrier: s.carrier.clone(),
                    scope,
                    call,
                    principal,
                    audit,
                    media,
                }))
            }
            Err((status, reason, retry)) => {
                let r = self.warning(status, reason);
                reply(match retry {
                    Some(secs) => r.with("Retry-After", secs.to_string()),
                    None => r,
                })
            }
        }
    }

    /// The security of a device's offer, if the identity's media policy
    /// admits it on this transport; the refusal (488, or 400 for SDP that
    /// does not parse) with its reason otherwise.
    async fn media_of(
        &self,
        scope: &palisade_core::TenantScope,
        identity: palisade_core::IdentityId,
        offer: Option<&[u8]>,
        encrypted: bool,
    ) -> Result<palisade_voice::media::Security, Reply> {
        use palisade_voice::media::{check_offer, SrtpPolicy};
        let row = match palisade_store::identities::get(self.services.db.reader(), scope, identity).await {
            Ok(Some(row)) => row,
            Ok(None) => return Err(self.warning(403, "frozen")),
            Err(e) => {
                tracing::error!(target: "palisade::sip", error = %e, "reading an identity's media policy failed");
                return Err(self.warning(500, "internal"));
            }
        };
        let policy = SrtpPolicy::parse(&row.srtp).unwrap_or(SrtpPolicy::Required);
        check_offer(policy, offer, encrypted).map_err(|r| self.warning(r.status(), r.reason()))
    }

    /// A call a trunk brings in, for the identity holding the dialed
    /// number verified: relayed to its device, or refused with the reason.
    async fn inbound(
        &self,
        tx: &Transaction,
        fields: &Fields,
        source: SocketAddr,
        trunk: &str,
        policy: palisade_voice::media::SrtpPolicy,
        stir: palisade_voice::trunks::StirInbound,
    ) -> Answered {
        use palisade_voice::inbound::Callee;
        // The carrier hears plain codes: nothing of a tenant's state.
        let refuse = |status: u16, why: &str| {
            tracing::debug!(target: "palisade::sip", %source, status, why, "a trunk's call is refused");
            Answered::Reply(Reply::new(status))
        };
        let uri = tx.original.uri.to_string();
        let dialed = message::user_host(&uri).and_then(|(user, _)| crate::calls::dialed_number(user));
        let Some(to) = dialed else { return refuse(404, "not_a_number") };
        let from_user =
            fields.one("from").and_then(message::uri_of).and_then(message::user_host).and_then(|(user, _)| user);
        let from = crate::calls::dialed_number(from_user).unwrap_or_else(|| "anonymous".to_owned());
        let now = self.services.clock.now_ms();
        let (scope, identity, binding) = match palisade_voice::inbound::callee(&self.services.db, &to, now).await {
            Ok(Callee::Device { scope, identity, binding }) => (scope, identity, binding),
            Ok(Callee::Unknown) => return refuse(404, "unknown_number"),
            Ok(Callee::Frozen) => return refuse(480, "frozen"),
            Ok(Callee::NotRegistered) => return refuse(480, "not_registered"),
            Err(e) => {
                tracing::error!(target: "palisade::sip", error = %e, "finding an inbound call's callee failed");
                return refuse(500, "unavailable");
            }
        };
        let offer = (!tx.original.body.is_empty()).then(|| tx.original.body.clone());
        // The trunk's media policy and the callee identity's, on the
        // trunk's transport.
        let encrypted = tx.connection.as_ref().map_or(Kind::Udp, kind_of) == Kind::Tls;
        if let Err(r) = palisade_voice::media::check_offer(policy, offer.as_deref(), encrypted) {
            return refuse(r.status(), r.reason());
        }
        if let Err(r) = self.media_of(&scope, identity, offer.as_deref(), encrypted).await {
            return refuse(r.status, "the callee's media policy");
        }
        // Keys cross to the device only over TLS too (its answer's way back
        // as well): both legs encrypted, or no keys either way.
        let keys_allowed = encrypted && binding.transport == "tls";
        if !keys_allowed && offer.as_deref().is_some_and(palisade_voice::media::has_keys) {
            return refuse(488, "sdes_plaintext");
        }
        let Some(opt) = crate::inbound::leg_to(&binding, &from, &self.reach, offer) else {
            return refuse(480, "unreachable");
        };
        let Some(live) = self.inbound_live.hold(&identity.to_string()) else {
            return refuse(486, "too_many_calls");
        };
        // Who vouches for the caller's number: the trunk's policy decides
        // what a call without a good PASSporT gets.
        // The From user as the carrier wrote it (`+` or not: PASSporTs hold
        // digits only).
        let identities: Vec<&str> = fields.all("identity").collect();
        let caller = from_user.map(|u| u.split(';').next().unwrap_or(u));
        let verification = self.services.stir.verify(&identities, caller, &to, now).await;
        let ctx = palisade_audit::Context { source_ip: Some(source.ip().to_string()), ..Default::default() };
        if stir == palisade_voice::trunks::StirInbound::Reject && verification.verstat != palisade_stir::Verstat::Passed
        {
            let (status, reason) = match verification.failure {
                // Our shared state did not answer: not the caller's fault.
                Some(palisade_stir::Failure::Unverifiable) => (503, "verification_unavailable"),
                Some(why) => (438, why.reason()),
                None => (428, "identity_required"),
            };
            // Seen by the callee's tenant: who tried to reach them, refused why.
            let event = palisade_audit::Event::new(
                "call.refused_unverified",
                Some(scope.tenant_id()),
                palisade_core::principal::Actor::system(),
            )
            .resource("identity", identity)
            .details(serde_json::json!({ "from": palisade_guard::phone::masked(&from), "reason": reason }));
            if let Err(e) = palisade_audit::record(&self.services.db, &event, &ctx, now).await {
                tracing::error!(target: "palisade::sip", error = %e, "audit append failed");
            }
            let reply = self.warning(status, reason);
            return Answered::Reply(if status == 503 { reply.with("Retry-After", "5") } else { reply });
        }
        let incoming =
            palisade_admission::calls::Incoming { identity, from: &from, to: &to, verification: &verification };
        let call = match self.services.admission.receive_call(&scope, incoming, &ctx).await {
            Ok(call) => call,
            Err(e) => {
                tracing::error!(target: "palisade::sip", error = %e, "recording an inbound call failed");
                return refuse(500, "unavailable");
            }
        };
        let carrier = &self.services.carrier;
        let hold = crate::inbound::Hold {
            _live: live,
            trunk: carrier.relay_started(trunk, &call.id),
            durations: carrier.durations(),
            keys_allowed,
            call: crate::inbound::Recorded { admission: self.services.admission.clone(), scope, id: call.id },
        };
        Answered::Inbound(Box::new((opt, hold)))
    }

    /// Digest authentication as SIP: the user, or the answer to send
    /// (401/407 with challenges, 403 blocked, 404, 503).
    async fn authenticated(
        &self,
        request: &palisade_voice::auth::Request<'_>,
        source: SocketAddr,
        now: i64,
        proxy: bool,
    ) -> Result<Box<palisade_voice::credentials::DigestUser>, Reply> {
        match self.services.auth.authenticate(request, now).await {
            Outcome::Authenticated(user) => Ok(user),
            Outcome::Challenge { challenges, .. } => {
                let (status, name) = if proxy { (407, "Proxy-Authenticate") } else { (401, "WWW-Authenticate") };
                let mut r = Reply::new(status);
                for c in challenges {
                    r = r.with(name, c);
                }
                Err(r)
            }
            Outcome::Blocked { started, until_ms } => {
                if let Some(s) = started {
                    self.audit_block(source, s.nth, until_ms, now);
                }
                Err(self.warning(403, "blocked"))
            }
            Outcome::UnknownRealm => Err(self.warning(404, "unknown_realm")),
            Outcome::Unavailable => Err(self.warning(503, "unavailable").with("Retry-After", "5")),
        }
    }

    async fn register(&self, tx: &Transaction, fields: &Fields, cseq: i64, source: SocketAddr) -> Reply {
        let Some((to_user, aor_host)) = fields.one("to").and_then(message::uri_of).and_then(message::user_host) else {
            return self.warning(400, "to");
        };
        let authorization = {
            let mut it = fields.all("authorization");
            let first = it.next();
            if it.next().is_some() {
                return self.warning(400, "authorization");
            }
            first
        };
        let now = self.services.clock.now_ms();
        let uri = tx.original.uri.to_string();
        let request = palisade_voice::auth::Request {
            method: "REGISTER",
            uri: &uri,
            aor_host,
            authorization,
            source: source.ip(),
        };
        let user = match self.authenticated(&request, source, now, false).await {
            Ok(user) => user,
            Err(r) => return r,
        };
        // The address of record is the credential's own.
        if to_user != Some(user.username.as_str()) {
            return self.warning(403, "aor_mismatch");
        }
        let contacts = match message::contacts(fields.all("contact")) {
            Ok(c) => c,
            Err(m) => return self.warning(m.status, m.reason),
        };
        let expires = match message::expires(fields.one("expires")) {
            Ok(e) => e,
            Err(m) => return self.warning(m.status, m.reason),
        };
        let contacts: Vec<registrar::Contact<'_>> = contacts
            .iter()
            .map(|c| match c {
                Contact::Star => registrar::Contact::All,
                Contact::Uri { uri, expires } => registrar::Contact::Uri { uri, expires: *expires },
            })
            .collect();
        let transport = match tx.connection.as_ref().map(SipConnection::transport) {
            Some(Transport::Tcp) => "tcp",
            Some(Transport::Tls) => "tls",
            _ => "udp",
        };
        let source_text = source.to_string();
        let req = registrar::Request {
            user: &user,
            contacts: &contacts,
            expires,
            call_id: fields.one("call-id").unwrap_or_default(),
            cseq,
            transport,
            source: &source_text,
            instance: &self.services.instance_id,
            user_agent: fields.one("user-agent"),
        };
        match registrar::register(&self.services.db, &self.bounds, &req, now).await {
            Ok(registrar::Outcome::Bound(rows)) => {
                let mut r = Reply::new(200);
                for row in rows {
                    let left = (row.expires_at - now).max(0) / 1000;
                    r = r.with("Contact", format!("<{}>;expires={left}", row.contact_uri));
                }
                r
            }
            Ok(registrar::Outcome::TooBrief { min_expires_secs }) => {
                Reply::new(423).with("Min-Expires", min_expires_secs.to_string())
            }
            Ok(registrar::Outcome::Frozen) => self.warning(403, "frozen"),
            Ok(registrar::Outcome::TooManyContacts) => self.warning(403, "too_many_contacts"),
            Ok(registrar::Outcome::BadWildcard) => self.warning(400, "contact"),
            Ok(registrar::Outcome::OutOfOrder) => self.warning(400, "out_of_order"),
            Err(e) => {
                tracing::error!(target: "palisade::sip", error = %e, "registration failed");
                self.warning(500, "internal")
            }
        }
    }

    /// Once per block, not per failure.
    fn audit_block(&self, source: SocketAddr, nth: u32, until_ms: i64, now: i64) {
        tracing::warn!(target: "palisade::sip", ip = %source.ip(), nth, "SIP authentication failures: address blocked");
        let event = palisade_audit::Event::new("sip.address_blocked", None, palisade_core::principal::Actor::system())
            .details(serde_json::json!({ "until": palisade_core::clock::rfc3339(until_ms), "nth_today": nth }));
        let ctx = palisade_audit::Context { source_ip: Some(source.ip().to_string()), ..Default::default() };
        let db = self.services.db.clone();
        tokio::spawn(async move {
            if let Err(e) = palisade_audit::record(&db, &event, &ctx, now).await {
                tracing::error!(error = %e, "audit append failed");
            }
        });
    }
}
