//! Access tokens: short-lived JWTs, EdDSA (Ed25519) by default, HS256 allowed.

use ed25519_dalek::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use ed25519_dalek::SigningKey;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AccessClaims {
    pub iss: String,
    /// The user id.
    pub sub: String,
    pub tenant_id: String,
    pub role: String,
    pub permissions: Vec<String>,
    pub jti: String,
    /// The refresh-token family (session) this token belongs to.
    pub sid: String,
    pub iat: i64,
    /// Not before; we issue none, but one presented is honoured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    pub exp: i64,
    /// How the person proved who they are (RFC 8176): `pwd`, `email`
    /// (a code by mail), `otp` (TOTP), `rec` (a recovery code), `mfa`.
    #[serde(default)]
    pub amr: Vec<String>,
    /// When they signed in (seconds), kept across refreshes.
    #[serde(default)]
    pub auth_time: i64,
    /// When this session last gave a second factor (seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mfa_time: Option<i64>,
}

/// Why a presented access token was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not ours, tampered, malformed, or claiming to be issued (or valid
    /// from) a time still in the future: one answer for all of them.
    Invalid,
    /// Ours (the signature proves it) and past its `exp`. Anyone holding the
    /// token can read `exp` from it, so saying so tells nothing.
    Expired,
}

pub struct JwtKeys {
    alg: Algorithm,
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    issuer: String,
}

#[derive(Debug, thiserror::Error)]
#[error("signing key: {0}")]
pub struct KeyError(String);

