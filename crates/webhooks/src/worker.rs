//! The delivery worker: leases due deliveries from the queue in the
//! database, signs and sends each, records the attempt and schedules the
//! next one. Several workers (and instances) share the queue through the
//! lease; a crash mid-attempt only delays that delivery until its lease ends.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use palisade_core::{Clock, TenantId, TenantScope};
use palisade_store::webhooks::{self as store, AttemptRecord, Claimed, DeliveryJob, Next};
use palisade_store::{Db, Stmt};
use rand::Rng;
use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinSet;

use crate::client::{AttemptError, Outcome, WebhookClient};
use crate::signature::{self, Ed25519Signer, WebhookSecret};
use palisade_seal::Sealer;

/// How often a frozen tenant's deliveries look again.
const FROZEN_RECHECK_MS: i64 = 60_000;

/// How the worker paces attempts.
#[derive(Debug, Clone)]
pub struct Schedule {
    /// Seconds before each attempt; its length is the number of attempts.
    pub delays_secs: Vec<u64>,
    /// An endpoint failing this long without a success is disabled.
    pub disable_after_ms: i64,
    /// How long a claimed delivery belongs to its worker (longer than the
    /// attempt timeout).
    pub lease_ms: i64,
    /// Deliveries in flight at once.
    pub concurrency: usize,
    /// How often the queue is polled when nothing wakes the worker.
    pub poll: Duration,
}

pub struct Worker {
    pub db: Db,
    pub clock: Arc<dyn Clock>,
    pub client: Arc<WebhookClient>,
    /// Opens secrets sealed before tenants had keys of their own.
    pub sealer: Arc<Sealer>,
    /// Tenants' data keys: endpoint secrets are sealed under them.
    pub keys: Arc<palisade_keys::Keyring>,
    pub schedule: Schedule,
    /// Notified when something was queued, so deliveries start at once.
    pub wake: Arc<Notify>,
}

/// Where an endpoint's HMAC secrets are sealed under the tenant's keys: one
/// place for the current and previous ones (a rotation moves the current
/// ciphertext to the previous column as it is).
pub fn secret_place(endpoint_id: &str) -> palisade_seal::envelope::Place<'_> {
    palisade_seal::envelope::Place { table: "webhook_endpoints", column: "secrets", row: endpoint_id }
}

/// Where an endpoint's Ed25519 signing key is sealed: apart from the HMAC
/// secrets, so neither can stand in for the other.
pub fn ed25519_place(endpoint_id: &str) -> palisade_seal::envelope::Place<'_> {
    palisade_seal::envelope::Place { table: "webhook_endpoints", column: "ed25519", row: endpoint_id }
}

/// The additional authenticated data of an endpoint's secrets sealed by the
/// static key (before tenants had keys): a ciphertext copied to another row
/// does not open.
pub fn seal_context(tenant: &str, endpoint_id: &str) -> Vec<u8> {
    format!("webhook-endpoint/{tenant}/{endpoint_id}").into_bytes()
}

/// Endpoint secrets, for the re-sealing job (older ones were sealed by the
/// static key).
pub const SEALED_COLUMNS: [palisade_keys::reseal::SealedColumn; 3] = {
    use palisade_keys::reseal::SealedColumn;
    use palisade_store::static_sealed::Column;
    const fn column(column: &'static str) -> Column {
        Column { table: "webhook_endpoints", id: "id", column }
    }
    [
        SealedColumn { column: column("secret_sealed"), place: secret_place, legacy_aad: Some(seal_context) },
        SealedColumn { column: column("previous_secret_sealed"), place: secret_place, legacy_aad: Some(seal_context) },
        SealedColumn { column: column("ed25519_sealed"), place: ed25519_place, legacy_aad: Some(seal_context) },
    ]
};

