//! Text and JSON input rules (SPEC §6).

use palisade_core::FieldError;
use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

/// NFC-normalizes and removes NUL and control characters. Tab and newline
/// survive (free text needs them); CRLF becomes LF.
pub fn sanitize_text(s: &str) -> String {
    let needs_work = s.chars().any(|c| c.is_control() || !c.is_ascii());
    if !needs_work {
        return s.to_owned();
    }
    // Removed before normalizing: a control character between a letter and
    // a combining mark would otherwise leave the pair uncomposed, and the
    // text would change again when sanitized a second time.
    s.chars().filter(|c| !c.is_control() || *c == '\t' || *c == '\n').nfc().collect()
}

/// For one-line fields (names, emails): no control characters at all, no
/// invisible bidi or zero-width formatting (which can disguise a name in a
/// UI or the audit trail), trimmed.
pub fn sanitize_line(s: &str) -> String {
    // Invisible characters go before normalizing, for the same reason as
    // control characters in `sanitize_text`.
    let visible: String = s.chars().filter(|c| !is_invisible_format(*c)).collect();
    sanitize_text(&visible).replace(['\t', '\n'], " ").trim().to_owned()
}

fn is_invisible_format(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2069}' | '\u{FEFF}' | '\u{061C}')
}

/// Sanitizes every string (keys too) in a JSON document in place and checks
/// the length limit. Errors name the field by JSON pointer.
pub fn sanitize_json(v: &mut Value, max_chars: usize) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    walk(v, &mut String::new(), max_chars, &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

fn walk(v: &mut Value, path: &mut String, max: usize, errors: &mut Vec<FieldError>) {
    match v {
        Value::String(s) => {
            let clean = sanitize_text(s);
            if clean.chars().count() > max {
                errors
                    .push(FieldError { field: field_name(path), message: format!("must be at most {max} characters") });
            }
            *s = clean;
        }
        Value::Array(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                let len = path.len();
                path.push_str(&format!("/{i}"));
                walk(item, path, max, errors);
                path.truncate(len);
            }
        }
        Value::Object(map) => {
            let old = std::mem::take(map);
            for (k, mut item) in old {
                let key = sanitize_line(&k);
                let len = path.len();
                path.push('/');
                path.push_str(&key);
                walk(&mut item, path, max, errors);
                if map.contains_key(&key) {
                    // Two keys that differ only in stripped characters would
                    // let the body mean one thing to a filter and another here.
                    errors.push(FieldError { field: field_name(path), message: "duplicate field".into() });
                }
                path.truncate(len);
                map.insert(key, item);
            }
        }
        _ => {}
    }
}

fn field_name(pointer: &str) -> String {
    let f = pointer.trim_start_matches('/').replace('/', ".");
    if f.is_empty() {
        "body".into()
    } else {
        f
    }
}

