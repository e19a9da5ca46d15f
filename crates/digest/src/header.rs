//! The `Authorization` / `Proxy-Authorization` header of a digest response
//! (RFC 3261 §25.1, RFC 7616 §3.4), read strictly: each parameter once,
//! quoted strings where the RFC quotes them, `nc` as 8 hex digits, the
//! response as lowercase-able hex of the algorithm's length.

use super::Algorithm;

/// Longest header value read; longer ones are refused unread.
pub const MAX_LEN: usize = 4096;
const MAX_PARAMS: usize = 32;

/// A parsed digest response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub realm: String,
    pub nonce: String,
    pub uri: String,
    /// Lowercase hex.
    pub response: String,
    pub algorithm: Algorithm,
    pub cnonce: String,
    /// The 8 hex digits, lowercased (so one count has one spelling).
    pub nc: String,
    pub opaque: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderError {
    TooLong,
    NotDigest,
    /// Not `name=value` pairs separated by commas, or an open quote.
    Syntax,
    Duplicate,
    Missing(&'static str),
    /// An algorithm we do not offer (`-sess`, SHA-512-256, unknown).
    Algorithm,
    /// A `qop` other than `auth`.
    Qop,
    Nc,
    Response,
}

/// Control characters (tab aside) have no place in any field: they end
/// lines, strings and log entries where they land.
fn is_control(c: char) -> bool {
    c.is_control() && c != '\t'
}

fn is_token(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-.!%*_+`'~".contains(&b)
}

/// Reads one `name=value` from `s` (after optional whitespace): the name,
/// the value (unquoted), whether it was quoted, and the rest.
fn param(s: &str) -> Result<(&str, String, bool, &str), HeaderError> {
    let s = s.trim_start_matches([' ', '\t']);
    let name_end = s.bytes().position(|b| !is_token(b)).unwrap_or(s.len());
    if name_end == 0 {
        return Err(HeaderError::Syntax);
    }
    let (name, rest) = s.split_at(name_end);
    let rest = rest.trim_start_matches([' ', '\t']);
    let rest = rest.strip_prefix('=').ok_or(HeaderError::Syntax)?.trim_start_matches([' ', '\t']);
    if let Some(q) = rest.strip_prefix('"') {
        let mut value = String::new();
        let mut chars = q.char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => return Ok((name, value, true, &q[i + 1..])),
                '\\' => match chars.next() {
                    Some((_, e)) if !is_control(e) => value.push(e),
                    _ => return Err(HeaderError::Syntax),
                },
                c if is_control(c) => return Err(HeaderError::Syntax),
                c => value.push(c),
            }
        }
        Err(HeaderError::Syntax)
    } else {
        let end = rest.bytes().position(|b| !is_token(b)).unwrap_or(rest.len());
        if end == 0 {
            return Err(HeaderError::Syntax);
        }
        Ok((name, rest[..end].to_owned(), false, &rest[end..]))
    }
}

/// Parses a `Digest …` credentials header value.
pub fn parse(value: &str) -> Result<Credentials, HeaderError> {
    if value.len() > MAX_LEN {
        return Err(HeaderError::TooLong);
    }
    let value = value.trim_matches([' ', '\t']);
    let (scheme, mut rest) = value.split_once([' ', '\t']).ok_or(HeaderError::NotDigest)?;
    if !scheme.eq_ignore_ascii_case("digest") {
        return Err(HeaderError::NotDigest);
    }
    let mut seen: Vec<String> = Vec::new();
    let mut get = std::collections::HashMap::new();
    loop {
        let (name, value, quoted, after) = param(rest)?;
        let name = name.to_ascii_lowercase();
        if seen.contains(&name) {
            return Err(HeaderError::Duplicate);
        }
        if seen.len() == MAX_PARAMS {
            return Err(HeaderError::Syntax);
        }
        seen.push(name.clone());
        get.insert(name, (value, quoted));
        let after = after.trim_start_matches([' ', '\t']);
        if after.is_empty() {
            break;
        }
        rest = after.strip_prefix(',').ok_or(HeaderError::Syntax)?;
    }
    // Quoted in the RFC's grammar; a token where one is required.
    let mut quoted = |name: &'static str| match get.remove(name) {
        Some((v, true)) => Ok(v),
        Some((_, false)) => Err(HeaderError::Syntax),
        None => Err(HeaderError::Missing(name)),
    };
    let username = quoted("username")?;
    let realm = quoted("realm")?;
    let nonce = quoted("nonce")?;
    let uri = quoted("uri")?;
    let response = quoted("response")?;
    let cnonce = quoted("cnonce")?;
    let opaque = match quoted("opaque") {
        Ok(v) => Some(v),
        Err(HeaderError::Missing(_)) => None,
        Err(e) => return Err(e),
    };
    // Tokens; some clients quote qop, which harms nothing.
    let algorithm = match get.remove("algorithm") {
        None => Algorithm::Md5,
        Some((v, false)) => Algorithm::parse(&v).ok_or(HeaderError::Algorithm)?,
        Some((_, true)) => return Err(HeaderError::Syntax),
    };
    match get.remove("qop") {
        Some((v, _)) if v.eq_ignore_ascii_case("auth") => {}
        Some(_) => return Err(HeaderError::Qop),
        // RFC 2069 responses (no qop, no cnonce, no nc) are not accepted.
        None => return Err(HeaderError::Missing("qop")),
    }
    let nc = match get.remove("nc") {
        Some((v, false)) => v,
        Some((_, true)) => return Err(HeaderError::Syntax),
        None => return Err(HeaderError::Missing("nc")),
    };
    if nc.len() != 8 || !nc.bytes().all(|b| b.is_ascii_hexdigit()) || nc.bytes().all(|b| b == b'0') {
        return Err(HeaderError::Nc);
    }
    if response.len() != algorithm.hex_len() || !response.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(HeaderError::Response);
    }
    if username.is_empty() || nonce.is_empty() || cnonce.is_empty() || uri.is_empty() {
        return Err(HeaderError::Syntax);
    }
    Ok(Credentials {
        username,
        realm,
        nonce,
        uri,
        response: response.to_ascii_lowercase(),
        algorithm,
        cnonce,
        nc: nc.to_ascii_lowercase(),
        opaque,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"Digest username="alice", realm="acme.example", nonce="abc", uri="sip:acme.example", response="6629fae49393a05397450978507c4ef1", algorithm=MD5, cnonce="0a4f113b", qop=auth, nc=00000001"#;

    #[test]
    fn a_response_is_read_field_by_field() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.username, "alice");
        assert_eq!(c.realm, "acme.example");
        assert_eq!(c.nonce, "abc");
        assert_eq!(c.uri, "sip:acme.example");
        assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        assert_eq!(c.algorithm, Algorithm::Md5);
        assert_eq!(c.cnonce, "0a4f113b");
        assert_eq!(c.nc, "00000001");
        assert_eq!(c.opaque, None);
    }

    #[test]
    fn spacing_case_quoted_pairs_and_a_quoted_qop_are_read() {
        let c = parse(
            "digest  USERNAME = \"a\\\"l\\\\ice\" ,realm=\"r\",nonce=\"n\",uri=\"sip:x\",\
             response=\"6629FAE49393A05397450978507C4EF1\",cnonce=\"c\",qop=\"auth\",nc=0000000A,opaque=\"o\"",
        )
        .unwrap();
        assert_eq!(c.username, "a\"l\\ice");
        assert_eq!(c.response, "6629fae49393a05397450978507c4ef1");
        assert_eq!(c.nc, "0000000a");
        assert_eq!(c.opaque.as_deref(), Some("o"));
        assert_eq!(c.algorithm, Algorithm::Md5, "no algorithm means MD5");
    }

    #[test]
    fn sha256_needs_a_64_digit_response() {
        let h = GOOD.replace("algorithm=MD5", "algorithm=SHA-256");
        assert_eq!(parse(&h), Err(HeaderError::Response));
        let h = h.replace("6629fae49393a05397450978507c4ef1", &"ab".repeat(32));
        assert_eq!(parse(&h).unwrap().algorithm, Algorithm::Sha256);
    }

    #[test]
    fn malformed_or_weakened_responses_are_refused() {
        let cases: &[(&str, HeaderError)] = &[
            ("Basic YWxpY2U6cGFzcw==", HeaderError::NotDigest),
            ("Digest", HeaderError::NotDigest),
            (&GOOD.replace("nc=00000001", "nc=00000001, nc=00000002"), HeaderError::Duplicate),
            (
                &GOOD.replace("realm=", "REALM=").replace(", algorithm", ", realm=\"x\", algorithm"),
                HeaderError::Duplicate,
            ),
            (&GOOD.replace("algorithm=MD5", "algorithm=MD5-sess"), HeaderError::Algorithm),
            (&GOOD.replace("algorithm=MD5", "algorithm=SHA-512-256"), HeaderError::Algorithm),
            (&GOOD.replace("algorithm=MD5", "algorithm=\"MD5\""), HeaderError::Syntax),
            (&GOOD.replace("qop=auth", "qop=auth-int"), HeaderError::Qop),
            (&GOOD.replace(", qop=auth", ""), HeaderError::Missing("qop")),
            (&GOOD.replace(", cnonce=\"0a4f113b\"", ""), HeaderError::Missing("cnonce")),
            (&GOOD.replace("nc=00000001", "nc=00000000"), HeaderError::Nc),
            (&GOOD.replace("nc=00000001", "nc=0000001"), HeaderError::Nc),
            (&GOOD.replace("nc=00000001", "nc=0000000g"), HeaderError::Nc),
            (&GOOD.replace("nc=00000001", "nc=\"00000001\""), HeaderError::Syntax),
            (
                &GOOD.replace("6629fae49393a05397450978507c4ef1", "6629fae49393a05397450978507c4ef"),
                HeaderError::Response,
            ),
            (
                &GOOD.replace("6629fae49393a05397450978507c4ef1", "6629fae49393a05397450978507c4efz"),
                HeaderError::Response,
            ),
            (&GOOD.replace("username=\"alice\"", "username=alice"), HeaderError::Syntax),
            (&GOOD.replace("username=\"alice\"", "username=\"\""), HeaderError::Syntax),
            (&GOOD.replace("uri=\"sip:acme.example\"", "uri=\"sip:acme.example"), HeaderError::Syntax),
            (&GOOD.replace(", uri", " uri"), HeaderError::Syntax),
            (&GOOD.replace("realm=\"acme.example\"", "realm=\"a\r\nb\""), HeaderError::Syntax),
            (&GOOD.replace("realm=\"acme.example\"", "realm=\"a\\\rb\""), HeaderError::Syntax),
            (&GOOD.replace("realm=\"acme.example\"", "realm=\"a\\\nb\""), HeaderError::Syntax),
            (&GOOD.replace("username=\"alice\"", "username=\"al\0ice\""), HeaderError::Syntax),
            (&GOOD.replace("username=\"alice\"", "username=\"al\u{1b}ice\""), HeaderError::Syntax),
            (&GOOD.replace("uri=\"sip:acme.example\"", "uri=\"sip:a\\\u{7f}\""), HeaderError::Syntax),
            (&GOOD.replace("nonce=\"abc\"", "nonce=\"\""), HeaderError::Syntax),
            (&GOOD.replace("cnonce=\"0a4f113b\"", "cnonce=\"\""), HeaderError::Syntax),
            (&GOOD.replace("uri=\"sip:acme.example\"", "uri=\"\""), HeaderError::Syntax),
            (&format!("{GOOD},"), HeaderError::Syntax),
            (&format!("{GOOD}, x"), HeaderError::Syntax),
        ];
        for (h, want) in cases {
            assert_eq!(parse(h), Err(*want), "{h}");
        }
    }

    #[test]
    fn unknown_parameters_are_ignored_but_bounded() {
        assert!(parse(&format!("{GOOD}, userhash=false")).is_ok());
        let many: String = (0..40).map(|i| format!(", x{i}=1")).collect();
        assert_eq!(parse(&format!("{GOOD}{many}")), Err(HeaderError::Syntax));
        let long = format!("{GOOD}, x=\"{}\"", "a".repeat(MAX_LEN));
        assert_eq!(parse(&long), Err(HeaderError::TooLong));
        // Exactly MAX_LEN is read.
        let pad = MAX_LEN - GOOD.len() - ", x=\"\"".len();
        let exact = format!("{GOOD}, x=\"{}\"", "a".repeat(pad));
        assert_eq!(exact.len(), MAX_LEN);
        assert!(parse(&exact).is_ok());
        // A tab inside a quoted string is fine.
        assert_eq!(parse(&GOOD.replace("username=\"alice\"", "username=\"al\tice\"")).unwrap().username, "al\tice");
    }
}
