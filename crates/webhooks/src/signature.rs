//! Standard Webhooks signatures (<https://www.standardwebhooks.com/>).
//!
//! The signed content is `{webhook-id}.{webhook-timestamp}.{body}`. A
//! symmetric signature is `v1,<base64 HMAC-SHA256>` under a `whsec_` secret;
//! an asymmetric one is `v1a,<base64 Ed25519>` under a `whsk_` key whose
//! public half is published as `whpk_`. `webhook-signature` holds one or more
//! of them, space-separated, so a secret can rotate without downtime.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::{Signature, Signer as _, SigningKey};
use hmac::{Hmac, Mac};
use rand::rngs::OsRng;
use rand::RngCore;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use ed25519_dalek::VerifyingKey;

pub const HEADER_ID: &str = "webhook-id";
pub const HEADER_TIMESTAMP: &str = "webhook-timestamp";
pub const HEADER_SIGNATURE: &str = "webhook-signature";
/// How far `webhook-timestamp` may be from the receiver's clock, either way.
pub const DEFAULT_TOLERANCE_SECS: i64 = 300;

const SECRET_PREFIX: &str = "whsec_";
const SIGNING_KEY_PREFIX: &str = "whsk_";
const PUBLIC_KEY_PREFIX: &str = "whpk_";
/// The spec asks senders for 24..=64 bytes; we generate 32 and accept from
/// 16 so that other providers' (inbound) secrets still work.
const GENERATED_SECRET_LEN: usize = 32;
const MIN_SECRET_LEN: usize = 16;
/// Senders put one signature per live key in the header, so a handful at
/// most; stop there rather than let a crafted header cost unbounded work.
const MAX_SIGNATURES: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is not valid base64")]
    NotBase64,
    #[error("the secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
    TooShort(usize),
    #[error("an Ed25519 {0} must be 32 bytes")]
    BadKeyLength(&'static str),
    #[error("not a valid Ed25519 public key")]
    BadPublicKey,
}

/// A symmetric (`v1`) signing secret. Never empty, so HMAC never runs with a
/// zero-length key.
#[derive(Clone)]
pub struct WebhookSecret(Vec<u8>);

impl WebhookSecret {
    pub fn generate() -> WebhookSecret {
        let mut bytes = vec![0u8; GENERATED_SECRET_LEN];
        OsRng.fill_bytes(&mut bytes);
        WebhookSecret(bytes)
    }

    /// `whsec_<base64>`, or the bare base64 as the reference libraries accept.
    pub fn parse(s: &str) -> Result<WebhookSecret, SignatureError> {
        let b64 = s.trim().strip_prefix(SECRET_PREFIX).unwrap_or(s.trim());
        if b64.is_empty() {
            return Err(SignatureError::Empty);
        }
        let bytes = B64.decode(b64).map_err(|_| SignatureError::NotBase64)?;
        WebhookSecret::from_bytes(bytes)
    }

    pub fn from_bytes(bytes: Vec<u8>) -> Result<WebhookSecret, SignatureError> {
        match bytes.len() {
            0 => Err(SignatureError::Empty),
            n if n < MIN_SECRET_LEN => Err(SignatureError::TooShort(n)),
            _ => Ok(WebhookSecret(bytes)),
        }
    }

    pub fn to_string_whsec(&self) -> String {
        format!("{SECRET_PREFIX}{}", B64.encode(&self.0))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn mac(&self, content: &[u8]) -> [u8; 32] {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(content);
        mac.finalize().into_bytes().into()
    }
}

impl std::fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WebhookSecret(redacted)")
    }
}

/// An asymmetric (`v1a`) Ed25519 signing key. The key zeroizes itself on drop.
#[derive(Clone)]
pub struct Ed25519Signer(SigningKey);

impl Ed25519Signer {
    pub fn generate() -> Ed25519Signer {
        Ed25519Signer(SigningKey::generate(&mut OsRng))
    }

