//! Second factors: TOTP (RFC 6238 with SHA-1, 6 digits and 30-second steps,
//! what every authenticator app speaks) and one-time recovery codes.

use rand::Rng;
use subtle::ConstantTimeEq;

/// Seconds per TOTP step.
pub const STEP_SECS: u64 = 30;
/// Bytes of a new TOTP secret: 160 bits, the HMAC-SHA-1 block RFC 4226 recommends.
pub const SECRET_BYTES: usize = 20;
/// Recovery codes issued at once.
pub const RECOVERY_CODES: usize = 10;

/// One person's TOTP generator.
pub struct Totp(totp_rs::TOTP);

impl Totp {
    /// A new random secret.
    pub fn new_secret() -> Vec<u8> {
        let mut s = vec![0u8; SECRET_BYTES];
        rand::rngs::OsRng.fill(&mut s[..]);
        s
    }

    /// The generator of `secret`, labelled `issuer:account` for the app.
    /// `None` if the secret is shorter than 128 bits.
    pub fn new(secret: Vec<u8>, issuer: &str, account: &str) -> Option<Totp> {
        // The label's separator may not appear in either part.
        let (issuer, account) = (issuer.replace(':', "_"), account.replace(':', "_"));
        totp_rs::TOTP::new(totp_rs::Algorithm::SHA1, 6, 1, STEP_SECS, secret, Some(issuer), account).ok().map(Totp)
    }

    /// The `otpauth://totp/…` URI an app reads (as text or a QR code).
    pub fn uri(&self) -> String {
        self.0.get_url()
    }

    /// The secret as the base 32 text an app accepts when typed.
    pub fn secret_base32(&self) -> String {
        self.0.get_secret_base32()
    }

    /// The code of the step holding `unix_secs`.
    pub fn code_at(&self, unix_secs: u64) -> String {
        self.0.generate(unix_secs)
    }

    /// The step whose code `code` is, among the step at `unix_secs`, the
    /// one before and the one after (clocks drift); the latest if several.
    /// All three are compared, in constant time, whatever matches.
    pub fn step_of(&self, code: &str, unix_secs: u64) -> Option<u64> {
        // Anything but the six digits of a step matches none of them.
        let code = code.trim();
        let now = unix_secs / STEP_SECS;
        let mut found = None;
        for step in now.saturating_sub(1)..=now + 1 {
            let expected = self.0.generate(step * STEP_SECS);
            if bool::from(expected.as_bytes().ct_eq(code.as_bytes())) {
                found = Some(step);
            }
        }
        found
    }
}

/// Crockford's base 32: no i, l, o or u to take for 1, 0 or v.
const ALPHABET: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// New recovery codes, `xxxx-xxxx-xxxx` each (60 random bits).
pub fn new_recovery_codes() -> Vec<String> {
    let mut rng = rand::rngs::OsRng;
    (0..RECOVERY_CODES)
        .map(|_| {
            let chars: String = (0..12).map(|_| char::from(ALPHABET[rng.gen_range(0..32)])).collect();
            format!("{}-{}-{}", &chars[..4], &chars[4..8], &chars[8..])
        })
        .collect()
}

/// A recovery code as typed, in the form it is hashed: dashes and spaces
/// dropped, lower case. `None` if it cannot be one.
pub fn normalize_recovery_code(typed: &str) -> Option<String> {
    let s: String = typed.chars().filter(|c| *c != '-' && !c.is_whitespace()).flat_map(char::to_lowercase).collect();
    (s.len() == 12 && s.bytes().all(|b| ALPHABET.contains(&b))).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 6238 appendix B, SHA-1 (its 8-digit values end in these 6).
    #[test]
    fn rfc_6238_vectors() {
        let t = Totp::new(b"12345678901234567890".to_vec(), "Palisade", "a@example.com").unwrap();
        for (secs, code) in
            [(59, "287082"), (1_111_111_109, "081804"), (1_234_567_890, "005924"), (2_000_000_000, "279037")]
        {
            assert_eq!(t.code_at(secs), code);
        }
    }

    #[test]
    fn a_code_matches_its_step_and_its_neighbours_only() {
        let t = Totp::new(Totp::new_secret(), "Palisade", "a@example.com").unwrap();
        let now = 1_800_000_015;
        let step = now / STEP_SECS;
        let code = t.code_at(now);
        assert_eq!(t.step_of(&code, now), Some(step));
        assert_eq!(t.step_of(&format!(" {code} "), now), Some(step));
        // Accepted one step early or late, not two.
        assert_eq!(t.step_of(&code, now + STEP_SECS), Some(step));
        assert_eq!(t.step_of(&code, now - STEP_SECS), Some(step));
        assert_eq!(t.step_of(&code, now + 2 * STEP_SECS), None);
        assert_eq!(t.step_of(&code, now - 2 * STEP_SECS), None);
        for bad in ["", "12345", "1234567", "12a456", "１２３４５６"] {
            assert_eq!(t.step_of(bad, now), None, "{bad}");
        }
    }

    #[test]
    fn new_secrets_are_random_and_long_enough() {
        let (a, b) = (Totp::new_secret(), Totp::new_secret());
        assert_eq!((a.len(), b.len()), (SECRET_BYTES, SECRET_BYTES));
        assert_ne!(a, b);
        assert!(a.iter().any(|x| *x != 0));
        assert!(Totp::new(a, "Palisade", "a@example.com").is_some());
    }

    #[test]
    fn short_secrets_are_refused_and_labels_are_safe() {
        assert!(Totp::new(vec![0; 15], "Palisade", "a@example.com").is_none());
        let t = Totp::new(b"12345678901234567890".to_vec(), "Pali:sade", "a:b@example.com").unwrap();
        let uri = t.uri();
        assert!(
            uri.starts_with("otpauth://totp/Pali_sade:a_b%40example.com?secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ"),
            "{uri}"
        );
        assert!(uri.contains("issuer=Pali_sade"), "{uri}");
        assert_eq!(t.secret_base32(), "GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ");
    }

    #[test]
    fn recovery_codes_are_distinct_and_normalize() {
        let codes = new_recovery_codes();
        assert_eq!(codes.len(), RECOVERY_CODES);
        let set: std::collections::HashSet<_> = codes.iter().collect();
        assert_eq!(set.len(), RECOVERY_CODES);
        for c in &codes {
            assert_eq!(c.len(), 14);
            let n = normalize_recovery_code(c).unwrap();
            assert_eq!(normalize_recovery_code(&c.to_uppercase().replace('-', " ")), Some(n.clone()));
            assert_eq!(n.len(), 12);
        }
        assert_eq!(normalize_recovery_code("abcd-efgh-jkm"), None);
        assert_eq!(normalize_recovery_code("abcd-efgh-jkmi"), None, "i is not in the alphabet");
        assert_eq!(normalize_recovery_code("abcd-efgh-jkmnp"), None);
    }
}
