use super::*;

const NOW: u64 = 1_765_000_000_000;
const TTL: u64 = 300_000;

/// RFC 7616 §3.9.1: the same request answered with MD5 and with SHA-256.
fn rfc_credentials(algorithm: Algorithm) -> Credentials {
    Credentials {
        username: "Mufasa".into(),
        realm: "http-auth@example.org".into(),
        nonce: "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into(),
        uri: "/dir/index.html".into(),
        response: String::new(),
        algorithm,
        cnonce: "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ".into(),
        nc: "00000001".into(),
        opaque: None,
    }
}

#[test]
fn responses_match_rfc_7616s_examples() {
    for (algorithm, want) in [
        (Algorithm::Md5, "8ca523f5e9506fed4657c9700eebdbec"),
        (Algorithm::Sha256, "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"),
    ] {
        let c = rfc_credentials(algorithm);
        let ha1 = ha1(algorithm, "Mufasa", "http-auth@example.org", "Circle of Life");
        assert_eq!(response(algorithm, &ha1, &c, "GET"), want, "{algorithm:?}");
    }
}

#[test]
fn algorithms_are_named_and_parsed_as_the_rfcs_spell_them() {
    assert_eq!(Algorithm::parse("sha-256"), Some(Algorithm::Sha256));
    assert_eq!(Algorithm::parse("md5"), Some(Algorithm::Md5));
    for bad in ["MD5-sess", "SHA-256-sess", "SHA-512-256", "SHA256", ""] {
        assert_eq!(Algorithm::parse(bad), None, "{bad}");
    }
    assert_eq!((Algorithm::Sha256.hex_len(), Algorithm::Md5.hex_len()), (64, 32));
}

const KEY: [u8; 32] = [9u8; 32];
const BOTH: &[Algorithm] = &[Algorithm::Sha256, Algorithm::Md5];

fn realm<'a>(key: &'a NonceKey, offered: &'a [Algorithm]) -> Realm<'a> {
    Realm::new(key, "acme.sip.example", offered, TTL).unwrap()
}

const ACCEPTED: Verdict = Verdict::Accepted { replay_until_ms: NOW + TTL + 5_000 };

/// What a client that knows the password answers to `challenge`.
fn answer(challenge: &str, password: &str, method: &str, nc: &str) -> Credentials {
    let field = |name: &str| {
        let at = challenge.find(&format!("{name}=")).unwrap() + name.len() + 1;
        let rest = &challenge[at..];
        let rest = rest.strip_prefix('"').unwrap_or(rest);
        rest[..rest.find(['"', ',']).unwrap_or(rest.len())].to_owned()
    };
    let algorithm = Algorithm::parse(&field("algorithm")).unwrap();
    let mut c = Credentials {
        username: "alice".into(),
        realm: field("realm"),
        nonce: field("nonce"),
        uri: "sip:acme.sip.example".into(),
        response: String::new(),
        algorithm,
        cnonce: "0a4f113b".into(),
        nc: nc.into(),
        opaque: None,
    };
    c.response = response(algorithm, &ha1(algorithm, "alice", &c.realm, password), &c, method);
    c
}

