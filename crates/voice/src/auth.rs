//! Digest authentication of SIP requests, with its abuse rules: each
//! `(nonce, nc)` accepted once on every instance, an address blocked after
//! `threshold` failures in a row (longer for each further block of the
//! day), and a username under attack from many addresses open only to the
//! addresses it last authenticated from.
//!
//! The SIP edge turns a [`Outcome`] into 401/407, 403 or 503; the rules
//! are all here.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use palisade_digest::{Algorithm, Credentials, NonceKey, Realm, Verdict};
use palisade_guard::limits::{ip_id, Key, Kind};
use palisade_guard::state::{AbuseState, Attempt, BlockCheck, Decide, StrikeRule};
use palisade_seal::Sealer;
use palisade_store::Db;

use crate::credentials::DigestUser;

/// How long an address a device authenticated from stays trusted for its
/// username (exempt from the username's block, not from its own).
const TRUST_MS: i64 = 30 * 24 * 3600 * 1000;
/// Blocks of one address counted for escalation within this window, and
/// failures in a row counted within it (a success resets them).
const DAY_MS: i64 = 24 * 3600 * 1000;

/// The brute-force rules (`sip.bruteforce`).
#[derive(Debug, Clone, Copy)]
pub struct Rules {
    pub threshold: u32,
    pub block_ms: i64,
    pub escalation_factor: u32,
    pub max_block_ms: i64,
    pub per_username_threshold: u32,
    pub per_username_window_ms: i64,
}

/// What the digest check needs from the running server.
pub struct DigestAuth {
    pub db: Db,
    pub sealer: Arc<Sealer>,
    pub nonces: NonceKey,
    /// Offered in this order.
    pub algorithms: Vec<Algorithm>,
    pub nonce_ttl_ms: u64,
    /// Realms are `<tenant id>.<domain>`.
    pub domain: String,
    pub state: Arc<dyn AbuseState>,
    pub rules: Rules,
    pub stats: Stats,
}

/// Counters for metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub failures: AtomicU64,
    pub blocks: AtomicU64,
    pub replays: AtomicU64,
}

#[derive(Debug)]
pub enum Outcome {
    /// The response is right, fresh and used for the first time.
    Authenticated(Box<DigestUser>),
    /// Ask (again) for credentials: these challenge header values, the
    /// preferred algorithm first. `failed` when this was a failed attempt.
    Challenge { challenges: Vec<String>, failed: bool },
    /// The address (or the username, from this address) is blocked: 403.
    /// `started` is set when this very failure started the block (audit
    /// it once).
    Blocked { until_ms: i64, started: Option<Started> },
    /// The request names no realm of ours: 404.
    UnknownRealm,
    /// The shared state cannot be reached; refusing is the failure policy.
    Unavailable,
}

/// A block this attempt started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Started {
    pub until_ms: i64,
    /// Which block of the day this is for the address (1 = first).
    pub nth: u32,
}

/// The request as the edge parsed it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// `REGISTER`, `INVITE`, ...
    pub method: &'a str,
    /// The Request-URI: for anything but a REGISTER the response's `uri`
    /// must be it, so a captured answer cannot be replayed for another
    /// target.
    pub uri: &'a str,
    /// The host of the address of record (To of a REGISTER, From of an
    /// INVITE): names the realm asked for.
    pub aor_host: &'a str,
    /// The `Authorization` (or `Proxy-Authorization`) header value.
    pub authorization: Option<&'a str>,
    pub source: IpAddr,
}

impl DigestAuth {
    fn address(&self, ip: IpAddr) -> (u128, Key) {
        let id = ip_id(ip);
        (id, Key::new(Kind::SipAuth, id))
    }

    fn user_keys(username: &str, ip: IpAddr) -> (u128, Key, Key) {
        let user = Key::text(Kind::SipAuthUser, username);
        let trust = Key::text(Kind::LoginTrust, &format!("sip\n{username}\n{:032x}", ip_id(ip)));
        (user.id, user, trust)
    }

