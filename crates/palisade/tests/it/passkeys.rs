//! Passkeys, with a software authenticator of the test's own (ES256, CBOR
//! by hand, the WebAuthn data layouts): registration with the password, a
//! passkey as the second factor of a sign-in and of a step-up, a sign-in
//! with the passkey alone, each answer used once, and another origin refused.

use base64::Engine as _;
use p256::ecdsa::signature::Signer as _;
use reqwest::Method;
use serde_json::{json, Value};
use sha2::Digest as _;

use crate::common::{Backend, Resp, TestServer, PASSWORD};

const ORIGIN: &str = "https://palisade.example.com";
const RP_ID: &str = "palisade.example.com";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

fn unb64(s: &str) -> Vec<u8> {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).unwrap()
}

/// CBOR (RFC 8949) heads, enough for an attestation object and a COSE key.
fn head(major: u8, n: usize, out: &mut Vec<u8>) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=255 => out.extend([m | 24, n as u8]),
        _ => {
            out.push(m | 25);
            out.extend((n as u16).to_be_bytes());
        }
    }
}

fn cbor_bytes(b: &[u8], out: &mut Vec<u8>) {
    head(2, b.len(), out);
    out.extend(b);
}

fn cbor_text(t: &str, out: &mut Vec<u8>) {
    head(3, t.len(), out);
    out.extend(t.as_bytes());
}

/// A small integer key of a COSE map: 0..=23 or -1..=-24.
fn cbor_int(i: i8, out: &mut Vec<u8>) {
    if i >= 0 {
        head(0, i as usize, out);
    } else {
        head(1, (-1 - i) as usize, out);
    }
}

/// A software authenticator with one ES256 passkey per site, the person
/// present and verified (as a PIN or a finger would say).
struct Device {
    key: Option<(Vec<u8>, p256::ecdsa::SigningKey, Vec<u8>)>,
    counter: u32,
}

fn device() -> Device {
    Device { key: None, counter: 0 }
}

fn client_data(kind: &str, challenge: &str, origin: &str) -> Vec<u8> {
    json!({"type": kind, "challenge": challenge, "origin": origin, "crossOrigin": false}).to_string().into_bytes()
}

impl Device {
    /// `navigator.credentials.create()`: attestation `none`.
    fn create(&mut self, options: &Value, origin: &str) -> Value {
        let pk = &options["publicKey"];
        assert_eq!(pk["rp"]["id"], RP_ID);
        let user_handle = unb64(pk["user"]["id"].as_str().unwrap());
        let signing = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
        let point = signing.verifying_key().to_encoded_point(false);
        let cred_id: Vec<u8> = (0..16).map(|_| rand::random::<u8>()).collect();
        let mut cose = Vec::new();
        head(5, 5, &mut cose);
        cbor_int(1, &mut cose);
        cbor_int(2, &mut cose); // kty: EC2
        cbor_int(3, &mut cose);
        cbor_int(-7, &mut cose); // alg: ES256
        cbor_int(-1, &mut cose);
        cbor_int(1, &mut cose); // crv: P-256
        cbor_int(-2, &mut cose);
        cbor_bytes(point.x().unwrap(), &mut cose);
        cbor_int(-3, &mut cose);
        cbor_bytes(point.y().unwrap(), &mut cose);
        let mut auth_data = sha2::Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(0x45); // user present, verified, credential data
        self.counter += 1;
        auth_data.extend(self.counter.to_be_bytes());
        auth_data.extend([0u8; 16]);
        auth_data.extend((cred_id.len() as u16).to_be_bytes());
        auth_data.extend(&cred_id);
        auth_data.extend(&cose);
        let mut att = Vec::new();
        head(5, 3, &mut att);
        cbor_text("fmt", &mut att);
        cbor_text("none", &mut att);
        cbor_text("attStmt", &mut att);
        head(5, 0, &mut att);
        cbor_text("authData", &mut att);
        cbor_bytes(&auth_data, &mut att);
        let cd = client_data("webauthn.create", pk["challenge"].as_str().unwrap(), origin);
        self.key = Some((cred_id.clone(), signing, user_handle));
        json!({"id": b64(&cred_id), "rawId": b64(&cred_id), "type": "public-key", "extensions": {},
            "response": {"attestationObject": b64(&att), "clientDataJSON": b64(&cd)}})
    }

    /// `navigator.credentials.get()`, from `origin`.
    fn get(&mut self, options: &Value, origin: &str) -> Value {
        let pk = &options["publicKey"];
        let (cred_id, signing, user_handle) = self.key.as_ref().expect("a passkey on this device");
        let mut auth_data = sha2::Sha256::digest(RP_ID.as_bytes()).to_vec();
        auth_data.push(0x05); // user present, verified
        self.counter += 1;
        auth_data.extend(self.counter.to_be_bytes());
        let cd = client_data("webauthn.get", pk["challenge"].as_str().unwrap(), origin);
        let mut signed = auth_data.clone();
        signed.extend(sha2::Sha256::digest(&cd));
        let sig: p256::ecdsa::Signature = signing.sign(&signed);
        json!({"id": b64(cred_id), "rawId": b64(cred_id), "type": "public-key", "extensions": {},
            "response": {"authenticatorData": b64(&auth_data), "clientDataJSON": b64(&cd),
                "signature": b64(sig.to_der().as_bytes()), "userHandle": b64(user_handle)}})
    }
}

async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| c.server.public_url = ORIGIN.into()).await
}

async fn register(s: &TestServer, token: &str, d: &mut Device) -> Resp {
    let r = s.post("/v1/me/passkeys/register", token, json!({"password": PASSWORD})).await.expect(200);
    let created = d.create(&r.body["options"], ORIGIN);
    let body = json!({"ceremony_id": r.body["ceremony_id"], "name": "laptop", "credential": created});
    s.post("/v1/me/passkeys", token, body).await
}

