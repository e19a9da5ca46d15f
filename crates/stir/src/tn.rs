//! Telephone numbers as PASSporTs carry them (RFC 8224 §8.3: digits only,
//! no `+`), and the TNAuthList certificate extension (RFC 8226) saying
//! which numbers a certificate may sign for.

use x509_cert::der::asn1::Ia5StringRef;
use x509_cert::der::{Any, Decode, Tag, Tagged};

/// The TNAuthList extension's OID (id-pe-TNAuthList).
pub const TN_AUTH_LIST_OID: &str = "1.3.6.1.5.5.7.1.26";

/// The canonical form of a number: visual separators and a leading `+`
/// dropped, 1 to 15 digits left; none otherwise.
pub fn canonical(number: &str) -> Option<String> {
    let n = number.strip_prefix('+').unwrap_or(number);
    let digits: String = n.chars().filter(|c| !matches!(c, '-' | '.' | '(' | ')' | ' ')).collect();
    let ok = (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
    ok.then_some(digits)
}

/// What a certificate covers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TnAuthList {
    /// Service provider codes (SHAKEN's carrier certificates).
    pub spcs: Vec<String>,
    /// Single numbers.
    pub ones: Vec<String>,
    /// Ranges: the first number and how many follow it, itself included.
    pub ranges: Vec<(String, u64)>,
}

impl TnAuthList {
    /// Whether the certificate may sign for `tn` (canonical): a number or a
    /// range that holds it, or a service provider code. An SPC certificate
    /// is the carrier's own (ATIS-1000080): it covers every number the
    /// carrier attests to, and the attestation says how far it vouches.
    pub fn covers(&self, tn: &str) -> bool {
        if !self.spcs.is_empty() || self.ones.iter().any(|one| one == tn) {
            return true;
        }
        let Ok(n) = tn.parse::<u64>() else { return false };
        self.ranges.iter().any(|(start, count)| {
            start.len() == tn.len() && start.parse::<u64>().is_ok_and(|s| n >= s && n - s < *count)
        })
    }

    /// The extension's value (DER): `SEQUENCE OF TNEntry`, each entry an
    /// EXPLICIT `[0]` SPC, `[1]` range or `[2]` number; none if it does
    /// not read so.
    pub fn from_der(der: &[u8]) -> Option<TnAuthList> {
        let entries = Vec::<Any>::from_der(der).ok()?;
        if entries.is_empty() {
            return None;
        }
        let mut list = TnAuthList::default();
        for entry in entries {
            let Tag::ContextSpecific { constructed: true, number } = entry.tag() else { return None };
            let inner = entry.value();
            match number.value() {
                0 => list.spcs.push(ia5(Any::from_der(inner).ok()?)?),
                1 => {
                    let parts = Vec::<Any>::from_der(inner).ok()?;
                    let [start, count, ..] = parts.as_slice() else { return None };
                    let start = tn_of(ia5(start.clone())?)?;
                    let count: u64 = count.decode_as().ok()?;
                    if count < 2 {
                        return None;
                    }
                    list.ranges.push((start, count));
                }
                2 => list.ones.push(tn_of(ia5(Any::from_der(inner).ok()?)?)?),
                _ => return None,
            }
        }
        Some(list)
    }
}

fn ia5(any: Any) -> Option<String> {
    any.decode_as::<Ia5StringRef<'_>>().ok().map(|s| s.as_str().to_owned())
}

/// A TelephoneNumber: 1 to 15 of `0-9`, `#`, `*`.
fn tn_of(s: String) -> Option<String> {
    let ok = (1..=15).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || b == b'#' || b == b'*');
    ok.then_some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_digits_only() {
        assert_eq!(canonical("+1 (215) 555-1212").as_deref(), Some("12155551212"));
        assert_eq!(canonical("+34612000111").as_deref(), Some("34612000111"));
        assert_eq!(canonical("anonymous"), None);
        assert_eq!(canonical("+"), None);
        assert_eq!(canonical("+1234567890123456"), None);
    }

    #[test]
    fn an_spc_certificate_from_the_wild_parses() {
        // SEQUENCE { [0] { IA5String "709J" } }, as SHAKEN certificates carry it.
        let der = [0x30, 0x08, 0xa0, 0x06, 0x16, 0x04, b'7', b'0', b'9', b'J'];
        let list = TnAuthList::from_der(&der).unwrap();
        assert_eq!(list.spcs, vec!["709J".to_owned()]);
        assert!(list.covers("12155551212"));
    }

    #[test]
    fn numbers_and_ranges_cover_what_they_list() {
        let list =
            TnAuthList { spcs: vec![], ones: vec!["34612000111".into()], ranges: vec![("12155550100".into(), 100)] };
        assert!(list.covers("34612000111"));
        assert!(list.covers("12155550100"));
        assert!(list.covers("12155550199"));
        assert!(!list.covers("12155550200"));
        assert!(!list.covers("1215555010"), "a shorter number is not in the range");
        assert!(!list.covers("34612000112"));
    }

    #[test]
    fn unreadable_lists_are_refused() {
        assert!(TnAuthList::from_der(&[0x30, 0x00]).is_none(), "empty");
        assert!(TnAuthList::from_der(&[0x30, 0x03, 0x16, 0x01, b'1']).is_none(), "untagged");
        // [2] holding a number with a letter.
        assert!(TnAuthList::from_der(&[0x30, 0x05, 0xa2, 0x03, 0x16, 0x01, b'x']).is_none());
        assert!(TnAuthList::from_der(b"not der").is_none());
    }
}
