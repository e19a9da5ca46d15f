//! Signed checkpoints: a statement "the log had `size` records and this
//! root" signed with the audit Ed25519 key. The body is plain text so an
//! auditor can check it with any Ed25519 implementation:
//!
//! ```text
//! palisade-audit/v1
//! <origin>
//! <tree size, decimal>
//! <root hash, base64>
//! <unix time in milliseconds>
//! ```

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ed25519_dalek::pkcs8::DecodePrivateKey;
use ed25519_dalek::{Signature, Signer as _, SigningKey, Verifier as _, VerifyingKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::merkle::Hash;

pub const FORMAT: &str = "palisade-audit/v1";
/// Body of a retention statement: "records of leaves [0, up_to_leaf) may be removed".
/// ```text
/// palisade-audit-expiry/v1
/// <origin>
/// <up_to_leaf, decimal>
/// <unix time in milliseconds>
/// ```
///
/// A tenant's own retention statement has the tenant tree's origin
/// (`<origin>/tenants/<tenant id>`) and three more lines, the tenant's tree
/// at the cut: its size, its root (base64) and where its leaves lie (base64
/// SHA-256 of their log leaf numbers, 8 bytes big-endian each, in order).
/// "That tenant's records among leaves [0, up_to_leaf) may be removed; they
/// are the first <size> leaves of its tree, with this root, at these
/// leaves of the log." Size, root and places together make a statement
/// excuse the tenant's own records only: a record of anyone else counted
/// as the tenant's, or a tenant leaf moved, changes one of them.
pub const EXPIRY_FORMAT: &str = "palisade-audit-expiry/v1";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Checkpoint {
    /// The signed text.
    pub body: String,
    /// Base64 Ed25519 signature over `body`.
    pub signature: String,
    /// First 16 hex characters of SHA-256 of the public key.
    pub key_id: String,
}

/// The parsed body of a checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    pub origin: String,
    pub tree_size: u64,
    pub root: Hash,
    pub ts_ms: i64,
}

impl Checkpoint {
    /// `(up_to_leaf, ts_ms)` if this is a retention statement.
    pub fn expiry(&self) -> Option<(u64, i64)> {
        let mut lines = self.body.strip_suffix('\n')?.split('\n');
        if lines.next()? != EXPIRY_FORMAT {
            return None;
        }
        let _origin = lines.next()?;
        let up_to = lines.next()?.parse().ok()?;
        let ts = lines.next()?.parse().ok()?;
        lines.next().is_none().then_some((up_to, ts))
    }

    pub fn is_expiry(&self) -> bool {
        self.body.starts_with(EXPIRY_FORMAT)
    }

    pub fn head(&self) -> Option<Head> {
        let mut lines = self.body.strip_suffix('\n')?.split('\n');
        if lines.next()? != FORMAT {
            return None;
        }
        let origin = lines.next()?.to_owned();
        let tree_size = lines.next()?.parse().ok()?;
        let root = B64.decode(lines.next()?).ok()?.try_into().ok()?;
        let ts_ms = lines.next()?.parse().ok()?;
        lines.next().is_none().then_some(Head { origin, tree_size, root, ts_ms })
    }
}

/// A tenant's retention statement, verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantExpiry {
    pub tenant: String,
    pub up_to_leaf: u64,
    pub ts_ms: i64,
    pub tree: TenantCut,
}

/// A tenant's tree where a retention statement cuts the log: how many of
/// its leaves lie before the cut, their root, and the SHA-256 of their
/// places in the log (leaf numbers, 8 bytes big-endian each, in order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantCut {
    pub size: u64,
    pub root: Hash,
    pub places: Hash,
}

/// The origin line of a tenant tree's checkpoints.
pub fn tenant_origin(origin: &str, tenant: &str) -> String {
    format!("{origin}/tenants/{tenant}")
}

pub struct Signer {
    key: SigningKey,
    verifier: Verifier,
    origin: String,
}

#[derive(Debug, thiserror::Error)]
#[error("audit signing key: {0}")]
pub struct KeyError(String);

