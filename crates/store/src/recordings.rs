//! Recordings' rows: what a recording is and its sealed file key. The audio
//! itself is in storage (`palisade_recordings`).

use palisade_core::{IdentityId, TenantScope};
use palisade_seal::envelope::{Place, TenantKeys};
use sqlx::{Any, Executor};

use crate::sealed::{open_bytes, seal_bytes};
use crate::Result;

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct RecordingRow {
    pub id: String,
    pub tenant_id: String,
    pub call_id: String,
    pub identity_id: String,
    pub created_at: i64,
    pub duration_ms: i64,
    /// Bytes of the WAV file.
    pub size: i64,
    file_key: String,
}

const COLS: &str = "id, tenant_id, call_id, identity_id, created_at, duration_ms, size, file_key";

/// Where a recording's own key is sealed (its AAD).
pub fn key_place(id: &str) -> Place<'_> {
    Place { table: "recordings", column: "file_key", row: id }
}

impl RecordingRow {
    /// The audio's own key, opened with the tenant's data keys.
    pub fn file_key(&self, scope: &TenantScope, keys: &TenantKeys) -> Result<Vec<u8>> {
        open_bytes(scope, keys, key_place(&self.id), &self.file_key)
    }
}

pub struct NewRecording<'a> {
    pub id: &'a str,
    pub call_id: &'a str,
    pub identity_id: &'a str,
    pub now: i64,
    pub duration_ms: i64,
    pub size: i64,
    pub file_key: &'a [u8],
}

/// Records a recording in `tx`, unless its call's number was erased
/// meanwhile (false then): the call's row is taken first, so an erasure
/// either comes after and finds the recording, or came before and this
/// keeps nothing.
pub async fn insert_unless_erased(
    tx: &mut crate::Tx,
    scope: &TenantScope,
    keys: &TenantKeys,
    r: &NewRecording<'_>,
) -> Result<bool> {
    let taken = sqlx::query(&format!(
        "UPDATE calls SET updated_at = updated_at WHERE tenant_id = $1 AND id = $2 AND NOT ({MASKED})"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(r.call_id)
    .execute(&mut **tx)
    .await?;
    if taken.rows_affected() != 1 {
        return Ok(false);
    }
    insert(&mut **tx, scope, keys, r).await?;
    Ok(true)
}

pub async fn insert<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    keys: &TenantKeys,
    r: &NewRecording<'_>,
) -> Result<()> {
    let sealed = seal_bytes(scope, keys, key_place(r.id), r.file_key)?;
    sqlx::query(
        "INSERT INTO recordings (id, tenant_id, call_id, identity_id, created_at, duration_ms, size, file_key) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
    )
    .bind(r.id)
    .bind(scope.tenant_id().to_string())
    .bind(r.call_id)
    .bind(r.identity_id)
    .bind(r.now)
    .bind(r.duration_ms)
    .bind(r.size)
    .bind(sealed)
    .execute(ex)
    .await?;
    Ok(())
}

/// Newest first, before the `before` id when paging; an agent's only its
/// identity's.
pub async fn list<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    identity: Option<IdentityId>,
    call: Option<&str>,
    limit: i64,
) -> Result<Vec<RecordingRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM recordings WHERE tenant_id = $1 AND ($2 = '' OR identity_id = $2) \
         AND ($3 = '' OR call_id = $3) ORDER BY id DESC LIMIT $4"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(identity.map(|i| i.to_string()).unwrap_or_default())
    .bind(call.unwrap_or_default())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

pub async fn get<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
) -> Result<Option<RecordingRow>> {
    Ok(sqlx::query_as(&format!("SELECT {COLS} FROM recordings WHERE tenant_id = $1 AND id = $2"))
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .fetch_optional(ex)
        .await?)
}

/// Removes the row; false when it was gone already (another delete won).
pub async fn delete<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope, id: &str) -> Result<bool> {
    let r = sqlx::query("DELETE FROM recordings WHERE tenant_id = $1 AND id = $2")
        .bind(scope.tenant_id().to_string())
        .bind(id)
        .execute(ex)
        .await?;
    Ok(r.rows_affected() == 1)
}

/// The tenant's recordings made before `before`, oldest first: retention's
/// next batch.
pub async fn older_than<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    before: i64,
    limit: i64,
) -> Result<Vec<RecordingRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM recordings WHERE tenant_id = $1 AND created_at < $2 ORDER BY created_at LIMIT $3"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(before)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Bytes the tenant's recordings take in all.
pub async fn total_size<'c>(ex: impl Executor<'c, Database = Any>, scope: &TenantScope) -> Result<i64> {
    Ok(sqlx::query_scalar::<_, Option<i64>>("SELECT CAST(SUM(size) AS BIGINT) FROM recordings WHERE tenant_id = $1")
        .bind(scope.tenant_id().to_string())
        .fetch_one(ex)
        .await?
        .unwrap_or(0))
}

/// Up to `limit` of the tenant's recordings of calls whose number an
/// erasure masked (`…1234`).
pub(crate) async fn of_erased_calls<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    limit: i64,
) -> Result<Vec<RecordingRow>> {
    Ok(sqlx::query_as(&format!(
        "SELECT {COLS} FROM recordings WHERE tenant_id = $1 AND call_id IN (SELECT id FROM calls \
         WHERE tenant_id = $1 AND ({MASKED})) ORDER BY id LIMIT $2"
    ))
    .bind(scope.tenant_id().to_string())
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// A call whose number an erasure masked.
const MASKED: &str = "to_number LIKE '…%' OR from_number LIKE '…%'";
