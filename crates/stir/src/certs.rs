//! The signer's certificate: its chain to a configured STI-CA (path
//! validation by webpki), its P-256 key and its TNAuthList.

use std::time::Duration;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use webpki::{EndEntityCert, KeyPurposeIdIter};
use x509_cert::der::oid::ObjectIdentifier;
use x509_cert::der::Decode;

use crate::tn::{TnAuthList, TN_AUTH_LIST_OID};
use crate::Failure;

/// The most certificates a fetched chain may hold: the signer's and two
/// intermediates (SHAKEN chains have at most one), so a hostile chain
/// cannot make path building expensive.
pub const MAX_CHAIN: usize = 3;

const EC_PUBLIC_KEY: &str = "1.2.840.10045.2.1";
const P256: &str = "1.2.840.10045.3.1.7";

/// The STI-CAs the operator trusts (PEM).
#[derive(Debug, Default)]
pub struct Anchors {
    roots: Vec<TrustAnchor<'static>>,
}

impl Anchors {
    pub fn from_pem(pem: &[u8]) -> Result<Anchors, String> {
        let mut roots = Vec::new();
        for cert in CertificateDer::pem_slice_iter(pem) {
            let cert = cert.map_err(|e| format!("not PEM certificates: {e}"))?;
            let anchor = webpki::anchor_from_trusted_cert(&cert).map_err(|e| format!("not a CA certificate: {e:?}"))?;
            roots.push(anchor.to_owned());
        }
        if roots.is_empty() {
            return Err("holds no certificate".into());
        }
        Ok(Anchors { roots })
    }

    pub fn len(&self) -> usize {
        self.roots.len()
    }

    pub fn is_empty(&self) -> bool {
        self.roots.is_empty()
    }
}

/// What a valid certificate gives: its key and what it covers.
#[derive(Debug, Clone)]
pub struct Signer {
    /// The uncompressed P-256 point.
    pub point: Vec<u8>,
    pub tns: TnAuthList,
}

/// SHAKEN defines no extended key usage: any well-formed list is accepted.
struct AnyUsage;

impl webpki::ExtendedKeyUsageValidator for AnyUsage {
    fn validate(&self, iter: KeyPurposeIdIter<'_, '_>) -> Result<(), webpki::Error> {
        for oid in iter {
            oid?;
        }
        Ok(())
    }
}

/// Checks a fetched chain (PEM: the signer's certificate first, then its
/// intermediates) against the anchors at `now_ms`.
pub fn check_chain(pem: &[u8], anchors: &Anchors, now_ms: i64) -> Result<Signer, Failure> {
    let mut certs = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        certs.push(cert.map_err(|_| Failure::CertUnavailable)?);
        if certs.len() > MAX_CHAIN {
            return Err(Failure::CertUnavailable);
        }
    }
    let (leaf, intermediates) = certs.split_first().ok_or(Failure::CertUnavailable)?;
    let ee = EndEntityCert::try_from(leaf).map_err(|_| Failure::CertUnavailable)?;
    let now = UnixTime::since_unix_epoch(Duration::from_millis(u64::try_from(now_ms).unwrap_or(0)));
    let algs: &[&dyn rustls_pki_types::SignatureVerificationAlgorithm] = &[
        webpki::ring::ECDSA_P256_SHA256,
        webpki::ring::ECDSA_P256_SHA384,
        webpki::ring::ECDSA_P384_SHA256,
        webpki::ring::ECDSA_P384_SHA384,
    ];
    ee.verify_for_usage(algs, &anchors.roots, intermediates, now, AnyUsage, None, None).map_err(|e| {
        tracing::debug!(target: "palisade::stir", error = ?e, "a STIR certificate was not trusted");
        Failure::Untrusted
    })?;
    let cert = x509_cert::Certificate::from_der(leaf).map_err(|_| Failure::CertUnavailable)?;
    let tbs = &cert.tbs_certificate;
    let spki = &tbs.subject_public_key_info;
    let oid = |s: &str| ObjectIdentifier::new_unwrap(s);
    let curve = spki.algorithm.parameters.as_ref().and_then(|p| p.decode_as::<ObjectIdentifier>().ok());
    if spki.algorithm.oid != oid(EC_PUBLIC_KEY) || curve != Some(oid(P256)) {
        return Err(Failure::Untrusted);
    }
    let point = spki.subject_public_key.raw_bytes().to_vec();
    let extension = tbs.extensions.iter().flatten().find(|e| e.extn_id == oid(TN_AUTH_LIST_OID));
    let tns = extension
        .map(|e| TnAuthList::from_der(e.extn_value.as_bytes()).ok_or(Failure::NotCovered))
        .transpose()?
        .ok_or(Failure::NotCovered)?;
    Ok(Signer { point, tns })
}
