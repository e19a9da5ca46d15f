//! Passkeys, with a software authenticator and client (1Password's
//! passkey-rs): registration with the password, a passkey as the second
//! factor of a sign-in and of a step-up, a sign-in with the passkey alone,
//! each answer used once, and another origin refused.

use passkey_authenticator::{Authenticator, UiHint, UserCheck, UserValidationMethod};
use passkey_client::{Client, DefaultClientData};
use passkey_crypto::rust_crypto::RustCryptoBackend;
use passkey_types::ctap2::{Aaguid, Ctap2Error};
use passkey_types::{webauthn as pk, Passkey};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, Resp, TestServer, PASSWORD};

const ORIGIN: &str = "https://palisade.example.com";

/// The person at their device: present and verified (a PIN, a finger).
struct Verified;

#[async_trait::async_trait]
impl UserValidationMethod for Verified {
    type PasskeyItem = Passkey;
    async fn check_user<'a>(
        &self,
        _: UiHint<'a, Passkey>,
        presence: bool,
        verification: bool,
    ) -> Result<UserCheck, Ctap2Error> {
        Ok(UserCheck { presence, verification })
    }
    fn is_presence_enabled(&self) -> bool {
        true
    }
    fn is_verification_enabled(&self) -> Option<bool> {
        Some(true)
    }
}

type Device = Client<Option<Passkey>, Verified, RustCryptoBackend, public_suffix::PublicSuffixList, ()>;

fn device() -> Device {
    let mut a = Authenticator::new(Aaguid::new_empty(), None, Verified, RustCryptoBackend);
    a.set_make_credentials_with_signature_counter(true);
    Client::new(a)
}

async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| c.server.public_url = ORIGIN.into()).await
}

async fn register(s: &TestServer, token: &str, d: &mut Device) -> Resp {
    let r = s.post("/v1/me/passkeys/register", token, json!({"password": PASSWORD})).await.expect(200);
    let options: pk::CredentialCreationOptions = serde_json::from_value(r.body["options"].clone()).unwrap();
    let created = d.register(&url::Url::parse(ORIGIN).unwrap(), options, DefaultClientData).await.unwrap();
    let body = json!({"ceremony_id": r.body["ceremony_id"], "name": "laptop", "credential": serde_json::to_value(&created).unwrap()});
    s.post("/v1/me/passkeys", token, body).await
}

/// The device's answer to a ceremony's options, from `origin`.
async fn answer(d: &mut Device, start: &Value, origin: &str) -> Value {
    let options: pk::CredentialRequestOptions = serde_json::from_value(start["options"].clone()).unwrap();
    let got = d.authenticate(&url::Url::parse(origin).unwrap(), options, DefaultClientData).await.unwrap();
    json!({"ceremony_id": start["ceremony_id"], "credential": serde_json::to_value(&got).unwrap()})
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
    // From a page of another origin (a subdomain the browser lets use it), refused.
    let start = s.call(Method::POST, "/v1/auth/passkey/start", None, None).await.expect(200);
    let phished = answer(&mut d, &start.body, "https://login.palisade.example.com").await;
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
