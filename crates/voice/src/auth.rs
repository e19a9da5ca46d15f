//! Digest authentication of SIP requests, with its abuse rules: each
//! `(nonce, nc)` accepted once on every instance, an address blocked after
//! `threshold` failures in a row (longer for each further block of the
//! day), and a username under attack from many addresses open only to the
//! addresses it last authenticated from.
//!
//! An address's attempts are counted before their outcome is known, so
//! guesses sent in parallel cannot get past the threshold, unless the
//! address is trusted in the realm (it authenticated there, any username,
//! within 30 days): then only its failures count, once known, and a
//! success resets the count. A PBX registering many phones at once from
//! one address is not blocked by its own requests in flight.
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
/// username (exempt from the username's block, not from its own), and an
/// address stays trusted in a realm (its failures counted once known).
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
    /// Opens HA1s sealed by the static key before tenants had keys.
    pub sealer: Arc<Sealer>,
    /// Tenants' data keys: HA1s are sealed under them.
    pub keys: Arc<palisade_keys::Keyring>,
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

    /// The address's trust in `realm`, and a mark that it was set (again)
    /// within the day: trust is renewed by a success once a day, so an
    /// address in steady use never falls back to counting up front.
    /// Both in the address's partition.
    fn address_trust(realm: &str, ip: IpAddr) -> (Key, Key) {
        let id = ip_id(ip);
        let trust = Key::text(Kind::LoginTrust, &format!("sip-address\n{realm}\n{id:032x}"));
        let renewed = Key::text(Kind::LoginTrust, &format!("sip-address-renewed\n{realm}\n{id:032x}"));
        (trust, renewed)
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
        // Is the address blocked, and is it trusted in this realm?
        let (trust, renewed) = Self::address_trust(realm, req.source);
        let checks = [
            BlockCheck { key: addr, refuses: true },
            BlockCheck { key: trust, refuses: false },
            BlockCheck { key: renewed, refuses: false },
        ];
        let v = self
            .state
            .decide(Decide { partition: part, now_ms, blocks: &checks, buckets: &[], notice_ms: 0 })
            .await
            .map_err(|_| Unreachable)?;
        if let Some((_, until_ms)) = v.blocked {
            return Ok(Outcome::Blocked { until_ms, started: None });
        }
        let renew_trust = !v.block_active(2);
        let count = if v.block_active(1) {
            // Trusted: its failures count once known (a PBX's phones
            // registering in parallel are not guesses).
            Count::After
        } else {
            // Counted before the outcome is known: guesses sent in
            // parallel cannot get past the threshold.
            match self.state.attempt(part, addr, self.address_rule(), now_ms).await.map_err(|_| Unreachable)? {
                Attempt::Locked { until } => return Ok(Outcome::Blocked { until_ms: until, started: None }),
                Attempt::Counted(o) => Count::Before { started_block: o.blocked_until },
            }
        };
        let creds = match palisade_digest::parse(header) {
            Ok(c) => c,
            Err(_) => return self.failed(req, None, count, realm, now_ms).await,
        };
        // A username under attack answers only the addresses it trusts.
        let (upart, ukey, user_trust) = Self::user_keys(&creds.username, req.source);
        let checks = [BlockCheck { key: ukey, refuses: false }, BlockCheck { key: user_trust, refuses: false }];
        let v = self
            .state
            .decide(Decide { partition: upart, now_ms, blocks: &checks, buckets: &[], notice_ms: 0 })
            .await
            .map_err(|_| Unreachable)?;
        if v.block_active(0) && !v.block_active(1) {
            // The username is closed to new addresses: refused, but not
            // counted against this address (it may be the owner's new one).
            self.uncount(part, addr, count).await?;
            return Ok(Outcome::Blocked { until_ms: now_ms, started: None });
        }
        // For a call the target is in the Request-URI: an answer is good
        // for its own only. (A REGISTER's target is its To, checked by the
        // edge; and some clients, SIPp among them, answer it with the
        // registrar's address as `uri`.)
        if req.method != "REGISTER" && creds.uri != req.uri {
            return self.failed(req, Some(&creds), count, realm, now_ms).await;
        }
        // A credential that answered rightly a moment ago is not read again.
        let ticket = crate::credentials::ticket();
        let recent = crate::credentials::recent(&creds.username, now_ms);
        let fresh = recent.is_none();
        let found = match recent {
            Some(u) => Ok(Some(u)),
            None => crate::credentials::for_digest(&self.db, &self.keys, &self.sealer, &creds.username).await,
        };
        let user = match found {
            Ok(u) => u.filter(|u| u.realm == realm),
            Err(e) => {
                // Our fault, not the caller's: no strike, no answer yet.
                tracing::error!(target: "palisade::sip", error = %e, "SIP credential lookup failed");
                self.uncount(part, addr, count).await?;
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
                    return self.failed(req, Some(&creds), count, realm, now_ms).await;
                }
                // A success resets the address's failures in a row (and
                // lifts a block its own count started).
                let started_block = match count {
                    Count::Before { started_block } => started_block,
                    Count::After => None,
                };
                self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)?;
                // Best effort: without them the address is only not exempt
                // from a block of its username, or counted up front.
                let _ = self.state.mark(upart, user_trust, now_ms, now_ms.saturating_add(TRUST_MS)).await;
                if renew_trust {
                    let _ = self.state.mark(part, trust, now_ms, now_ms.saturating_add(TRUST_MS)).await;
                    let _ = self.state.mark(part, renewed, now_ms, now_ms.saturating_add(DAY_MS)).await;
                }
                match user {
                    Some(u) => {
                        if fresh {
                            crate::credentials::remember(ticket, &u, now_ms);
                        }
                        Ok(Outcome::Authenticated(Box::new(u)))
                    }
                    None => Ok(Outcome::Unavailable),
                }
            }
            Verdict::Stale => {
                // The password is right; only the nonce is old (RFC 7616
                // §3.3): not a failure.
                self.uncount(part, addr, count).await?;
                Ok(Outcome::Challenge { challenges: self.challenges(realm, true, now_ms), failed: false })
            }
            Verdict::Refused(_) => self.failed(req, Some(&creds), count, realm, now_ms).await,
        }
    }

    /// `threshold` failures of an address in a row (within the day) block it.
    fn address_rule(&self) -> StrikeRule {
        StrikeRule { threshold: self.rules.threshold, window_ms: DAY_MS, block_ms: self.rules.block_ms }
    }

    /// The attempt neither failed nor succeeded: takes back what was
    /// counted up front (the count is reset, as after a success).
    async fn uncount(&self, part: u128, addr: Key, count: Count) -> Result<(), Unreachable> {
        match count {
            Count::Before { started_block } => {
                self.state.forgive(part, addr, started_block).await.map_err(|_| Unreachable)
            }
            Count::After => Ok(()),
        }
    }

    /// A failed attempt: counts against the address (unless it was counted
    /// up front) and the username, escalates a block it started.
    async fn failed(
        &self,
        req: &Request<'_>,
        creds: Option<&Credentials>,
        count: Count,
        realm: &str,
        now_ms: i64,
    ) -> Result<Outcome, Unreachable> {
        self.stats.failures.fetch_add(1, Ordering::Relaxed);
        let (part, addr) = self.address(req.source);
        if let Some(c) = creds {
            let (upart, ukey, _) = Self::user_keys(&c.username, req.source);
            let rule = StrikeRule {
                threshold: self.rules.per_username_threshold,
                window_ms: self.rules.per_username_window_ms,
                block_ms: self.rules.per_username_window_ms,
            };
            self.state.strike(upart, ukey, rule, now_ms).await.map_err(|_| Unreachable)?;
        }
        let started_block = match count {
            Count::Before { started_block } => started_block,
            // A trusted address's failure, counted now: a parallel one may
            // have started the block already.
            Count::After => match self.state.attempt(part, addr, self.address_rule(), now_ms).await {
                Ok(Attempt::Counted(o)) => o.blocked_until,
                Ok(Attempt::Locked { until }) => return Ok(Outcome::Blocked { until_ms: until, started: None }),
                Err(_) => return Err(Unreachable),
            },
        };
        let Some(until) = started_block else {
            return Ok(Outcome::Challenge { challenges: self.challenges(realm, false, now_ms), failed: true });
        };
        self.stats.blocks.fetch_add(1, Ordering::Relaxed);
        // Which block of the day: each one lasts `escalation_factor` times
        // the last, up to the maximum.
        let nth_key = Key::new(Kind::SipBlockCount, addr.id);
        let rule = StrikeRule { threshold: u32::MAX, window_ms: DAY_MS, block_ms: 0 };
        let nth = self.state.strike(part, nth_key, rule, now_ms).await.map_err(|_| Unreachable)?.count.max(1);
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

/// How this attempt counts against its address.
#[derive(Debug, Clone, Copy)]
enum Count {
    /// Counted before its outcome was known (an untrusted address); set
    /// when that count started a block: until when.
    Before { started_block: Option<i64> },
    /// To be counted only if it fails (an address trusted in the realm).
    After,
}

#[cfg(test)]
mod tests;