    /// `whsk_<base64 of the 32-byte seed>` (the prefix is optional), as the
    /// reference libraries serialize it.
    pub fn from_secret_string(s: &str) -> Result<Ed25519Signer, SignatureError> {
        let seed = decode_key(s, SIGNING_KEY_PREFIX, "secret key")?;
        Ok(Ed25519Signer(SigningKey::from_bytes(&seed)))
    }

    pub fn secret_string(&self) -> String {
        format!("{SIGNING_KEY_PREFIX}{}", B64.encode(self.0.to_bytes()))
    }

    pub fn public_key_string(&self) -> String {
        public_key_string(&self.verifying_key())
    }

    pub fn verifying_key(&self) -> VerifyingKey {
        self.0.verifying_key()
    }
}

impl std::fmt::Debug for Ed25519Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ed25519Signer({}, secret redacted)", self.public_key_string())
    }
}

/// `whpk_<base64 of the 32-byte public key>`.
pub fn public_key_string(key: &VerifyingKey) -> String {
    format!("{PUBLIC_KEY_PREFIX}{}", B64.encode(key.as_bytes()))
}

/// Parses `whpk_<base64>` (the prefix is optional).
pub fn parse_public_key(s: &str) -> Result<VerifyingKey, SignatureError> {
    let bytes = decode_key(s, PUBLIC_KEY_PREFIX, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignatureError::BadPublicKey)
}

fn decode_key(s: &str, prefix: &str, what: &'static str) -> Result<[u8; 32], SignatureError> {
    let b64 = s.trim().strip_prefix(prefix).unwrap_or(s.trim());
    if b64.is_empty() {
        return Err(SignatureError::Empty);
    }
    let bytes = B64.decode(b64).map_err(|_| SignatureError::NotBase64)?;
    bytes.try_into().map_err(|_| SignatureError::BadKeyLength(what))
}

/// `{msg_id}.{timestamp}.{body}`: what every signature covers.
pub fn signed_content(msg_id: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    signed_content_raw(msg_id, &timestamp.to_string(), body)
}

// Verification signs the timestamp exactly as received.
fn signed_content_raw(msg_id: &str, timestamp: &str, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(msg_id.len() + timestamp.len() + body.len() + 2);
    out.extend_from_slice(msg_id.as_bytes());
    out.push(b'.');
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b'.');
    out.extend_from_slice(body);
    out
}

pub fn sign_v1(secret: &WebhookSecret, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    format!("v1,{}", B64.encode(secret.mac(&signed_content(msg_id, timestamp, body))))
}

pub fn sign_v1a(key: &Ed25519Signer, msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let sig = key.0.sign(&signed_content(msg_id, timestamp, body));
    format!("v1a,{}", B64.encode(sig.to_bytes()))
}

/// The `webhook-signature` value: one `v1` per secret, in order (the current
/// secret first, then the previous one while its rotation grace period
/// lasts), then `v1a` if the endpoint has an Ed25519 key.
pub fn signature_header(
    symmetric: &[WebhookSecret],
    asymmetric: Option<&Ed25519Signer>,
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
) -> String {
    let v1 = symmetric.iter().map(|s| sign_v1(s, msg_id, timestamp, body));
    let v1a = asymmetric.map(|k| sign_v1a(k, msg_id, timestamp, body));
    v1.chain(v1a).collect::<Vec<_>>().join(" ")
}

/// `webhook-id`, `webhook-timestamp` and `webhook-signature` for one delivery attempt.
pub fn standard_headers(
    msg_id: &str,
    timestamp: i64,
    body: &[u8],
    symmetric: &[WebhookSecret],
    asymmetric: Option<&Ed25519Signer>,
) -> [(&'static str, String); 3] {
    [
        (HEADER_ID, msg_id.to_owned()),
        (HEADER_TIMESTAMP, timestamp.to_string()),
        (HEADER_SIGNATURE, signature_header(symmetric, asymmetric, msg_id, timestamp, body)),
    ]
}

/// Which kind of signature verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    V1,
    V1a,
}

