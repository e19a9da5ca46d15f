//! The integrator: sequences committed events into the Merkle tree in
//! batches and signs a checkpoint after each batch. The database holds the
//! checkpoints every instance and auditor reads; the leading instance also
//! copies them to an append-only witness file in its data directory, so
//! editing the audit tables alone cannot erase them. One integration runs
//! at a time in the whole cluster (see [`crate::sequencer`]).

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::TenantScope;
use palisade_store::audit::{AuditRow, CheckpointRow};
use palisade_store::{Db, StoreError};
use tokio::sync::Notify;

use crate::checkpoint::{Checkpoint, Signer};
use crate::merkle::{self, Frontier, Hash};

/// Events per signed checkpoint: large enough that a busy log signs a few
/// checkpoints a second, small enough that each write is short.
const BATCH: i64 = 500;

/// The first value of a leaf's array.
pub const LEAF: &str = "palisade-audit-leaf/v1";

/// The fields a leaf commits to, borrowed from wherever they were read.
#[derive(Debug, Clone, Copy)]
pub struct LeafFields<'a> {
    pub seq: i64,
    pub id: &'a str,
    pub ts: i64,
    pub tenant_id: Option<&'a str>,
    pub actor_type: &'a str,
    pub actor_id: Option<&'a str>,
    pub action: &'a str,
    pub resource_type: Option<&'a str>,
    pub resource_id: Option<&'a str>,
    pub source_ip: Option<&'a str>,
    pub user_agent: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub details: &'a str,
}

impl<'a> LeafFields<'a> {
    pub fn of(r: &'a AuditRow) -> Self {
        LeafFields {
            seq: r.seq,
            id: &r.id,
            ts: r.ts,
            tenant_id: r.tenant_id.as_deref(),
            actor_type: &r.actor_type,
            actor_id: r.actor_id.as_deref(),
            action: &r.action,
            resource_type: r.resource_type.as_deref(),
            resource_id: r.resource_id.as_deref(),
            source_ip: r.source_ip.as_deref(),
            user_agent: r.user_agent.as_deref(),
            request_id: r.request_id.as_deref(),
            details: &r.details,
        }
    }

    /// The bytes a leaf commits to: a JSON array of the fields in a fixed
    /// order (see docs/audit.md), written into `buf` (cleared first). The
    /// output is what serde_json writes for the same array, byte for byte;
    /// written by hand because full verification encodes millions.
    pub fn encode(&self, buf: &mut Vec<u8>) {
        self.encode_as(LEAF, buf)
    }

    /// [`Self::encode`] with another first value (a tenant leaf's).
    pub fn encode_as(&self, tag: &str, buf: &mut Vec<u8>) {
        encode_head(tag, self.seq, buf);
        self.encode_rest(buf);
    }

    /// What follows the head (see [`encode_head`]), appended to `buf`: the
    /// same in a log leaf and its tenant leaf, so encoded once for both.
    pub fn encode_rest(&self, buf: &mut Vec<u8>) {
        buf.push(b',');
        string(buf, self.id);
        buf.push(b',');
        int(buf, self.ts);
        for v in [
            self.tenant_id,
            Some(self.actor_type),
            self.actor_id,
            Some(self.action),
            self.resource_type,
            self.resource_id,
            self.source_ip,
            self.user_agent,
            self.request_id,
            Some(self.details),
        ] {
            buf.push(b',');
            match v {
                Some(s) => string(buf, s),
                None => buf.extend_from_slice(b"null"),
            }
        }
        buf.push(b']');
    }
}

/// The start of a leaf's array, `["<tag>",<seq>` (into `buf`, cleared
/// first): the only part in which a tenant leaf differs from its log leaf.
pub fn encode_head(tag: &str, seq: i64, buf: &mut Vec<u8>) {
    buf.clear();
    buf.push(b'[');
    string(buf, tag);
    buf.push(b',');
    int(buf, seq);
}

