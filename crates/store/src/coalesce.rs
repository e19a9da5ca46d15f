//! Work that arrives at the same moment, done together: callers queue a
//! job; up to `in_flight` runners each take what is queued (at most
//! `max_batch` jobs) and handle it as one batch. Runners exist only while
//! there is work, so nothing runs (or holds a database pool) when idle.

use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};

pub(crate) struct Coalescer<J> {
    state: Mutex<State<J>>,
    max_batch: usize,
    in_flight: usize,
}

struct State<J> {
    queued: Vec<J>,
    runners: usize,
}

impl<J> std::fmt::Debug for Coalescer<J> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Coalescer")
    }
}

impl<J: Send + 'static> Coalescer<J> {
    pub(crate) fn new(max_batch: usize, in_flight: usize) -> Self {
        Coalescer { state: Mutex::new(State { queued: Vec::new(), runners: 0 }), max_batch, in_flight }
    }

    /// Queues `job`; when fewer than `in_flight` runners are at work,
    /// starts one that hands batches to `run` until the queue is empty.
    pub(crate) fn submit<F, Fut>(self: &Arc<Self>, job: J, run: F)
    where
        F: FnMut(Vec<J>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let start = {
            let mut s = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.queued.push(job);
            let start = s.runners < self.in_flight;
            s.runners += usize::from(start);
            start
        };
        if start {
            let mut runner = Runner { of: self.clone(), counted: true };
            tokio::spawn(async move {
                let mut run = run;
                while let Some(batch) = runner.take() {
                    // A batch of its own task: if it panics, its callers
                    // hear their jobs were dropped and the runner goes on
                    // with what was queued meanwhile.
                    if let Err(e) = tokio::spawn(run(batch)).await {
                        tracing::error!(error = %e, "a batch of queued work failed");
                    }
                }
            });
        }
    }
}

/// A runner's place in the count. It leaves the count under the same lock
/// that saw the queue empty (a job queued just after finds no runner and
/// starts one), or when dropped (its task was cancelled: a runtime that
/// shuts down).
struct Runner<J> {
    of: Arc<Coalescer<J>>,
    counted: bool,
}

impl<J> Runner<J> {
    fn take(&mut self) -> Option<Vec<J>> {
        let mut s = self.of.state.lock().unwrap_or_else(PoisonError::into_inner);
        if s.queued.is_empty() {
            s.runners -= 1;
            self.counted = false;
            return None;
        }
        let n = s.queued.len().min(self.of.max_batch);
        Some(s.queued.drain(..n).collect())
    }
}

impl<J> Drop for Runner<J> {
    fn drop(&mut self) {
        if self.counted {
            let mut s = self.of.state.lock().unwrap_or_else(PoisonError::into_inner);
            s.runners -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_job_runs_once_in_batches_no_larger_than_the_bound() {
        let c = Arc::new(Coalescer::<(usize, tokio::sync::oneshot::Sender<usize>)>::new(8, 2));
        let batches = Arc::new(AtomicUsize::new(0));
        let mut answers = Vec::new();
        for i in 0..500 {
            let (tx, rx) = tokio::sync::oneshot::channel();
            let batches = batches.clone();
            c.submit((i, tx), move |batch| {
                let batches = batches.clone();
                async move {
                    assert!(batch.len() <= 8);
                    batches.fetch_add(1, Ordering::Relaxed);
                    tokio::task::yield_now().await;
                    for (i, tx) in batch {
                        let _ = tx.send(i);
                    }
                }
            });
            answers.push(rx);
        }
        for (i, rx) in answers.into_iter().enumerate() {
            assert_eq!(rx.await.unwrap(), i);
        }
        let n = batches.load(Ordering::Relaxed);
        assert!((63..500).contains(&n), "{n} batches");
        // Idle again: the runners have counted themselves out.
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert_eq!(c.state.lock().unwrap().runners, 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_batch_does_not_strand_jobs_queued_behind_it() {
        // Quiet: the default hook's backtrace takes minutes in a debug build.
        std::panic::set_hook(Box::new(|_| {}));
        let c = Arc::new(Coalescer::<(bool, tokio::sync::oneshot::Sender<()>)>::new(1, 1));
        let run = |batch: Vec<(bool, tokio::sync::oneshot::Sender<()>)>| async move {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            for (panics, tx) in batch {
                assert!(!panics, "boom");
                let _ = tx.send(());
            }
        };
        let (tx, first) = tokio::sync::oneshot::channel();
        c.submit((true, tx), run);
        // Queued while the first batch runs, behind the one runner.
        let (tx, second) = tokio::sync::oneshot::channel();
        c.submit((false, tx), run);
        assert!(first.await.is_err(), "the caller hears its job was dropped");
        tokio::time::timeout(std::time::Duration::from_secs(5), second).await.unwrap().unwrap();
    }
}
