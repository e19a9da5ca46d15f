//! The verified-credential cache: what authentication read from the
//! database about a credential that exists, kept for a short time so the
//! next request with it needs no read.
//!
//! - Keyed by the credential's SHA-256 (never the secret). Only what the
//!   database found is kept: an unknown credential leaves nothing behind, so
//!   random keys cannot grow it. Bounded in entries and bytes (oldest first
//!   out).
//! - Invalidated per tenant: any change to what a tenant's credentials may
//!   do drops all of that tenant's entries. A sequence number taken before
//!   the read ([`Ticket`]) keeps a read that raced a change from being kept.
//! - An entry lives at most the TTL, whatever happens to messages; while the
//!   instance cannot hear invalidations ([`CredentialCache::set_live`]) it
//!   serves nothing from memory.

use std::any::Any;
use std::collections::{HashMap, VecDeque};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use palisade_core::TenantId;
use prometheus_client::metrics::counter::Counter;

/// Which kind of credential, and the SHA-256 that names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    pub kind: Kind,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    ApiKey,
    AgentToken,
    /// An access token's session: its tenant, person, family and id.
    Session,
}

/// Taken before the database read whose result is [`CredentialCache::put`].
#[derive(Debug, Clone, Copy)]
pub struct Ticket(u64);

/// Counters for the metrics endpoint.
#[derive(Clone, Default)]
pub struct CacheCounters {
    pub hits: Counter,
    pub misses: Counter,
    pub invalidations: Counter,
    pub flushes: Counter,
}

const SHARDS: usize = 16;
/// Above this, one entry is not kept (a credential with huge restriction lists).
const MAX_ENTRY_BYTES: usize = 16 * 1024;
/// Above this many invalidated tenants remembered, everything is dropped.
const MAX_TENANT_MARKS: usize = 65_536;

pub struct CredentialCache {
    ttl_ms: i64,
    shard_entries: usize,
    shard_bytes: usize,
    shards: Box<[Mutex<Shard>]>,
    marks: RwLock<Marks>,
    /// Incremented (under `marks`) by each invalidation.
    seq: AtomicU64,
    live: AtomicBool,
    counters: CacheCounters,
}

/// When each tenant, and everything, was last invalidated.
#[derive(Default)]
struct Marks {
    flushed: u64,
    tenants: HashMap<TenantId, u64>,
}

#[derive(Default)]
struct Shard {
    map: HashMap<Key, Slot>,
    /// Insertion order, for eviction; a key may be here after it left `map`.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    next: u64,
}

struct Slot {
    value: Arc<dyn Any + Send + Sync>,
    tenant: TenantId,
    ticket: u64,
    at_ms: i64,
    bytes: usize,
    id: u64,
}

impl CredentialCache {
    /// A cache keeping entries `ttl_secs` (0: keeps nothing), at most
    /// `max_entries` of them and `max_bytes` in all.
    pub fn new(ttl_secs: u64, max_entries: usize, max_bytes: usize, counters: CacheCounters) -> CredentialCache {
        CredentialCache {
            ttl_ms: i64::try_from(ttl_secs.saturating_mul(1000)).unwrap_or(i64::MAX),
            shard_entries: max_entries.div_ceil(SHARDS),
            shard_bytes: max_bytes / SHARDS,
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            marks: RwLock::default(),
            seq: AtomicU64::new(0),
            live: AtomicBool::new(true),
            counters,
        }
    }

    pub fn enabled(&self) -> bool {
        self.ttl_ms > 0 && self.shard_entries > 0
    }

    pub fn ticket(&self) -> Ticket {
        Ticket(self.seq.load(Ordering::SeqCst))
    }

    /// The entry for `key` if it is younger than the TTL, kept since its
    /// tenant's last invalidation, and the cache is live.
    pub fn get<T: Any + Send + Sync>(&self, key: &Key, now_ms: i64) -> Option<Arc<T>> {
        if !self.enabled() {
            return None;
        }
        let found = self.live.load(Ordering::SeqCst).then(|| self.lookup(key, now_ms)).flatten();
        match found.and_then(|v| v.downcast::<T>().ok()) {
            Some(v) => {
                self.counters.hits.inc();
                Some(v)
            }
            None => {
                self.counters.misses.inc();
                None
            }
        }
    }

