//! The integrator: sequences committed events into the Merkle tree in
//! batches and signs a checkpoint after each batch. Checkpoints go to the
//! database and to an append-only file in the data directory, so editing
//! the audit tables alone cannot erase them.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_store::audit::{AuditRow, CheckpointRow};
use palisade_store::{Db, StoreError};
use tokio::sync::Notify;

use crate::checkpoint::{Checkpoint, Signer};
use crate::merkle::{self, Frontier, Hash};

const BATCH: i64 = 5000;

/// The bytes a leaf commits to: a JSON array of the record's fields in a
/// fixed order (see docs/audit.md).
pub fn leaf_data(r: &AuditRow) -> Vec<u8> {
    serde_json::to_vec(&(
        "palisade-audit-leaf/v1",
        r.seq,
        &r.id,
        r.ts,
        &r.tenant_id,
        &r.actor_type,
        &r.actor_id,
        &r.action,
        &r.resource_type,
        &r.resource_id,
        &r.source_ip,
        &r.user_agent,
        &r.request_id,
        &r.details,
    ))
    .unwrap_or_default()
}

pub fn leaf_hash_of(r: &AuditRow) -> Hash {
    merkle::leaf_hash(&leaf_data(r))
}

pub struct AuditLog {
    db: Db,
    signer: Signer,
    checkpoint_file: PathBuf,
    /// The largest tree size this instance's checkpoint file vouches for.
    file_max_size: std::sync::atomic::AtomicU64,
    wake: Notify,
    file_lock: tokio::sync::Mutex<()>,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the log head is corrupt")]
    CorruptHead,
    #[error("missing tree node {0}")]
    MissingNode(String),
    #[error("checkpoint file: {0}")]
    File(#[from] std::io::Error),
    #[error("the log was tampered with, so nothing is expired: {0}")]
    Tampered(String),
}

impl From<sqlx::Error> for LogError {
    fn from(e: sqlx::Error) -> Self {
        LogError::Store(StoreError::from(e))
    }
}

impl AuditLog {
    pub fn new(db: Db, signer: Signer, checkpoint_file: PathBuf) -> Arc<Self> {
        let verifier = signer.verifier().clone();
        let file_max = crate::verify::read_checkpoint_file(&checkpoint_file)
            .ok()
            .flatten()
            .unwrap_or_default()
            .iter()
            .filter_map(|c| verifier.verify(c))
            .map(|h| h.tree_size)
            .max()
            .unwrap_or(0);
        Arc::new(Self {
            db,
            signer,
            checkpoint_file,
            file_max_size: file_max.into(),
            wake: Notify::new(),
            file_lock: Default::default(),
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// The largest tree size a checkpoint in this instance's file vouches for.
    pub fn file_max_size(&self) -> u64 {
        self.file_max_size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the integrator to run soon (after writes).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Sequences everything pending; one signed checkpoint per batch.
    /// Returns the last checkpoint written, if any.
    pub async fn integrate(&self, now_ms: i64) -> Result<Option<Checkpoint>, LogError> {
        let mut last = None;
        while let Some(cp) = self.integrate_batch(now_ms).await? {
            last = Some(cp);
        }
        Ok(last)
    }

    async fn integrate_batch(&self, now_ms: i64) -> Result<Option<Checkpoint>, LogError> {
        // Idle: look without taking the write lock.
        if !palisade_store::audit::any_pending(self.db.reader()).await? {
            return Ok(None);
        }
        let mut tx = self.db.begin().await?;
        let (size, frontier) = palisade_store::audit::lock_head(&mut tx).await?;
        let batch = palisade_store::audit::pending_batch(&mut tx, BATCH).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        let mut f = Frontier::decode(u64::try_from(size).map_err(|_| LogError::CorruptHead)?, &frontier)
            .ok_or(LogError::CorruptHead)?;
        // Extend only the tree we last signed: a head rewritten in the
        // database (or cut short of the checkpoint file) must not be signed.
        if f.size() < self.file_max_size() {
            return Err(LogError::CorruptHead);
        }
        if f.size() > 0 {
            let signed = self.latest_checkpoint().await?.and_then(|c| self.signer.verifier().verify(&c));
            if signed.is_none_or(|h| h.tree_size != f.size() || h.root != f.root()) {
                return Err(LogError::CorruptHead);
            }
        }
        let first = size;
        let mut leaves = Vec::with_capacity(batch.len());
        let mut nodes = Vec::with_capacity(batch.len());
        for row in &batch {
            let index = f.size() as i64;
            let h = leaf_hash_of(row);
            f.push(h, |level, idx, node| nodes.push((i64::from(level), idx as i64, hex::encode(node))));
            leaves.push((index, row.seq, hex::encode(h)));
        }
        palisade_store::audit::insert_leaves(&mut tx, &leaves).await?;
        palisade_store::audit::insert_nodes(&mut tx, &nodes).await?;
        palisade_store::audit::dequeue_integrated(&mut tx, first).await?;
        let root = f.root();
        let cp = self.signer.sign(f.size(), &root, now_ms);
        let row = CheckpointRow {
            tree_size: f.size() as i64,
            root_hash: hex::encode(root),
            ts: now_ms,
            body: cp.body.clone(),
            signature: cp.signature.clone(),
            key_id: cp.key_id.clone(),
        };
        palisade_store::audit::insert_checkpoint(&mut tx, &row).await?;
        palisade_store::audit::set_head(&mut tx, f.size() as i64, &f.encode()).await?;
        tx.commit().await?;
        // The file must never vouch for a batch a crash could still take
        // back from the database.
        self.db.make_durable().await?;
        self.append_to_file(&cp).await?;
        Ok(Some(cp))
    }

    /// One JSON line per checkpoint, file mode 0600, opened in append mode.
    async fn append_to_file(&self, cp: &Checkpoint) -> Result<(), LogError> {
        let _guard = self.file_lock.lock().await;
        let line = serde_json::to_string(cp).unwrap_or_default() + "\n";
        let path = self.checkpoint_file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&path)?;
            f.write_all(line.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| LogError::File(std::io::Error::other(e)))??;
        if let Some(h) = cp.head() {
            self.file_max_size.fetch_max(h.tree_size, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(())
    }

    /// Retention: removes the records of the leading leaves older than
    /// `cutoff_ms` (a whole range, from leaf 0), after signing a statement
    /// of what is removed. Leaf hashes stay, so verification still passes.
    /// Returns `(up_to_leaf, rows removed)` when anything expired.
    pub async fn expire(&self, cutoff_ms: i64, now_ms: i64) -> Result<Option<(u64, u64)>, LogError> {
        let mut tx = self.db.begin().await?;
        palisade_store::audit::lock_head(&mut tx).await?;
        let up_to = palisade_store::audit::first_leaf_not_before(&mut tx, cutoff_ms).await?;
        let already = palisade_store::audit::expired_up_to(&mut tx).await?;
        if up_to <= already {
            return Ok(None);
        }
        if let Some(problem) = crate::verify::check_range(&self.db, already as u64, up_to as u64).await? {
            return Err(LogError::Tampered(problem));
        }
        let statement = self.signer.sign_expiry(up_to as u64, now_ms);
        let row = palisade_store::audit::ExpiryRow {
            up_to_leaf: up_to,
            ts: now_ms,
            body: statement.body.clone(),
            signature: statement.signature.clone(),
            key_id: statement.key_id.clone(),
        };
        let removed = palisade_store::audit::expire(&mut tx, &row).await?;
        let event = crate::Event::new("audit.expired", None, palisade_core::principal::Actor::system())
            .details(serde_json::json!({ "up_to_leaf": up_to, "removed": removed, "cutoff_ms": cutoff_ms }));
        crate::append(&mut *tx, &event, &crate::Context::default(), now_ms).await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        self.append_to_file(&statement).await?;
        self.poke();
        Ok(Some((up_to as u64, removed)))
    }

    /// The newest checkpoint whose signature verifies and whose signed size
    /// is the row's (a forged row with a huge size and an old genuine body
    /// does not win).
    pub async fn latest_checkpoint(&self) -> Result<Option<Checkpoint>, LogError> {
        for r in palisade_store::audit::latest_checkpoints(self.db.reader(), 16).await? {
            let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
            if self.signer.verifier().verify(&cp).is_some_and(|h| h.tree_size as i64 == r.tree_size) {
                return Ok(Some(cp));
            }
        }
        Ok(None)
    }

    /// The hash of leaves `[start, start + len)` from stored leaves and nodes.
    async fn subtree(&self, start: u64, len: u64) -> Result<Hash, LogError> {
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros();
            let stored = if level == 0 {
                palisade_store::audit::leaf_hash_at(self.db.reader(), start as i64).await?
            } else {
                palisade_store::audit::node_hash_at(self.db.reader(), i64::from(level), (start >> level) as i64).await?
            };
            return stored
                .as_deref()
                .and_then(merkle::decode_hash)
                .ok_or_else(|| LogError::MissingNode(format!("{level}/{}", start >> level)));
        }
        let k = merkle::split_point(len);
        let left = Box::pin(self.subtree(start, k)).await?;
        let right = Box::pin(self.subtree(start + k, len - k)).await?;
        Ok(merkle::node_hash(&left, &right))
    }

    /// Audit path for leaf `index` in the tree of `size` leaves.
    pub async fn inclusion_path(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        // Collect the subtrees the path needs, then fetch them.
        let mut wanted = Vec::new();
        let _ = merkle::inclusion_path(index, 0, size, &mut |s, l| {
            wanted.push((s, l));
            Ok::<_, ()>([0u8; 32])
        });
        let mut out = Vec::with_capacity(wanted.len());
        for (s, l) in wanted {
            out.push(self.subtree(s, l).await?);
        }
        Ok(out)
    }

    /// Runs the integrator until `stop` fires, then once more (the
    /// shutdown checkpoint).
    pub fn spawn(
        self: &Arc<Self>,
        clock: Arc<dyn palisade_core::Clock>,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = log.wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = stop.changed() => break,
                }
                if let Err(e) = log.integrate(clock.now_ms()).await {
                    tracing::error!(error = %e, "audit integration failed");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            if let Err(e) = log.integrate(clock.now_ms()).await {
                tracing::error!(error = %e, "final audit integration failed");
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The worked example of docs/audit.md, computed there independently.
    #[test]
    fn leaf_encoding_matches_the_documented_example() {
        let row = AuditRow {
            seq: 1,
            id: "01a20798-3abc-745d-ad69-c22b349f5ad5".into(),
            ts: 1_795_423_746_720,
            tenant_id: Some("01a20798-3abb-735f-9dde-4c0d0cc79f68".into()),
            actor_type: "sysadmin".into(),
            actor_id: None,
            action: "tenant.created".into(),
            resource_type: Some("tenant".into()),
            resource_id: Some("01a20798-3abb-735f-9dde-4c0d0cc79f68".into()),
            source_ip: Some("127.0.0.1".into()),
            user_agent: Some("curl/8.5.0".into()),
            request_id: Some("762e3adf-e15f-4b2b-a442-ced00df912e6".into()),
            details: r#"{"owner_id":"01a20798-3abb-735f-9dde-4c0ede9614f9"}"#.into(),
        };
        assert_eq!(
            String::from_utf8(leaf_data(&row)).unwrap(),
            r#"["palisade-audit-leaf/v1",1,"01a20798-3abc-745d-ad69-c22b349f5ad5",1795423746720,"01a20798-3abb-735f-9dde-4c0d0cc79f68","sysadmin",null,"tenant.created","tenant","01a20798-3abb-735f-9dde-4c0d0cc79f68","127.0.0.1","curl/8.5.0","762e3adf-e15f-4b2b-a442-ced00df912e6","{\"owner_id\":\"01a20798-3abb-735f-9dde-4c0ede9614f9\"}"]"#
        );
        assert_eq!(hex::encode(leaf_hash_of(&row)), "b86a29d8f0cefcba4b4d9e992a70e49721c2a5101b86b335671256cc9913a3b5");
    }
}
