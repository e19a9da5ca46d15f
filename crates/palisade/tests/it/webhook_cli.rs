//! `palisade webhook verify`, against signatures made here with an
//! independent HMAC-SHA256 (RFC 2104 over `sha2`) and with ed25519-dalek.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::Signer as _;
use sha2::{Digest, Sha256};

const SECRET_BYTES: &[u8] = b"palisade webhook cli test secret";
const BODY: &[u8] = br#"{"type":"message.delivered","data":{"id":"msg_1"}}"#;

/// HMAC-SHA256 written out from RFC 2104, so the test does not trust the
/// code under test (nor the `hmac` crate it uses).
fn hmac_sha256(key: &[u8], msg: &[u8]) -> [u8; 32] {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |b: u8| block.iter().map(|k| k ^ b).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(msg).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

fn v1(key: &[u8], id: &str, ts: i64, body: &[u8]) -> String {
    let content = [format!("{id}.{ts}.").as_bytes(), body].concat();
    format!("v1,{}", B64.encode(hmac_sha256(key, &content)))
}

fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64
}

fn whsec() -> String {
    format!("whsec_{}", B64.encode(SECRET_BYTES))
}

/// Runs `palisade webhook verify` in an empty directory with no config.
fn verify(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let dir = tempfile::tempdir().unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_palisade"));
    c.current_dir(dir.path())
        .args(["webhook", "verify"])
        .args(args)
        .env_remove("PALISADE_CONFIG")
        .env_remove("PALISADE_MODE")
        .env_remove("PALISADE_WEBHOOK_SECRET")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(stdin.unwrap_or_default()).unwrap();
    drop(pipe);
    child.wait_with_output().unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

struct Files {
    _dir: tempfile::TempDir,
    headers: String,
    body: String,
}

/// A request dump as a receiver might save it, with unrelated headers and
/// mixed-case names.
fn files(id: &str, ts: i64, signature: &str, body: &[u8]) -> Files {
    let dir = tempfile::tempdir().unwrap();
    let headers = dir.path().join("headers.txt");
    let dump = format!(
        "POST /hooks/palisade HTTP/1.1\r\nHost: example.com:443\r\nContent-Type: application/json\r\n\
         Webhook-Id: {id}\r\nwebhook-timestamp: {ts}\r\nWEBHOOK-SIGNATURE: {signature}\r\n\r\n"
    );
    std::fs::write(&headers, dump).unwrap();
    let body_path = dir.path().join("body.json");
    std::fs::write(&body_path, body).unwrap();
    let (headers, body) = (headers.to_str().unwrap().to_owned(), body_path.to_str().unwrap().to_owned());
    Files { _dir: dir, headers, body }
}

#[test]
fn a_valid_v1_signature_verifies() {
    let ts = now();
    let f = files("msg_cli_1", ts, &v1(SECRET_BYTES, "msg_cli_1", ts, BODY), BODY);
    let out = verify(&["--secret", &whsec(), "--headers", &f.headers, "--body", &f.body], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "signature valid (v1, webhook-id msg_cli_1)");

    // The headers given inline, the body on stdin, a fixed clock, and the
    // right secret second (as during a rotation) alongside a wrong one.
    let ts = 1_614_265_330;
    let inline = format!(
        "webhook-id: msg_cli_2\nwebhook-timestamp: {ts}\nwebhook-signature: v2,AAAA {}",
        v1(SECRET_BYTES, "msg_cli_2", ts, BODY)
    );
    let other = format!("whsec_{}", B64.encode([9u8; 32]));
    let args = ["--secret", &other, "--secret", &whsec(), "--headers", &inline, "--body", "-", "--now", "1614265400"];
    let out = verify(&args, Some(BODY));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("webhook-id msg_cli_2"));
}

#[test]
fn the_standard_webhooks_test_vector_verifies() {
    let headers = "webhook-id: msg_p5jXN8AQM9LWM0D4loKWxJek\nwebhook-timestamp: 1614265330\n\
                   webhook-signature: v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
    assert_eq!(
        v1(
            &B64.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap(),
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=",
        "the test's own HMAC is right"
    );
    let args = [
        "--secret",
        "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
        "--headers",
        headers,
        "--body",
        "-",
        "--now",
        "1614265330",
    ];
    let out = verify(&args, Some(br#"{"test": 2432232314}"#));
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
}

#[test]
fn a_tampered_body_is_refused() {
    let ts = now();
    let f = files(
        "msg_cli_3",
        ts,
        &v1(SECRET_BYTES, "msg_cli_3", ts, BODY),
        br#"{"type":"message.delivered","data":{"id":"msg_2"}}"#,
    );
    let out = verify(&["--secret", &whsec(), "--headers", &f.headers, "--body", &f.body], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no signature matches"), "{err}");
    assert!(out.stdout.is_empty());
}

#[test]
fn an_old_timestamp_is_refused_with_how_far_out_it_is() {
    let ts = now() - 1000;
    let f = files("msg_cli_4", ts, &v1(SECRET_BYTES, "msg_cli_4", ts, BODY), BODY);
    let now = (ts + 1000).to_string();
    let out = verify(&["--secret", &whsec(), "--headers", &f.headers, "--body", &f.body, "--now", &now], None);
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(err.contains("1000 s old, 700 s outside the 300 s window"), "{err}");
    assert!(err.contains("the signature itself matches"), "{err}");

    // A wider window accepts it; one from the future is refused too.
    let wide = ["--secret", &whsec(), "--headers", &f.headers, "--body", &f.body, "--tolerance-secs", "2000"];
    assert_eq!(verify(&wide, None).status.code(), Some(0));
    let early = (ts - 400).to_string();
    let out = verify(&["--secret", &whsec(), "--headers", &f.headers, "--body", &f.body, "--now", &early], None);
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("in the future"), "{}", text(&out.stderr));
}

#[test]
fn an_ed25519_signature_verifies_with_the_public_key() {
    let key = ed25519_dalek::SigningKey::from_bytes(&[42; 32]);
    let whpk = format!("whpk_{}", B64.encode(key.verifying_key().as_bytes()));
    let ts = now();
    let sig = key.sign(&[format!("msg_cli_5.{ts}.").as_bytes(), BODY].concat());
    let f = files("msg_cli_5", ts, &format!("v1a,{}", B64.encode(sig.to_bytes())), BODY);
    let out = verify(&["--secret", &whpk, "--headers", &f.headers, "--body", &f.body], None);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), "signature valid (v1a, webhook-id msg_cli_5)");

    let other = ed25519_dalek::SigningKey::from_bytes(&[43; 32]);
    let wrong = format!("whpk_{}", B64.encode(other.verifying_key().as_bytes()));
    let out = verify(&["--secret", &wrong, "--headers", &f.headers, "--body", &f.body], None);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn missing_headers_and_bad_input_are_named() {
    let out = verify(
        &["--secret", &whsec(), "--headers", "webhook-id: msg_cli_6\nwebhook-timestamp: 1", "--body", "-"],
        None,
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(text(&out.stderr).contains("missing header webhook-signature"), "{}", text(&out.stderr));

    let out = verify(&["--secret", "whsec_c2hvcnQ=", "--headers", "webhook-id: x", "--body", "-"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--secret"), "{}", text(&out.stderr));

    let out = verify(&["--secret", &whsec(), "--headers", "no-such-file.txt", "--body", "-"], None);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--headers"), "{}", text(&out.stderr));
}