    fn lookup(&self, key: &Key, now_ms: i64) -> Option<Arc<dyn Any + Send + Sync>> {
        let mut shard = self.shard(key).lock().unwrap_or_else(PoisonError::into_inner);
        let slot = shard.map.get(key)?;
        // Time runs one way for this check: a clock set back does not extend it.
        let fresh = now_ms >= slot.at_ms && now_ms - slot.at_ms < self.ttl_ms;
        if fresh && self.valid(slot.tenant, slot.ticket) {
            return Some(slot.value.clone());
        }
        if let Some(gone) = shard.map.remove(key) {
            shard.bytes -= gone.bytes;
        }
        None
    }

    fn valid(&self, tenant: TenantId, ticket: u64) -> bool {
        let marks = self.marks.read().unwrap_or_else(PoisonError::into_inner);
        marks.flushed <= ticket && marks.tenants.get(&tenant).is_none_or(|&m| m <= ticket)
    }

    /// Keeps what a read begun at `ticket` found (`bytes`: about its size).
    pub fn put<T: Any + Send + Sync>(
        &self,
        key: Key,
        ticket: Ticket,
        tenant: TenantId,
        value: Arc<T>,
        bytes: usize,
        now_ms: i64,
    ) {
        let bytes = bytes + std::mem::size_of::<Slot>() + std::mem::size_of::<Key>() * 2;
        if !self.enabled() || !self.live.load(Ordering::SeqCst) || bytes > MAX_ENTRY_BYTES.min(self.shard_bytes) {
            return;
        }
        // Changed while it was read: keeping it would serve the old rows.
        if !self.valid(tenant, ticket.0) {
            return;
        }
        let mut shard = self.shard(&key).lock().unwrap_or_else(PoisonError::into_inner);
        let shard = &mut *shard;
        if let Some(old) = shard.map.remove(&key) {
            shard.bytes -= old.bytes;
        }
        while shard.map.len() >= self.shard_entries || shard.bytes + bytes > self.shard_bytes {
            let Some((k, id)) = shard.order.pop_front() else { break };
            if shard.map.get(&k).is_some_and(|s| s.id == id) {
                if let Some(gone) = shard.map.remove(&k) {
                    shard.bytes -= gone.bytes;
                }
            }
        }
        // Keys replaced or dropped stay in `order` until their turn: keep it
        // from outgrowing the map.
        if shard.order.len() > 2 * self.shard_entries.max(16) {
            let map = &shard.map;
            shard.order.retain(|(k, id)| map.get(k).is_some_and(|s| s.id == *id));
        }
        shard.next += 1;
        let id = shard.next;
        shard.order.push_back((key, id));
        shard.bytes += bytes;
        shard.map.insert(key, Slot { value, tenant, ticket: ticket.0, at_ms: now_ms, bytes, id });
    }

    /// Drops every entry of the tenant (named as stored; one that is not a
    /// tenant id drops everything).
    pub fn invalidate_named(&self, tenant: &str) {
        match TenantId::from_str(tenant) {
            Ok(t) => self.invalidate(t),
            Err(_) => self.flush(),
        }
    }

    pub fn invalidate(&self, tenant: TenantId) {
        self.counters.invalidations.inc();
        let mut marks = self.marks.write().unwrap_or_else(PoisonError::into_inner);
        let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
        if marks.tenants.len() >= MAX_TENANT_MARKS {
            marks.tenants.clear();
            marks.flushed = seq;
        } else {
            marks.tenants.insert(tenant, seq);
        }
    }

