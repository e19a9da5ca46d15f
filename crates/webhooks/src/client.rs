//! The only way Palisade makes an outbound webhook request.
//!
//! Every request goes through the SSRF policy: the URL is checked before
//! sending (which covers IP-literal hosts, which never reach a resolver), and
//! host names are resolved by our own [`reqwest::dns::Resolve`]
//! implementation, which passes the answers through
//! [`SsrfPolicy::filter_resolved`] and hands the connector exactly the
//! addresses it checked. There is no second lookup between the check and the
//! connect, so DNS rebinding cannot slip a private address in.
//!
//! Redirects are never followed, proxies from the environment are ignored,
//! and at most `max_response_bytes` of a response body are read.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::HeaderMap;
use palisade_guard::ssrf::{CheckedUrl, SsrfError, SsrfPolicy};
use time::OffsetDateTime;
use tokio::time::Instant;

/// At most this much of the response body is kept, for the tenant to see.
pub const EXCERPT_BYTES: usize = 1024;

/// Resolves host names. Injected so tests can script the answers.
pub trait Resolver: Send + Sync + 'static {
    /// The addresses of `host`. `port` is informational (it is 0 when the
    /// HTTP connector asks: the connector supplies the URL's port itself).
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>>;
}

/// The operating system's resolver (`getaddrinfo`, via tokio).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolver for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
        let host = host.to_owned();
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// How the client behaves.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub policy: SsrfPolicy,
    /// TCP (and TLS) connect; also bounds each DNS lookup.
    pub connect_timeout: Duration,
    /// The whole attempt, from the lookup to the end of the body.
    pub total_timeout: Duration,
    /// At most this much of a response body is read; the rest is dropped
    /// with the connection (not an error).
    pub max_response_bytes: usize,
    pub user_agent: String,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            policy: SsrfPolicy::default(),
            connect_timeout: Duration::from_secs(5),
            total_timeout: Duration::from_secs(15),
            max_response_bytes: 64 * 1024,
            user_agent: concat!("Palisade-Webhooks/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// The HTTP client could not be built (TLS initialization).
#[derive(Debug, thiserror::Error)]
#[error("could not build the webhook HTTP client")]
pub struct BuildError(#[source] reqwest::Error);

/// Why an attempt failed before (or while) a response came back. `Display`
/// is short and safe to show the tenant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AttemptError {
    /// Refused by the SSRF policy: the URL itself.
    #[error("{0}")]
    Ssrf(SsrfError),
    /// The host name did not resolve, or resolved to an address the SSRF
    /// policy refuses: one class for both, so the tenant's delivery log
    /// tells nothing of the platform's internal DNS.
    #[error("the host did not resolve to a public address")]
    Dns,
    #[error("could not connect to the endpoint")]
    Connect,
    #[error("the request timed out")]
    Timeout,
    #[error("the TLS handshake failed")]
    Tls,
    #[error("the response body could not be read")]
    Body,
    #[error("the request failed")]
    Other,
}

impl AttemptError {
    /// Stable machine-readable class.
    pub fn class(&self) -> &'static str {
        match self {
            AttemptError::Ssrf(_) => "ssrf",
            AttemptError::Dns => "dns",
            AttemptError::Connect => "connect",
            AttemptError::Timeout => "timeout",
            AttemptError::Tls => "tls",
            AttemptError::Body => "response_body",
            AttemptError::Other => "other",
        }
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// A 2xx.
    Delivered,
    /// 410 Gone: the receiver asks us to stop (disable the endpoint).
    Gone,
    /// Anything else, including 3xx, 4xx, 5xx, network errors and SSRF
    /// refusals (the tenant's DNS may be fixed by the next attempt).
    Retry,
}

/// One delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// The response status, if a response came back (3xx are never followed).
    pub status: Option<u16>,
    /// From the start of the attempt to the end of reading the response.
    pub latency: Duration,
    /// The first ≤ 1 KiB of the response body, lossy UTF-8.
    pub response_excerpt: String,
    /// From `Retry-After` (seconds or HTTP-date), if present and valid.
    pub retry_after: Option<Duration>,
    /// Why the attempt failed. May be set alongside a status, when the
    /// body could not be read to the end (e.g. it timed out); the status
    /// still decides the [`Outcome`].
    pub error: Option<AttemptError>,
}

impl Attempt {
    fn failed(started: Instant, error: AttemptError) -> Attempt {
        Attempt {
            status: None,
            latency: started.elapsed(),
            response_excerpt: String::new(),
            retry_after: None,
            error: Some(error),
        }
    }

    /// Every 2xx is delivered, 410 is gone, everything else is retried
    /// (Standard Webhooks / Svix practice).
    pub fn outcome(&self) -> Outcome {
        match self.status {
            Some(s) if (200..300).contains(&s) => Outcome::Delivered,
            Some(410) => Outcome::Gone,
            _ => Outcome::Retry,
        }
    }

