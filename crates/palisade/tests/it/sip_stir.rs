//! STIR/SHAKEN end to end, with a test STI-CA made here and its
//! certificate chain served over HTTP on loopback: calls through a trunk
//! carry a PASSporT that a second ES256 implementation (RustCrypto's p256)
//! verifies; calls a trunk brings in are verified, marked on the call and
//! its CDR, or refused where the trunk says `reject`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use palisade_core::Clock as _;
use rcgen::{BasicConstraints, CertificateParams, CustomExtension, DnType, IsCa, KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::{Backend, TestServer};
use crate::sip_trunk::{carrier, carrier_request, header, next, number_of, response, server_with, TRUNK_SDP};
use crate::sip_ua::Ua;

const CALLER: &str = "+34699000111";

/// A test STI-CA and one SHAKEN certificate of its (an SPC TNAuthList).
struct Pki {
    root_pem: String,
    chain: Vec<u8>,
    key: KeyPair,
}

fn at(year: i32) -> time::OffsetDateTime {
    time::Date::from_calendar_date(year, time::Month::January, 1).unwrap().midnight().assume_utc()
}

fn pki(name: &str) -> Pki {
    let root_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.not_before = at(2026);
    p.not_after = at(2036);
    let root = p.self_signed(&root_key).unwrap();
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(DnType::CommonName, "SHAKEN 709J");
    p.not_before = at(2026);
    p.not_after = at(2036);
    // TNAuthList: SEQUENCE { [0] { IA5String "709J" } }.
    let tn_auth_list = vec![0x30, 0x08, 0xa0, 0x06, 0x16, 0x04, b'7', b'0', b'9', b'J'];
    p.custom_extensions.push(CustomExtension::from_oid_content(&[1, 3, 6, 1, 5, 5, 7, 1, 26], tn_auth_list));
    let leaf = p.signed_by(&key, &root, &root_key).unwrap();
    Pki { root_pem: root.pem(), chain: leaf.pem().into_bytes(), key }
}

/// Serves `files` (path → body) over HTTP/1.1 on loopback, one request per
/// connection; counts the requests.
async fn serve(files: Vec<(&'static str, Vec<u8>)>) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::SeqCst);
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let line = String::from_utf8_lossy(&head).lines().next().unwrap_or_default().to_owned();
            let path = line.split(' ').nth(1).unwrap_or_default().to_owned();
            let reply = match files.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => {
                    let mut r =
                        format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len())
                            .into_bytes();
                    r.extend_from_slice(body);
                    r
                }
                None => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_vec(),
            };
            let _ = conn.write_all(&reply).await;
        }
    });
    (base, hits)
}

struct Stir {
    s: TestServer,
    pki: Pki,
    url: String,
    base: String,
    hits: Arc<AtomicUsize>,
    _anchors: tempfile::NamedTempFile,
}

