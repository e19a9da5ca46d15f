//! Data exports (GDPR): everything held about a tenant, or about one person
//! of it, as a tar archive of JSON lines (`<table>.jsonl`) with a
//! `manifest.json` (files, record counts, SHA-256 of each) and a
//! `SHA256SUMS`. No secret goes in: no key or password hash, sealed secret
//! or token (the store names the columns an export shows). Message bodies
//! are opened with the tenant's keys; the archive is sealed under them.
//!
//! An export is a job: requested (a `pending` row), built by the instance
//! that took the request, or after a restart by any instance (a lease in
//! the row), then `ready` until it expires.

use std::sync::Arc;

use palisade_audit::{Context, Event};
use palisade_core::principal::{Actor, SysadminProof};
use palisade_core::{TenantId, TenantScope};
use palisade_keys::Keyring;
use palisade_store::{Db, StoreError};
use sha2::{Digest, Sha256};

/// How long a worker holds an export it builds before another may take it.
pub const LEASE_MS: i64 = 10 * 60_000;
/// The largest archive (it is kept sealed in the database).
pub const MAX_ARCHIVE_BYTES: usize = 64 << 20;

/// Exports built at once by this instance: each is built in memory.
static BUILDING: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);

/// Who the export is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    Tenant,
    User(String),
}

pub struct Exports {
    pub db: Db,
    pub keys: Arc<Keyring>,
    pub clock: Arc<dyn palisade_core::Clock>,
}

