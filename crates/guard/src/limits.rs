//! Rate limits as GCRA buckets, and the keys that name them.
//!
//! A limit of `quota` per `window` admits one request every `window /
//! quota` on average. The bucket holds two seconds of that rate (SPEC §7:
//! "2x the per-second rate") but never less than one window's quota: a
//! literal 2x of 10/min would be a third of a request, and an "N per minute"
//! limit that refused the second request of a minute would not be N per
//! minute. So `60/min` admits 60 at once and then one a second; `5/s`
//! admits 10 at once and then one every 200 ms.

use std::net::IpAddr;

use sha2::{Digest, Sha256};

const NS_PER_SEC: u64 = 1_000_000_000;

/// One rate limit: its name (shown to clients) and its shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub name: &'static str,
    pub quota: u32,
    pub window_secs: u32,
    /// Time between requests at the sustained rate.
    pub interval_ns: u64,
    /// Requests the full bucket admits at once.
    pub burst: u32,
}

impl Limit {
    /// `quota` requests per `window_secs`; `None` when either is 0, which
    /// turns the limit off.
    pub fn new(name: &'static str, quota: u32, window_secs: u32) -> Option<Limit> {
        if quota == 0 || window_secs == 0 {
            return None;
        }
        let interval_ns = (u64::from(window_secs) * NS_PER_SEC / u64::from(quota)).max(1);
        let two_seconds = (2 * u64::from(quota)).div_ceil(u64::from(window_secs));
        let burst = u32::try_from(two_seconds.max(u64::from(quota))).unwrap_or(u32::MAX);
        Some(Limit { name, quota, window_secs, interval_ns, burst })
    }

    pub fn per_minute(name: &'static str, quota: u32) -> Option<Limit> {
        Self::new(name, quota, 60)
    }

    pub fn per_second(name: &'static str, quota: u32) -> Option<Limit> {
        Self::new(name, quota, 1)
    }

    /// Requests the bucket admits now, given the time until it is full
    /// (computed only for headers: a division the decision need not pay).
    pub fn remaining(&self, reset_ns: u64) -> u32 {
        let left = self.tolerance_ns().saturating_sub(reset_ns) / self.interval_ns;
        u32::try_from(left).unwrap_or(u32::MAX)
    }

    /// The bucket's capacity in time: how far ahead of now the theoretical
    /// arrival time may run.
    pub fn tolerance_ns(&self) -> u64 {
        self.interval_ns.saturating_mul(u64::from(self.burst))
    }

    /// The GCRA step. `tat` is the bucket's theoretical arrival time (ns);
    /// returns the new one if the request is admitted.
    pub fn step(&self, tat: u64, now: u64) -> Step {
        let next = tat.max(now).saturating_add(self.interval_ns);
        let ahead = next - now;
        let tolerance = self.tolerance_ns();
        if ahead <= tolerance {
            Step::Admit { tat: next, reset_ns: ahead }
        } else {
            Step::Refuse { retry_after_ns: ahead - tolerance, reset_ns: tat.max(now) - now }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `reset_ns`: until the bucket is full again.
    Admit {
        tat: u64,
        reset_ns: u64,
    },
    Refuse {
        retry_after_ns: u64,
        reset_ns: u64,
    },
}

/// What a key counts. Keys of different kinds never share state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Every request from one client address.
    Ip = 1,
    /// `/v1/auth/**` requests from one client address.
    AuthIp,
    /// One API key, agent token or person.
    Credential,
    /// Every credential of one tenant together.
    Tenant,
    MessageCreate,
    CallCreate,
    /// One identity's own rate (`rate_per_second` of its policy).
    IdentityRate,
    /// Spike detection (observed, never refused).
    Burst,
    /// WAF violations and the block they lead to.
    Waf,
    /// Failed logins for one account from one client address, and the
    /// lock of that pair.
    Login,
    /// Failed credential checks from one address, and its lock.
    CredentialFailure,
    /// Suppresses repeated audit events for one refused address.
    Notice,
    /// Failed logins for one account from any address, and its throttle.
    LoginAccount,
    /// The one attempt per period a throttled account admits.
    LoginSpacing,
    /// An address trusted for one account (the password was right there
    /// lately): exempt from the account's throttle, not from its own lock.
    LoginTrust,
    /// A SIP digest (nonce, nc) pair already accepted: replays are refused.
    SipNonce,
    /// Failed SIP digest authentications from one address, and its block.
    SipAuth,
    /// Failed SIP digest authentications for one username from anywhere
    /// (a guesser spread over many addresses).
    SipAuthUser,
    /// Blocks one address has earned lately: each new one lasts longer.
    SipBlockCount,
    /// Requests from one address to the SIP edge (the flood guard).
    SipFlood,
    /// A STIR PASSporT already believed: replays are refused.
    StirPassport,
}

/// A key: what it counts and whose. Addresses, ids and emails all fit in
/// 128 bits, so keys are fixed-size and cheap to hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: Kind,
    pub id: u128,
}

