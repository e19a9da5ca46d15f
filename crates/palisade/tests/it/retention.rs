//! Retention of messages: the tenant's period within the operator's
//! bounds, soft deletion (hidden, restorable by the operator), removal
//! after the grace period with usage kept, each pass audited.

use reqwest::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::common::{Backend, TestServer};

backend_tests!(messages_leave_after_the_tenants_period_and_usage_stays,);

const FROM: &str = "+34612345678";
const DAY_MS: i64 = 86_400_000;

/// A tenant with an identity and credits: an owner API key (it outlives
/// the days the test skips) and the tenant id.
async fn sender(s: &TestServer, name: &str) -> (String, String) {
    let t = s.tenant(name).await;
    s.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let (_, key) = s.api_key(&t.token, json!({"name": "retention", "role": "owner"})).await;
    (key, t.id)
}

async fn send(s: &TestServer, token: &str, body: &str) -> String {
    let r = s.post("/v1/messages", token, json!({"from": FROM, "to": "+34699000111", "body": body})).await.expect(201);
    r.body["id"].as_str().unwrap().to_owned()
}

async fn listed(s: &TestServer, token: &str) -> usize {
    s.get("/v1/messages", token).await.expect(200).body["data"].as_array().unwrap().len()
}

async fn usage(s: &TestServer, token: &str, hour: &str) -> Value {
    let start = time::OffsetDateTime::parse(hour, &Rfc3339).unwrap();
    let end = (start + time::Duration::hours(1)).format(&Rfc3339).unwrap();
    let r = s.get(&format!("/v1/usage?granularity=hour&since={hour}&until={end}"), token).await.expect(200);
    r.body["data"][0]["messages"].clone()
}

async fn messages_leave_after_the_tenants_period_and_usage_stays(backend: Backend) {
    let s = TestServer::start(backend).await;
    let (token, tenant_id) = sender(&s, "Short").await;
    let (other, _) = sender(&s, "Default").await;
    // The operator's bounds (1 to 3650 days) hold.
    // A forgotten member is a 400, not a silent return to the default.
    for bad in [json!({"messages_days": 0}), json!({"messages_days": 3651}), json!({})] {
        s.call(Method::PUT, "/v1/tenant/retention", Some(&token), Some(bad)).await.expect(400);
    }
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&token), Some(json!({"messages_days": 1}))).await;
    let r = r.expect(200);
    assert_eq!((r.body["messages_days"].as_i64(), r.body["messages_chosen"].as_bool()), (Some(1), Some(true)));
    assert_eq!(s.get("/v1/tenant/retention", &other).await.expect(200).body["messages_days"], 365);
    let id = send(&s, &token, "old news").await;
    send(&s, &token, "older news").await;
    send(&s, &other, "kept for a year").await;
    let hour = s.get("/v1/usage?granularity=hour", &token).await.expect(200).body["data"][0]["hour"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = usage(&s, &token, &hour).await;
    assert_eq!(before["count"], 2);

    // Three days later (a `sent` message waits a day more for its report):
    // hidden (soft deleted), the other tenant's kept.
    s.clock.advance_ms(3 * DAY_MS);
    assert_eq!(palisade::apply_retention(s.state()).await.unwrap(), (2, 0));
    assert_eq!((listed(&s, &token).await, listed(&s, &other).await), (0, 1));
    s.get(&format!("/v1/messages/{id}"), &token).await.expect(404);
    // The operator can bring them back within the grace period.
    let r = s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant_id}/restore-messages"), None).await;
    assert_eq!(r.expect(200).body["messages"], 2);
    assert_eq!(listed(&s, &token).await, 2);
    // Hidden again at the next pass; removed after the 30-day grace.
    assert_eq!(palisade::apply_retention(s.state()).await.unwrap(), (2, 0));
    s.clock.advance_ms(31 * DAY_MS);
    assert_eq!(palisade::apply_retention(s.state()).await.unwrap(), (0, 2));
    assert_eq!(palisade::apply_retention(s.state()).await.unwrap(), (0, 0), "nothing left to do");
    // Usage keeps the hour.
    assert_eq!(usage(&s, &token, &hour).await, before);
    // Audited: the changes, each pass with its counts, the restore.
    assert_eq!(s.events(&token, "action=tenant.retention_changed").await.len(), 1);
    let passes = s.events(&token, "action=retention.applied").await;
    assert_eq!(passes.len(), 3, "{passes:?}");
    assert!(passes.iter().any(|e| e["details"]["messages"]["removed"] == 2));
    assert_eq!(s.events(&token, "action=retention.restored").await.len(), 1);
    // Back to the default.
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&token), Some(json!({"messages_days": null}))).await;
    assert_eq!(r.expect(200).body["messages_days"], 365);
    s.stop().await;
}
