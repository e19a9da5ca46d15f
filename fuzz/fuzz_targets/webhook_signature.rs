#![no_main]
//! Standard Webhooks verification with attacker-chosen headers and body.
//! Input: `webhook-id`, `webhook-timestamp` and `webhook-signature` on the
//! first three lines, the body after them.

use libfuzzer_sys::fuzz_target;
use signature::{Ed25519Signer, Scheme, WebhookSecret};

// The webhooks crate's own module, compiled here: the crate around it needs
// the database layer, which would triple this workspace's build time.
#[allow(dead_code)]
#[path = "../../crates/webhooks/src/signature.rs"]
mod signature;

const NOW: i64 = 1_800_000_000;
const TOLERANCE: i64 = 300;
const MAX_SIGNATURES: usize = 16;

fuzz_target!(|data: &[u8]| {
    let mut parts = data.splitn(4, |b| *b == b'\n');
    let (Some(id), Some(ts), Some(header)) = (parts.next(), parts.next(), parts.next()) else { return };
    let body = parts.next().unwrap_or_default();
    let (Ok(id), Ok(ts), Ok(header)) = (std::str::from_utf8(id), std::str::from_utf8(ts), std::str::from_utf8(header))
    else {
        return;
    };

    // Secrets and keys come from outside too (config, CLI): no panics, and
    // what parses prints back to itself.
    if let Ok(s) = WebhookSecret::parse(header) {
        assert_eq!(WebhookSecret::parse(&s.to_string_whsec()).unwrap().as_bytes(), s.as_bytes());
    }
    if let Ok(k) = signature::parse_public_key(header) {
        assert_eq!(signature::parse_public_key(&signature::public_key_string(&k)).unwrap(), k);
    }
    if let Ok(k) = Ed25519Signer::from_secret_string(header) {
        assert_eq!(
            Ed25519Signer::from_secret_string(&k.secret_string()).unwrap().public_key_string(),
            k.public_key_string()
        );
    }

    let secret = WebhookSecret::from_bytes(vec![7; 32]).unwrap();
    let signer = Ed25519Signer::from_secret_string("whsk_CQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQkJCQk=").unwrap();
    let secrets = [secret.clone()];
    let keys = [signer.verifying_key()];
    let verify = |header: &str, body: &[u8]| signature::verify(&secrets, &keys, id, ts, header, body, NOW, TOLERANCE);

    let result = verify(header, body);
    // Only the timestamp as written is signed; compare with our own
    // signatures where the written form is the canonical one.
    let Some(t) = ts.parse::<i64>().ok().filter(|t| t.to_string() == ts && !ts.starts_with('-')) else {
        return;
    };
    let v1 = signature::sign_v1(&secret, id, t, body);
    let v1a = signature::sign_v1a(&signer, id, t, body);
    let entries: Vec<&str> = header.split_ascii_whitespace().take(MAX_SIGNATURES).collect();
    match result {
        Ok(Scheme::V1) => assert!(entries.contains(&v1.as_str()), "accepted a v1 signature we did not make"),
        Ok(Scheme::V1a) => assert!(entries.contains(&v1a.as_str()), "accepted a v1a signature we did not make"),
        Err(_) => {}
    }

    let fresh = !id.is_empty() && (t - NOW).abs() <= TOLERANCE;
    if fresh && entries.len() < MAX_SIGNATURES {
        // Our signature, after whatever else the header holds, verifies...
        assert_eq!(verify(&format!("{header} {v1}"), body), result.clone().or(Ok(Scheme::V1)));
        assert!(verify(&format!("{header} {v1a}"), body).is_ok());
        // ...and no longer once the body changes.
        let mut other = body.to_vec();
        other.push(b'x');
        assert!(verify(&format!("{header} {v1} {v1a}"), &other).is_err(), "a signature verified for another body");
    }
});
