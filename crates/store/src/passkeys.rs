//! Passkeys (WebAuthn credentials) and the ceremonies that make and use
//! them. The relying-party library's own records are kept as JSON (the
//! credential sealed), so this module knows nothing of WebAuthn itself.

use palisade_core::{TenantScope, UserId};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct PasskeyRow {
    pub id: String,
    pub user_id: String,
    pub name: String,
    pub credential_id: String,
    pub passkey_sealed: String,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

const COLUMNS: &str = "id, user_id, name, credential_id, passkey_sealed, created_at, last_used_at";

pub struct NewPasskey<'a> {
    pub id: &'a str,
    pub user: UserId,
    pub name: &'a str,
    pub credential_id: &'a str,
    pub passkey_sealed: &'a str,
    pub now: i64,
}

/// At most this many per person.
pub const MAX_PER_PERSON: i64 = 10;

/// Stores a new passkey, unless the person has `MAX_PER_PERSON` already:
/// whether it was stored.
pub async fn insert(tx: &mut crate::Tx, scope: &TenantScope, p: &NewPasskey<'_>) -> Result<bool> {
    let (t, u) = (scope.tenant_id().to_string(), p.user.to_string());
    // The person's row, locked: two registrations racing count each other.
    sqlx::query("UPDATE users SET updated_at = updated_at WHERE tenant_id = $1 AND id = $2")
        .bind(&t)
        .bind(&u)
        .execute(&mut **tx)
        .await?;
    let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM passkeys WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(&u)
        .fetch_one(&mut **tx)
        .await?;
    if n >= MAX_PER_PERSON {
        return Ok(false);
    }
    sqlx::query(
        "INSERT INTO passkeys (id, tenant_id, user_id, name, credential_id, passkey_sealed, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(p.id)
    .bind(&t)
    .bind(&u)
    .bind(p.name)
    .bind(p.credential_id)
    .bind(p.passkey_sealed)
    .bind(p.now)
    .execute(&mut **tx)
    .await?;
    tx.credentials_changed(&t);
    Ok(true)
}

pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    user: UserId,
) -> Result<Vec<PasskeyRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLUMNS} FROM passkeys WHERE tenant_id = $1 AND user_id = $2 ORDER BY created_at"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(user.to_string())
    .fetch_all(ex)
    .await?)
}

/// The passkey with this credential id, whoever's (a sign-in by passkey
/// learns the person from it): with its tenant.
pub async fn by_credential<'c>(
    ex: impl Executor<'c, Database = Any>,
    credential_id: &str,
) -> Result<Option<(String, PasskeyRow)>> {
    #[derive(sqlx::FromRow)]
    struct Row {
        tenant_id: String,
        #[sqlx(flatten)]
        p: PasskeyRow,
    }
    let r: Option<Row> = sqlx::query_as(&format!("SELECT tenant_id, {COLUMNS} FROM passkeys WHERE credential_id = $1"))
        .bind(credential_id)
        .fetch_optional(ex)
        .await?;
    Ok(r.map(|r| (r.tenant_id, r.p)))
}

/// After a use: the credential as updated (its counter), and when; only
/// over the record it was read from (`was`), so two uses at once cannot
/// put an older counter back.
pub async fn used<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    was: &str,
    passkey_sealed: &str,
    now: i64,
) -> Result<()> {
    sqlx::query(
        "UPDATE passkeys SET passkey_sealed = $4, last_used_at = $5 \
         WHERE tenant_id = $1 AND id = $2 AND passkey_sealed = $3",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(was)
    .bind(passkey_sealed)
    .bind(now)
    .execute(ex)
    .await?;
    Ok(())
}

/// Removes one of the person's passkeys: whether it was theirs. The
/// person's row is locked first, so two removals at once see each other
/// (the last factor under the tenant's rule is checked after).
pub async fn remove(tx: &mut crate::Tx, scope: &TenantScope, user: UserId, id: &str) -> Result<bool> {
    let t = scope.tenant_id().to_string();
    sqlx::query("UPDATE users SET updated_at = updated_at WHERE tenant_id = $1 AND id = $2")
        .bind(&t)
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    let r = sqlx::query("DELETE FROM passkeys WHERE tenant_id = $1 AND user_id = $2 AND id = $3")
        .bind(&t)
        .bind(user.to_string())
        .bind(id)
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&t);
    Ok(r.rows_affected() == 1)
}

/// Removes all of the person's passkeys (their factors were reset).
pub async fn remove_all(tx: &mut crate::Tx, scope: &TenantScope, user: UserId) -> Result<u64> {
    let t = scope.tenant_id().to_string();
    let r = sqlx::query("DELETE FROM passkeys WHERE tenant_id = $1 AND user_id = $2")
        .bind(&t)
        .bind(user.to_string())
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&t);
    Ok(r.rows_affected())
}

/// A ceremony under way.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Ceremony {
    pub purpose: String,
    pub tenant_id: Option<String>,
    pub user_id: Option<String>,
    pub bound_to: Option<String>,
    pub state_json: String,
}

pub async fn start_ceremony<'c>(
    ex: impl Executor<'c, Database = Any>,
    id_hash: &str,
    c: &Ceremony,
    expires_at: i64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO webauthn_ceremonies (id_hash, purpose, tenant_id, user_id, bound_to, state_json, expires_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(id_hash)
    .bind(&c.purpose)
    .bind(&c.tenant_id)
    .bind(&c.user_id)
    .bind(&c.bound_to)
    .bind(&c.state_json)
    .bind(expires_at)
    .execute(ex)
    .await?;
    Ok(())
}

/// Takes the live ceremony, once.
pub async fn take_ceremony<'c>(
    ex: impl Executor<'c, Database = Any>,
    id_hash: &str,
    now: i64,
) -> Result<Option<Ceremony>> {
    Ok(sqlx::query_as(
        "DELETE FROM webauthn_ceremonies WHERE id_hash = $1 AND expires_at > $2 \
         RETURNING purpose, tenant_id, user_id, bound_to, state_json",
    )
    .bind(id_hash)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}
