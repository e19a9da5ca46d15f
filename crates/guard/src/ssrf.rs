//! SSRF policy for outbound requests (webhooks): which URLs and which
//! resolved addresses Palisade may connect to.
//!
//! Pure and synchronous: DNS resolution happens elsewhere (the webhook
//! client), which hands the answers to [`SsrfPolicy::filter_resolved`] and
//! then connects to exactly the addresses that came back.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use url::{Host, Url};

/// The longest URL accepted, before and after normalization.
pub const MAX_URL_LEN: usize = 2048;

/// What is said of a host name that does not resolve, resolves to a refused
/// address, or is `localhost`: the same words for all, so whoever chose the
/// name learns nothing of what the platform's DNS answers for it.
pub const NAME_NOT_PUBLIC: &str = "the host must resolve to a public address";

/// Why an address is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AddrClass {
    /// `0.0.0.0`, `::`.
    Unspecified,
    /// `127.0.0.0/8`, `::1`.
    Loopback,
    /// RFC 1918, unique local `fc00::/7`.
    Private,
    /// `169.254.0.0/16` (cloud metadata lives here), `fe80::/10`.
    LinkLocal,
    /// Deprecated `fec0::/10`.
    SiteLocal,
    /// Carrier-grade NAT, `100.64.0.0/10`.
    SharedAddressSpace,
    /// `224.0.0.0/4`, `ff00::/8`.
    Multicast,
    /// `255.255.255.255`.
    Broadcast,
    /// `192.0.2.0/24`, `198.51.100.0/24`, `203.0.113.0/24`, `2001:db8::/32`, `3fff::/20`.
    Documentation,
    /// `198.18.0.0/15`, `2001:2::/48`.
    Benchmarking,
    /// Teredo `2001::/32`: the IPv4 side is not ours to check.
    Tunnel,
    /// Everything else that is not public unicast: `0.0.0.0/8`, `192.0.0.0/24`,
    /// `240.0.0.0/4`, IPv6 outside `2000::/3`, IETF protocol assignments, …
    Reserved,
}

impl AddrClass {
    /// Stable machine-readable name.
    pub fn as_str(self) -> &'static str {
        match self {
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link_local",
            AddrClass::SiteLocal => "site_local",
            AddrClass::SharedAddressSpace => "shared_address_space",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "broadcast",
            AddrClass::Documentation => "documentation",
            AddrClass::Benchmarking => "benchmarking",
            AddrClass::Tunnel => "tunnel",
            AddrClass::Reserved => "reserved",
        }
    }

    /// Completes "the address X is …".
    fn describe(self) -> &'static str {
        match self {
            AddrClass::Unspecified => "unspecified",
            AddrClass::Loopback => "loopback",
            AddrClass::Private => "private",
            AddrClass::LinkLocal => "link-local",
            AddrClass::SiteLocal => "site-local",
            AddrClass::SharedAddressSpace => "in the shared (carrier-grade NAT) range",
            AddrClass::Multicast => "multicast",
            AddrClass::Broadcast => "the broadcast address",
            AddrClass::Documentation => "reserved for documentation",
            AddrClass::Benchmarking => "reserved for benchmarking",
            AddrClass::Tunnel => "a tunnel (Teredo) address",
            AddrClass::Reserved => "reserved",
        }
    }
}

/// A refused URL or address. `Display` is short and safe to show the tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum SsrfError {
    /// Not a URL (or one the WHATWG parser rejects, e.g. an IPv6 zone id).
    InvalidUrl,
    /// Longer than [`MAX_URL_LEN`].
    TooLong,
    /// Not `https` (or, when plain HTTP is allowed, not `http`/`https`).
    Scheme { https_only: bool },
    /// `user:pass@` in the URL.
    Credentials,
    /// No host in the URL.
    MissingHost,
    /// Port 0.
    InvalidPort,
    /// The URL's address (an IP literal) is not public.
    Forbidden { addr: IpAddr, class: AddrClass },
    /// The host name resolved to this address, which is not public. Shown
    /// as [`NAME_NOT_PUBLIC`]; the address and class are for the operator.
    ResolvedForbidden { addr: IpAddr, class: AddrClass },
    /// The host is `localhost` or a name under `.localhost` (RFC 6761).
    LocalhostName,
    /// The host has no addresses.
    Unresolvable,
}

