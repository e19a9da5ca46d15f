#![no_main]
//! Free text and one-line fields: normalization, log redaction and the
//! content rules.

use libfuzzer_sys::fuzz_target;
use palisade_guard::input::{sanitize_line, sanitize_text};
use palisade_guard::{redact, waf};
use unicode_normalization::is_nfc;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);

    let text = sanitize_text(&s);
    assert!(is_nfc(&text), "not NFC: {text:?}");
    assert!(text.chars().all(|c| !c.is_control() || c == '\t' || c == '\n'), "{text:?}");
    assert_eq!(sanitize_text(&text), text, "sanitize_text is not idempotent");

    let line = sanitize_line(&s);
    assert!(is_nfc(&line), "not NFC: {line:?}");
    assert!(!line.chars().any(char::is_control), "{line:?}");
    assert!(!line.chars().any(|c| matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')), "{line:?}");
    assert_eq!(line.trim(), line);
    assert_eq!(sanitize_line(&line), line, "sanitize_line is not idempotent");

    let _ = redact::redact(&s);
    let _ = waf::check_text(&s, 3, 3);
});
