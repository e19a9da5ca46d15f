//! Email addresses as identities. An address is stored as typed, after
//! clean-up; two addresses are the same account when their canonical forms
//! are equal, and one is refused for a new account when it passes for a
//! registered one (the UTS #39 skeletons are equal) or mixes scripts the
//! way UTS #39 flags. So an invisible soft hyphen, a fullwidth `ｏ` or a
//! Cyrillic `о` does not make a second account that looks like the first.

use unicode_normalization::char::is_combining_mark;
use unicode_normalization::UnicodeNormalization;
use unicode_security::{RestrictionLevel, RestrictionLevelDetection};

use crate::input::sanitize_line;

/// The form stored and mailed: cleaned like every one-line field, with
/// default-ignorable code points (soft hyphen, zero-width and variation
/// characters, ...) removed, NFKC (compatibility forms such as fullwidth
/// letters folded), lower-cased. One `@`, a non-empty local part of at most
/// 64 bytes, a dotted domain, no spaces, at most 254 bytes. Says nothing
/// about look-alikes: see [`check_new`].
pub fn normalize(s: &str) -> Option<String> {
    let cleaned: String = sanitize_line(s).chars().filter(|c| !is_default_ignorable(*c)).collect();
    let e: String = cleaned.nfkc().collect::<String>().to_lowercase().nfc().collect();
    let (local, domain) = e.split_once('@')?;
    let ok = e.len() <= 254
        && !local.is_empty()
        && local.len() <= 64
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !e.chars().any(|c| c.is_whitespace() || c == '<' || c == '>' || c == ',' || c == ';' || c == '"');
    ok.then_some(e)
}

/// An address good for a new account: [`normalize`]d, a domain that IDNA
/// (UTS #46) accepts, no combining mark without a letter or digit to sit
/// on (a lone mark is no local part), no run of more than four marks or a
/// mark repeated on one letter, and each of the local part and the domain's
/// labels at most Moderately Restrictive (UTS #39 §5.2): one script, or
/// Latin with Han, Japanese or Korean, or Latin with one other recommended
/// script that is not Cyrillic or Greek. Characters no identifier may hold
/// (UTS #39 General Security Profile) are refused outside ASCII.
pub fn check_new(s: &str) -> Result<String, &'static str> {
    let e = normalize(s).ok_or("must be a valid email address")?;
    let (local, domain) = e.split_once('@').unwrap_or_default();
    let (unicode_domain, idna) = idna::domain_to_unicode(domain);
    if idna.is_err() {
        return Err("must be a valid email address (its domain is not a valid domain name)");
    }
    for part in std::iter::once(local).chain(unicode_domain.split('.')) {
        marks_sit_on_letters(part)?;
        let letters: String = part.chars().filter(|c| !c.is_ascii() || c.is_ascii_alphanumeric()).collect();
        match letters.as_str().detect_restriction_level() {
            RestrictionLevel::ASCIIOnly
            | RestrictionLevel::SingleScript
            | RestrictionLevel::HighlyRestrictive
            | RestrictionLevel::ModeratelyRestrictive => {}
            RestrictionLevel::MinimallyRestrictive => {
                return Err("must not mix scripts whose letters can be mistaken for one another");
            }
            RestrictionLevel::Unrestricted => {
                return Err("must not contain symbols or characters that are not letters or digits outside ASCII");
            }
        }
    }
    Ok(e)
}

/// The form two addresses are compared on: [`normalize`]d, fully case
/// folded (`ß` is `ss`), NFKC again, the domain in its Unicode form (so
/// Punycode `xn--` labels meet what they encode).
pub fn canonical(normalized: &str) -> String {
    let (local, domain) = normalized.rsplit_once('@').unwrap_or((normalized, ""));
    // Upper then lower case, per character: full case folding for every
    // character that matters here, without a table of our own.
    let local: String = local.chars().flat_map(char::to_uppercase).flat_map(char::to_lowercase).nfkc().collect();
    let (unicode_domain, idna) = idna::domain_to_unicode(domain);
    // Addresses stored before IDNA was checked keep their domain as is.
    let domain = if idna.is_ok() { unicode_domain } else { domain.to_owned() };
    format!("{local}@{domain}")
}