impl SsrfError {
    /// Stable machine-readable kind, e.g. for an RFC 9457 problem's `code`.
    pub fn code(&self) -> &'static str {
        match self {
            SsrfError::InvalidUrl => "invalid_url",
            SsrfError::TooLong => "url_too_long",
            SsrfError::Scheme { .. } => "scheme_not_allowed",
            SsrfError::Credentials => "credentials_in_url",
            SsrfError::MissingHost => "missing_host",
            SsrfError::InvalidPort => "invalid_port",
            SsrfError::Forbidden { .. } => "forbidden_address",
            SsrfError::ResolvedForbidden { .. } | SsrfError::LocalhostName | SsrfError::Unresolvable => {
                "host_not_public"
            }
        }
    }

    /// For a refused address, why (for a host name: the operator's to know,
    /// not the tenant's).
    pub fn class(&self) -> Option<AddrClass> {
        match self {
            SsrfError::Forbidden { class, .. } | SsrfError::ResolvedForbidden { class, .. } => Some(*class),
            SsrfError::LocalhostName => Some(AddrClass::Loopback),
            _ => None,
        }
    }
}

impl fmt::Display for SsrfError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SsrfError::InvalidUrl => f.write_str("the URL is not valid"),
            SsrfError::TooLong => write!(f, "the URL is longer than {MAX_URL_LEN} characters"),
            SsrfError::Scheme { https_only: true } => f.write_str("the URL scheme must be https"),
            SsrfError::Scheme { https_only: false } => f.write_str("the URL scheme must be http or https"),
            SsrfError::Credentials => f.write_str("credentials in URLs are not allowed"),
            SsrfError::MissingHost => f.write_str("the URL has no host"),
            SsrfError::InvalidPort => f.write_str("port 0 is not allowed"),
            SsrfError::Forbidden { addr, class } => {
                write!(f, "the address {addr} is {}", class.describe())
            }
            SsrfError::ResolvedForbidden { .. } | SsrfError::LocalhostName | SsrfError::Unresolvable => {
                f.write_str(NAME_NOT_PUBLIC)
            }
        }
    }
}

impl std::error::Error for SsrfError {}

/// Why `ip` may not be connected to, ignoring any allowance; `None` for a
/// public unicast address. IPv6 forms that embed an IPv4 address
/// (IPv4-mapped, IPv4-compatible, NAT64, 6to4) are judged by that address.
pub fn classify(ip: IpAddr) -> Option<AddrClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

