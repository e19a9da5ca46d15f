//! Client address and CIDR rules.

use std::net::IpAddr;

use ipnet::IpNet;

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) compares as the IPv4 address.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
        v4 => v4,
    }
}

pub fn in_any(ip: IpAddr, nets: &[IpNet]) -> bool {
    let ip = canonical(ip);
    nets.iter().any(|n| n.contains(&ip))
}

/// The client's address. `X-Forwarded-For` is believed only when the socket
/// peer is a configured proxy; then the rightmost address that is not a
/// trusted proxy is the client (entries to its left are client-supplied).
pub fn client_ip(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[IpNet]) -> IpAddr {
    let peer = canonical(peer);
    if trusted.is_empty() || !in_any(peer, trusted) {
        return peer;
    }
    let Some(xff) = forwarded_for else {
        return peer;
    };
    let mut client = peer;
    for hop in xff.rsplit(',') {
        match parse_hop(hop.trim()) {
            Some(ip) => {
                client = canonical(ip);
                if !in_any(client, trusted) {
                    return client;
                }
            }
            None => return client,
        }
    }
    client
}

/// An `X-Forwarded-For` entry: an address, or (as some proxies write it)
/// an address with a port: `1.2.3.4:5678`, `[2001:db8::1]:443`.
fn parse_hop(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>().ok().or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|s| s.ip()))
}

/// Parses a list of CIDRs (a bare address means a single host).
pub fn parse_cidrs<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<IpNet>, String> {
    items
        .into_iter()
        .map(|s| {
            let s = s.trim();
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| format!("`{s}` is not a CIDR"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn untrusted_peer_is_the_client() {
        let trusted = parse_cidrs(["10.0.0.0/8"]).unwrap();
        assert_eq!(client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &trusted), ip("203.0.113.9"));
        assert_eq!(client_ip(ip("203.0.113.9"), Some("1.2.3.4"), &[]), ip("203.0.113.9"));
    }

    #[test]
    fn trusted_proxy_chain() {
        let trusted = parse_cidrs(["10.0.0.0/8"]).unwrap();
        assert_eq!(client_ip(ip("10.0.0.1"), Some("6.6.6.6, 1.2.3.4, 10.0.0.2"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("garbage, 10.0.0.2"), &trusted), ip("10.0.0.2"));
        assert_eq!(client_ip(ip("10.0.0.1"), None, &trusted), ip("10.0.0.1"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("1.2.3.4:5678"), &trusted), ip("1.2.3.4"));
        assert_eq!(client_ip(ip("10.0.0.1"), Some("[2001:db8::1]:443"), &trusted), ip("2001:db8::1"));
    }

    #[test]
    fn cidr_matching() {
        let nets = parse_cidrs(["192.0.2.0/24", "2001:db8::1"]).unwrap();
        assert!(in_any(ip("192.0.2.77"), &nets));
        assert!(in_any(ip("::ffff:192.0.2.77"), &nets));
        assert!(in_any(ip("2001:db8::1"), &nets));
        assert!(!in_any(ip("192.0.3.1"), &nets));
        assert!(parse_cidrs(["nope"]).is_err());
    }
}