    /// Where the tenant's invalidations stand: it changes whenever one of
    /// its credentials, identities or limits may have changed, on any
    /// instance. `None` while invalidations are not being heard.
    pub fn mark(&self, tenant: TenantId) -> Option<u64> {
        if !self.live.load(Ordering::SeqCst) {
            return None;
        }
        let marks = self.marks.read().unwrap_or_else(PoisonError::into_inner);
        Some(marks.flushed.max(marks.tenants.get(&tenant).copied().unwrap_or(0)))
    }

    /// Drops everything (messages may have been lost).
    pub fn flush(&self) {
        self.counters.flushes.inc();
        {
            let mut marks = self.marks.write().unwrap_or_else(PoisonError::into_inner);
            let seq = self.seq.fetch_add(1, Ordering::SeqCst) + 1;
            marks.tenants.clear();
            marks.flushed = seq;
        }
        for shard in self.shards.iter() {
            let mut s = shard.lock().unwrap_or_else(PoisonError::into_inner);
            *s = Shard::default();
        }
    }

    /// Whether invalidations are being heard. Not live, the cache serves
    /// and keeps nothing; going live again starts from empty.
    pub fn set_live(&self, live: bool) {
        if live {
            self.flush();
        }
        self.live.store(live, Ordering::SeqCst);
        if !live {
            self.flush();
        }
    }

