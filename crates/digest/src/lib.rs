//! Digest authentication for SIP (RFC 3261 §22, RFC 7616, RFC 8760):
//! SHA-256 and MD5, `qop=auth` only, nonces of our own ([`nonce`]). Pure
//! (no I/O), so that the registrar, the calls and the credential store
//! share one rule.
//!
//! What a stored credential keeps is HA1 = H(username:realm:password) per
//! algorithm, never the password. Whether an `(nonce, nc)` pair was seen
//! before needs state every instance shares, so it is the caller's: a
//! response is [`Verdict::Accepted`] here, and then consumed once there.

pub mod header;
pub mod nonce;

use md5::Md5;
use sha2::Sha256;
use subtle::ConstantTimeEq;

pub use header::{parse, Credentials, HeaderError};
pub use nonce::{NonceKey, NonceState};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    Sha256,
    Md5,
}

impl Algorithm {
    /// The name in challenges and responses.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "SHA-256",
            Algorithm::Md5 => "MD5",
        }
    }

    /// `MD5` or `SHA-256`, in any case; nothing else (no `-sess`).
    pub fn parse(s: &str) -> Option<Algorithm> {
        [Algorithm::Sha256, Algorithm::Md5].into_iter().find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// Hex digits of a hash.
    pub fn hex_len(self) -> usize {
        match self {
            Algorithm::Sha256 => 64,
            Algorithm::Md5 => 32,
        }
    }

    /// Lowercase hex of H(parts joined by `:`).
    fn hash(self, parts: &[&[u8]]) -> String {
        fn run<D: sha2::Digest>(parts: &[&[u8]]) -> String {
            let mut d = D::new();
            for (i, p) in parts.iter().enumerate() {
                if i > 0 {
                    d.update(b":");
                }
                d.update(p);
            }
            hex::encode(d.finalize())
        }
        match self {
            Algorithm::Sha256 => run::<Sha256>(parts),
            Algorithm::Md5 => run::<Md5>(parts),
        }
    }
}

/// HA1 = H(username:realm:password), what a SIP credential stores.
pub fn ha1(algorithm: Algorithm, username: &str, realm: &str, password: &str) -> String {
    algorithm.hash(&[username.as_bytes(), realm.as_bytes(), password.as_bytes()])
}

/// The response a client that knows HA1 sends for `method` (`qop=auth`).
pub fn response(algorithm: Algorithm, ha1: &str, c: &Credentials, method: &str) -> String {
    let ha2 = algorithm.hash(&[method.as_bytes(), c.uri.as_bytes()]);
    algorithm.hash(&[ha1.as_bytes(), c.nonce.as_bytes(), c.nc.as_bytes(), c.cnonce.as_bytes(), b"auth", ha2.as_bytes()])
}

/// A quoted-string's content: `"` and `\` escaped.
fn quote(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A realm's digest settings: the key its nonces are made with, the
/// algorithms it offers (the preferred first) and how long a nonce lives.
pub struct Realm<'a> {
    key: &'a NonceKey,
    name: &'a str,
    offered: &'a [Algorithm],
    nonce_ttl_ms: u64,
}

impl<'a> Realm<'a> {
    /// `None` for a name that is empty or holds a control character (it
    /// goes into a header as a quoted string, where CR or LF would end the
    /// header), or when no algorithm is offered.
    pub fn new(key: &'a NonceKey, name: &'a str, offered: &'a [Algorithm], nonce_ttl_ms: u64) -> Option<Realm<'a>> {
        let ok = !name.is_empty() && !name.chars().any(char::is_control) && !offered.is_empty();
        ok.then_some(Realm { key, name, offered, nonce_ttl_ms })
    }

    /// The challenge header values (`WWW-Authenticate` in a 401,
    /// `Proxy-Authenticate` in a 407), one per algorithm offered, the
    /// preferred first (RFC 8760 §2.4), each with a fresh nonce.
    pub fn challenges(&self, stale: bool, now_ms: u64) -> Vec<String> {
        self.offered
            .iter()
            .map(|&algorithm| {
                let nonce = self.key.mint(self.name, algorithm, now_ms);
                let mut h = format!(
                    "Digest realm=\"{}\", nonce=\"{nonce}\", algorithm={}, qop=\"auth\"",
                    quote(self.name),
                    algorithm.name()
                );
                if stale {
                    h.push_str(", stale=true");
                }
                h
            })
            .collect()
    }

    /// Checks a response to `method`, for a user whose HA1 for the
    /// response's algorithm is `ha1` (`None`: no such user, or no HA1 for
    /// that algorithm; the same hashing is done, so timing does not tell
    /// which).
    pub fn verify(&self, c: &Credentials, method: &str, ha1: Option<&str>, now_ms: u64) -> Verdict {
        if c.realm != self.name {
            return Verdict::Refused(Refusal::Realm);
        }
        if !self.offered.contains(&c.algorithm) {
            return Verdict::Refused(Refusal::Algorithm);
        }
        let state = self.key.check(&c.nonce, self.name, c.algorithm, now_ms, self.nonce_ttl_ms);
        if state == NonceState::Foreign {
            return Verdict::Refused(Refusal::Nonce);
        }
        let unknown = "0".repeat(c.algorithm.hex_len());
        let expected = response(c.algorithm, ha1.unwrap_or(&unknown), c, method);
        let matches: bool = expected.as_bytes().ct_eq(c.response.as_bytes()).into();
        if !matches || ha1.is_none() {
            return Verdict::Refused(Refusal::Response);
        }
        match state {
            NonceState::Live { issued_ms } => {
                Verdict::Accepted { replay_until_ms: NonceKey::replay_until_ms(issued_ms, self.nonce_ttl_ms) }
            }
            _ => Verdict::Stale,
        }
    }
}

/// What a response proves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use = "an accepted response still has to be consumed once"]
pub enum Verdict {
    /// The password is right and the nonce ours and alive. Not yet a
    /// login: the caller accepts each `(nonce, nc)` only once, remembered
    /// (on every instance) until `replay_until_ms`.
    Accepted { replay_until_ms: u64 },
    /// The password is right but the nonce has expired: challenge again
    /// with `stale=true`. Not a failed attempt (RFC 7616 §3.3).
    Stale,
    /// A failed attempt.
    Refused(Refusal),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// For another realm than the one asked about.
    Realm,
    /// An algorithm not offered. (A user with no HA1 for the algorithm is
    /// refused as [`Refusal::Response`], like an unknown one.)
    Algorithm,
    /// A nonce we did not make (forged, altered, for another realm or
    /// algorithm).
    Nonce,
    /// The response does not match: a wrong password (or user).
    Response,
}

#[cfg(test)]
mod tests;
