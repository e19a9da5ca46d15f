//! What a stopped instance left behind: live calls that nobody drives any
//! more, and messages that were charged but never handed to a carrier.

use palisade_core::TenantScope;
use sqlx::{Any, Executor};

use crate::Result;

/// An instance not seen for this long has stopped (its heartbeat runs far
/// more often).
pub const INSTANCE_GONE_MS: i64 = 60_000;

/// Notes that `instance` is running (its first call registers it), with
/// the KEK versions it holds (comma-separated, newest last).
pub async fn heartbeat(db: &crate::Db, instance: &str, now: i64, kek_versions: &str) -> Result<()> {
    db.write_all(vec![crate::Stmt::new(
        "INSERT INTO instances (id, started_at, seen_at, kek_versions) VALUES ($1, $2, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET seen_at = excluded.seen_at, kek_versions = excluded.kek_versions",
    )
    .bind(instance)
    .bind(now)
    .bind(kek_versions)])
        .await?;
    Ok(())
}

/// A clean stop: the instance is forgotten at once unless it still drives
/// a live call (recovery takes those over once it counts as gone).
pub async fn leave(db: &crate::Db, instance: &str) -> Result<()> {
    db.write_all(vec![crate::Stmt::dynamic(format!(
        "DELETE FROM instances WHERE id = $1 AND NOT EXISTS \
         (SELECT 1 FROM calls WHERE calls.instance_id = instances.id AND calls.status IN {})",
        crate::calls::LIVE
    ))
    .bind(instance)])
        .await?;
    Ok(())
}

/// The KEK versions of the instances seen since `since`: `(id, versions)`.
pub async fn kek_versions_of_live<'c>(
    ex: impl Executor<'c, Database = Any>,
    _proof: &palisade_core::principal::SysadminProof,
    since: i64,
) -> Result<Vec<(String, Option<String>)>> {
    Ok(sqlx::query_as("SELECT id, kek_versions FROM instances WHERE seen_at >= $1 ORDER BY id")
        .bind(since)
        .fetch_all(ex)
        .await?)
}

/// Forgets instances not seen since `before` that drive no live call.
pub async fn forget_instances(db: &crate::Db, before: i64) -> Result<u64> {
    let n = db
        .write_all(vec![crate::Stmt::dynamic(format!(
            "DELETE FROM instances WHERE seen_at < $1 AND NOT EXISTS \
             (SELECT 1 FROM calls WHERE calls.instance_id = instances.id AND calls.status IN {})",
            crate::calls::LIVE
        ))
        .bind(before)])
        .await?;
    Ok(n.first().copied().unwrap_or(0))
}

/// A live call whose instance is gone.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct OrphanCall {
    pub tenant_id: String,
    pub id: String,
    /// When its instance was last seen (0 if never), or its last change.
    pub seen_at: i64,
    pub updated_at: i64,
}

impl OrphanCall {
    /// The last moment the call is known to have been live.
    pub fn last_known(&self) -> i64 {
        self.seen_at.max(self.updated_at)
    }
}

/// Live calls of instances other than `me` not seen since `before`, after
/// `cursor` by id, at most `limit`. A call with no instance (placed before
/// instances were recorded) counts only once it has not changed since
/// `before` either.
pub async fn orphan_calls<'c>(
    ex: impl Executor<'c, Database = Any>,
    me: &str,
    before: i64,
    cursor: &str,
    limit: i64,
) -> Result<Vec<OrphanCall>> {
    Ok(sqlx::query_as(&format!(
        "SELECT c.tenant_id, c.id, COALESCE(i.seen_at, 0) AS seen_at, c.updated_at FROM calls c \
         LEFT JOIN instances i ON i.id = c.instance_id \
         WHERE c.status IN {} AND c.id > $3 \
           AND ((c.instance_id IS NULL AND c.updated_at < $2) \
             OR (c.instance_id <> $1 AND (i.id IS NULL OR i.seen_at < $2))) \
         ORDER BY c.id LIMIT $4",
        crate::calls::LIVE
    ))
    .bind(me)
    .bind(before)
    .bind(cursor)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// Messages still `queued` since before `before`, after `cursor` by id,
/// at most `limit`.
pub async fn unsent_messages<'c>(
    ex: impl Executor<'c, Database = Any>,
    before: i64,
    cursor: &str,
    limit: i64,
) -> Result<Vec<(String, String)>> {
    Ok(sqlx::query_as(
        "SELECT tenant_id, id FROM messages WHERE status = 'queued' AND updated_at < $1 AND id > $2 \
         ORDER BY id LIMIT $3",
    )
    .bind(before)
    .bind(cursor)
    .bind(limit)
    .fetch_all(ex)
    .await?)
}

/// What a message that never reached a carrier had cost.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Unsent {
    pub identity_id: String,
    pub cost: i64,
    pub created_at: i64,
}

/// Fails a message still `queued` with `error_code`; `None` if it has
/// moved meanwhile (then it is not this caller's to refund).
pub async fn fail_unsent<'c>(
    ex: impl Executor<'c, Database = Any>,
    scope: &TenantScope,
    id: &str,
    error_code: &str,
    now: i64,
) -> Result<Option<Unsent>> {
    Ok(sqlx::query_as(
        "UPDATE messages SET status = 'failed', error_code = $3, updated_at = $4 \
         WHERE tenant_id = $1 AND id = $2 AND status = 'queued' RETURNING identity_id, cost, created_at",
    )
    .bind(scope.tenant_id().to_string())
    .bind(id)
    .bind(error_code)
    .bind(now)
    .fetch_optional(ex)
    .await?)
}
