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
    /// How long a failed fetch is not tried again.
    pub failed_fetch_secs: i64,
    pub max_cached: usize,
    /// Only `https` certificate URLs (production).
    pub require_https: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            iat_window_secs: 60,
            cert_cache_secs: 3600,
            failed_fetch_secs: 30,
            max_cached: 1000,
            require_https: true,
        }
    }
}

struct Cached {
    pem: Option<Arc<Vec<u8>>>,
    until_ms: i64,
}

pub struct Verifier {
    anchors: Anchors,
    fetch: Arc<dyn Fetch>,
    state: Arc<dyn AbuseState>,
    settings: Settings,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Verifier {
    pub fn new(anchors: Anchors, fetch: Arc<dyn Fetch>, state: Arc<dyn AbuseState>, settings: Settings) -> Verifier {
        Verifier { anchors, fetch, state, settings, cache: Mutex::default() }
    }

    /// The verification of a request's `Identity` headers, for a call from
    /// `from` (the From header's number, if any) to `to` (the dialed one).
    pub async fn verify(&self, identities: &[&str], from: Option<&str>, to: &str, now_ms: i64) -> Verification {
        let mut first = None;
        for value in identities.iter().take(MAX_HEADERS) {
            match self.verify_one(value, from, to, now_ms).await {
                Ok(attestation) => return Verification::passed(attestation),
                Err(why) => {
                    first.get_or_insert(why);
                }
            }
        }
        first.map_or_else(Verification::no_signature, Verification::failed)
    }

    async fn verify_one(&self, value: &str, from: Option<&str>, to: &str, now_ms: i64) -> Result<Attestation, Failure> {
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
        let pem = self.certificate(h.info, now_ms).await.ok_or(Failure::CertUnavailable)?;
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

    /// The certificate chain at `url`: kept a while, a failed fetch too.
    async fn certificate(&self, url: &str, now_ms: i64) -> Option<Arc<Vec<u8>>> {
        if self.settings.require_https && !url.starts_with("https://") {
            return None;
        }
        if let Some(c) = self.cache().get(url).filter(|c| c.until_ms > now_ms) {
            return c.pem.clone();
        }
        let pem = self.fetch.fetch(url).await.map(Arc::new);
        let keep_secs = if pem.is_some() { self.settings.cert_cache_secs } else { self.settings.failed_fetch_secs };
        let until_ms = now_ms.saturating_add(keep_secs.saturating_mul(1000));
        let mut cache = self.cache();
        if cache.len() >= self.settings.max_cached {
            cache.retain(|_, c| c.until_ms > now_ms);
        }
        if cache.len() >= self.settings.max_cached {
            // Full of live entries: one goes (any: a fetch brings it back).
            if let Some(k) = cache.keys().next().cloned() {
                cache.remove(&k);
            }
        }
        cache.insert(url.to_owned(), Cached { pem: pem.clone(), until_ms });
        pem
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        self.cache.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
