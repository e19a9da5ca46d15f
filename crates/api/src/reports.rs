//! Carrier reports: a message handed over, delivered or failed. Each one
//! changes the message's record (status, error code, carrier reference,
//! `updated_at`); they arrive about two per message, so they are written
//! in batches, one atomic list per batch, instead of a transaction each.
//!
//! They are not audit events: the audit log records what principals and
//! the platform decided (the send, with its cost, is one); what a carrier
//! later reports about a message lives on the message.

use palisade_core::TenantScope;
use palisade_store::messages::StatusReport;
use palisade_store::Db;
use tokio::sync::mpsc;

/// Reports per transaction, at most.
const MAX_BATCH: usize = 1024;
/// The longest pause between two tries of a batch: well under the minute
/// recovery waits after the database comes back.
const MAX_PAUSE: std::time::Duration = std::time::Duration::from_secs(10);

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

/// What the writer receives: a report, or a request to say when every
/// report sent before it is written.
enum Item {
    Report(Report),
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// Where reports go; cheap to clone.
#[derive(Clone)]
pub struct Reports {
    tx: mpsc::Sender<Item>,
}

impl Reports {
    /// Starts the writer on the current runtime.
    /// `wake` is the webhook worker's: status events are queued with the
    /// status change.
    pub fn start(db: Db, wake: std::sync::Arc<tokio::sync::Notify>) -> Self {
        // Bounded: when the database falls behind, carriers' callbacks wait
        // rather than memory growing without limit.
        let (tx, rx) = mpsc::channel(16 * MAX_BATCH);
        tokio::spawn(run(db, rx, wake));
        Reports { tx }
    }

    pub async fn record(&self, r: Report) {
        let id = r.message_id.clone();
        if self.tx.send(Item::Report(r)).await.is_err() {
            tracing::error!(message = id, "carrier report dropped: the report writer has stopped");
        }
    }