/// The UTS #39 skeleton of the canonical form: equal for addresses a
/// reader cannot tell apart (`о` and `o`, `rn` and `m`, ...). Stored with
/// each person, to find look-alikes with one indexed look-up.
pub fn skeleton(normalized: &str) -> String {
    unicode_security::skeleton(&canonical(normalized)).collect()
}

/// How a new address relates to a registered one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Likeness {
    /// The same account (equal canonical forms).
    Same,
    /// Another address that passes for it.
    LookAlike,
    Distinct,
}

/// Compares two [`normalize`]d addresses. Two all-ASCII addresses are never
/// look-alikes of each other: `bob1@` and `bobl@`, or `rn@` and `m@`, are
/// different mailboxes in everyday use, and refusing one would lock a real
/// person out without a word (sign-up cannot say why).
pub fn likeness(new: &str, registered: &str) -> Likeness {
    let (a, b) = (canonical(new), canonical(registered));
    if a == b {
        return Likeness::Same;
    }
    if a.is_ascii() && b.is_ascii() {
        return Likeness::Distinct;
    }
    let (sa, sb) = (unicode_security::skeleton(&a), unicode_security::skeleton(&b));
    if sa.eq(sb) {
        Likeness::LookAlike
    } else {
        Likeness::Distinct
    }
}

/// Combining marks must follow a letter or digit (possibly through other
/// marks); at most four in a row, and not the same mark twice on one base
/// (UTS #39 §5.4), which stacks into something that hides what is below.
fn marks_sit_on_letters(part: &str) -> Result<(), &'static str> {
    let mut base_ok = false;
    let mut run: Vec<char> = Vec::new();
    for c in part.nfd() {
        if is_combining_mark(c) {
            if !base_ok {
                return Err("must not have a combining mark without a letter or digit before it");
            }
            if run.len() == 4 || run.contains(&c) {
                return Err("must not stack combining marks");
            }
            run.push(c);
        } else {
            base_ok = c.is_alphanumeric();
            run.clear();
        }
    }
    Ok(())
}

