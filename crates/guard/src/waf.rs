//! Content rules for free text (SPEC §7): too many links or phone numbers
//! in one field is the shape of spam and phishing, not of a message a
//! business sends.

use serde_json::Value;
use unicode_normalization::UnicodeNormalization;

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
    // Look-alikes (fullwidth digits and colons, ligatures) fold to ASCII and
    // invisible format characters go, so neither hides a link or a number.
    let folded: String;
    let s = if s.is_ascii() {
        s
    } else {
        folded = s.nfkc().filter(|c| !is_format(*c)).collect();
        &folded
    };
    let urls = count_urls(s);
    if urls > max_urls {
        return Some((Rule::Urls, urls));
    }
    let phones = count_phone_numbers(s);
    (phones > max_phones).then_some((Rule::PhoneNumbers, phones))
}

/// Unicode format characters (category Cf) that render as nothing.
fn is_format(c: char) -> bool {
    matches!(c, '\u{00AD}' | '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{2064}' | '\u{2066}'..='\u{206F}' | '\u{FEFF}')
}

/// Links: every scheme separator (`https://`, `hxxp://` alike), `www.`
/// names, and bare host names with an alphabetic top-level label
/// (`bit.ly/x`, `example.com`). Email addresses are not links.
pub fn count_urls(s: &str) -> usize {
    s.split(|c: char| {
        c.is_whitespace()
            || matches!(
                c,
                '<' | '>' | '"' | '\'' | '(' | ')' | '[' | ']' | '{' | '}' | ',' | ';' | '|' | '\\' | '^' | '`'
            )
    })
    .map(|t| t.trim_end_matches(['.', '!', '?', ':']))
    .map(url_count)
    .sum()
}

fn url_count(t: &str) -> usize {
    let schemes = t.matches("://").count();
    if schemes > 0 {
        return schemes;
    }
    // Tokens end in no dot, so a name follows `www.`.
    if t.as_bytes().get(..4).is_some_and(|p| p.eq_ignore_ascii_case(b"www.")) {
        return 1;
    }
    if t.contains('@') {
        return 0;
    }
    let host = t.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.split(':').next().unwrap_or("");
    let labels: Vec<&str> = host.split('.').collect();
    if labels.len() < 2 {
        return 0;
    }
    let tld = labels[labels.len() - 1];
    let tld_ok = (2..=24).contains(&tld.len()) && tld.bytes().all(|b| b.is_ascii_alphabetic());
    usize::from(tld_ok && labels.iter().all(|l| !l.is_empty() && l.chars().all(|c| c.is_alphanumeric() || c == '-')))
}

