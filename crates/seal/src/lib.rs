//! Secrets encrypted at rest with AES-256-GCM (webhook endpoint secrets,
//! SIP digest keys).
//!
//! A sealed blob is `version (1) || nonce (12 bytes, random) || ciphertext
//! and tag`. The caller's AAD (for a webhook `"{tenant_id}/{endpoint_id}"`)
//! binds the blob to its row: copied to another row, it no longer opens.
//!
//! [`envelope`] builds tenants' data keys and their key-encryption key on it.

pub mod envelope;

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::rngs::OsRng;
use rand::RngCore;

const VERSION: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SealError {
    #[error("sealed secret of unknown format version {0}")]
    UnknownVersion(u8),
    #[error("sealed secret is truncated")]
    TooShort,
    /// Wrong key, wrong AAD or altered bytes: GCM cannot tell them apart.
    #[error("sealed secret does not open with this key for this row")]
    Rejected,
}

pub struct Sealer(Aes256Gcm);

impl Sealer {
    pub fn new(key: &[u8; 32]) -> Sealer {
        Sealer(Aes256Gcm::new(key.into()))
    }

    pub fn seal(&self, plaintext: &[u8], aad: &[u8]) -> Vec<u8> {
        // Random 96-bit nonces: safe for far more secrets than any
        // deployment will seal under one key (the 2^32 bound).
        let mut nonce = [0u8; NONCE_LEN];
        OsRng.fill_bytes(&mut nonce);
        let sealed = self
            .0
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plaintext, aad })
            .expect("AES-GCM only fails on inputs over 64 GiB");
        let mut out = Vec::with_capacity(1 + NONCE_LEN + sealed.len());
        out.push(VERSION);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    pub fn open(&self, blob: &[u8], aad: &[u8]) -> Result<Vec<u8>, SealError> {
        let (&version, rest) = blob.split_first().ok_or(SealError::TooShort)?;
        if version != VERSION {
            return Err(SealError::UnknownVersion(version));
        }
        if rest.len() < NONCE_LEN + TAG_LEN {
            return Err(SealError::TooShort);
        }
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        self.0.decrypt(Nonce::from_slice(nonce), Payload { msg: sealed, aad }).map_err(|_| SealError::Rejected)
    }
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer(redacted)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: [u8; 32] = [7; 32];
    const AAD: &[u8] = b"tenant-a/endpoint-1";

    #[test]
    fn round_trip_and_layout() {
        let s = Sealer::new(&KEY);
        let blob = s.seal(b"whsec_secret", AAD);
        assert_eq!(blob[0], 1);
        assert_eq!(blob.len(), 1 + 12 + b"whsec_secret".len() + 16);
        assert_eq!(s.open(&blob, AAD).unwrap(), b"whsec_secret");
        assert_eq!(s.open(&s.seal(b"", AAD), AAD).unwrap(), b"");
    }

    #[test]
    fn same_plaintext_seals_differently() {
        let s = Sealer::new(&KEY);
        let (a, b) = (s.seal(b"same", AAD), s.seal(b"same", AAD));
        assert_ne!(a, b);
        assert_ne!(a[1..13], b[1..13], "fresh nonce each time");
    }

    #[test]
    fn refuses_wrong_key_aad_version_and_short_or_altered_blobs() {
        let s = Sealer::new(&KEY);
        let blob = s.seal(b"whsec_secret", AAD);
        assert_eq!(Sealer::new(&[8; 32]).open(&blob, AAD), Err(SealError::Rejected));
        assert_eq!(s.open(&blob, b"tenant-a/endpoint-2"), Err(SealError::Rejected));
        assert_eq!(s.open(&blob, b"tenant-b/endpoint-1"), Err(SealError::Rejected));
        assert_eq!(s.open(&blob, b""), Err(SealError::Rejected));

        let mut other_version = blob.clone();
        other_version[0] = 2;
        assert_eq!(s.open(&other_version, AAD), Err(SealError::UnknownVersion(2)));

        assert_eq!(s.open(&[], AAD), Err(SealError::TooShort));
        assert_eq!(s.open(&[1], AAD), Err(SealError::TooShort));
        assert_eq!(s.open(&blob[..1 + 12 + 15], AAD), Err(SealError::TooShort));
        assert_eq!(s.open(&blob[..blob.len() - 1], AAD), Err(SealError::Rejected));

        for i in 1..blob.len() {
            let mut altered = blob.clone();
            altered[i] ^= 0x01;
            assert_eq!(s.open(&altered, AAD), Err(SealError::Rejected), "byte {i}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        assert_eq!(format!("{:?}", Sealer::new(&KEY)), "Sealer(redacted)");
    }
}
