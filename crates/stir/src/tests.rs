//! Signing and verifying against a test STI-CA made here (rcgen), with
//! certificates carrying a TNAuthList; what we sign is checked again by a
//! second, independent ES256 implementation (RustCrypto's p256).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use palisade_guard::state::LocalState;
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};

use crate::certs::Anchors;
use crate::verifier::BoxFut;
use crate::*;

/// 2027-01-15; the test certificates hold from 2026 to 2028.
const NOW: i64 = 1_800_000_000_000;
const CALLER: &str = "+34612000222";
const CALLEE: &str = "+34612000111";
const URL: &str = "https://cert.test/shaken.pem";

fn at(year: i32) -> time::OffsetDateTime {
    time::Date::from_calendar_date(year, time::Month::January, 1).unwrap().midnight().assume_utc()
}

fn tlv(tag: u8, content: &[u8]) -> Vec<u8> {
    assert!(content.len() < 128);
    let mut v = vec![tag, content.len() as u8];
    v.extend_from_slice(content);
    v
}

fn spc(code: &str) -> Vec<u8> {
    tlv(0xa0, &tlv(0x16, code.as_bytes()))
}

fn one(tn: &str) -> Vec<u8> {
    tlv(0xa2, &tlv(0x16, tn.as_bytes()))
}

fn range(start: &str, count: u8) -> Vec<u8> {
    let mut seq = tlv(0x16, start.as_bytes());
    seq.extend(tlv(0x02, &[count]));
    tlv(0xa1, &tlv(0x30, &seq))
}

fn tn_list(entries: &[Vec<u8>]) -> Vec<u8> {
    tlv(0x30, &entries.concat())
}

struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
}

fn ca(name: &str, issuer: Option<&Ca>) -> Ca {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = at(2026);
    p.not_after = at(2030);
    let cert = match issuer {
        None => p.self_signed(&key).unwrap(),
        Some(i) => p.signed_by(&key, &i.cert, &i.key).unwrap(),
    };
    Ca { cert, key }
}

/// A signer's certificate from `ca` with the TNAuthList `tns` (none: no
/// extension), valid until `until`; its chain as served, and its key.
fn leaf(ca: &Ca, tns: Option<Vec<u8>>, until: i32, chain: &[&Ca]) -> (Vec<u8>, KeyPair) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "SHAKEN 709J");
    p.not_before = at(2026);
    p.not_after = at(until);
    if let Some(der) = tns {
        p.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 26], der));
    }
    let cert = p.signed_by(&key, &ca.cert, &ca.key).unwrap();
    let mut pem = cert.pem();
    for c in chain {
        pem.push_str(&c.cert.pem());
    }
    (pem.into_bytes(), key)
}

#[derive(Default)]
struct Served {
    files: Mutex<HashMap<String, Vec<u8>>>,
    fetches: AtomicUsize,
}

impl Fetch for Served {
    fn fetch<'a>(&'a self, url: &'a str) -> BoxFut<'a, Option<Vec<u8>>> {
        self.fetches.fetch_add(1, Ordering::SeqCst);
        let body = self.files.lock().unwrap().get(url).cloned();
        Box::pin(async move { body })
    }
}

struct World {
    verifier: Verifier,
    served: Arc<Served>,
}

fn world(root: &Ca) -> World {
    let served = Arc::new(Served::default());
    let anchors = Anchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let verifier = Verifier::new(anchors, served.clone(), Arc::new(LocalState::new()), Settings::default());
    World { verifier, served }
}

impl World {
    fn serve(&self, url: &str, pem: &[u8]) {
        self.served.files.lock().unwrap().insert(url.to_owned(), pem.to_vec());
    }

    async fn check(&self, header: &str, now: i64) -> Verification {
        self.verifier.verify(&[header], Some(CALLER), CALLEE, now).await
    }
}

fn signer(key: &KeyPair, url: &str) -> Signer {
    Signer::new(key.serialize_pem().as_bytes(), url).unwrap()
}

fn failed(why: Failure) -> Verification {
    Verification::failed(why)
}

