//! Our side: PASSporTs for calls going out, signed with the operator's
//! key (configuration only, never a tenant's).

use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_FIXED_SIGNING};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::PrivatePkcs8KeyDer;

use crate::passport::{self, Attestation, Claims, Dest, Orig};

pub struct Signer {
    key: EcdsaKeyPair,
    /// The certificate's URL: `x5u` and `info`.
    x5u: String,
    rng: SystemRandom,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer").field("x5u", &self.x5u).finish_non_exhaustive()
    }
}

impl Signer {
    /// From a PKCS#8 PEM P-256 key and the https URL of its certificate.
    pub fn new(key_pem: &[u8], x5u: &str) -> Result<Signer, String> {
        let der = PrivatePkcs8KeyDer::from_pem_slice(key_pem)
            .map_err(|_| "the key is not a PKCS#8 PEM key (`openssl pkcs8 -topk8 -nocrypt` converts one)".to_owned())?;
        let rng = SystemRandom::new();
        let key = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, der.secret_pkcs8_der(), &rng)
            .map_err(|_| "the key is not an ECDSA P-256 key".to_owned())?;
        let ok = x5u.len() <= 512
            && (x5u.starts_with("https://") || x5u.starts_with("http://"))
            && !x5u.bytes().any(|b| b.is_ascii_control() || b == b' ' || b == b'>');
        if !ok {
            return Err("the certificate URL must be an http(s) URL".into());
        }
        Ok(Signer { key, x5u: x5u.to_owned(), rng })
    }

    /// Our public key (uncompressed P-256 point).
    pub fn public_key(&self) -> &[u8] {
        self.key.public_key().as_ref()
    }

    pub fn certificate_url(&self) -> &str {
        &self.x5u
    }

    /// The `Identity` header value for a call from `orig` to `dest` (E.164),
    /// or none when either is not a telephone number.
    pub fn identity(&self, orig: &str, dest: &str, attest: Attestation, now_ms: i64) -> Option<String> {
        let claims = Claims {
            attest: attest.as_str().to_owned(),
            dest: Dest { tn: vec![crate::tn::canonical(dest)?] },
            iat: now_ms.div_euclid(1000),
            orig: Orig { tn: crate::tn::canonical(orig)? },
            origid: uuid::Uuid::new_v4().to_string(),
        };
        let mut failed = false;
        let jws = passport::encode(&self.x5u, &claims, |input| match self.key.sign(&self.rng, input) {
            Ok(sig) => sig.as_ref().to_vec(),
            Err(_) => {
                failed = true;
                Vec::new()
            }
        });
        (!failed).then(|| crate::header::format(&jws, &self.x5u))
    }
}
