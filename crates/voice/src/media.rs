//! Media security from the SDP of an offer or an answer: which SRTP a call
//! leg offers, and whether a policy admits it. SRTP keys are never taken
//! over a plaintext transport, an accepted offer is never answered weaker,
//! and weak or unknown suites are refused.

use std::io::Cursor;

use sdp::description::media::MediaDescription;
use sdp::SessionDescription;

/// What a trunk or identity asks of media.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SrtpPolicy {
    /// SRTP (SDES or DTLS) on every audio stream, or the call is refused.
    Required,
    /// SRTP when the other side offers it; plain RTP is accepted.
    #[default]
    Preferred,
    /// No requirement (SRTP offered is still checked and kept).
    Off,
}

impl SrtpPolicy {
    pub fn parse(s: &str) -> Option<SrtpPolicy> {
        match s {
            "required" => Some(SrtpPolicy::Required),
            "preferred" => Some(SrtpPolicy::Preferred),
            "off" => Some(SrtpPolicy::Off),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SrtpPolicy::Required => "required",
            SrtpPolicy::Preferred => "preferred",
            SrtpPolicy::Off => "off",
        }
    }
}

/// The SDES suites accepted (RFC 4568, RFC 6188, RFC 7714). Others, and
/// the 32-bit tag variants, are refused.
pub const SDES_SUITES: [&str; 4] =
    ["AES_CM_128_HMAC_SHA1_80", "AES_256_CM_HMAC_SHA1_80", "AEAD_AES_128_GCM", "AEAD_AES_256_GCM"];

/// DTLS fingerprint hashes accepted (RFC 8122): SHA-1 and MD5 are not.
const FINGERPRINT_HASHES: [&str; 3] = ["sha-256", "sha-384", "sha-512"];

/// How one description protects its audio.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Security {
    /// Plain RTP (or no audio stream at all).
    None,
    /// SDES: the suites offered (or the one answered), each accepted.
    Sdes(Vec<String>),
    /// DTLS-SRTP with a fingerprint.
    Dtls,
}

impl Security {
    pub fn is_srtp(&self) -> bool {
        !matches!(self, Security::None)
    }

    /// For a call record: the suite, `dtls`, or `none`.
    pub fn label(&self) -> String {
        match self {
            Security::None => "none".into(),
            Security::Dtls => "dtls".into(),
            Security::Sdes(s) => s.first().cloned().unwrap_or_else(|| "sdes".into()),
        }
    }
}

/// Why media is refused: the `Warning` reason word (488 Not Acceptable
/// Here, except `sdp`: 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The description does not parse.
    Sdp,
    /// The policy requires SRTP and none is offered (or no offer at all).
    SrtpRequired,
    /// An SRTP stream with a weak or unknown suite, no key, or no usable
    /// fingerprint; or streams that disagree.
    SrtpSuite,
    /// SDES keys over a plaintext transport.
    SdesPlaintext,
    /// An answer weaker than its offer.
    SrtpDowngrade,
    /// DTLS-SRTP where SRTP is required, over plaintext signalling: its
    /// fingerprint could be replaced on the way, and with it the media's
    /// protection (RFC 5763 §8).
    DtlsPlaintext,
}

impl Refused {
    pub fn reason(self) -> &'static str {
        match self {
            Refused::Sdp => "sdp",
            Refused::SrtpRequired => "srtp_required",
            Refused::SrtpSuite => "srtp_suite",
            Refused::SdesPlaintext => "sdes_plaintext",
            Refused::SrtpDowngrade => "srtp_downgrade",
            Refused::DtlsPlaintext => "dtls_plaintext",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Refused::Sdp => 400,
            _ => 488,
        }
    }
}

