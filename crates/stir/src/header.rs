//! The `Identity` header (RFC 8224 §4.1): a PASSporT in full form, then
//! `;info=<url>`, `;alg=` and `;ppt=`.

use crate::Failure;

/// The longest header value read (a SHAKEN one is about 700 bytes).
pub const MAX_LEN: usize = 4096;

/// An `Identity` header value, as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityHeader<'a> {
    /// The compact JWS (`header.payload.signature`).
    pub jws: &'a str,
    /// Where the signer's certificate is.
    pub info: &'a str,
    pub alg: Option<&'a str>,
    pub ppt: Option<&'a str>,
}

/// Our header for a signed PASSporT.
pub fn format(jws: &str, info: &str) -> String {
    format!("{jws};info=<{info}>;alg=ES256;ppt=\"shaken\"")
}

pub fn parse(value: &str) -> Result<IdentityHeader<'_>, Failure> {
    if value.len() > MAX_LEN {
        return Err(Failure::Malformed);
    }
    let mut parts = value.split(';');
    let jws = parts.next().unwrap_or_default().trim();
    let jws_ok = jws.split('.').count() == 3
        && jws.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if !jws_ok {
        return Err(Failure::Malformed);
    }
    let (mut info, mut alg, mut ppt) = (None, None, None);
    for param in parts {
        let (name, v) = param.split_once('=').ok_or(Failure::Malformed)?;
        let v = v.trim();
        let slot = match name.trim().to_ascii_lowercase().as_str() {
            "info" => {
                let url = v.strip_prefix('<').and_then(|v| v.strip_suffix('>')).ok_or(Failure::Malformed)?;
                (&mut info, url)
            }
            "alg" => (&mut alg, v),
            "ppt" => (&mut ppt, v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v)),
            // Parameters of later extensions are not ours to judge.
            _ => continue,
        };
        // A parameter given twice is ambiguous.
        if slot.0.replace(slot.1).is_some() {
            return Err(Failure::Malformed);
        }
    }
    let info = info.ok_or(Failure::Malformed)?;
    if info.is_empty() || info.bytes().any(|b| b.is_ascii_control() || b == b' ') {
        return Err(Failure::Malformed);
    }
    Ok(IdentityHeader { jws, info, alg, ppt })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ours_reads_back() {
        let v = format("a.b.c", "https://cert.example.org/passport.pem");
        let h = parse(&v).unwrap();
        assert_eq!(h.jws, "a.b.c");
        assert_eq!(h.info, "https://cert.example.org/passport.pem");
        assert_eq!(h.alg, Some("ES256"));
        assert_eq!(h.ppt, Some("shaken"));
    }

    #[test]
    fn broken_headers_are_malformed() {
        for v in [
            "",
            "a.b;info=<https://x/>",
            "a.b.c",
            "a.b.c;info=https://x/",
            "a.b.c;info=<https://x/>;info=<https://y/>",
            "a.b.c;info",
            "a b.c.d;info=<https://x/>",
            "a.b.c;info=<>",
            "a.b.c;info=<https://x/\r\nVia: x>",
        ] {
            assert_eq!(parse(v), Err(Failure::Malformed), "{v:?}");
        }
        assert_eq!(parse(&"a".repeat(MAX_LEN + 1)), Err(Failure::Malformed));
    }
}
