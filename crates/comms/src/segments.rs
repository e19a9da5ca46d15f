//! How many SMS segments a text takes (what a message costs): GSM 03.38
//! 7-bit text takes 160 characters in one segment and 153 per segment when
//! split; anything outside that alphabet is sent as UCS-2: 70, and 67 per
//! segment when split.

/// GSM 03.38 basic character set.
const BASIC: &str = "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà";
/// Characters of the extension table: each takes two septets.
const EXTENDED: &str = "^{}\\[~]|€\u{0C}";

/// Segments for `text` (at least 1, even for an empty text).
pub fn count(text: &str) -> u32 {
    let mut septets = 0usize;
    let mut gsm = true;
    for c in text.chars() {
        if BASIC.contains(c) {
            septets += 1;
        } else if EXTENDED.contains(c) {
            septets += 2;
        } else {
            gsm = false;
            break;
        }
    }
    let (units, single, multi) = if gsm {
        (septets, 160, 153)
    } else {
        // UTF-16 code units: characters outside the BMP take two.
        (text.encode_utf16().count(), 70, 67)
    };
    let n = if units <= single { 1 } else { units.div_ceil(multi) };
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gsm_text() {
        assert_eq!(count(""), 1);
        assert_eq!(count(&"a".repeat(160)), 1);
        assert_eq!(count(&"a".repeat(161)), 2);
        assert_eq!(count(&"a".repeat(306)), 2);
        assert_eq!(count(&"a".repeat(307)), 3);
        // Extension characters take two septets.
        assert_eq!(count(&"€".repeat(80)), 1);
        assert_eq!(count(&"€".repeat(81)), 2);
    }

    #[test]
    fn unicode_text() {
        assert_eq!(count(&"ł".repeat(70)), 1);
        assert_eq!(count(&"ł".repeat(71)), 2);
        assert_eq!(count(&"😀".repeat(35)), 1);
        assert_eq!(count(&"😀".repeat(36)), 2);
    }
}
