//! Content rules for free text (SPEC §7): too many links or phone numbers
//! in one field is the shape of spam and phishing, not of a message a
//! business sends.

use serde_json::Value;

/// Which rule a text broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rule {
    Urls,
    PhoneNumbers,
}

impl Rule {
    pub fn as_str(self) -> &'static str {
        match self {
            Rule::Urls => "too_many_urls",
            Rule::PhoneNumbers => "too_many_phone_numbers",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// JSON pointer of the field, e.g. `/body`.
    pub field: String,
    pub rule: Rule,
    pub count: usize,
}

/// Checks every string in a JSON document; the first field over a limit.
pub fn scan_json(v: &Value, max_urls: usize, max_phones: usize) -> Option<Finding> {
    let mut path = String::new();
    walk(v, &mut path, max_urls, max_phones)
}

fn walk(v: &Value, path: &mut String, max_urls: usize, max_phones: usize) -> Option<Finding> {
    match v {
        Value::String(s) => check_text(s, max_urls, max_phones).map(|(rule, count)| Finding {
            field: if path.is_empty() { "/".into() } else { path.clone() },
            rule,
            count,
        }),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
            let len = path.len();
            path.push('/');
            path.push_str(&i.to_string());
            let found = walk(item, path, max_urls, max_phones);
            path.truncate(len);
            found
        }),
        Value::Object(map) => map.iter().find_map(|(k, item)| {
            let len = path.len();
            path.push('/');
            path.push_str(&k.replace('~', "~0").replace('/', "~1"));
            let found = walk(item, path, max_urls, max_phones);
            path.truncate(len);
            found
        }),
        _ => None,
    }
}

/// The rule one text breaks, with its count.
pub fn check_text(s: &str, max_urls: usize, max_phones: usize) -> Option<(Rule, usize)> {
    // Short texts cannot hold more than a few of either.
    if s.len() < 16 {
        return None;
    }
    let urls = count_urls(s);
    if urls > max_urls {
        return Some((Rule::Urls, urls));
    }
    let phones = count_phone_numbers(s);
    (phones > max_phones).then_some((Rule::PhoneNumbers, phones))
}

/// Links: anything with a scheme (`https://`, `hxxp://` alike), `www.`
/// names, and bare host names with an alphabetic top-level label
/// (`bit.ly/x`, `example.com`). Email addresses are not links.
pub fn count_urls(s: &str) -> usize {
    s.split(|c: char| c.is_whitespace() || matches!(c, '<' | '>' | '"' | '\'' | '(' | ')' | '[' | ']' | '{' | '}'))
        .map(|t| t.trim_end_matches(['.', ',', '!', '?', ':', ';']))
        .filter(|t| is_url(t))
        .count()
}

fn is_url(t: &str) -> bool {
    if t.contains("://") {
        return true;
    }
    if t.len() > 4 && t[..4].eq_ignore_ascii_case("www.") {
        return true;
    }
    if t.contains('@') {
        return false;
    }
    let host = t.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return false;
    }
    let tld = labels[labels.len() - 1];
    let tld_ok = (2..=24).contains(&tld.len()) && tld.bytes().all(|b| b.is_ascii_alphabetic());
    tld_ok && labels.iter().all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-'))
}

/// Phone numbers: runs of 7 to 15 digits, optionally starting with `+`,
/// with the separators people type (space, `-`, `.`, `(`, `)`, `/`).
/// ISO dates (`2026-11-23`) are not phone numbers.
pub fn count_phone_numbers(s: &str) -> usize {
    let b = s.as_bytes();
    let mut count = 0;
    let mut i = 0;
    while i < b.len() {
        if !(b[i].is_ascii_digit() || (b[i] == b'+' && b.get(i + 1).is_some_and(u8::is_ascii_digit))) {
            i += 1;
            continue;
        }
        let start = i;
        let mut digits = 0;
        let mut end = i;
        while i < b.len() {
            match b[i] {
                b'0'..=b'9' => {
                    digits += 1;
                    end = i + 1;
                }
                b'+' if i == start => {}
                b' ' | b'-' | b'.' | b'(' | b')' | b'/' => {}
                _ => break,
            }
            i += 1;
        }
        let run = &s[start..end];
        if (7..=15).contains(&digits) && !is_iso_date(run) {
            count += 1;
        }
    }
    count
}

fn is_iso_date(run: &str) -> bool {
    let b = run.as_bytes();
    b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter().enumerate().all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn urls() {
        assert_eq!(count_urls("see https://a.example/x and http://b.example"), 2);
        assert_eq!(count_urls("www.example.com, bit.ly/abc; example.org."), 3);
        assert_eq!(count_urls("mail alice@example.com, e.g. 3.14 i.e. nothing"), 0);
        assert_eq!(count_urls("(https://x.test) [hxxp://y.test]"), 2);
        assert_eq!(count_urls("no links here at all"), 0);
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(count_phone_numbers("call +34 600 123 456 or (555) 123-4567"), 2);
        assert_eq!(count_phone_numbers("+14155550100,+14155550101;+14155550102 +14155550103"), 4);
        assert_eq!(count_phone_numbers("order 12345, on 2026-11-23, room 404"), 0);
        assert_eq!(count_phone_numbers("a card 4111 1111 1111 1111 is not a phone"), 0);
    }

    #[test]
    fn limits_are_strictly_more_than() {
        let five = "a.test b.test c.test d.test e.test";
        assert_eq!(check_text(five, 5, 3), None);
        assert_eq!(check_text(&format!("{five} f.test"), 5, 3), Some((Rule::Urls, 6)));
        let four = "+34600000001 +34600000002 +34600000003 +34600000004";
        assert_eq!(check_text(four, 5, 3), Some((Rule::PhoneNumbers, 4)));
        assert_eq!(check_text("+34600000001 +34600000002 +34600000003", 5, 3), None);
    }

    #[test]
    fn scans_nested_fields() {
        let v = json!({"name": "ok", "meta": {"notes": ["fine", "1.test 2.test 3.test 4.test 5.test 6.test"]}});
        let f = scan_json(&v, 5, 3).unwrap();
        assert_eq!(f.field, "/meta/notes/1");
        assert_eq!(f.rule, Rule::Urls);
        assert_eq!(scan_json(&json!({"a": "b"}), 5, 3), None);
    }
}
