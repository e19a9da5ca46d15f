//! The accept loop and what each connection may hold. `axum::serve` bounds
//! nothing, so a client that sends nothing, trickles its headers or body,
//! or keeps an idle connection would hold a file descriptor forever. Here:
//! - connections are capped in total and per client address; one more is
//!   closed as soon as it is accepted, so the accepted ones never wait;
//! - a TLS handshake, a request's headers and a request's body each have a
//!   deadline, and so has the wait for a next request on a kept-alive
//!   connection, and for a client to take its answer (a client that reads
//!   nothing, e.g. HTTP/2 with a zero window, is idle too).
//!
//! hyper's own `header_read_timeout` cannot do the last: its clock starts
//! as soon as a response is sent, so the idle wait could never be longer
//! than the header deadline. Instead each connection has a watchdog that
//! knows whether a request is in flight and when the first byte of the next
//! one arrived.

use palisade_api::ConnectionHold;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, HttpBody};
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use axum::Router;
use bytes::Bytes;
use hyper::body::{Frame, Incoming, SizeHint};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use ipnet::IpNet;
use palisade_api::body::BodyTimedOut;
use palisade_api::metrics::Metrics;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Sleep};
use tokio_rustls::TlsAcceptor;
use tower::ServiceExt as _;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// What one connection may hold (`server.*` in the configuration).
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_connections: usize,
    pub max_per_address: usize,
    /// Peers counted toward the total only: a trusted proxy carries many
    /// clients' connections.
    pub shared_peers: Vec<IpNet>,
    pub header: Duration,
    pub idle: Duration,
    pub body: Duration,
    /// Bytes per second that earn a body one more second; 0: none.
    pub body_min_rate: u64,
    pub handshake: Duration,
}

impl Limits {
    pub fn from_config(s: &palisade_config::Server) -> Limits {
        Limits {
            max_connections: s.max_connections,
            max_per_address: s.max_connections_per_address,
            shared_peers: s.trust_proxy.clone(),
            header: Duration::from_secs(s.header_timeout_secs),
            idle: Duration::from_secs(s.idle_timeout_secs),
            body: Duration::from_secs(s.body_timeout_secs),
            body_min_rate: s.body_min_bytes_per_sec,
            handshake: Duration::from_secs(s.tls.handshake_timeout_secs),
        }
    }
}

/// Serves `app` on `listener` (TLS first when `tls` is given) until `stop`
/// turns true, then lets open connections finish their requests.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    app: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) -> io::Result<()> {
    let limits = Arc::new(limits);
    let slots = Arc::new(Slots::new(&limits));
    let conns = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.wait_for(|s| *s) => break,
        };
        let (tcp, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors, most likely: let some close.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        // Responses and stream messages go out as written: Nagle's wait for
        // an acknowledgement would hold a small message back for up to 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "could not set TCP_NODELAY");
        }
        let slot = match slots.take(peer.ip()) {
            Ok(s) => s,
            Err(limit) => {
                // Closed unread: refusing costs no more than the accept.
                drop(tcp);
                metrics.connection_cut(limit);
                tracing::debug!(%peer, limit, "connection refused");
                continue;
            }
        };
        let (tls, app, limits, metrics, mut stop) =
            (tls.clone(), app.clone(), limits.clone(), metrics.clone(), stop.clone());
        conns.spawn(async move {
            // Shared with what an upgraded connection (a WebSocket) becomes:
            // the place is given back when both have ended.
            let slot = ConnectionHold(Arc::new(slot));
            let Some(acceptor) = tls else {
                return connection(tcp, peer, app, &limits, metrics, stop, slot).await;
            };
            let handshake = tokio::time::timeout(limits.handshake, acceptor.accept(tcp));
            let stream = tokio::select! {
                r = handshake => match r {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                    Err(_) => {
                        metrics.connection_cut("handshake_timeout");
                        return tracing::debug!(%peer, "TLS handshake timed out");
                    }
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            connection(stream, peer, app, &limits, metrics, stop, slot).await
        });
    }
    drop(listener);
    conns.close();
    conns.wait().await;
    Ok(())
}