#[tokio::test]
async fn what_we_sign_verifies_here_and_with_a_second_library() {
    let root = ca("Test STI-CA", None);
    let (pem, key) = leaf(&root, Some(tn_list(&[spc("709J")])), 2028, &[]);
    let w = world(&root);
    w.serve(URL, &pem);
    let s = signer(&key, URL);
    let header = s.identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&header, NOW + 2_000).await, Verification::passed(Attestation::A));

    // The header as RFC 8224 writes it; the PASSporT as RFC 8588 does.
    let h = header::parse(&header).unwrap();
    assert_eq!((h.info, h.alg, h.ppt), (URL, Some("ES256"), Some("shaken")));
    let parts: Vec<&str> = h.jws.split('.').collect();
    let jose: serde_json::Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(jose, serde_json::json!({"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": URL}));
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["attest"], "A");
    assert_eq!(claims["orig"]["tn"], "34612000222");
    assert_eq!(claims["dest"]["tn"], serde_json::json!(["34612000111"]));
    assert_eq!(claims["iat"], NOW / 1000);
    assert!(uuid::Uuid::parse_str(claims["origid"].as_str().unwrap()).is_ok());

    // RustCrypto's P-256, with the key taken from the certificate itself.
    use p256::ecdsa::signature::Verifier as _;
    let cert =
        x509_cert::Certificate::from_der(&rustls_pki_types::CertificateDer::from_pem_slice(&pem).unwrap()).unwrap();
    let point = cert.tbs_certificate.subject_public_key_info.subject_public_key.raw_bytes();
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(point).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
    let input = format!("{}.{}", parts[0], parts[1]);
    vk.verify(input.as_bytes(), &sig).expect("p256 verifies our PASSporT");
    let mut tampered = input.clone().into_bytes();
    tampered[5] ^= 1;
    assert!(vk.verify(&tampered, &sig).is_err());
}

use rustls_pki_types::pem::PemObject as _;
use x509_cert::der::Decode as _;

