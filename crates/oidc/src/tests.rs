//! Against a provider in memory: discovery, rotating ES256 keys, the token
//! endpoint; every reason an ID token is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use base64::Engine as _;
use serde_json::{json, Value};

use super::*;

const ISSUER: &str = "https://id.example.com";
const CLIENT: &str = "palisade-client";
const NOW: i64 = 1_800_000_000;

struct Key {
    kid: String,
    pem: String,
    jwk: Value,
}

fn key(kid: &str) -> Key {
    let kp = rcgen::KeyPair::generate().unwrap();
    let raw = kp.public_key_raw();
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwk = json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
        "x": b64(&raw[1..33]), "y": b64(&raw[33..65])});
    Key { kid: kid.into(), pem: kp.serialize_pem(), jwk }
}

fn sign(k: &Key, claims: &Value) -> String {
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    h.kid = Some(k.kid.clone());
    jsonwebtoken::encode(&h, claims, &jsonwebtoken::EncodingKey::from_ec_pem(k.pem.as_bytes()).unwrap()).unwrap()
}

#[derive(Default)]
struct Fake {
    discovery: Mutex<Value>,
    jwks: Mutex<Vec<Value>>,
    jwks_reads: Mutex<u32>,
    /// code → the ID token the token endpoint answers.
    codes: Mutex<HashMap<String, String>>,
    /// What the last token request sent.
    last_form: Mutex<Vec<(String, String)>>,
    last_basic: Mutex<Option<(String, String)>>,
}

impl Http for Fake {
    fn get<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            if url == format!("{ISSUER}/.well-known/openid-configuration") {
                return Ok(self.discovery.lock().unwrap().to_string().into_bytes());
            }
            if url == format!("{ISSUER}/jwks") {
                *self.jwks_reads.lock().unwrap() += 1;
                return Ok(json!({"keys": *self.jwks.lock().unwrap()}).to_string().into_bytes());
            }
            Err(format!("404 {url}"))
        })
    }

    fn post_form<'a>(
        &'a self,
        url: &'a str,
        basic: Option<(&'a str, &'a str)>,
        form: &'a [(&'a str, &'a str)],
    ) -> BoxFut<'a, Result<(u16, Vec<u8>), String>> {
        Box::pin(async move {
            assert_eq!(url, format!("{ISSUER}/token"));
            *self.last_form.lock().unwrap() = form.iter().map(|(k, v)| ((*k).into(), (*v).into())).collect();
            *self.last_basic.lock().unwrap() = basic.map(|(u, p)| (u.into(), p.into()));
            let code = form.iter().find(|(k, _)| *k == "code").map(|(_, v)| *v).unwrap_or_default();
            match self.codes.lock().unwrap().remove(code) {
                Some(id_token) => {
                    Ok((200, json!({"id_token": id_token, "token_type": "Bearer"}).to_string().into_bytes()))
                }
                None => Ok((400, br#"{"error":"invalid_grant"}"#.to_vec())),
            }
        })
    }
}

fn discovery() -> Value {
    json!({"issuer": ISSUER, "authorization_endpoint": format!("{ISSUER}/authorize"),
        "token_endpoint": format!("{ISSUER}/token"), "jwks_uri": format!("{ISSUER}/jwks")})
}

fn settings() -> Settings {
    Settings {
        name: "id".into(),
        issuer: ISSUER.into(),
        client_id: CLIENT.into(),
        client_secret: "s3cret".into(),
        allowed_domains: vec![],
        require_https: true,
        leeway_secs: 60,
        max_age_secs: 600,
        key_refetch_secs: 30,
    }
}

fn claims(nonce: &str) -> Value {
    json!({"iss": ISSUER, "sub": "248289761001", "aud": CLIENT, "exp": NOW + 300, "iat": NOW,
        "nonce": nonce, "email": "Jane@Acme.example", "email_verified": true})
}

struct World {
    fake: Arc<Fake>,
    provider: Provider,
    key: Key,
}

fn world(settings: Settings) -> World {
    let k = key("k1");
    let fake = Arc::new(Fake::default());
    *fake.discovery.lock().unwrap() = discovery();
    fake.jwks.lock().unwrap().push(k.jwk.clone());
    World { provider: Provider::new(settings, fake.clone()), fake, key: k }
}

