//! SIP digest credentials. A credential is a username and password for one
//! identity; only HA1 = H(username:realm:password) per algorithm is kept,
//! sealed and bound to its row. The password is shown once, at creation.
//!
//! The realm names the tenant: `<tenant id>.<domain>` (the `sip.domain`
//! setting), so a device's realm tells which tenant it belongs to, and a
//! credential answers for its own realm only.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{LazyLock, Mutex};

use palisade_core::{IdentityId, TenantId, TenantScope};
use palisade_digest::Algorithm;
use palisade_keys::{Keyring, TenantKeys};
use palisade_seal::envelope::{open_secret, Place};
use palisade_seal::Sealer;
use palisade_store::sip::{NewSipCredential, SipCredentialRow};

use crate::{Result, VoiceError};

/// Live credentials one identity may hold (one per device, or a few).
pub const MAX_PER_IDENTITY: i64 = 10;

/// Username length after its `u` prefix: lowercase letters and digits, so
/// it is safe in a SIP URI's user part without escaping.
const USERNAME_LEN: usize = 15;
/// Password length (base62, about 143 bits).
const PASSWORD_LEN: usize = 24;

/// The realm of a tenant's SIP devices.
pub fn realm(tenant: TenantId, domain: &str) -> String {
    format!("{tenant}.{domain}")
}

/// A new credential, the password in clear this once (not in `Debug`).
pub struct Created {
    pub id: String,
    pub username: String,
    pub password: String,
    pub realm: String,
    /// `sip:<username>@<realm>`.
    pub aor: String,
}

impl std::fmt::Debug for Created {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Created").field("id", &self.id).field("username", &self.username).finish_non_exhaustive()
    }
}

/// Where the HA1 of one algorithm is sealed under the tenant's keys: a
/// blob copied to another row, column or tenant does not open.
fn place(credential_id: &str, algorithm: Algorithm) -> Place<'_> {
    let column = match algorithm {
        Algorithm::Md5 => "ha1_md5",
        Algorithm::Sha256 => "ha1_sha256",
    };
    Place { table: "sip_credentials", column, row: credential_id }
}

/// The AAD of a HA1 sealed by the static key (before tenants had keys):
/// the row's tenant, id and the algorithm.
fn aad(tenant: &str, credential_id: &str, algorithm: Algorithm) -> Vec<u8> {
    format!("sip_credentials/{tenant}/{credential_id}/{}", algorithm.name()).into_bytes()
}

/// HA1s, for the re-sealing job (older ones were sealed by the static key).
pub const SEALED_COLUMNS: [palisade_keys::reseal::SealedColumn; 2] = {
    use palisade_keys::reseal::SealedColumn;
    use palisade_store::static_sealed::Column;
    fn md5_place(id: &str) -> Place<'_> {
        place(id, Algorithm::Md5)
    }
    fn sha256_place(id: &str) -> Place<'_> {
        place(id, Algorithm::Sha256)
    }
    fn md5_aad(tenant: &str, id: &str) -> Vec<u8> {
        aad(tenant, id, Algorithm::Md5)
    }
    fn sha256_aad(tenant: &str, id: &str) -> Vec<u8> {
        aad(tenant, id, Algorithm::Sha256)
    }
    const fn column(column: &'static str) -> Column {
        Column { table: "sip_credentials", id: "id", column }
    }
    [
        SealedColumn { column: column("ha1_md5_sealed"), place: md5_place, legacy_aad: Some(md5_aad) },
        SealedColumn { column: column("ha1_sha256_sealed"), place: sha256_place, legacy_aad: Some(sha256_aad) },
    ]
};

/// Not a secret (it names the account), but not guessable either: the
/// password alone stands between a guesser and the account.
fn lower_alnum(n: usize) -> String {
    palisade_auth::token::random_base62(n).to_ascii_lowercase()
}