    /// The SSRF policy refused the URL (retried, but worth telling the
    /// tenant about). A name's refused addresses are [`AttemptError::Dns`].
    pub fn refused_by_ssrf(&self) -> bool {
        matches!(self.error, Some(AttemptError::Ssrf(_)))
    }
}

/// The resolver failed or did not answer in time.
#[derive(Debug)]
struct DnsFailure;

impl fmt::Display for DnsFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the host could not be resolved")
    }
}

impl StdError for DnsFailure {}

/// reqwest's resolver: ours, then the policy. The connector dials exactly
/// the addresses returned here.
struct GuardedDns {
    resolver: Arc<dyn Resolver>,
    policy: Arc<SsrfPolicy>,
    timeout: Duration,
}

impl reqwest::dns::Resolve for GuardedDns {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let lookup = self.resolver.resolve(name.as_str(), 0);
        let policy = self.policy.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let addrs = match tokio::time::timeout(timeout, lookup).await {
                Ok(Ok(addrs)) => addrs,
                Ok(Err(_)) | Err(_) => return Err(Box::new(DnsFailure) as Box<dyn StdError + Send + Sync>),
            };
            let addrs = policy.filter_resolved(&addrs).map_err(|e| {
                if let Some(class) = e.class() {
                    tracing::warn!(
                        host = name.as_str(),
                        class = class.as_str(),
                        "webhook host resolved to a refused address"
                    );
                }
                Box::new(e) as Box<dyn StdError + Send + Sync>
            })?;
            // Port 0 is replaced by the URL's port.
            let addrs: reqwest::dns::Addrs = Box::new(addrs.into_iter().map(|ip| SocketAddr::new(ip, 0)));
            Ok(addrs)
        })
    }
}

/// The outbound webhook client. Build one per process and clone it (clones
/// share the connection pool).
#[derive(Clone)]
pub struct WebhookClient {
    http: reqwest::Client,
    policy: Arc<SsrfPolicy>,
    resolver: Arc<dyn Resolver>,
    connect_timeout: Duration,
    total_timeout: Duration,
    max_response_bytes: usize,
}

impl fmt::Debug for WebhookClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WebhookClient")
            .field("policy", &self.policy)
            .field("connect_timeout", &self.connect_timeout)
            .field("total_timeout", &self.total_timeout)
            .field("max_response_bytes", &self.max_response_bytes)
            .finish_non_exhaustive()
    }
}

impl WebhookClient {
    pub fn new(settings: ClientSettings, resolver: Arc<dyn Resolver>) -> Result<WebhookClient, BuildError> {
        let policy = Arc::new(settings.policy);
        let dns = GuardedDns { resolver: resolver.clone(), policy: policy.clone(), timeout: settings.connect_timeout };
        // The connection pool is keyed by scheme, host and port. A pooled
        // connection was dialed to an address GuardedDns (or check_url, for
        // an IP literal) approved under this same, immutable policy, so
        // reusing it without a new lookup is safe: rebinding the name later
        // cannot move an existing connection.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .use_rustls_tls()
            .https_only(policy.require_https)
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.total_timeout)
            .user_agent(settings.user_agent)
            .referer(false)
            .dns_resolver(Arc::new(dns))
            .build()
            .map_err(BuildError)?;
        Ok(WebhookClient {
            http,
            policy,
            resolver,
            connect_timeout: settings.connect_timeout,
            total_timeout: settings.total_timeout,
            max_response_bytes: settings.max_response_bytes,
        })
    }

    /// With the operating system's resolver.
    pub fn with_system_resolver(settings: ClientSettings) -> Result<WebhookClient, BuildError> {
        WebhookClient::new(settings, Arc::new(SystemResolver))
    }

    pub fn policy(&self) -> &SsrfPolicy {
        &self.policy
    }

    /// For creating or updating an endpoint: the URL is valid and its host
    /// resolves only to allowed addresses right now. (Sending checks again:
    /// see [`Self::post`].)
    pub async fn check(&self, raw_url: &str) -> Result<CheckedUrl, SsrfError> {
        let checked = self.policy.check_url(raw_url)?;
        if checked.ip_literal().is_some() {
            return Ok(checked);
        }
        let lookup = self.resolver.resolve(checked.host_str(), checked.port());
        let addrs = match tokio::time::timeout(self.connect_timeout, lookup).await {
            Ok(Ok(addrs)) => addrs,
            Ok(Err(_)) | Err(_) => return Err(SsrfError::Unresolvable),
        };
        self.policy.filter_resolved(&addrs)?;
        Ok(checked)
    }

    /// POSTs `body` to `url`. Never panics and never returns an error: the
    /// result, good or bad, is the [`Attempt`].
    pub async fn post(&self, url: &str, headers: HeaderMap, body: Bytes) -> Attempt {
        let started = Instant::now();
        let checked = match self.policy.check_url(url) {
            Ok(checked) => checked,
            Err(e) => return Attempt::failed(started, AttemptError::Ssrf(e)),
        };
        let deadline = started + self.total_timeout;
        let request = self.http.post(checked.into_url()).headers(headers).body(body).send();
        let response = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => return Attempt::failed(started, AttemptError::Timeout),
            Ok(Err(e)) => {
                let error = classify(&e);
                tracing::debug!(class = error.class(), error = ?e.without_url(), "webhook request failed");
                return Attempt::failed(started, error);
            }
            Ok(Ok(response)) => response,
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| parse_retry_after(v, OffsetDateTime::now_utc()));
        let read = read_limited(response, self.max_response_bytes, deadline).await;
        Attempt {
            status: Some(status),
            latency: started.elapsed(),
            response_excerpt: excerpt(&read.head, read.truncated || read.total > read.head.len()),
            retry_after,
            error: read.error,
        }
    }
}

