//! Calls coming in: is the caller's number vouched for? Cheap checks
//! first (the header, the PASSporT, `iat`, the numbers), then the
//! certificate (fetched through [`Fetch`], kept a while), its chain and
//! TNAuthList, the signature, and last a replay: a PASSporT is believed
//! once, on every instance (through the shared abuse state).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use palisade_guard::limits::{Key, Kind};
use palisade_guard::state::AbuseState;

use crate::certs::{self, Anchors};
use crate::passport::{self, Attestation};
use crate::{header, tn, Failure, Verification};

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where certificates come from: the binary's outbound HTTP client, behind
/// the SSRF guard, bounded in size and time.
pub trait Fetch: Send + Sync + 'static {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFut<'a, Option<Vec<u8>>>;
}

/// Identity headers read per request; more are ignored.
pub const MAX_HEADERS: usize = 4;

#[derive(Debug, Clone)]
pub struct Settings {
    /// How far `iat` may be from now.
    pub iat_window_secs: i64,
    /// How long a fetched certificate is kept (its chain is checked anew at
    /// each use).
    pub cert_cache_secs: i64,
    /// How long a host whose fetch failed is not asked again.
    pub failed_fetch_secs: i64,
    pub max_cached: usize,
    /// Only `https` certificate URLs (production).
    pub require_https: bool,
    /// Fetches in flight at once, on this instance; past it a certificate
    /// not kept already is unavailable.
    pub max_concurrent_fetches: usize,
    /// The only hosts certificates are fetched from (the STI-CAs' and
    /// carriers' repositories); empty: any host the SSRF guard allows.
    pub allowed_hosts: Vec<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            iat_window_secs: 60,
            cert_cache_secs: 3600,
            failed_fetch_secs: 30,
            max_cached: 1000,
            require_https: true,
            max_concurrent_fetches: 16,
            allowed_hosts: Vec::new(),
        }
    }
}

struct Cached {
    pem: Arc<Vec<u8>>,
    until_ms: i64,
}

pub struct Verifier {
    anchors: Anchors,
    fetch: Arc<dyn Fetch>,
    state: Arc<dyn AbuseState>,
    settings: Settings,
    /// Certificates fetched, by URL.
    cache: Mutex<HashMap<String, Cached>>,
    /// Hosts whose fetch failed lately, until when: a slow or broken host
    /// costs one fetch per `failed_fetch_secs`, whatever its URLs.
    failed: Mutex<HashMap<String, i64>>,
    fetches: tokio::sync::Semaphore,
}

impl Verifier {
    pub fn new(anchors: Anchors, fetch: Arc<dyn Fetch>, state: Arc<dyn AbuseState>, settings: Settings) -> Verifier {
        let fetches = tokio::sync::Semaphore::new(settings.max_concurrent_fetches);
        Verifier { anchors, fetch, state, settings, cache: Mutex::default(), failed: Mutex::default(), fetches }
    }

    /// The verification of a request's `Identity` headers, for a call from
    /// `from` (the From header's number, if any) to `to` (the dialed one).
    /// At most one certificate is fetched per request (the others must be
    /// kept already), so a request costs at most one fetch's time.
    pub async fn verify(&self, identities: &[&str], from: Option<&str>, to: &str, now_ms: i64) -> Verification {
        let mut first = None;
        let mut fetched = false;
        for value in identities.iter().take(MAX_HEADERS) {
            match self.verify_one(value, from, to, now_ms, &mut fetched).await {
                Ok(attestation) => return Verification::passed(attestation),
                Err(why) => {
                    first.get_or_insert(why);
                }
            }
        }
        first.map_or_else(Verification::no_signature, Verification::failed)
    }

