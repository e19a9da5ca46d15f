//! Short one-time codes (six digits) sent to a phone or an address.
//!
//! A million codes are too few for a bare hash: whoever reads the database
//! would try them all. So a code is stored as an HMAC under a server key
//! that the database does not hold, bound to what it proves (the purpose
//! and the subject) so that a code cannot be moved to another row.

use hmac::{Hmac, Mac};
use rand::Rng;
use sha2::Sha256;
use subtle::ConstantTimeEq;

type HmacSha256 = Hmac<Sha256>;

/// The server key for one purpose's codes.
#[derive(Clone)]
pub struct CodeKey([u8; 32]);

impl std::fmt::Debug for CodeKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CodeKey(redacted)")
    }
}

impl CodeKey {
    /// A key of its own for `purpose`, derived from a root secret, so that
    /// the root's other uses never see the same key.
    pub fn derive(root: &[u8; 32], purpose: &str) -> CodeKey {
        let mut mac = HmacSha256::new_from_slice(root).expect("HMAC takes any key length");
        mac.update(b"palisade one-time code key\0");
        mac.update(purpose.as_bytes());
        CodeKey(mac.finalize().into_bytes().into())
    }

    /// A new code, uniform over 000000..=999999.
    pub fn new_code() -> String {
        format!("{:06}", rand::rngs::OsRng.gen_range(0..1_000_000u32))
    }

    /// What is stored for `code` sent to prove `subject`.
    pub fn digest(&self, subject: &str, code: &str) -> String {
        hex::encode(self.mac(subject, code))
    }

    /// Whether `code` is the one stored for `subject`, in constant time.
    pub fn matches(&self, subject: &str, code: &str, stored: &str) -> bool {
        let Ok(stored) = hex::decode(stored) else { return false };
        bool::from(self.mac(subject, code).as_slice().ct_eq(&stored))
    }

    fn mac(&self, subject: &str, code: &str) -> [u8; 32] {
        let mut mac = HmacSha256::new_from_slice(&self.0).expect("HMAC takes any key length");
        // Length-prefixed: no two (subject, code) pairs give one input.
        mac.update(&(subject.len() as u64).to_be_bytes());
        mac.update(subject.as_bytes());
        mac.update(code.trim().as_bytes());
        mac.finalize().into_bytes().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_matches_only_its_subject_key_and_purpose() {
        let key = CodeKey::derive(&[7; 32], "number");
        let code = CodeKey::new_code();
        assert_eq!(code.len(), 6);
        assert!(code.bytes().all(|b| b.is_ascii_digit()));
        let stored = key.digest("identity-a", &code);
        assert!(key.matches("identity-a", &code, &stored));
        assert!(!key.matches("identity-b", &code, &stored));
        let other = if code == "000000" { "000001" } else { "000000" };
        assert!(!key.matches("identity-a", other, &stored));
        assert!(!CodeKey::derive(&[7; 32], "email").matches("identity-a", &code, &stored));
        assert!(!CodeKey::derive(&[8; 32], "number").matches("identity-a", &code, &stored));
        assert!(!key.matches("identity-a", &code, "not hex"));
        assert_eq!(stored.len(), 64);
    }

    #[test]
    fn the_key_never_shows() {
        assert_eq!(format!("{:?}", CodeKey::derive(&[7; 32], "number")), "CodeKey(redacted)");
    }

    #[test]
    fn codes_spread_over_the_whole_range() {
        let codes: std::collections::HashSet<String> = (0..200).map(|_| CodeKey::new_code()).collect();
        assert!(codes.len() > 190);
        assert!(codes.iter().any(|c| c.starts_with('0')) || codes.iter().any(|c| c.starts_with('9')));
    }
}