/// The security of a description's audio streams. Every active audio
/// stream must be protected the same way: one plain stream beside an
/// SRTP one is refused (it would carry the call in the clear).
pub fn security_of(sdp: &[u8]) -> Result<Security, Refused> {
    // Only CRLF or LF line ends and no other control bytes: a bare CR is a
    // line end to some parsers and not to ours, and would hide a line.
    let mut bytes = sdp.iter().peekable();
    while let Some(&b) = bytes.next() {
        let bad = match b {
            b'\r' => bytes.peek() != Some(&&b'\n'),
            b'\n' | b'\t' => false,
            _ => b < 0x20 || b == 0x7f,
        };
        if bad {
            return Err(Refused::Sdp);
        }
    }
    let desc = SessionDescription::unmarshal(&mut Cursor::new(sdp)).map_err(|_| Refused::Sdp)?;
    let session_fingerprint = desc.attribute("fingerprint").map(String::as_str);
    let mut found: Option<Security> = None;
    // Every active stream, not only audio: video, text (the conversation
    // itself) and fax are media too.
    for m in desc.media_descriptions.iter().filter(|m| m.media_name.port.value != 0) {
        let s = stream_security(m, session_fingerprint)?;
        match &found {
            None => found = Some(s),
            Some(f) if std::mem::discriminant(f) != std::mem::discriminant(&s) => return Err(Refused::SrtpSuite),
            Some(_) => {}
        }
    }
    Ok(found.unwrap_or(Security::None))
}

/// Whether the SDP carries keys anywhere (`a=crypto` at any level or in
/// any profile, an RFC 5939 capability holding one, a `k=` line): such a
/// description may travel only over TLS, whatever its streams say.
pub fn has_keys(sdp: &[u8]) -> bool {
    String::from_utf8_lossy(sdp).split(['\r', '\n']).any(|line| {
        let l = line.trim_start().to_ascii_lowercase();
        l.starts_with("k=") || l.starts_with("a=crypto") || (l.starts_with("a=acap") && l.contains("crypto"))
    })
}

fn stream_security(m: &MediaDescription, session_fingerprint: Option<&str>) -> Result<Security, Refused> {
    let proto = m.media_name.protos.join("/");
    match proto.as_str() {
        "RTP/AVP" | "RTP/AVPF" => Ok(Security::None),
        "RTP/SAVP" | "RTP/SAVPF" => {
            let mut suites = Vec::new();
            for a in m.attributes.iter().filter(|a| a.key == "crypto") {
                suites.push(sdes_suite(a.value.as_deref().unwrap_or(""))?);
            }
            if suites.is_empty() {
                return Err(Refused::SrtpSuite);
            }
            Ok(Security::Sdes(suites))
        }
        "UDP/TLS/RTP/SAVP" | "UDP/TLS/RTP/SAVPF" | "TCP/TLS/RTP/SAVP" | "TCP/TLS/RTP/SAVPF" => {
            let media_fingerprint = m.attribute("fingerprint").flatten();
            match media_fingerprint.or(session_fingerprint) {
                Some(f) if fingerprint_ok(f) => Ok(Security::Dtls),
                _ => Err(Refused::SrtpSuite),
            }
        }
        // Not RTP (fax over UDPTL, BFCP, MSRP): not protected by SRTP.
        _ => Ok(Security::None),
    }
}

/// Session parameters (RFC 4568 §6.3) that switch protection off.
const WEAKENING: [&str; 3] = ["UNENCRYPTED_SRTP", "UNENCRYPTED_SRTCP", "UNAUTHENTICATED_SRTP"];

/// `tag suite key-params [session-params]` (RFC 4568 §9.1): the suite, if
/// accepted, with one inline key of its length (key and salt) and nothing
/// that switches protection off.
fn sdes_suite(value: &str) -> Result<String, Refused> {
    let mut parts = value.split_ascii_whitespace();
    let (Some(tag), Some(suite), Some(key)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Refused::SrtpSuite);
    };
    let tag_ok = !tag.is_empty() && tag.len() <= 10 && tag.bytes().all(|b| b.is_ascii_digit());
    let suite = suite.to_ascii_uppercase();
    let Some(key_len) = key_length(&suite) else { return Err(Refused::SrtpSuite) };
    let inline_ok = key
        .get(..7)
        .filter(|p| p.eq_ignore_ascii_case("inline:"))
        .and_then(|_| key[7..].split('|').next())
        .and_then(|k| base64::Engine::decode(&base64::engine::general_purpose::STANDARD, k).ok())
        .is_some_and(|k| k.len() == key_len);
    let weakened = parts.any(|p| WEAKENING.iter().any(|w| p.eq_ignore_ascii_case(w)));
    if !tag_ok || !inline_ok || weakened {
        return Err(Refused::SrtpSuite);
    }
    Ok(suite)
}