/// One connection, until it ends, breaks a deadline or the server stops.
async fn connection<I>(
    io: I,
    peer: SocketAddr,
    app: Router,
    limits: &Limits,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
    hold: ConnectionHold,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let service = ConnService {
        app,
        peer,
        activity: activity.clone(),
        body: (limits.body, limits.body_min_rate),
        metrics: metrics.clone(),
        hold,
    };
    let builder = auto::Builder::new(TokioExecutor::new());
    let conn =
        builder.serve_connection_with_upgrades(TokioIo::new(Watched { io, activity: activity.clone() }), service);
    tokio::pin!(conn);
    let watchdog = activity.watchdog(limits.header, limits.idle);
    tokio::pin!(watchdog);
    let mut stopping = false;
    loop {
        tokio::select! {
            r = conn.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
                return;
            }
            limit = &mut watchdog => {
                metrics.connection_cut(limit);
                return tracing::debug!(%peer, limit, "connection closed");
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// Open connections, in total and per address.
struct Slots {
    max_total: usize,
    max_per_address: usize,
    shared_peers: Vec<IpNet>,
    open: Mutex<Open>,
}

#[derive(Default)]
struct Open {
    total: usize,
    /// By `palisade_guard::limits::ip_id`: an IPv6 address by its /64.
    by_address: HashMap<u128, usize>,
}

/// One open connection's place, given back when dropped.
struct Slot {
    slots: Arc<Slots>,
    address: Option<u128>,
}

impl Slots {
    fn new(limits: &Limits) -> Slots {
        Slots {
            max_total: limits.max_connections,
            max_per_address: limits.max_per_address,
            shared_peers: limits.shared_peers.clone(),
            open: Mutex::default(),
        }
    }

    /// A place for a connection from `ip`, or the limit it would break.
    fn take(self: &Arc<Self>, ip: IpAddr) -> Result<Slot, &'static str> {
        let address = (!palisade_guard::net::in_any(ip, &self.shared_peers)).then(|| palisade_guard::limits::ip_id(ip));
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if open.total >= self.max_total {
            return Err("max_connections");
        }
        if let Some(a) = address {
            let n = open.by_address.entry(a).or_insert(0);
            if *n >= self.max_per_address {
                return Err("max_connections_per_address");
            }
            *n += 1;
        }
        open.total += 1;
        Ok(Slot { slots: self.clone(), address })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.total -= 1;
        if let Some(a) = self.address {
            if let Some(n) = open.by_address.get_mut(&a) {
                *n -= 1;
                if *n == 0 {
                    open.by_address.remove(&a);
                }
            }
        }
    }
}

/// What a connection is doing, shared by its reads, its requests and its
/// watchdog. Times are milliseconds since `start`.
struct Activity {
    start: Instant,
    /// Requests whose response has not been sent whole yet.
    in_flight: AtomicU32,
    /// Of those, the ones still being answered (the handler runs).
    answering: AtomicU32,
    /// When an answer was last ready or taken further: a response body
    /// gave a frame to send. (Not any write: an HTTP/2 client's pings
    /// make the server write too.)
    sent_at: AtomicU64,
    /// When the last request in flight ended.
    idle_since: AtomicU64,
    /// One more than when the first byte of a next request arrived; 0:
    /// none has. A new connection starts with its first request's head.
    head_since: AtomicU64,
    /// Told when the connection goes idle or a head begins.
    wake: Notify,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            start: Instant::now(),
            in_flight: AtomicU32::new(0),
            answering: AtomicU32::new(0),
            sent_at: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(1),
            wake: Notify::new(),
        }
    }

    fn now(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    /// Bytes arrived. With no request in flight they begin the next one.
    fn read(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == 0
            && self.head_since.compare_exchange(0, self.now() + 1, Ordering::AcqRel, Ordering::Acquire).is_ok()
        {
            self.wake.notify_one();
        }
    }

    fn sent(&self) {
        self.sent_at.store(self.now(), Ordering::Release);
    }

    fn request_started(self: &Arc<Self>) -> (Busy, Answering) {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        self.answering.fetch_add(1, Ordering::AcqRel);
        (Busy(self.clone()), Answering(self.clone()))
    }

    /// The deadline that applies now, and the limit it enforces. None
    /// while a handler runs (its body has its own); once every answer is
    /// ready, the client must take some of it within the idle deadline.
    fn deadline(&self, header: Duration, idle: Duration) -> Option<(Instant, &'static str)> {
        let ms = Duration::from_millis;
        if self.in_flight.load(Ordering::Acquire) > 0 {
            if self.answering.load(Ordering::Acquire) > 0 {
                return None;
            }
            return Some((self.start + ms(self.sent_at.load(Ordering::Acquire)) + idle, "idle_timeout"));
        }
        Some(match self.head_since.load(Ordering::Acquire) {
            0 => (self.start + ms(self.idle_since.load(Ordering::Acquire)) + idle, "idle_timeout"),
            head => (self.start + ms(head - 1) + header, "header_timeout"),
        })
    }

    /// Resolves with the limit the connection broke.
    async fn watchdog(&self, header: Duration, idle: Duration) -> &'static str {
        loop {
            let Some((at, _)) = self.deadline(header, idle) else {
                self.wake.notified().await;
                continue;
            };
            tokio::select! {
                _ = tokio::time::sleep_until(at) => {
                    // A request may have begun or ended meanwhile.
                    if let Some((at, limit)) = self.deadline(header, idle) {
                        if at <= Instant::now() {
                            return limit;
                        }
                    }
                }
                _ = self.wake.notified() => {}
            }
        }
    }
}