/// Makes a credential for an active identity of the tenant, in the
/// caller's transaction (with its audit event). `None`: no such identity,
/// it is frozen, or it holds [`MAX_PER_IDENTITY`] already.
pub async fn create(
    tx: &mut palisade_store::Tx,
    keys: &TenantKeys,
    scope: &TenantScope,
    identity: IdentityId,
    domain: &str,
    now: i64,
) -> Result<Option<Created>> {
    if keys.tenant() != scope.tenant_id().to_string() {
        return Err(VoiceError::Sealed("another tenant's keys were given".into()));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let realm = realm(scope.tenant_id(), domain);
    let username = format!("u{}", lower_alnum(USERNAME_LEN));
    let password = palisade_auth::token::random_base62(PASSWORD_LEN);
    let sealed = |alg: Algorithm| {
        let ha1 = palisade_digest::ha1(alg, &username, &realm, &password);
        keys.seal(place(&id, alg), ha1.as_bytes())
    };
    let (md5, sha256) = (sealed(Algorithm::Md5), sealed(Algorithm::Sha256));
    let new = NewSipCredential {
        id: &id,
        identity_id: identity,
        username: &username,
        realm: &realm,
        ha1_md5_sealed: &md5,
        ha1_sha256_sealed: &sha256,
        now,
    };
    if !palisade_store::sip::insert_credential(tx, scope, &new, MAX_PER_IDENTITY).await? {
        return Ok(None);
    }
    let aor = format!("sip:{username}@{realm}");
    Ok(Some(Created { id, username, password, realm, aor }))
}

/// A credential as the digest check needs it: whose it is and its HA1s.
#[derive(Clone)]
pub struct DigestUser {
    pub credential_id: String,
    pub username: String,
    pub tenant: TenantId,
    pub identity: IdentityId,
    pub realm: String,
    ha1_md5: String,
    ha1_sha256: String,
}

impl DigestUser {
    /// The HA1 of one algorithm (lowercase hex).
    pub fn ha1(&self, algorithm: Algorithm) -> &str {
        match algorithm {
            Algorithm::Md5 => &self.ha1_md5,
            Algorithm::Sha256 => &self.ha1_sha256,
        }
    }

    /// The tenant the credential belongs to: the SIP edge acts in it alone.
    pub fn scope(&self) -> TenantScope {
        TenantScope::for_system(self.tenant)
    }
}

impl std::fmt::Debug for DigestUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestUser")
            .field("credential_id", &self.credential_id)
            .field("tenant", &self.tenant)
            .field("identity", &self.identity)
            .field("realm", &self.realm)
            .finish_non_exhaustive()
    }
}

/// The live credential of `username`, its HA1s opened. `None` when there
/// is none (revoked, or never made).
/// `legacy` opens HA1s sealed by the static key before tenants had keys.
pub async fn for_digest(
    db: &palisade_store::Db,
    keys: &Keyring,
    legacy: &Sealer,
    username: &str,
) -> Result<Option<DigestUser>> {
    let Some(row) = palisade_store::sip::credential_by_username(db.reader(), username).await? else {
        return Ok(None);
    };
    let tenant: TenantId =
        row.tenant_id.parse().map_err(|_| VoiceError::Sealed(format!("credential {}: tenant id", row.id)))?;
    // Reached before the caller is authenticated: never makes a key.
    let tenant_keys = keys.existing(&TenantScope::for_system(tenant)).await?;
    open(tenant_keys.as_deref(), legacy, tenant, row).map(Some)
}

fn open(keys: Option<&TenantKeys>, legacy: &Sealer, tenant: TenantId, row: SipCredentialRow) -> Result<DigestUser> {
    let bad = |what: &str| VoiceError::Sealed(format!("credential {}: {what}", row.id));
    let identity: IdentityId = row.identity_id.parse().map_err(|_| bad("identity id"))?;
    let unseal = |stored: &str, alg: Algorithm| -> Result<String> {
        let legacy_aad = aad(&row.tenant_id, &row.id, alg);
        let plain =
            open_secret(keys, legacy, place(&row.id, alg), &legacy_aad, stored).map_err(|e| bad(&e.to_string()))?;
        String::from_utf8(plain).map_err(|_| bad("not text"))
    };
    let ha1_md5 = unseal(&row.ha1_md5_sealed, Algorithm::Md5)?;
    let ha1_sha256 = unseal(&row.ha1_sha256_sealed, Algorithm::Sha256)?;
    Ok(DigestUser {
        credential_id: row.id,
        username: row.username,
        tenant,
        identity,
        realm: row.realm,
        ha1_md5,
        ha1_sha256,
    })
}

/// How long an opened credential is reused without reading it again: the
/// longest a credential revoked (or its identity deleted) through another
/// instance, or by other means than [`forget`], still authenticates here.
pub const RECENT_TTL_MS: i64 = 2_000;
/// Most credentials kept opened.
const RECENT_MAX: usize = 10_000;