/// Master key and salt of an accepted suite, in bytes.
fn key_length(suite: &str) -> Option<usize> {
    match suite {
        "AES_CM_128_HMAC_SHA1_80" => Some(30),
        "AES_256_CM_HMAC_SHA1_80" => Some(46),
        "AEAD_AES_128_GCM" => Some(28),
        "AEAD_AES_256_GCM" => Some(44),
        _ => None,
    }
}

/// `hash-func fingerprint` with an accepted hash.
fn fingerprint_ok(value: &str) -> bool {
    let mut parts = value.split_ascii_whitespace();
    match (parts.next(), parts.next()) {
        (Some(hash), Some(fp)) => {
            FINGERPRINT_HASHES.contains(&hash.to_ascii_lowercase().as_str())
                && fp.split(':').all(|b| b.len() == 2 && b.bytes().all(|c| c.is_ascii_hexdigit()))
        }
        _ => false,
    }
}

/// Whether an offer (`None`: the INVITE carried none) is admitted under
/// `policy` on a transport that is `encrypted` (TLS) or not; its security
/// when it is.
pub fn check_offer(policy: SrtpPolicy, offer: Option<&[u8]>, encrypted: bool) -> Result<Security, Refused> {
    if offer.is_some_and(has_keys) && !encrypted {
        return Err(Refused::SdesPlaintext);
    }
    let security = match offer.map(security_of) {
        Some(Ok(s)) => s,
        // Not understood, and not asked to hold to anything: it carries no
        // key (above), so it is passed as it is.
        Some(Err(Refused::Sdp)) if policy != SrtpPolicy::Required => Security::None,
        Some(Err(e)) => return Err(e),
        None => Security::None,
    };
    if policy == SrtpPolicy::Required && !security.is_srtp() {
        return Err(Refused::SrtpRequired);
    }
    if policy == SrtpPolicy::Required && security == Security::Dtls && !encrypted {
        return Err(Refused::DtlsPlaintext);
    }
    Ok(security)
}

/// Whether an offer may go to a trunk: SDES keys only over TLS, and SRTP
/// when the trunk's policy requires it (an offer of none is plain).
pub fn check_towards_trunk(policy: SrtpPolicy, offer: Option<&[u8]>, trunk_tls: bool) -> Result<(), Refused> {
    if offer.is_some_and(has_keys) && !trunk_tls {
        return Err(Refused::SdesPlaintext);
    }
    let security = offer.map(security_of).and_then(Result::ok);
    if policy == SrtpPolicy::Required && !security.as_ref().is_some_and(Security::is_srtp) {
        return Err(Refused::SrtpRequired);
    }
    if policy == SrtpPolicy::Required && security == Some(Security::Dtls) && !trunk_tls {
        return Err(Refused::DtlsPlaintext);
    }
    Ok(())
}

/// Whether an answer keeps what its offer asked: never plain against an
/// SRTP offer, never another kind, and an SDES suite the offer offered.
pub fn check_answer(offered: &Security, answer: Option<&[u8]>) -> Result<Security, Refused> {
    let answered = match answer {
        Some(sdp) => security_of(sdp).map_err(|_| Refused::SrtpDowngrade)?,
        None => Security::None,
    };
    let kept = match (offered, &answered) {
        (Security::None, _) => true,
        (Security::Dtls, Security::Dtls) => true,
        (Security::Sdes(offered), Security::Sdes(chosen)) => {
            chosen.len() == 1 && chosen.iter().all(|c| offered.contains(c))
        }
        _ => false,
    };
    if kept {
        Ok(answered)
    } else {
        Err(Refused::SrtpDowngrade)
    }
}

