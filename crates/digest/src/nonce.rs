//! Nonces of our own: `base64url(issued_ms ‖ random ‖ mac)`, the MAC keyed
//! with a key every instance shares and bound to the realm and the
//! algorithm of the challenge that carried it. Any instance can check any
//! nonce without shared state; only "each (nonce, nc) once" needs it.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::Algorithm;

const RANDOM: usize = 16;
const TAG: usize = 16;
const LEN: usize = 8 + RANDOM + TAG;
/// What a nonce's MAC is about, so it cannot be taken for another MAC.
const CONTEXT: &[u8] = b"palisade-sip-nonce/v1";
/// How far in the future a nonce's time may lie (instances' clocks differ).
const SKEW_MS: u64 = 5_000;

/// The key nonces are made and checked with. Not `Debug`: it is a secret.
pub struct NonceKey([u8; 32]);

impl NonceKey {
    pub fn new(key: [u8; 32]) -> NonceKey {
        NonceKey(key)
    }

    /// The nonce key derived from a key every instance holds (so a nonce
    /// one instance made, another checks), kept apart from its other uses.
    pub fn derive(root: &[u8; 32]) -> NonceKey {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(root).expect("HMAC takes any key length");
        mac.update(b"palisade sip nonce key\0");
        NonceKey(mac.finalize().into_bytes().into())
    }

