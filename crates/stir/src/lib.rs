//! STIR/SHAKEN. Calls going out through a trunk carry an `Identity` header
//! (RFC 8224) holding a PASSporT (RFC 8225) of the SHAKEN kind (RFC 8588),
//! signed with the operator's key ([`signer`]); calls coming in have theirs
//! checked ([`verifier`]): the certificate behind `info`, its chain to a
//! configured STI-CA, its TNAuthList (RFC 8226, [`tn`]), the signature, the
//! freshness, the numbers and a replayed `origid`.
//!
//! No transport here: the SIP edge hands in header values and numbers and
//! gets back a header value or a [`Verification`].

pub mod certs;
pub mod header;
pub mod passport;
pub mod signer;
pub mod tn;
pub mod verifier;

#[cfg(test)]
mod tests;

pub use passport::Attestation;
pub use signer::Signer;
pub use verifier::{Fetch, Settings, Verifier};

/// What a call's caller-ID verification found (the `verstat` on the call,
/// its CDR and its webhook).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verstat {
    Passed,
    Failed,
    NoSignature,
}

impl Verstat {
    pub fn as_str(self) -> &'static str {
        match self {
            Verstat::Passed => "passed",
            Verstat::Failed => "failed",
            Verstat::NoSignature => "no_signature",
        }
    }
}

/// The result for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification {
    pub verstat: Verstat,
    /// The signer's attestation, when a PASSporT passed.
    pub attestation: Option<Attestation>,
    /// Why it failed.
    pub failure: Option<Failure>,
}

impl Verification {
    pub fn no_signature() -> Verification {
        Verification { verstat: Verstat::NoSignature, attestation: None, failure: None }
    }

    pub fn failed(why: Failure) -> Verification {
        Verification { verstat: Verstat::Failed, attestation: None, failure: Some(why) }
    }

    pub fn passed(attestation: Attestation) -> Verification {
        Verification { verstat: Verstat::Passed, attestation: Some(attestation), failure: None }
    }
}

/// Why a PASSporT was not believed. Each has a reason word (on the call,
/// and in the `Warning` of a 438).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    #[error("the Identity header or its PASSporT cannot be read")]
    Malformed,
    #[error("not an ES256 SHAKEN PASSporT")]
    Unsupported,
    #[error("the PASSporT's x5u is not the header's info")]
    InfoMismatch,
    #[error("iat is too far from now")]
    Stale,
    #[error("orig is not the calling number")]
    OrigMismatch,
    #[error("dest does not hold the called number")]
    DestMismatch,
    #[error("the certificate could not be fetched or read")]
    CertUnavailable,
    #[error("the certificate does not chain to a trusted STI-CA, or is not valid now")]
    Untrusted,
    #[error("the certificate's TNAuthList does not cover the calling number")]
    NotCovered,
    #[error("the signature does not verify")]
    BadSignature,
    #[error("this PASSporT was seen already")]
    Replayed,
    /// The shared state that remembers PASSporTs did not answer.
    #[error("the PASSporT could not be checked for a replay")]
    Unverifiable,
}

impl Failure {
    pub fn reason(self) -> &'static str {
        match self {
            Failure::Malformed => "identity_malformed",
            Failure::Unsupported => "identity_unsupported",
            Failure::InfoMismatch => "info_mismatch",
            Failure::Stale => "iat_stale",
            Failure::OrigMismatch => "orig_mismatch",
            Failure::DestMismatch => "dest_mismatch",
            Failure::CertUnavailable => "cert_unavailable",
            Failure::Untrusted => "cert_untrusted",
            Failure::NotCovered => "tn_not_covered",
            Failure::BadSignature => "bad_signature",
            Failure::Replayed => "origid_replayed",
            Failure::Unverifiable => "verification_unavailable",
        }
    }

    /// Every failure, for docs and tests.
    pub const ALL: [Failure; 12] = [
        Failure::Malformed,
        Failure::Unsupported,
        Failure::InfoMismatch,
        Failure::Stale,
        Failure::OrigMismatch,
        Failure::DestMismatch,
        Failure::CertUnavailable,
        Failure::Untrusted,
        Failure::NotCovered,
        Failure::BadSignature,
        Failure::Replayed,
        Failure::Unverifiable,
    ];
}