impl World {
    /// A sign-in whose token endpoint answers `token` for the code.
    async fn finish_with(&self, token: String, nonce: &str) -> Result<Identity, Error> {
        self.fake.codes.lock().unwrap().insert("c0de".into(), token);
        self.provider.finish("c0de", "verifier", nonce, "https://palisade.example/cb", NOW).await
    }

    async fn with_claims(&self, edit: impl FnOnce(&mut Value)) -> Result<Identity, Error> {
        let mut c = claims("n0nce");
        edit(&mut c);
        self.finish_with(sign(&self.key, &c), "n0nce").await
    }
}

fn rejected(r: Result<Identity, Error>) -> &'static str {
    match r {
        Err(Error::Rejected(why)) => why,
        other => panic!("not rejected: {other:?}"),
    }
}

#[tokio::test]
async fn the_start_carries_state_nonce_and_an_s256_challenge() {
    let w = world(settings());
    let s = w.provider.start("https://palisade.example/v1/auth/oidc/id/callback").await.unwrap();
    let url = url::Url::parse(&s.url).unwrap();
    assert_eq!(url.as_str().split('?').next(), Some("https://id.example.com/authorize"));
    let q: HashMap<_, _> = url.query_pairs().into_owned().collect();
    assert_eq!(q["response_type"], "code");
    assert_eq!(q["client_id"], CLIENT);
    assert_eq!(q["scope"], "openid email");
    assert_eq!(q["redirect_uri"], "https://palisade.example/v1/auth/oidc/id/callback");
    assert_eq!((q["state"].as_str(), q["nonce"].as_str()), (s.state.as_str(), s.nonce.as_str()));
    assert_eq!(q["code_challenge_method"], "S256");
    assert_eq!(q["code_challenge"], code_challenge(&s.verifier));
    assert!(s.verifier.len() >= 43 && s.state.len() >= 43 && s.nonce != s.state);
    // RFC 7636 appendix B.
    assert_eq!(
        code_challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
        "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
    );
}

#[tokio::test]
async fn a_good_token_names_a_verified_address_and_the_exchange_sends_the_verifier() {
    let w = world(settings());
    let id = w.with_claims(|_| {}).await.unwrap();
    assert_eq!(id, Identity { subject: "248289761001".into(), email: "jane@acme.example".into() });
    let form = w.fake.last_form.lock().unwrap().clone();
    assert!(form.contains(&("code_verifier".into(), "verifier".into())));
    assert!(form.contains(&("grant_type".into(), "authorization_code".into())));
    assert!(!form.iter().any(|(k, _)| k == "client_secret"), "Basic by default");
    assert_eq!(*w.fake.last_basic.lock().unwrap(), Some((CLIENT.into(), "s3cret".into())));
    // "true" as a string is believed; several audiences with us as azp too.
    w.with_claims(|c| c["email_verified"] = json!("true")).await.unwrap();
    w.with_claims(|c| {
        c["aud"] = json!([CLIENT, "other"]);
        c["azp"] = json!(CLIENT);
    })
    .await
    .unwrap();
}

#[tokio::test]
async fn every_wrong_claim_is_refused_with_its_reason() {
    let w = world(settings());
    assert_eq!(rejected(w.with_claims(|c| c["aud"] = json!("someone-else")).await), "wrong_audience");
    assert_eq!(rejected(w.with_claims(|c| c["iss"] = json!("https://evil.example")).await), "wrong_issuer");
    assert_eq!(rejected(w.with_claims(|c| c["exp"] = json!(NOW - 61)).await), "expired");
    assert_eq!(rejected(w.with_claims(|c| c["iat"] = json!(NOW + 61)).await), "issued_in_future");
    assert_eq!(rejected(w.with_claims(|c| c["iat"] = json!(NOW - 601)).await), "too_old");
    assert_eq!(rejected(w.with_claims(|c| c["nonce"] = json!("another")).await), "bad_nonce");
    assert_eq!(
        rejected(w.with_claims(|c| c.as_object_mut().unwrap().remove("nonce").map(drop).unwrap()).await),
        "bad_nonce"
    );
    assert_eq!(rejected(w.with_claims(|c| c["aud"] = json!([CLIENT, "other"])).await), "wrong_azp");
    assert_eq!(rejected(w.with_claims(|c| c["azp"] = json!("other")).await), "wrong_azp");
    assert_eq!(rejected(w.with_claims(|c| c["email_verified"] = json!(false)).await), "email_not_verified");
    assert_eq!(
        rejected(w.with_claims(|c| c.as_object_mut().unwrap().remove("email_verified").map(drop).unwrap()).await),
        "email_not_verified"
    );
    assert_eq!(rejected(w.with_claims(|c| c["email"] = json!("not an address")).await), "email_not_verified");
    // Within the leeway it passes.
    w.with_claims(|c| c["exp"] = json!(NOW - 59)).await.unwrap();
    // A token the token endpoint did not give (an unknown or used code).
    let r = w.provider.finish("never", "verifier", "n0nce", "https://palisade.example/cb", NOW).await;
    assert_eq!(rejected(r), "code_rejected");
}