    pub fn counters(&self) -> &CacheCounters {
        &self.counters
    }

    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.lock().unwrap_or_else(PoisonError::into_inner).map.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn shard(&self, key: &Key) -> &Mutex<Shard> {
        // The key is a SHA-256: its bytes are already uniform.
        &self.shards[usize::from(key.hash[0]) % SHARDS]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(ttl: u64, entries: usize) -> CredentialCache {
        CredentialCache::new(ttl, entries, 1 << 20, CacheCounters::default())
    }

    fn key(n: u8) -> Key {
        let mut hash = [0u8; 32];
        hash[0] = n;
        hash[1] = n.wrapping_mul(7);
        Key { kind: Kind::ApiKey, hash }
    }

    #[test]
    fn keeps_what_was_put_for_the_ttl() {
        let c = cache(5, 100);
        let t = TenantId::new();
        c.put(key(1), c.ticket(), t, Arc::new(7u32), 10, 1_000);
        assert_eq!(c.get::<u32>(&key(1), 1_000).as_deref(), Some(&7));
        assert_eq!(c.get::<u32>(&key(1), 5_999).as_deref(), Some(&7));
        assert!(c.get::<u32>(&key(1), 6_000).is_none(), "expired at the TTL");
        assert!(c.get::<u32>(&key(2), 1_000).is_none(), "never put");
        assert_eq!((c.counters.hits.get(), c.counters.misses.get()), (2, 2));
    }

    #[test]
    fn a_clock_set_back_does_not_extend_an_entry() {
        let c = cache(5, 100);
        c.put(key(1), c.ticket(), TenantId::new(), Arc::new(1u8), 1, 10_000);
        assert!(c.get::<u8>(&key(1), 9_999).is_none());
    }

    #[test]
    fn ttl_zero_keeps_nothing() {
        let c = cache(0, 100);
        c.put(key(1), c.ticket(), TenantId::new(), Arc::new(1u8), 1, 0);
        assert!(c.get::<u8>(&key(1), 0).is_none());
        assert!(c.is_empty());
    }

    #[test]
    fn invalidating_a_tenant_drops_its_entries_only() {
        let c = cache(5, 100);
        let (a, b) = (TenantId::new(), TenantId::new());
        c.put(key(1), c.ticket(), a, Arc::new(1u8), 1, 0);
        c.put(key(2), c.ticket(), b, Arc::new(2u8), 1, 0);
        c.invalidate(a);
        assert!(c.get::<u8>(&key(1), 1).is_none());
        assert_eq!(c.get::<u8>(&key(2), 1).as_deref(), Some(&2));
        // Read again after the change: kept again.
        c.put(key(1), c.ticket(), a, Arc::new(3u8), 1, 2);
        assert_eq!(c.get::<u8>(&key(1), 3).as_deref(), Some(&3));
        c.invalidate_named(&b.to_string());
        assert!(c.get::<u8>(&key(2), 3).is_none());
    }

    #[test]
    fn a_read_that_raced_a_change_is_not_kept() {
        let c = cache(5, 100);
        let t = TenantId::new();
        let ticket = c.ticket();
        // The change commits and is announced while the read runs.
        c.invalidate(t);
        c.put(key(1), ticket, t, Arc::new(1u8), 1, 0);
        assert!(c.get::<u8>(&key(1), 0).is_none());
        // Another tenant's change does not matter to it.
        let ticket = c.ticket();
        c.invalidate(TenantId::new());
        c.put(key(1), ticket, t, Arc::new(1u8), 1, 0);
        assert!(c.get::<u8>(&key(1), 0).is_some());
    }

    #[test]
    fn flush_and_an_unknown_tenant_name_drop_everything() {
        let c = cache(5, 100);
        c.put(key(1), c.ticket(), TenantId::new(), Arc::new(1u8), 1, 0);
        let ticket = c.ticket();
        c.invalidate_named("not-a-tenant");
        assert!(c.get::<u8>(&key(1), 0).is_none());
        c.put(key(2), ticket, TenantId::new(), Arc::new(1u8), 1, 0);
        assert!(c.get::<u8>(&key(2), 0).is_none(), "read before the flush");
    }

    #[test]
    fn not_live_serves_and_keeps_nothing() {
        let c = cache(5, 100);
        let t = TenantId::new();
        c.put(key(1), c.ticket(), t, Arc::new(1u8), 1, 0);
        c.set_live(false);
        assert!(c.get::<u8>(&key(1), 0).is_none());
        c.put(key(1), c.ticket(), t, Arc::new(1u8), 1, 0);
        c.set_live(true);
        assert!(c.get::<u8>(&key(1), 0).is_none(), "back live, it starts empty");
    }

    #[test]
    fn bounded_in_entries() {
        let c = cache(5, SHARDS * 4);
        let t = TenantId::new();
        for i in 0..=255u8 {
            for j in 0..8u8 {
                let mut k = key(i);
                k.hash[2] = j;
                c.put(k, c.ticket(), t, Arc::new(0u8), 1, 0);
            }
        }
        assert_eq!(c.len(), SHARDS * 4);
        for s in c.shards.iter() {
            assert!(s.lock().unwrap().order.len() <= 2 * 16 + 1);
        }
        // The newest stay.
        let mut last = key(255);
        last.hash[2] = 7;
        assert!(c.get::<u8>(&last, 0).is_some());
    }

    #[test]
    fn bounded_in_bytes() {
        let c = CredentialCache::new(5, 1_000_000, SHARDS * 4096, CacheCounters::default());
        let t = TenantId::new();
        for i in 0..64u8 {
            c.put(key(0), c.ticket(), t, Arc::new(0u8), 1000, 0);
            let mut k = key(0);
            k.hash[2] = i;
            c.put(k, c.ticket(), t, Arc::new(0u8), 1000, 0);
        }
        for s in c.shards.iter() {
            assert!(s.lock().unwrap().bytes <= 4096);
        }
        assert!(c.len() <= SHARDS * 4);
        // One entry larger than a shard is never kept.
        c.put(key(9), c.ticket(), t, Arc::new(0u8), 5000, 0);
        assert!(c.get::<u8>(&key(9), 0).is_none());
    }

    #[test]
    fn too_many_invalidated_tenants_flush() {
        let c = cache(5, 100);
        let t = TenantId::new();
        c.put(key(1), c.ticket(), t, Arc::new(1u8), 1, 0);
        for _ in 0..MAX_TENANT_MARKS + 1 {
            c.invalidate(TenantId::new());
        }
        assert!(c.marks.read().unwrap().tenants.len() <= MAX_TENANT_MARKS);
        assert!(c.get::<u8>(&key(1), 0).is_none());
    }
}
