//! The PASSporT (RFC 8225) of the SHAKEN kind (RFC 8588): a JWS over
//! canonical JSON (keys in order, no white space), signed with ES256.

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine as _;
use ring::signature::{UnparsedPublicKey, ECDSA_P256_SHA256_FIXED};
use serde::{Deserialize, Serialize};

use crate::Failure;

pub const ALG: &str = "ES256";
pub const PPT: &str = "shaken";
pub const TYP: &str = "passport";

/// How far the signer vouches for the caller (RFC 8588 §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attestation {
    /// Full: the caller is authenticated and holds the calling number.
    A,
    /// Partial: the caller is authenticated, the number not known as theirs.
    B,
    /// Gateway: the call came from elsewhere.
    C,
}

impl Attestation {
    pub fn as_str(self) -> &'static str {
        match self {
            Attestation::A => "A",
            Attestation::B => "B",
            Attestation::C => "C",
        }
    }

    pub fn parse(s: &str) -> Option<Attestation> {
        match s {
            "A" => Some(Attestation::A),
            "B" => Some(Attestation::B),
            "C" => Some(Attestation::C),
            _ => None,
        }
    }
}

/// The JOSE header. Fields in lexicographic order: serialized as declared,
/// that is the canonical form.
#[derive(Debug, Serialize, Deserialize)]
struct Header {
    alg: String,
    /// Extensions the signer says must be understood (RFC 7515 §4.1.11):
    /// none is, so a PASSporT naming any is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    crit: Option<serde_json::Value>,
    ppt: Option<String>,
    typ: Option<String>,
    x5u: Option<String>,
}