impl WebhookClient {
    /// GETs `url` through the same guard (and the same time bound): the
    /// body of a 200 no longer than the response bound, or none. For
    /// documents others publish (a STIR certificate chain).
    pub async fn get(&self, url: &str) -> Option<Vec<u8>> {
        let checked = match self.policy.check_url(url) {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(error = %e, "a fetch was refused by the SSRF guard");
                return None;
            }
        };
        let deadline = Instant::now() + self.total_timeout;
        let response = match tokio::time::timeout_at(deadline, self.http.get(checked.into_url()).send()).await {
            Ok(Ok(r)) if r.status() == reqwest::StatusCode::OK => r,
            Ok(Ok(r)) => {
                tracing::debug!(status = r.status().as_u16(), "a fetch was answered with an error");
                return None;
            }
            Ok(Err(e)) => {
                tracing::debug!(class = classify(&e).class(), error = ?e.without_url(), "a fetch failed");
                return None;
            }
            Err(_) => return None,
        };
        let mut response = response;
        let mut body = Vec::new();
        loop {
            match tokio::time::timeout_at(deadline, response.chunk()).await {
                Ok(Ok(Some(chunk))) => {
                    if body.len() + chunk.len() > self.max_response_bytes {
                        return None;
                    }
                    body.extend_from_slice(&chunk);
                }
                Ok(Ok(None)) => return Some(body),
                Ok(Err(_)) | Err(_) => return None,
            }
        }
    }
}

/// What [`read_limited`] read.
struct BodyRead {
    /// The first ≤ EXCERPT_BYTES bytes.
    head: Vec<u8>,
    /// How many bytes were read (≤ the limit).
    total: usize,
    /// The body was longer than the limit (the rest was not read).
    truncated: bool,
    error: Option<AttemptError>,
}

/// Reads at most `max` bytes of the body, chunk by chunk, keeping the first
/// EXCERPT_BYTES. Reading past the excerpt lets a small body be drained so
/// the connection can go back to the pool; past `max` the response is
/// dropped, which closes the connection instead.
async fn read_limited(mut response: reqwest::Response, max: usize, deadline: Instant) -> BodyRead {
    let mut read = BodyRead { head: Vec::new(), total: 0, truncated: false, error: None };
    loop {
        let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
            Err(_) => {
                read.error = Some(AttemptError::Timeout);
                break;
            }
            Ok(Err(e)) => {
                read.error = Some(if e.is_timeout() { AttemptError::Timeout } else { AttemptError::Body });
                break;
            }
            Ok(Ok(None)) => break,
            Ok(Ok(Some(chunk))) => chunk,
        };
        let room = max - read.total;
        let take = chunk.len().min(room);
        let keep = take.min(EXCERPT_BYTES.saturating_sub(read.head.len()));
        read.head.extend_from_slice(&chunk[..keep]);
        read.total += take;
        if chunk.len() > room {
            read.truncated = true;
            break;
        }
    }
    drop(response);
    read
}

