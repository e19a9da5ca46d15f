//! Passwords: Argon2id with the OWASP-recommended parameters, and the policy.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

pub const MIN_LENGTH: usize = 12;
pub const MAX_LENGTH: usize = 256;

static COMMON: &str = include_str!("common_passwords.txt");

/// OWASP Password Storage Cheat Sheet: Argon2id, m = 19 MiB, t = 2, p = 1.
fn argon2() -> Argon2<'static> {
    let params = Params::new(19 * 1024, 2, 1, None).unwrap_or_default();
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// PHC string. CPU-heavy: call from a blocking thread.
pub fn hash(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    argon2().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
}

/// Verifies against a PHC string; a malformed stored hash verifies nothing.
pub fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(h) => argon2().verify_password(password.as_bytes(), &h).is_ok(),
        Err(_) => false,
    }
}

/// A hash of nothing anyone knows, verified when the account does not
/// exist so that the response takes as long as for a real account.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash(&crate::token::random_base62(32)).unwrap_or_default())
}

/// Returns why a password is refused, or `None` when it is acceptable.
pub fn policy_violation(password: &str, email: Option<&str>) -> Option<&'static str> {
    let n = password.chars().count();
    if n < MIN_LENGTH {
        return Some("must be at least 12 characters");
    }
    if n > MAX_LENGTH {
        return Some("must be at most 256 characters");
    }
    let lower = password.to_lowercase();
    if is_common(&lower) {
        return Some("is too common; choose another");
    }
    if let Some(local) = email.and_then(|e| e.split('@').next()).filter(|l| l.len() >= 4) {
        if lower.contains(&local.to_lowercase()) {
            return Some("must not contain your email address");
        }
    }
    if password.chars().all(|c| c == password.chars().next().unwrap_or(' ')) {
        return Some("must not be one repeated character");
    }
    None
}

/// Matches the list exactly, and also the list entries padded with digits
/// or punctuation (`password1234!`), the commonest way to meet a length rule.
fn is_common(lower: &str) -> bool {
    let stripped = lower.trim_end_matches(|c: char| c.is_ascii_digit() || c.is_ascii_punctuation());
    COMMON
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .any(|c| c == lower || (c.len() >= 6 && c == stripped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash("a long enough passphrase").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(verify("a long enough passphrase", &h));
        assert!(!verify("a long enough passphrasE", &h));
        assert!(!verify("x", "not a phc string"));
    }

    #[test]
    fn policy() {
        assert!(policy_violation("short", None).is_some());
        assert!(policy_violation("password1234", None).is_some());
        assert!(policy_violation("Password123456!", None).is_some());
        assert!(policy_violation("qwertyuiopasdf", None).is_some());
        assert!(policy_violation("aaaaaaaaaaaaaaaa", None).is_some());
        assert!(policy_violation("alice-in-wonder-2024", Some("alice@example.com")).is_some());
        assert!(policy_violation("violet tram ocean ninety", None).is_none());
        assert!(policy_violation("Tr0ub4dor&3-extended", None).is_none());
    }

    #[test]
    fn policy_edges() {
        // Length: 12 to 256 characters (not bytes).
        assert_eq!(policy_violation("violet-tram9", None), None);
        assert_eq!(policy_violation("violet-tra9", None), Some("must be at least 12 characters"));
        let max = format!("violet tram {}", "é".repeat(MAX_LENGTH - 12));
        assert_eq!(policy_violation(&max, None), None);
        assert_eq!(policy_violation(&format!("{max}x"), None), Some("must be at most 256 characters"));
        // Short list entries padded with digits are not refused as common;
        // the list's comment lines are not entries.
        assert_eq!(policy_violation("hello1234567!", None), None);
        let comment = COMMON.lines().nth(1).unwrap();
        assert_eq!(comment, comment.to_lowercase());
        assert!(comment.starts_with('#'));
        assert_eq!(policy_violation(comment, None), None);
        assert_eq!(policy_violation("iloveyou2024!", None), Some("is too common; choose another"));
        // The email's local part counts from four characters.
        assert_eq!(policy_violation("bob-in-wonderland", Some("bob@example.com")), None);
        assert_eq!(policy_violation("zzzzzzzzzzzzz", None), Some("must not be one repeated character"));
    }

    #[test]
    fn the_dummy_hash_is_a_real_hash_of_nothing_known() {
        let h = dummy_hash();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        assert!(!verify("", h));
    }
}
