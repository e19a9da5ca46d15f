//! SIP: an identity's digest credentials and the contacts its devices
//! registered. The rules (expiry bounds, contact caps, who may register)
//! are `palisade-voice`'s; this is their storage.

use palisade_core::{IdentityId, TenantScope};
use sqlx::{Any, Executor};

use crate::{Result, StoreError};
use rusqlite::OptionalExtension as _;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SipCredentialRow {
    pub id: String,
    pub tenant_id: String,
    pub identity_id: String,
    pub username: String,
    pub realm: String,
    /// Base64 of the sealed HA1 digests (see `palisade-seal`).
    pub ha1_md5_sealed: String,
    pub ha1_sha256_sealed: String,
    pub created_at: i64,
}

const CRED_COLS: &str = "id, tenant_id, identity_id, username, realm, ha1_md5_sealed, ha1_sha256_sealed, created_at";

pub struct NewSipCredential<'a> {
    pub id: &'a str,
    pub identity_id: IdentityId,
    pub username: &'a str,
    pub realm: &'a str,
    pub ha1_md5_sealed: &'a str,
    pub ha1_sha256_sealed: &'a str,
    pub now: i64,
}

/// Stores a credential for an identity of the tenant that is active:
/// false (nothing stored) when there is no such identity, or it is frozen,
/// or it holds `max_per_identity` live credentials already.
pub async fn insert_credential(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    c: &NewSipCredential<'_>,
    max_per_identity: i64,
) -> Result<bool> {
    // Creations for one identity run one at a time (its row is locked on
    // PostgreSQL), so racing ones cannot all see room under the cap.
    if !lock_active_identity(tx, scope, c.identity_id).await? {
        return Ok(false);
    }
    let r = sqlx::query(
        "INSERT INTO sip_credentials (id, tenant_id, identity_id, username, realm, ha1_md5_sealed, \
         ha1_sha256_sealed, created_at) \
         SELECT $1, $2, $3, $4, $5, $6, $7, $8 FROM identities i \
         WHERE i.tenant_id = $2 AND i.id = $3 AND i.status = 'active' \
         AND (SELECT COUNT(*) FROM sip_credentials s WHERE s.tenant_id = $2 AND s.identity_id = $3 \
              AND s.revoked_at IS NULL) < $9",
    )
    .bind(c.id)
    .bind(scope.tenant_id().to_string())
    .bind(c.identity_id.to_string())
    .bind(c.username)
    .bind(c.realm)
    .bind(c.ha1_md5_sealed)
    .bind(c.ha1_sha256_sealed)
    .bind(c.now)
    .bind(max_per_identity)
    .execute(&mut **tx)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// The identity's live credentials, oldest first.
pub async fn list_credentials<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    identity: IdentityId,
) -> Result<Vec<SipCredentialRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {CRED_COLS} FROM sip_credentials WHERE tenant_id = $1 AND identity_id = $2 \
         AND revoked_at IS NULL ORDER BY created_at, id"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(identity.to_string())
    .fetch_all(ex)
    .await?)
}

/// Revokes one credential of the identity, and drops the contacts it
/// registered: false when the tenant's identity has no such live one.
pub async fn revoke_credential(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    identity: IdentityId,
    username: &str,
    now: i64,
) -> Result<Option<String>> {
    let tenant = scope.tenant_id().to_string();
    let id: Option<(String,)> = sqlx::query_as(
        "UPDATE sip_credentials SET revoked_at = $4 WHERE tenant_id = $1 AND identity_id = $2 \
         AND username = $3 AND revoked_at IS NULL RETURNING id",
    )
    .bind(&tenant)
    .bind(identity.to_string())
    .bind(username)
    .bind(now)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((id,)) = id else { return Ok(None) };
    sqlx::query("DELETE FROM sip_registrations WHERE tenant_id = $1 AND credential_id = $2")
        .bind(&tenant)
        .bind(&id)
        .execute(&mut **tx)
        .await?;
    Ok(Some(id))
}

