//! Recovery after a stop: live calls of an instance that stopped are ended
//! (their slot and unused minutes given back), and messages charged but
//! never handed to the carrier are failed and refunded.

use palisade_config::Config;
use palisade_core::Clock;
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

use crate::common::{Backend, TestServer};

backend_tests!(
    calls_of_a_stopped_instance_are_ended,
    another_live_instance_keeps_its_calls,
    messages_a_stop_kept_from_the_carrier_are_refunded,
    a_graceful_stop_lets_messages_reach_the_carrier,
);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await
}

/// A tenant with 100 credits and an identity under `policy`: (token, tenant id).
async fn tenant(s: &TestServer, policy: Value) -> (String, String) {
    let t = s.tenant("Acme").await;
    s.post("/v1/identities", &t.token, json!({"number": FROM, "policy": policy})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    (t.token, t.id)
}

async fn balance(s: &TestServer, cred: &str) -> i64 {
    s.get("/v1/balance", cred).await.expect(200).body["balance"].as_i64().unwrap()
}

/// Polls `path` until `pred` holds for it.
async fn wait_for(s: &TestServer, cred: &str, path: &str, pred: impl Fn(&Value) -> bool) -> Value {
    for _ in 0..250 {
        let v = s.get(path, cred).await.expect(200).body;
        if pred(&v) {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("{path} never got there");
}

async fn calls_of_a_stopped_instance_are_ended(b: Backend) {
    let mut s = server(b).await;
    let (token, tenant_id) = tenant(&s, json!({})).await;
    let limits = json!({"concurrent_calls": 1});
    s.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{tenant_id}/limits"), Some(limits)).await.expect(200);
    let first = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO})).await.expect(201);
    let id = first.body["id"].as_str().unwrap().to_owned();
    wait_for(&s, &token, &format!("/v1/calls/{id}"), |c| c["status"] == "in_progress").await;
    let refused = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO})).await.expect(429);
    assert_eq!(refused.body["reason"], "concurrent_calls");

    // The instance stops; another starts two minutes later.
    s.halt().await;
    s.clock.advance_ms(120_000);
    s.resume().await;
    // The new instance sweeps once its heartbeats have worked for a minute
    // (by its clock, which stands still here until moved).
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let still = s.get(&format!("/v1/calls/{id}"), &token).await.expect(200).body;
    assert_eq!(still["status"], "in_progress");
    s.clock.advance_ms(61_000);
    let mut ended = still;
    for _ in 0..150 {
        ended = s.get(&format!("/v1/calls/{id}"), &token).await.expect(200).body;
        if ended["status"] != "in_progress" {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!((ended["status"].as_str(), ended["error_code"].as_str()), (Some("failed"), Some("interrupted")));
    // Billed up to the last moment it was known live (its answer), not
    // for the two minutes nobody watched it: the prepaid minute.
    let cdrs = s.get("/v1/cdrs", &token).await.expect(200).body["data"].as_array().unwrap().clone();
    assert_eq!(cdrs.len(), 1);
    assert_eq!((cdrs[0]["call_id"].as_str(), cdrs[0]["cost"].as_i64()), (Some(id.as_str()), Some(10)));
    assert_eq!(balance(&s, &token).await, 90);
    let events = s.events(&token, "resource_type=call").await;
    let end = events.iter().find(|e| e["action"] == "call.ended").expect("call.ended is audited");
    assert_eq!(end["actor"]["type"], "system");

    // Its slot is free again; a live instance's own call is left alone.
    let second = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO})).await.expect(201);
    let second = second.body["id"].as_str().unwrap().to_owned();
    wait_for(&s, &token, &format!("/v1/calls/{second}"), |c| c["status"] == "in_progress").await;
    s.clock.advance_ms(120_000);
    palisade_api::recovery::sweep(s.state()).await;
    let c = s.get(&format!("/v1/calls/{second}"), &token).await.expect(200).body;
    assert_eq!(c["status"], "in_progress");
    s.stop().await;
}

