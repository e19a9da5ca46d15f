//! Opaque secrets: `ak_`, `at_`, `mk_`, refresh and email tokens, stream tickets.

use rand::rngs::OsRng;
use rand::Rng;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

const BASE62: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

pub const API_KEY_PREFIX: &str = "ak_";
pub const AGENT_TOKEN_PREFIX: &str = "at_";
pub const MASTER_KEY_PREFIX: &str = "mk_";
pub const REFRESH_PREFIX: &str = "rt_";
pub const EMAIL_TOKEN_PREFIX: &str = "et_";
pub const STREAM_TICKET_PREFIX: &str = "st_";
pub const MFA_TOKEN_PREFIX: &str = "mfa_";
pub const OPERATOR_TOKEN_PREFIX: &str = "op_";

/// `n` random base62 characters from the OS CSPRNG (rejection-free: 62
/// values are drawn uniformly by `gen_range`).
pub fn random_base62(n: usize) -> String {
    let mut rng = OsRng;
    (0..n).map(|_| BASE62[rng.gen_range(0..BASE62.len())] as char).collect()
}

pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_base62(32))
}

pub fn new_master_key() -> String {
    format!("{MASTER_KEY_PREFIX}{}", random_base62(43))
}

pub fn new_refresh_token() -> String {
    format!("{REFRESH_PREFIX}{}", random_base62(43))
}

pub fn new_email_token() -> String {
    format!("{EMAIL_TOKEN_PREFIX}{}", random_base62(43))
}

/// An operator's session on `/sysadmin`.
pub fn new_operator_token() -> String {
    format!("{OPERATOR_TOKEN_PREFIX}{}", random_base62(43))
}

/// Names a sign-in waiting for its second factor.
pub fn new_mfa_token() -> String {
    format!("{MFA_TOKEN_PREFIX}{}", random_base62(43))
}

pub fn new_stream_ticket() -> String {
    format!("{STREAM_TICKET_PREFIX}{}", random_base62(43))
}

/// Lower-case hex SHA-256, the at-rest form of every high-entropy token.
pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

pub fn sha256_hex_bytes(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

pub fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

/// Constant-time equality (length differences return false without early exit on content).
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.ct_eq(b).into()
}

/// Whether `s` is `prefix` followed by exactly `len` base62 characters.
pub fn has_shape(s: &str, prefix: &str, len: usize) -> bool {
    s.strip_prefix(prefix).is_some_and(|rest| rest.len() == len && rest.bytes().all(|b| b.is_ascii_alphanumeric()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_shapes() {
        let k = new_api_key();
        assert!(has_shape(&k, "ak_", 32), "{k}");
        assert_ne!(k, new_api_key());
        let m = new_master_key();
        assert!(m.starts_with("mk_") && m.len() == 46);
    }

    #[test]
    fn every_token_has_its_prefix_and_length() {
        for (t, prefix, len) in [
            (new_api_key(), API_KEY_PREFIX, 32),
            (new_master_key(), MASTER_KEY_PREFIX, 43),
            (new_refresh_token(), REFRESH_PREFIX, 43),
            (new_email_token(), EMAIL_TOKEN_PREFIX, 43),
            (new_stream_ticket(), STREAM_TICKET_PREFIX, 43),
            (new_mfa_token(), MFA_TOKEN_PREFIX, 43),
            (new_operator_token(), OPERATOR_TOKEN_PREFIX, 43),
        ] {
            assert!(has_shape(&t, prefix, len), "{t}");
        }
        assert_ne!(new_refresh_token(), new_refresh_token());
        assert_ne!(new_email_token(), new_email_token());
        assert_ne!(new_stream_ticket(), new_stream_ticket());
        assert_ne!(new_mfa_token(), new_mfa_token());
        assert_ne!(new_operator_token(), new_operator_token());
        assert_eq!(random_base62(0), "");
    }

    #[test]
    fn hashing_and_comparison() {
        assert_eq!(sha256_hex_bytes(b"abc"), sha256_hex("abc"));
        assert_eq!(hex::encode(sha256("abc")), sha256_hex("abc"));
        assert_eq!(sha256_hex("abc"), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert!(ct_eq(b"abc", b"abc"));
        assert!(!ct_eq(b"abc", b"abd"));
        assert!(!ct_eq(b"abc", b"ab"));
    }
}