fn int(buf: &mut Vec<u8>, n: i64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

/// A JSON string as serde_json writes it: only `"`, `\\` and control
/// characters are escaped, so plain text is copied as is. By hand: the
/// details of every record hold quotes, and serde_json's writer costs
/// more per string than the rest of the encoding.
fn string(buf: &mut Vec<u8>, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    // Per byte: 0 when copied as is, else the letter of its escape: one
    // look-up a byte, where a test per kind of byte cost twice as much.
    const ESCAPE: [u8; 256] = {
        let mut t = [0u8; 256];
        let mut b = 0;
        while b < 0x20 {
            t[b] = b'u';
            b += 1;
        }
        t[b'\n' as usize] = b'n';
        t[b'\r' as usize] = b'r';
        t[b'\t' as usize] = b't';
        t[0x08] = b'b';
        t[0x0c] = b'f';
        t[b'"' as usize] = b'"';
        t[b'\\' as usize] = b'\\';
        t
    };
    let bytes = s.as_bytes();
    buf.reserve(bytes.len() + 2);
    buf.push(b'"');
    let mut run = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = ESCAPE[usize::from(b)];
        if short == 0 {
            continue;
        }
        buf.extend_from_slice(&bytes[run..i]);
        run = i + 1;
        buf.extend_from_slice(&[b'\\', short]);
        if short == b'u' {
            buf.extend_from_slice(&[b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 15)]]);
        }
    }
    buf.extend_from_slice(&bytes[run..]);
    buf.push(b'"');
}

/// The bytes a leaf commits to (see [`LeafFields::encode`]).
pub fn leaf_data(r: &AuditRow) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256);
    LeafFields::of(r).encode(&mut buf);
    buf
}

pub fn leaf_hash_of(r: &AuditRow) -> Hash {
    merkle::leaf_hash(&leaf_data(r))
}

/// A signed retention statement as its table's row.
fn expiry_row(statement: &Checkpoint, up_to_leaf: i64, ts: i64) -> palisade_store::audit::ExpiryRow {
    palisade_store::audit::ExpiryRow {
        up_to_leaf,
        ts,
        body: statement.body.clone(),
        signature: statement.signature.clone(),
        key_id: statement.key_id.clone(),
    }
}

/// Which tree a proof is in.
#[derive(Debug, Clone, Copy)]
enum Tree<'a> {
    Log,
    Tenant(&'a str),
}

