//! What several instances share: the abuse state (rate-limit buckets, WAF
//! counters and blocks, login and credential lockouts) in Redis, with the
//! failure policy that applies while Redis is unreachable, and the Redis
//! connection itself, for whatever else instances share through it.
//!
//! A crate of its own rather than a feature of `palisade-guard`: guard
//! stays free of I/O (its rules are pure and fuzzed), and the Redis client,
//! its TLS and its connection handling are kept in one place that other
//! shared things (an invalidation bus) can reuse.

pub mod broadcast;
pub mod failover;
pub mod redis;
pub mod state;

pub use failover::{Failover, Observer};
pub use state::RedisState;