    /// The realm named by `host`, if it is one of ours (`<tenant>.<domain>`).
    fn realm_of<'h>(&self, host: &'h str) -> Option<&'h str> {
        let host = host.strip_suffix('.').unwrap_or(host);
        let tenant = host.strip_suffix(self.domain.as_str())?.strip_suffix('.')?;
        uuid::Uuid::parse_str(tenant).ok().filter(|u| u.hyphenated().to_string() == tenant)?;
        Some(host)
    }

    fn challenges(&self, realm: &str, stale: bool, now_ms: i64) -> Vec<String> {
        match Realm::new(&self.nonces, realm, &self.algorithms, self.nonce_ttl_ms) {
            Some(r) => r.challenges(stale, u64::try_from(now_ms).unwrap_or(0)),
            None => Vec::new(),
        }
    }

    /// Authenticates one request.
    pub async fn authenticate(&self, req: &Request<'_>, now_ms: i64) -> Outcome {
        match self.run(req, now_ms).await {
            Ok(o) => o,
            Err(Unreachable) => Outcome::Unavailable,
        }
    }

    async fn run(&self, req: &Request<'_>, now_ms: i64) -> Result<Outcome, Unreachable> {
        let Some(realm) = self.realm_of(req.aor_host) else {
            return Ok(Outcome::UnknownRealm);
        };
        let (part, addr) = self.address(req.source);
        let Some(header) = req.authorization else {
            // Asking is not failing, but a blocked address is told so.
            let blocks = [BlockCheck { key: addr, refuses: true }];
            let v = self
                .state
                .decide(Decide { partition: part, now_ms, blocks: &blocks, buckets: &[], notice_ms: 0 })
                .await
                .map_err(|_| Unreachable)?;
            if let Some((_, until_ms)) = v.blocked {
                return Ok(Outcome::Blocked { until_ms, started: None });
            }
            return Ok(Outcome::Challenge { challenges: self.challenges(realm, false, now_ms), failed: false });
        };
        // Counted before the outcome is known: guesses sent in parallel
        // cannot get past the threshold.
        let rule = StrikeRule { threshold: self.rules.threshold, window_ms: DAY_MS, block_ms: self.rules.block_ms };
        let started_block = match self.state.attempt(part, addr, rule, now_ms).await.map_err(|_| Unreachable)? {
            Attempt::Locked { until } => return Ok(Outcome::Blocked { until_ms: until, started: None }),
            Attempt::Counted(o) => o.blocked_until,
        };
        let creds = match palisade_digest::parse(header) {
            Ok(c) => c,
            Err(_) => return self.failed(req, None, started_block, realm, now_ms).await,
        };
        // A username under attack answers only the addresses it trusts.
        let (upart, ukey, trust) = Self::user_keys(&creds.username, req.source);
        let checks = [BlockCheck { key: ukey, refuses: false }, BlockCheck { key: trust, refuses: false }];
        let v = self
            .state
            .decide(Decide { partition: upart, now_ms, blocks: &checks, buckets: &[], notice_ms: 0 })
            .await
            .map_err(|_| Unreachable)?;
        if v.block_active(0) && !v.block_active(1) {
            // The username is closed to new addresses: refused, but not
            // counted against this address (it may be the owner's new one).
            self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)?;
            return Ok(Outcome::Blocked { until_ms: now_ms, started: None });
        }
        // For a call the target is in the Request-URI: an answer is good
        // for its own only. (A REGISTER's target is its To, checked by the
        // edge; and some clients, SIPp among them, answer it with the
        // registrar's address as `uri`.)
        if req.method != "REGISTER" && creds.uri != req.uri {
            return self.failed(req, Some(&creds), started_block, realm, now_ms).await;
        }
        let user = match crate::credentials::for_digest(&self.db, &self.sealer, &creds.username).await {
            Ok(u) => u.filter(|u| u.realm == realm),
            Err(e) => {
                // Our fault, not the caller's: no strike, no answer yet.
                tracing::error!(target: "palisade::sip", error = %e, "SIP credential lookup failed");
                self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)?;
                return Ok(Outcome::Unavailable);
            }
        };
        let Some(realm_rules) = Realm::new(&self.nonces, realm, &self.algorithms, self.nonce_ttl_ms) else {
            return Ok(Outcome::UnknownRealm);
        };
        let now = u64::try_from(now_ms).unwrap_or(0);
        let ha1 = user.as_ref().map(|u| u.ha1(creds.algorithm));
        match realm_rules.verify(&creds, req.method, ha1, now) {
            Verdict::Accepted { replay_until_ms } => {
                let once = Key::text(Kind::SipNonce, &format!("{}\n{}", creds.nonce, creds.nc));
                let until = i64::try_from(replay_until_ms).unwrap_or(i64::MAX);
                let partition = Key::text(Kind::SipNonce, &creds.nonce).id;
                if !self.state.consume_once(partition, once, now_ms, until).await.map_err(|_| Unreachable)? {
                    self.stats.replays.fetch_add(1, Ordering::Relaxed);
                    return self.failed(req, Some(&creds), started_block, realm, now_ms).await;
                }
                self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)?;
                // Best effort: without it the address is only not exempt
                // from a block of its username.
                let _ = self.state.mark(upart, trust, now_ms, now_ms.saturating_add(TRUST_MS)).await;
                match user {
                    Some(u) => Ok(Outcome::Authenticated(Box::new(u))),
                    None => Ok(Outcome::Unavailable),
                }
            }
            Verdict::Stale => {
                // The password is right; only the nonce is old (RFC 7616
                // §3.3): not a failure.
                self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)?;
                Ok(Outcome::Challenge { challenges: self.challenges(realm, true, now_ms), failed: false })
            }
            Verdict::Refused(_) => self.failed(req, Some(&creds), started_block, realm, now_ms).await,
        }
    }

    /// A failed attempt (already counted against the address): counts
    /// against the username too, escalates a block it started.
    async fn failed(
        &self,
        req: &Request<'_>,
        creds: Option<&Credentials>,
        started_block: Option<i64>,
        realm: &str,
        now_ms: i64,
    ) -> Result<Outcome, Unreachable> {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        if let Some(c) = creds {
            let (upart, ukey, _) = Self::user_keys(&c.username, req.source);
            let rule = StrikeRule {
                threshold: self.rules.per_username_threshold,
                window_ms: self.rules.per_username_window_ms,
                block_ms: self.rules.per_username_window_ms,
            };
            self.state.strike(upart, ukey, rule, now_ms).await.map_err(|_| Unreachable)?;
        }
        let Some(until) = started_block else {
            return Ok(Outcome::Challenge { challenges: self.challenges(realm, false, now_ms), failed: true });
        };
        self.stats.blocks.fetch_add(1, Ordering::Relaxed);
        // Which block of the day: each one lasts `escalation_factor` times
        // the last, up to the maximum.
        let (part, addr) = self.address(req.source);
        let count = Key::new(Kind::SipBlockCount, addr.id);
        let rule = StrikeRule { threshold: u32::MAX, window_ms: DAY_MS, block_ms: 0 };
        let nth = self.state.strike(part, count, rule, now_ms).await.map_err(|_| Unreachable)?.count.max(1);
        let until = escalated(&self.rules, nth, now_ms).max(until);
        if until > now_ms.saturating_add(self.rules.block_ms) {
            self.state.mark(part, addr, now_ms, until).await.map_err(|_| Unreachable)?;
        }
        Ok(Outcome::Blocked { until_ms: until, started: Some(Started { until_ms: until, nth }) })
    }
}

/// The end of the `nth` block of the day: `block · factor^(nth-1)`, capped.
fn escalated(r: &Rules, nth: u32, now_ms: i64) -> i64 {
    let mut ms = r.block_ms;
    for _ in 1..nth {
        ms = ms.saturating_mul(i64::from(r.escalation_factor));
        if ms >= r.max_block_ms {
            break;
        }
    }
    now_ms.saturating_add(ms.min(r.max_block_ms))
}

struct Unreachable;

#[cfg(test)]
mod tests;