impl Worker {
    /// Runs until the task is dropped or aborted (which aborts the attempts
    /// in flight; their leases run out and they are retried). Each delivery
    /// runs as its own task while it holds one of `concurrency` permits, so
    /// one slow endpoint holds up only its own attempts; the worker claims
    /// the next rows while the last ones are still running.
    pub fn start(self: Arc<Self>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let permits = Arc::new(Semaphore::new(self.schedule.concurrency));
            let mut running = JoinSet::new();
            // Claimed, waiting for a permit: at most `concurrency` rows, so
            // they start long before their lease (attempt timeout + 30 s) ends.
            let mut ready: VecDeque<(Claimed, i64)> = VecDeque::new();
            loop {
                while running.try_join_next().is_some() {}
                if ready.is_empty() {
                    let now = self.clock.now_ms();
                    let lease_until = now + self.schedule.lease_ms;
                    let limit = self.schedule.concurrency as i64;
                    match store::claim_due(&self.db, now, lease_until, limit).await {
                        Ok(claimed) if !claimed.is_empty() => {
                            ready.extend(claimed.into_iter().map(|c| (c, lease_until)));
                        }
                        Ok(_) => {
                            tokio::select! {
                                _ = self.wake.notified() => {}
                                _ = tokio::time::sleep(self.schedule.poll) => {}
                            }
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "webhook queue poll failed");
                            tokio::time::sleep(self.schedule.poll).await;
                            continue;
                        }
                    }
                }
                let Ok(permit) = permits.clone().acquire_owned().await else { return };
                let Some((c, lease_until)) = ready.pop_front() else { continue };
                let me = self.clone();
                running.spawn(async move {
                    if let Err(e) = me.deliver(&c, lease_until).await {
                        tracing::warn!(error = %e, endpoint = %c.endpoint_id, event = %c.event_id,
                            "webhook delivery not recorded");
                    }
                    drop(permit);
                });
            }
        })
    }

    async fn deliver(&self, c: &Claimed, lease_until: i64) -> palisade_store::Result<()> {
        let tenant: TenantId = c
            .tenant_id
            .parse()
            .map_err(|_| palisade_store::StoreError::Corrupt(format!("tenant id {}", c.tenant_id)))?;
        let scope = TenantScope::for_system(tenant);
        let Some(job) = store::load_delivery(self.db.reader(), &scope, &c.endpoint_id, &c.event_id).await? else {
            // Queued while its endpoint was being deleted: nothing to send.
            return self.write(vec![store::drop_orphan_stmt(&scope, c, lease_until)]).await;
        };
        let started = self.clock.now_ms();
        if job.tenant_status != "active" {
            // A frozen tenant's deliveries wait, without using up attempts.
            let until = started + FROZEN_RECHECK_MS;
            return self.write(vec![store::postpone_stmt(&scope, c, lease_until, until)]).await;
        }
        // An attempt that never reached the network.
        let unsent = |error_class: &'static str, outcome: &'static str| AttemptRecord {
            attempt: c.attempt,
            at: started,
            status_code: None,
            latency_ms: 0,
            response_excerpt: "",
            error_class: Some(error_class),
            outcome,
        };
        if job.endpoint_status != "enabled" {
            let rec = unsent("endpoint_disabled", "skipped");
            return self.write(store::finish_stmts(&scope, c, lease_until, &rec, Next::Failed)).await;
        }
        let keys = self.keys.of(&scope).await.map_err(|e| e.to_string());
        let headers = match keys.and_then(|keys| self.sign(&scope, &keys, c, &job, started)) {
            Ok(h) => h,
            Err(e) => {
                // A secret that does not open is the operator's problem
                // (wrong encryption key); never send unsigned.
                tracing::error!(error = %e, endpoint = %c.endpoint_id, "webhook secret does not open");
                let rec = unsent("signing", "retry");
                let next = self.next_after_failure(c.attempt, None, started);
                return self.write(store::finish_stmts(&scope, c, lease_until, &rec, next)).await;
            }
        };
        let attempt = self.client.post(&job.url, headers, bytes::Bytes::from(job.payload.clone().into_bytes())).await;
        let now = self.clock.now_ms();
        let latency_ms = i64::try_from(attempt.latency.as_millis()).unwrap_or(i64::MAX);
        let status = attempt.status;
        let delivered = attempt.outcome() == Outcome::Delivered;
        let gone = attempt.outcome() == Outcome::Gone;
        let (outcome, next) = if delivered {
            ("delivered", Next::Delivered)
        } else if gone {
            ("gone", Next::Failed)
        } else {
            match self.next_after_failure(c.attempt, attempt.retry_after, now) {
                Next::Failed => ("failed", Next::Failed),
                n => ("retry", n),
            }
        };
        let rec = AttemptRecord {
            attempt: c.attempt,
            at: now,
            status_code: status.map(i64::from),
            latency_ms,
            response_excerpt: &attempt.response_excerpt,
            error_class: attempt.error.as_ref().map(AttemptError::class),
            outcome,
        };
        let mut stmts = store::finish_stmts(&scope, c, lease_until, &rec, next);
        let failing_too_long =
            !delivered && job.failing_since.is_some_and(|since| now - since >= self.schedule.disable_after_ms);
        // One update of the endpoint row per list: on PostgreSQL the list is
        // one statement, where a second update of a row would be lost.
        if gone || failing_too_long {
            let reason = if gone { "the endpoint answered 410 Gone" } else { "failing for too long" };
            stmts.extend(self.disable(&scope, tenant, &c.endpoint_id, reason, now));
        } else {
            stmts.push(store::endpoint_health_stmt(&scope, &c.endpoint_id, delivered, now));
        }
        self.write(stmts).await
    }

    /// Headers of one attempt: the timestamp is the attempt's, so a retry
    /// hours later still falls in the receiver's window.
    fn sign(
        &self,
        scope: &TenantScope,
        keys: &palisade_seal::envelope::TenantKeys,
        c: &Claimed,
        job: &DeliveryJob,
        now_ms: i64,
    ) -> Result<http::HeaderMap, String> {
        let aad = seal_context(&scope.tenant_id().to_string(), &c.endpoint_id);
        let open_at = |place, sealed: &str| -> Result<String, String> {
            let plain = palisade_seal::envelope::open_secret(Some(keys), &self.sealer, place, &aad, sealed)
                .map_err(|e| e.to_string())?;
            String::from_utf8(plain).map_err(|e| e.to_string())
        };
        let open = |sealed: &str| open_at(secret_place(&c.endpoint_id), sealed);
        let mut secrets = vec![WebhookSecret::parse(&open(&job.secret_sealed)?).map_err(|e| e.to_string())?];
        if let (Some(prev), Some(until)) = (&job.previous_secret_sealed, job.previous_secret_until) {
            if until > now_ms {
                secrets.push(WebhookSecret::parse(&open(prev)?).map_err(|e| e.to_string())?);
            }
        }
        let ed = match &job.ed25519_sealed {
            Some(s) => Some(
                Ed25519Signer::from_secret_string(&open_at(ed25519_place(&c.endpoint_id), s)?)
                    .map_err(|e| e.to_string())?,
            ),
            None => None,
        };
        let ts = now_ms.div_euclid(1000);
        let mut h = http::HeaderMap::new();
        h.insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
        for (name, value) in signature::standard_headers(&c.event_id, ts, job.payload.as_bytes(), &secrets, ed.as_ref())
        {
            let value = http::HeaderValue::from_str(&value).map_err(|e| e.to_string())?;
            h.insert(name, value);
        }
        Ok(h)
    }

    fn next_after_failure(&self, n: i64, retry_after: Option<Duration>, now: i64) -> Next {
        let jitter = rand::thread_rng().gen_range(-1.0..=1.0);
        next_attempt(&self.schedule.delays_secs, n, retry_after, now, jitter)
    }

    /// Disables the endpoint, says so to the tenant's other endpoints, and
    /// audits it.
    fn disable(&self, scope: &TenantScope, tenant: TenantId, endpoint_id: &str, reason: &str, now: i64) -> Vec<Stmt> {
        let mut stmts = vec![store::disable_stmt(scope, endpoint_id, reason, now)];
        let data = serde_json::json!({ "endpoint_id": endpoint_id, "reason": reason });
        let mut told = crate::events::event(tenant, "webhook.endpoint_disabled", data.clone(), now);
        // On PostgreSQL the list's snapshot still shows it enabled.
        told.except_endpoint = Some(endpoint_id.to_owned());
        stmts.extend(store::enqueue_stmts(&[told]));
        let event = palisade_audit::Event::new(
            "webhook.endpoint_disabled",
            Some(tenant),
            palisade_core::principal::Actor::system(),
        )
        .resource("webhook", endpoint_id)
        .details(data);
        stmts.push(palisade_audit::append_stmt(&event, &Default::default(), now).1);
        stmts
    }

    async fn write(&self, stmts: Vec<Stmt>) -> palisade_store::Result<()> {
        match self.db.write_guarded(stmts).await? {
            Ok(_) => Ok(()),
            // Another worker took the delivery over after our lease ran out;
            // its record stands.
            Err(reason) => {
                tracing::warn!(reason, "webhook attempt not recorded");
                Ok(())
            }
        }
    }
}