pub struct AuditLog {
    db: Db,
    signer: Arc<Signer>,
    checkpoint_file: PathBuf,
    /// The largest tree size this instance's checkpoint file vouches for.
    file_max_size: std::sync::atomic::AtomicU64,
    wake: Notify,
    file_lock: tokio::sync::Mutex<()>,
    sequencer: crate::sequencer::Sequencer,
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
            sequencer: crate::sequencer::Sequencer::new(&db),
            db,
            signer: Arc::new(signer),
            checkpoint_file,
            file_max_size: file_max.into(),
            wake: Notify::new(),
            file_lock: Default::default(),
        })
    }

    pub fn signer(&self) -> &Signer {
        &self.signer
    }

    /// This instance's witness file.
    pub fn checkpoint_file(&self) -> &std::path::Path {
        &self.checkpoint_file
    }

    /// The largest tree size a checkpoint in this instance's file vouches for.
    pub fn file_max_size(&self) -> u64 {
        self.file_max_size.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Asks the integrator to run soon (after writes).
    pub fn poke(&self) {
        self.wake.notify_one();
    }

    /// Sequences everything pending; one signed checkpoint per batch, into
    /// the database. Waits for any integration running elsewhere in the
    /// cluster first. Returns the last checkpoint signed, if any.
    pub async fn integrate(&self, now_ms: i64) -> Result<Option<Checkpoint>, LogError> {
        let exclusive = self.sequencer.exclusive(&self.db).await?;
        let mut last = None;
        // Full batches, then the partial one, then stop: events that keep
        // arriving meanwhile wait for the next run instead of making a
        // stream of tiny checkpoints.
        let result = loop {
            match self.integrate_batch(now_ms).await {
                Ok(Some((cp, full))) => {
                    last = cp.or(last);
                    if !full {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        exclusive.release().await;
        result?;
        // The leader's witness file gets each checkpoint as it is signed.
        if last.is_some() && self.leading() {
            self.sync_file().await?;
        }
        Ok(last)
    }

    /// Whether this instance leads the cluster's log now (trying to take
    /// the lead if nobody holds it).
    pub async fn lead(&self) -> bool {
        self.sequencer.lead(&self.db).await
    }

    /// Whether this instance led at its last check.
    pub fn leading(&self) -> bool {
        self.sequencer.leading()
    }

    /// Copies to this instance's witness file every signed checkpoint in
    /// the database that the file lacks, whoever signed it, in order.
    /// Returns how many were added.
    pub async fn sync_file(&self) -> Result<usize, LogError> {
        // The file must never vouch for a batch a crash could still take
        // back from the database.
        self.db.make_durable().await?;
        let _guard = self.file_lock.lock().await;
        let from = i64::try_from(self.file_max_size()).unwrap_or(i64::MAX);
        let verifier = self.signer.verifier();
        let new: Vec<Checkpoint> = palisade_store::audit::checkpoints_after(self.db.reader(), from)
            .await?
            .into_iter()
            .map(|r| (r.tree_size, Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id }))
            .filter(|(size, cp)| verifier.verify(cp).is_some_and(|h| h.tree_size as i64 == *size))
            .map(|(_, cp)| cp)
            .collect();
        if !new.is_empty() {
            self.write_file(&new).await?;
        }
        Ok(new.len())
    }

    /// Sequences now the committed events of `tenant` (of anyone when
    /// `None`) still waiting, if any: the event feed serves sequenced events
    /// only, and a reader should see its own writes at once rather than
    /// after the next run.
    pub async fn catch_up(&self, tenant: Option<palisade_core::TenantId>, now_ms: i64) -> Result<(), LogError> {
        // A run that loses the race to another integrator (this instance's
        // background one, or another instance) may have read its batch
        // before these events committed: look again, a bounded number of times.
        for _ in 0..8 {
            let reader = self.db.reader();
            let (size, _, placed) = palisade_store::audit::read_head_full(reader).await?;
            if placed >= size && !palisade_store::audit::tenant_pending(reader, tenant).await? {
                break;
            }
            self.integrate(now_ms).await?;
        }
        Ok(())
    }

    /// Integrates up to BATCH pending events; the checkpoint and whether the
    /// batch was full (or, while the tenant trees catch up with an older
    /// log, no checkpoint and `true`). The hashing and signing happen
    /// before the write, so the write itself is one short atomic list that
    /// other writers barely wait for; it moves the head only from where
    /// this step started.
    async fn integrate_batch(&self, now_ms: i64) -> Result<Option<(Option<Checkpoint>, bool)>, LogError> {
        let reader = self.db.reader();
        let (size, frontier, placed) = palisade_store::audit::read_head_full(reader).await?;
        if placed < size {
            return self.place_in_tenant_trees(placed, size, now_ms).await;
        }
        if !palisade_store::audit::any_pending(reader).await? {
            return Ok(None);
        }
        let batch = palisade_store::audit::pending_batch(reader, BATCH).await?;
        if batch.is_empty() {
            return Ok(None);
        }
        let full = batch.len() as i64 == BATCH;
        let f = Frontier::decode(u64::try_from(size).map_err(|_| LogError::CorruptHead)?, &frontier)
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
        // Read after the head: a step that moved the tenant heads since
        // moved the head too, and this step's write is then refused.
        let heads = palisade_store::audit::tenant_heads(reader, &crate::tenant::tenants_of(batch.iter())).await?;
        let signer = self.signer.clone();
        let (cp, stmts) = tokio::task::spawn_blocking(move || extend(f, size, &batch, heads, &signer, now_ms))
            .await
            .map_err(|e| LogError::Store(StoreError::Corrupt(format!("integration task: {e}"))))??;
        match self.db.write_guarded(stmts).await {
            Ok(Ok(_)) => Ok(Some((Some(cp), full))),
            // Another integrator moved the head first (its leaves may be met
            // before the head's guard); what its batch left is for the next run.
            Ok(Err(_moved)) => Ok(None),
            Err(e) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Places leaves `[from, to)` of the log (at most BATCH) in their
    /// tenants' trees: the leaves of a log sequenced before tenant trees
    /// existed. A leaf whose record retention removed has no tenant tree
    /// leaf (its record can no longer be shown to anyone).
    async fn place_in_tenant_trees(
        &self,
        from: i64,
        size: i64,
        now_ms: i64,
    ) -> Result<Option<(Option<Checkpoint>, bool)>, LogError> {
        let reader = self.db.reader();
        let to = (from + BATCH).min(size);
        let rows = palisade_store::audit::tenant_events_at_leaves(reader, from, to).await?;
        let heads =
            palisade_store::audit::tenant_heads(reader, &crate::tenant::tenants_of(rows.iter().map(|r| &r.1))).await?;
        let signer = self.signer.clone();
        let stmts = tokio::task::spawn_blocking(move || -> Result<Vec<palisade_store::Stmt>, LogError> {
            let mut trees = crate::tenant::TenantTrees::new(heads)?;
            for (leaf, row) in &rows {
                trees.push(*leaf, row);
            }
            let mut stmts = vec![palisade_store::audit::tenant_catch_up_stmt(from, to)];
            stmts.extend(trees.finish(&signer, now_ms));
            Ok(stmts)
        })
        .await
        .map_err(|e| LogError::Store(StoreError::Corrupt(format!("integration task: {e}"))))??;
        match self.db.write_guarded(stmts).await {
            Ok(Ok(_)) => Ok(Some((None, true))),
            Ok(Err(_moved)) => Ok(None),
            Err(e) if e.is_unique_violation() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// One JSON line per checkpoint, file mode 0600, opened in append mode.
    async fn append_to_file(&self, cps: &[Checkpoint]) -> Result<(), LogError> {
        let _guard = self.file_lock.lock().await;
        self.write_file(cps).await
    }

    /// [`Self::append_to_file`] with the file lock held.
    async fn write_file(&self, cps: &[Checkpoint]) -> Result<(), LogError> {
        let lines: String = cps.iter().map(|cp| serde_json::to_string(cp).unwrap_or_default() + "\n").collect();
        let path = self.checkpoint_file.clone();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            let mut opts = std::fs::OpenOptions::new();
            opts.create(true).append(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&path)?;
            f.write_all(lines.as_bytes())?;
            f.sync_data()
        })
        .await
        .map_err(|e| LogError::File(std::io::Error::other(e)))??;
        for h in cps.iter().filter_map(Checkpoint::head) {
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
        let up_to = palisade_store::audit::first_leaf_not_before(&mut *tx, cutoff_ms).await?;
        let verifier = self.signer.verifier();
        // How far the signed statements reach, not a row's say-so: a forged
        // row must not spare its range the check below.
        let already = crate::verify::signed_cuts(&self.db, verifier).await?.get("").copied().unwrap_or(0) as i64;
        if up_to <= already {
            return Ok(None);
        }
        if let Some(problem) = crate::verify::check_range(&self.db, verifier, already as u64, up_to as u64).await? {
            return Err(LogError::Tampered(problem));
        }
        let statement = self.signer.sign_expiry(up_to as u64, now_ms);
        let row = expiry_row(&statement, up_to, now_ms);
        let removed = palisade_store::audit::expire(&mut tx, &row).await?;
        let event = crate::Event::new("audit.expired", None, palisade_core::principal::Actor::system())
            .details(serde_json::json!({ "up_to_leaf": up_to, "removed": removed, "cutoff_ms": cutoff_ms }));
        crate::append(&mut *tx, &event, &crate::Context::default(), now_ms).await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        self.append_to_file(std::slice::from_ref(&statement)).await?;
        self.poke();
        Ok(Some((up_to as u64, removed)))
    }

    /// A tenant's own retention, shorter than the platform's: at most once a
    /// day, signs a statement that the tenant's records among the leaves
    /// older than `cutoff_ms` may go, with its tree's size, root and the
    /// places of its leaves at that cut (once the range is checked
    /// untampered), then removes them, `batch` rows per transaction.
    /// Leftovers of a pass that stopped midway go at the next. Returns the
    /// rows removed.
    pub async fn expire_tenant(
        &self,
        scope: &TenantScope,
        cutoff_ms: i64,
        now_ms: i64,
        batch: i64,
    ) -> Result<u64, LogError> {
        const DAY_MS: i64 = 86_400_000;
        let tenant = scope.tenant_id().to_string();
        let verifier = self.signer.verifier();
        let reader = self.db.reader();
        // The tenant's statements as signed (a row's columns vouch for nothing).
        let own: Vec<crate::checkpoint::TenantExpiry> = palisade_store::audit::all_tenant_expiries(reader)
            .await?
            .into_iter()
            .filter_map(|(_, r)| {
                verifier.verify_tenant_expiry(&Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id })
            })
            .filter(|e| e.tenant == tenant)
            .collect();
        let own_up_to = own.iter().map(|e| e.up_to_leaf).max().unwrap_or(0) as i64;
        let mut removed = 0;
        if own.iter().all(|e| e.ts_ms <= now_ms - DAY_MS) {
            if let Some(up_to) = self.sign_tenant_cut(&tenant, scope, own_up_to, cutoff_ms, now_ms).await? {
                removed += self.remove_tenant_records(scope, up_to, batch).await?;
                tracing::debug!(tenant = %tenant, up_to, removed, "a tenant's audit records past its period removed");
                return Ok(removed);
            }
        }
        // A pass that stopped between the statement and the removal.
        if palisade_store::audit::oldest_leaf_of(reader, scope).await?.is_some_and(|l| l < own_up_to) {
            removed += self.remove_tenant_records(scope, own_up_to, batch).await?;
        }
        Ok(removed)
    }

    /// Signs and stores the tenant's statement for the leaves older than
    /// `cutoff_ms`, if that reaches past `own_up_to` and holds any of its
    /// leaves. The leaf it reaches to.
    pub(crate) async fn sign_tenant_cut(
        &self,
        tenant: &str,
        scope: &TenantScope,
        own_up_to: i64,
        cutoff_ms: i64,
        now_ms: i64,
    ) -> Result<Option<i64>, LogError> {
        let reader = self.db.reader();
        let verifier = self.signer.verifier();
        // Only leaves already in the tenants' trees.
        let placed = palisade_store::audit::tenant_size(reader).await?;
        let up_to = palisade_store::audit::first_leaf_not_before(reader, cutoff_ms).await?.min(placed);
        let platform = crate::verify::signed_cuts(&self.db, verifier).await?.get("").copied().unwrap_or(0) as i64;
        let from = own_up_to.max(platform);
        if up_to <= from {
            return Ok(None);
        }
        // The statement signs the tenant's tree (size, root, places) from its
        // rows, read once: the rows in the range must be its records' own (a
        // row moved onto another's record, to be deleted under this
        // statement, is never signed), and what is signed is what was checked.
        let rows = palisade_store::audit::tenant_rows_between(reader, scope, 0, up_to).await?;
        if let Some((leaf, _, _)) = rows.iter().enumerate().find(|(i, r)| r.1 != *i as i64).map(|(_, r)| r) {
            return Err(LogError::Tampered(format!("the tenant tree's leaf at {leaf} is out of its order")));
        }
        let mut in_range = std::collections::HashMap::new();
        for (leaf, at, stored) in rows.iter().filter(|r| r.0 >= from) {
            let h = merkle::decode_hash(stored)
                .ok_or_else(|| LogError::Tampered(format!("the tenant leaf at {leaf} is unreadable")))?;
            in_range.insert(*leaf, (*at, h));
        }
        // Nothing of the tenant's in the range: nothing to sign (and no long read).
        if in_range.is_empty() && !palisade_store::audit::tenant_has_records_between(reader, scope, from, up_to).await?
        {
            return Ok(None);
        }
        // Read without the write lock held: the first range may be long.
        let t = crate::verify::TenantRows { tenant, rows: in_range };
        let check = crate::verify::check_range_of(&self.db, verifier, from as u64, up_to as u64, Some(&t)).await?;
        if let Some(problem) = check {
            return Err(LogError::Tampered(problem));
        }
        if t.rows.is_empty() {
            return Ok(None);
        }
        let mut places = <sha2::Sha256 as sha2::Digest>::new();
        let mut tree = Frontier::default();
        for (leaf, _, stored) in &rows {
            sha2::Digest::update(&mut places, (*leaf as u64).to_be_bytes());
            let h = merkle::decode_hash(stored)
                .ok_or_else(|| LogError::Tampered(format!("the tenant leaf at {leaf} is unreadable")))?;
            tree.push(h, |_, _, _| {});
        }
        let tree = crate::checkpoint::TenantCut {
            size: tree.size(),
            root: tree.root(),
            places: sha2::Digest::finalize(places).into(),
        };
        let statement = self.signer.sign_tenant_expiry(tenant, up_to as u64, now_ms, &tree);
        let row = expiry_row(&statement, up_to, now_ms);
        let mut tx = self.db.begin().await?;
        palisade_store::audit::lock_head(&mut tx).await?;
        // Another instance may have signed as far meanwhile.
        if palisade_store::audit::tenant_expired_up_to(&mut *tx, scope).await? >= up_to {
            return Ok(None);
        }
        palisade_store::audit::record_tenant_expiry(&mut tx, scope, &row).await?;
        tx.commit().await?;
        self.db.make_durable().await?;
        self.append_to_file(std::slice::from_ref(&statement)).await?;
        Ok(Some(up_to))
    }

    /// Removes the tenant's records before leaf `up_to` (its signed cut),
    /// in batches.
    async fn remove_tenant_records(&self, scope: &TenantScope, up_to: i64, batch: i64) -> Result<u64, LogError> {
        let mut removed = 0;
        loop {
            let mut tx = self.db.begin().await?;
            let n = palisade_store::audit::remove_tenant_expired(&mut tx, scope, up_to, batch).await?;
            tx.commit().await?;
            removed += n;
            if n < batch.max(1) as u64 {
                return Ok(removed);
            }
        }
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

    /// The hash of leaves `[start, start + len)` of `tree` from stored
    /// leaves and nodes.
    async fn subtree(&self, tree: Tree<'_>, start: u64, len: u64) -> Result<Hash, LogError> {
        if len.is_power_of_two() && start.is_multiple_of(len) {
            let level = len.trailing_zeros();
            let (r, at) = (self.db.reader(), (start >> level) as i64);
            let stored = match (tree, level) {
                (Tree::Log, 0) => palisade_store::audit::leaf_hash_at(r, at).await?,
                (Tree::Log, _) => palisade_store::audit::node_hash_at(r, i64::from(level), at).await?,
                (Tree::Tenant(t), 0) => palisade_store::audit::tenant_leaf_hash_at(r, t, at).await?,
                (Tree::Tenant(t), _) => palisade_store::audit::tenant_node_hash_at(r, t, i64::from(level), at).await?,
            };
            return stored
                .as_deref()
                .and_then(merkle::decode_hash)
                .ok_or_else(|| LogError::MissingNode(format!("{level}/{at}")));
        }
        let k = merkle::split_point(len);
        let left = Box::pin(self.subtree(tree, start, k)).await?;
        let right = Box::pin(self.subtree(tree, start + k, len - k)).await?;
        Ok(merkle::node_hash(&left, &right))
    }

    /// Audit path for leaf `index` in the log's tree of `size` leaves.
    pub async fn inclusion_path(&self, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.path_in(Tree::Log, index, size).await
    }

    /// Audit path for leaf `index` in `tenant`'s tree of `size` leaves.
    pub async fn tenant_inclusion_path(&self, tenant: &str, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        self.path_in(Tree::Tenant(tenant), index, size).await
    }

    async fn path_in(&self, tree: Tree<'_>, index: u64, size: u64) -> Result<Vec<Hash>, LogError> {
        // Collect the subtrees the path needs, then fetch them.
        let mut wanted = Vec::new();
        let _ = merkle::inclusion_path(index, 0, size, &mut |s, l| {
            wanted.push((s, l));
            Ok::<_, ()>([0u8; 32])
        });
        let mut out = Vec::with_capacity(wanted.len());
        for (s, l) in wanted {
            out.push(self.subtree(tree, s, l).await?);
        }
        Ok(out)
    }

    /// The newest checkpoint of `tenant`'s tree whose signature verifies
    /// and whose signed size is the row's.
    pub async fn latest_tenant_checkpoint(
        &self,
        tenant: palisade_core::TenantId,
    ) -> Result<Option<Checkpoint>, LogError> {
        let id = tenant.to_string();
        for r in palisade_store::audit::latest_tenant_checkpoints(self.db.reader(), tenant, 16).await? {
            let cp = Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id };
            if self.signer.verifier().verify_tenant(&cp, &id).is_some_and(|h| h.tree_size as i64 == r.tree_size) {
                return Ok(Some(cp));
            }
        }
        Ok(None)
    }

    /// Runs the integrator until `stop` fires, then once more (the
    /// shutdown checkpoint). Runs start at least `interval` apart, so a
    /// busy log signs a few large batches rather than one per request.
    /// Only the cluster's leader integrates and keeps its witness file;
    /// the others try to take the lead at each turn (at least once a
    /// second), so a leader that stops or dies is replaced within seconds.
    pub fn spawn(
        self: &Arc<Self>,
        clock: Arc<dyn palisade_core::Clock>,
        interval: Duration,
        mut stop: tokio::sync::watch::Receiver<bool>,
    ) -> tokio::task::JoinHandle<()> {
        let log = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = log.wake.notified() => {}
                    _ = tokio::time::sleep(interval.clamp(Duration::from_millis(10), Duration::from_secs(1))) => {}
                    _ = stop.changed() => break,
                }
                if log.lead().await {
                    log.run_once(clock.now_ms()).await;
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval.max(Duration::from_millis(10))) => {}
                    _ = stop.changed() => break,
                }
            }
            // Shutdown: everything pending, in as many batches as it takes,
            // if this instance leads (a follower's events are the leader's
            // to sequence); then hand the lead over at once.
            if log.lead().await {
                loop {
                    match log.integrate(clock.now_ms()).await {
                        Ok(Some(_)) => continue,
                        Ok(None) => break,
                        Err(e) => {
                            tracing::error!(error = %e, "final audit integration failed");
                            break;
                        }
                    }
                }
                if let Err(e) = log.sync_file().await {
                    tracing::error!(error = %e, "audit witness file not written");
                }
            }
            log.sequencer.resign().await;
        })
    }

    async fn run_once(&self, now_ms: i64) {
        if let Err(e) = self.integrate(now_ms).await {
            tracing::error!(error = %e, "audit integration failed");
        }
        if let Err(e) = self.sync_file().await {
            tracing::error!(error = %e, "audit witness file not written");
        }
    }
}

