//! The first gate, before a request is parsed or a connection served:
//! plaintext only from the allowed networks, and the flood guard (like
//! Kamailio's pike): an address sending more than its rate gets no answer
//! at all until it slows down. Kept in this process on purpose: it runs
//! for every datagram, before anything costs a round trip. A trunk's
//! source addresses are the operator's carriers: served in plaintext over
//! the trunk's own transport, and held to a flood limit of their own (a
//! carrier's traffic is many callers').

use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::state::{Bucket, Decide, LocalState};
use palisade_voice::trunks::Transport;

pub struct Gate {
    plaintext: Vec<IpNet>,
    flood: Option<Limit>,
    trunk_flood: Option<Limit>,
    state: LocalState,
    trunks: Arc<crate::trunk::Trunks>,
}

impl Gate {
    /// `max_requests` per `window_ms` from one address (an IPv6 /64).
    /// `max_requests` per `window_ms` from one address (an IPv6 /64);
    /// `trunk_max_requests` from a trunk's.
    pub fn new(plaintext: Vec<IpNet>, pike: palisade_config::Pike, trunks: Arc<crate::trunk::Trunks>) -> Gate {
        let window_secs = u32::try_from(pike.window_ms.div_ceil(1000).max(1)).unwrap_or(u32::MAX);
        let flood = Limit::new("sip_flood", pike.max_requests, window_secs);
        let trunk_flood = Limit::new("sip_flood_trunk", pike.trunk_max_requests, window_secs);
        Gate { plaintext, flood, trunk_flood, state: LocalState::new(), trunks }
    }

    /// Whether a plaintext peer at `ip` over `transport` (UDP or TCP) may
    /// be served at all.
    pub fn plaintext_allowed(&self, ip: IpAddr, transport: Transport) -> bool {
        let ip = palisade_guard::net::canonical(ip);
        self.plaintext.iter().any(|n| n.contains(&ip)) || self.trunks.is_trunk_on(ip, transport)
    }

    /// Counts one request from `ip`: false when it is flooding.
    pub fn admit(&self, ip: IpAddr, now_ms: i64) -> bool {
        let trunk = self.trunks.now().trunk_for(ip).is_some();
        let Some(limit) = (if trunk { self.trunk_flood } else { self.flood }) else { return true };
        let key = Key::ip(Kind::SipFlood, ip);
        let buckets = [Bucket::enforce(key, limit)];
        let v = self.state.decide_now(&Decide {
            partition: key.id,
            now_ms,
            blocks: &[],
            buckets: &buckets,
            notice_ms: 60_000,
        });
        if v.refused.is_some() && v.refusal_is_new {
            tracing::warn!(target: "palisade::sip", %ip, "SIP flood: this address gets no answer until it slows down");
        }
        v.refused.is_none()
    }

    /// Entries held (for tests and sweeps).
    pub fn tracked(&self) -> usize {
        self.state.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: i64 = 1_700_000_000_000;

    fn pike(max_requests: u32, trunk_max_requests: u32) -> palisade_config::Pike {
        palisade_config::Pike { window_ms: 2000, max_requests, trunk_max_requests }
    }

    fn no_trunks() -> Arc<crate::trunk::Trunks> {
        Arc::default()
    }

    #[test]
    fn plaintext_only_from_the_allowed_networks() {
        let g =
            Gate::new(vec!["127.0.0.1/32".parse().unwrap(), "10.0.0.0/8".parse().unwrap()], pike(30, 60), no_trunks());
        assert!(g.plaintext_allowed("127.0.0.1".parse().unwrap(), Transport::Udp));
        assert!(g.plaintext_allowed("10.1.2.3".parse().unwrap(), Transport::Udp));
        // The IPv4-mapped form of an allowed address is that address.
        assert!(g.plaintext_allowed("::ffff:127.0.0.1".parse().unwrap(), Transport::Udp));
        assert!(!g.plaintext_allowed("127.0.0.2".parse().unwrap(), Transport::Udp));
        assert!(!g.plaintext_allowed("::1".parse().unwrap(), Transport::Udp));
        assert!(!Gate::new(vec![], pike(30, 60), no_trunks())
            .plaintext_allowed("127.0.0.1".parse().unwrap(), Transport::Udp));
    }

    #[test]
    fn a_flooding_address_is_cut_off_and_others_are_not() {
        let g = Gate::new(vec![], pike(30, 60), no_trunks());
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        let admitted = (0..100).filter(|_| g.admit(a, T0)).count();
        // A burst of the rate (bucket size twice the per-second rate), then nothing.
        assert_eq!(admitted, 30);
        assert!(g.admit(b, T0));
        // It refills at the rate: 15 per second.
        assert!(!g.admit(a, T0 + 10));
        assert!(g.admit(a, T0 + 1000));
    }

    #[test]
    fn a_trunks_sources_are_served_in_plaintext_over_its_transport_with_a_flood_limit_of_their_own() {
        let trunks = no_trunks();
        let g = Gate::new(vec![], pike(30, 60), trunks.clone());
        let carrier: IpAddr = "203.0.113.9".parse().unwrap();
        assert!(!g.plaintext_allowed(carrier, Transport::Udp));
        let nets = vec!["203.0.113.0/28".parse().unwrap()];
        let t = palisade_voice::trunks::Trunk::without_auth("carrier", "sip:203.0.113.1", Transport::Udp, nets);
        trunks.set(palisade_voice::trunks::TrunkTable::new(vec![t]));
        assert!(g.plaintext_allowed(carrier, Transport::Udp));
        assert!(!g.plaintext_allowed("203.0.113.16".parse().unwrap(), Transport::Udp));
        // Over its own transport only: a UDP trunk is not believed over TCP.
        assert!(!g.plaintext_allowed(carrier, Transport::Tcp));
        // Its own flood limit, higher than a phone's, but a limit.
        assert_eq!((0..1000).filter(|_| g.admit(carrier, T0)).count(), 60);
    }
}