#[test]
fn challenges_offer_sha256_first_then_md5_with_fresh_nonces() {
    let key = NonceKey::new(KEY);
    let r = realm(&key, BOTH);
    let ch = r.challenges(false, NOW);
    assert_eq!(ch.len(), 2);
    assert!(ch[0].starts_with("Digest realm=\"acme.sip.example\", nonce=\""), "{}", ch[0]);
    assert!(ch[0].ends_with("\", algorithm=SHA-256, qop=\"auth\""), "{}", ch[0]);
    assert!(ch[1].ends_with("\", algorithm=MD5, qop=\"auth\""), "{}", ch[1]);
    assert_ne!(answer(&ch[0], "pw", "REGISTER", "00000001").nonce, answer(&ch[1], "pw", "REGISTER", "00000001").nonce);
    assert!(r.challenges(true, NOW).iter().all(|c| c.ends_with(", stale=true")));
    assert!(!ch.iter().any(|c| c.contains("stale")));
    // A realm holding a quote or backslash stays one quoted string.
    let odd = Realm::new(&key, "a\"b\\c", &[Algorithm::Md5], TTL).unwrap();
    assert!(odd.challenges(false, NOW)[0].starts_with(r#"Digest realm="a\"b\\c", "#));
    // A realm that would break the header, or a realm offering nothing, is no realm.
    for bad in ["", "a\r\nX-Injected: 1", "a\u{0}b"] {
        assert!(Realm::new(&key, bad, BOTH, TTL).is_none(), "{bad:?}");
    }
    assert!(Realm::new(&key, "acme", &[], TTL).is_none());
}

#[test]
fn the_right_password_is_accepted_with_either_algorithm() {
    let key = NonceKey::new(KEY);
    let r = realm(&key, BOTH);
    for ch in r.challenges(false, NOW) {
        let c = answer(&ch, "correct horse", "REGISTER", "00000001");
        let stored = ha1(c.algorithm, "alice", "acme.sip.example", "correct horse");
        // The header as a client sends it reads back to the same response.
        let sent = format!(
            "Digest username=\"alice\", realm=\"{}\", nonce=\"{}\", uri=\"{}\", response=\"{}\", algorithm={}, \
             cnonce=\"{}\", qop=auth, nc={}",
            c.realm,
            c.nonce,
            c.uri,
            c.response,
            c.algorithm.name(),
            c.cnonce,
            c.nc
        );
        assert_eq!(parse(&sent).unwrap(), c);
        assert_eq!(r.verify(&c, "REGISTER", Some(&stored), NOW + 1_000), ACCEPTED, "{ch}");
    }
}

#[test]
fn a_wrong_password_user_method_or_field_is_a_failed_attempt() {
    let key = NonceKey::new(KEY);
    let r = realm(&key, BOTH);
    let ch = &r.challenges(false, NOW)[0];
    let c = answer(ch, "correct horse", "REGISTER", "00000001");
    let stored = ha1(Algorithm::Sha256, "alice", "acme.sip.example", "correct horse");
    let refused = Verdict::Refused(Refusal::Response);
    let wrong = ha1(Algorithm::Sha256, "alice", "acme.sip.example", "correct horsf");
    assert_eq!(r.verify(&c, "REGISTER", Some(&wrong), NOW), refused);
    assert_eq!(r.verify(&c, "INVITE", Some(&stored), NOW), refused, "signed for another method");
    assert_eq!(r.verify(&c, "REGISTER", None, NOW), refused, "no such user");
    // No stored HA1 matches a response of zeros' HA1 either.
    let zeros = "0".repeat(64);
    let mut forged = c.clone();
    forged.response = response(Algorithm::Sha256, &zeros, &forged, "REGISTER");
    assert_eq!(r.verify(&forged, "REGISTER", None, NOW), refused);
    for edit in [
        |c: &mut Credentials| c.uri = "sip:other.example".into(),
        |c: &mut Credentials| c.cnonce = "other".into(),
        |c: &mut Credentials| c.nc = "00000002".into(),
        |c: &mut Credentials| c.response.replace_range(0..1, if c.response.starts_with('0') { "1" } else { "0" }),
    ] {
        let mut e = c.clone();
        edit(&mut e);
        assert_eq!(r.verify(&e, "REGISTER", Some(&stored), NOW), refused, "{e:?}");
    }
}

#[test]
fn nonces_realms_and_algorithms_not_ours_are_refused() {
    let key = NonceKey::new(KEY);
    let r = realm(&key, BOTH);
    let stored = |a| ha1(a, "alice", "acme.sip.example", "pw");
    let ch = &r.challenges(false, NOW)[1];
    let c = answer(ch, "pw", "REGISTER", "00000001");
    assert_eq!(r.verify(&c, "REGISTER", Some(&stored(Algorithm::Md5)), NOW), ACCEPTED);
    // Another instance's key, or a nonce made up by the client.
    let other = NonceKey::new([1u8; 32]);
    assert_eq!(
        realm(&other, BOTH).verify(&c, "REGISTER", Some(&stored(Algorithm::Md5)), NOW),
        Verdict::Refused(Refusal::Nonce)
    );
    let mut made_up = c.clone();
    made_up.nonce = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v".into();
    made_up.response = response(Algorithm::Md5, &stored(Algorithm::Md5), &made_up, "REGISTER");
    assert_eq!(r.verify(&made_up, "REGISTER", Some(&stored(Algorithm::Md5)), NOW), Verdict::Refused(Refusal::Nonce));
    // MD5 when only SHA-256 is offered.
    let sha_only = realm(&key, &[Algorithm::Sha256]);
    assert_eq!(
        sha_only.verify(&c, "REGISTER", Some(&stored(Algorithm::Md5)), NOW),
        Verdict::Refused(Refusal::Algorithm)
    );
    // An MD5 nonce answered as SHA-256: the nonce is bound to its algorithm.
    let mut switched = c.clone();
    switched.algorithm = Algorithm::Sha256;
    switched.response = response(Algorithm::Sha256, &stored(Algorithm::Sha256), &switched, "REGISTER");
    assert_eq!(
        r.verify(&switched, "REGISTER", Some(&stored(Algorithm::Sha256)), NOW),
        Verdict::Refused(Refusal::Nonce)
    );
    // Another realm (another tenant's).
    let other_realm = Realm::new(&key, "evil.sip.example", BOTH, TTL).unwrap();
    assert_eq!(
        other_realm.verify(&c, "REGISTER", Some(&stored(Algorithm::Md5)), NOW),
        Verdict::Refused(Refusal::Realm)
    );
}

#[test]
fn an_expired_nonce_is_stale_only_with_the_right_password() {
    let key = NonceKey::new(KEY);
    let r = realm(&key, BOTH);
    let ch = &r.challenges(false, NOW)[0];
    let c = answer(ch, "pw", "REGISTER", "00000001");
    let later = NOW + TTL + 1;
    let right = ha1(Algorithm::Sha256, "alice", "acme.sip.example", "pw");
    let wrong = ha1(Algorithm::Sha256, "alice", "acme.sip.example", "px");
    assert_eq!(r.verify(&c, "REGISTER", Some(&right), NOW + TTL), ACCEPTED);
    assert_eq!(r.verify(&c, "REGISTER", Some(&right), later), Verdict::Stale);
    // Long dead: not even stale (a captured header tells nothing).
    assert_eq!(r.verify(&c, "REGISTER", Some(&right), NOW + 2 * TTL + 1), Verdict::Refused(Refusal::Nonce));
    assert_eq!(r.verify(&c, "REGISTER", Some(&wrong), later), Verdict::Refused(Refusal::Response));
    assert_eq!(r.verify(&c, "REGISTER", None, later), Verdict::Refused(Refusal::Response));
}