impl Key {
    pub fn new(kind: Kind, id: u128) -> Key {
        Key { kind, id }
    }

    /// An IPv4 address counts alone; an IPv6 address by its /64, because one
    /// host routinely holds a whole /64 and could otherwise rotate through it.
    pub fn ip(kind: Kind, ip: IpAddr) -> Key {
        Key { kind, id: ip_id(ip) }
    }

    pub fn uuid(kind: Kind, id: uuid::Uuid) -> Key {
        Key { kind, id: id.as_u128() }
    }

    /// Free text (an email address) by its SHA-256, so the state never holds it.
    pub fn text(kind: Kind, s: &str) -> Key {
        let d = Sha256::digest(s.as_bytes());
        let mut b = [0u8; 16];
        b.copy_from_slice(&d[..16]);
        Key { kind, id: u128::from_be_bytes(b) }
    }
}

pub fn ip_id(ip: IpAddr) -> u128 {
    match crate::net::canonical(ip) {
        IpAddr::V4(v4) => u128::from(u32::from(v4)),
        IpAddr::V6(v6) => u128::from(v6) & !((1u128 << 64) - 1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u64 = NS_PER_SEC;

    fn run(limit: &Limit, tat: &mut u64, now: u64) -> bool {
        match limit.step(*tat, now) {
            Step::Admit { tat: t, .. } => {
                *tat = t;
                true
            }
            Step::Refuse { .. } => false,
        }
    }

    #[test]
    fn bucket_sizes() {
        let key = Limit::per_minute("key", 60).unwrap();
        assert_eq!((key.burst, key.interval_ns), (60, S));
        let auth = Limit::per_minute("auth", 10).unwrap();
        assert_eq!((auth.burst, auth.interval_ns), (10, 6 * S));
        let ident = Limit::per_second("ident", 5).unwrap();
        assert_eq!((ident.burst, ident.interval_ns), (10, S / 5));
        assert!(Limit::per_minute("off", 0).is_none());
    }

    #[test]
    fn admits_the_burst_then_the_rate() {
        let l = Limit::per_minute("key", 60).unwrap();
        let (mut tat, now) = (0, 1000 * S);
        for i in 0..60 {
            assert!(run(&l, &mut tat, now), "request {i}");
        }
        assert!(!run(&l, &mut tat, now));
        match l.step(tat, now) {
            Step::Refuse { retry_after_ns, reset_ns } => {
                assert_eq!(retry_after_ns, S);
                assert_eq!(reset_ns, 60 * S);
            }
            s => panic!("{s:?}"),
        }
        // One more each second, not two.
        assert!(run(&l, &mut tat, now + S));
        assert!(!run(&l, &mut tat, now + S));
        // A full window later the whole burst is back.
        let later = now + 61 * S;
        for _ in 0..60 {
            assert!(run(&l, &mut tat, later));
        }
        assert!(!run(&l, &mut tat, later));
    }

    #[test]
    fn remaining_and_reset() {
        let l = Limit::per_minute("key", 60).unwrap();
        match l.step(0, 100 * S) {
            Step::Admit { reset_ns, .. } => assert_eq!((l.remaining(reset_ns), reset_ns), (59, S)),
            s => panic!("{s:?}"),
        }
    }

    #[test]
    fn ipv6_counts_by_prefix() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(Key::ip(Kind::Ip, a), Key::ip(Kind::Ip, b));
        assert_ne!(Key::ip(Kind::Ip, a), Key::ip(Kind::Ip, c));
        let v4: IpAddr = "192.0.2.1".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(Key::ip(Kind::Ip, v4), Key::ip(Kind::Ip, mapped));
        assert_ne!(Key::ip(Kind::Ip, v4), Key::ip(Kind::AuthIp, v4));
        // The /64 itself, with the interface bits cleared.
        let prefix: std::net::Ipv6Addr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(ip_id(b), u128::from(prefix));
        assert_eq!(ip_id(v4), 0xc000_0201);
    }
}