impl Scheme {
    pub fn as_str(self) -> &'static str {
        match self {
            Scheme::V1 => "v1",
            Scheme::V1a => "v1a",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("missing header {0}")]
    MissingHeader(&'static str),
    #[error("webhook-timestamp is not a whole number of seconds")]
    BadTimestamp,
    #[error("the timestamp is {age_secs} s old, {} s outside the {tolerance_secs} s window", age_secs.saturating_sub(*tolerance_secs))]
    TimestampTooOld { age_secs: i64, tolerance_secs: i64 },
    #[error("the timestamp is {ahead_secs} s in the future, {} s outside the {tolerance_secs} s window", ahead_secs.saturating_sub(*tolerance_secs))]
    TimestampTooNew { ahead_secs: i64, tolerance_secs: i64 },
    #[error("no signature matches")]
    NoMatchingSignature,
}

/// Checks a received webhook. An empty header value counts as missing.
/// The timestamp must be within `tolerance_secs` of `now_unix` either way;
/// then any one `v1` entry matching one of `secrets`, or `v1a` entry
/// matching one of `public_keys`, is enough. Unknown versions are skipped.
#[allow(clippy::too_many_arguments)]
pub fn verify(
    secrets: &[WebhookSecret],
    public_keys: &[VerifyingKey],
    msg_id: &str,
    timestamp_header: &str,
    signature_header: &str,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<Scheme, VerifyError> {
    if msg_id.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_ID));
    }
    if timestamp_header.is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_TIMESTAMP));
    }
    if signature_header.trim().is_empty() {
        return Err(VerifyError::MissingHeader(HEADER_SIGNATURE));
    }
    // Digits only: `i64::from_str` would also take a sign, and "+1" would
    // then be signed differently from what it denotes.
    if !timestamp_header.bytes().all(|b| b.is_ascii_digit()) {
        return Err(VerifyError::BadTimestamp);
    }
    let ts: i64 = timestamp_header.parse().map_err(|_| VerifyError::BadTimestamp)?;
    let age = now_unix.saturating_sub(ts);
    if age > tolerance_secs {
        return Err(VerifyError::TimestampTooOld { age_secs: age, tolerance_secs });
    }
    let ahead = ts.saturating_sub(now_unix);
    if ahead > tolerance_secs {
        return Err(VerifyError::TimestampTooNew { ahead_secs: ahead, tolerance_secs });
    }

    let content = signed_content_raw(msg_id, timestamp_header, body);
    let expected: Vec<[u8; 32]> = secrets.iter().map(|s| s.mac(&content)).collect();
    for entry in signature_header.split_ascii_whitespace().take(MAX_SIGNATURES) {
        let Some((version, b64)) = entry.split_once(',') else { continue };
        let Ok(given) = B64.decode(b64) else { continue };
        match version {
            "v1" if expected.iter().any(|mac| same_mac(mac, &given)) => return Ok(Scheme::V1),
            "v1a" if ed25519_valid(public_keys, &content, &given) => return Ok(Scheme::V1a),
            _ => {}
        }
    }
    Err(VerifyError::NoMatchingSignature)
}

// Constant time over the bytes. ct_eq is already false on a length
// mismatch; checking it first says so: an empty or truncated signature
// (a prefix of the right one) never matches.
fn same_mac(expected: &[u8; 32], given: &[u8]) -> bool {
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(given))
}

fn ed25519_valid(public_keys: &[VerifyingKey], content: &[u8], given: &[u8]) -> bool {
    let Ok(bytes) = <[u8; 64]>::try_from(given) else { return false };
    let sig = Signature::from_bytes(&bytes);
    public_keys.iter().any(|k| k.verify_strict(content, &sig).is_ok())
}