/// The next attempt's time after failed attempt `n` (from 1), or `Failed`
/// when the schedule is used up. `jitter` in [-1, 1] moves it by up to ±10%
/// so deliveries that failed together do not retry together; a longer
/// `Retry-After` wins (up to a day).
pub fn next_attempt(delays_secs: &[u64], n: i64, retry_after: Option<Duration>, now: i64, jitter: f64) -> Next {
    let Some(delay) = usize::try_from(n).ok().and_then(|n| delays_secs.get(n)) else {
        return Next::Failed;
    };
    let base_ms = i64::try_from(*delay).unwrap_or(i64::MAX / 4000).saturating_mul(1000);
    let spread = (base_ms as f64 * 0.1 * jitter.clamp(-1.0, 1.0)) as i64;
    let asked = retry_after.map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX).min(86_400_000));
    Next::RetryAt(now + (base_ms + spread).max(asked))
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: &[u64] = &[0, 5, 300, 1800, 7200, 18000, 36000, 36000];

    fn at(n: i64, retry_after: Option<u64>, jitter: f64) -> Option<i64> {
        match next_attempt(DEFAULT, n, retry_after.map(Duration::from_secs), 1_000, jitter) {
            Next::RetryAt(t) => Some(t - 1_000),
            Next::Failed => None,
            Next::Delivered => unreachable!(),
        }
    }

    #[test]
    fn the_schedule_is_followed_then_the_delivery_fails() {
        let waits: Vec<_> = (1..=8).map(|n| at(n, None, 0.0)).collect();
        let expected: Vec<_> = DEFAULT[1..].iter().map(|s| Some(*s as i64 * 1000)).chain([None]).collect();
        assert_eq!(waits, expected);
        assert_eq!(at(9, None, 0.0), None);
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        assert_eq!(at(2, None, 1.0), Some(330_000));
        assert_eq!(at(2, None, -1.0), Some(270_000));
        assert_eq!(at(2, None, 7.0), Some(330_000));
    }

    #[test]
    fn a_longer_retry_after_wins_up_to_a_day() {
        assert_eq!(at(1, Some(600), 0.0), Some(600_000));
        assert_eq!(at(2, Some(1), 0.0), Some(300_000));
        assert_eq!(at(1, Some(10 * 86_400), 0.0), Some(86_400_000));
        // Retry-After does not extend the schedule.
        assert_eq!(at(8, Some(60), 0.0), None);
    }
}
