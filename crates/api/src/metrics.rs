//! Prometheus metrics. Served by the separate metrics listener
//! (`metrics.listen`), never on the API port.

use std::collections::HashMap;
use std::sync::{PoisonError, RwLock};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: &'static str,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
    auth_failures: Family<KindLabels, Counter>,
    rate_limited: Family<KindLabels, Counter>,
    waf_refusals: Family<KindLabels, Counter>,
    lockouts: Family<KindLabels, Counter>,
    bursts: Family<KindLabels, Counter>,
    connections_cut: Family<KindLabels, Counter>,
    redis_failures: Counter,
    redis_degraded: Gauge,
    credential_cache: Family<KindLabels, Counter>,
    media_packets: Family<KindLabels, Counter>,
    mail: Family<KindLabels, Counter>,
    /// Route templates as static strings, so labels cost no allocation.
    /// Only matched routes arrive here, so the set is the router's.
    routes: RwLock<HashMap<Box<str>, &'static str>>,
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("palisade");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            // 100 µs to about 6.5 s.
            Histogram::new(exponential_buckets(0.0001, 2.0, 17))
        });
        let [auth_failures, rate_limited, waf_refusals, lockouts, bursts, connections_cut] =
            std::array::from_fn(|_| Family::<KindLabels, Counter>::default());
        registry.register("http_requests", "HTTP requests by route and status", requests.clone());
        registry.register("http_request_duration_seconds", "Time to answer a request", latency.clone());
        registry.register("auth_failures", "Failed authentications by kind", auth_failures.clone());
        registry.register("rate_limited", "Requests refused by a rate limit, by limit", rate_limited.clone());
        registry.register("waf_refusals", "Requests refused by a WAF rule or block, by rule", waf_refusals.clone());
        registry.register("lockouts", "Locks and blocks started, by kind", lockouts.clone());
        registry.register("bursts_detected", "Request spikes detected, by scope", bursts.clone());
        registry.register(
            "connections_cut",
            "Connections refused or closed by a connection limit, by limit",
            connections_cut.clone(),
        );
        let (redis_failures, redis_degraded) = (Counter::default(), Gauge::default());
        registry.register("redis_failures", "Calls to Redis that failed or timed out", redis_failures.clone());
        registry.register(
            "redis_degraded",
            "1 while Redis is unreachable and the failure policy applies",
            redis_degraded.clone(),
        );
        let credential_cache = Family::<KindLabels, Counter>::default();
        registry.register(
            "credential_cache",
            "Verified-credential cache: hit, miss, invalidation (a tenant's entries dropped), flush (all dropped)",
            credential_cache.clone(),
        );
        let media_packets = Family::<KindLabels, Counter>::default();
        registry.register(
            "media_packets",
            "Media packets at the sandbox's SRTP echo: echoed, or dropped (not_srtp: plain RTP, forged or replayed)",
            media_packets.clone(),
        );
        let mail = Family::<KindLabels, Counter>::default();
        registry.register(
            "mail",
            "Mail through the SMTP relay: sent, failed (an attempt, tried again later), dropped (given up), expired",
            mail.clone(),
        );
        let routes = RwLock::default();
        Metrics {
            registry,
            requests,
            latency,
            auth_failures,
            rate_limited,
            waf_refusals,
            lockouts,
            bursts,
            connections_cut,
            redis_failures,
            redis_degraded,
            credential_cache,
            media_packets,
            mail,
            routes,
        }
    }

    fn route(&self, route: Option<&str>) -> &'static str {
        let Some(route) = route else { return "unmatched" };
        if let Some(r) = self.routes.read().unwrap_or_else(PoisonError::into_inner).get(route) {
            return r;
        }
        let mut routes = self.routes.write().unwrap_or_else(PoisonError::into_inner);
        routes.entry(route.into()).or_insert_with(|| Box::leak(route.into()))
    }

    pub fn request(&self, method: &http::Method, route: Option<&str>, status: u16, seconds: f64) {
        let route = self.route(route);
        let method = match *method {
            http::Method::GET => "GET",
            http::Method::POST => "POST",
            http::Method::PUT => "PUT",
            http::Method::PATCH => "PATCH",
            http::Method::DELETE => "DELETE",
            http::Method::HEAD => "HEAD",
            http::Method::OPTIONS => "OPTIONS",
            _ => "other",
        };
        self.requests.get_or_create(&RequestLabels { method, route, status }).inc();
        self.latency.get_or_create(&RouteLabels { route }).observe(seconds);
    }

    pub fn auth_failure(&self, kind: &'static str) {
        self.auth_failures.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn rate_limited(&self, limit: &'static str) {
        self.rate_limited.get_or_create(&KindLabels { kind: limit }).inc();
    }

    pub fn waf_refusal(&self, rule: &'static str) {
        self.waf_refusals.get_or_create(&KindLabels { kind: rule }).inc();
    }

    pub fn lockout(&self, kind: &'static str) {
        self.lockouts.get_or_create(&KindLabels { kind }).inc();
    }

    pub fn burst(&self, scope: &'static str) {
        self.bursts.get_or_create(&KindLabels { kind: scope }).inc();
    }

    /// `max_connections`, `max_connections_per_address`, `header_timeout`,
    /// `idle_timeout`, `body_timeout` or `handshake_timeout`.
    pub fn connection_cut(&self, limit: &'static str) {
        self.connections_cut.get_or_create(&KindLabels { kind: limit }).inc();
    }

    pub fn redis_failure(&self) {
        self.redis_failures.inc();
    }

    pub fn redis_degraded(&self, degraded: bool) {
        self.redis_degraded.set(i64::from(degraded));
    }

    /// The cache's counters (it counts without a look-up per request).
    pub fn credential_cache_counters(&self) -> crate::credentials::cache::CacheCounters {
        let c = |kind| self.credential_cache.get_or_create(&KindLabels { kind }).clone();
        crate::credentials::cache::CacheCounters {
            hits: c("hit"),
            misses: c("miss"),
            invalidations: c("invalidation"),
            flushes: c("flush"),
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl palisade_comms::srtp_echo::MediaEvents for Metrics {
    fn packet(&self, outcome: &'static str) {
        self.media_packets.get_or_create(&KindLabels { kind: outcome }).inc();
    }
}

impl palisade_mail::relay::MailEvents for Metrics {
    fn mail(&self, outcome: &'static str) {
        self.mail.get_or_create(&KindLabels { kind: outcome }).inc();
    }
}

/// The content type of [`Metrics::render`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The router of the metrics listener.
pub fn router(metrics: std::sync::Arc<Metrics>) -> axum::Router {
    axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let metrics = metrics.clone();
            async move { ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], metrics.render()) }
        }),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_with_labels() {
        let m = Metrics::new();
        m.request(&http::Method::GET, Some("/v1/me"), 200, 0.002);
        m.request(&http::Method::GET, None, 404, 0.001);
        m.rate_limited("key");
        m.redis_failure();
        m.redis_degraded(true);
        let text = m.render();
        assert!(text.contains("palisade_redis_failures_total 1"), "{text}");
        assert!(text.contains("palisade_redis_degraded 1"), "{text}");
        assert!(text.contains(r#"palisade_http_requests_total{method="GET",route="/v1/me",status="200"} 1"#), "{text}");
        assert!(text.contains(r#"route="unmatched""#), "{text}");
        assert!(text.contains(r#"palisade_rate_limited_total{kind="key"} 1"#), "{text}");
        assert!(text.contains("palisade_http_request_duration_seconds_bucket"), "{text}");
    }
}