/// Lossy UTF-8 of at most EXCERPT_BYTES bytes (of the resulting string).
/// When the body went on, a character cut in half at the end is dropped
/// rather than shown as U+FFFD.
fn excerpt(head: &[u8], more_follows: bool) -> String {
    let mut end = head.len().min(EXCERPT_BYTES);
    if more_follows || end < head.len() {
        // Back up over a partial multi-byte sequence (at most 3 bytes).
        let mut back = end;
        while back > 0 && end - back < 3 && (head[back - 1] & 0xc0) == 0x80 {
            back -= 1;
        }
        if back > 0 && head[back - 1] >= 0xc0 {
            let lead = head[back - 1];
            let want = if lead >= 0xf0 {
                4
            } else if lead >= 0xe0 {
                3
            } else {
                2
            };
            if end - (back - 1) < want {
                end = back - 1;
            }
        }
    }
    let mut s = String::from_utf8_lossy(&head[..end]).into_owned();
    // Replacement characters are 3 bytes for 1 invalid byte: stay in bounds.
    if s.len() > EXCERPT_BYTES {
        let mut cut = EXCERPT_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

/// `Retry-After`: delay-seconds, or an HTTP-date (IMF-fixdate, RFC 850 or
/// asctime) relative to `now` (zero if in the past).
pub fn parse_retry_after(value: &http::HeaderValue, now: OffsetDateTime) -> Option<Duration> {
    let s = value.to_str().ok()?.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<u64>().ok().map(Duration::from_secs);
    }
    let at = parse_http_date(s)?;
    let secs = (at - now).whole_seconds();
    Some(Duration::from_secs(u64::try_from(secs).unwrap_or(0)))
}

fn parse_http_date(s: &str) -> Option<OffsetDateTime> {
    let parts: Vec<&str> = s.split_ascii_whitespace().collect();
    let (day, month, year, clock) = match parts.as_slice() {
        // Sun, 06 Nov 1994 08:49:37 GMT
        [wd, d, m, y, t, "GMT"] if wd.ends_with(',') && y.len() == 4 => (*d, *m, y.parse::<i32>().ok()?, *t),
        // Sunday, 06-Nov-94 08:49:37 GMT
        [wd, dmy, t, "GMT"] if wd.ends_with(',') => {
            let mut it = dmy.split('-');
            let (d, m, y) = (it.next()?, it.next()?, it.next()?);
            if it.next().is_some() || y.len() != 2 {
                return None;
            }
            // Two-digit years: RFC 9110 says more than 50 years in the future
            // means the past century; 70–99 → 19xx, 00–69 → 20xx is close enough.
            let y: i32 = y.parse().ok()?;
            (d, m, if y >= 70 { 1900 + y } else { 2000 + y }, *t)
        }
        // Sun Nov  6 08:49:37 1994
        [_wd, m, d, t, y] if y.len() == 4 => (*d, *m, y.parse::<i32>().ok()?, *t),
        _ => return None,
    };
    let month = match month {
        "Jan" => time::Month::January,
        "Feb" => time::Month::February,
        "Mar" => time::Month::March,
        "Apr" => time::Month::April,
        "May" => time::Month::May,
        "Jun" => time::Month::June,
        "Jul" => time::Month::July,
        "Aug" => time::Month::August,
        "Sep" => time::Month::September,
        "Oct" => time::Month::October,
        "Nov" => time::Month::November,
        "Dec" => time::Month::December,
        _ => return None,
    };
    if day.is_empty() || day.len() > 2 {
        return None;
    }
    let day: u8 = day.parse().ok()?;
    let mut hms = clock.split(':');
    let (h, m, sec) = (hms.next()?, hms.next()?, hms.next()?);
    if hms.next().is_some() || [h, m, sec].iter().any(|p| p.len() != 2) {
        return None;
    }
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let time = time::Time::from_hms(h.parse().ok()?, m.parse().ok()?, sec.parse().ok()?).ok()?;
    Some(time::PrimitiveDateTime::new(date, time).assume_utc())
}

/// Maps a reqwest error to a class, without keeping its text (it can hold
/// the URL, which may carry a token).
fn classify(err: &reqwest::Error) -> AttemptError {
    let mut source = err.source();
    let mut invalid_data = false;
    while let Some(e) = source {
        // Only the resolver (a host name) raises these here: what it
        // refused, and why, stays in the operator's log.
        if e.is::<SsrfError>() || e.is::<DnsFailure>() {
            return AttemptError::Dns;
        }
        if let Some(io) = e.downcast_ref::<io::Error>() {
            // rustls reports handshake and certificate failures as
            // InvalidData, which reqwest wraps in another io::Error (whose
            // source() skips the inner one).
            let mut io = Some(io);
            while let Some(inner) = io {
                invalid_data |= inner.kind() == io::ErrorKind::InvalidData;
                io = inner.get_ref().and_then(|i| i.downcast_ref::<io::Error>());
            }
        }
        source = e.source();
    }
    if err.is_timeout() {
        AttemptError::Timeout
    } else if err.is_connect() {
        if invalid_data {
            AttemptError::Tls
        } else {
            AttemptError::Connect
        }
    } else if err.is_body() || err.is_decode() {
        AttemptError::Body
    } else {
        AttemptError::Other
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{HashMap, VecDeque};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Mutex;

    use axum::extract::State;
    use axum::response::{IntoResponse, Response};
    use http::{StatusCode, Uri};
    use palisade_guard::ssrf::AddrClass;

    use super::*;

    #[derive(Default)]
    struct Seen {
        hits: AtomicUsize,
        target_hits: AtomicUsize,
        last: Mutex<Option<(HeaderMap, Bytes)>>,
    }

    impl Seen {
        fn hits(&self) -> usize {
            self.hits.load(Ordering::SeqCst)
        }
    }

    async fn receiver(State(seen): State<Arc<Seen>>, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
        seen.hits.fetch_add(1, Ordering::SeqCst);
        match uri.path() {
            "/ok" => {
                *seen.last.lock().unwrap() = Some((headers, body));
                (StatusCode::OK, "thanks").into_response()
            }
            "/redirect" => (StatusCode::FOUND, [(http::header::LOCATION, "/target")], "").into_response(),
            "/target" => {
                seen.target_hits.fetch_add(1, Ordering::SeqCst);
                StatusCode::OK.into_response()
            }
            "/big" => (StatusCode::OK, vec![b'a'; 1 << 20]).into_response(),
            "/slow" => {
                tokio::time::sleep(Duration::from_secs(10)).await;
                StatusCode::OK.into_response()
            }
            "/busy" => (StatusCode::SERVICE_UNAVAILABLE, [(http::header::RETRY_AFTER, "120")], "busy").into_response(),
            "/gone" => StatusCode::GONE.into_response(),
            _ => StatusCode::NOT_FOUND.into_response(),
        }
    }

    async fn spawn_receiver(ip: &str) -> (SocketAddr, Arc<Seen>) {
        serve(tokio::net::TcpListener::bind((ip, 0)).await.unwrap())
    }

    /// Answers from a script: each call takes the next answer, the last
    /// one repeats; unknown names fail.
    #[derive(Default)]
    struct ScriptedResolver {
        answers: Mutex<HashMap<String, VecDeque<Vec<IpAddr>>>>,
        calls: Mutex<Vec<String>>,
    }

    impl ScriptedResolver {
        fn with(entries: &[(&str, &[&[&str]])]) -> Arc<ScriptedResolver> {
            let r = ScriptedResolver::default();
            for (host, answers) in entries {
                let answers = answers.iter().map(|a| a.iter().map(|ip| ip.parse().unwrap()).collect()).collect();
                r.answers.lock().unwrap().insert(host.to_string(), answers);
            }
            Arc::new(r)
        }

        fn calls(&self) -> Vec<String> {
            self.calls.lock().unwrap().clone()
        }
    }

    impl Resolver for ScriptedResolver {
        fn resolve(&self, host: &str, _port: u16) -> Pin<Box<dyn Future<Output = io::Result<Vec<IpAddr>>> + Send>> {
            self.calls.lock().unwrap().push(host.to_owned());
            let answer = {
                let mut answers = self.answers.lock().unwrap();
                match answers.get_mut(host) {
                    Some(q) if q.len() > 1 => q.pop_front(),
                    Some(q) => q.front().cloned(),
                    None => None,
                }
            };
            Box::pin(async move { answer.ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no such host")) })
        }
    }

    fn settings(allowed: &[&str]) -> ClientSettings {
        ClientSettings {
            policy: SsrfPolicy {
                allowed_private: allowed.iter().map(|n| n.parse().unwrap()).collect(),
                require_https: false,
            },
            connect_timeout: Duration::from_secs(2),
            total_timeout: Duration::from_secs(5),
            ..ClientSettings::default()
        }
    }

    fn client(allowed: &[&str], resolver: Arc<dyn Resolver>) -> WebhookClient {
        WebhookClient::new(settings(allowed), resolver).unwrap()
    }

    fn loopback_client() -> WebhookClient {
        client(&["127.0.0.0/8"], Arc::new(ScriptedResolver::default()))
    }

    fn ssrf(attempt: &Attempt) -> &SsrfError {
        match &attempt.error {
            Some(AttemptError::Ssrf(e)) => e,
            other => panic!("expected an SSRF refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn client_delivers_with_headers_intact() {
        let (addr, seen) = spawn_receiver("127.0.0.1").await;
        let mut headers = HeaderMap::new();
        headers.insert("webhook-id", "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W".parse().unwrap());
        headers.insert("webhook-timestamp", "1674087231".parse().unwrap());
        headers.insert("webhook-signature", "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=".parse().unwrap());
        headers.insert(http::header::CONTENT_TYPE, "application/json".parse().unwrap());
        let body = Bytes::from_static(br#"{"type":"message.delivered"}"#);

        let attempt = loopback_client().post(&format!("http://{addr}/ok#frag"), headers.clone(), body.clone()).await;

        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.error, None);
        assert_eq!(attempt.response_excerpt, "thanks");
        assert_eq!(attempt.outcome(), Outcome::Delivered);
        assert!(!attempt.refused_by_ssrf());
        let (got, got_body) = seen.last.lock().unwrap().clone().unwrap();
        for (name, value) in &headers {
            assert_eq!(got.get(name), Some(value), "{name}");
        }
        assert!(got.get(http::header::USER_AGENT).unwrap().to_str().unwrap().starts_with("Palisade-Webhooks/"));
        assert_eq!(got_body, body);
    }

    #[tokio::test]
    async fn client_does_not_follow_redirects() {
        let (addr, seen) = spawn_receiver("127.0.0.1").await;
        let attempt = loopback_client().post(&format!("http://{addr}/redirect"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(302));
        assert_eq!(attempt.error, None);
        assert_eq!(attempt.outcome(), Outcome::Retry);
        assert_eq!(seen.hits(), 1);
        assert_eq!(seen.target_hits.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn client_reads_a_bounded_body() {
        let (addr, _seen) = spawn_receiver("127.0.0.1").await;
        let c = loopback_client();
        let attempt = c.post(&format!("http://{addr}/big"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(attempt.error, None);
        assert_eq!(attempt.outcome(), Outcome::Delivered);
        assert_eq!(attempt.response_excerpt, "a".repeat(EXCERPT_BYTES));

        // What read_limited itself does with the 1 MiB body.
        let response = c.http.post(format!("http://{addr}/big")).send().await.unwrap();
        let read = read_limited(response, 64 * 1024, Instant::now() + Duration::from_secs(5)).await;
        assert_eq!(read.total, 64 * 1024);
        assert!(read.truncated);
        assert_eq!(read.head.len(), EXCERPT_BYTES);
        assert_eq!(read.error, None);
    }

    #[tokio::test]
    async fn client_times_out_on_a_slow_receiver() {
        let (addr, seen) = spawn_receiver("127.0.0.1").await;
        let mut s = settings(&["127.0.0.0/8"]);
        s.total_timeout = Duration::from_millis(300);
        let c = WebhookClient::new(s, Arc::new(ScriptedResolver::default())).unwrap();
        let attempt = c.post(&format!("http://{addr}/slow"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, None);
        assert_eq!(attempt.error.as_ref().map(AttemptError::class), Some("timeout"));
        assert!(attempt.latency < Duration::from_secs(3), "{:?}", attempt.latency);
        assert_eq!(attempt.outcome(), Outcome::Retry);
        assert_eq!(seen.hits(), 1);
    }

    #[tokio::test]
    async fn client_refuses_ip_literals() {
        let (addr, seen) = spawn_receiver("127.0.0.1").await;
        let c = client(&[], Arc::new(ScriptedResolver::default()));
        for url in [
            format!("http://{addr}/ok"),
            format!("http://127.1:{}/ok", addr.port()),
            format!("http://2130706433:{}/ok", addr.port()),
            format!("http://[::ffff:127.0.0.1]:{}/ok", addr.port()),
            format!("http://localhost:{}/ok", addr.port()),
        ] {
            let attempt = c.post(&url, HeaderMap::new(), Bytes::new()).await;
            assert_eq!(ssrf(&attempt).class(), Some(AddrClass::Loopback), "{url}");
            assert_eq!(attempt.error.as_ref().unwrap().class(), "ssrf");
            assert_eq!(attempt.status, None);
            assert_eq!(attempt.outcome(), Outcome::Retry);
            assert!(attempt.refused_by_ssrf());
            assert!(c.check(&url).await.is_err(), "{url}");
        }
        assert_eq!(seen.hits(), 0);
        let attempt = c.post("http://169.254.169.254/latest/meta-data/", HeaderMap::new(), Bytes::new()).await;
        assert_eq!(ssrf(&attempt).to_string(), "the address 169.254.169.254 is link-local");
        let attempt = c.post("http://u:p@example.com/", HeaderMap::new(), Bytes::new()).await;
        assert_eq!(ssrf(&attempt), &SsrfError::Credentials);
    }

    #[tokio::test]
    async fn client_refuses_dns_rebinding() {
        let (addr, seen) = spawn_receiver("127.0.0.1").await;
        // Public (and never dialed) at create time, loopback at send time.
        let resolver = ScriptedResolver::with(&[("rebind.test", &[&["93.184.215.14"], &["127.0.0.1"]])]);
        let c = client(&[], resolver.clone());
        let url = format!("http://rebind.test:{}/ok", addr.port());

        let checked = c.check(&url).await.unwrap();
        assert_eq!(checked.host_str(), "rebind.test");
        let attempt = c.post(&url, HeaderMap::new(), Bytes::new()).await;

        // Reported as the name not resolving to a public address, nothing more.
        assert_eq!(attempt.error, Some(AttemptError::Dns));
        assert_eq!(attempt.status, None);
        assert_eq!(seen.hits(), 0);
        // One lookup for the check, exactly one for the connection.
        assert_eq!(resolver.calls(), ["rebind.test", "rebind.test"]);
    }

    /// A receiver on a second loopback address and, on the same port of
    /// 127.0.0.1, a decoy: what the system resolver would give for
    /// `localhost`. Linux routes all of 127/8; elsewhere ::1 serves.
    async fn receiver_and_decoy() -> (SocketAddr, Arc<Seen>, Arc<Seen>) {
        for _ in 0..20 {
            for ip in ["127.0.0.2", "::1"] {
                let Ok(probe) = tokio::net::TcpListener::bind((ip, 0)).await else { continue };
                let port = probe.local_addr().unwrap().port();
                drop(probe);
                let (Ok(named), Ok(decoy)) = (
                    tokio::net::TcpListener::bind((ip, port)).await,
                    tokio::net::TcpListener::bind(("127.0.0.1", port)).await,
                ) else {
                    continue;
                };
                let (addr, seen) = serve(named);
                let (_, decoy_seen) = serve(decoy);
                return (addr, seen, decoy_seen);
            }
        }
        panic!("this test needs a second loopback address (127.0.0.2 or ::1) to tell the checked address apart");
    }

    fn serve(listener: tokio::net::TcpListener) -> (SocketAddr, Arc<Seen>) {
        let seen = Arc::new(Seen::default());
        let app = axum::Router::new().fallback(receiver).with_state(seen.clone());
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (addr, seen)
    }

    #[tokio::test]
    async fn client_connects_to_the_checked_address() {
        // `localhost` is checked as the scripted resolver answers it: the
        // receiver's address. Dialing what the system says (127.0.0.1, the
        // decoy on the same port) would be a connection nobody checked.
        let (addr, seen, decoy) = receiver_and_decoy().await;
        let ip = addr.ip().to_string();
        let resolver = ScriptedResolver::with(&[("localhost", &[&[ip.as_str()]])]);
        let c = client(&["127.0.0.0/8", "::1/128"], resolver.clone());
        let url = format!("http://localhost:{}/ok", addr.port());

        assert!(c.check(&url).await.is_ok());
        let attempt = c.post(&url, HeaderMap::new(), Bytes::from_static(b"{}")).await;

        assert_eq!(attempt.status, Some(200), "{attempt:?}");
        assert_eq!(seen.hits(), 1);
        assert_eq!(decoy.hits(), 0, "the client dialed an address it did not check");
        let (got, _) = seen.last.lock().unwrap().clone().unwrap();
        assert_eq!(got.get(http::header::HOST).unwrap(), &format!("localhost:{}", addr.port()));

        // A second post reuses the pooled connection: no new lookup needed,
        // and it still lands on the same receiver.
        let before = resolver.calls().len();
        let attempt = c.post(&url, HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(200));
        assert_eq!(seen.hits(), 2);
        assert_eq!(decoy.hits(), 0);
        assert!(resolver.calls().len() <= before + 1);
    }

    #[tokio::test]
    async fn client_refuses_a_mixed_answer() {
        let resolver = ScriptedResolver::with(&[("mixed.test", &[&["93.184.215.14", "10.0.0.1"]])]);
        let c = client(&[], resolver);
        let refused = SsrfError::ResolvedForbidden { addr: "10.0.0.1".parse().unwrap(), class: AddrClass::Private };
        assert_eq!(c.check("http://mixed.test/hook").await, Err(refused));
        let attempt = c.post("http://mixed.test/hook", HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.error, Some(AttemptError::Dns));
        assert_eq!(attempt.error.unwrap().class(), "dns");
    }

    #[tokio::test]
    async fn client_reports_dns_and_connect_failures() {
        let resolver = ScriptedResolver::with(&[("empty.test", &[&[]])]);
        let c = client(&["127.0.0.0/8"], resolver);
        assert_eq!(c.check("http://nope.test/").await, Err(SsrfError::Unresolvable));
        assert_eq!(c.check("http://empty.test/").await, Err(SsrfError::Unresolvable));
        let attempt = c.post("http://nope.test/", HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.error, Some(AttemptError::Dns));
        let attempt = c.post("http://empty.test/", HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.error, Some(AttemptError::Dns));
        assert_eq!(attempt.outcome(), Outcome::Retry);

        // Nothing listens on a port we just released.
        let port = {
            let l = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await.unwrap();
            l.local_addr().unwrap().port()
        };
        let attempt = c.post(&format!("http://127.0.0.1:{port}/"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.error, Some(AttemptError::Connect));
        assert_eq!(attempt.error.as_ref().unwrap().to_string(), "could not connect to the endpoint");
    }

    #[tokio::test]
    async fn client_reports_tls_failures() {
        // https to a plain-HTTP receiver: the handshake fails.
        let (addr, _seen) = spawn_receiver("127.0.0.1").await;
        let mut s = settings(&["127.0.0.0/8"]);
        s.policy.require_https = true;
        let c = WebhookClient::new(s, Arc::new(ScriptedResolver::default())).unwrap();
        assert_eq!(
            c.post(&format!("http://{addr}/ok"), HeaderMap::new(), Bytes::new()).await.error,
            Some(AttemptError::Ssrf(SsrfError::Scheme { https_only: true }))
        );
        let attempt = c.post(&format!("https://{addr}/ok"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.error, Some(AttemptError::Tls), "{attempt:?}");
        assert_eq!(attempt.error.unwrap().class(), "tls");
    }

    #[tokio::test]
    async fn client_reads_retry_after_and_gone() {
        let (addr, _seen) = spawn_receiver("127.0.0.1").await;
        let c = loopback_client();
        let attempt = c.post(&format!("http://{addr}/busy"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(503));
        assert_eq!(attempt.retry_after, Some(Duration::from_secs(120)));
        assert_eq!(attempt.response_excerpt, "busy");
        assert_eq!(attempt.outcome(), Outcome::Retry);
        let attempt = c.post(&format!("http://{addr}/gone"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(410));
        assert_eq!(attempt.outcome(), Outcome::Gone);
        let attempt = c.post(&format!("http://{addr}/missing"), HeaderMap::new(), Bytes::new()).await;
        assert_eq!(attempt.status, Some(404));
        assert_eq!(attempt.outcome(), Outcome::Retry);
    }

    #[test]
    fn client_retry_after_parsing() {
        let now = time::macros::datetime!(1994-11-06 08:49:00 UTC);
        let parse = |s: &str| parse_retry_after(&http::HeaderValue::from_str(s).unwrap(), now);
        assert_eq!(parse("120"), Some(Duration::from_secs(120)));
        assert_eq!(parse(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse("Sun, 06 Nov 1994 08:49:37 GMT"), Some(Duration::from_secs(37)));
        assert_eq!(parse("Sunday, 06-Nov-94 08:49:37 GMT"), Some(Duration::from_secs(37)));
        assert_eq!(parse("Sun Nov  6 08:49:37 1994"), Some(Duration::from_secs(37)));
        assert_eq!(parse("Sun, 06 Nov 1994 09:49:00 GMT"), Some(Duration::from_secs(3600)));
        // In the past: retry now.
        assert_eq!(parse("Sat, 05 Nov 1994 08:49:37 GMT"), Some(Duration::ZERO));
        for bad in [
            "",
            "-5",
            "1.5",
            "soon",
            "99999999999999999999999",
            "Sun, 06 Nov 1994 08:49:37 PST",
            "Sun, 31 Feb 1994 08:49:37 GMT",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:49:37 GMT",
            "Sun, 06 Nov 1994 8:49:37 GMT",
        ] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn client_outcomes() {
        let at = |status: Option<u16>, error: Option<AttemptError>| Attempt {
            status,
            latency: Duration::ZERO,
            response_excerpt: String::new(),
            retry_after: None,
            error,
        };
        for s in [200, 201, 202, 204, 299] {
            assert_eq!(at(Some(s), None).outcome(), Outcome::Delivered, "{s}");
        }
        // A 2xx whose body then timed out was still delivered.
        assert_eq!(at(Some(200), Some(AttemptError::Timeout)).outcome(), Outcome::Delivered);
        assert_eq!(at(Some(410), None).outcome(), Outcome::Gone);
        for s in [100, 301, 302, 307, 400, 401, 404, 408, 413, 429, 500, 502, 503] {
            assert_eq!(at(Some(s), None).outcome(), Outcome::Retry, "{s}");
        }
        for e in
            [AttemptError::Dns, AttemptError::Connect, AttemptError::Timeout, AttemptError::Tls, AttemptError::Other]
        {
            assert_eq!(at(None, Some(e)).outcome(), Outcome::Retry);
        }
        let refused = at(None, Some(AttemptError::Ssrf(SsrfError::Unresolvable)));
        assert_eq!(refused.outcome(), Outcome::Retry);
        assert!(refused.refused_by_ssrf());
        let classes: Vec<_> = [
            AttemptError::Ssrf(SsrfError::InvalidUrl),
            AttemptError::Dns,
            AttemptError::Connect,
            AttemptError::Timeout,
            AttemptError::Tls,
            AttemptError::Body,
            AttemptError::Other,
        ]
        .iter()
        .map(AttemptError::class)
        .collect();
        assert_eq!(classes, ["ssrf", "dns", "connect", "timeout", "tls", "response_body", "other"]);
    }

    #[test]
    fn client_excerpts() {
        assert_eq!(excerpt(b"hello", false), "hello");
        assert_eq!(excerpt(b"", false), "");
        // Invalid UTF-8 is replaced.
        assert_eq!(excerpt(b"a\xffb", false), "a\u{fffd}b");
        // A character cut at the end of a longer body is dropped.
        let mut head = vec![b'a'; EXCERPT_BYTES - 1];
        head.extend_from_slice("é".as_bytes());
        let head = &head[..EXCERPT_BYTES];
        let s = excerpt(head, true);
        assert_eq!(s, "a".repeat(EXCERPT_BYTES - 1));
        // A complete 2-byte character at the very end is kept.
        let mut head = vec![b'a'; EXCERPT_BYTES - 2];
        head.extend_from_slice("é".as_bytes());
        assert_eq!(excerpt(&head, true).len(), EXCERPT_BYTES);
        // All invalid: still ≤ 1 KiB once replaced.
        let s = excerpt(&[0xff; EXCERPT_BYTES], false);
        assert!(s.len() <= EXCERPT_BYTES && s.chars().all(|c| c == '\u{fffd}'));
    }
}