/// A live credential by username, whatever its tenant: the SIP edge
/// learns the tenant from it (and checks the realm it was made for).
pub async fn credential_by_username<'c>(
    ex: impl Executor<'c, Database = Any>,
    username: &str,
) -> Result<Option<SipCredentialRow>> {
    Ok(sqlx::query_as(&format!("SELECT {CRED_COLS} FROM sip_credentials WHERE username = $1 AND revoked_at IS NULL"))
        .bind(username)
        .fetch_optional(ex)
        .await?)
}

/// Drops every credential and registration of an identity (it is being
/// deleted).
pub async fn forget_identity(tx: &mut crate::Tx, scope: &TenantScope, identity: IdentityId) -> Result<()> {
    for table in ["sip_credentials", "sip_registrations"] {
        sqlx::query(&format!("DELETE FROM {table} WHERE tenant_id = $1 AND identity_id = $2"))
            .bind(scope.tenant_id().to_string())
            .bind(identity.to_string())
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct RegistrationRow {
    pub identity_id: String,
    pub credential_id: String,
    pub contact_uri: String,
    pub transport: String,
    pub source_addr: String,
    pub instance_id: String,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: Option<String>,
    pub expires_at: i64,
    pub updated_at: i64,
}

// The registrar's statements, shared by the transaction path (sqlx) and the
// SQLite writer (rusqlite, where `$N` are numbered in order of appearance).
const LIST_BINDINGS: &str = "SELECT identity_id, credential_id, contact_uri, transport, source_addr, instance_id, \
    call_id, cseq, user_agent, expires_at, updated_at FROM sip_registrations WHERE tenant_id = $1 \
    AND identity_id = $2 AND expires_at > $3 ORDER BY contact_uri";
const REMOVE_ONE: &str = "DELETE FROM sip_registrations WHERE tenant_id = $1 AND identity_id = $2 AND contact_uri = $3";
const REMOVE_ALL: &str = "DELETE FROM sip_registrations WHERE tenant_id = $1 AND identity_id = $2";
const ACTIVE_IDENTITY: &str = "SELECT 1 FROM identities i JOIN tenants t ON t.id = i.tenant_id \
    WHERE i.tenant_id = $1 AND i.id = $2 AND i.status = 'active' AND t.status = 'active'";
/// Adds or refreshes a binding; a binding of the same Call-ID with a CSeq
/// not above the stored one is left alone (RFC 3261 §10.3 step 7).
const UPSERT_BINDING: &str = "INSERT INTO sip_registrations (tenant_id, identity_id, credential_id, contact_uri, \
    transport, source_addr, instance_id, call_id, cseq, user_agent, expires_at, updated_at) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
    ON CONFLICT (identity_id, contact_uri) DO UPDATE SET credential_id = excluded.credential_id, \
    transport = excluded.transport, source_addr = excluded.source_addr, instance_id = excluded.instance_id, \
    call_id = excluded.call_id, cseq = excluded.cseq, user_agent = excluded.user_agent, \
    expires_at = excluded.expires_at, updated_at = excluded.updated_at \
    WHERE sip_registrations.tenant_id = excluded.tenant_id AND (sip_registrations.call_id <> excluded.call_id \
    OR sip_registrations.cseq < excluded.cseq OR sip_registrations.expires_at <= $12)";

/// The identity's bindings in force at `now`, soonest to expire last.
pub async fn list_registrations<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    identity: IdentityId,
    now: i64,
) -> Result<Vec<RegistrationRow>> {
    Ok(sqlx::query_as(LIST_BINDINGS)
        .bind(scope.tenant_id().to_string())
        .bind(identity.to_string())
        .bind(now)
        .fetch_all(ex)
        .await?)
}

/// The holder of a verified number (one on the platform): its tenant,
/// identity, and whether both are active (neither frozen nor gone).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NumberHolder {
    pub tenant_id: String,
    pub identity_id: String,
    pub active: bool,
}