/// The device's answer to a ceremony's options, from `origin`.
async fn answer(d: &mut Device, start: &Value, origin: &str) -> Value {
    json!({"ceremony_id": start["ceremony_id"], "credential": d.get(&start["options"], origin)})
}

fn amr(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    let c: Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    c["amr"].clone()
}

#[tokio::test]
async fn a_passkey_is_a_second_factor_and_a_sign_in_of_its_own() {
    let s = server().await;
    let t = s.tenant("Acme").await;
    let mut d = device();
    // Registration needs the password.
    s.post("/v1/me/passkeys/register", &t.token, json!({"password": "not the password"})).await.expect(403);
    let r = register(&s, &t.token, &mut d).await.expect(201);
    assert_eq!(r.body["passkey"]["name"], "laptop");
    assert_eq!(amr(r.body["access_token"].as_str().unwrap()), json!(["pwd", "hwk", "mfa"]));
    let token = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(s.get("/v1/me/passkeys", &token).await.expect(200).body["data"].as_array().unwrap().len(), 1);
    assert_eq!(s.get("/v1/me/mfa", &token).await.expect(200).body["passkeys"], 1);

    // The password now gets a challenge, answered with the passkey.
    let r = s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": PASSWORD}))).await;
    let r = r.expect(403);
    assert_eq!(r.body["methods"], json!(["passkey"]));
    let mfa_token = r.body["mfa_token"].as_str().unwrap().to_owned();
    let start =
        s.call(Method::POST, "/v1/auth/mfa/passkey", None, Some(json!({"mfa_token": mfa_token}))).await.expect(200);
    let passkey = answer(&mut d, &start.body, ORIGIN).await;
    let r = s
        .call(Method::POST, "/v1/auth/mfa", None, Some(json!({"mfa_token": mfa_token, "passkey": passkey.clone()})))
        .await
        .expect(200);
    assert_eq!(amr(r.body["access_token"].as_str().unwrap()), json!(["pwd", "hwk", "mfa"]));
    // An answer works once.
    let again =
        s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": PASSWORD}))).await;
    let mfa2 = again.expect(403).body["mfa_token"].as_str().unwrap().to_owned();
    s.call(Method::POST, "/v1/auth/mfa", None, Some(json!({"mfa_token": mfa2, "passkey": passkey}))).await.expect(401);

    // The passkey alone signs in (no address asked).
    let start = s.call(Method::POST, "/v1/auth/passkey/start", None, None).await.expect(200);
    let ans = answer(&mut d, &start.body, ORIGIN).await;
    let r = s.call(Method::POST, "/v1/auth/passkey", None, Some(ans.clone())).await.expect(200);
    let signed = r.body["access_token"].as_str().unwrap().to_owned();
    assert_eq!(amr(&signed), json!(["hwk", "mfa"]));
    assert_eq!(s.get("/v1/me", &signed).await.expect(200).body["email"], t.email.as_str());
    s.call(Method::POST, "/v1/auth/passkey", None, Some(ans)).await.expect(401);
    // From a page of another origin, refused.
    let start = s.call(Method::POST, "/v1/auth/passkey/start", None, None).await.expect(200);
    let phished = answer(&mut d, &start.body, "https://palisade-login.example.net").await;
    let r = s.call(Method::POST, "/v1/auth/passkey", None, Some(phished)).await.expect(401);
    assert_eq!(r.body["reason"], "unauthenticated");

    // Step-up with the passkey after the factor aged.
    s.clock.advance_ms(11 * 60_000);
    let refused = s.post("/v1/api-keys", &signed, json!({"name": "admin", "role": "admin"})).await.expect(403);
    assert_eq!(refused.body["reason"], "mfa_required");
    // Nor can a stale session (with the password) add a factor of its own.
    let r = s.post("/v1/me/passkeys/register", &signed, json!({"password": PASSWORD})).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    let r = s.post("/v1/me/mfa/totp", &signed, json!({"password": PASSWORD})).await.expect(403);
    assert_eq!(r.body["reason"], "mfa_required");
    let start = s.call(Method::POST, "/v1/auth/step-up/passkey", Some(&signed), None).await.expect(200);
    let ans = answer(&mut d, &start.body, ORIGIN).await;
    let r = s.post("/v1/auth/step-up", &signed, json!({"passkey": ans})).await.expect(200);
    let stepped = r.body["access_token"].as_str().unwrap().to_owned();
    s.post("/v1/api-keys", &stepped, json!({"name": "admin", "role": "admin"})).await.expect(201);
    // Removing it: a recent factor (this one); then the password alone again.
    let id = s.get("/v1/me/passkeys", &stepped).await.expect(200).body["data"][0]["id"].as_str().unwrap().to_owned();
    s.call(Method::DELETE, &format!("/v1/me/passkeys/{id}"), Some(&stepped), None).await.expect(204);
    s.call(Method::POST, "/v1/auth/login", None, Some(json!({"email": t.email, "password": PASSWORD})))
        .await
        .expect(200);
    let events = s.events(&stepped, "action=auth.passkey_added").await;
    assert_eq!(events.len(), 1);
}

#[tokio::test]
async fn without_a_domain_passkeys_are_off_and_say_so() {
    let s = TestServer::start(Backend::Sqlite).await;
    let t = s.tenant("Acme").await;
    let r = s.post("/v1/me/passkeys/register", &t.token, json!({"password": PASSWORD})).await.expect(409);
    assert_eq!(r.body["reason"], "conflict");
    s.call(Method::POST, "/v1/auth/passkey/start", None, None).await.expect(409);
}