/// A server that signs with the test PKI's key and trusts its root; the
/// chain is served at `{base}/shaken.pem`, a rogue CA's at `/rogue.pem`.
async fn stir_server(rogue: &Pki) -> Stir {
    let pki = pki("Test STI-CA");
    let (base, hits) = serve(vec![("/shaken.pem", pki.chain.clone()), ("/rogue.pem", rogue.chain.clone())]).await;
    let url = format!("{base}/shaken.pem");
    let anchors = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(anchors.path(), &pki.root_pem).unwrap();
    let (key, cert_url, anchors_path) = (pki.key.serialize_pem(), url.clone(), anchors.path().to_owned());
    let s = server_with(Backend::Sqlite, move |c| {
        c.sip.stir.signing_key = Some(palisade_config::Secret::new(key));
        c.sip.stir.certificate_url = Some(cert_url);
        c.sip.stir.trust_anchors_file = Some(anchors_path);
        c.sip.stir.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    Stir { s, pki, url, base, hits, _anchors: anchors }
}

fn identity(key: &KeyPair, url: &str, to: &str, attest: palisade_stir::Attestation, now_ms: i64) -> String {
    let signer = palisade_stir::Signer::new(key.serialize_pem().as_bytes(), url).unwrap();
    signer.identity(CALLER, to, attest, now_ms).unwrap()
}

/// The carrier's INVITE to `number` with `extra` header lines.
fn invite(trunk: &Ua, number: &str, s: &TestServer, call: &str, extra: &[String]) -> String {
    let uri = format!("sip:{number}@{}", s.sip_udp());
    let mut lines = vec!["CSeq: 1 INVITE".to_owned(), format!("Contact: <sip:carrier@{}>", trunk.local)];
    lines.extend_from_slice(extra);
    carrier_request(trunk, "INVITE", &uri, call, &format!("<{uri}>"), &lines, TRUNK_SDP)
}

/// The newest call of the tenant, once it has ended.
async fn ended_call(s: &TestServer, token: &str, not: &[String]) -> Value {
    for _ in 0..100 {
        let calls = s.get("/v1/calls", token).await.expect(200).body;
        if let Some(c) =
            calls["data"].as_array().unwrap().iter().find(|c| !not.contains(&c["id"].as_str().unwrap().to_owned()))
        {
            if c["ended_at"].is_string() {
                return c.clone();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no call ended");
}

/// The device is called: it answers 486 (the call ends busy).
async fn device_is_called(device: &mut Ua) -> String {
    // (The ACK of an earlier call's 486 is skipped.)
    let ringing = loop {
        let r = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
        if !r.starts_with("ACK ") {
            break r;
        }
    };
    assert!(ringing.starts_with("INVITE "), "{ringing}");
    device.send_raw(response(&ringing, "486 Busy Here", &[], "").as_bytes()).await;
    ringing
}

/// The carrier's final answer to its INVITE (its ACK sent for a failure).
async fn final_status(trunk: &mut Ua) -> crate::sip_ua::Msg {
    loop {
        let m = trunk.recv(Duration::from_secs(5)).await.expect("a final answer");
        if m.status >= 200 {
            return m;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_through_a_trunk_carry_a_passport_that_a_second_library_verifies() {
    let rogue = pki("Rogue CA");
    let t = stir_server(&rogue).await;
    let s = &t.s;
    // Before any trunk (the sandbox): an identity whose number is not
    // verified would be vouched for with B only.
    let unverified = crate::sip_edge::phone(s, "Beta").await;
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", unverified.tenant), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let n = number_of(s, &unverified).await;
    let placed = s.post("/v1/calls", &unverified.token, json!({"from": n, "to": "+34612000444"})).await.expect(201);
    assert_eq!(placed.body["attestation"], "B", "{}", placed.body);
    assert_eq!((placed.body["direction"].as_str(), placed.body["verstat"].as_str()), (Some("outbound"), None));

    let mut trunk = carrier(s, false).await;
    let p = crate::sip_trunk::caller(s).await;
    let number = number_of(s, &p).await;
    let before = s.clock.now_ms();
    let placed = s.post("/v1/calls", &p.token, json!({"from": number, "to": "+34612000333"})).await.expect(201);
    assert_eq!(placed.body["attestation"], "A", "a verified number is vouched for fully");
    let inv = next(&mut trunk, "INVITE").await;
    let value = header(&inv, "identity").expect("an Identity header");
    let h = palisade_stir::header::parse(value).unwrap();
    assert_eq!((h.info, h.alg, h.ppt), (t.url.as_str(), Some("ES256"), Some("shaken")));
    let parts: Vec<&str> = h.jws.split('.').collect();
    let jose: Value = serde_json::from_slice(&B64.decode(parts[0]).unwrap()).unwrap();
    assert_eq!(jose, json!({"alg": "ES256", "ppt": "shaken", "typ": "passport", "x5u": t.url}));
    let claims: Value = serde_json::from_slice(&B64.decode(parts[1]).unwrap()).unwrap();
    assert_eq!(claims["attest"], "A");
    assert_eq!(claims["orig"]["tn"], number.trim_start_matches('+'));
    assert_eq!(claims["dest"]["tn"], json!(["34612000333"]));
    let iat = claims["iat"].as_i64().unwrap();
    assert!((before / 1000..=s.clock.now_ms() / 1000 + 1).contains(&iat), "{claims}");
    // RustCrypto's P-256 with the key of the certificate the URL serves.
    use p256::ecdsa::signature::Verifier as _;
    let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(t.pki.key.public_key_raw()).unwrap();
    let sig = p256::ecdsa::Signature::from_slice(&B64.decode(parts[2]).unwrap()).unwrap();
    vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).expect("p256 verifies the PASSporT");
    let chain = reqwest::get(&t.url).await.unwrap().bytes().await.unwrap();
    assert_eq!(chain.as_ref(), t.pki.chain.as_slice());
    // Our own verifier believes it too, as a carrier would.
    trunk.send_raw(response(&inv, "486 Busy Here", &[], "").as_bytes()).await;
    t.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_coming_in_are_verified_and_the_result_is_on_the_call_and_its_cdr() {
    let rogue = pki("Rogue CA");
    let t = stir_server(&rogue).await;
    let s = &t.s;
    let mut trunk = carrier(s, false).await;
    let (p, number, mut device) = crate::sip_trunk::registered_callee(s).await;

    // A good PASSporT: passed, with its attestation, on the call, the CDR,
    // the audit event and the webhook's data.
    let good = identity(&t.pki.key, &t.url, &number, palisade_stir::Attestation::A, s.clock.now_ms());
    trunk.send_raw(invite(&trunk, &number, s, "in-1@carrier", &[format!("Identity: {good}")]).as_bytes()).await;
    device_is_called(&mut device).await;
    assert_eq!(final_status(&mut trunk).await.status, 486);
    let call = ended_call(s, &p.token, &[]).await;
    assert_eq!(
        (call["direction"].as_str(), call["status"].as_str(), call["from"].as_str()),
        (Some("inbound"), Some("busy"), Some(CALLER)),
        "{call}"
    );
    assert_eq!((call["verstat"].as_str(), call["attestation"].as_str()), (Some("passed"), Some("A")), "{call}");
    assert!(call["verstat_reason"].is_null(), "{call}");
    let cdr = s.get("/v1/cdrs", &p.token).await.expect(200).body["data"][0].clone();
    assert_eq!((cdr["call_id"].as_str(), cdr["verstat"].as_str()), (call["id"].as_str(), Some("passed")), "{cdr}");
    assert_eq!((cdr["attestation"].as_str(), cdr["cost"].as_i64()), (Some("A"), Some(0)), "{cdr}");
    let events = s.events(&p.token, "action=call.received").await;
    assert_eq!(events[0]["details"]["stir"]["verstat"], "passed", "{events:?}");
    let fetched = t.hits.load(Ordering::SeqCst);

    // A PASSporT two minutes old (mark: the call goes through, marked).
    let stale = identity(&t.pki.key, &t.url, &number, palisade_stir::Attestation::A, s.clock.now_ms() - 120_000);
    trunk.send_raw(invite(&trunk, &number, s, "in-2@carrier", &[format!("Identity: {stale}")]).as_bytes()).await;
    device_is_called(&mut device).await;
    assert_eq!(final_status(&mut trunk).await.status, 486);
    let second = ended_call(s, &p.token, &[call["id"].as_str().unwrap().to_owned()]).await;
    assert_eq!(
        (second["verstat"].as_str(), second["verstat_reason"].as_str(), second["attestation"].as_str()),
        (Some("failed"), Some("iat_stale"), None),
        "{second}"
    );
    // None at all, in compact form `y` or not: no_signature.
    trunk.send_raw(invite(&trunk, &number, s, "in-3@carrier", &[]).as_bytes()).await;
    device_is_called(&mut device).await;
    assert_eq!(final_status(&mut trunk).await.status, 486);
    let ids = [call["id"].as_str().unwrap().to_owned(), second["id"].as_str().unwrap().to_owned()];
    let third = ended_call(s, &p.token, &ids).await;
    assert_eq!(third["verstat"], "no_signature", "{third}");
    // The certificate was fetched once and kept.
    assert_eq!(t.hits.load(Ordering::SeqCst), fetched, "the certificate is cached");

    // An inbound call hung up through the API while it rings: the device's
    // INVITE is canceled and the carrier hears that the call is over.
    let fresh = identity(&t.pki.key, &t.url, &number, palisade_stir::Attestation::A, s.clock.now_ms());
    trunk.send_raw(invite(&trunk, &number, s, "in-4@carrier", &[format!("Identity: {fresh}")]).as_bytes()).await;
    let ringing = loop {
        let r = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
        if r.starts_with("INVITE ") {
            break r;
        }
    };
    // It rings (a CANCEL may follow only a provisional answer, RFC 3261 §9.1).
    device.send_raw(response(&ringing, "180 Ringing", &[], "").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let live = s.get("/v1/calls", &p.token).await.expect(200).body["data"][0].clone();
    assert_eq!((live["status"].as_str(), live["direction"].as_str()), (Some("ringing"), Some("inbound")), "{live}");
    let id = live["id"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/calls/{id}/hangup"), &p.token, json!({})).await.expect(200);
    let over = final_status(&mut trunk).await;
    assert!(over.status >= 400, "{}", over.raw);
    let cancel = device.recv_request(Duration::from_secs(5)).await;
    let cancel = cancel.unwrap_or_else(|| panic!("the device's INVITE is not canceled; it got:\n{ringing}"));
    assert!(cancel.starts_with("CANCEL "), "{cancel}");
    assert_eq!(header(&cancel, "call-id"), header(&ringing, "call-id"));
    let ended = s.get(&format!("/v1/calls/{id}"), &p.token).await.expect(200).body;
    assert_eq!(ended["status"], "canceled", "{ended}");
    t.s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_that_rejects_refuses_each_unverified_call_with_its_reason() {
    let rogue = pki("Rogue CA");
    let t = stir_server(&rogue).await;
    let s = &t.s;
    let mut trunk = carrier(s, false).await;
    let trunks = s.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200).body;
    let id = trunks["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(trunks["data"][0]["stir"]["inbound"], "mark", "the default");
    let patched = s
        .admin(Method::PATCH, &format!("/sysadmin/v1/trunks/{id}"), Some(json!({"stir": {"inbound": "reject"}})))
        .await
        .expect(200);
    assert_eq!(patched.body["stir"]["inbound"], "reject");
    s.admin(Method::PATCH, &format!("/sysadmin/v1/trunks/{id}"), Some(json!({"stir": {"inbound": "drop"}})))
        .await
        .expect(400);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let (p, number, mut device) = crate::sip_trunk::registered_callee(s).await;
    let now = s.clock.now_ms();
    let a = palisade_stir::Attestation::A;
    let good = identity(&t.pki.key, &t.url, &number, a, now);
    let cases: Vec<(String, u16, &str)> = vec![
        (String::new(), 428, "identity_required"),
        (identity(&t.pki.key, &t.url, &number, a, now - 61_000), 438, "iat_stale"),
        (identity(&t.pki.key, &t.url, "+34600000000", a, now), 438, "dest_mismatch"),
        (identity(&rogue.key, &t.url, &number, a, now), 438, "bad_signature"),
        (identity(&rogue.key, &format!("{}/rogue.pem", t.base), &number, a, now), 438, "cert_untrusted"),
        (identity(&t.pki.key, &format!("{}/nothing.pem", t.base), &number, a, now), 438, "cert_unavailable"),
        ("garbage".into(), 438, "identity_malformed"),
    ];
    for (i, (value, status, reason)) in cases.iter().enumerate() {
        let extra: Vec<String> = if value.is_empty() { vec![] } else { vec![format!("Identity: {value}")] };
        trunk.send_raw(invite(&trunk, &number, s, &format!("bad-{i}@carrier"), &extra).as_bytes()).await;
        let got = final_status(&mut trunk).await;
        assert_eq!((got.status, got.warning()), (*status, Some(*reason)), "{}", got.raw);
    }
    let heard = device.recv_request(Duration::from_millis(300)).await;
    assert!(heard.is_none(), "a refused call rang the device: {heard:?}");
    // Each refusal is on the callee's audit trail, with its reason.
    let refused = s.events(&p.token, "action=call.refused_unverified").await;
    assert_eq!(refused.len(), cases.len(), "{refused:?}");
    assert!(refused.iter().any(|e| e["details"]["reason"] == "bad_signature"), "{refused:?}");
    // A good one rings (in compact form `y`); the same PASSporT again is a replay.
    trunk.send_raw(invite(&trunk, &number, s, "good@carrier", &[format!("y: {good}")]).as_bytes()).await;
    device_is_called(&mut device).await;
    assert_eq!(final_status(&mut trunk).await.status, 486);
    trunk.send_raw(invite(&trunk, &number, s, "again@carrier", &[format!("Identity: {good}")]).as_bytes()).await;
    let got = final_status(&mut trunk).await;
    assert_eq!((got.status, got.warning()), (438, Some("origid_replayed")), "{}", got.raw);
    // Only the call that passed is on the callee's list.
    let calls = s.get("/v1/calls", &p.token).await.expect(200).body;
    assert_eq!(calls["data"].as_array().unwrap().len(), 1, "{calls}");
    t.s.stop().await;
}
