#![no_main]
//! The client address from `X-Forwarded-For`, behind trusted proxies.
//! Input: the trusted CIDRs (comma-separated) on the first line, the
//! header value after it.

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use palisade_guard::net::{canonical, client_ip, in_any, parse_cidrs};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let (cidrs, xff) = s.split_once('\n').unwrap_or(("", &s));
    let mut trusted = parse_cidrs(cidrs.split(',').filter(|c| !c.trim().is_empty())).unwrap_or_default();
    trusted.push("10.0.0.0/8".parse().unwrap());
    let proxy = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    let outsider = IpAddr::V4(Ipv4Addr::new(203, 0, 113, 9));

    // From a peer that is no proxy, the header counts for nothing.
    if !in_any(outsider, &trusted) {
        assert_eq!(client_ip(outsider, Some(xff), &trusted), outsider);
    }
    let client = client_ip(proxy, Some(xff), &trusted);
    assert_eq!(canonical(client), client, "not canonical: {client}");
    // The client is the proxy itself or an address the header names.
    if client != proxy {
        let named = xff.split(',').map(str::trim).any(|hop| {
            hop.parse::<IpAddr>()
                .ok()
                .or_else(|| hop.parse::<std::net::SocketAddr>().ok().map(|a| a.ip()))
                .is_some_and(|ip| canonical(ip) == client)
        });
        assert!(named, "{client} is not in {xff:?}");
    }
});