/// Who holds `number` verified, across tenants: the callee of a call a
/// trunk brings in. An unverified number is nobody's here (several tenants
/// may claim it).
pub async fn verified_holder<'c>(ex: impl Executor<'c, Database = Any>, number: &str) -> Result<Option<NumberHolder>> {
    let row: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT i.tenant_id, i.id, i.status, t.status FROM identities i JOIN tenants t ON t.id = i.tenant_id \
         WHERE i.number = $1 AND i.number_verified_at IS NOT NULL",
    )
    .bind(number)
    .fetch_optional(ex)
    .await?;
    Ok(row.map(|(tenant_id, identity_id, i, t)| NumberHolder {
        tenant_id,
        identity_id,
        active: i == "active" && t == "active",
    }))
}

pub struct Binding<'a> {
    pub identity_id: IdentityId,
    pub credential_id: &'a str,
    pub contact_uri: &'a str,
    pub transport: &'a str,
    pub source_addr: &'a str,
    pub instance_id: &'a str,
    pub call_id: &'a str,
    pub cseq: i64,
    pub user_agent: Option<&'a str>,
    pub expires_at: i64,
}

/// Adds or refreshes a binding. A binding of the same Call-ID with a CSeq
/// not above the stored one is left alone (a retransmission or a request
/// out of order, RFC 3261 §10.3 step 7): false then.
pub async fn upsert_registration(tx: &mut crate::Tx, scope: &TenantScope, b: &Binding<'_>, now: i64) -> Result<bool> {
    let r = sqlx::query(UPSERT_BINDING)
        .bind(scope.tenant_id().to_string())
        .bind(b.identity_id.to_string())
        .bind(b.credential_id)
        .bind(b.contact_uri)
        .bind(b.transport)
        .bind(b.source_addr)
        .bind(b.instance_id)
        .bind(b.call_id)
        .bind(b.cseq)
        .bind(b.user_agent)
        .bind(b.expires_at)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes one binding (`Expires: 0`), or all of them (`contact` none,
/// `Contact: *`).
pub async fn remove_registrations(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    identity: IdentityId,
    contact: Option<&str>,
) -> Result<u64> {
    let q = match contact {
        Some(_) => REMOVE_ONE,
        None => REMOVE_ALL,
    };
    let mut q = sqlx::query(q).bind(scope.tenant_id().to_string()).bind(identity.to_string());
    if let Some(c) = contact {
        q = q.bind(c);
    }
    Ok(q.execute(&mut **tx).await?.rows_affected())
}

/// Bindings in force of the identity at `now` (for the contact cap).
pub async fn count_registrations(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    identity: IdentityId,
    now: i64,
) -> Result<i64> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT COUNT(*) FROM sip_registrations WHERE tenant_id = $1 AND identity_id = $2 AND expires_at > $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(identity.to_string())
    .bind(now)
    .fetch_one(&mut **tx)
    .await?;
    Ok(n)
}

/// Whether the identity and its tenant are both active (neither frozen
/// nor gone): only then may its devices register or call. Locks the
/// identity's row (PostgreSQL) until the transaction ends, so its
/// registrations change one at a time and its contact cap holds.
pub async fn lock_active_identity(tx: &mut crate::Tx, scope: &TenantScope, identity: IdentityId) -> Result<bool> {
    let sql = match tx.dialect() {
        crate::Dialect::Postgres => {
            "SELECT 1 FROM identities i JOIN tenants t ON t.id = i.tenant_id \
             WHERE i.tenant_id = $1 AND i.id = $2 AND i.status = 'active' AND t.status = 'active' FOR UPDATE OF i"
        }
        crate::Dialect::Sqlite => {
            "SELECT 1 FROM identities i JOIN tenants t ON t.id = i.tenant_id \
             WHERE i.tenant_id = $1 AND i.id = $2 AND i.status = 'active' AND t.status = 'active'"
        }
    };
    let row: Option<(i32,)> = sqlx::query_as(sql)
        .bind(scope.tenant_id().to_string())
        .bind(identity.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

/// One contact of a REGISTER, owned (for the SQLite writer thread).
#[derive(Debug, Clone)]
pub enum BindingChange {
    /// Add or refresh, until `expires_at`.
    Bind { contact_uri: String, expires_at: i64 },
    /// `Expires: 0`: remove it (`None`: all of the identity's, `Contact: *`).
    Remove { contact_uri: Option<String> },
}

/// A whole REGISTER's changes to an identity's bindings.
#[derive(Debug, Clone)]
pub struct Registration {
    pub identity_id: IdentityId,
    pub credential_id: String,
    pub transport: String,
    pub source_addr: String,
    pub instance_id: String,
    pub call_id: String,
    pub cseq: i64,
    pub user_agent: Option<String>,
    pub changes: Vec<BindingChange>,
    pub max_contacts: i64,
}

/// Why a REGISTER changed nothing (the writes were undone).
pub const FROZEN: &str = "frozen";
pub const OUT_OF_ORDER: &str = "out_of_order";
pub const TOO_MANY_CONTACTS: &str = "too_many_contacts";

/// SQLite: the whole REGISTER in one hop to the group-commit writer, all of
/// it or nothing (its savepoint): the bindings in force after it, or
/// [`StoreError::Refused`] with [`FROZEN`], [`OUT_OF_ORDER`] or
/// [`TOO_MANY_CONTACTS`]. `None` on PostgreSQL (use a transaction there).
/// The same rules as the transaction path: identity and tenant active, the
/// upsert's order rule, the cap counted after the changes.
pub async fn register_sqlite(
    db: &crate::Db,
    scope: &TenantScope,
    r: Registration,
    now: i64,
) -> Option<Result<Vec<RegistrationRow>>> {
    let tenant = scope.tenant_id().to_string();
    db.write_sqlite(move |c| {
        let identity = r.identity_id.to_string();
        // Cached statements: a REGISTER's SQL is parsed once per connection.
        let active: Option<i64> = c
            .prepare_cached(ACTIVE_IDENTITY)?
            .query_row(rusqlite::params![tenant, identity], |row| row.get(0))
            .optional()?;
        if active.is_none() {
            return Err(StoreError::Refused(FROZEN));
        }
        for change in &r.changes {
            match change {
                BindingChange::Remove { contact_uri: Some(uri) } => {
                    c.prepare_cached(REMOVE_ONE)?.execute(rusqlite::params![tenant, identity, uri])?;
                }
                BindingChange::Remove { contact_uri: None } => {
                    c.prepare_cached(REMOVE_ALL)?.execute(rusqlite::params![tenant, identity])?;
                }
                BindingChange::Bind { contact_uri, expires_at } => {
                    let n = c.prepare_cached(UPSERT_BINDING)?.execute(rusqlite::params![
                        tenant,
                        identity,
                        r.credential_id,
                        contact_uri,
                        r.transport,
                        r.source_addr,
                        r.instance_id,
                        r.call_id,
                        r.cseq,
                        r.user_agent,
                        expires_at,
                        now
                    ])?;
                    if n != 1 {
                        return Err(StoreError::Refused(OUT_OF_ORDER));
                    }
                }
            }
        }
        let mut stmt = c.prepare_cached(LIST_BINDINGS)?;
        let rows = stmt
            .query_map(rusqlite::params![tenant, identity, now], |row| {
                Ok(RegistrationRow {
                    identity_id: row.get(0)?,
                    credential_id: row.get(1)?,
                    contact_uri: row.get(2)?,
                    transport: row.get(3)?,
                    source_addr: row.get(4)?,
                    instance_id: row.get(5)?,
                    call_id: row.get(6)?,
                    cseq: row.get(7)?,
                    user_agent: row.get(8)?,
                    expires_at: row.get(9)?,
                    updated_at: row.get(10)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if i64::try_from(rows.len()).unwrap_or(i64::MAX) > r.max_contacts {
            return Err(StoreError::Refused(TOO_MANY_CONTACTS));
        }
        Ok(rows)
    })
    .await
}
