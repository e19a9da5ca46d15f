#![no_main]
//! Phone numbers in E.164 form, checked against numbering-plan data.

use libfuzzer_sys::fuzz_target;
use palisade_guard::phone::{is_country, masked, parse_e164};

fuzz_target!(|data: &[u8]| {
    let s = String::from_utf8_lossy(data);
    let _ = is_country(&s);
    let _ = masked(&s);
    let Ok(p) = parse_e164(&s) else { return };
    assert_eq!(p.number, s, "the number is stored as given");
    let digits = &p.number[1..];
    assert!(p.number.starts_with('+') && (8..=15).contains(&digits.len()));
    assert!(digits.bytes().all(|b| b.is_ascii_digit()));
    assert!(is_country(&p.country), "{:?}", p.country);
    assert_eq!(parse_e164(&p.number), Ok(p.clone()));
});
