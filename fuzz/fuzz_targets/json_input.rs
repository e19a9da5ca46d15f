#![no_main]
//! A JSON request body, through the steps the API runs on it: the depth
//! scan, the strict parser, sanitization, then the content rules.

use libfuzzer_sys::fuzz_target;
use palisade_guard::{input, waf};
use serde_json::Value;

const MAX_DEPTH: usize = 32;
const MAX_CHARS: usize = 64;

fuzz_target!(|data: &[u8]| {
    if !input::json_depth_within(data, MAX_DEPTH) {
        return;
    }
    let Ok(mut value) = input::parse_json_strict(data) else { return };
    // The strict parser only refuses more than serde_json does, and reads
    // what it accepts the same way.
    let lax: Value = serde_json::from_slice(data).expect("strict parse accepted what serde_json refuses");
    assert_eq!(lax, value, "strict parse reads a body differently");
    assert!(depth(&value) <= MAX_DEPTH, "depth scan let a deeper document through");

    let _ = input::sanitize_json(&mut value, MAX_CHARS);
    clean(&value);
    // Sanitizing is a fixed point: a stored body sanitizes to itself, and
    // no two keys collide the second time.
    let mut again = value.clone();
    if let Err(errors) = input::sanitize_json(&mut again, MAX_CHARS) {
        assert!(errors.iter().all(|e| e.message != "duplicate field"), "{errors:?}");
    }
    assert_eq!(again, value, "sanitize_json is not idempotent");

    let _ = waf::scan_json(&value, 3, 3);
});

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(items) => 1 + items.iter().map(depth).max().unwrap_or(0),
        Value::Object(map) => 1 + map.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

// No control characters but tab and newline in values; none in keys.
fn clean(v: &Value) {
    match v {
        Value::String(s) => assert!(s.chars().all(|c| !c.is_control() || c == '\t' || c == '\n'), "{s:?}"),
        Value::Array(items) => items.iter().for_each(clean),
        Value::Object(map) => {
            for (k, item) in map {
                assert!(!k.chars().any(char::is_control), "{k:?}");
                clean(item);
            }
        }
        _ => {}
    }
}
