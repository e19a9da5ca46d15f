//! Full verification of the log, from the database and the checkpoint
//! file, trusting only the audit public key: every record is re-hashed, the
//! tree is rebuilt, and every signed checkpoint must match it.

use std::collections::BTreeMap;
use std::path::Path;

use futures_util::TryStreamExt;
use palisade_store::Db;

use crate::checkpoint::{Checkpoint, Verifier};
use crate::log::{leaf_hash_of, LogError};
use crate::merkle::{self, Frontier, Hash};

#[derive(Debug, Default)]
pub struct Report {
    pub records: u64,
    pub checkpoints: u64,
    /// What is wrong, the first bad record first. Empty when intact.
    pub problems: Vec<String>,
}

impl Report {
    pub fn intact(&self) -> bool {
        self.problems.is_empty()
    }
}

/// Reads checkpoints from the JSON-lines file (missing file: none).
pub fn read_checkpoint_file(path: &Path) -> std::io::Result<Vec<Checkpoint>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            Ok(text.lines().filter(|l| !l.trim().is_empty()).filter_map(|l| serde_json::from_str(l).ok()).collect())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

pub async fn verify_log(
    db: &Db,
    verifier: &Verifier,
    checkpoint_file: Option<&Path>,
    mut progress: impl FnMut(u64),
) -> Result<Report, LogError> {
    let mut report = Report::default();

    // Signed statements, from both places. A checkpoint that does not
    // verify is itself evidence of tampering.
    let mut signed: BTreeMap<u64, Hash> = BTreeMap::new();
    let mut all: Vec<(String, Checkpoint)> = palisade_store::audit::all_checkpoints(db.reader())
        .await?
        .into_iter()
        .map(|r| ("database".to_owned(), Checkpoint { body: r.body, signature: r.signature, key_id: r.key_id }))
        .collect();
    if let Some(path) = checkpoint_file {
        all.extend(read_checkpoint_file(path)?.into_iter().map(|c| ("checkpoint file".to_owned(), c)));
    }
    for (source, cp) in &all {
        match verifier.verify(cp) {
            Some(head) => {
                report.checkpoints += 1;
                if let Some(prev) = signed.insert(head.tree_size, head.root) {
                    if prev != head.root {
                        report
                            .problems
                            .push(format!("two signed checkpoints disagree about the tree at size {}", head.tree_size));
                    }
                }
            }
            None => report.problems.push(format!("a checkpoint in the {source} has an invalid signature or format")),
        }
    }

    // Rebuild the tree from the records themselves.
    let mut frontier = Frontier::default();
    let mut last_good_size = 0u64;
    let mut leaves = palisade_store::audit::stream_leaves(db.reader());
    while let Some(leaf) = leaves.try_next().await? {
        let index = frontier.size();
        if leaf.leaf_index as u64 != index {
            report.problems.push(format!(
                "leaf {index} is missing: records were deleted from the tree (next present is leaf {})",
                leaf.leaf_index
            ));
            break;
        }
        let Some(event) = leaf.event.into_row() else {
            report.problems.push(format!("record seq {} (leaf {index}) was deleted", leaf.event_seq));
            break;
        };
        let hash = leaf_hash_of(&event);
        if merkle::decode_hash(&leaf.leaf_hash) != Some(hash) {
            report.problems.push(format!("record seq {} (id {}, leaf {index}) was altered", event.seq, event.id));
            break;
        }
        frontier.push(hash, |_, _, _| {});
        let size = frontier.size();
        if let Some(root) = signed.get(&size) {
            if *root != frontier.root() {
                report.problems.push(format!(
                    "the tree at size {size} does not match its signed checkpoint: records among leaves {last_good_size}..{} \
                     were altered, reordered or replaced",
                    size - 1
                ));
                break;
            }
            last_good_size = size;
        }
        if size % 100_000 == 0 {
            progress(size);
        }
    }
    drop(leaves);
    report.records = frontier.size();
    progress(report.records);

    if report.problems.is_empty() {
        if let Some((&max, _)) = signed.iter().next_back() {
            if max > report.records {
                report.problems.push(format!(
                    "the log was truncated: a signed checkpoint covers {max} records but only {} remain (first missing: leaf {})",
                    report.records, report.records
                ));
            }
        }
        let stray = palisade_store::audit::unlogged_events(db.reader(), 10).await?;
        if let Some(seq) = stray.first() {
            report
                .problems
                .push(format!("record seq {seq} is not part of the log: it was inserted behind the log's back"));
        }
    }
    Ok(report)
}
