//! Outbound webhooks: Standard Webhooks signatures, endpoint secrets sealed
//! at rest, and an HTTP client that only reaches addresses the SSRF guard
//! has checked.

pub mod client;
pub mod events;
pub mod signature;
pub mod worker;