impl Exports {
    /// Builds the export `id` of the tenant if it is still pending and no
    /// other worker holds it; records the outcome (and its audit event)
    /// unless another worker took it over meanwhile.
    pub async fn run(&self, scope: &TenantScope, id: &str) -> palisade_store::Result<()> {
        let Ok(_slot) = BUILDING.acquire().await else { return Ok(()) };
        let now = self.clock.now_ms();
        let token = uuid::Uuid::new_v4().to_string();
        let mut tx = self.db.begin().await?;
        let mine = palisade_store::exports::claim(&mut *tx, scope, id, &token, now, now + LEASE_MS).await?;
        tx.commit().await?;
        if !mine {
            return Ok(());
        }
        let Some(row) = palisade_store::exports::get(self.db.reader(), scope, id).await? else { return Ok(()) };
        let subject = match (row.subject.as_str(), row.user_id) {
            ("user", Some(u)) => Subject::User(u),
            _ => Subject::Tenant,
        };
        // Built, checked and sealed before the write (it can be large).
        let built = match self.keys.of(scope).await {
            Ok(keys) => match archive(&self.db, &keys, scope, &subject, id, now).await {
                Ok(a) if a.len() > MAX_ARCHIVE_BYTES => Err(format!("larger than {} MiB", MAX_ARCHIVE_BYTES >> 20)),
                Ok(a) => palisade_store::exports::seal_archive(scope, &keys, id, &a)
                    .map(|sealed| (hex::encode(Sha256::digest(&a)), a.len(), sealed))
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            },
            Err(e) => Err(e.to_string()),
        };
        let end = self.clock.now_ms();
        let tenant = Some(scope.tenant_id());
        let mut tx = self.db.begin().await?;
        let (recorded, event) = match &built {
            Ok((sha, size, sealed)) => {
                let done = palisade_store::exports::Finished { sealed, size: *size, sha256: sha };
                let recorded = palisade_store::exports::finish(&mut *tx, scope, id, &token, &done, end).await?;
                let event = Event::new("export.ready", tenant, Actor::system())
                    .resource("export", id)
                    .details(serde_json::json!({ "size": size, "sha256": sha }));
                (recorded, event)
            }
            Err(e) => {
                tracing::error!(error = %e, export = id, "export failed");
                let said = if e.starts_with("larger than") { e.clone() } else { "could not be built".to_owned() };
                let recorded = palisade_store::exports::fail(&mut *tx, scope, id, &token, &said, end).await?;
                let event = Event::new("export.failed", tenant, Actor::system())
                    .resource("export", id)
                    .details(serde_json::json!({ "error": said }));
                (recorded, event)
            }
        };
        if recorded {
            palisade_audit::append(&mut *tx, &event, &Context::default(), end).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Builds the pending exports nobody holds (interrupted by a stop). One
    /// that fails to build is recorded as failed; an error here is logged
    /// and the next is tried.
    pub async fn resume(&self) -> palisade_store::Result<u64> {
        let proof = SysadminProof::verified();
        let mut done = 0;
        let pending = palisade_store::exports::unclaimed(self.db.reader(), &proof, self.clock.now_ms(), 20).await?;
        for (tenant, id) in pending {
            let Ok(tenant) = tenant.parse::<TenantId>() else { continue };
            match self.run(&TenantScope::for_system(tenant), &id).await {
                Ok(()) => done += 1,
                Err(e) => tracing::warn!(error = %e, export = %id, "resuming an export failed"),
            }
        }
        Ok(done)
    }
}

/// One file of the archive.
struct File {
    name: String,
    records: usize,
    bytes: Vec<u8>,
}

fn jsonl(name: &str, rows: &[serde_json::Value]) -> File {
    let mut bytes = Vec::new();
    for r in rows {
        bytes.extend_from_slice(r.to_string().as_bytes());
        bytes.push(b'\n');
    }
    File { name: format!("{name}.jsonl"), records: rows.len(), bytes }
}

/// The archive's bytes.
pub async fn archive(
    db: &Db,
    keys: &palisade_keys::TenantKeys,
    scope: &TenantScope,
    subject: &Subject,
    id: &str,
    now: i64,
) -> palisade_store::Result<Vec<u8>> {
    let reader = db.reader();
    let mut files = Vec::new();
    match subject {
        Subject::Tenant => {
            for t in palisade_store::exports::TENANT_TABLES {
                files.push(jsonl(t.name, &palisade_store::exports::rows(reader, scope, t, None).await?));
            }
            let messages =
                palisade_store::messages::list(reader, scope, keys, None, palisade_store::exports::MAX_ROWS).await?;
            let messages: Vec<serde_json::Value> = messages
                .into_iter()
                .map(|m| {
                    serde_json::json!({
                        "id": m.id, "identity_id": m.identity_id, "from": m.from_number, "to": m.to_number,
                        "to_country": m.to_country, "body": m.body, "segments": m.segments, "cost": m.cost,
                        "status": m.status, "error_code": m.error_code,
                        "created_at": m.created_at, "updated_at": m.updated_at,
                    })
                })
                .collect();
            files.push(jsonl("messages", &messages));
            files.push(jsonl("events", &palisade_store::exports::events(reader, scope, None).await?));
        }
        Subject::User(user) => {
            for t in palisade_store::exports::USER_TABLES {
                let column = match t.sql_table {
                    "users" => "id",
                    "token_families" => "user_id",
                    _ => "owner_user_id",
                };
                files
                    .push(jsonl(t.name, &palisade_store::exports::rows(reader, scope, t, Some((column, user))).await?));
            }
            files.push(jsonl("events", &palisade_store::exports::events(reader, scope, Some(user)).await?));
        }
    }
    write_tar(&files, scope, subject, id, now).map_err(|e| StoreError::Corrupt(format!("export archive: {e}")))
}

fn write_tar(files: &[File], scope: &TenantScope, subject: &Subject, id: &str, now: i64) -> std::io::Result<Vec<u8>> {
    let sums: Vec<(String, String)> =
        files.iter().map(|f| (f.name.clone(), hex::encode(Sha256::digest(&f.bytes)))).collect();
    let manifest = serde_json::json!({
        "export_id": id,
        "tenant_id": scope.tenant_id().to_string(),
        "subject": match subject { Subject::Tenant => serde_json::json!("tenant"), Subject::User(u) => serde_json::json!({"user_id": u}) },
        "created_at": palisade_core::clock::rfc3339(now),
        "format": "one JSON object per line; times in milliseconds since 1970 unless named *_at in RFC 3339",
        "files": files.iter().zip(&sums).map(|(f, (_, sha))| serde_json::json!({
            "name": f.name, "records": f.records, "bytes": f.bytes.len(), "sha256": sha,
            // The file stopped at the most an export holds of one table.
            "truncated": f.records >= usize::try_from(palisade_store::exports::MAX_ROWS).unwrap_or(usize::MAX),
        })).collect::<Vec<_>>(),
    });
    let manifest = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
    let sha_lines: String = sums
        .iter()
        .map(|(name, sha)| format!("{sha}  {name}\n"))
        .chain(std::iter::once(format!("{}  manifest.json\n", hex::encode(Sha256::digest(&manifest)))))
        .collect();
    let mut tar = tar::Builder::new(Vec::new());
    let mtime = u64::try_from(now / 1000).unwrap_or(0);
    let mut add = |name: &str, bytes: &[u8]| -> std::io::Result<()> {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o600);
        header.set_mtime(mtime);
        header.set_cksum();
        tar.append_data(&mut header, name, bytes)
    };
    add("manifest.json", &manifest)?;
    for f in files {
        add(&f.name, &f.bytes)?;
    }
    add("SHA256SUMS", sha_lines.as_bytes())?;
    tar.into_inner()
}

#[cfg(test)]
mod tests;