/// Whether `ip` is refused, ignoring any allowance.
pub fn is_forbidden(ip: IpAddr) -> bool {
    classify(ip).is_some()
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddrClass> {
    let [a, b, c, _] = ip.octets();
    let class = if ip.is_unspecified() {
        AddrClass::Unspecified
    } else if ip.is_broadcast() {
        AddrClass::Broadcast
    } else if a == 0 {
        // "This network", 0.0.0.0/8.
        AddrClass::Reserved
    } else if a == 127 {
        AddrClass::Loopback
    } else if a == 10 || (a == 172 && (b & 0xf0) == 16) || (a == 192 && b == 168) {
        AddrClass::Private
    } else if a == 100 && (b & 0xc0) == 64 {
        AddrClass::SharedAddressSpace
    } else if a == 169 && b == 254 {
        AddrClass::LinkLocal
    } else if (a, b, c) == (192, 0, 2) || (a, b, c) == (198, 51, 100) || (a, b, c) == (203, 0, 113) {
        AddrClass::Documentation
    } else if a == 198 && (b & 0xfe) == 18 {
        AddrClass::Benchmarking
    } else if (a, b, c) == (192, 0, 0) || (a, b, c) == (192, 88, 99) {
        // IETF protocol assignments; deprecated 6to4 relay anycast.
        AddrClass::Reserved
    } else if (a & 0xf0) == 224 {
        AddrClass::Multicast
    } else if (a & 0xf0) == 240 {
        AddrClass::Reserved
    } else {
        return None;
    };
    Some(class)
}

/// The IPv4 address in the low 32 bits.
fn low_v4(s: &[u16; 8]) -> Ipv4Addr {
    Ipv4Addr::from((u32::from(s[6]) << 16) | u32::from(s[7]))
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddrClass> {
    let s = ip.segments();
    if ip.is_unspecified() {
        return Some(AddrClass::Unspecified);
    }
    if ip.is_loopback() {
        return Some(AddrClass::Loopback);
    }
    // IPv4-mapped ::ffff:a.b.c.d: the same host as a.b.c.d.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return classify_v4(v4);
    }
    // IPv4-compatible ::a.b.c.d (deprecated) and IPv4-translated
    // ::ffff:0:a.b.c.d (RFC 2765): never legitimate, refused either way.
    if s[..6] == [0; 6] || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0) {
        return classify_v4(low_v4(&s)).or(Some(AddrClass::Reserved));
    }
    // NAT64 well-known prefix 64:ff9b::/96: reaches the embedded IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return classify_v4(low_v4(&s));
    }
    let class = match s[0] {
        // Teredo 2001::/32 before the rest of 2001::/23.
        0x2001 if s[1] == 0 => AddrClass::Tunnel,
        0x2001 if s[1] == 2 && s[2] == 0 => AddrClass::Benchmarking,
        0x2001 if s[1] == 0xdb8 => AddrClass::Documentation,
        // IETF protocol assignments 2001::/23.
        0x2001 if s[1] < 0x200 => AddrClass::Reserved,
        // 6to4 2002::/16: the IPv4 address is in bits 16..48.
        0x2002 => {
            let v4 = Ipv4Addr::from((u32::from(s[1]) << 16) | u32::from(s[2]));
            return classify_v4(v4);
        }
        x if (x & 0xfff0) == 0x3ff0 => AddrClass::Documentation,
        x if (x & 0xfe00) == 0xfc00 => AddrClass::Private,
        x if (x & 0xffc0) == 0xfe80 => AddrClass::LinkLocal,
        x if (x & 0xffc0) == 0xfec0 => AddrClass::SiteLocal,
        x if (x & 0xff00) == 0xff00 => AddrClass::Multicast,
        // Only 2000::/3 is global unicast (100::/64 discard, 5f00::/16 SRv6,
        // local-use NAT64 64:ff9b:1::/48 into a private network, …).
        x if (x & 0xe000) != 0x2000 => AddrClass::Reserved,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address an IPv4-mapped or IPv4-compatible IPv6 address stands for.
fn embedded_v4(ip: IpAddr) -> Option<IpAddr> {
    let IpAddr::V6(v6) = ip else { return None };
    if let Some(v4) = v6.to_ipv4_mapped() {
        return Some(IpAddr::V4(v4));
    }
    let s = v6.segments();
    (s[..6] == [0; 6] && !v6.is_unspecified() && !v6.is_loopback()).then(|| IpAddr::V4(low_v4(&s)))
}

fn is_localhost_name(domain: &str) -> bool {
    let d = domain.strip_suffix('.').unwrap_or(domain).to_ascii_lowercase();
    d == "localhost" || d.ends_with(".localhost")
}

/// A URL that passed [`SsrfPolicy::check_url`]: http(s), a host, no
/// credentials, no fragment. If the host is a name, its addresses still have
/// to pass [`SsrfPolicy::filter_resolved`] before connecting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedUrl {
    url: Url,
    host: Host<String>,
    port: u16,
}

impl CheckedUrl {
    /// The normalized URL (store and send this one, not the raw input).
    pub fn url(&self) -> &Url {
        &self.url
    }

    pub fn into_url(self) -> Url {
        self.url
    }

    pub fn host(&self) -> &Host<String> {
        &self.host
    }

    /// The explicit port, or 80/443.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as it goes to DNS (a name) or as a literal.
    pub fn host_str(&self) -> &str {
        self.url.host_str().unwrap_or_default()
    }

    /// The address, when the host is an IP literal (already checked).
    pub fn ip_literal(&self) -> Option<IpAddr> {
        match self.host {
            Host::Ipv4(v4) => Some(IpAddr::V4(v4)),
            Host::Ipv6(v6) => Some(IpAddr::V6(v6)),
            Host::Domain(_) => None,
        }
    }
}

/// Which outbound destinations are allowed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SsrfPolicy {
    /// Non-public ranges that are allowed anyway (e.g. a receiver on the
    /// operator's own network). Compared against the address and, for
    /// IPv4-mapped/compatible IPv6, the IPv4 address it stands for.
    pub allowed_private: Vec<IpNet>,
    /// Only `https` URLs.
    pub require_https: bool,
}

