//! Idempotent retries: a key is bound to the operation, the credential
//! that sent it and the request's fields, and answers the first response
//! again for a day.

use palisade_core::{Principal, TenantScope};
use palisade_store::{Db, StoreError};
use sha2::{Digest, Sha256};

pub const TTL_MS: i64 = 24 * 3600 * 1000;

/// A response as stored with its key, in the transport's terms (for HTTP:
/// the status and the JSON body).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub status: i64,
    pub body: String,
}

/// What a key is bound to. The same key with anything else is refused, so
/// a key can neither replay another operation's response nor let one
/// credential (an agent token) see another's.
pub fn request_hash(principal: &Principal, operation: &str, fields: &[&str]) -> String {
    let actor = principal.actor();
    let doc = serde_json::json!([operation, actor.kind, actor.id, fields]);
    hex::encode(Sha256::digest(doc.to_string().as_bytes()))
}

/// What a key is, for a request with `request_hash`.
#[derive(Debug, PartialEq, Eq)]
pub enum Known {
    New,
    /// The first answer, to give again.
    Replay(Answer),
    /// Used with another request.
    Reused,
}

/// Looks `key` up among the tenant's live keys.
pub async fn look_up(
    db: &Db,
    keys: &palisade_keys::Keyring,
    scope: &TenantScope,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<Known, StoreError> {
    let ring = keys.of(scope).await?;
    let stored = palisade_store::messages::idempotent(db.reader(), scope, &ring, key, now - TTL_MS).await?;
    Ok(match stored {
        None => Known::New,
        Some(s) if s.request_hash != request_hash => Known::Reused,
        Some(s) => Known::Replay(Answer { status: s.status, body: s.response }),
    })
}
