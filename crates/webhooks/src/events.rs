//! The events a tenant can subscribe to, and their payload shape:
//! `{"type", "timestamp", "data"}`, as the Standard Webhooks spec suggests.

use palisade_core::TenantId;
use palisade_store::webhooks::NewEvent;
use serde_json::{json, Value};

/// Every event type an endpoint may list (or `*` for all of them).
pub const EVENT_TYPES: &[&str] = &[
    "message.sent",
    "message.delivered",
    "message.failed",
    "call.received",
    "call.started",
    "call.ended",
    "cdr.written",
    "recording.completed",
    "api_key.created",
    "api_key.revoked",
    "api_key.rotated",
    "credits.added",
    "webhook.endpoint_disabled",
    "webhook.test",
];

/// The known type as a `'static` name, or `None`.
pub fn known(name: &str) -> Option<&'static str> {
    EVENT_TYPES.iter().copied().find(|t| *t == name)
}

/// One event for the queue (see `palisade_store::webhooks::enqueue_stmts`).
pub fn event(tenant: TenantId, event_type: &'static str, data: Value, now_ms: i64) -> NewEvent {
    let payload = json!({
        "type": event_type,
        "timestamp": palisade_core::clock::rfc3339(now_ms),
        "data": data,
    });
    NewEvent {
        id: uuid::Uuid::now_v7().to_string(),
        tenant_id: tenant.to_string(),
        event_type,
        payload: payload.to_string(),
        now: now_ms,
        if_message_moves: None,
        except_endpoint: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_has_type_timestamp_and_data() {
        let e = event(TenantId::new(), "message.delivered", json!({"id": "m1"}), 0);
        let v: Value = serde_json::from_str(&e.payload).unwrap();
        assert_eq!(v["type"], "message.delivered");
        assert!(v["timestamp"].as_str().unwrap().starts_with("1970-01-01T00:00:00"));
        assert_eq!(v["data"]["id"], "m1");
        assert_eq!(known("message.delivered"), Some("message.delivered"));
        assert_eq!(known("message.nope"), None);
    }
}