#[tokio::test]
async fn each_broken_part_fails_with_its_reason() {
    let root = ca("Test STI-CA", None);
    let (pem, key) = leaf(&root, Some(tn_list(&[one("34612000222")])), 2028, &[]);
    let w = world(&root);
    w.serve(URL, &pem);
    let s = signer(&key, URL);
    let fresh = || s.identity(CALLER, CALLEE, Attestation::B, NOW).unwrap();

    // iat more than 60 s away, either way.
    assert_eq!(w.check(&fresh(), NOW + 61_000).await, failed(Failure::Stale));
    assert_eq!(w.check(&fresh(), NOW - 61_000).await, failed(Failure::Stale));
    // The numbers in the SIP request are not the PASSporT's.
    let other = w.verifier.verify(&[&fresh()], Some("+34612000999"), CALLEE, NOW).await;
    assert_eq!(other, failed(Failure::OrigMismatch));
    let other = w.verifier.verify(&[&fresh()], None, CALLEE, NOW).await;
    assert_eq!(other, failed(Failure::OrigMismatch));
    let other = w.verifier.verify(&[&fresh()], Some(CALLER), "+34612000999", NOW).await;
    assert_eq!(other, failed(Failure::DestMismatch));
    // A certificate whose TNAuthList does not hold the calling number.
    let (narrow, narrow_key) = leaf(&root, Some(tn_list(&[one("34612000333")])), 2028, &[]);
    w.serve("https://cert.test/narrow.pem", &narrow);
    let h = signer(&narrow_key, "https://cert.test/narrow.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::NotCovered));
    // Or none at all.
    let (bare, bare_key) = leaf(&root, None, 2028, &[]);
    w.serve("https://cert.test/bare.pem", &bare);
    let h = signer(&bare_key, "https://cert.test/bare.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::NotCovered));
    // A CA nobody configured.
    let rogue = ca("Rogue CA", None);
    let (untrusted, rogue_key) = leaf(&rogue, Some(tn_list(&[spc("666X")])), 2028, &[]);
    w.serve("https://cert.test/rogue.pem", &untrusted);
    let h = signer(&rogue_key, "https://cert.test/rogue.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::Untrusted));
    // A certificate expired by now.
    let (old, old_key) = leaf(&root, Some(tn_list(&[spc("709J")])), 2027, &[]);
    w.serve("https://cert.test/old.pem", &old);
    let h = signer(&old_key, "https://cert.test/old.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::Untrusted));
    // Signed by another key than the certificate's.
    let h = signer(&rogue_key, URL).identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::BadSignature));
    // Claims changed after signing (B raised to A).
    let good = fresh();
    let (jws, params) = good.split_once(';').unwrap();
    let parts: Vec<&str> = jws.split('.').collect();
    let claims = String::from_utf8(B64.decode(parts[1]).unwrap()).unwrap().replace("\"B\"", "\"A\"");
    let forged = format!("{}.{}.{};{params}", parts[0], B64.encode(claims), parts[2]);
    assert_eq!(w.check(&forged, NOW).await, failed(Failure::BadSignature));
    // The header's info is not the PASSporT's x5u.
    let moved = good.replace("info=<https://cert.test/shaken.pem>", "info=<https://cert.test/old.pem>");
    assert_eq!(w.check(&moved, NOW).await, failed(Failure::InfoMismatch));
    // A certificate nobody serves; an http URL.
    let gone = signer(&key, "https://cert.test/gone.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&gone, NOW).await, failed(Failure::CertUnavailable));
    w.serve("http://cert.test/shaken.pem", &pem);
    let plain = signer(&key, "http://cert.test/shaken.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&plain, NOW).await, failed(Failure::CertUnavailable));
    // Unreadable headers.
    assert_eq!(w.check("nonsense", NOW).await, failed(Failure::Malformed));
    // Believed once; the same PASSporT again is a replay.
    let h = fresh();
    assert_eq!(w.check(&h, NOW).await, Verification::passed(Attestation::B));
    assert_eq!(w.check(&h, NOW + 1_000).await, failed(Failure::Replayed));
    // No header at all.
    assert_eq!(w.verifier.verify(&[], Some(CALLER), CALLEE, NOW).await, Verification::no_signature());
    // Of several headers, one that passes is enough.
    let pair = w.verifier.verify(&["nonsense", &fresh()], Some(CALLER), CALLEE, NOW).await;
    assert_eq!(pair, Verification::passed(Attestation::B));
}

#[tokio::test]
async fn intermediates_ranges_and_the_certificate_cache() {
    let root = ca("Test STI-CA", None);
    let sub = ca("Test STI-CA intermediate", Some(&root));
    let (pem, key) = leaf(&sub, Some(tn_list(&[range("34612000200", 50)])), 2028, &[&sub]);
    let w = world(&root);
    w.serve(URL, &pem);
    let s = signer(&key, URL);
    for i in 0..3 {
        let h = s.identity(CALLER, CALLEE, Attestation::C, NOW + i).unwrap();
        assert_eq!(w.check(&h, NOW + i).await, Verification::passed(Attestation::C));
    }
    assert_eq!(w.served.fetches.load(Ordering::SeqCst), 1, "fetched once, then kept");
    // Without its intermediate the chain does not reach the anchor.
    let (alone, alone_key) = leaf(&sub, Some(tn_list(&[spc("709J")])), 2028, &[]);
    w.serve("https://cert.test/alone.pem", &alone);
    let h = signer(&alone_key, "https://cert.test/alone.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(w.check(&h, NOW).await, failed(Failure::Untrusted));
    // A failed fetch is not tried again at once.
    let gone = signer(&key, "https://cert.test/gone.pem").identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    let before = w.served.fetches.load(Ordering::SeqCst);
    w.check(&gone, NOW).await;
    w.check(&gone, NOW).await;
    assert_eq!(w.served.fetches.load(Ordering::SeqCst), before + 1);
}

#[test]
fn every_failure_has_its_own_reason_word() {
    let words: std::collections::HashSet<&str> = Failure::ALL.iter().map(|f| f.reason()).collect();
    assert_eq!(words.len(), Failure::ALL.len());
}

#[test]
fn only_p256_pkcs8_keys_and_http_urls_make_a_signer() {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    assert!(Signer::new(key.serialize_pem().as_bytes(), "ftp://x/").is_err());
    assert!(Signer::new(key.serialize_pem().as_bytes(), "https://x/a>b").is_err());
    assert!(Signer::new(b"not a key", URL).is_err());
    let ed = KeyPair::generate_for(&rcgen::PKCS_ED25519).unwrap();
    assert!(Signer::new(ed.serialize_pem().as_bytes(), URL).is_err());
    assert!(Anchors::from_pem(b"").is_err());
}

#[tokio::test]
async fn one_fetch_per_request_from_allowed_hosts_that_did_not_fail_lately() {
    let root = ca("Test STI-CA", None);
    let (pem, key) = leaf(&root, Some(tn_list(&[spc("709J")])), 2028, &[]);
    let w = world(&root);
    w.serve(URL, &pem);
    w.serve("https://other.test/shaken.pem", &pem);
    let s = signer(&key, URL);
    let a = Attestation::A;
    // Two headers whose certificates are not kept: only the first is fetched.
    let slow = signer(&key, "https://tarpit.test/a.pem").identity(CALLER, CALLEE, a, NOW).unwrap();
    let good = s.identity(CALLER, CALLEE, a, NOW).unwrap();
    let v = w.verifier.verify(&[&slow, &good], Some(CALLER), CALLEE, NOW).await;
    assert_eq!(v, failed(Failure::CertUnavailable));
    assert_eq!(w.served.fetches.load(Ordering::SeqCst), 1);
    // A host that failed is not asked again for a while, whatever the URL.
    let other_path = signer(&key, "https://tarpit.test/b.pem").identity(CALLER, CALLEE, a, NOW).unwrap();
    assert_eq!(w.check(&other_path, NOW + 1_000).await, failed(Failure::CertUnavailable));
    assert_eq!(w.served.fetches.load(Ordering::SeqCst), 1);
    // Once the first is kept, the second header's turn comes.
    assert_eq!(w.check(&good, NOW).await, Verification::passed(a));

    // Only the listed hosts, when the operator lists them.
    let served = Arc::new(Served::default());
    served.files.lock().unwrap().insert("https://other.test/shaken.pem".into(), pem.clone());
    let anchors = Anchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let settings = Settings { allowed_hosts: vec!["cert.test".into()], ..Settings::default() };
    let only = Verifier::new(anchors, served.clone(), Arc::new(LocalState::new()), settings);
    let h = signer(&key, "https://other.test/shaken.pem").identity(CALLER, CALLEE, a, NOW).unwrap();
    assert_eq!(only.verify(&[&h], Some(CALLER), CALLEE, NOW).await, failed(Failure::CertUnavailable));
    assert_eq!(served.fetches.load(Ordering::SeqCst), 0);
    // No fetch at all past the bound on fetches in flight.
    let anchors = Anchors::from_pem(root.cert.pem().as_bytes()).unwrap();
    let settings = Settings { max_concurrent_fetches: 0, ..Settings::default() };
    let none = Verifier::new(anchors, served.clone(), Arc::new(LocalState::new()), settings);
    assert_eq!(none.verify(&[&h], Some(CALLER), CALLEE, NOW).await, failed(Failure::CertUnavailable));
    assert_eq!(served.fetches.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn without_trust_anchors_nothing_is_fetched_or_passes() {
    let root = ca("Test STI-CA", None);
    let (pem, key) = leaf(&root, Some(tn_list(&[spc("709J")])), 2028, &[]);
    let served = Arc::new(Served::default());
    served.files.lock().unwrap().insert(URL.into(), pem);
    let v = Verifier::new(Anchors::default(), served.clone(), Arc::new(LocalState::new()), Settings::default());
    let h = signer(&key, URL).identity(CALLER, CALLEE, Attestation::A, NOW).unwrap();
    assert_eq!(v.verify(&[&h], Some(CALLER), CALLEE, NOW).await, failed(Failure::Untrusted));
    assert_eq!(served.fetches.load(Ordering::SeqCst), 0);
}
