//! Envelope encryption: each tenant's data keys, wrapped by a key-encryption
//! key (KEK) that never enters the database.
//!
//! - A [`Kek`] wraps and unwraps data keys. [`LocalKek`] holds versioned
//!   keys from configuration; a KMS can implement the trait later.
//! - [`TenantKeys`] are one tenant's unwrapped data keys: the newest seals,
//!   every version opens. A stored value is `pk1:<version>:<base64>`, sealed
//!   with the [`Place`] it lives in (table, column, tenant, row) as AAD, so a
//!   ciphertext copied to another row or tenant does not open.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;

use crate::{SealError, Sealer};

/// What starts a sealed column value.
pub const PREFIX: &str = "pk1:";

/// Where a sealed value lives: its AAD.
#[derive(Debug, Clone, Copy)]
pub struct Place<'a> {
    pub table: &'static str,
    pub column: &'static str,
    pub row: &'a str,
}

impl Place<'_> {
    fn aad(&self, tenant: &str) -> Vec<u8> {
        [self.table.as_bytes(), self.column.as_bytes(), tenant.as_bytes(), self.row.as_bytes()].join(&0u8)
    }
}

/// Why a key or a value did not open.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Config(String),
    #[error("no key-encryption key of version {0} is configured")]
    UnknownKek(u32),
    #[error("the tenant has no data key of version {0}")]
    UnknownDataKey(u32),
    #[error("a sealed value is malformed")]
    Malformed,
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// Wraps tenants' data keys. Every version it knows unwraps; the newest wraps.
pub trait Kek: Send + Sync {
    fn newest(&self) -> u32;
    fn versions(&self) -> Vec<u32>;
    /// `key` wrapped under the newest version, bound to its tenant and version.
    fn wrap(&self, tenant: &str, version: u32, key: &[u8; 32]) -> (u32, Vec<u8>);
    /// `key` wrapped under KEK version `kek_version` (one it holds).
    fn wrap_with(
        &self,
        kek_version: u32,
        tenant: &str,
        version: u32,
        key: &[u8; 32],
    ) -> Result<(u32, Vec<u8>), KeyError>;
    fn unwrap(&self, kek_version: u32, tenant: &str, version: u32, wrapped: &[u8]) -> Result<[u8; 32], KeyError>;
}

fn wrap_aad(tenant: &str, version: u32) -> Vec<u8> {
    format!("tenant_keys\0{tenant}\0{version}").into_bytes()
}

/// KEK versions from configuration text: `v<N>:<base64 of 32 bytes>`, one
/// per line or separated by commas (blank lines and `#` comment lines
/// ignored).
pub struct LocalKek {
    versions: BTreeMap<u32, Sealer>,
}

impl LocalKek {
    pub fn parse(text: &str) -> Result<LocalKek, KeyError> {
        let mut versions = BTreeMap::new();
        let entries = text.lines().filter(|l| !l.trim_start().starts_with('#')).flat_map(|l| l.split(','));
        for (n, line) in entries.map(str::trim).filter(|l| !l.is_empty()).enumerate().map(|(n, l)| (n + 1, l)) {
            let bad = || KeyError::Config(format!("entry {n}: expected v<N>:<base64 of 32 bytes>"));
            let (v, key) = line.split_once(':').ok_or_else(bad)?;
            let v: u32 = v.strip_prefix('v').and_then(|v| v.parse().ok()).filter(|v| *v > 0).ok_or_else(bad)?;
            let key: [u8; 32] = B64.decode(key.trim()).ok().and_then(|k| k.try_into().ok()).ok_or_else(bad)?;
            if versions.insert(v, Sealer::new(&key)).is_some() {
                return Err(KeyError::Config(format!("entry {n}: version v{v} is listed twice")));
            }
        }
        if versions.is_empty() {
            return Err(KeyError::Config("no key version: add a line v1:<base64 of 32 random bytes>".into()));
        }
        Ok(LocalKek { versions })
    }

    /// A new line for version `v`, with a fresh random key.
    pub fn new_line(v: u32) -> String {
        format!("v{v}:{}", B64.encode(random_key()))
    }
}

impl Kek for LocalKek {
    fn newest(&self) -> u32 {
        self.versions.keys().next_back().copied().unwrap_or(0)
    }