/// Maximum nesting depth of a JSON text, found by scanning bytes before any
/// parser recurses on them. Returns `None` past `limit`.
pub fn json_depth_within(bytes: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limit {
                    return false;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    true
}

/// A plausible email address, in the form stored and mailed: see
/// [`crate::email::normalize`].
pub fn normalize_email(s: &str) -> Option<String> {
    crate::email::normalize(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_nfc_and_clean() {
        assert_eq!(sanitize_text("e\u{301}"), "\u{e9}");
        assert_eq!(sanitize_text("a\u{0}b\u{7}c\td\r\ne\u{1b}[31m"), "abc\td\ne[31m");
        assert_eq!(sanitize_line("  a\tb\nc "), "a b c");
        assert_eq!(sanitize_line("ad\u{202E}nimda\u{200B}"), "adnimda");
    }

    // Found by the fuzzer (fuzz/fuzz_targets/text.rs): a character removed
    // between a letter and a combining mark must not leave them apart, or a
    // second sanitization changes the text again.
    #[test]
    fn removal_then_normalization() {
        assert_eq!(sanitize_text("N\u{7}\u{301}"), "\u{143}");
        assert_eq!(sanitize_text("e\r\u{301}"), "\u{e9}");
        assert_eq!(sanitize_line("e\u{200B}\u{301}"), "\u{e9}");
        assert_eq!(sanitize_line("e\u{0}\u{301} "), "\u{e9}");
        for s in ["N\u{7}\u{301}", "e\u{200B}\u{301}", "a\u{0}\u{308}\tb"] {
            assert_eq!(sanitize_text(&sanitize_text(s)), sanitize_text(s));
            assert_eq!(sanitize_line(&sanitize_line(s)), sanitize_line(s));
        }
    }

    #[test]
    fn json_walk_limits_and_cleans() {
        let mut v = serde_json::json!({"name": "x\u{0}y", "tags": ["ok", "z".repeat(10)], "n\u{0}k": 1});
        let errs = sanitize_json(&mut v, 5).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].field, "tags.1");
        assert_eq!(v["name"], "xy");
        assert!(v.get("nk").is_some());
        let mut dup = serde_json::json!({"role": "read_only", "role\u{1}": "owner"});
        assert_eq!(sanitize_json(&mut dup, 100).unwrap_err()[0].message, "duplicate field");
    }

    #[test]
    fn depth_scan() {
        assert!(json_depth_within(br#"{"a":[{"b":1}]}"#, 3));
        assert!(!json_depth_within(br#"{"a":[{"b":1}]}"#, 2));
        assert!(json_depth_within(br#"{"a":"[[[[[[[[["}"#, 1));
        assert!(json_depth_within(br#"{"a":"\"[[[["}"#, 1));
        let deep = "[".repeat(100_000);
        assert!(!json_depth_within(deep.as_bytes(), 32));
    }

    #[test]
    fn emails() {
        assert_eq!(normalize_email(" Alice@Example.COM ").as_deref(), Some("alice@example.com"));
        for bad in ["", "a", "a@b", "@b.c", "a@b@c.d", "a b@c.d", "a@.c", "<a@b.c>"] {
            assert!(normalize_email(bad).is_none(), "{bad}");
        }
    }

    // Found by the fuzzer (fuzz/fuzz_targets/email.rs): the normalized
    // address normalizes to itself.
    #[test]
    fn email_normalization_is_idempotent() {
        let e = normalize_email("\u{130}\u{73e}nfo@example.com").unwrap();
        assert_eq!(e, "i\u{73e}\u{307}nfo@example.com");
        assert_eq!(normalize_email(&e), Some(e));
    }

    /// Each rule alone refuses an address the others would accept.
    #[test]
    fn each_email_rule_bites_alone() {
        let local64 = "a".repeat(64);
        let at_limit = format!("{local64}@{}.example", "b".repeat(254 - 64 - 1 - 8));
        assert_eq!(at_limit.len(), 254);
        for good in ["a@b.c", "a.b+c@d.e", local64.as_str(), at_limit.as_str()] {
            let good = if good.contains('@') { good.to_owned() } else { format!("{good}@b.c") };
            assert_eq!(normalize_email(&good).as_deref(), Some(good.as_str()), "{good}");
        }
        let long = format!("{local64}@{}.example", "b".repeat(254 - 64 - 8));
        let bad = [
            "a<b@c.d",
            "a>b@c.d",
            "a,b@c.d",
            "a;b@c.d",
            "\"a\"@b.c",
            "a\u{a0}b@c.d",
            "a@b.c.",
            "a@.b.c",
            "@b.c",
            "a@b",
            "a@b@c.d",
            &format!("{local64}a@b.c"),
            &long,
        ];
        for bad in bad {
            assert_eq!(normalize_email(bad), None, "{bad}");
        }
    }

    #[test]
    fn text_keeps_what_free_text_needs() {
        // Pure ASCII without controls comes back as is, controls or not elsewhere.
        assert_eq!(sanitize_text("plain text"), "plain text");
        assert_eq!(sanitize_text("\u{0}"), "");
        assert_eq!(sanitize_text("tab\there\nnew\r\nline"), "tab\there\nnew\nline");
        assert_eq!(sanitize_text("caf\u{e9}\u{7f}\u{85}"), "caf\u{e9}");
        // Text without a single ASCII character is normalized too.
        assert_eq!(sanitize_text("\u{435}\u{308}"), "\u{451}");
        // Every C0 control but tab and newline goes; a lone CR too.
        let c0: String = (0u8..0x20).map(char::from).collect();
        assert_eq!(sanitize_text(&c0), "\t\n");
        assert_eq!(sanitize_line("a\rb"), "ab");
        assert_eq!(sanitize_line("\u{FEFF}\u{2066}x\u{2069}\u{061C}"), "x");
    }

    #[test]
    fn json_length_limit_is_inclusive() {
        let mut v = serde_json::json!({"a": "12345", "b": ["e\u{301}bcde"]});
        assert_eq!(sanitize_json(&mut v, 5), Ok(()));
        let mut v = serde_json::json!(["123456"]);
        assert_eq!(sanitize_json(&mut v, 5).unwrap_err()[0].field, "0");
        let mut v = serde_json::json!("123456");
        assert_eq!(sanitize_json(&mut v, 5).unwrap_err()[0].field, "body");
    }

    #[test]
    fn depth_scan_follows_strings_and_closings() {
        // Siblings do not add up: closing brackets lower the depth.
        assert!(json_depth_within(b"[[],[],{},[[]]]", 3));
        assert!(json_depth_within(br#"{"a":{},"b":{},"c":{}}"#, 2));
        assert!(!json_depth_within(b"[[],[[[]]]]", 3));
        // An escaped quote does not end the string; the escape ends after one byte.
        assert!(json_depth_within(br#"["\"[[[["]"#, 1));
        assert!(!json_depth_within(br#"["\"",[[1]]]"#, 2));
        assert!(!json_depth_within(br#"["\\",[[1]]]"#, 2));
        assert!(json_depth_within(br#"["\\\"[[["]"#, 1));
        // Brackets inside a key are text.
        assert!(json_depth_within(br#"{"[[[[":1}"#, 1));
    }
}

/// Parses JSON like `serde_json::from_slice::<Value>`, but refuses an object
/// that repeats a key: serde_json would silently keep the last value, so a
/// filter in front of us and this server could read different bodies.
pub fn parse_json_strict(bytes: &[u8]) -> Result<Value, serde_json::Error> {
    use serde::de::{DeserializeSeed, Deserializer, Error, MapAccess, SeqAccess, Visitor};

    struct Strict;

    impl<'de> DeserializeSeed<'de> for Strict {
        type Value = Value;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Value, D::Error> {
            d.deserialize_any(self)
        }
    }

    impl<'de> Visitor<'de> for Strict {
        type Value = Value;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("JSON")
        }
        fn visit_bool<E: Error>(self, v: bool) -> Result<Value, E> {
            Ok(Value::Bool(v))
        }
        fn visit_i64<E: Error>(self, v: i64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_u64<E: Error>(self, v: u64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_f64<E: Error>(self, v: f64) -> Result<Value, E> {
            Ok(Value::from(v))
        }
        fn visit_str<E: Error>(self, v: &str) -> Result<Value, E> {
            Ok(Value::String(v.to_owned()))
        }
        fn visit_unit<E: Error>(self) -> Result<Value, E> {
            Ok(Value::Null)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut out = Vec::new();
            while let Some(v) = a.next_element_seed(Strict)? {
                out.push(v);
            }
            Ok(Value::Array(out))
        }
        fn visit_map<A: MapAccess<'de>>(self, mut a: A) -> Result<Value, A::Error> {
            let mut out = serde_json::Map::new();
            while let Some(k) = a.next_key::<String>()? {
                if out.contains_key(&k) {
                    return Err(A::Error::custom(format!("duplicate field `{k}`")));
                }
                let v = a.next_value_seed(Strict)?;
                out.insert(k, v);
            }
            Ok(Value::Object(out))
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = Strict.deserialize(&mut de)?;
    de.end()?;
    Ok(v)
}

#[cfg(test)]
mod strict_tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_at_any_depth() {
        assert!(parse_json_strict(br#"{"role":"owner","role":"integration"}"#).is_err());
        assert!(parse_json_strict(br#"{"a":[{"b":1,"b":2}]}"#).is_err());
        let v =
            parse_json_strict(br#"{"a":[1,"x",{"b":null}],"c":true,"d":-1.5,"e":-2,"f":"q\"t","g":false}"#).unwrap();
        assert_eq!(v, serde_json::json!({"a":[1,"x",{"b":null}],"c":true,"d":-1.5,"e":-2,"f":"q\"t","g":false}));
        assert!(parse_json_strict(b"{} trailing").is_err());
    }
}