/// Phone numbers: runs of 7 to 15 digits, optionally starting with `+`,
/// with the separators people type (space, `-`, `.`, `(`, `)`, `/`).
/// Numbers written one after another with only such separators between
/// them make one long run; a run of more than 15 digits with separators
/// counts one number per 10 digits. ISO dates (`2026-11-23`) and long
/// digit strings without separators (ids, card numbers typed plain) are
/// not phone numbers.
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
        let (mut digits, mut separators, mut pending) = (0, 0, false);
        let mut end = i;
        while i < b.len() {
            match b[i] {
                b'0'..=b'9' => {
                    digits += 1;
                    end = i + 1;
                    // Only separators between digits count.
                    separators += usize::from(pending);
                    pending = false;
                }
                b'+' if i == start => {}
                b' ' | b'-' | b'.' | b'(' | b')' | b'/' => pending = true,
                // Anything else ends the run; a later `+` too (`+34… +34…`:
                // a new number starts there).
                _ => break,
            }
            i += 1;
        }
        let run = &s[start..end];
        if (7..=15).contains(&digits) && !is_iso_date(run) {
            count += 1;
        } else if digits >= 16 && separators > 0 {
            count += digits / 10;
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
        assert_eq!(count_urls("https://a.x,https://b.x,https://c.x"), 3);
        assert_eq!(count_urls("a.test|b.test|c.test"), 3);
        assert_eq!(count_urls("https://a.x/https://b.x"), 2);
    }

    #[test]
    fn phone_numbers() {
        assert_eq!(count_phone_numbers("call +34 600 123 456 or (555) 123-4567"), 2);
        assert_eq!(count_phone_numbers("+14155550100,+14155550101;+14155550102 +14155550103"), 4);
        assert_eq!(count_phone_numbers("order 12345, on 2026-11-23, room 404"), 0);
        assert_eq!(count_phone_numbers("a card 4111111111111111 is not a phone"), 0);
        // Numbers run together with only separators between them.
        assert_eq!(count_phone_numbers("555-123-4567 555-123-4568 555-123-4569 555-123-4560"), 4);
        assert_eq!(count_phone_numbers("+34600000001 +34600000002"), 2);
    }

    #[test]
    fn url_shapes() {
        // `www.` names count whatever their top-level label.
        assert_eq!(count_urls("visit www.shop24 now"), 1);
        // Empty labels, or characters no host name has, are not hosts.
        assert_eq!(count_urls("a..test a_b.test .test x.t3st"), 0);
        assert_eq!(count_urls("a-b.test A1.Test"), 2);
    }

    #[test]
    fn phone_number_shapes() {
        // A `+` starts a new number even with a space before it.
        assert_eq!(count_phone_numbers("+4930123 +4930124"), 2);
        // Ten digits in a row are a number, however they are split.
        assert_eq!(count_phone_numbers("call 5551234567"), 1);
        assert_eq!(count_phone_numbers("call 5551234-567"), 1);
        // A date is not a number, but a date after a `+` is.
        assert_eq!(count_phone_numbers("on 2026-11-23"), 0);
        assert_eq!(count_phone_numbers("on +2026-11-23"), 1);
        // A run of 16 digits with a separator is more than one number.
        assert_eq!(count_phone_numbers("1234567890 123456"), 1);
        assert_eq!(count_phone_numbers("12345678901 234567890"), 2);
    }

    #[test]
    fn rules_and_short_texts() {
        assert_eq!(Rule::Urls.as_str(), "too_many_urls");
        assert_eq!(Rule::PhoneNumbers.as_str(), "too_many_phone_numbers");
        // Under 16 bytes nothing is counted; from 16 on it is.
        assert_eq!(check_text("a.b c.d e.f", 0, 0), None);
        assert_eq!(check_text("a.bc d.ef g.hi j", 2, 3), Some((Rule::Urls, 3)));
        // A soft hyphen or a zero-width space inside a name hides nothing.
        let hidden = "a\u{AD}.test b\u{200B}.test c\u{2060}.test d\u{FEFF}.test e\u{200D}.test f\u{61C}.test";
        assert_eq!(check_text(hidden, 5, 3), Some((Rule::Urls, 6)));
        assert_eq!(scan_json(&json!("1.test 2.test 3.test 4.test 5.test 6.test"), 5, 3).unwrap().field, "/");
        let v = json!({"a/b~c": "1.test 2.test 3.test 4.test 5.test 6.test"});
        assert_eq!(scan_json(&v, 5, 3).unwrap().field, "/a~1b~0c");
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
    fn non_ascii_text_is_scanned_without_panicking() {
        assert_eq!(check_text("Le café de Paris, où l'on dîne", 5, 3), None);
        assert_eq!(check_text("wwwé.example.com and ünïcödé everywhere", 5, 3), None);
        // Zero-width characters and fullwidth forms do not hide anything.
        let hidden = "h\u{200B}ttps://a.x h\u{200B}ttps://b.x https://c.x https://d.x https://e.x https://f.x";
        assert_eq!(check_text(hidden, 5, 3), Some((Rule::Urls, 6)));
        let fullwidth = "＋３４６００００００００１ ＋３４６００００００００２ ＋３４６００００００００３ ＋３４６００００００００４";
        assert_eq!(check_text(fullwidth, 5, 3), Some((Rule::PhoneNumbers, 4)));
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