    fn versions(&self) -> Vec<u32> {
        self.versions.keys().copied().collect()
    }

    fn wrap(&self, tenant: &str, version: u32, key: &[u8; 32]) -> (u32, Vec<u8>) {
        let (&v, sealer) = self.versions.iter().next_back().expect("parse refuses an empty KEK");
        (v, sealer.seal(key, &wrap_aad(tenant, version)))
    }

    fn wrap_with(
        &self,
        kek_version: u32,
        tenant: &str,
        version: u32,
        key: &[u8; 32],
    ) -> Result<(u32, Vec<u8>), KeyError> {
        let sealer = self.versions.get(&kek_version).ok_or(KeyError::UnknownKek(kek_version))?;
        Ok((kek_version, sealer.seal(key, &wrap_aad(tenant, version))))
    }

    fn unwrap(&self, kek_version: u32, tenant: &str, version: u32, wrapped: &[u8]) -> Result<[u8; 32], KeyError> {
        let sealer = self.versions.get(&kek_version).ok_or(KeyError::UnknownKek(kek_version))?;
        let key = sealer.open(wrapped, &wrap_aad(tenant, version))?;
        key.try_into().map_err(|_| KeyError::Malformed)
    }
}

impl std::fmt::Debug for LocalKek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "LocalKek(versions {:?})", self.versions.keys().collect::<Vec<_>>())
    }
}

/// 32 random bytes: a new data key or KEK version.
pub fn random_key() -> [u8; 32] {
    let mut key = [0u8; 32];
    OsRng.fill_bytes(&mut key);
    key
}

/// One tenant's data keys, unwrapped.
pub struct TenantKeys {
    tenant: String,
    keys: BTreeMap<u32, Sealer>,
    /// The version new values are sealed with.
    sealing: u32,
}

impl TenantKeys {
    /// `keys` holds at least one version (the caller creates the first);
    /// the newest seals.
    pub fn new(tenant: impl Into<String>, keys: impl IntoIterator<Item = (u32, [u8; 32])>) -> TenantKeys {
        let keys: BTreeMap<u32, Sealer> = keys.into_iter().map(|(v, k)| (v, Sealer::new(&k))).collect();
        let sealing = keys.keys().next_back().copied().unwrap_or(0);
        TenantKeys { tenant: tenant.into(), keys, sealing }
    }

    /// Seals with `version` rather than the newest (a version too new for
    /// every instance to know yet only opens). Ignored for a version it
    /// does not hold.
    pub fn sealing_with(mut self, version: u32) -> TenantKeys {
        if self.keys.contains_key(&version) {
            self.sealing = version;
        }
        self
    }

    pub fn tenant(&self) -> &str {
        &self.tenant
    }

    /// The version new values are sealed with.
    pub fn newest(&self) -> u32 {
        self.sealing
    }

    pub fn seal(&self, place: Place<'_>, plaintext: &[u8]) -> String {
        let sealer = self.keys.get(&self.sealing).expect("a tenant's keys are never empty");
        format!("{PREFIX}{}:{}", self.sealing, B64.encode(sealer.seal(plaintext, &place.aad(&self.tenant))))
    }

    pub fn seal_text(&self, place: Place<'_>, plaintext: &str) -> String {
        self.seal(place, plaintext.as_bytes())
    }

    pub fn open(&self, place: Place<'_>, stored: &str) -> Result<Vec<u8>, KeyError> {
        let (v, blob) = split(stored).ok_or(KeyError::Malformed)?;
        let sealer = self.keys.get(&v).ok_or(KeyError::UnknownDataKey(v))?;
        Ok(sealer.open(&blob, &place.aad(&self.tenant))?)
    }

    /// A text column: sealed values open; a value not of the sealed form
    /// (`pk1:<version>:<base64>`) was written in clear before encryption
    /// and is returned as it is (the re-sealing job seals it). Every value
    /// written since is sealed, so only such an old value reads this way.
    pub fn open_text(&self, place: Place<'_>, stored: &str) -> Result<String, KeyError> {
        if split(stored).is_none() {
            return Ok(stored.to_owned());
        }
        String::from_utf8(self.open(place, stored)?).map_err(|_| KeyError::Malformed)
    }
}

