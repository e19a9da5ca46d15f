//! The in-process rate-limit decision, `LocalState` (`src/state.rs`).
//!
//! Target: one keyed decision (one enforced bucket) under 100 ns on the
//! 2-core development machine.
//!
//! Quotas are huge so nothing is ever refused: this measures the admit path,
//! which is what almost every request takes. Keys rotate over many ids so
//! the maps hold realistic numbers of entries, and the clock advances by
//! 1 ms per full rotation.
//!
//! `cargo bench -p palisade-guard --bench decide`

use std::hint::black_box;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::state::{AbuseState, BlockCheck, BoxFut, Bucket, Decide, LocalState, Verdict};

const T0: i64 = 1_700_000_000_000;
const NOTICE_MS: i64 = 60_000;
/// Distinct callers (credentials).
const CALLERS: u64 = 10_000;
/// Tenants the callers belong to.
const TENANTS: u64 = 100;

fn huge(name: &'static str) -> Limit {
    Limit::per_minute(name, u32::MAX / 2).expect("non-zero quota")
}

/// The next caller id and the time now.
struct Rotation {
    i: u64,
    now_ms: i64,
}

impl Rotation {
    fn new() -> Rotation {
        Rotation { i: 0, now_ms: T0 }
    }

    fn next(&mut self) -> (u64, i64) {
        self.i += 1;
        if self.i == CALLERS {
            self.i = 0;
            self.now_ms += 1;
        }
        (self.i, self.now_ms)
    }
}

/// Polls a future once; the in-process ones are always ready.
fn now_or_never<T>(mut fut: BoxFut<'_, T>) -> T {
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => v,
        Poll::Pending => unreachable!("the in-process state is never pending"),
    }
}

/// One enforced credential bucket, partitioned by the credential.
fn keyed(state: &LocalState, limit: Limit, id: u64, now_ms: i64) -> Verdict {
    let id = u128::from(id);
    let buckets = [Bucket::enforce(Key::new(Kind::Credential, id), limit)];
    state.decide_now(&Decide { partition: id, now_ms, blocks: &[], buckets: &buckets, notice_ms: NOTICE_MS })
}

fn keyed_decision(c: &mut Criterion) {
    let state = LocalState::new();
    let limit = black_box(huge("key"));
    let mut rot = Rotation::new();
    c.bench_function("keyed_decision", |b| {
        b.iter(|| {
            let (id, now_ms) = black_box(rot.next());
            keyed(&state, limit, id, now_ms)
        })
    });
}

/// The tenant pass as the API runs it: the caller's WAF block (not in
/// force, so it is a lookup that misses), then the caller, tenant and
/// message-create buckets, all in the tenant's partition.
fn request_decision(c: &mut Criterion) {
    let state = LocalState::new();
    let (key, tenant, message) = black_box((huge("key"), huge("tenant"), huge("message_create")));
    let mut rot = Rotation::new();
    c.bench_function("request_decision", |b| {
        b.iter(|| {
            let (id, now_ms) = black_box(rot.next());
            let (caller, tenant_id) = (u128::from(id), 1 << 64 | u128::from(id % TENANTS));
            let blocks = [BlockCheck { key: Key::new(Kind::Waf, caller), refuses: true }];
            let buckets = [
                Bucket::enforce(Key::new(Kind::Credential, caller), key),
                Bucket::enforce(Key::new(Kind::Tenant, tenant_id), tenant),
                Bucket::enforce(Key::new(Kind::MessageCreate, tenant_id), message),
            ];
            let d = Decide { partition: tenant_id, now_ms, blocks: &blocks, buckets: &buckets, notice_ms: NOTICE_MS };
            state.decide_now(&d)
        })
    });
}

/// `keyed_decision` through `dyn AbuseState` and its boxed future, as the
/// API calls it.
fn through_trait(c: &mut Criterion) {
    let state: Box<dyn AbuseState> = Box::new(LocalState::new());
    let limit = black_box(huge("key"));
    let mut rot = Rotation::new();
    c.bench_function("through_trait", |b| {
        b.iter(|| {
            let (id, now_ms) = black_box(rot.next());
            let id = u128::from(id);
            let buckets = [Bucket::enforce(Key::new(Kind::Credential, id), limit)];
            let d = Decide { partition: id, now_ms, blocks: &[], buckets: &buckets, notice_ms: NOTICE_MS };
            now_or_never(state.decide(d)).expect("in process")
        })
    });
}

criterion_group!(benches, keyed_decision, request_decision, through_trait);
criterion_main!(benches);