/// Credentials that answered a digest challenge rightly lately, opened, by
/// username, in this process: a device re-registering or calling again
/// within [`RECENT_TTL_MS`] costs no database read. Only a right answer
/// puts one here, so guessers cannot fill it, and an unknown username is
/// never remembered (a new credential works at once).
struct Recent {
    entries: Mutex<HashMap<String, (i64, DigestUser)>>,
    /// Moves on every [`forget`]: a read that began before it is not kept.
    generation: AtomicU64,
}

static RECENT: LazyLock<Recent> =
    LazyLock::new(|| Recent { entries: Mutex::new(HashMap::new()), generation: AtomicU64::new(0) });

fn entries() -> std::sync::MutexGuard<'static, HashMap<String, (i64, DigestUser)>> {
    RECENT.entries.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Taken before reading a credential, handed to [`remember`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket(u64);

pub(crate) fn ticket() -> Ticket {
    Ticket(RECENT.generation.load(Ordering::Acquire))
}

/// The credential of `username` if it answered rightly within the TTL.
pub(crate) fn recent(username: &str, now_ms: i64) -> Option<DigestUser> {
    let entries = entries();
    let (at, user) = entries.get(username)?;
    (*at <= now_ms && now_ms < at.saturating_add(RECENT_TTL_MS)).then(|| user.clone())
}

/// Keeps a credential that just answered rightly, unless something was
/// forgotten since `ticket` was taken (the read may predate a revocation).
pub(crate) fn remember(ticket: Ticket, user: &DigestUser, now_ms: i64) {
    let mut entries = entries();
    if RECENT.generation.load(Ordering::Acquire) != ticket.0 {
        return;
    }
    if entries.len() >= RECENT_MAX && !entries.contains_key(&user.username) {
        entries.retain(|_, (at, _)| *at <= now_ms && now_ms < at.saturating_add(RECENT_TTL_MS));
        if entries.len() >= RECENT_MAX {
            // All fresh: start again rather than grow; each costs one read.
            entries.clear();
        }
    }
    entries.insert(user.username.clone(), (now_ms, user.clone()));
}

/// Forgets the credential of `username` in this process at once: call it
/// when it is revoked. Other instances forget it within [`RECENT_TTL_MS`].
pub fn forget(username: &str) {
    let mut entries = entries();
    RECENT.generation.fetch_add(1, Ordering::AcqRel);
    entries.remove(username);
}

/// Forgets every credential of an identity in this process at once: call
/// it when the identity is deleted.
pub fn forget_identity(identity: IdentityId) {
    let mut entries = entries();
    RECENT.generation.fetch_add(1, Ordering::AcqRel);
    entries.retain(|_, (_, u)| u.identity != identity);
}

#[cfg(test)]
mod recent_tests {
    use super::*;

    fn user(n: usize, identity: IdentityId) -> DigestUser {
        DigestUser {
            credential_id: format!("c{n}"),
            username: format!("u{n}"),
            tenant: TenantId::new(),
            identity,
            realm: "r".into(),
            ha1_md5: String::new(),
            ha1_sha256: String::new(),
        }
    }

    #[test]
    fn recent_credentials_are_bounded_and_forgotten_by_name_or_identity() {
        const T: i64 = 1_700_000_000_000;
        let (one, other) = (IdentityId::new(), IdentityId::new());
        for n in 0..RECENT_MAX + 10 {
            remember(ticket(), &user(n, other), T);
        }
        assert!(entries().len() <= RECENT_MAX);
        let last = RECENT_MAX + 9;
        assert!(recent(&format!("u{last}"), T + RECENT_TTL_MS - 1).is_some());
        assert!(recent(&format!("u{last}"), T + RECENT_TTL_MS).is_none());
        assert!(recent(&format!("u{last}"), T - 1).is_none(), "the clock went back");
        // A read that began before a revocation is not kept.
        let before = ticket();
        forget("u0");
        remember(before, &user(0, one), T);
        assert!(recent("u0", T).is_none());
        remember(ticket(), &user(0, one), T);
        remember(ticket(), &user(1, one), T);
        forget("u0");
        assert!(recent("u0", T).is_none() && recent("u1", T).is_some());
        forget_identity(one);
        assert!(recent("u1", T).is_none() && recent(&format!("u{last}"), T).is_some());
    }
}
