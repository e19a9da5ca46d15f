//! Platform-wide settings (not tenant data), e.g. the master key's hash.

use sqlx::{Any, Executor};

use crate::Result;

/// Hex SHA-256 of the generated master key (when none is configured).
pub const MASTER_KEY_SHA256: &str = "master_key_sha256";

pub async fn get<'c>(ex: impl Executor<'c, Database = Any>, name: &str) -> Result<Option<String>> {
    Ok(sqlx::query_scalar("SELECT value FROM settings WHERE name = $1").bind(name).fetch_optional(ex).await?)
}

pub async fn put<'c>(ex: impl Executor<'c, Database = Any>, name: &str, value: &str) -> Result<()> {
    sqlx::query(
        "INSERT INTO settings (name, value) VALUES ($1, $2) ON CONFLICT (name) DO UPDATE SET value = excluded.value",
    )
    .bind(name)
    .bind(value)
    .execute(ex)
    .await?;
    Ok(())
}