impl Signer {
    /// From a PKCS#8 PEM Ed25519 private key.
    pub fn from_pem(pem: &str, origin: &str) -> Result<Self, KeyError> {
        let key =
            SigningKey::from_pkcs8_pem(pem).map_err(|e| KeyError(format!("not an Ed25519 PKCS#8 PEM key: {e}")))?;
        let verifier = Verifier::new(key.verifying_key(), origin);
        Ok(Self { key, verifier, origin: origin.to_owned() })
    }

    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    pub fn sign(&self, tree_size: u64, root: &Hash, ts_ms: i64) -> Checkpoint {
        self.sign_body(format!("{FORMAT}\n{}\n{tree_size}\n{}\n{ts_ms}\n", self.origin, B64.encode(root)))
    }

    /// A checkpoint of one tenant's tree: the same five lines, with the
    /// origin `<origin>/tenants/<tenant id>`, so it never passes for the
    /// log's (or another tenant's).
    pub fn sign_tenant(&self, tenant: &str, tree_size: u64, root: &Hash, ts_ms: i64) -> Checkpoint {
        let origin = tenant_origin(&self.origin, tenant);
        self.sign_body(format!("{FORMAT}\n{origin}\n{tree_size}\n{}\n{ts_ms}\n", B64.encode(root)))
    }

    pub fn sign_expiry(&self, up_to_leaf: u64, ts_ms: i64) -> Checkpoint {
        self.sign_body(format!("{EXPIRY_FORMAT}\n{}\n{up_to_leaf}\n{ts_ms}\n", self.origin))
    }

    /// A retention statement of one tenant's records (its period is shorter
    /// than the platform's), with its tree's first `size` leaves' root.
    pub fn sign_tenant_expiry(&self, tenant: &str, up_to_leaf: u64, ts_ms: i64, tree: &TenantCut) -> Checkpoint {
        let origin = tenant_origin(&self.origin, tenant);
        let (root, places) = (B64.encode(tree.root), B64.encode(tree.places));
        self.sign_body(format!("{EXPIRY_FORMAT}\n{origin}\n{up_to_leaf}\n{ts_ms}\n{}\n{root}\n{places}\n", tree.size))
    }

