#![no_main]
//! Webhook URLs and the addresses they stand for (parsing and
//! classification only; nothing is resolved).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use libfuzzer_sys::fuzz_target;
use palisade_guard::ssrf::{classify, SsrfPolicy, MAX_URL_LEN};
use url::Host;

fuzz_target!(|data: &[u8]| {
    if data.len() >= 16 {
        addresses(data[..16].try_into().unwrap());
    }
    let Ok(raw) = std::str::from_utf8(data) else { return };
    let strict = SsrfPolicy::default();
    let http = SsrfPolicy { allowed_private: Vec::new(), require_https: false };
    for policy in [&strict, &http] {
        let Ok(checked) = policy.check_url(raw) else { continue };
        let url = checked.url();
        assert!(url.scheme() == "https" || (url.scheme() == "http" && !policy.require_https), "{url}");
        assert!(url.username().is_empty() && url.password().is_none() && url.fragment().is_none(), "{url}");
        assert!(url.as_str().len() <= MAX_URL_LEN);
        assert_ne!(checked.port(), 0);
        match checked.host() {
            Host::Ipv4(v4) => assert_eq!(classify(IpAddr::V4(*v4)), None, "{url}"),
            Host::Ipv6(v6) => assert_eq!(classify(IpAddr::V6(*v6)), None, "{url}"),
            Host::Domain(d) => {
                assert!(!d.is_empty(), "{url}");
                // (A name that DNS cannot resolve, such as `.`, fails later.)
                let d = d.strip_suffix('.').unwrap_or(d).to_ascii_lowercase();
                assert!(d != "localhost" && !d.ends_with(".localhost"), "{url}");
                // A name that is an address in disguise would skip the address check.
                assert!(d.parse::<IpAddr>().is_err(), "{url}");
            }
        }
        // The normalized URL is what is stored and sent: checking it again
        // gives the same answer.
        let again = policy.check_url(url.as_str()).unwrap_or_else(|e| panic!("{url} refused on a second check: {e}"));
        assert_eq!(&again, &checked);
    }
});

// An IPv6 address that embeds an IPv4 address is judged as that address.
fn addresses(bytes: [u8; 16]) {
    let v6 = Ipv6Addr::from(bytes);
    let v4 = Ipv4Addr::new(bytes[0], bytes[1], bytes[2], bytes[3]);
    let strict = SsrfPolicy::default();
    let c4 = classify(IpAddr::V4(v4));
    assert_eq!(classify(IpAddr::V6(v4.to_ipv6_mapped())), c4);
    let [a, b] = [u16::from_be_bytes([bytes[0], bytes[1]]), u16::from_be_bytes([bytes[2], bytes[3]])];
    assert_eq!(classify(IpAddr::V6(Ipv6Addr::new(0x64, 0xff9b, 0, 0, 0, 0, a, b))), c4);
    assert_eq!(classify(IpAddr::V6(Ipv6Addr::new(0x2002, a, b, 1, 2, 3, 4, 5))), c4);
    if c4.is_none() {
        assert!(
            !(v4.is_private()
                || v4.is_loopback()
                || v4.is_link_local()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_unspecified()
                || v4.is_multicast()),
            "{v4}"
        );
    }
    if classify(IpAddr::V6(v6)).is_none() {
        assert!(!(v6.is_loopback() || v6.is_unspecified() || v6.is_multicast()), "{v6}");
    }
    for ip in [IpAddr::V4(v4), IpAddr::V6(v6)] {
        assert_eq!(strict.check_ip(ip).is_ok(), classify(ip).is_none());
        assert_eq!(strict.filter_resolved(&[ip, ip]).map(|v| v.len()).ok(), classify(ip).is_none().then_some(1));
    }
}