#[tokio::test]
async fn signatures_keys_and_algorithms() {
    let w = world(settings());
    // Signed by a key the provider does not publish.
    let stranger = key("k1");
    assert_eq!(rejected(w.finish_with(sign(&stranger, &claims("n0nce")), "n0nce").await), "bad_signature");
    // A shared-secret token, whatever key it names.
    let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    h.kid = Some("k1".into());
    let hs = jsonwebtoken::encode(&h, &claims("n0nce"), &jsonwebtoken::EncodingKey::from_secret(b"s3cret")).unwrap();
    assert_eq!(rejected(w.finish_with(hs, "n0nce").await), "alg_not_allowed");
    assert_eq!(rejected(w.finish_with("not.a.jwt".into(), "n0nce").await), "malformed");
}

#[tokio::test]
async fn a_rotated_key_is_fetched_and_unknown_ones_do_not_hammer_the_provider() {
    let w = world(settings());
    w.with_claims(|_| {}).await.unwrap();
    assert_eq!(*w.fake.jwks_reads.lock().unwrap(), 1);
    // The provider rotates: the new kid makes us read the keys again.
    let k2 = key("k2");
    w.fake.jwks.lock().unwrap().push(k2.jwk.clone());
    // Our last read is fresh: within 30 s an unknown kid is not read again…
    assert_eq!(rejected(w.finish_with(sign(&k2, &claims("n0nce")), "n0nce").await), "unknown_key");
    assert_eq!(*w.fake.jwks_reads.lock().unwrap(), 1);
    // …after that it is (here: the cache is made older by hand).
    {
        let mut kept = w.provider.keys_for_test().await;
        kept.as_mut().unwrap().at -= std::time::Duration::from_secs(31);
    }
    w.finish_with(sign(&k2, &claims("n0nce")), "n0nce").await.unwrap();
    assert_eq!(*w.fake.jwks_reads.lock().unwrap(), 2);
    // The old key still works while it is published.
    w.with_claims(|_| {}).await.unwrap();
    assert_eq!(*w.fake.jwks_reads.lock().unwrap(), 2);
}

#[tokio::test]
async fn domains_discovery_and_client_authentication() {
    let mut s = settings();
    s.allowed_domains = vec!["acme.example".into()];
    let w = world(s.clone());
    w.with_claims(|_| {}).await.unwrap();
    assert_eq!(rejected(w.with_claims(|c| c["email"] = json!("jane@evil.example")).await), "domain_not_allowed");
    // A discovery document naming another issuer is not believed.
    let w = world(settings());
    w.fake.discovery.lock().unwrap()["issuer"] = json!("https://evil.example");
    assert!(matches!(w.provider.start("https://p/cb").await, Err(Error::Unavailable(_))));
    // Plain http endpoints only where allowed.
    let w = world(settings());
    w.fake.discovery.lock().unwrap()["token_endpoint"] = json!("http://id.example.com/token");
    assert!(matches!(w.provider.start("https://p/cb").await, Err(Error::Unavailable(_))));
    // A provider that takes only a form secret gets it there.
    let w = world(settings());
    w.fake.discovery.lock().unwrap()["token_endpoint_auth_methods_supported"] = json!(["client_secret_post"]);
    w.with_claims(|_| {}).await.unwrap();
    let form = w.fake.last_form.lock().unwrap().clone();
    assert!(form.contains(&("client_secret".into(), "s3cret".into())));
    assert_eq!(*w.fake.last_basic.lock().unwrap(), None);
}