    /// Returns once every report recorded before this call is written.
    pub async fn flush(&self) {
        let (done, written) = tokio::sync::oneshot::channel();
        if self.tx.send(Item::Flush(done)).await.is_ok() {
            let _ = written.await;
        }
    }
}

async fn run(db: Db, mut rx: mpsc::Receiver<Item>, wake: std::sync::Arc<tokio::sync::Notify>) {
    let (mut items, mut batch, mut flushes) =
        (Vec::with_capacity(MAX_BATCH), Vec::with_capacity(MAX_BATCH), Vec::new());
    while rx.recv_many(&mut items, MAX_BATCH).await > 0 {
        for item in items.drain(..) {
            match item {
                Item::Report(r) => batch.push(r),
                Item::Flush(done) => flushes.push(done),
            }
        }
        if !batch.is_empty() {
            write_batch(&db, &batch, &wake).await;
            batch.clear();
        }
        // Every report received before a flush request is in this batch or
        // an earlier one.
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
}

/// One batch: the webhook events it moves and the status changes.
async fn write_batch(db: &Db, batch: &[Report], wake: &tokio::sync::Notify) {
    let latest = latest_per_message(batch);
    // Every report that moves its message is an event for the tenant's
    // webhooks (a tenant may subscribe to `message.sent` alone), queued
    // with the status change and before it in the list (its condition
    // reads the status the change starts from).
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    let listening = tenants_listening(db, batch).await;
    let events: Vec<_> = batch
        .iter()
        .filter(|r| listening.as_ref().is_none_or(|l| l.contains(&r.scope.tenant_id().to_string())))
        .filter(|r| seen.insert((r.message_id.as_str(), r.status)))
        .map(webhook_event)
        .collect();
    let mut stmts = palisade_store::webhooks::enqueue_stmts(&events);
    let enqueues = stmts.len();
    stmts.extend(palisade_store::messages::set_status_stmts(&latest));
    // A report that arrives after the message settled changes no row.
    // The worker is woken only for deliveries to make: most tenants
    // have no endpoint, and each wake costs it a claim.
    let rows = write_with_retries(db, stmts, batch.len()).await;
    if rows.iter().take(enqueues).any(|&n| n > 0) {
        wake.notify_one();
    }
}

/// Writes a batch, trying again after a failure (the database restarting,
/// a lost connection) until it is written: a `sent` report left unwritten
/// would let recovery refund a message the carrier has. Every statement is
/// conditional on the state it moves from, so a batch that did commit
/// before its error changes nothing the second time. Reports wait behind
/// it meanwhile (the channel is bounded).
async fn write_with_retries(db: &Db, stmts: Vec<palisade_store::Stmt>, reports: usize) -> Vec<u64> {
    let (mut pause, mut attempt) = (std::time::Duration::from_millis(100), 1u64);
    loop {
        match db.write_all(stmts.clone()).await {
            Ok(rows) => return rows,
            Err(e) => {
                tracing::warn!(error = %e, reports, attempt, "recording carrier reports failed; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_PAUSE);
                attempt += 1;
            }
        }
    }
}

/// The batch's tenants that have an enabled endpoint (`None` if that
/// could not be read: then every event is offered to the queue, whose own
/// conditions decide). Most tenants have none, and the queue's statements
/// cost more to plan than this read; an endpoint created while the batch is
/// written gets the events after it, as if created a moment later.
async fn tenants_listening(db: &Db, batch: &[Report]) -> Option<std::collections::HashSet<String>> {
    let tenants: std::collections::BTreeSet<String> = batch.iter().map(|r| r.scope.tenant_id().to_string()).collect();
    match palisade_store::webhooks::tenants_with_endpoints(db, tenants.into_iter().collect()).await {
        Ok(listening) => Some(listening),
        Err(e) => {
            tracing::warn!(error = %e, "could not read which tenants have webhook endpoints");
            None
        }
    }
}

fn webhook_event(r: &Report) -> palisade_store::webhooks::NewEvent {
    let event_type = match r.status {
        "sent" => "message.sent",
        "delivered" => "message.delivered",
        _ => "message.failed",
    };
    let data = serde_json::json!({ "id": r.message_id, "status": r.status, "error_code": r.error_code });
    let mut e = palisade_webhooks::events::event(r.scope.tenant_id(), event_type, data, r.at_ms);
    e.if_message_moves = Some((r.message_id.clone(), r.status));
    e
}

/// One report per message: the furthest status, with the error code and
/// carrier reference any of its reports carried.
fn latest_per_message(batch: &[Report]) -> Vec<StatusReport<'_>> {
    let rank = |s: &str| u8::from(s != "sent");
    let mut out: Vec<StatusReport<'_>> = Vec::with_capacity(batch.len());
    let mut seen = std::collections::HashMap::with_capacity(batch.len());
    for r in batch {
        let this = StatusReport {
            scope: &r.scope,
            id: &r.message_id,
            status: r.status,
            error_code: r.error_code,
            carrier_ref: r.carrier_ref.as_deref(),
            at_ms: r.at_ms,
        };
        match seen.get(r.message_id.as_str()) {
            None => {
                seen.insert(r.message_id.as_str(), out.len());
                out.push(this);
            }
            Some(&i) => {
                let kept = &mut out[i];
                if rank(this.status) >= rank(kept.status) {
                    kept.status = this.status;
                    kept.at_ms = kept.at_ms.max(this.at_ms);
                }
                kept.error_code = kept.error_code.or(this.error_code);
                kept.carrier_ref = kept.carrier_ref.or(this.carrier_ref);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(id: &str, status: &'static str, carrier_ref: Option<&str>, at_ms: i64) -> Report {
        Report {
            scope: TenantScope::for_system(palisade_core::TenantId::new()),
            message_id: id.into(),
            status,
            error_code: None,
            carrier_ref: carrier_ref.map(str::to_owned),
            at_ms,
        }
    }

    #[test]
    fn one_report_per_message_keeps_the_furthest_status_and_the_reference() {
        let batch = vec![
            report("a", "sent", Some("ref-a"), 1),
            report("b", "sent", None, 2),
            report("a", "delivered", None, 3),
        ];
        let latest = latest_per_message(&batch);
        assert_eq!(latest.len(), 2);
        assert_eq!(
            (latest[0].id, latest[0].status, latest[0].carrier_ref, latest[0].at_ms),
            ("a", "delivered", Some("ref-a"), 3)
        );
        assert_eq!((latest[1].id, latest[1].status), ("b", "sent"));
        // A late "sent" does not undo a final status.
        let batch = vec![report("a", "failed", None, 5), report("a", "sent", Some("r"), 6)];
        assert_eq!(latest_per_message(&batch)[0].status, "failed");
    }
}