/// [`verify`] with the three headers taken from a request.
pub fn verify_headers(
    secrets: &[WebhookSecret],
    public_keys: &[VerifyingKey],
    headers: &http::HeaderMap,
    body: &[u8],
    now_unix: i64,
    tolerance_secs: i64,
) -> Result<Scheme, VerifyError> {
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    verify(
        secrets,
        public_keys,
        get(HEADER_ID),
        get(HEADER_TIMESTAMP),
        get(HEADER_SIGNATURE),
        body,
        now_unix,
        tolerance_secs,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    // The Standard Webhooks test vector, from the reference libraries' tests
    // (standard-webhooks/standard-webhooks, libraries/python/tests/test_webhooks.py
    // `test_sign_function`; the same values are in the JS, Go and Rust tests).
    const VECTOR_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const VECTOR_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const VECTOR_TS: i64 = 1614265330;
    const VECTOR_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const VECTOR_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    // The asymmetric vector (libraries/go/webhook_asymmetric_test.go,
    // `TestAsymmetricWebhookSign`): same message, a 32-byte seed.
    const VECTOR_SEED: &str = "VEVTVFNJR05JTkdLRVlET05PVFVTRVRISVNGT1JBTlk=";
    const VECTOR_SIG_V1A: &str =
        "v1a,tQ9V2XOqn7jL/DQenEFpqIugdBVtiMmER5mhSkXBNwM0mkATuDe6KYYUuxqtaiHeYGb7KaaBRdM5WqyeFiL8Ag==";

    fn vector_secret() -> WebhookSecret {
        WebhookSecret::parse(VECTOR_SECRET).unwrap()
    }

    fn check(sig_header: &str) -> Result<Scheme, VerifyError> {
        verify(&[vector_secret()], &[], VECTOR_ID, "1614265330", sig_header, VECTOR_BODY, VECTOR_TS, 300)
    }

    #[test]
    fn published_test_vector() {
        let secret = vector_secret();
        assert_eq!(sign_v1(&secret, VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG);
        assert_eq!(check(VECTOR_SIG), Ok(Scheme::V1));
        // Without the prefix, as the libraries also accept.
        let bare = WebhookSecret::parse("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(bare.as_bytes(), secret.as_bytes());
        assert_eq!(secret.to_string_whsec(), VECTOR_SECRET);
    }

    #[test]
    fn published_asymmetric_test_vector() {
        let key = Ed25519Signer::from_secret_string(VECTOR_SEED).unwrap();
        assert_eq!(sign_v1a(&key, VECTOR_ID, VECTOR_TS, VECTOR_BODY), VECTOR_SIG_V1A);
        let same = Ed25519Signer::from_secret_string(&format!("whsk_{VECTOR_SEED}")).unwrap();
        assert_eq!(same.secret_string(), format!("whsk_{VECTOR_SEED}"));
        let public = parse_public_key(&key.public_key_string()).unwrap();
        let got = verify(&[], &[public], VECTOR_ID, "1614265330", VECTOR_SIG_V1A, VECTOR_BODY, VECTOR_TS, 300);
        assert_eq!(got, Ok(Scheme::V1a));
    }

    #[test]
    fn secrets_round_trip_and_refuse_bad_input() {
        let s = WebhookSecret::generate();
        assert_eq!(s.as_bytes().len(), 32);
        assert!(s.to_string_whsec().starts_with("whsec_"));
        assert_eq!(WebhookSecret::parse(&s.to_string_whsec()).unwrap().as_bytes(), s.as_bytes());
        assert_ne!(WebhookSecret::generate().as_bytes(), s.as_bytes());
        assert_eq!(WebhookSecret::parse("").unwrap_err(), SignatureError::Empty);
        assert_eq!(WebhookSecret::parse("whsec_").unwrap_err(), SignatureError::Empty);
        assert_eq!(WebhookSecret::parse("whsec_not base64!").unwrap_err(), SignatureError::NotBase64);
        assert_eq!(WebhookSecret::parse("whsec_c2hvcnQ=").unwrap_err(), SignatureError::TooShort(5));
        assert!(WebhookSecret::from_bytes(Vec::new()).is_err());
        let debug = format!("{s:?}");
        assert!(!debug.contains(&s.to_string_whsec()[6..]), "{debug}");
    }

    #[test]
    fn ed25519_keys_round_trip_and_refuse_bad_input() {
        let key = Ed25519Signer::generate();
        let again = Ed25519Signer::from_secret_string(&key.secret_string()).unwrap();
        assert_eq!(again.public_key_string(), key.public_key_string());
        assert!(key.public_key_string().starts_with("whpk_"));
        assert!(!format!("{key:?}").contains(&key.secret_string()[5..]));
        assert!(Ed25519Signer::from_secret_string("whsk_c2hvcnQ=").is_err());
        assert!(parse_public_key("whpk_").is_err());
        assert!(parse_public_key("whpk_c2hvcnQ=").is_err());
    }

    #[test]
    fn signed_content_is_id_dot_timestamp_dot_body() {
        assert_eq!(signed_content("msg_1", 42, b"{}"), b"msg_1.42.{}");
    }

    #[test]
    fn round_trip_with_rotation_and_both_schemes() {
        let (current, previous) = (WebhookSecret::generate(), WebhookSecret::generate());
        let ed = Ed25519Signer::generate();
        let secrets = [current.clone(), previous.clone()];
        let headers = standard_headers("msg_2", 1_700_000_000, b"hello", &secrets, Some(&ed));
        assert_eq!(headers[0], ("webhook-id", "msg_2".to_owned()));
        assert_eq!(headers[1], ("webhook-timestamp", "1700000000".to_owned()));
        let sig = &headers[2].1;
        let parts: Vec<&str> = sig.split(' ').collect();
        assert_eq!(parts.len(), 3);
        assert_eq!(parts[0], sign_v1(&current, "msg_2", 1_700_000_000, b"hello"));
        assert_eq!(parts[1], sign_v1(&previous, "msg_2", 1_700_000_000, b"hello"));
        assert!(parts[2].starts_with("v1a,"));
        let run = |secrets: &[WebhookSecret], public: &[VerifyingKey]| {
            verify(secrets, public, "msg_2", "1700000000", sig, b"hello", 1_700_000_000, 300)
        };
        // A receiver holding only the old secret (mid-rotation) still verifies.
        assert_eq!(run(std::slice::from_ref(&previous), &[]), Ok(Scheme::V1));
        assert_eq!(run(&[], &[ed.verifying_key()]), Ok(Scheme::V1a));
        assert_eq!(run(&[WebhookSecret::generate()], &[]), Err(VerifyError::NoMatchingSignature));
        assert_eq!(run(&[], &[Ed25519Signer::generate().verifying_key()]), Err(VerifyError::NoMatchingSignature));
        let tampered =
            verify(&secrets, &[ed.verifying_key()], "msg_2", "1700000000", sig, b"hellO", 1_700_000_000, 300);
        assert_eq!(tampered, Err(VerifyError::NoMatchingSignature));
        // The id and timestamp are signed too.
        let other_id = verify(&secrets, &[], "msg_3", "1700000000", sig, b"hello", 1_700_000_000, 300);
        assert_eq!(other_id, Err(VerifyError::NoMatchingSignature));
        let other_ts = verify(&secrets, &[], "msg_2", "1700000001", sig, b"hello", 1_700_000_000, 300);
        assert_eq!(other_ts, Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn malformed_or_partial_signatures_never_verify() {
        let good_b64 = VECTOR_SIG.strip_prefix("v1,").unwrap();
        let refused = [
            "v1,".to_owned(),
            "v1".to_owned(),
            ",".to_owned(),
            good_b64.to_owned(),
            format!("v1,{}", &good_b64[..good_b64.len() - 4]),
            format!("v1,{}", &good_b64[..12]),
            format!("v1,{}", B64.encode(&B64.decode(good_b64).unwrap()[..16])),
            format!("v1,{good_b64}AAAA"),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OA=".to_owned(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1O!=".to_owned(),
            "v1,%%%%".to_owned(),
            format!("v2,{good_b64}"),
            format!("V1,{good_b64}"),
            format!("v1a,{good_b64}"),
            format!("v1;{good_b64}"),
            VECTOR_SIG_V1A.to_owned(),
        ];
        for header in &refused {
            assert_eq!(check(header), Err(VerifyError::NoMatchingSignature), "{header}");
        }
        assert_eq!(check("   "), Err(VerifyError::MissingHeader(HEADER_SIGNATURE)));
    }

    #[test]
    fn any_one_of_several_signatures_is_enough() {
        let header = format!(
            "v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= v2,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc= \
             v1, junk {VECTOR_SIG} v1,Ceo5qEr07ixe2NLpvHk3FH9bwy/WavXrAFQ/9tdO6mc="
        );
        assert_eq!(check(&header), Ok(Scheme::V1));
        // Past the cap, entries are not looked at.
        let flood = format!("{} {VECTOR_SIG}", vec!["v2,AAAA"; MAX_SIGNATURES].join(" "));
        assert_eq!(check(&flood), Err(VerifyError::NoMatchingSignature));
    }

    #[test]
    fn headers_must_be_present_and_the_timestamp_an_integer() {
        let s = [vector_secret()];
        let run = |id: &str, ts: &str, sig: &str| verify(&s, &[], id, ts, sig, VECTOR_BODY, VECTOR_TS, 300);
        assert_eq!(run("", "1614265330", VECTOR_SIG), Err(VerifyError::MissingHeader("webhook-id")));
        assert_eq!(run(VECTOR_ID, "", VECTOR_SIG), Err(VerifyError::MissingHeader("webhook-timestamp")));
        assert_eq!(run(VECTOR_ID, "1614265330", ""), Err(VerifyError::MissingHeader("webhook-signature")));
        for ts in ["hello", "+1614265330", "-5", "1614265330.0", " 1614265330", "99999999999999999999"] {
            assert_eq!(run(VECTOR_ID, ts, VECTOR_SIG), Err(VerifyError::BadTimestamp), "{ts}");
        }
    }

    #[test]
    fn timestamp_window_both_sides() {
        let s = [vector_secret()];
        let at = |now: i64| verify(&s, &[], VECTOR_ID, "1614265330", VECTOR_SIG, VECTOR_BODY, now, 300);
        assert_eq!(at(VECTOR_TS + 300), Ok(Scheme::V1));
        assert_eq!(at(VECTOR_TS - 300), Ok(Scheme::V1));
        assert_eq!(at(VECTOR_TS + 301), Err(VerifyError::TimestampTooOld { age_secs: 301, tolerance_secs: 300 }));
        assert_eq!(at(VECTOR_TS - 301), Err(VerifyError::TimestampTooNew { ahead_secs: 301, tolerance_secs: 300 }));
        assert_eq!(
            at(VECTOR_TS + 400).unwrap_err().to_string(),
            "the timestamp is 400 s old, 100 s outside the 300 s window"
        );
        // No overflow at the extremes.
        assert!(matches!(at(i64::MIN), Err(VerifyError::TimestampTooNew { .. })));
        assert!(matches!(at(i64::MAX), Err(VerifyError::TimestampTooOld { .. })));
    }

    #[test]
    fn verify_headers_reads_the_request() {
        let mut h = http::HeaderMap::new();
        h.insert("webhook-id", VECTOR_ID.parse().unwrap());
        h.insert("Webhook-Timestamp", "1614265330".parse().unwrap());
        let run = |h: &http::HeaderMap| verify_headers(&[vector_secret()], &[], h, VECTOR_BODY, VECTOR_TS, 300);
        assert_eq!(run(&h), Err(VerifyError::MissingHeader("webhook-signature")));
        h.insert("webhook-signature", VECTOR_SIG.parse().unwrap());
        assert_eq!(run(&h), Ok(Scheme::V1));
    }
}