/// Our own answer for a call whose media we do not carry. To an SRTP offer:
/// every offered stream declined (port 0) in its own profile, one line per
/// offered line as RFC 3264 §6 asks, never a stream in the clear. To a
/// plain offer (or none): an inactive plain audio stream.
pub fn declining_answer(host: &str, offered: &Security, offer: Option<&[u8]>) -> Vec<u8> {
    let lines: Option<String> = offer
        .filter(|_| offered.is_srtp())
        .and_then(|sdp| SessionDescription::unmarshal(&mut Cursor::new(sdp)).ok())
        .map(|d| {
            d.media_descriptions
                .iter()
                .map(|m| {
                    let n = &m.media_name;
                    let format = n.formats.first().map_or("0", String::as_str);
                    format!("m={} 0 {} {format}\r\n", n.media, n.protos.join("/"))
                })
                .collect()
        })
        .filter(|l: &String| !l.is_empty());
    let media = lines.unwrap_or_else(|| "m=audio 9 RTP/AVP 0\r\na=inactive\r\n".to_owned());
    format!("v=0\r\no=palisade 0 0 IN IP4 {host}\r\ns=-\r\nc=IN IP4 0.0.0.0\r\nt=0 0\r\n{media}").into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdp(media: &str) -> Vec<u8> {
        format!("v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nc=IN IP4 192.0.2.1\r\nt=0 0\r\n{media}").into_bytes()
    }

    const KEY: &str = "inline:WVNfX19zZW1jdGwgKCkgewkyMjA7fQp9CnVubGVzcyBzaWd1";

    /// An inline key of the suite's length (30 bytes for unknown suites).
    fn key(suite: &str) -> String {
        let len = key_length(suite).unwrap_or(30);
        format!("inline:{}", base64::Engine::encode(&base64::engine::general_purpose::STANDARD, vec![7u8; len]))
    }

    fn sdes(suite: &str) -> Vec<u8> {
        sdp(&format!("m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {suite} {}\r\n", key(suite)))
    }

    fn dtls(hash: &str) -> Vec<u8> {
        sdp(&format!("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:{hash} AB:CD:EF:01\r\na=setup:actpass\r\n"))
    }

    const PLAIN: &str = "m=audio 49170 RTP/AVP 0 8\r\n";

    #[test]
    fn offers_are_classified() {
        assert_eq!(security_of(&sdp(PLAIN)), Ok(Security::None));
        for suite in SDES_SUITES {
            assert_eq!(security_of(&sdes(suite)), Ok(Security::Sdes(vec![suite.to_owned()])), "{suite}");
        }
        assert_eq!(security_of(&dtls("sha-256")), Ok(Security::Dtls));
        // No audio at all: nothing to protect.
        assert_eq!(security_of(&sdp("m=video 5000 RTP/AVP 96\r\n")), Ok(Security::None));
        // A declined stream does not count.
        let declined = sdp(&format!(
            "m=audio 0 RTP/AVP 0\r\nm=audio 5000 RTP/SAVP 0\r\na=crypto:1 {} {}\r\n",
            SDES_SUITES[0],
            key(SDES_SUITES[0])
        ));
        assert!(security_of(&declined).unwrap().is_srtp());
    }

    #[test]
    fn weak_unknown_or_incomplete_srtp_is_refused() {
        for bad in [
            sdes("AES_CM_128_HMAC_SHA1_32"),
            sdes("F8_128_HMAC_SHA1_80"),
            sdes("NULL_HMAC_SHA1_80"),
            sdp("m=audio 49170 RTP/SAVP 0\r\n"),
            sdp(&format!("m=audio 49170 RTP/SAVP 0\r\na=crypto:x {} {KEY}\r\n", SDES_SUITES[0])),
            sdp(&format!("m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {}\r\n", SDES_SUITES[0])),
            // One good suite beside a weak one: the answerer could pick the weak one.
            sdp(&format!(
                "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {} {KEY}\r\na=crypto:2 AES_CM_128_HMAC_SHA1_32 {KEY}\r\n",
                SDES_SUITES[0]
            )),
            dtls("sha-1"),
            dtls("md5"),
            sdp("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\n"),
            // A plain stream beside an SRTP one would carry the call in the clear.
            sdp(&format!(
                "m=audio 5000 RTP/AVP 0\r\nm=audio 5002 RTP/SAVP 0\r\na=crypto:1 {} {KEY}\r\n",
                SDES_SUITES[0]
            )),
        ] {
            assert_eq!(security_of(&bad), Err(Refused::SrtpSuite), "{}", String::from_utf8_lossy(&bad));
        }
        assert_eq!(security_of(b"not sdp"), Err(Refused::Sdp));
        // A transport profile the parser does not know is not understood.
        assert_eq!(security_of(&sdp("m=audio 9 RTP/XYZ 0\r\n")), Err(Refused::Sdp));
        // A session-level fingerprint serves every stream.
        let session_level = "v=0\r\no=- 1 1 IN IP4 192.0.2.1\r\ns=-\r\nt=0 0\r\na=fingerprint:sha-256 AB:CD\r\nm=audio 9 UDP/TLS/RTP/SAVP 0\r\n";
        assert_eq!(security_of(session_level.as_bytes()), Ok(Security::Dtls));
    }

    #[test]
    fn keys_anywhere_count_and_weakened_sessions_are_refused() {
        // Keys outside an SRTP profile still travel in the SDP.
        for keyed in [
            sdp(&format!("m=audio 49170 RTP/AVP 0\r\na=crypto:1 {} {KEY}\r\n", SDES_SUITES[0])),
            sdp("m=audio 49170 RTP/AVP 0\r\na=acap:1 crypto:1 AES_CM_128_HMAC_SHA1_80 inline:x\r\n"),
            sdp("m=audio 49170 RTP/AVP 0\r\nk=clear:secret\r\n"),
            sdp(&format!("m=video 5000 RTP/SAVP 96\r\na=crypto:1 {} {KEY}\r\n", SDES_SUITES[0])),
        ] {
            assert!(has_keys(&keyed), "{}", String::from_utf8_lossy(&keyed));
            for p in [SrtpPolicy::Required, SrtpPolicy::Preferred, SrtpPolicy::Off] {
                assert_eq!(check_offer(p, Some(&keyed), false), Err(Refused::SdesPlaintext));
            }
        }
        assert!(!has_keys(&sdp(PLAIN)) && !has_keys(&dtls("sha-256")));
        // Session parameters that switch protection off, a key of the wrong
        // length, a key that is not base64.
        for bad in [
            format!("{} UNENCRYPTED_SRTP", key(SDES_SUITES[0])),
            format!("{} unauthenticated_srtp", key(SDES_SUITES[0])),
            format!("{} UNENCRYPTED_SRTCP", key(SDES_SUITES[0])),
            key(SDES_SUITES[1]),
            "inline:%%%".to_owned(),
            "INLINE".to_owned(),
        ] {
            let offer = sdp(&format!("m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {} {bad}\r\n", SDES_SUITES[0]));
            assert_eq!(security_of(&offer), Err(Refused::SrtpSuite), "{bad}");
        }
        // Names and the key's prefix in any case; a lifetime and MKI are fine.
        let offer = sdp(&format!(
            "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 aes_cm_128_hmac_sha1_80 INLINE:{}|2^20|1:4 FEC_ORDER=FEC_SRTP\r\n",
            &key(SDES_SUITES[0])[7..]
        ));
        assert_eq!(security_of(&offer), Ok(Security::Sdes(vec![SDES_SUITES[0].to_owned()])));
        // A bare CR hides a line from us, not from every parser.
        let hidden = sdp(&format!(
            "m=audio 49170 RTP/SAVP 0\r\na=ptime:20\rm=audio 6000 RTP/AVP 0\r\na=crypto:1 {} {}\r\n",
            SDES_SUITES[0],
            key(SDES_SUITES[0])
        ));
        assert_eq!(security_of(&hidden), Err(Refused::Sdp));
        assert_eq!(security_of(&sdp("m=audio 49170 RTP/AVP 0\r\na=x:\0\r\n")), Err(Refused::Sdp));
        // Every active stream counts: SRTP audio beside plain video is refused.
        let video = sdp(&format!(
            "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {} {}\r\nm=video 5000 RTP/AVP 96\r\n",
            SDES_SUITES[0],
            key(SDES_SUITES[0])
        ));
        assert_eq!(security_of(&video), Err(Refused::SrtpSuite));
        // What the parser does not understand passes only where nothing is
        // required of it, and only without keys.
        assert_eq!(check_offer(SrtpPolicy::Preferred, Some(b"v=0\r\nnonsense\r\n"), false), Ok(Security::None));
        assert_eq!(check_offer(SrtpPolicy::Required, Some(b"v=0\r\nnonsense\r\n"), true), Err(Refused::Sdp));
    }

    #[test]
    fn the_policy_and_the_transport_decide() {
        let (plain, keyed, dtls) = (sdp(PLAIN), sdes(SDES_SUITES[1]), dtls("sha-256"));
        let check = |p, o: &[u8], tls| check_offer(p, Some(o), tls);
        assert_eq!(check(SrtpPolicy::Required, &plain, true), Err(Refused::SrtpRequired));
        assert_eq!(check_offer(SrtpPolicy::Required, None, true), Err(Refused::SrtpRequired));
        assert!(check(SrtpPolicy::Required, &keyed, true).is_ok());
        assert!(check(SrtpPolicy::Preferred, &dtls, false).is_ok(), "DTLS keys never travel in the SDP");
        // But where SRTP is required, its fingerprint must not travel where it can be replaced.
        assert_eq!(check(SrtpPolicy::Required, &dtls, false), Err(Refused::DtlsPlaintext));
        assert!(check(SrtpPolicy::Required, &dtls, true).is_ok());
        assert!(check(SrtpPolicy::Preferred, &plain, false).is_ok());
        assert!(check(SrtpPolicy::Off, &plain, false).is_ok());
        for p in [SrtpPolicy::Required, SrtpPolicy::Preferred, SrtpPolicy::Off] {
            assert_eq!(check(p, &keyed, false), Err(Refused::SdesPlaintext), "{p:?}");
        }
        assert_eq!(check_offer(SrtpPolicy::Required, Some(b"junk"), true), Err(Refused::Sdp));
        assert_eq!(Refused::SrtpRequired.status(), 488);
        assert_eq!(Refused::Sdp.status(), 400);
        for p in ["required", "preferred", "off"] {
            assert_eq!(SrtpPolicy::parse(p).map(SrtpPolicy::as_str), Some(p));
        }
        assert_eq!(SrtpPolicy::parse("maybe"), None);
        assert_eq!(SrtpPolicy::default(), SrtpPolicy::Preferred);
    }

    #[test]
    fn what_goes_to_a_trunk() {
        let (plain, keyed, dtls) = (sdp(PLAIN), sdes(SDES_SUITES[0]), dtls("sha-256"));
        let check = check_towards_trunk;
        assert_eq!(check(SrtpPolicy::Preferred, Some(&keyed), false), Err(Refused::SdesPlaintext));
        assert_eq!(check(SrtpPolicy::Preferred, Some(&keyed), true), Ok(()));
        assert_eq!(check(SrtpPolicy::Required, Some(&plain), true), Err(Refused::SrtpRequired));
        assert_eq!(check(SrtpPolicy::Required, None, true), Err(Refused::SrtpRequired));
        assert_eq!(check(SrtpPolicy::Required, Some(&dtls), false), Err(Refused::DtlsPlaintext));
        assert_eq!(check(SrtpPolicy::Required, Some(&dtls), true), Ok(()));
        assert_eq!(check(SrtpPolicy::Preferred, Some(&dtls), false), Ok(()));
        assert_eq!(check(SrtpPolicy::Preferred, Some(&plain), false), Ok(()));
        assert_eq!(check(SrtpPolicy::Off, None, false), Ok(()));
    }

    #[test]
    fn an_answer_is_never_weaker_than_its_offer() {
        let offered = security_of(&sdp(&format!(
            "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {} {}\r\na=crypto:2 {} {}\r\n",
            SDES_SUITES[0],
            key(SDES_SUITES[0]),
            SDES_SUITES[2],
            key(SDES_SUITES[2])
        )))
        .unwrap();
        let answer = sdes(SDES_SUITES[2]);
        assert_eq!(check_answer(&offered, Some(&answer)), Ok(Security::Sdes(vec![SDES_SUITES[2].to_owned()])));
        assert_eq!(check_answer(&offered, Some(&sdp(PLAIN))), Err(Refused::SrtpDowngrade));
        assert_eq!(check_answer(&offered, None), Err(Refused::SrtpDowngrade));
        assert_eq!(check_answer(&offered, Some(&sdes(SDES_SUITES[1]))), Err(Refused::SrtpDowngrade), "not offered");
        assert_eq!(check_answer(&offered, Some(&dtls("sha-256"))), Err(Refused::SrtpDowngrade));
        assert_eq!(check_answer(&Security::Dtls, Some(&dtls("sha-512"))), Ok(Security::Dtls));
        assert_eq!(check_answer(&Security::Dtls, Some(b"junk")), Err(Refused::SrtpDowngrade));
        assert_eq!(check_answer(&Security::None, Some(&sdp(PLAIN))), Ok(Security::None));
    }

    /// Whatever a caller sends, the check answers (it reads untrusted
    /// input on the edge): every truncation and byte change of real offers.
    #[test]
    fn mangled_descriptions_never_panic() {
        let offers = [sdes(SDES_SUITES[0]), dtls("sha-256"), sdp(PLAIN)];
        for offer in &offers {
            for cut in 0..offer.len() {
                let _ = security_of(&offer[..cut]);
            }
            for i in 0..offer.len() {
                for b in [0u8, b' ', b':', b'\n', b'=', 0xFF, b'/'] {
                    let mut m = offer.clone();
                    m[i] = b;
                    let _ = security_of(&m);
                    let _ = check_answer(&Security::Dtls, Some(&m));
                }
            }
        }
    }

    #[test]
    fn our_answer_never_answers_srtp_in_the_clear() {
        let keyed = sdes(SDES_SUITES[0]);
        let offered = security_of(&keyed).unwrap();
        let ours = declining_answer("edge.example", &offered, Some(&keyed));
        let text = String::from_utf8(ours.clone()).unwrap();
        assert!(text.contains("m=audio 0 RTP/SAVP 0"), "{text}");
        // Declined, so not weaker: no active stream in the clear.
        assert_eq!(security_of(&ours), Ok(Security::None));
        // One line per offered line, each declined in its own profile.
        let two = sdp(&format!(
            "m=audio 49170 RTP/SAVP 0\r\na=crypto:1 {s} {k}\r\nm=video 5000 RTP/SAVP 96\r\na=crypto:1 {s} {k}\r\n",
            s = SDES_SUITES[0],
            k = key(SDES_SUITES[0])
        ));
        let ours =
            String::from_utf8(declining_answer("edge.example", &security_of(&two).unwrap(), Some(&two))).unwrap();
        assert!(ours.contains("m=audio 0 RTP/SAVP 0\r\nm=video 0 RTP/SAVP 96\r\n"), "{ours}");
        let plain = declining_answer("edge.example", &Security::None, Some(&sdp(PLAIN)));
        assert!(String::from_utf8(plain).unwrap().contains("m=audio 9 RTP/AVP 0\r\na=inactive"));
        assert_eq!(Security::None.label(), "none");
        assert_eq!(offered.label(), SDES_SUITES[0]);
        assert_eq!(Security::Dtls.label(), "dtls");
    }
}