impl JwtKeys {
    /// From a PKCS#8 PEM Ed25519 private key.
    pub fn ed25519_from_pem(pem: &str, issuer: &str) -> Result<Self, KeyError> {
        let sk =
            SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError(format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
        let public = sk.verifying_key().to_public_key_pem(Default::default()).map_err(|e| KeyError(e.to_string()))?;
        let encoding = EncodingKey::from_ed_pem(pem.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        let decoding = DecodingKey::from_ed_pem(public.as_bytes()).map_err(|e| KeyError(e.to_string()))?;
        Ok(Self::build(Algorithm::EdDSA, encoding, decoding, issuer))
    }

    pub fn hs256(secret: &[u8], issuer: &str) -> Result<Self, KeyError> {
        if secret.len() < 32 {
            return Err(KeyError("HS256 secret must be at least 32 bytes".into()));
        }
        Ok(Self::build(Algorithm::HS256, EncodingKey::from_secret(secret), DecodingKey::from_secret(secret), issuer))
    }

    fn build(alg: Algorithm, encoding: EncodingKey, decoding: DecodingKey, issuer: &str) -> Self {
        // Pin the algorithm (no `alg` confusion) and the issuer; expiry is
        // checked by the caller against the injectable clock.
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[issuer]);
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iss", "sub"]);
        Self { alg, encoding, decoding, validation, issuer: issuer.to_owned() }
    }

    /// A new Ed25519 key as PKCS#8 PEM.
    pub fn generate_ed25519_pem() -> Result<String, KeyError> {
        let sk = SigningKey::generate(&mut rand::rngs::OsRng);
        sk.to_pkcs8_pem(Default::default()).map(|p| p.to_string()).map_err(|e| KeyError(e.to_string()))
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn algorithm(&self) -> &'static str {
        match self.alg {
            Algorithm::EdDSA => "EdDSA",
            _ => "HS256",
        }
    }

    pub fn sign(&self, claims: &AccessClaims) -> Result<String, KeyError> {
        jsonwebtoken::encode(&Header::new(self.alg), claims, &self.encoding).map_err(|e| KeyError(e.to_string()))
    }

    /// Verifies signature, algorithm, issuer, expiry (against `now_secs`)
    /// and that neither `iat` nor `nbf` lies more than `skew_secs` ahead:
    /// a token from the future was minted by a clock (or a key) we cannot
    /// trust, and would otherwise outlive its stated lifetime.
    pub fn verify(&self, token: &str, now_secs: i64, skew_secs: i64) -> Result<AccessClaims, Refused> {
        let data = jsonwebtoken::decode::<AccessClaims>(token, &self.decoding, &self.validation)
            .map_err(|_| Refused::Invalid)?;
        let c = data.claims;
        let latest = now_secs.saturating_add(skew_secs);
        if c.iat > latest || c.nbf.is_some_and(|nbf| nbf > latest) {
            return Err(Refused::Invalid);
        }
        if c.exp <= now_secs {
            return Err(Refused::Expired);
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: i64) -> AccessClaims {
        AccessClaims {
            iss: "palisade".into(),
            sub: "u".into(),
            tenant_id: "t".into(),
            role: "owner".into(),
            permissions: vec!["keys:manage".into()],
            jti: "j".into(),
            sid: "s".into(),
            iat: 0,
            nbf: None,
            exp,
            amr: vec!["pwd".into()],
            auth_time: 0,
            mfa_time: None,
        }
    }

    #[test]
    fn eddsa_round_trip_and_expiry() {
        let keys = JwtKeys::ed25519_from_pem(&JwtKeys::generate_ed25519_pem().unwrap(), "palisade").unwrap();
        let t = keys.sign(&claims(100)).unwrap();
        assert_eq!(keys.verify(&t, 99, 60), Ok(claims(100)));
        assert_eq!(keys.verify(&t, 100, 60), Err(Refused::Expired));
        // Expiry has no leeway: the skew is only for tokens from the future.
        assert_eq!(keys.verify(&t, 101, 3600), Err(Refused::Expired));
    }

    #[test]
    fn tokens_from_the_future_are_refused_past_the_skew() {
        let keys = JwtKeys::hs256(&[7u8; 32], "palisade").unwrap();
        let now = 1_000;
        let at = |iat: i64, nbf: Option<i64>| {
            let mut c = claims(now + 3600);
            c.iat = iat;
            c.nbf = nbf;
            keys.verify(&keys.sign(&c).unwrap(), now, 60)
        };
        assert!(at(now, None).is_ok());
        assert!(at(now + 60, None).is_ok(), "within the skew");
        assert_eq!(at(now + 61, None), Err(Refused::Invalid));
        assert!(at(now, Some(now + 60)).is_ok());
        assert_eq!(at(now, Some(now + 61)), Err(Refused::Invalid));
        // An expired token that also claims a future iat is not ours to explain.
        let mut c = claims(now - 1);
        c.iat = now + 61;
        assert_eq!(keys.verify(&keys.sign(&c).unwrap(), now, 60), Err(Refused::Invalid));
    }

    #[test]
    fn key_facts() {
        let ed = JwtKeys::ed25519_from_pem(&JwtKeys::generate_ed25519_pem().unwrap(), "palisade").unwrap();
        assert_eq!((ed.algorithm(), ed.issuer()), ("EdDSA", "palisade"));
        let hs = JwtKeys::hs256(&[7u8; 32], "other").unwrap();
        assert_eq!((hs.algorithm(), hs.issuer()), ("HS256", "other"));
        assert!(JwtKeys::hs256(&[7u8; 31], "palisade").is_err());
        assert!(JwtKeys::ed25519_from_pem("not a key", "palisade").is_err());
    }

    #[test]
    fn rejects_other_keys_algorithms_and_issuers() {
        let a = JwtKeys::ed25519_from_pem(&JwtKeys::generate_ed25519_pem().unwrap(), "palisade").unwrap();
        let b = JwtKeys::ed25519_from_pem(&JwtKeys::generate_ed25519_pem().unwrap(), "palisade").unwrap();
        let t = a.sign(&claims(100)).unwrap();
        assert_eq!(b.verify(&t, 0, 60), Err(Refused::Invalid));
        let hs = JwtKeys::hs256(&[7u8; 32], "palisade").unwrap();
        assert_eq!(a.verify(&hs.sign(&claims(100)).unwrap(), 0, 60), Err(Refused::Invalid));
        let mut evil = claims(100);
        evil.iss = "evil".into();
        assert_eq!(hs.verify(&hs.sign(&evil).unwrap(), 0, 60), Err(Refused::Invalid));
        // Expired and signed by another key: unknown, not "expired".
        assert_eq!(b.verify(&t, 200, 60), Err(Refused::Invalid));
        // Tampered payload.
        let mut parts: Vec<&str> = t.split('.').collect();
        let forged = a.sign(&claims(999)).unwrap();
        parts[1] = forged.split('.').nth(1).unwrap();
        assert_eq!(a.verify(&parts.join("."), 0, 60), Err(Refused::Invalid));
        // alg=none
        assert_eq!(a.verify("eyJhbGciOiJub25lIn0.eyJzdWIiOiJ1In0.", 0, 60), Err(Refused::Invalid));
    }
}