    async fn verify_one(
        &self,
        value: &str,
        from: Option<&str>,
        to: &str,
        now_ms: i64,
        fetched: &mut bool,
    ) -> Result<Attestation, Failure> {
        let h = header::parse(value)?;
        if h.alg.is_some_and(|a| a != passport::ALG) || h.ppt.is_some_and(|p| p != passport::PPT) {
            return Err(Failure::Unsupported);
        }
        let d = passport::decode(h.jws)?;
        if d.x5u != h.info {
            return Err(Failure::InfoMismatch);
        }
        let window_ms = self.settings.iat_window_secs.saturating_mul(1000);
        let iat_ms = d.claims.iat.saturating_mul(1000);
        if now_ms.abs_diff(iat_ms) > window_ms.unsigned_abs() {
            return Err(Failure::Stale);
        }
        if from.and_then(tn::canonical).as_deref() != Some(d.claims.orig.tn.as_str()) {
            return Err(Failure::OrigMismatch);
        }
        let dest = tn::canonical(to).ok_or(Failure::DestMismatch)?;
        if !d.claims.dest.tn.contains(&dest) {
            return Err(Failure::DestMismatch);
        }
        // Nothing is trusted: no certificate is worth fetching.
        if self.anchors.is_empty() {
            return Err(Failure::Untrusted);
        }
        let pem = self.certificate(h.info, now_ms, fetched).await.ok_or(Failure::CertUnavailable)?;
        let signer = certs::check_chain(&pem, &self.anchors, now_ms)?;
        if !signer.tns.covers(&d.claims.orig.tn) {
            return Err(Failure::NotCovered);
        }
        if !d.signed_by(&signer.point) {
            return Err(Failure::BadSignature);
        }
        // Believed once: the same PASSporT again (its origid, iat and
        // numbers, from the same certificate) is a replay. Remembered until
        // it would be stale anyway.
        let seen = format!("{}\n{}\n{}\n{}\n{}", d.x5u, d.claims.origid, d.claims.iat, d.claims.orig.tn, dest);
        let key = Key::text(Kind::StirPassport, &seen);
        let until = iat_ms.saturating_add(window_ms).saturating_add(1000);
        match self.state.consume_once(key.id, key, now_ms, until).await {
            Ok(true) => Ok(d.attestation),
            Ok(false) => Err(Failure::Replayed),
            Err(_) => Err(Failure::Unverifiable),
        }
    }

    /// The certificate chain at `url`: kept a while. Fetched only if this
    /// request fetched nothing yet, from an allowed host that did not fail
    /// lately, within the instance's bound on fetches in flight.
    async fn certificate(&self, url: &str, now_ms: i64, fetched: &mut bool) -> Option<Arc<Vec<u8>>> {
        if self.settings.require_https && !url.starts_with("https://") {
            return None;
        }
        if let Some(c) = self.cache().get(url).filter(|c| c.until_ms > now_ms) {
            return Some(c.pem.clone());
        }
        let host = url::Url::parse(url).ok()?.host_str()?.to_ascii_lowercase();
        let allowed = &self.settings.allowed_hosts;
        if *fetched || (!allowed.is_empty() && !allowed.iter().any(|h| h.eq_ignore_ascii_case(&host))) {
            return None;
        }
        if self.failed().get(&host).is_some_and(|until| *until > now_ms) {
            return None;
        }
        let _permit = self.fetches.try_acquire().ok()?;
        *fetched = true;
        let Some(pem) = self.fetch.fetch(url).await.map(Arc::new) else {
            let mut failed = self.failed();
            if failed.len() >= self.settings.max_cached {
                failed.retain(|_, until| *until > now_ms);
            }
            if failed.len() < self.settings.max_cached {
                failed.insert(host, now_ms.saturating_add(self.settings.failed_fetch_secs.saturating_mul(1000)));
            }
            return None;
        };
        let until_ms = now_ms.saturating_add(self.settings.cert_cache_secs.saturating_mul(1000));
        let mut cache = self.cache();
        if cache.len() >= self.settings.max_cached {
            cache.retain(|_, c| c.until_ms > now_ms);
        }
        if cache.len() >= self.settings.max_cached {
            // Full of live entries: the one that would expire first goes.
            if let Some(k) = cache.iter().min_by_key(|(_, c)| c.until_ms).map(|(k, _)| k.clone()) {
                cache.remove(&k);
            }
        }
        cache.insert(url.to_owned(), Cached { pem: pem.clone(), until_ms });
        Some(pem)
    }

    fn failed(&self) -> std::sync::MutexGuard<'_, HashMap<String, i64>> {
        self.failed.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
