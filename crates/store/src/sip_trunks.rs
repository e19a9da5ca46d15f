//! SIP trunks: the operator's upstream carriers. No tenant owns one, so
//! every function an operator request reaches takes a [`SysadminProof`];
//! the rules (URI, CIDRs, sealed password) are `palisade-voice`'s.

use palisade_core::principal::SysadminProof;
use sqlx::{Any, Executor};

use crate::Result;

#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct TrunkRow {
    pub id: String,
    pub name: String,
    pub uri: String,
    /// `udp`, `tcp` or `tls`.
    pub transport: String,
    pub auth_username: Option<String>,
    /// Base64 of the sealed password (see `palisade-seal`).
    pub auth_password_sealed: Option<String>,
    /// JSON array of CIDRs.
    pub source_cidrs: String,
    /// 1 or 0.
    pub enabled: i64,
    pub created_at: i64,
    pub updated_at: i64,
}

const COLS: &str = "id, name, uri, transport, auth_username, auth_password_sealed, source_cidrs, enabled, \
    created_at, updated_at";

/// Stores a new trunk (`created_at` and `updated_at` as given). A name
/// taken already is a unique violation.
pub async fn insert<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof, t: &TrunkRow) -> Result<()> {
    sqlx::query(&format!("INSERT INTO sip_trunks ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)"))
        .bind(&t.id)
        .bind(&t.name)
        .bind(&t.uri)
        .bind(&t.transport)
        .bind(t.auth_username.as_deref())
        .bind(t.auth_password_sealed.as_deref())
        .bind(&t.source_cidrs)
        .bind(t.enabled)
        .bind(t.created_at)
        .bind(t.updated_at)
        .execute(ex)
        .await?;
    Ok(())
}

/// Every trunk, by name.
pub async fn list<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof) -> Result<Vec<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks ORDER BY name, id")).fetch_all(ex).await?)
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    id: &str,
) -> Result<Option<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks WHERE id = $1")).bind(id).fetch_optional(ex).await?)
}

/// The trunk, its row locked (PostgreSQL) until the transaction ends, so
/// that a change is made to what was read and concurrent changes do not
/// undo each other.
pub async fn lock(tx: &mut crate::Tx, _proof: &SysadminProof, id: &str) -> Result<Option<TrunkRow>> {
    let sql = match tx.dialect() {
        crate::Dialect::Postgres => format!("SELECT {COLS} FROM sip_trunks WHERE id = $1 FOR UPDATE"),
        crate::Dialect::Sqlite => format!("SELECT {COLS} FROM sip_trunks WHERE id = $1"),
    };
    Ok(sqlx::query_as(&sql).bind(id).fetch_optional(&mut **tx).await?)
}

/// Writes every column but `id`, `name` and `created_at`. False when there
/// is no such trunk.
pub async fn update<'c>(ex: impl Executor<'c, Database = Any>, _proof: &SysadminProof, t: &TrunkRow) -> Result<bool> {
    let r = sqlx::query(
        "UPDATE sip_trunks SET uri = $2, transport = $3, auth_username = $4, auth_password_sealed = $5, \
         source_cidrs = $6, enabled = $7, updated_at = $8 WHERE id = $1",
    )
    .bind(&t.id)
    .bind(&t.uri)
    .bind(&t.transport)
    .bind(t.auth_username.as_deref())
    .bind(t.auth_password_sealed.as_deref())
    .bind(&t.source_cidrs)
    .bind(t.enabled)
    .bind(t.updated_at)
    .execute(ex)
    .await?;
    Ok(r.rows_affected() == 1)
}

/// Removes a trunk; its name, if it had one.
pub async fn delete<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &SysadminProof,
    id: &str,
) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("DELETE FROM sip_trunks WHERE id = $1 RETURNING name").bind(id).fetch_optional(ex).await?)
}

/// The enabled trunks, oldest first, for the SIP edge. No proof: the edge
/// reads them on its own behalf, not for a caller, to tell which sources
/// are carriers; nothing here belongs to a tenant, and the password stays
/// sealed until the edge itself opens it to answer a trunk's challenge.
pub async fn enabled_trunks<'c>(ex: impl Executor<'c, Database = Any>) -> Result<Vec<TrunkRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM sip_trunks WHERE enabled = 1 ORDER BY created_at, id"))
        .fetch_all(ex)
        .await?)
}
