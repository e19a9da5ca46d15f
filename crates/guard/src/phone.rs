//! Phone numbers (SPEC §6): E.164 only (`+` and 8 to 15 digits), checked
//! against real numbering-plan data, with the country derived from the
//! number.

/// A valid E.164 number and the ISO 3166-1 alpha-2 country it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct E164 {
    pub number: String,
    pub country: String,
}

/// Parses a number written in E.164 form; anything else is refused with
/// a reason fit for a validation error.
pub fn parse_e164(s: &str) -> Result<E164, &'static str> {
    let digits = s.strip_prefix('+').ok_or("must be in E.164 form: + and 8 to 15 digits")?;
    if !(8..=15).contains(&digits.len()) || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err("must be in E.164 form: + and 8 to 15 digits");
    }
    let parsed = phonenumber::parse(None, s).map_err(|_| "is not a phone number")?;
    if !phonenumber::is_valid(&parsed) {
        return Err("is not a valid number in its country's numbering plan");
    }
    let country = parsed.country().id().map(|c| c.as_ref().to_owned()).ok_or("belongs to no country")?;
    Ok(E164 { number: s.to_owned(), country })
}

/// Whether `code` is an ISO 3166-1 alpha-2 code (upper case) of a country
/// with numbering-plan data.
pub fn is_country(code: &str) -> bool {
    use std::str::FromStr;
    code.len() == 2 && code.bytes().all(|b| b.is_ascii_uppercase()) && phonenumber::country::Id::from_str(code).is_ok()
}

/// The last four digits, for audit records and logs (never the full number).
pub fn masked(number: &str) -> String {
    let tail: String = number.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_numbers_and_their_countries() {
        assert_eq!(parse_e164("+34612345678").unwrap().country, "ES");
        assert_eq!(parse_e164("+14155552671").unwrap().country, "US");
        assert_eq!(parse_e164("+442071838750").unwrap().country, "GB");
    }

    #[test]
    fn refusals() {
        for bad in ["34612345678", "+34 612 345 678", "+3461", "+1234567890123456", "+34000000000", "+9991234567", ""] {
            assert!(parse_e164(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn countries() {
        assert!(is_country("ES") && is_country("US"));
        assert!(!is_country("es") && !is_country("XX") && !is_country("ESP"));
    }

    #[test]
    fn masking() {
        assert_eq!(masked("+34612345678"), "…5678");
    }
}