/// Unicode's Default_Ignorable_Code_Point (DerivedCoreProperties.txt):
/// characters that render as nothing.
fn is_default_ignorable(c: char) -> bool {
    matches!(c,
        '\u{AD}' | '\u{34F}' | '\u{61C}' | '\u{115F}'..='\u{1160}' | '\u{17B4}'..='\u{17B5}'
        | '\u{180B}'..='\u{180F}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{3164}' | '\u{FE00}'..='\u{FE0F}' | '\u{FEFF}' | '\u{FFA0}'
        | '\u{FFF0}'..='\u{FFF8}' | '\u{1BCA0}'..='\u{1BCA3}' | '\u{1D173}'..='\u{1D17A}'
        | '\u{E0000}'..='\u{E0FFF}')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_addresses_are_cleaned_as_before() {
        assert_eq!(normalize(" Alice@Example.COM ").as_deref(), Some("alice@example.com"));
        for bad in ["", "a", "a@b", "@b.c", "a@b@c.d", "a b@c.d", "a@.c", "<a@b.c>"] {
            assert!(normalize(bad).is_none(), "{bad}");
            assert!(check_new(bad).is_err(), "{bad}");
        }
        for ok in ["alice@example.com", "a.b+tag@sub.example.org", "o'brien@example.ie", "x_y-z@a-b.example"] {
            assert_eq!(check_new(ok).as_deref(), Ok(ok));
        }
    }

    #[test]
    fn invisible_and_compatibility_forms_fold_into_the_address() {
        for disguised in [
            "al\u{AD}ice@example.com",   // soft hyphen
            "ali\u{200B}ce@example.com", // zero-width space
            "alice\u{FE0F}@example.com", // variation selector
            "\u{FF41}lice@example.com",  // fullwidth a
            "ALICE@EXAMPLE.COM",
            "alice@ex\u{AD}ample.com",
        ] {
            let n = normalize(disguised).unwrap();
            assert_eq!(n, "alice@example.com", "{disguised:?}");
            assert_eq!(likeness(&n, "alice@example.com"), Likeness::Same);
        }
        // Full case folding and IDNA meet in the canonical form.
        assert_eq!(likeness("strasse@example.de", "straße@example.de"), Likeness::Same);
        assert_eq!(likeness("a@xn--bcher-kva.example", "a@bücher.example"), Likeness::Same);
    }

    #[test]
    fn look_alikes_are_found_by_skeleton() {
        let alice = "alice@example.com";
        for look_alike in [
            "\u{430}lice@example.com", // Cyrillic а
            "alic\u{435}@example.com", // Cyrillic е
            "b\u{43E}b@example.com",   // Cyrillic о, against bob
            "alice@ex\u{430}mple.com", // in the domain
            "alice@PUNYCODE",          // the same, in Punycode
        ] {
            let punycode = idna::domain_to_ascii("ex\u{430}mple.com").unwrap();
            assert!(punycode.starts_with("xn--"));
            let n = normalize(&look_alike.replace("PUNYCODE", &punycode)).unwrap();
            let registered = if look_alike.starts_with('b') { "bob@example.com" } else { alice };
            assert_eq!(likeness(&n, registered), Likeness::LookAlike, "{look_alike:?}");
            assert_eq!(skeleton(&n), skeleton(registered), "{look_alike:?}");
        }
        // Different addresses keep different skeletons: the stored column
        // finds look-alikes, not every account.
        assert_ne!(skeleton(alice), skeleton("bob@example.com"));
        // The skeleton itself: UTS #39 maps `m` to `rn`.
        assert_eq!(skeleton(alice), "alice@exarnple.corn");
        // ASCII against ASCII: different mailboxes, however alike.
        assert_eq!(likeness("bob1@example.com", "bobl@example.com"), Likeness::Distinct);
        assert_eq!(likeness("modern@example.com", "rnodern@example.com"), Likeness::Distinct);
        assert_eq!(likeness("bob@example.com", "alice@example.com"), Likeness::Distinct);
        // A whole-script Cyrillic address passes for a Latin one.
        assert_eq!(
            likeness(&normalize("\u{441}\u{43E}\u{440}@example.com").unwrap(), "cop@example.com"),
            Likeness::LookAlike
        );
    }

    #[test]
    fn mixed_scripts_and_lone_marks_are_refused_for_new_accounts() {
        for (bad, why) in [
            ("\u{430}lice@example.com", "mix scripts"),   // Latin + Cyrillic
            ("p\u{3B1}ypal@example.com", "mix scripts"),  // Latin + Greek
            ("alice@ex\u{430}mple.com", "mix scripts"),   // in a domain label
            ("\u{301}@example.com", "combining mark"),    // a lone mark
            ("a.\u{301}b@example.com", "combining mark"), // a mark on a dot
            ("e\u{301}\u{301}@example.com", "stack"),     // the same mark twice
            ("\u{2603}@example.com", "symbols"),          // a snowman
        ] {
            let err = check_new(bad).expect_err(bad);
            assert!(err.contains(why), "{bad:?}: {err}");
        }
        // One script per part is fine, and so are Latin with Han or Japanese,
        // and precomposed or decomposed accents.
        for ok in [
            "\u{438}\u{432}\u{430}\u{43D}@example.com",                     // иван
            "\u{3B4}\u{3AE}\u{3BC}\u{3B7}\u{3C4}\u{3C1}\u{3B1}@example.gr", // δήμητρα
            "tanaka\u{7530}\u{4E2D}@example.jp",
            "jos\u{E9}@example.com",
            "jose\u{301}@example.com",
            "a@b\u{FC}cher.example",
        ] {
            assert!(check_new(ok).is_ok(), "{ok:?}: {:?}", check_new(ok));
        }
        assert_eq!(check_new("jose\u{301}@example.com").unwrap(), "jos\u{E9}@example.com");
    }
}