async fn messages_a_stop_kept_from_the_carrier_are_refunded(b: Backend) {
    let mut s = server(b).await;
    let (token, _) = tenant(&s, json!({"monthly_budget": 10})).await;
    let mut ids = Vec::new();
    for body in ["one", "two"] {
        let r = s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": body})).await.expect(201);
        let id = r.body["id"].as_str().unwrap().to_owned();
        wait_for(&s, &token, &format!("/v1/messages/{id}"), |m| m["status"] == "delivered").await;
        ids.push(id);
    }
    assert_eq!(balance(&s, &token).await, 90);

    // As if the instance had stopped between the commit and the hand-over:
    // both still queued, the first for eleven minutes, the second for one.
    s.halt().await;
    let now = s.clock.now_ms() + 11 * 60_000;
    sqlx::any::install_default_drivers();
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    for (id, updated_at) in [(&ids[0], s.clock.now_ms()), (&ids[1], now - 60_000)] {
        sqlx::query("UPDATE messages SET status = 'queued', carrier_ref = NULL, updated_at = $2 WHERE id = $1")
            .bind(id)
            .bind(updated_at)
            .execute(&mut db)
            .await
            .unwrap();
    }
    db.close().await.unwrap();
    s.clock.advance_ms(11 * 60_000);
    s.resume().await;
    palisade_api::recovery::sweep(s.state()).await;

    let failed = s.get(&format!("/v1/messages/{}", ids[0]), &token).await.expect(200).body;
    assert_eq!((failed["status"].as_str(), failed["error_code"].as_str()), (Some("failed"), Some("interrupted")));
    assert_eq!(balance(&s, &token).await, 95, "the unsent message is refunded");
    let events = s.events(&token, "resource_type=message").await;
    let refund = events.iter().find(|e| e["action"] == "message.refunded").expect("the refund is audited");
    assert_eq!((refund["actor"]["type"].as_str(), refund["details"]["refunded"].as_i64()), (Some("system"), Some(5)));
    // The second is within the hand-over window: left alone, still charged.
    let second = s.get(&format!("/v1/messages/{}", ids[1]), &token).await.expect(200).body;
    assert_eq!(second["status"], "queued");
    assert_eq!(balance(&s, &token).await, 95);
    // The budget got the refund back too: one more message fits in it.
    s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "three"})).await.expect(201);
    let over = s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "four"})).await.expect(429);
    assert_eq!(over.body["reason"], "monthly_budget");
    s.stop().await;
}

async fn another_live_instance_keeps_its_calls(b: Backend) {
    let s = server(b).await;
    let (token, tenant_id) = tenant(&s, json!({})).await;
    let r = s.post("/v1/calls", &token, json!({"from": FROM, "to": TO})).await.expect(201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    wait_for(&s, &token, &format!("/v1/calls/{id}"), |c| c["status"] == "in_progress").await;
    // The call is driven by another instance, seen just now.
    let db = &s.state().db;
    let seen = s.clock.now_ms();
    let mut tx = db.begin().await.unwrap();
    sqlx::query("INSERT INTO instances (id, started_at, seen_at) VALUES ('other', $1, $1)")
        .bind(seen)
        .execute(&mut *tx)
        .await
        .unwrap();
    sqlx::query("UPDATE calls SET instance_id = 'other' WHERE id = $1").bind(&id).execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    s.clock.advance_ms(30_000);
    palisade_api::recovery::sweep(s.state()).await;
    assert_eq!(s.get(&format!("/v1/calls/{id}"), &token).await.expect(200).body["status"], "in_progress");
    // A sweeper that listed the call before the other's last heartbeat
    // does not end it: the ending statement checks again.
    let scope = palisade_core::TenantScope::for_system(tenant_id.parse().unwrap());
    let mut tx = db.begin().await.unwrap();
    let ended =
        palisade_store::calls::finish(&mut *tx, &scope, &id, "failed", None, seen, seen, Some(seen - 1)).await.unwrap();
    assert!(ended.is_none(), "a call of an instance seen since was ended");
    drop(tx);

    // Not seen for a minute and a half: gone.
    s.clock.advance_ms(60_000);
    palisade_api::recovery::sweep(s.state()).await;
    let c = s.get(&format!("/v1/calls/{id}"), &token).await.expect(200).body;
    assert_eq!((c["status"].as_str(), c["error_code"].as_str()), (Some("failed"), Some("interrupted")));
    assert_eq!(balance(&s, &token).await, 90);
    s.stop().await;
}

async fn a_graceful_stop_lets_messages_reach_the_carrier(b: Backend) {
    let mut s = server(b).await;
    let (token, _) = tenant(&s, json!({})).await;
    let sends =
        (0..10).map(|i| s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": format!("m{i}")})));
    let ids: Vec<String> = futures_util::future::join_all(sends)
        .await
        .into_iter()
        .map(|r| r.expect(201).body["id"].as_str().unwrap().to_owned())
        .collect();
    // Stopped at once: the hand-overs finish and their reports are written
    // before the stop returns.
    s.halt().await;
    s.resume().await;
    for id in &ids {
        let m = s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body;
        assert_eq!(m["status"], "delivered", "{m}");
    }
    s.stop().await;
}