/// A tenant's secret as stored: sealed under its data keys (`pk1:`), or,
/// written by an older version, under the platform's one static key (the
/// base64 of a [`Sealer`] blob with `legacy_aad`). New values are always
/// sealed with [`TenantKeys::seal`]. `keys` is `None` for a tenant that has
/// none yet: only a value from before them opens.
pub fn open_secret(
    keys: Option<&TenantKeys>,
    legacy: &Sealer,
    place: Place<'_>,
    legacy_aad: &[u8],
    stored: &str,
) -> Result<Vec<u8>, KeyError> {
    if is_sealed(stored) {
        return keys.ok_or(KeyError::UnknownDataKey(version_of(stored).unwrap_or(0)))?.open(place, stored);
    }
    let blob = B64.decode(stored).map_err(|_| KeyError::Malformed)?;
    Ok(legacy.open(&blob, legacy_aad)?)
}

impl std::fmt::Debug for TenantKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TenantKeys({}, versions {:?})", self.tenant, self.keys.keys().collect::<Vec<_>>())
    }
}

pub fn is_sealed(stored: &str) -> bool {
    stored.starts_with(PREFIX)
}

/// The data key version a stored value was sealed with (`None`: plaintext).
pub fn version_of(stored: &str) -> Option<u32> {
    split(stored).map(|(v, _)| v)
}

