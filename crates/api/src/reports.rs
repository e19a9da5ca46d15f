//! Carrier reports: a message handed over, delivered or failed. Each one
//! changes the message's record (status, error code, carrier reference,
//! `updated_at`); they arrive about two per message, so they are written
//! in batches, one atomic list per batch, instead of a transaction each.
//!
//! They are not audit events: the audit log records what principals and
//! the platform decided (the send, with its cost, is one); what a carrier
//! later reports about a message lives on the message.

use palisade_core::TenantScope;
use palisade_store::Db;
use tokio::sync::mpsc;

/// Reports per transaction, at most.
const MAX_BATCH: usize = 1024;

/// What a carrier reported about one message.
pub struct Report {
    pub scope: TenantScope,
    pub message_id: String,
    /// `sent`, `delivered` or `failed`.
    pub status: &'static str,
    pub error_code: Option<&'static str>,
    pub carrier_ref: Option<String>,
    pub at_ms: i64,
}

/// Where reports go; cheap to clone.
#[derive(Clone)]
pub struct Reports {
    tx: mpsc::Sender<Report>,
}

impl Reports {
    /// Starts the writer on the current runtime.
    pub fn start(db: Db) -> Self {
        // Bounded: when the database falls behind, carriers' callbacks wait
        // rather than memory growing without limit.
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        tokio::spawn(run(db, rx));
        Reports { tx }
    }

    pub async fn record(&self, r: Report) {
        let id = r.message_id.clone();
        if self.tx.send(r).await.is_err() {
            tracing::error!(message = id, "carrier report dropped: the report writer has stopped");
        }
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Report>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while rx.recv_many(&mut batch, MAX_BATCH).await > 0 {
        let stmts = batch
            .iter()
            .map(|r| {
                palisade_store::messages::set_status_stmt(
                    &r.scope,
                    &r.message_id,
                    r.status,
                    r.error_code,
                    r.carrier_ref.as_deref(),
                    r.at_ms,
                )
            })
            .collect();
        // A report that arrives after the message settled changes no row.
        if let Err(e) = db.write_all(stmts).await {
            tracing::error!(error = %e, reports = batch.len(), "recording carrier reports failed");
        }
        batch.clear();
    }
}
