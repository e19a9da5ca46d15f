//! Masks personal data and secrets in anything that is logged.

use std::borrow::Cow;
use std::sync::OnceLock;

use regex::{Captures, Regex};

fn pattern() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| {
        Regex::new(concat!(
            r"(?P<jwt>eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*)",
            r"|(?P<secret>\b(?:ak|at|mk|rt|et|st|op|mfa)_[A-Za-z0-9_-]{8,})",
            r"|(?P<whsec>\bwhsec_[A-Za-z0-9+/=_-]{8,})",
            r"|(?P<email>[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,})",
            r"|(?P<phone>\+[0-9][0-9 ().-]{6,20}[0-9])",
            r"|(?P<digits>\b[0-9](?:[ -]?[0-9]){11,18}\b)",
        ))
        .unwrap_or_else(|_| Regex::new("$^").unwrap_or_else(|_| unreachable!()))
    })
}

/// Returns `s` with secrets, JWTs, emails, phone numbers and card numbers masked.
pub fn redact(s: &str) -> Cow<'_, str> {
    pattern().replace_all(s, |c: &Captures<'_>| -> String {
        // A digit run inside a decimal (latencies) or standing as a bare
        // JSON number (timestamps) is our own output, not a card typed by
        // someone; masking it would also break the JSON line.
        if let Some(m) = c.name("digits") {
            let before = s[..m.start()].chars().next_back();
            let after = s[m.end()..].chars().next();
            let in_decimal = before == Some('.') || after == Some('.');
            let json_number = matches!(before, Some(':' | ',' | '[')) && matches!(after, Some(',' | '}' | ']') | None);
            if in_decimal || json_number {
                return m.as_str().to_owned();
            }
        }
        if c.name("jwt").is_some() {
            "[jwt]".into()
        } else if let Some(m) = c.name("secret") {
            format!("{}[redacted]", &m.as_str()[..3])
        } else if c.name("whsec").is_some() {
            "whsec_[redacted]".into()
        } else if c.name("email").is_some() {
            "[email]".into()
        } else if let Some(m) = c.name("phone") {
            let digits = m.as_str().bytes().filter(u8::is_ascii_digit).count();
            if (8..=15).contains(&digits) {
                "[phone]".into()
            } else {
                m.as_str().into()
            }
        } else if let Some(m) = c.name("digits") {
            let digits: Vec<u8> = m.as_str().bytes().filter(u8::is_ascii_digit).map(|b| b - b'0').collect();
            if digits.len() >= 13 && luhn(&digits) {
                "[card]".into()
            } else {
                m.as_str().into()
            }
        } else {
            c[0].to_owned()
        }
    })
}

fn luhn(digits: &[u8]) -> bool {
    let sum: u32 = digits
        .iter()
        .rev()
        .enumerate()
        .map(|(i, &d)| {
            let d = u32::from(d);
            if i % 2 == 1 {
                let x = d * 2;
                if x > 9 {
                    x - 9
                } else {
                    x
                }
            } else {
                d
            }
        })
        .sum();
    sum.is_multiple_of(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_everything_sensitive() {
        let line = concat!(
            "user alice.smith+x@example.co.uk key ak_AbCdEfGhIjKlMnOpQrStUvWxYz012345 ",
            "agent at_AbCdEfGhIjKlMnOpQrStUvWxYz012345 master mk_abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG ",
            "hook whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw challenge mfa_Zq8RtY6uIoPlKjHgFdSaQwErTyUiOpAsDfGhJkLzXcV ",
            "jwt eyJhbGciOiJFZERTQSJ9.eyJzdWIiOiJ1In0.c2lnbmF0dXJl ",
            "phone +14155550123 or +34 612 34 56 78 card 4111 1111 1111 1111 and 4111111111111111"
        );
        let out = redact(line);
        for secret in [
            "alice.smith",
            "AbCdEfGh",
            "abcdefghijklmnop",
            "MfKQ9r8",
            "Zq8RtY6u",
            "eyJhbGci",
            "4155550123",
            "612 34",
            "4111",
        ] {
            assert!(!out.contains(secret), "{secret} survived in {out}");
        }
        assert!(out.contains("ak_[redacted]") && out.contains("[card]") && out.contains("[phone]"));
    }

    #[test]
    fn cards_by_the_luhn_check() {
        // Test numbers whose doubled digits pass 9 (Mastercard, Visa, Amex).
        for card in ["5555 5555 5555 4444", "4012 8888 8888 1881", "3782 822463 10005", "6011-1111-1111-1117"] {
            assert_eq!(redact(&format!("card {card} ok")), "card [card] ok", "{card}");
        }
        // One digit off fails the check; twelve digits are too few for a card.
        for not_card in ["5555 5555 5555 4445", "4012 8888 8888 1882", "4111 1111 1119"] {
            let line = format!("card {not_card} ok");
            assert_eq!(redact(&line), line, "{not_card}");
        }
    }

    #[test]
    fn leaves_ordinary_text_alone() {
        let line = r#"{"status":200,"latency_ms":12,"request_id":"0190a5b2-7c3d-7e4f-8a9b-0c1d2e3f4a5b","route":"/v1/api-keys/{id}"}"#;
        assert_eq!(redact(line), line);
        // 16 digits failing Luhn is not a card.
        assert_eq!(redact("order 1234567812345678"), "order 1234567812345678");
        // Our own numbers: long decimals and bare JSON integers survive, and
        // the line stays valid JSON.
        let line = r#"{"latency_ms":22.4111111111111111,"ts":4111111111111111,"v":[4111111111111111]}"#;
        assert_eq!(redact(line), line);
        // A card inside a string is still masked.
        assert_eq!(redact(r#"{"ua":"4111111111111111"}"#), r#"{"ua":"[card]"}"#);
    }
}