fn split(stored: &str) -> Option<(u32, Vec<u8>)> {
    let (v, blob) = stored.strip_prefix(PREFIX)?.split_once(':')?;
    Some((v.parse().ok()?, B64.decode(blob).ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: Place<'static> = Place { table: "messages", column: "body", row: "m1" };

    fn kek(lines: &[u32]) -> LocalKek {
        let text: Vec<String> = lines.iter().map(|v| format!("v{v}:{}", B64.encode([*v as u8; 32]))).collect();
        LocalKek::parse(&text.join("\n")).unwrap()
    }

    #[test]
    fn kek_lines_parse_and_bad_ones_say_how_to_fix_them() {
        let k = kek(&[1, 3, 2]);
        assert_eq!((k.newest(), k.versions()), (3, vec![1, 2, 3]));
        assert!(LocalKek::parse("# comment\n\n v1:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA= \n").is_ok());
        for bad in ["", "# only", "1:AAAA", "v0:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=", "v1:short", "vx:AAAA"] {
            assert!(matches!(LocalKek::parse(bad), Err(KeyError::Config(_))), "{bad:?}");
        }
        let twice = format!("{}\n{}", LocalKek::new_line(1), LocalKek::new_line(1));
        assert!(matches!(LocalKek::parse(&twice), Err(KeyError::Config(m)) if m.contains("twice")));
        assert!(LocalKek::parse(&LocalKek::new_line(7)).is_ok());
        let commas = format!("{}, {}", LocalKek::new_line(1), LocalKek::new_line(2));
        assert_eq!(LocalKek::parse(&commas).unwrap().versions(), vec![1, 2]);
    }

    #[test]
    fn a_wrapped_key_opens_only_for_its_tenant_and_version_under_its_kek() {
        let k = kek(&[1, 2]);
        let key = random_key();
        let (v, wrapped) = k.wrap("t1", 1, &key);
        assert_eq!(v, 2, "the newest KEK wraps");
        assert_eq!(k.unwrap(2, "t1", 1, &wrapped).unwrap(), key);
        assert!(k.unwrap(2, "t2", 1, &wrapped).is_err());
        assert!(k.unwrap(2, "t1", 2, &wrapped).is_err());
        assert!(k.unwrap(1, "t1", 1, &wrapped).is_err());
        assert_eq!(k.unwrap(3, "t1", 1, &wrapped), Err(KeyError::UnknownKek(3)));
        // Retired: the version is no longer configured.
        assert_eq!(kek(&[3]).unwrap(2, "t1", 1, &wrapped), Err(KeyError::UnknownKek(2)));
        // Wrapped under an older version on purpose (a rolling restart).
        let (v, older) = k.wrap_with(1, "t1", 1, &key).unwrap();
        assert_eq!((v, k.unwrap(1, "t1", 1, &older).unwrap()), (1, key));
        assert_eq!(k.wrap_with(9, "t1", 1, &key), Err(KeyError::UnknownKek(9)));
    }

    #[test]
    fn a_sealed_value_opens_only_in_its_place_and_tenant() {
        let keys = TenantKeys::new("t1", [(1, [1; 32])]);
        let stored = keys.seal_text(BODY, "hello");
        assert!(stored.starts_with("pk1:1:"));
        assert!(!stored.contains("hello"));
        assert_eq!(keys.open_text(BODY, &stored).unwrap(), "hello");
        for other in [
            Place { row: "m2", ..BODY },
            Place { column: "to_number", ..BODY },
            Place { table: "idempotency_keys", ..BODY },
        ] {
            assert!(keys.open_text(other, &stored).is_err(), "{other:?}");
        }
        let same_key_other_tenant = TenantKeys::new("t2", [(1, [1; 32])]);
        assert!(same_key_other_tenant.open_text(BODY, &stored).is_err());
    }

    #[test]
    fn the_newest_version_seals_and_every_version_opens() {
        let old = TenantKeys::new("t1", [(1, [1; 32])]);
        let both = TenantKeys::new("t1", [(1, [1; 32]), (2, [2; 32])]);
        let sealed_old = old.seal_text(BODY, "a");
        let sealed_new = both.seal_text(BODY, "b");
        assert_eq!((version_of(&sealed_old), version_of(&sealed_new)), (Some(1), Some(2)));
        assert_eq!(both.open_text(BODY, &sealed_old).unwrap(), "a");
        assert_eq!(old.open_text(BODY, &sealed_new), Err(KeyError::UnknownDataKey(2)));
        assert_eq!(both.newest(), 2);
        // Held back: v2 opens but v1 still seals.
        let held = TenantKeys::new("t1", [(1, [1; 32]), (2, [2; 32])]).sealing_with(1);
        assert!(held.seal_text(BODY, "c").starts_with("pk1:1:"));
        assert_eq!(held.open_text(BODY, &sealed_new).unwrap(), "b");
        assert_eq!(TenantKeys::new("t1", [(1, [1; 32])]).sealing_with(7).newest(), 1);
    }

    #[test]
    fn plaintext_from_before_encryption_reads_as_it_is_and_junk_is_refused() {
        let keys = TenantKeys::new("t1", [(1, [1; 32])]);
        assert_eq!(keys.open_text(BODY, "written in 2025").unwrap(), "written in 2025");
        assert_eq!(version_of("written in 2025"), None);
        // An old body that merely starts like a sealed one is still text.
        for text in ["pk1:", "pk1:1", "pk1:x:AAAA", "pk1:1:!!!"] {
            assert_eq!(keys.open_text(BODY, text).unwrap(), text);
        }
        // Of the sealed form but not sealed by us: refused.
        for junk in ["pk1:1:AAAA", "pk1:2:AAAA"] {
            assert!(keys.open_text(BODY, junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn a_secret_opens_under_the_tenant_keys_or_as_the_static_key_sealed_it() {
        let keys = TenantKeys::new("t1", [(1, [1; 32])]);
        let legacy = Sealer::new(&[9; 32]);
        let old = B64.encode(legacy.seal(b"whsec_old", b"t1/e1"));
        assert_eq!(open_secret(Some(&keys), &legacy, BODY, b"t1/e1", &old).unwrap(), b"whsec_old");
        assert!(open_secret(Some(&keys), &legacy, BODY, b"t2/e1", &old).is_err());
        let new = keys.seal(BODY, b"whsec_new");
        assert_eq!(open_secret(Some(&keys), &legacy, BODY, b"t1/e1", &new).unwrap(), b"whsec_new");
        assert!(open_secret(Some(&keys), &legacy, Place { row: "m2", ..BODY }, b"t1/e1", &new).is_err());
        assert!(open_secret(Some(&keys), &legacy, BODY, b"t1/e1", "not base64!").is_err());
        // A tenant without keys yet: only the old form opens.
        assert_eq!(open_secret(None, &legacy, BODY, b"t1/e1", &old).unwrap(), b"whsec_old");
        assert!(open_secret(None, &legacy, BODY, b"t1/e1", &new).is_err());
    }

    #[test]
    fn debug_shows_no_key() {
        let keys = TenantKeys::new("t1", [(1, [1; 32])]);
        assert_eq!(format!("{keys:?}"), "TenantKeys(t1, versions [1])");
        assert_eq!(format!("{:?}", kek(&[1])), "LocalKek(versions [1])");
    }
}
