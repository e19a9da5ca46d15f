//! People of a tenant.

use palisade_core::{TenantScope, UserId};
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct UserRow {
    pub id: String,
    pub tenant_id: String,
    pub email: String,
    pub password_hash: Option<String>,
    pub role: String,
    pub status: String,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, tenant_id, email, password_hash, role, status, created_at, updated_at";

pub struct NewUser<'a> {
    pub id: UserId,
    pub email: &'a str,
    /// The UTS #39 skeleton of the address (`palisade_guard::email::skeleton`).
    pub email_skeleton: &'a str,
    pub password_hash: Option<&'a str>,
    pub role: &'a str,
    pub status: &'a str,
    pub now: i64,
}

pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, u: &NewUser<'_>) -> Result<()> {
    sqlx::query(
        "INSERT INTO users (id, tenant_id, email, password_hash, role, status, created_at, updated_at, email_skeleton) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)",
    )
    .bind(u.id.to_string())
    .bind(scope.tenant_id().to_string())
    .bind(u.email)
    .bind(u.password_hash)
    .bind(u.role)
    .bind(u.status)
    .bind(u.now)
    .bind(u.email_skeleton)
    .execute(ex)
    .await?;
    Ok(())
}

/// The people whose address is `email` or shares its `skeleton`, oldest
/// first: the candidates for "the same address" and "a look-alike", for the
/// caller to tell apart. Sign-up, login and password reset look people up
/// by address before any tenant is known: this is the one unscoped user
/// query. A row whose skeleton is not filled in yet is found by its address.
pub async fn find_by_email<'c>(
    ex: impl Executor<'c, Database = Any>,
    email: &str,
    skeleton: &str,
) -> Result<Vec<UserRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM users WHERE email = $1 OR email_skeleton = $2 ORDER BY created_at, id LIMIT 50"
    ))
    .bind(email)
    .bind(skeleton)
    .fetch_all(ex)
    .await?)
}

/// Up to `limit` people after id `after` whose address has no skeleton
/// yet: `(id, email)`, by id.
pub async fn without_skeleton<'c>(
    ex: impl Executor<'c, Database = Any>,
    after: &str,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as("SELECT id, email FROM users WHERE email_skeleton IS NULL AND id > $1 ORDER BY id LIMIT $2")
        .bind(after)
        .bind(limit)
        .fetch_all(ex)
        .await?)
}

/// Fills in a skeleton computed from `email`, unless the address changed
/// since it was read.
pub async fn set_skeleton<'c>(
    ex: impl Executor<'c, Database = Any>,
    id: &str,
    email: &str,
    skeleton: &str,
) -> Result<()> {
    sqlx::query("UPDATE users SET email_skeleton = $1 WHERE id = $2 AND email = $3")
        .bind(skeleton)
        .bind(id)
        .bind(email)
        .execute(ex)
        .await?;
    Ok(())
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: UserId,
) -> Result<Option<UserRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM users WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .fetch_optional(ex)
        .await?)
}

pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<Vec<UserRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM users WHERE tenant_id = $1 ORDER BY created_at, id"))
        .bind(scope.tenant_id().to_string())
        .fetch_all(ex)
        .await?)
}

pub async fn set_role(tx: &mut crate::Tx, scope: &TenantScope, id: UserId, role: &str, now: i64) -> Result<bool> {
    let r = sqlx::query("UPDATE users SET role = $1, updated_at = $2 WHERE tenant_id = $3 AND id = $4")
        .bind(role)
        .bind(now)
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

/// Marks a pending or invited person active with the password given.
pub async fn activate(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: UserId,
    password_hash: &str,
    now: i64,
) -> Result<bool> {
    set_password(tx, scope, id, password_hash, now, ["pending", "invited"]).await
}

/// Sets the password of an active or pending person after a password
/// reset. A pending sign-up becomes active: the reset proved control of
/// the mailbox and chose the password. Invited people accept their
/// invitation instead.
pub async fn reset_password(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: UserId,
    password_hash: &str,
    now: i64,
) -> Result<bool> {
    set_password(tx, scope, id, password_hash, now, ["active", "pending"]).await
}

/// The person's new password, which leaves them active, if their status is one of `from`.
async fn set_password(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    id: UserId,
    password_hash: &str,
    now: i64,
    from: [&str; 2],
) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE users SET status = 'active', password_hash = $1, updated_at = $2 \
         WHERE tenant_id = $3 AND id = $4 AND status IN ($5, $6)",
    )
    .bind(password_hash)
    .bind(now)
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(from[0])
    .bind(from[1])
    .execute(&mut **tx)
    .await?;
    // Sessions end with a password change; a pending person becomes active.
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

pub async fn delete(tx: &mut crate::Tx, scope: &TenantScope, id: UserId) -> Result<bool> {
    let r = sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(id.to_string())
        .execute(&mut **tx)
        .await?;
    tx.credentials_changed(&scope.tenant_id().to_string());
    Ok(r.rows_affected() == 1)
}

pub async fn count_active_owners<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<i64> {
    Ok(sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE tenant_id = $1 AND role = 'owner' AND status = 'active'")
        .bind(scope.tenant_id().to_string())
        .fetch_one(ex)
        .await?)
}

/// What authentication needs to know about a person on every request: the
/// current role (not the one in the token), whether they and their tenant
/// are active, and whether this token or its family was revoked.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct SessionState {
    pub role: String,
    pub email: String,
    pub tenant_name: String,
    pub user_status: String,
    pub tenant_status: String,
    pub family_revoked: i64,
    pub jti_revoked: i64,
    /// The tenant's abuse-control overrides (JSON), if any.
    pub tenant_limits: Option<String>,
    /// The tenant requires a second factor of owners and admins (1).
    pub tenant_mfa_required: i64,
    /// The person has a confirmed second factor (1).
    pub mfa_enrolled: i64,
}

pub async fn session_state<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: UserId,
    family_id: &str,
    jti: &str,
) -> Result<Option<SessionState>> {
    Ok(sqlx::query_as(
        "SELECT u.role, u.email, t.name AS tenant_name, u.status AS user_status, t.status AS tenant_status, \
           (SELECT COUNT(*) FROM token_families f WHERE f.id = $3 AND f.user_id = u.id AND f.revoked_at IS NULL) AS family_revoked, \
           (SELECT COUNT(*) FROM revoked_jtis r WHERE r.jti = $4) AS jti_revoked, \
           (SELECT settings FROM tenant_limits l WHERE l.tenant_id = u.tenant_id) AS tenant_limits, \
           t.mfa_required AS tenant_mfa_required, \
           (SELECT COUNT(*) FROM user_totp m WHERE m.user_id = u.id AND m.confirmed_at IS NOT NULL) \
             + (SELECT COUNT(*) FROM passkeys k WHERE k.user_id = u.id) AS mfa_enrolled \
         FROM users u JOIN tenants t ON t.id = u.tenant_id \
         WHERE u.tenant_id = $1 AND u.id = $2",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id.to_string())
    .bind(family_id)
    .bind(jti)
    .fetch_optional(ex)
    .await?
    // The family sub-select counts live families; invert it into "revoked".
    .map(|mut s: SessionState| {
        s.family_revoked = i64::from(s.family_revoked == 0);
        s
    }))
}
