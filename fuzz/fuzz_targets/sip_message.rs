#![no_main]
//! A SIP message off the wire: the stack's parser, then, for a request, the
//! edge's own checks in the order `answer` and `register` run them
//! (crates/sip/src/edge.rs), and the digest parser on every Authorization.
//! Nothing may panic; what the checks accept must hold what they promise.

use libfuzzer_sys::fuzz_target;
use rsipstack::sip::SipMessage;

// The edge crate's pure module, compiled here: the crate around it needs
// the database layer. Through a directory, so that its test module
// resolves where the crate keeps it (rustfmt looks for it).
#[allow(dead_code)]
#[path = "../../crates/sip/src"]
mod sip {
    pub mod message;
}

use palisade_digest::{Algorithm, NonceKey, Realm, Verdict};
use sip::message::{self, Fields, Limits};

const NOW_MS: u64 = 1_800_000_000_000;

fuzz_target!(|data: &[u8]| {
    let Ok(SipMessage::Request(req)) = SipMessage::try_from(data) else { return };
    let sip = palisade_config::Config::default().sip;
    let limits = Limits {
        max_message_bytes: sip.max_message_bytes,
        max_headers: sip.max_headers,
        max_header_bytes: sip.max_header_bytes,
    };
    let method = req.method.to_string();
    let lines: Vec<String> = req.headers.iter().map(ToString::to_string).collect();
    let fields = Fields::from_lines(lines.iter().map(String::as_str));
    let size = lines.iter().map(|l| l.len() + 2).sum::<usize>() + req.body.len();
    let checked = fields.check(&method, size, &limits);
    if let Ok(c) = checked {
        assert!(size <= limits.max_message_bytes && fields.len() <= limits.max_headers);
        assert!((0..=i64::from(u32::MAX)).contains(&c.cseq));
        assert!(fields.one("call-id").is_some_and(|id| !id.is_empty()));
    }
    // Past the checks or not, these must not panic on whatever parsed.
    if let Some(uri) = fields.one("to").and_then(message::uri_of) {
        assert!(!uri.is_empty() && uri.len() <= message::MAX_URI);
        if let Some((_, host)) = message::user_host(uri) {
            assert!(!host.is_empty());
        }
    }
    if let Ok(contacts) = message::contacts(fields.all("contact")) {
        assert!(contacts.len() <= message::MAX_CONTACTS);
        for c in contacts {
            if let message::Contact::Uri { uri, .. } = c {
                assert!(message::user_host(&uri).is_some());
            }
        }
    }
    let _ = message::expires(fields.one("expires"));
    let key = NonceKey::new([7; 32]);
    for value in fields.all("authorization") {
        let Ok(c) = palisade_digest::parse(value) else { continue };
        // In its own realm, with the right HA1: still refused or stale,
        // since no nonce of this key was ever issued.
        let ha1 = palisade_digest::ha1(c.algorithm, &c.username, &c.realm, "password");
        let Some(realm) = Realm::new(&key, &c.realm, &[Algorithm::Sha256, Algorithm::Md5], 300_000) else { continue };
        let verdict = realm.verify(&c, &method, Some(&ha1), NOW_MS);
        assert!(!matches!(verdict, Verdict::Accepted { .. }), "a nonce never issued was accepted: {value}");
    }
});
