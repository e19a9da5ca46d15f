//! Single sign-on with OpenID Connect (Core 1.0, Discovery 1.0): the
//! authorization code flow with PKCE (S256), `state` and `nonce`; the
//! provider's endpoints and keys found by discovery and kept a while; the
//! ID token's signature, `iss`, `aud` (and `azp`), `exp`, `iat` and `nonce`
//! checked, and only a verified address believed.

mod provider;
mod token;

use std::future::Future;
use std::pin::Pin;

pub use provider::Provider;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The binary's outbound HTTP: bounded in size and time, no redirects.
pub trait Http: Send + Sync + 'static {
    /// A GET: the body of a 200, else why not.
    fn get<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<Vec<u8>, String>>;
    /// A form POST, with HTTP Basic credentials when given: status and body.
    fn post_form<'a>(
        &'a self,
        url: &'a str,
        basic: Option<(&'a str, &'a str)>,
        form: &'a [(&'a str, &'a str)],
    ) -> BoxFut<'a, Result<(u16, Vec<u8>), String>>;
}

/// One provider, as the operator configured it.
#[derive(Clone)]
pub struct Settings {
    /// Its name in our paths (`/v1/auth/oidc/{name}/…`).
    pub name: String,
    /// Exactly as its discovery document and ID tokens say it.
    pub issuer: String,
    pub client_id: String,
    pub client_secret: String,
    /// Email domains whose people may sign in through it; empty: any.
    pub allowed_domains: Vec<String>,
    /// Its endpoints must be https (production).
    pub require_https: bool,
    /// Clock difference allowed on `exp` and `iat`.
    pub leeway_secs: i64,
    /// How old an ID token's `iat` may be.
    pub max_age_secs: i64,
    /// An unknown key id makes the keys be read again at most this often
    /// (a token naming keys that do not exist must not make us hammer the
    /// provider).
    pub key_refetch_secs: u64,
}

impl std::fmt::Debug for Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Settings")
            .field("name", &self.name)
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &"[redacted]")
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The provider could not be reached, or answered what no provider should.
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
    /// Its answer does not prove who the person is; the reason word.
    #[error("the sign-in was rejected: {0}")]
    Rejected(&'static str),
}

/// Where to send the browser, and what to keep until it comes back.
#[derive(Debug, Clone)]
pub struct Start {
    pub url: String,
    pub state: String,
    pub nonce: String,
    /// The PKCE code verifier (a secret until the code is exchanged).
    pub verifier: String,
}

/// Who the provider says signed in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub subject: String,
    /// Verified by the provider; lower case.
    pub email: String,
}

/// `n` random characters a URL carries as they are (RFC 7636 unreserved).
pub(crate) fn random_token(n: usize) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~";
    let mut rng = rand::rngs::OsRng;
    (0..n).map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())])).collect()
}

/// The S256 code challenge of a verifier (RFC 7636 §4.2).
pub fn code_challenge(verifier: &str) -> String {
    use base64::Engine as _;
    use sha2::Digest as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
}

#[cfg(test)]
mod tests;