/// The claims, in lexicographic order too.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub attest: String,
    pub dest: Dest,
    pub iat: i64,
    pub orig: Orig,
    pub origid: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dest {
    pub tn: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Orig {
    pub tn: String,
}

/// The JWS of `claims`, signed by `sign` (which gets the signing input and
/// returns the raw `r || s`).
pub fn encode(x5u: &str, claims: &Claims, sign: impl FnOnce(&[u8]) -> Vec<u8>) -> String {
    let header =
        Header { alg: ALG.into(), crit: None, ppt: Some(PPT.into()), typ: Some(TYP.into()), x5u: Some(x5u.into()) };
    // Plain structs of strings and numbers: serializing cannot fail.
    let h = B64.encode(serde_json::to_vec(&header).unwrap_or_default());
    let p = B64.encode(serde_json::to_vec(claims).unwrap_or_default());
    let input = format!("{h}.{p}");
    let signature = sign(input.as_bytes());
    format!("{input}.{}", B64.encode(signature))
}

/// A PASSporT as read, not yet believed.
#[derive(Debug, Clone)]
pub struct Decoded {
    pub x5u: String,
    pub claims: Claims,
    pub attestation: Attestation,
    signing_input: String,
    signature: Vec<u8>,
}

impl Decoded {
    /// Whether the signature verifies with the P-256 public key `point`
    /// (uncompressed SEC1, as a certificate holds it).
    pub fn signed_by(&self, point: &[u8]) -> bool {
        UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .is_ok()
    }
}

/// Reads a full-form PASSporT: an ES256 SHAKEN one, or why not.
pub fn decode(jws: &str) -> Result<Decoded, Failure> {
    let mut parts = jws.split('.');
    let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next()) else {
        return Err(Failure::Malformed);
    };
    let json = |part: &str| B64.decode(part).map_err(|_| Failure::Malformed);
    let header: Header = serde_json::from_slice(&json(h)?).map_err(|_| Failure::Malformed)?;
    // The compact form (no payload) needs the SIP request to rebuild it;
    // SHAKEN sends the full form.
    if p.is_empty() {
        return Err(Failure::Unsupported);
    }
    if header.alg != ALG
        || header.crit.is_some()
        || header.ppt.as_deref() != Some(PPT)
        || header.typ.as_deref().is_some_and(|t| t != TYP)
    {
        return Err(Failure::Unsupported);
    }
    let x5u = header.x5u.ok_or(Failure::Malformed)?;
    let claims: Claims = serde_json::from_slice(&json(p)?).map_err(|_| Failure::Malformed)?;
    let attestation = Attestation::parse(&claims.attest).ok_or(Failure::Malformed)?;
    if claims.origid.is_empty() || claims.origid.len() > 128 || claims.dest.tn.is_empty() {
        return Err(Failure::Malformed);
    }
    let signature = json(s)?;
    if signature.len() != 64 {
        return Err(Failure::BadSignature);
    }
    Ok(Decoded { x5u, claims, attestation, signing_input: format!("{h}.{p}"), signature })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of RFC 8588 §6 as printed there (keys not in order, white
    /// space), with erratum 6656 applied (its commas, `iat` a number). Its
    /// signature is over a key we do not have; it must read as the RFC says.
    fn rfc8588_example() -> String {
        let header = r#"{ "alg":"ES256", "typ":"passport", "ppt":"shaken",
            "x5u":"https://cert.example.org/passport.cer" }"#;
        let payload = r#"{ "attest":"A", "dest":{"tn":["12155550131"]}, "iat":1443208345,
            "orig":{"tn":"12155550121"}, "origid":"123e4567-e89b-12d3-a456-426655440000" }"#;
        format!("{}.{}.{}", B64.encode(header), B64.encode(payload), B64.encode([7u8; 64]))
    }

    #[test]
    fn the_rfc_8588_example_reads() {
        let d = decode(&rfc8588_example()).unwrap();
        assert_eq!(d.x5u, "https://cert.example.org/passport.cer");
        assert_eq!(d.attestation, Attestation::A);
        assert_eq!(d.claims.orig.tn, "12155550121");
        assert_eq!(d.claims.dest.tn, vec!["12155550131".to_owned()]);
        assert_eq!(d.claims.iat, 1_443_208_345);
        assert_eq!(d.claims.origid, "123e4567-e89b-12d3-a456-426655440000");
        // In an Identity header as RFC 8224 §4.1 writes one.
        let value =
            format!("{};info=<https://cert.example.org/passport.cer>;alg=ES256;ppt=\"shaken\"", rfc8588_example());
        let h = crate::header::parse(&value).unwrap();
        assert_eq!(h.info, d.x5u);
        assert_eq!(h.ppt, Some("shaken"));
        // As first printed, `iat` a string: not a NumericDate.
        let printed = r#"{"attest":"A","dest":{"tn":["12155550131"]},"iat":"1443208345","orig":{"tn":"12155550121"},"origid":"x"}"#;
        let (h, _) = rfc8588_example().split_once('.').map(|(h, r)| (h.to_owned(), r.to_owned())).unwrap();
        let jws = format!("{h}.{}.{}", B64.encode(printed), B64.encode([7u8; 64]));
        assert_eq!(decode(&jws).unwrap_err(), Failure::Malformed);
    }

    #[test]
    fn what_we_encode_is_canonical_json() {
        let claims = Claims {
            attest: "B".into(),
            dest: Dest { tn: vec!["34612000111".into()] },
            iat: 1_800_000_000,
            orig: Orig { tn: "34612000222".into() },
            origid: "id".into(),
        };
        let jws = encode("https://cert.test/a.pem", &claims, |_| vec![0; 64]);
        let mut parts = jws.split('.');
        let header = B64.decode(parts.next().unwrap()).unwrap();
        let payload = B64.decode(parts.next().unwrap()).unwrap();
        assert_eq!(
            String::from_utf8(header).unwrap(),
            r#"{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"https://cert.test/a.pem"}"#
        );
        assert_eq!(
            String::from_utf8(payload).unwrap(),
            r#"{"attest":"B","dest":{"tn":["34612000111"]},"iat":1800000000,"orig":{"tn":"34612000222"},"origid":"id"}"#
        );
        assert_eq!(decode(&jws).unwrap().claims, claims);
    }

    #[test]
    fn other_kinds_are_unsupported() {
        let h = |json: &str| B64.encode(json);
        let p = B64.encode(r#"{"attest":"A","dest":{"tn":["1"]},"iat":1,"orig":{"tn":"2"},"origid":"x"}"#);
        let s = B64.encode([0u8; 64]);
        let hs256 = format!("{}.{p}.{s}", h(r#"{"alg":"HS256","ppt":"shaken","typ":"passport","x5u":"u"}"#));
        assert_eq!(decode(&hs256).unwrap_err(), Failure::Unsupported);
        let none = format!("{}.{p}.", h(r#"{"alg":"none","ppt":"shaken","x5u":"u"}"#));
        assert_eq!(decode(&none).unwrap_err(), Failure::Unsupported);
        let div = format!("{}.{p}.{s}", h(r#"{"alg":"ES256","ppt":"div","typ":"passport","x5u":"u"}"#));
        assert_eq!(decode(&div).unwrap_err(), Failure::Unsupported);
        let crit =
            format!("{}.{p}.{s}", h(r#"{"alg":"ES256","crit":["x"],"ppt":"shaken","typ":"passport","x5u":"u"}"#));
        assert_eq!(decode(&crit).unwrap_err(), Failure::Unsupported);
        let compact = format!("{}..{s}", h(r#"{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"u"}"#));
        assert_eq!(decode(&compact).unwrap_err(), Failure::Unsupported);
        let bad_attest = B64.encode(r#"{"attest":"D","dest":{"tn":["1"]},"iat":1,"orig":{"tn":"2"},"origid":"x"}"#);
        let d = format!("{}.{bad_attest}.{s}", h(r#"{"alg":"ES256","ppt":"shaken","typ":"passport","x5u":"u"}"#));
        assert_eq!(decode(&d).unwrap_err(), Failure::Malformed);
    }
}
