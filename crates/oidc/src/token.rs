//! The ID token (OpenID Connect Core §3.1.3.7): signed by one of the
//! provider's keys with an asymmetric algorithm, for us (`aud`, `azp`),
//! from the provider (`iss`), current (`exp`, `iat`), of this sign-in
//! (`nonce`), and naming a verified address of an allowed domain.

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use subtle::ConstantTimeEq;

use crate::{Error, Identity, Provider};

#[derive(Deserialize)]
struct Claims {
    sub: String,
    #[serde(deserialize_with = "one_or_many")]
    aud: Vec<String>,
    #[serde(default)]
    azp: Option<String>,
    exp: i64,
    iat: i64,
    #[serde(default)]
    nonce: Option<String>,
    #[serde(default)]
    email: Option<String>,
    /// A boolean, or (some providers) the string "true".
    #[serde(default)]
    email_verified: Option<serde_json::Value>,
}

fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// Asymmetric algorithms only: a shared secret is not a provider's key,
/// and `none` is not a signature.
fn allowed(alg: Algorithm) -> bool {
    use Algorithm::*;
    matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512 | ES256 | ES384 | EdDSA)
}

pub(crate) async fn verify(p: &Provider, token: &str, nonce: &str, now: i64) -> Result<Identity, Error> {
    let s = p.settings();
    let header = jsonwebtoken::decode_header(token).map_err(|_| Error::Rejected("malformed"))?;
    if !allowed(header.alg) {
        return Err(Error::Rejected("alg_not_allowed"));
    }
    let key = match key_for(&p.keys(false).await?, header.kid.as_deref(), header.alg) {
        Some(k) => k,
        // The provider may have rotated its keys since we read them.
        None => {
            key_for(&p.keys(true).await?, header.kid.as_deref(), header.alg).ok_or(Error::Rejected("unknown_key"))?
        }
    };
    let mut v = Validation::new(header.alg);
    v.set_issuer(&[&s.issuer]);
    v.set_audience(&[&s.client_id]);
    // Time is checked below, on our clock.
    v.validate_exp = false;
    v.validate_nbf = false;
    v.leeway = 0;
    v.set_required_spec_claims(&["iss", "aud", "sub", "exp"]);
    let c = jsonwebtoken::decode::<Claims>(token, &key, &v)
        .map_err(|e| {
            use jsonwebtoken::errors::ErrorKind::*;
            Error::Rejected(match e.kind() {
                InvalidIssuer => "wrong_issuer",
                InvalidAudience => "wrong_audience",
                InvalidSignature => "bad_signature",
                _ => "malformed",
            })
        })?
        .claims;
    if c.exp.saturating_add(s.leeway_secs) <= now {
        return Err(Error::Rejected("expired"));
    }
    if c.iat > now.saturating_add(s.leeway_secs) {
        return Err(Error::Rejected("issued_in_future"));
    }
    if now.saturating_sub(c.iat) > s.max_age_secs {
        return Err(Error::Rejected("too_old"));
    }
    // Core §3.1.3.7 (4, 5): several audiences need `azp`, and an `azp` must be us.
    let azp_ok = match &c.azp {
        Some(azp) => azp == &s.client_id,
        None => c.aud.len() == 1,
    };
    if !azp_ok {
        return Err(Error::Rejected("wrong_azp"));
    }
    let nonce_ok = c.nonce.as_deref().is_some_and(|n| bool::from(n.as_bytes().ct_eq(nonce.as_bytes())));
    if !nonce_ok {
        return Err(Error::Rejected("bad_nonce"));
    }
    let verified = matches!(&c.email_verified, Some(serde_json::Value::Bool(true)))
        || matches!(&c.email_verified, Some(serde_json::Value::String(v)) if v == "true");
    let email = c.email.map(|e| e.trim().to_lowercase()).filter(|e| e.contains('@'));
    let Some(email) = email.filter(|_| verified) else {
        return Err(Error::Rejected("email_not_verified"));
    };
    let domain = email.rsplit('@').next().unwrap_or_default();
    if !s.allowed_domains.is_empty() && !s.allowed_domains.iter().any(|d| d.eq_ignore_ascii_case(domain)) {
        return Err(Error::Rejected("domain_not_allowed"));
    }
    Ok(Identity { subject: c.sub, email })
}

/// The key the header names (or the one signing key when it names none),
/// if it is a public key for signatures with this algorithm.
fn key_for(set: &jsonwebtoken::jwk::JwkSet, kid: Option<&str>, alg: Algorithm) -> Option<DecodingKey> {
    let usable = |k: &&Jwk| {
        !matches!(k.algorithm, AlgorithmParameters::OctetKey(_))
            && k.common.public_key_use.as_ref().is_none_or(|u| *u == PublicKeyUse::Signature)
            && k.common.key_algorithm.is_none_or(|a| format!("{a:?}") == format!("{alg:?}"))
    };
    let candidates: Vec<&Jwk> = set.keys.iter().filter(usable).collect();
    let jwk = match kid {
        Some(kid) => candidates.into_iter().find(|k| k.common.key_id.as_deref() == Some(kid))?,
        None if candidates.len() == 1 => candidates[0],
        None => return None,
    };
    DecodingKey::from_jwk(jwk).ok()
}
