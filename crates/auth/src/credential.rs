//! The credential's form says what it is (SPEC §2).

use crate::token::{has_shape, AGENT_TOKEN_PREFIX, API_KEY_PREFIX, MASTER_KEY_PREFIX, OPERATOR_TOKEN_PREFIX};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credential<'a> {
    Jwt(&'a str),
    ApiKey(&'a str),
    AgentToken(&'a str),
    MasterKey(&'a str),
    /// An operator's session (`/sysadmin` only).
    Operator(&'a str),
    Malformed,
}

impl<'a> Credential<'a> {
    pub fn classify(s: &'a str) -> Self {
        if has_shape(s, API_KEY_PREFIX, 32) {
            Credential::ApiKey(s)
        } else if has_shape(s, AGENT_TOKEN_PREFIX, 32) {
            Credential::AgentToken(s)
        } else if has_shape(s, OPERATOR_TOKEN_PREFIX, 43) {
            Credential::Operator(s)
        } else if s.starts_with(MASTER_KEY_PREFIX)
            && s.len() >= 46
            && s.len() <= 256
            && s[3..].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            Credential::MasterKey(s)
        } else if is_jwt_shape(s) {
            Credential::Jwt(s)
        } else {
            Credential::Malformed
        }
    }
}

fn is_jwt_shape(s: &str) -> bool {
    s.len() <= 8192
        && s.split('.').count() == 3
        && s.split('.').all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_form() {
        let ak = format!("ak_{}", "a".repeat(32));
        assert_eq!(Credential::classify(&ak), Credential::ApiKey(&ak));
        let at = format!("at_{}", "B".repeat(32));
        assert_eq!(Credential::classify(&at), Credential::AgentToken(&at));
        let mk = format!("mk_{}", "c".repeat(43));
        assert_eq!(Credential::classify(&mk), Credential::MasterKey(&mk));
        let op = format!("op_{}", "d".repeat(43));
        assert_eq!(Credential::classify(&op), Credential::Operator(&op));
        assert_eq!(Credential::classify(&format!("op_{}", "d".repeat(42))), Credential::Malformed);
        assert_eq!(Credential::classify("a.b.c"), Credential::Jwt("a.b.c"));
        for bad in ["", "ak_short", "mk_short", "a.b", "a..c", "a.b.c.d", &format!("ak_{}!", "a".repeat(31))] {
            assert_eq!(Credential::classify(bad), Credential::Malformed, "{bad}");
        }
    }

    #[test]
    fn master_keys_and_jwts_by_their_alphabets() {
        let mk = format!("mk_{}-{}_", "c".repeat(21), "d".repeat(20));
        assert_eq!(Credential::classify(&mk), Credential::MasterKey(&mk));
        let longest = format!("mk_{}", "e".repeat(253));
        assert_eq!(Credential::classify(&longest), Credential::MasterKey(&longest));
        let jwt = "eyJ-a_b.c-d_e.f_g-h";
        assert_eq!(Credential::classify(jwt), Credential::Jwt(jwt));
        let too_long_jwt = format!("a.b.{}", "c".repeat(8189));
        assert_eq!(Credential::classify(&too_long_jwt[..8192]), Credential::Jwt(&too_long_jwt[..8192]));
        for bad in [
            // Long enough for a master key, without its prefix.
            "x".repeat(50),
            format!("mk_{}!", "c".repeat(43)),
            format!("mk_{}.{}", "c".repeat(21), "c".repeat(21)),
            format!("mk_{}", "e".repeat(254)),
            "a.b!.c".to_owned(),
            "a.b.c d".to_owned(),
            too_long_jwt.clone(),
        ] {
            assert_eq!(Credential::classify(&bad), Credential::Malformed, "{bad}");
        }
    }
}