/// Adds `batch` to the tree `f` (of `size` leaves) and to the tenant trees
/// (from their `tenant_heads`), and signs the results: the log's checkpoint
/// and the atomic list that stores it all.
fn extend(
    mut f: Frontier,
    size: i64,
    batch: &[AuditRow],
    tenant_heads: Vec<(String, i64, String)>,
    signer: &Signer,
    now_ms: i64,
) -> Result<(Checkpoint, Vec<palisade_store::Stmt>), LogError> {
    let mut trees = crate::tenant::TenantTrees::new(tenant_heads)?;
    let mut leaves = Vec::with_capacity(batch.len());
    let mut nodes = Vec::with_capacity(batch.len());
    for row in batch {
        let index = f.size() as i64;
        let h = leaf_hash_of(row);
        f.push(h, |level, idx, node| nodes.push((i64::from(level), idx as i64, hex::encode(node))));
        leaves.push((index, row.seq, hex::encode(h)));
        trees.push(index, row);
    }
    let root = f.root();
    let cp = signer.sign(f.size(), &root, now_ms);
    let row = CheckpointRow {
        tree_size: f.size() as i64,
        root_hash: hex::encode(root),
        ts: now_ms,
        body: cp.body.clone(),
        signature: cp.signature.clone(),
        key_id: cp.key_id.clone(),
    };
    let mut stmts = palisade_store::audit::integrate_stmts(size, &f.encode(), &leaves, &nodes, row);
    stmts.extend(trees.finish(signer, now_ms));
    Ok((cp, stmts))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written encoder must equal serde_json's array encoding.
    /// Every ASCII character, alone and inside text, and text beyond ASCII:
    /// encoded as serde_json encodes it.
    #[test]
    fn strings_are_escaped_like_serde_json() {
        let mut cases: Vec<String> =
            (0..=0x7fu8).flat_map(|c| [(c as char).to_string(), format!("a{}bc", c as char)]).collect();
        cases.extend(["é\u{80}\u{7ff}\u{800}\u{ffff}🙂\"x".to_owned(), String::new()]);
        for s in cases {
            let mut buf = Vec::new();
            string(&mut buf, &s);
            assert_eq!(buf, serde_json::to_vec(&s).unwrap(), "{s:?}");
        }
    }

    #[test]
    fn leaf_encoding_equals_serde_json() {
        let odd = [
            "",
            "plain",
            "q\"uote",
            "back\\slash",
            "tab\tnew\nline\u{1f}\u{0}",
            "ünï\u{2028}cödé 🙂",
            "\u{7f}/<>&",
            // Nothing but one kind of escaped byte: the fast path's test
            // must look at each condition.
            "\"\"",
            "\\\\",
            "\u{1}\u{1f}",
            // Each control character with a short escape of its own.
            "\r",
            "\u{8}",
            "\u{c}",
            "cr\rbs\u{8}ff\u{c}tab\tnl\n",
        ];
        for (i, s) in odd.iter().enumerate() {
            let row = AuditRow {
                seq: i as i64 - 3,
                id: s.to_string(),
                ts: i64::MIN + i as i64,
                tenant_id: (i % 2 == 0).then(|| s.to_string()),
                actor_type: s.to_string(),
                actor_id: (i % 3 == 0).then(|| s.to_string()),
                action: s.to_string(),
                resource_type: None,
                resource_id: Some(s.to_string()),
                source_ip: Some(s.to_string()),
                user_agent: (i % 2 == 1).then(|| s.to_string()),
                request_id: None,
                details: s.to_string(),
            };
            let reference = serde_json::to_vec(&(
                "palisade-audit-leaf/v1",
                row.seq,
                &row.id,
                row.ts,
                &row.tenant_id,
                &row.actor_type,
                &row.actor_id,
                &row.action,
                &row.resource_type,
                &row.resource_id,
                &row.source_ip,
                &row.user_agent,
                &row.request_id,
                &row.details,
            ))
            .unwrap();
            assert_eq!(leaf_data(&row), reference, "{s:?}");
        }
    }

    /// Writers poke the integrator so it runs at once, not at its next turn.
    #[tokio::test]
    async fn a_poke_wakes_the_integrator() {
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db_tests::open(dir.path()).await;
        let log = AuditLog::new(db, crate::db_tests::signer(), dir.path().join("checkpoints"));
        log.poke();
        tokio::time::timeout(Duration::from_secs(10), log.wake.notified()).await.expect("woken");
    }

    /// A reader with nothing waiting returns at once, even while an
    /// integration runs; with an event of its tenant waiting, it waits for
    /// that integration and then sequences the event.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_catch_up_waits_only_when_something_waits() {
        use crate::db_tests::{events, pending};
        let dir = tempfile::tempdir().unwrap();
        let db = crate::db_tests::open(dir.path()).await;
        let tenant = palisade_core::TenantId::new();
        events(&db, 2, tenant, 1_000).await;
        let log = AuditLog::new(db.clone(), crate::db_tests::signer(), dir.path().join("checkpoints"));
        log.integrate(2_000).await.unwrap().unwrap();
        let running = log.sequencer.exclusive(&db).await.unwrap();
        let soon = Duration::from_secs(5);
        tokio::time::timeout(soon, log.catch_up(Some(tenant), 3_000)).await.expect("no wait").unwrap();
        tokio::time::timeout(soon, log.catch_up(None, 3_000)).await.expect("no wait").unwrap();
        events(&db, 1, tenant, 3_000).await;
        let waiting = log.catch_up(Some(tenant), 4_000);
        tokio::pin!(waiting);
        assert!(tokio::time::timeout(Duration::from_millis(300), &mut waiting).await.is_err());
        running.release().await;
        tokio::time::timeout(Duration::from_secs(20), waiting).await.expect("its turn").unwrap();
        assert_eq!(pending(&db).await, 0);
    }

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