    fn tag(&self, issued: &[u8], random: &[u8], realm: &str, algorithm: Algorithm) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(CONTEXT);
        mac.update(issued);
        mac.update(random);
        // The realm's length first: realm and algorithm cannot be shifted
        // into each other.
        mac.update(&(realm.len() as u64).to_be_bytes());
        mac.update(realm.as_bytes());
        mac.update(algorithm.name().as_bytes());
        mac
    }

    /// A fresh nonce for a challenge in `realm` with `algorithm`.
    pub fn mint(&self, realm: &str, algorithm: Algorithm, now_ms: u64) -> String {
        let mut raw = [0u8; LEN];
        raw[..8].copy_from_slice(&now_ms.to_be_bytes());
        rand::Rng::fill(&mut rand::rngs::OsRng, &mut raw[8..8 + RANDOM]);
        let tag = self.tag(&raw[..8], &raw[8..8 + RANDOM], realm, algorithm).finalize().into_bytes();
        raw[8 + RANDOM..].copy_from_slice(&tag[..TAG]);
        URL_SAFE_NO_PAD.encode(raw)
    }

    /// What `nonce` is: ours and alive, ours but older than `ttl_ms`, or not
    /// ours (forged, altered, for another realm or algorithm, or from the
    /// future).
    pub fn check(&self, nonce: &str, realm: &str, algorithm: Algorithm, now_ms: u64, ttl_ms: u64) -> NonceState {
        let mut raw = [0u8; LEN];
        // Exactly LEN bytes: decode_slice refuses longer input, and only
        // canonical 54-character strings decode to 40 bytes.
        if URL_SAFE_NO_PAD.decode_slice(nonce.as_bytes(), &mut raw) != Ok(LEN) {
            return NonceState::Foreign;
        }
        let tag = self.tag(&raw[..8], &raw[8..8 + RANDOM], realm, algorithm);
        if tag.verify_truncated_left(&raw[8 + RANDOM..]).is_err() {
            return NonceState::Foreign;
        }
        let issued = u64::from_be_bytes(raw[..8].try_into().expect("8 bytes"));
        if issued > now_ms.saturating_add(SKEW_MS) {
            return NonceState::Foreign;
        }
        let age = now_ms.saturating_sub(issued);
        if age > ttl_ms.saturating_mul(2) {
            // Long dead: a captured header is worth nothing, not even the
            // news that its password still holds.
            return NonceState::Foreign;
        }
        if age > ttl_ms {
            return NonceState::Stale { issued_ms: issued };
        }
        NonceState::Live { issued_ms: issued }
    }

    /// Until when a use of a nonce issued at `issued_ms` must be
    /// remembered to refuse its replay: its whole life, counted from a
    /// time up to the skew ahead of ours.
    pub fn replay_until_ms(issued_ms: u64, ttl_ms: u64) -> u64 {
        issued_ms.saturating_add(ttl_ms).saturating_add(SKEW_MS)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NonceState {
    Live {
        issued_ms: u64,
    },
    /// Older than its life, younger than twice that.
    Stale {
        issued_ms: u64,
    },
    /// Not ours, or older than twice its life.
    Foreign,
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_765_000_000_000;

    fn key() -> NonceKey {
        NonceKey::new([7u8; 32])
    }

    #[test]
    fn a_nonce_lives_for_its_ttl_then_is_stale() {
        let k = key();
        let n = k.mint("acme.sip.example", Algorithm::Sha256, NOW);
        assert_eq!(n.len(), 54);
        assert_eq!(
            k.check(&n, "acme.sip.example", Algorithm::Sha256, NOW, 300_000),
            NonceState::Live { issued_ms: NOW }
        );
        let at_end = NOW + 300_000;
        assert_eq!(
            k.check(&n, "acme.sip.example", Algorithm::Sha256, at_end, 300_000),
            NonceState::Live { issued_ms: NOW }
        );
        assert_eq!(
            k.check(&n, "acme.sip.example", Algorithm::Sha256, at_end + 1, 300_000),
            NonceState::Stale { issued_ms: NOW }
        );
        let dead = NOW + 600_000;
        assert_eq!(
            k.check(&n, "acme.sip.example", Algorithm::Sha256, dead, 300_000),
            NonceState::Stale { issued_ms: NOW }
        );
        assert_eq!(k.check(&n, "acme.sip.example", Algorithm::Sha256, dead + 1, 300_000), NonceState::Foreign);
        assert_eq!(NonceKey::replay_until_ms(NOW, 300_000), NOW + 300_000 + SKEW_MS);
    }

    #[test]
    fn nonces_differ_each_time() {
        let k = key();
        assert_ne!(k.mint("r", Algorithm::Md5, NOW), k.mint("r", Algorithm::Md5, NOW));
    }

    #[test]
    fn a_nonce_is_bound_to_key_realm_and_algorithm() {
        let k = key();
        let n = k.mint("acme", Algorithm::Sha256, NOW);
        let live = |s| matches!(s, NonceState::Live { .. });
        assert!(live(k.check(&n, "acme", Algorithm::Sha256, NOW, 1000)));
        assert_eq!(NonceKey::new([8u8; 32]).check(&n, "acme", Algorithm::Sha256, NOW, 1000), NonceState::Foreign);
        assert_eq!(k.check(&n, "other", Algorithm::Sha256, NOW, 1000), NonceState::Foreign);
        assert_eq!(k.check(&n, "acme", Algorithm::Md5, NOW, 1000), NonceState::Foreign);
    }

    #[test]
    fn altered_truncated_or_padded_nonces_are_foreign() {
        let k = key();
        let n = k.mint("acme", Algorithm::Md5, NOW);
        for i in 0..n.len() {
            let mut b = n.clone().into_bytes();
            b[i] = if b[i] == b'A' { b'B' } else { b'A' };
            let altered = String::from_utf8(b).unwrap();
            assert_eq!(k.check(&altered, "acme", Algorithm::Md5, NOW, 1000), NonceState::Foreign, "byte {i}");
        }
        for bad in [&n[..n.len() - 1], &format!("{n}A"), &format!("{n}="), "", "not a nonce"] {
            assert_eq!(k.check(bad, "acme", Algorithm::Md5, NOW, 1000), NonceState::Foreign, "{bad}");
        }
    }

    #[test]
    fn a_nonce_from_the_future_is_foreign_beyond_the_skew() {
        let k = key();
        let n = k.mint("acme", Algorithm::Md5, NOW);
        assert!(matches!(k.check(&n, "acme", Algorithm::Md5, NOW - SKEW_MS, 1000), NonceState::Live { .. }));
        assert_eq!(k.check(&n, "acme", Algorithm::Md5, NOW - SKEW_MS - 1, 1000), NonceState::Foreign);
    }
}
