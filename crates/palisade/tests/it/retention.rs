//! Retention of messages and of calls and CDRs: the tenant's period within
//! the operator's bounds, soft deletion (hidden, restorable by the
//! operator), removal after the grace period with usage kept, CDRs
//! immutable until their expiry, each pass audited. (Recordings:
//! `recordings.rs`.)

use reqwest::Method;
use serde_json::{json, Value};
use time::format_description::well_known::Rfc3339;

use crate::common::{Backend, TestServer};

backend_tests!(
    messages_leave_after_the_tenants_period_and_usage_stays,
    calls_and_cdrs_leave_after_the_tenants_period_and_usage_stays,
    ended_sessions_leave_after_the_tenants_hours,
);

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
    usage_of(s, token, hour, "messages").await
}

async fn usage_of(s: &TestServer, token: &str, hour: &str, kind: &str) -> Value {
    let start = time::OffsetDateTime::parse(hour, &Rfc3339).unwrap();
    let end = (start + time::Duration::hours(1)).format(&Rfc3339).unwrap();
    let r = s.get(&format!("/v1/usage?granularity=hour&since={hour}&until={end}"), token).await.expect(200);
    r.body["data"][0][kind].clone()
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

async fn count(s: &TestServer, token: &str, path: &str) -> usize {
    s.get(path, token).await.expect(200).body["data"].as_array().unwrap().len()
}

/// A call answered, then hung up: its id, once its CDR is written.
async fn finished_call(s: &TestServer, token: &str) -> String {
    let id = s.post("/v1/calls", token, json!({"from": FROM, "to": "+34699000111"})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..250 {
        if s.get(&format!("/v1/calls/{id}"), token).await.expect(200).body["status"] == "in_progress" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    s.post(&format!("/v1/calls/{id}/hangup"), token, json!({})).await.expect(200);
    id
}

async fn calls_and_cdrs_leave_after_the_tenants_period_and_usage_stays(backend: Backend) {
    let s = TestServer::start_with(backend, |c| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await;
    let (token, tenant_id) = sender(&s, "Short").await;
    let (other, _) = sender(&s, "Default").await;
    // An array is no body either: serde would read it by position.
    for bad in [json!({"calls_days": 0}), json!({"calls_days": 3651}), json!({"calls_days": "2"}), json!([null, null])]
    {
        s.call(Method::PUT, "/v1/tenant/retention", Some(&token), Some(bad)).await.expect(400);
    }
    let call = finished_call(&s, &token).await;
    finished_call(&s, &other).await;
    let cdr = s.get("/v1/cdrs", &token).await.expect(200).body["data"][0]["id"].as_str().unwrap().to_owned();
    let hour = s.get("/v1/usage?granularity=hour", &token).await.expect(200).body["data"][0]["hour"]
        .as_str()
        .unwrap()
        .to_owned();
    let before = usage_of(&s, &token, &hour, "calls").await;
    assert_eq!(before["count"], 1);
    // A live call is never touched.
    let live = s.post("/v1/calls", &token, json!({"from": FROM, "to": "+34699000111"})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    // Kept for two years by default: forty days on, nothing moves.
    s.clock.advance_ms(40 * DAY_MS);
    assert_eq!(palisade::apply_call_retention(s.state()).await.unwrap(), Default::default());
    // The tenant shortens its period to two days.
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&token), Some(json!({"calls_days": 2}))).await;
    let r = r.expect(200).body;
    assert_eq!((r["calls_days"].as_i64(), r["calls_chosen"].as_bool()), (Some(2), Some(true)));
    assert_eq!((r["messages_days"].as_i64(), r["recordings_days"].as_i64()), (Some(365), Some(90)));
    assert_eq!(s.get("/v1/tenant/retention", &other).await.expect(200).body["calls_days"], 730);

    // Past the period: the call soft deleted, its CDR hidden, not removed,
    // though it ended long ago: the grace period runs from now. The other
    // tenant's are kept.
    let swept = palisade::apply_call_retention(s.state()).await.unwrap();
    assert_eq!((swept.calls_soft_deleted, swept.cdrs_hidden, swept.calls_removed, swept.cdrs_removed), (1, 1, 0, 0));
    assert_eq!((count(&s, &token, "/v1/calls").await, count(&s, &token, "/v1/cdrs").await), (1, 0));
    assert_eq!((count(&s, &other, "/v1/calls").await, count(&s, &other, "/v1/cdrs").await), (1, 1));
    s.get(&format!("/v1/calls/{call}"), &token).await.expect(404);
    s.get(&format!("/v1/cdrs/{cdr}"), &token).await.expect(404);
    s.get(&format!("/v1/calls/{live}"), &token).await.expect(200);
    // The CDR is still immutable: no expiry covers it yet, and none can be
    // written past the hidden mark.
    assert!(delete_cdr(&s, &cdr).await.is_err(), "a hidden CDR cannot be deleted before its expiry");
    let forged =
        sql(&s, "INSERT INTO cdr_expiries (tenant_id, ended_before, at) VALUES ($1, 9000000000000000, 0)", &tenant_id);
    assert!(forged.await.is_err(), "an expiry past the mark is refused");
    // The operator brings them back within the grace period.
    let r = s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{tenant_id}/restore-calls"), None).await;
    let r = r.expect(200).body;
    assert_eq!((r["calls"].as_u64(), r["cdrs"].as_u64()), (Some(1), Some(1)));
    s.get(&format!("/v1/cdrs/{cdr}"), &token).await.expect(200);
    // Hidden again at the next pass; removed after the 30-day grace.
    let swept = palisade::apply_call_retention(s.state()).await.unwrap();
    assert_eq!((swept.calls_soft_deleted, swept.cdrs_hidden), (1, 1));
    s.clock.advance_ms(31 * DAY_MS);
    let swept = palisade::apply_call_retention(s.state()).await.unwrap();
    assert_eq!((swept.calls_removed, swept.cdrs_removed), (1, 1));
    let swept = palisade::apply_call_retention(s.state()).await.unwrap();
    assert_eq!(swept, Default::default(), "nothing left to do");
    // Usage keeps the hour; the other tenant's CDR is still there and
    // still immutable.
    assert_eq!(usage_of(&s, &token, &hour, "calls").await, before);
    assert_eq!(count(&s, &other, "/v1/cdrs").await, 1);
    let theirs = s.get("/v1/cdrs", &other).await.expect(200).body["data"][0]["id"].as_str().unwrap().to_owned();
    assert!(delete_cdr(&s, &theirs).await.is_err());
    let passes = s.events(&token, "action=retention.applied").await;
    assert!(passes.iter().any(|e| e["details"]["cdrs"]["removed"] == 1), "{passes:?}");
    assert!(passes.iter().any(|e| e["details"]["calls"]["removed"] == 1), "{passes:?}");
    s.post(&format!("/v1/calls/{live}/hangup"), &token, json!({})).await.expect(200);
    s.stop().await;
}

/// Deletes a CDR row straight in the database, as an intruder would try.
async fn delete_cdr(s: &TestServer, id: &str) -> Result<(), sqlx::Error> {
    sql(s, "DELETE FROM cdrs WHERE id = $1", id).await
}

/// One statement straight in the database, with one argument.
async fn sql(s: &TestServer, statement: &str, arg: &str) -> Result<(), sqlx::Error> {
    use sqlx::Connection;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let r = sqlx::query(statement).bind(arg).execute(&mut db).await.map(drop);
    db.close().await.unwrap();
    r
}

async fn sessions_of(s: &TestServer, tenant: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM token_families WHERE tenant_id = $1")
        .bind(tenant)
        .fetch_one(s.state().db.reader())
        .await
        .unwrap()
}

/// Signed-out sessions leave the tenant's period (hours) after they ended;
/// a live one stays and still refreshes.
async fn ended_sessions_leave_after_the_tenants_hours(backend: Backend) {
    let s = TestServer::start(backend).await;
    let keep = s.tenant("Keeping").await;
    let brief = s.tenant("Brief").await;
    let (_, key) = s.api_key(&keep.token, json!({"name": "retention", "role": "owner"})).await;
    // The operator's bounds: 1 to 720 hours.
    for bad in [json!({"sessions_hours": 0}), json!({"sessions_hours": 721})] {
        s.call(Method::PUT, "/v1/tenant/retention", Some(&key), Some(bad)).await.expect(400);
    }
    let r = s.call(Method::PUT, "/v1/tenant/retention", Some(&key), Some(json!({"sessions_hours": 3}))).await;
    let r = r.expect(200);
    assert_eq!((r.body["sessions_hours"].as_i64(), r.body["sessions_chosen"].as_bool()), (Some(3), Some(true)));
    assert_eq!(r.body["sessions_bounds"], json!({"min_hours": 1, "max_hours": 720, "default_hours": 1}));
    assert_eq!(s.get("/v1/tenant/retention", &brief.token).await.expect(200).body["sessions_hours"], 1);
    // Each tenant signs out of one session and keeps another.
    let (_, live_refresh) = s.login(&keep.email, &keep.password).await;
    for t in [&keep, &brief] {
        s.call(Method::POST, "/v1/auth/logout", Some(&t.token), None).await.expect(204);
    }
    s.login(&brief.email, &brief.password).await;
    assert_eq!((sessions_of(&s, &keep.id).await, sessions_of(&s, &brief.id).await), (2, 2));

    // Two hours on: the default tenant's ended session is gone, not the other's.
    s.clock.advance_ms(2 * 3_600_000);
    assert_eq!(palisade::apply_session_retention(s.state()).await.unwrap(), 1);
    assert_eq!((sessions_of(&s, &keep.id).await, sessions_of(&s, &brief.id).await), (2, 1));
    // Two more: its own goes too; the live one stays and refreshes.
    s.clock.advance_ms(2 * 3_600_000);
    assert_eq!(palisade::apply_session_retention(s.state()).await.unwrap(), 1);
    assert_eq!(palisade::apply_session_retention(s.state()).await.unwrap(), 0, "nothing left to do");
    assert_eq!(sessions_of(&s, &keep.id).await, 1);
    s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": live_refresh}))).await.expect(200);
    // The removed session's refresh token opens nothing.
    s.call(Method::POST, "/v1/auth/refresh", None, Some(json!({"refresh_token": keep.refresh}))).await.expect(401);
    // Audited with the count.
    let passes = s.events(&key, "action=retention.applied").await;
    assert_eq!(passes.len(), 1, "{passes:?}");
    assert_eq!(passes[0]["details"]["sessions"], json!({"removed": 1, "hours": 3}));
    s.stop().await;
}