    fn sign_body(&self, body: String) -> Checkpoint {
        let signature = B64.encode(self.key.sign(body.as_bytes()).to_bytes());
        Checkpoint { body, signature, key_id: self.verifier.key_id.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct Verifier {
    key: VerifyingKey,
    key_id: String,
    /// Notes of another log signed with the same key are not this log's.
    origin: String,
}

impl Verifier {
    pub fn new(key: VerifyingKey, origin: &str) -> Self {
        let key_id = hex::encode(Sha256::digest(key.as_bytes()))[..16].to_owned();
        Self { key, key_id, origin: origin.to_owned() }
    }

    /// From a raw public key in base64 (as `public_key_b64` prints it).
    pub fn from_public_b64(b64: &str, origin: &str) -> Option<Self> {
        let bytes: [u8; 32] = B64.decode(b64.trim()).ok()?.try_into().ok()?;
        Some(Self::new(VerifyingKey::from_bytes(&bytes).ok()?, origin))
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    /// The log's name, as its checkpoints state it.
    pub fn origin(&self) -> &str {
        &self.origin
    }

    /// The raw 32-byte public key, base64.
    pub fn public_key_b64(&self) -> String {
        B64.encode(self.key.as_bytes())
    }

    pub fn verify(&self, cp: &Checkpoint) -> Option<Head> {
        self.signed(cp).then(|| cp.head()).flatten().filter(|h| h.origin == self.origin)
    }

    /// A verified checkpoint of `tenant`'s tree.
    pub fn verify_tenant(&self, cp: &Checkpoint, tenant: &str) -> Option<Head> {
        let origin = tenant_origin(&self.origin, tenant);
        self.signed(cp).then(|| cp.head()).flatten().filter(|h| h.origin == origin)
    }

    /// A verified retention statement's `(up_to_leaf, ts_ms)`.
    pub fn verify_expiry(&self, cp: &Checkpoint) -> Option<(u64, i64)> {
        if !self.signed(cp) || cp.body.split('\n').nth(1) != Some(self.origin.as_str()) {
            return None;
        }
        cp.expiry()
    }

    /// A verified tenant retention statement.
    pub fn verify_tenant_expiry(&self, cp: &Checkpoint) -> Option<TenantExpiry> {
        let mut lines = cp.body.strip_suffix('\n')?.split('\n');
        if lines.next()? != EXPIRY_FORMAT {
            return None;
        }
        let tenant = lines.next()?.strip_prefix(tenant_origin(&self.origin, "").as_str())?;
        if tenant.is_empty() || tenant.contains('/') {
            return None;
        }
        let up_to_leaf = lines.next()?.parse().ok()?;
        let ts_ms = lines.next()?.parse().ok()?;
        let size = lines.next()?.parse().ok()?;
        let root = B64.decode(lines.next()?).ok()?.try_into().ok()?;
        let places = B64.decode(lines.next()?).ok()?.try_into().ok()?;
        if lines.next().is_some() || !self.signed(cp) {
            return None;
        }
        Some(TenantExpiry { tenant: tenant.to_owned(), up_to_leaf, ts_ms, tree: TenantCut { size, root, places } })
    }

    fn signed(&self, cp: &Checkpoint) -> bool {
        let Some(sig) = B64.decode(&cp.signature).ok().and_then(|s| <[u8; 64]>::try_from(s).ok()) else {
            return false;
        };
        self.key.verify(cp.body.as_bytes(), &Signature::from_bytes(&sig)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn signer() -> Signer {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let pem = SigningKey::from_bytes(&[7u8; 32]).to_pkcs8_pem(Default::default()).unwrap();
        Signer::from_pem(&pem, "test.example").unwrap()
    }

    #[test]
    fn sign_parse_verify() {
        let s = signer();
        let cp = s.sign(42, &[9u8; 32], 1_700_000_000_000);
        let head = s.verifier().verify(&cp).unwrap();
        assert_eq!(
            head,
            Head { origin: "test.example".into(), tree_size: 42, root: [9u8; 32], ts_ms: 1_700_000_000_000 }
        );
        let mut forged = cp.clone();
        forged.body = forged.body.replace("\n42\n", "\n41\n");
        assert!(s.verifier().verify(&forged).is_none());
        let other = Signer::from_pem(
            &{
                use ed25519_dalek::pkcs8::EncodePrivateKey;
                SigningKey::from_bytes(&[8u8; 32]).to_pkcs8_pem(Default::default()).unwrap().to_string()
            },
            "test.example",
        )
        .unwrap();
        assert!(other.verifier().verify(&cp).is_none());
    }

    #[test]
    fn tenant_checkpoints_are_their_tenants_only() {
        let s = signer();
        let v = s.verifier();
        let cp = s.sign_tenant("t1", 4, &[2u8; 32], 9);
        assert!(cp.body.starts_with("palisade-audit/v1\ntest.example/tenants/t1\n4\n"), "{}", cp.body);
        assert_eq!(v.verify_tenant(&cp, "t1").map(|h| (h.tree_size, h.root)), Some((4, [2u8; 32])));
        // Not the log's, not another tenant's; and the log's is no tenant's.
        assert_eq!((v.verify(&cp), v.verify_tenant(&cp, "t2")), (None, None));
        assert_eq!(v.verify_tenant(&s.sign(4, &[2u8; 32], 9), "t1"), None);
        let mut forged = cp.clone();
        forged.body = forged.body.replace("\n4\n", "\n5\n");
        assert_eq!(v.verify_tenant(&forged, "t1"), None);
    }

    #[test]
    fn tenant_expiries_are_their_tenants_only() {
        let s = signer();
        let v = s.verifier();
        let tree = TenantCut { size: 3, root: [4u8; 32], places: [5u8; 32] };
        let ex = s.sign_tenant_expiry("t1", 7, 9, &tree);
        assert!(ex.body.starts_with("palisade-audit-expiry/v1\ntest.example/tenants/t1\n7\n9\n3\n"), "{}", ex.body);
        let expected = TenantExpiry { tenant: "t1".into(), up_to_leaf: 7, ts_ms: 9, tree };
        assert_eq!(v.verify_tenant_expiry(&ex), Some(expected));
        // Never the platform's statement (nor its checkpoint), and the platform's is no tenant's.
        assert_eq!((v.verify_expiry(&ex), ex.expiry(), ex.head()), (None, None, None));
        assert_eq!(v.verify_tenant_expiry(&s.sign_expiry(7, 9)), None);
        // A tenant checkpoint is no statement; a changed tenant, leaf, size or root breaks the signature.
        assert_eq!(v.verify_tenant_expiry(&s.sign_tenant("t1", 7, &[2u8; 32], 9)), None);
        for (from, to) in [("/tenants/t1\n", "/tenants/t2\n"), ("\n7\n", "\n8\n"), ("\n3\n", "\n4\n")] {
            let forged = Checkpoint { body: ex.body.replacen(from, to, 1), ..ex.clone() };
            assert_ne!(forged.body, ex.body);
            assert_eq!(v.verify_tenant_expiry(&forged), None);
        }
        // Another log's tenant.
        let elsewhere = Verifier::from_public_b64(&v.public_key_b64(), "other.example").unwrap();
        assert_eq!(elsewhere.verify_tenant_expiry(&ex), None);
        // No tenant, or a path for one: never a tenant's statement, signed or not.
        for odd in ["", "t1/x"] {
            assert_eq!(v.verify_tenant_expiry(&s.sign_tenant_expiry(odd, 7, 9, &tree)), None, "{odd:?}");
        }
    }

    #[test]
    fn notes_of_another_log_or_kind_do_not_verify() {
        let s = signer();
        let v = s.verifier();
        let cp = s.sign(3, &[1u8; 32], 5);
        assert!(!cp.is_expiry() && cp.expiry().is_none());
        assert_eq!(v.verify_expiry(&cp), None);
        let ex = s.sign_expiry(10, 6);
        assert!(ex.is_expiry());
        assert_eq!((ex.expiry(), v.verify_expiry(&ex)), (Some((10, 6)), Some((10, 6))));
        assert_eq!((ex.head(), v.verify(&ex)), (None, None));
        // The same key, another origin.
        let elsewhere = Verifier::from_public_b64(&v.public_key_b64(), "other.example").unwrap();
        assert_eq!(elsewhere.key_id(), v.key_id());
        assert_eq!((elsewhere.verify(&cp), elsewhere.verify_expiry(&ex)), (None, None));
        // A forged statement, or one with a broken signature.
        let mut forged = ex.clone();
        forged.body = forged.body.replace("\n10\n", "\n11\n");
        assert_eq!(v.verify_expiry(&forged), None);
        let mut broken = cp.clone();
        broken.signature = "not base64".into();
        assert_eq!(v.verify(&broken), None);
        assert!(Verifier::from_public_b64("AAAA", "test.example").is_none());
        assert_eq!(v.key_id(), cp.key_id);
        assert_eq!(v.key_id().len(), 16);
    }
}

#[cfg(test)]
mod doc_example {
    use super::*;

    /// The signed checkpoint of docs/audit.md's worked example (Ed25519 is
    /// deterministic, so the signature is a fixed test vector).
    #[test]
    fn worked_example_signature() {
        use ed25519_dalek::pkcs8::EncodePrivateKey;
        let pem = SigningKey::from_bytes(&[1u8; 32]).to_pkcs8_pem(Default::default()).unwrap();
        let signer = Signer::from_pem(&pem, "palisade").unwrap();
        let root: Hash = hex::decode("e17611cfec660a7f64cd756e0a34e6fc66796228d8618da60b2c3f678a6bf3c7")
            .unwrap()
            .try_into()
            .unwrap();
        let cp = signer.sign(3, &root, 1_795_423_747_000);
        assert_eq!(cp.key_id, "34750f98bd59fcfc");
        assert_eq!(
            cp.body,
            "palisade-audit/v1\npalisade\n3\n4XYRz+xmCn9kzXVuCjTm/GZ5YijYYY2mCyw/Z4pr88c=\n1795423747000\n"
        );
        assert_eq!(signer.verifier().public_key_b64(), EXAMPLE_PUBLIC_KEY);
        assert_eq!(cp.signature, EXAMPLE_SIGNATURE);
    }

    const EXAMPLE_PUBLIC_KEY: &str = "iojj3XQJ8ZX9UtstPLpdcspnCb8dlBIb83SIAbQPb1w=";
    const EXAMPLE_SIGNATURE: &str =
        "n3/jz0KXOyb4tQOIjAOx/OTK1pGDaut0PZdshWf7NIwpfW6VlrXXYw8/1+68CZP1OAkSaE63lSCXvoPxIR83DQ==";
}