impl Default for SsrfPolicy {
    /// The strict policy: https only, no allowances.
    fn default() -> Self {
        SsrfPolicy { allowed_private: Vec::new(), require_https: true }
    }
}

impl SsrfPolicy {
    fn allowed(&self, ip: IpAddr) -> bool {
        let v4 = embedded_v4(ip);
        self.allowed_private.iter().any(|net| net.contains(&ip) || v4.is_some_and(|v4| net.contains(&v4)))
    }

    /// Refuses a non-public address unless an allowance covers it.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), SsrfError> {
        match classify(ip) {
            Some(class) if !self.allowed(ip) => Err(SsrfError::Forbidden { addr: ip, class }),
            _ => Ok(()),
        }
    }

    /// Parses (WHATWG, so `http://2130706433/`, `http://0x7f.1/`,
    /// `http://0177.0.0.1/` and `http://127.1/` all mean 127.0.0.1) and
    /// checks a URL. An IP-literal host is checked here; a name must still
    /// be resolved and its answers passed to [`Self::filter_resolved`].
    pub fn check_url(&self, raw: &str) -> Result<CheckedUrl, SsrfError> {
        if raw.len() > MAX_URL_LEN {
            return Err(SsrfError::TooLong);
        }
        let mut url = Url::parse(raw).map_err(|_| SsrfError::InvalidUrl)?;
        match url.scheme() {
            "https" => {}
            "http" if !self.require_https => {}
            _ => return Err(SsrfError::Scheme { https_only: self.require_https }),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(SsrfError::Credentials);
        }
        url.set_fragment(None);
        let host = url.host().ok_or(SsrfError::MissingHost)?.to_owned();
        let port = match url.port_or_known_default() {
            Some(0) | None => return Err(SsrfError::InvalidPort),
            Some(p) => p,
        };
        match &host {
            Host::Ipv4(v4) => self.check_ip(IpAddr::V4(*v4))?,
            Host::Ipv6(v6) => self.check_ip(IpAddr::V6(*v6))?,
            Host::Domain(d) if d.is_empty() => return Err(SsrfError::MissingHost),
            Host::Domain(d) if is_localhost_name(d) => {
                if self.check_ip(IpAddr::V4(Ipv4Addr::LOCALHOST)).is_err() {
                    return Err(SsrfError::LocalhostName);
                }
            }
            Host::Domain(_) => {}
        }
        if url.as_str().len() > MAX_URL_LEN {
            return Err(SsrfError::TooLong);
        }
        Ok(CheckedUrl { url, host, port })
    }

    /// Checks what a host name resolved to. Refuses the whole answer if any
    /// address is refused (a name answering one public and one private
    /// address must not be usable), or if there is none. Returns the
    /// addresses, without duplicates, in their original order.
    pub fn filter_resolved(&self, addrs: &[IpAddr]) -> Result<Vec<IpAddr>, SsrfError> {
        if addrs.is_empty() {
            return Err(SsrfError::Unresolvable);
        }
        let mut out = Vec::with_capacity(addrs.len());
        for &ip in addrs {
            self.check_ip(ip).map_err(|e| match e {
                SsrfError::Forbidden { addr, class } => SsrfError::ResolvedForbidden { addr, class },
                other => other,
            })?;
            if !out.contains(&ip) {
                out.push(ip);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lax() -> SsrfPolicy {
        SsrfPolicy { allowed_private: vec![], require_https: false }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn refused_addresses() {
        use AddrClass::*;
        let table: &[(&str, AddrClass)] = &[
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            ("10.0.0.1", Private),
            ("10.255.255.255", Private),
            ("172.16.0.1", Private),
            ("172.31.255.255", Private),
            ("192.168.1.1", Private),
            ("fc00::1", Private),
            ("fd12:3456::1", Private),
            ("169.254.169.254", LinkLocal),
            ("169.254.0.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("febf::1", LinkLocal),
            ("100.64.0.1", SharedAddressSpace),
            ("100.127.255.255", SharedAddressSpace),
            ("224.0.0.1", Multicast),
            ("239.255.255.250", Multicast),
            ("ff02::1", Multicast),
            ("ff0e::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("0.0.0.0", Unspecified),
            ("::", Unspecified),
            ("0.1.2.3", Reserved),
            ("240.0.0.1", Reserved),
            ("250.1.1.1", Reserved),
            ("192.0.0.1", Reserved),
            ("192.0.0.170", Reserved),
            ("192.88.99.1", Reserved),
            ("192.0.2.1", Documentation),
            ("198.51.100.7", Documentation),
            ("203.0.113.9", Documentation),
            ("2001:db8::1", Documentation),
            ("3fff::1", Documentation),
            ("198.18.0.1", Benchmarking),
            ("198.19.255.255", Benchmarking),
            ("2001:2::1", Benchmarking),
            ("fec0::1", SiteLocal),
            // IPv4-mapped: judged as the IPv4 address.
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:7f00:1", Loopback),
            ("::ffff:10.0.0.1", Private),
            ("::ffff:169.254.169.254", LinkLocal),
            ("::ffff:0.0.0.0", Unspecified),
            // IPv4-compatible: embedded class, or reserved if public.
            ("::127.0.0.1", Loopback),
            ("::a9fe:a9fe", LinkLocal),
            ("::8.8.8.8", Reserved),
            // IPv4-translated ::ffff:0:a.b.c.d.
            ("::ffff:0:7f00:1", Loopback),
            ("::ffff:0:808:808", Reserved),
            // NAT64.
            ("64:ff9b::a9fe:a9fe", LinkLocal),
            ("64:ff9b::127.0.0.1", Loopback),
            ("64:ff9b::10.1.2.3", Private),
            ("64:ff9b:1::8.8.8.8", Reserved),
            // Anything else in ::/8, whatever its low bits.
            ("::1:0:7f00:1", Reserved),
            ("::1:0:808:808", Reserved),
            // 6to4.
            ("2002:a9fe:a9fe::", LinkLocal),
            ("2002:7f00:1::1", Loopback),
            ("2002:c0a8:101::", Private),
            // Teredo and other IETF assignments.
            ("2001::1", Tunnel),
            ("2001:0:4136:e378:8000:63bf:3fff:fdd2", Tunnel),
            ("2001:10::1", Reserved),
            ("2001:1::1", Reserved),
            // Outside 2000::/3.
            ("100::1", Reserved),
            ("5f00::1", Reserved),
            ("4000::1", Reserved),
            ("e000::1", Reserved),
        ];
        let policy = lax();
        for &(s, class) in table {
            let addr = ip(s);
            assert_eq!(classify(addr), Some(class), "{s}");
            assert!(is_forbidden(addr), "{s}");
            assert_eq!(policy.check_ip(addr), Err(SsrfError::Forbidden { addr, class }), "{s}");
        }
    }

    #[test]
    fn public_addresses_are_allowed() {
        let policy = lax();
        for s in [
            "93.184.215.14",
            "8.8.8.8",
            "1.1.1.1",
            "172.15.255.255",
            "172.32.0.1",
            "100.63.255.255",
            "100.128.0.1",
            "169.253.1.1",
            "192.0.1.1",
            "192.0.3.1",
            "198.17.255.255",
            "198.20.0.1",
            "223.255.255.255",
            "2606:4700::1111",
            "2a00:1450:4001:80b::200e",
            "::ffff:93.184.215.14",
            "64:ff9b::93.184.215.14",
            "2002:5db8:d70e::1",
            "2001:4860:4860::8888",
            "2001:200::1",
            // Outside 2001::/23, and not NAT64 for all its 64:ff9b-like parts.
            "2001:ff9b:1::1",
            "2606:4700:1::1",
        ] {
            assert_eq!(classify(ip(s)), None, "{s}");
            assert!(!is_forbidden(ip(s)), "{s}");
            assert!(policy.check_ip(ip(s)).is_ok(), "{s}");
        }
    }

    #[test]
    fn allowances() {
        let policy = SsrfPolicy {
            allowed_private: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
            require_https: true,
        };
        for s in ["10.0.0.1", "::ffff:10.0.0.1", "::10.0.0.1", "fd00::5"] {
            assert!(policy.check_ip(ip(s)).is_ok(), "{s}");
        }
        // Only IPv4-mapped and IPv4-compatible forms stand for the allowed
        // IPv4 address; another range with the same low bits does not.
        for s in ["127.0.0.1", "192.168.0.1", "::ffff:192.168.0.1", "fc00::1", "64:ff9b::10.0.0.1", "fc00::a00:1"] {
            assert!(policy.check_ip(ip(s)).is_err(), "{s}");
        }
        assert!(policy.check_url("https://10.1.2.3:8443/hook").is_ok());
        assert!(policy.check_url("https://[::ffff:10.1.2.3]/hook").is_ok());
        assert!(policy.filter_resolved(&[ip("10.0.0.1"), ip("8.8.8.8")]).is_ok());
    }

    /// URLs refused because the host is (or encodes) a refused address.
    #[test]
    fn refused_urls() {
        use AddrClass::*;
        let table: &[(&str, &str, AddrClass)] = &[
            ("http://127.0.0.1/", "127.0.0.1", Loopback),
            ("http://2130706433/", "127.0.0.1", Loopback),
            ("http://0x7f000001/", "127.0.0.1", Loopback),
            ("http://0x7f.1/", "127.0.0.1", Loopback),
            ("http://0177.0.0.1/", "127.0.0.1", Loopback),
            ("http://0177.1/", "127.0.0.1", Loopback),
            ("http://127.1/", "127.0.0.1", Loopback),
            ("http://127.0.1/", "127.0.0.1", Loopback),
            ("http://127.0.0.1./", "127.0.0.1", Loopback),
            ("http://0/", "0.0.0.0", Unspecified),
            ("http://0.0.0.0:8080/", "0.0.0.0", Unspecified),
            ("http://[::]/", "::", Unspecified),
            ("http://[::1]:3000/", "::1", Loopback),
            ("http://[::ffff:127.0.0.1]/", "::ffff:127.0.0.1", Loopback),
            ("http://[::ffff:7f00:1]/", "::ffff:127.0.0.1", Loopback),
            ("http://[::127.0.0.1]/", "::127.0.0.1", Loopback),
            ("http://[64:ff9b::a9fe:a9fe]/", "64:ff9b::a9fe:a9fe", LinkLocal),
            ("http://[2002:a9fe:a9fe::]/", "2002:a9fe:a9fe::", LinkLocal),
            ("http://[2001::1]/", "2001::1", Tunnel),
            ("http://169.254.169.254/latest/meta-data/", "169.254.169.254", LinkLocal),
            ("http://0xa9fea9fe/", "169.254.169.254", LinkLocal),
            ("http://2852039166/", "169.254.169.254", LinkLocal),
            ("http://[fe80::1]/", "fe80::1", LinkLocal),
            ("http://10.0.0.1/", "10.0.0.1", Private),
            ("http://012.0.0.1/", "10.0.0.1", Private),
            ("http://192.168.0.1:8080/x", "192.168.0.1", Private),
            ("http://100.64.0.1/", "100.64.0.1", SharedAddressSpace),
            ("http://224.0.0.1/", "224.0.0.1", Multicast),
            ("http://255.255.255.255/", "255.255.255.255", Broadcast),
            ("http://0xffffffff/", "255.255.255.255", Broadcast),
            ("http://240.0.0.1/", "240.0.0.1", Reserved),
            ("http://192.0.2.1/", "192.0.2.1", Documentation),
            ("http://[2001:db8::1]/", "2001:db8::1", Documentation),
            ("http://198.18.0.1/", "198.18.0.1", Benchmarking),
            ("http://[fec0::1]/", "fec0::1", SiteLocal),
            ("http://[ff02::1]/", "ff02::1", Multicast),
            ("http://[fd00::1]/", "fd00::1", Private),
            ("http://%31%32%37.0.0.1/", "127.0.0.1", Loopback),
            ("http://１２７.０.０.１/", "127.0.0.1", Loopback),
        ];
        let policy = lax();
        for &(url, addr, class) in table {
            assert_eq!(policy.check_url(url), Err(SsrfError::Forbidden { addr: ip(addr), class }), "{url}");
        }
    }

    /// The `url` crate normalizes the odd IPv4 notations to one address.
    #[test]
    fn whatwg_ipv4_parsing() {
        for raw in [
            "http://2130706433/",
            "http://0x7f000001/",
            "http://0x7f.1/",
            "http://0177.0.0.1/",
            "http://127.1/",
            "http://127.0.0.1./",
            "http://0x7F.0.0.1/",
        ] {
            let url = Url::parse(raw).unwrap();
            assert_eq!(url.host(), Some(Host::Ipv4(Ipv4Addr::LOCALHOST)), "{raw}");
            assert_eq!(url.as_str(), "http://127.0.0.1/", "{raw}");
        }
        assert_eq!(Url::parse("http://0/").unwrap().host(), Some(Host::Ipv4(Ipv4Addr::UNSPECIFIED)));
    }

    #[test]
    fn malformed_and_disallowed_urls() {
        let policy = lax();
        let strict = SsrfPolicy::default();
        let long = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN));
        // Expands past the limit when percent-encoded.
        let expands = format!("https://example.com/{}x", " ".repeat(MAX_URL_LEN - 100));
        let cases: &[(&SsrfPolicy, &str, SsrfError)] = &[
            (&policy, "not a url", SsrfError::InvalidUrl),
            (&policy, "", SsrfError::InvalidUrl),
            (&policy, "/relative/path", SsrfError::InvalidUrl),
            (&policy, "http://", SsrfError::InvalidUrl),
            (&policy, "http://[fe80::1%25eth0]/", SsrfError::InvalidUrl),
            (&policy, "http://[fe80::1%eth0]/", SsrfError::InvalidUrl),
            (&policy, "http://1.2.3.4.5/", SsrfError::InvalidUrl),
            (&policy, "http://256.0.0.1/", SsrfError::InvalidUrl),
            (&policy, "http://exa mple.com/", SsrfError::InvalidUrl),
            (&policy, "http://example.com:99999/", SsrfError::InvalidUrl),
            (&policy, "http://example.com:0/", SsrfError::InvalidPort),
            (&policy, &long, SsrfError::TooLong),
            (&policy, &expands, SsrfError::TooLong),
            (&policy, "ftp://example.com/", SsrfError::Scheme { https_only: false }),
            (&policy, "file:///etc/passwd", SsrfError::Scheme { https_only: false }),
            (&policy, "gopher://example.com:70/", SsrfError::Scheme { https_only: false }),
            (&policy, "javascript:alert(1)", SsrfError::Scheme { https_only: false }),
            (&policy, "ws://example.com/", SsrfError::Scheme { https_only: false }),
            (&strict, "http://example.com/", SsrfError::Scheme { https_only: true }),
            (&policy, "http://user:pass@example.com/", SsrfError::Credentials),
            (&policy, "http://user@example.com/", SsrfError::Credentials),
            (&policy, "http://:pass@example.com/", SsrfError::Credentials),
            (&policy, "https://a%40b@example.com/", SsrfError::Credentials),
            (&policy, "http://localhost/", SsrfError::LocalhostName),
            (&policy, "http://LOCALHOST:8080/", SsrfError::LocalhostName),
            (&policy, "http://localhost./", SsrfError::LocalhostName),
            (&policy, "http://api.localhost/", SsrfError::LocalhostName),
        ];
        for (p, url, err) in cases {
            assert_eq!(p.check_url(url).as_ref(), Err(err), "{url}");
        }
        // The limit is inclusive, before and after normalization; a long
        // fragment counts before it is dropped.
        let at_limit = format!("https://example.com/{}", "a".repeat(MAX_URL_LEN - 20));
        assert_eq!(policy.check_url(&at_limit).unwrap().url().as_str().len(), MAX_URL_LEN);
        let fragment = format!("https://example.com/#{}", "a".repeat(MAX_URL_LEN));
        assert_eq!(policy.check_url(&fragment), Err(SsrfError::TooLong));
        // The scheme is checked before credentials, so the strict policy says https.
        assert_eq!(strict.check_url("http://u:p@example.com/"), Err(SsrfError::Scheme { https_only: true }));
    }

    #[test]
    fn accepted_urls() {
        let policy = lax();
        let c = policy.check_url("https://Example.COM/hook?x=1#frag").unwrap();
        assert_eq!(c.url().as_str(), "https://example.com/hook?x=1");
        assert_eq!(c.host(), &Host::Domain("example.com".to_owned()));
        assert_eq!(c.host_str(), "example.com");
        assert_eq!(c.port(), 443);
        assert_eq!(c.ip_literal(), None);

        let c = policy.check_url("http://93.184.215.14:8080/x").unwrap();
        assert_eq!(c.port(), 8080);
        assert_eq!(c.ip_literal(), Some(ip("93.184.215.14")));

        let c = policy.check_url("http://[2606:4700::1111]/").unwrap();
        assert_eq!(c.port(), 80);
        assert_eq!(c.host_str(), "[2606:4700::1111]");
        assert_eq!(c.ip_literal(), Some(ip("2606:4700::1111")));

        // Trailing dot is kept (the resolver gets an absolute name).
        let c = policy.check_url("https://example.com./").unwrap();
        assert_eq!(c.host_str(), "example.com.");

        // IDN to punycode.
        let c = policy.check_url("https://bücher.example/").unwrap();
        assert_eq!(c.host_str(), "xn--bcher-kva.example");

        // Any port.
        assert_eq!(policy.check_url("https://example.com:1/").unwrap().port(), 1);
        assert_eq!(policy.check_url("https://example.com:65535/").unwrap().port(), 65535);

        // localhost is allowed when loopback is.
        let dev = SsrfPolicy { allowed_private: vec!["127.0.0.0/8".parse().unwrap()], require_https: false };
        assert!(dev.check_url("http://localhost:3000/").is_ok());
        assert!(dev.check_url("http://127.1:3000/").is_ok());
    }

    #[test]
    fn resolved_answers() {
        let policy = lax();
        assert_eq!(policy.filter_resolved(&[]), Err(SsrfError::Unresolvable));
        // localhost (or a trailing-dot name) resolving to loopback.
        assert_eq!(
            policy.filter_resolved(&[ip("127.0.0.1")]),
            Err(SsrfError::ResolvedForbidden { addr: ip("127.0.0.1"), class: AddrClass::Loopback })
        );
        assert_eq!(
            policy.filter_resolved(&[ip("::1"), ip("127.0.0.1")]).unwrap_err().class(),
            Some(AddrClass::Loopback)
        );
        // One public and one private answer: refused as a whole.
        assert_eq!(
            policy.filter_resolved(&[ip("93.184.215.14"), ip("10.0.0.1")]),
            Err(SsrfError::ResolvedForbidden { addr: ip("10.0.0.1"), class: AddrClass::Private })
        );
        assert_eq!(
            policy.filter_resolved(&[ip("169.254.169.254"), ip("93.184.215.14")]).unwrap_err().code(),
            "host_not_public"
        );
        assert_eq!(
            policy.filter_resolved(&[ip("93.184.215.14"), ip("2606:4700::1111"), ip("93.184.215.14")]).unwrap(),
            vec![ip("93.184.215.14"), ip("2606:4700::1111")]
        );
    }

    #[test]
    fn messages_and_codes() {
        let e = SsrfError::Forbidden { addr: ip("10.0.0.1"), class: AddrClass::Private };
        assert_eq!(e.to_string(), "the address 10.0.0.1 is private");
        assert_eq!(e.code(), "forbidden_address");
        assert_eq!(e.class().map(AddrClass::as_str), Some("private"));
        let e = SsrfError::Forbidden { addr: ip("169.254.169.254"), class: AddrClass::LinkLocal };
        assert_eq!(e.to_string(), "the address 169.254.169.254 is link-local");
        assert_eq!(SsrfError::Scheme { https_only: true }.to_string(), "the URL scheme must be https");
        assert_eq!(SsrfError::Credentials.to_string(), "credentials in URLs are not allowed");
        // A name's refusals read the same, whatever it resolved to.
        let resolved = SsrfError::ResolvedForbidden { addr: ip("10.0.0.1"), class: AddrClass::Private };
        for e in [resolved, SsrfError::LocalhostName, SsrfError::Unresolvable] {
            assert_eq!(e.to_string(), "the host must resolve to a public address", "{e:?}");
            assert_eq!(e.code(), "host_not_public", "{e:?}");
        }
        assert_eq!(SsrfError::Credentials.code(), "credentials_in_url");
        assert_eq!(SsrfError::LocalhostName.class(), Some(AddrClass::Loopback));
        assert_eq!(SsrfError::Unresolvable.class(), None);
        assert_eq!(SsrfError::TooLong.code(), "url_too_long");
    }
}
