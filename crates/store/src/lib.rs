//! Storage: one layer over SQLite and PostgreSQL (sqlx `Any`), per-dialect
//! migrations, and repositories. Every function that touches tenant data
//! takes a [`TenantScope`](palisade_core::TenantScope) and filters by it.
//! Writes take shared rows in the order [`locks`] sets out.

pub mod api_keys;
pub mod audit;
pub mod audit_copy;
pub mod calls;
mod coalesce;
pub mod credits;
mod db;
mod durable;
pub mod email_codes;
pub mod erasure;
mod error;
pub mod exports;
pub mod group_commit;
pub mod identities;
pub mod locks;
pub mod mail_outbox;
pub mod messages;
pub mod mfa;
pub mod number_verifications;
pub mod oidc;
pub mod operators;
pub mod passkeys;
mod pg_batch;
mod pg_lookup;
mod read;
pub mod recordings;
pub mod recovery;
pub mod retention;
mod sealed;
pub mod settings;
pub mod sip;
pub mod sip_trunks;
pub mod static_sealed;
pub mod stream_tickets;
pub mod tenant_keys;
pub mod tenants;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tokens;
pub mod users;
pub mod webhooks;
pub mod write;

#[cfg(test)]
mod audit_tests;
#[cfg(test)]
mod credential_writes;
#[cfg(test)]
mod credits_tests;

pub use db::{create_private_dir, CredentialHook, Db, Dialect, Tx};
pub use error::StoreError;
pub use read::FromSqlite;
pub use rusqlite;
pub use write::{Stmt, SumMerge, Val};

pub type Result<T> = std::result::Result<T, StoreError>;