/// A request in flight; it ends when its response body is dropped, i.e.
/// sent whole or abandoned.
struct Busy(Arc<Activity>);

/// A request whose handler runs; it ends with the handler.
struct Answering(Arc<Activity>);

impl Drop for Answering {
    fn drop(&mut self) {
        let a = &self.0;
        if a.answering.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.sent();
            a.wake.notify_one();
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        let a = &self.0;
        if a.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            a.idle_since.store(a.now(), Ordering::Release);
            a.head_since.store(0, Ordering::Release);
            a.wake.notify_one();
        }
    }
}

/// The connection's I/O, noting every read.
struct Watched<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Watched<I> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            this.activity.read();
        }
        r
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Watched<I> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

/// Hands each request of one connection to the router, with the peer's
/// address and a body deadline, and keeps the connection busy until the
/// response is sent.
#[derive(Clone)]
struct ConnService {
    app: Router,
    peer: SocketAddr,
    activity: Arc<Activity>,
    body: (Duration, u64),
    metrics: Arc<Metrics>,
    hold: ConnectionHold,
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let (busy, answering) = self.activity.request_started();
        req.extensions_mut().insert(ConnectInfo(self.peer));
        req.extensions_mut().insert(self.hold.clone());
        let (allowed, min_rate) = self.body;
        let metrics = self.metrics.clone();
        let req = req.map(|inner| {
            Body::new(Deadline { inner, allowed, min_rate, started: None, received: 0, timer: None, metrics })
        });
        let app = self.app.clone();
        Box::pin(async move {
            let resp = app.oneshot(req).await?;
            drop(answering);
            Ok(resp.map(|body| Body::new(Sending { body, busy })))
        })
    }
}

/// A response body; the request stays in flight until it is dropped.
struct Sending {
    body: Body,
    busy: Busy,
}

impl HttpBody for Sending {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(Some(Ok(_))) = r {
            this.busy.0.sent();
        }
        r
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A request body that must arrive within `allowed` from when it is first
/// read, plus a second per `min_rate` bytes received; slower, it ends
/// with [`BodyTimedOut`] (a 408 where the API reads it).
struct Deadline {
    inner: Incoming,
    allowed: Duration,
    min_rate: u64,
    started: Option<Instant>,
    received: u64,
    timer: Option<Pin<Box<Sleep>>>,
    metrics: Arc<Metrics>,
}

impl Deadline {
    fn at(&self, started: Instant) -> Instant {
        let earned = match self.min_rate {
            0 => Duration::ZERO,
            rate => Duration::from_millis(self.received.saturating_mul(1000) / rate),
        };
        started + self.allowed + earned
    }
}

impl HttpBody for Deadline {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let started = *this.started.get_or_insert_with(Instant::now);
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.received += data.len() as u64;
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e.into()))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => {
                let at = this.at(started);
                let timer = this.timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)));
                if timer.deadline() != at {
                    timer.as_mut().reset(at);
                }
                if timer.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                this.metrics.connection_cut("body_timeout");
                Poll::Ready(Some(Err(Box::new(BodyTimedOut))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Raises the soft open-file limit to the hard one (as Go's runtime does),
/// so `max_connections` rather than `EMFILE` bounds the connections, and
/// says so when the limit is still below it.
pub fn raise_open_file_limit(max_connections: usize) {
    #[cfg(unix)]
    {
        use rustix::process::{getrlimit, setrlimit, Resource};
        let mut limit = getrlimit(Resource::Nofile);
        if limit.current < limit.maximum {
            limit.current = limit.maximum;
            if let Err(e) = setrlimit(Resource::Nofile, limit) {
                tracing::debug!(error = %e, "cannot raise the open-file limit");
            }
        }
        // The database pool, listeners and files need some too.
        let wanted = max_connections as u64 + 256;
        if let Some(current) = getrlimit(Resource::Nofile).current.filter(|c| *c < wanted) {
            tracing::warn!(
                open_file_limit = current,
                max_connections,
                "the open-file limit is below server.max_connections plus 256; raise it (ulimit -n, \
                 LimitNOFILE=) or lower server.max_connections"
            );
        }
    }
}
