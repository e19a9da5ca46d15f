#![no_main]
//! Email normalization: what is accepted is clean, and normalizing it again
//! changes nothing (accounts are looked up by the normalized address).

use libfuzzer_sys::fuzz_target;
use palisade_guard::input::normalize_email;

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let Some(email) = normalize_email(&s) else { return };
    assert!(email.len() <= 254, "{email:?}");
    assert_eq!(email.matches('@').count(), 1, "{email:?}");
    assert!(!email.chars().any(|c| c.is_whitespace() || c.is_control()), "{email:?}");
    assert_eq!(normalize_email(&email).as_deref(), Some(email.as_str()), "normalize_email is not idempotent");
});
