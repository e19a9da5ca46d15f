//! Concurrency of the money paths: call ends racing budgeted sends of the
//! same identity never deadlock into an error or leave a call live, and the
//! balance, the ledger and the monthly spend agree afterwards.

use palisade_config::Config;
use reqwest::Method;
use serde_json::json;
use sqlx::Connection;

use crate::common::{Backend, TestServer};

backend_tests!(call_ends_race_budgeted_sends, a_failed_call_end_is_retried_until_written,);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";
const CALLS: usize = 10;
const SENDS: usize = 120;

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c: &mut Config| {
        c.carrier.sandbox_delay_ms = 5;
        c.carrier.sandbox_call_secs = 3600;
        c.rate_limits.concurrent_calls_per_tenant = CALLS as u32;
        (c.rate_limits.message_create_per_minute, c.rate_limits.call_create_per_minute) = (1 << 20, 1 << 20);
    })
    .await
}

/// A tenant with 1,000,000 in credits and an identity with a budget as
/// large; returns (tenant id, owner token, identity id).
async fn budgeted(s: &TestServer) -> (String, String, String) {
    let t = s.tenant("Acme").await;
    let body = json!({"number": FROM, "policy": {"monthly_budget": 1_000_000}});
    let identity = s.post("/v1/identities", &t.token, body).await.expect(201).body["id"].as_str().unwrap().to_owned();
    let credits = json!({"amount": 1_000_000});
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(credits)).await.expect(200);
    (t.id, t.token, identity)
}

/// A call placed and answered; its id.
async fn live_call(s: &TestServer, token: &str) -> String {
    let r = s.post("/v1/calls", token, json!({"from": FROM, "to": TO})).await.expect(201);
    let id = r.body["id"].as_str().unwrap().to_owned();
    wait_status(s, token, &id, "in_progress").await;
    id
}

async fn call_ends_race_budgeted_sends(b: Backend) {
    let s = server(b).await;
    let (tenant, token, identity) = budgeted(&s).await;
    let t = Tenant { id: tenant, token };

    let mut calls = Vec::new();
    for _ in 0..CALLS {
        calls.push(live_call(&s, &t.token).await);
    }
    // Past the prepaid minute: each end debits the balance and adds to the
    // identity's spend, the rows every budgeted send takes too.
    s.clock.advance_ms(150_000);

    let (srv, token) = (&s, &t.token);
    let hangups =
        calls.iter().map(|id| async move { srv.post(&format!("/v1/calls/{id}/hangup"), token, json!({})).await });
    let sends =
        (0..SENDS).map(|i| srv.post("/v1/messages", token, json!({"from": FROM, "to": TO, "body": format!("m{i}")})));
    let (hangups, sends) = tokio::join!(futures_util::future::join_all(hangups), futures_util::future::join_all(sends));
    for r in hangups.iter() {
        assert_eq!(r.status, 200, "a hang-up failed: {}", r.text);
    }
    for r in sends.iter() {
        assert_eq!(r.status, 201, "a send failed: {}", r.text);
    }

    let db = s.state().db.reader();
    let live: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM calls WHERE tenant_id = $1 AND status IN ('queued', 'ringing', 'in_progress')",
    )
    .bind(&t.id)
    .fetch_one(db)
    .await
    .unwrap();
    assert_eq!(live, 0, "no call is left live");
    let cdrs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM cdrs WHERE tenant_id = $1").bind(&t.id).fetch_one(db).await.unwrap();
    assert_eq!(cdrs, CALLS as i64, "one CDR per call");
    let slots: i64 = sqlx::query_scalar("SELECT active FROM call_slots WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(slots, 0, "every slot is free");
    let balance: i64 = sqlx::query_scalar("SELECT balance FROM balances WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(db)
        .await
        .unwrap();
    let ledger: i64 = sqlx::query_scalar("SELECT CAST(SUM(amount) AS BIGINT) FROM credit_ledger WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(balance, ledger, "the balance is the sum of its ledger");
    let spent: i64 = sqlx::query_scalar("SELECT CAST(SUM(spent) AS BIGINT) FROM identity_spend WHERE identity_id = $1")
        .bind(&identity)
        .fetch_one(db)
        .await
        .unwrap();
    let messages: i64 = sqlx::query_scalar("SELECT CAST(SUM(cost) AS BIGINT) FROM messages WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(db)
        .await
        .unwrap();
    let cdr_cost: i64 = sqlx::query_scalar("SELECT CAST(SUM(cost) AS BIGINT) FROM cdrs WHERE tenant_id = $1")
        .bind(&t.id)
        .fetch_one(db)
        .await
        .unwrap();
    assert_eq!(cdr_cost, CALLS as i64 * 30, "each call paid its three started minutes");
    assert_eq!(spent, messages + cdr_cost, "the monthly spend is what the identity spent");
    assert_eq!(1_000_000 - balance, messages + cdr_cost, "the balance paid the same");
    s.stop().await;
}

struct Tenant {
    id: String,
    token: String,
}

/// An end that fails (the database refuses its CDR) is tried again in the
/// background until it is written: the call does not stay live, holding
/// its slot, with no CDR, on an instance that recovery leaves alone.
async fn a_failed_call_end_is_retried_until_written(b: Backend) {
    let postgres = matches!(b, Backend::Postgres(_));
    let s = server(b).await;
    let (tenant, token, _) = budgeted(&s).await;
    let id = live_call(&s, &token).await;
    let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
    let refuse: &[&str] = if postgres {
        &[
            "CREATE FUNCTION test_refuse() RETURNS trigger LANGUAGE plpgsql AS \
             $$ BEGIN RAISE EXCEPTION 'injected failure'; END $$",
            "CREATE TRIGGER test_refuse BEFORE INSERT ON cdrs FOR EACH ROW EXECUTE FUNCTION test_refuse()",
        ]
    } else {
        &["CREATE TRIGGER test_refuse BEFORE INSERT ON cdrs BEGIN SELECT RAISE(ABORT, 'injected failure'); END"]
    };
    for sql in refuse {
        sqlx::query(sql).execute(&mut db).await.unwrap();
    }
    let r = s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await;
    assert_eq!(r.status, 500, "{}", r.text);
    assert_eq!(s.get(&format!("/v1/calls/{id}"), &token).await.expect(200).body["status"], "in_progress");
    let allow = if postgres { "DROP TRIGGER test_refuse ON cdrs" } else { "DROP TRIGGER test_refuse" };
    sqlx::query(allow).execute(&mut db).await.unwrap();
    // Ended as of the hang-up, by the background retry.
    let ended = wait_status(&s, &token, &id, "completed").await;
    assert!(ended["ended_at"].is_string());
    let cdrs: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM cdrs WHERE call_id = $1").bind(&id).fetch_one(&mut db).await.unwrap();
    assert_eq!(cdrs, 1);
    let slots: i64 = sqlx::query_scalar("SELECT active FROM call_slots WHERE tenant_id = $1")
        .bind(&tenant)
        .fetch_one(&mut db)
        .await
        .unwrap();
    assert_eq!(slots, 0, "the slot is free again");
    db.close().await.unwrap();
    s.stop().await;
}

async fn wait_status(s: &TestServer, cred: &str, id: &str, status: &str) -> serde_json::Value {
    for _ in 0..500 {
        let call = s.get(&format!("/v1/calls/{id}"), cred).await.expect(200).body;
        if call["status"] == status {
            return call;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("call {id} never got to {status}");
}

/// PostgreSQL only: runs `test` on it. The tests calling it are ignored
/// (reported as skipped) when built without PALISADE_TEST_POSTGRES_URL.
async fn on_postgres<F: std::future::Future<Output = ()>>(test: impl FnOnce(Backend) -> F) {
    test(Backend::required_postgres()).await
}

/// A write the database aborts for a conflict (40P01, twice in a row here)
/// is run again, whole: the client never sees it, and nothing is charged
/// or recorded twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn conflicts_are_retried_not_answered() {
    on_postgres(|b| async move {
        let s = server(b).await;
        let (tenant, token, identity) = budgeted(&s).await;
        let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
        for sql in [
            "CREATE SEQUENCE test_conflicts",
            "CREATE FUNCTION test_conflict() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN \
               IF nextval('test_conflicts') <= 2 THEN \
                 RAISE EXCEPTION 'injected deadlock' USING ERRCODE = 'deadlock_detected'; \
               END IF; RETURN NEW; END $$",
            "CREATE TRIGGER test_conflict BEFORE INSERT ON messages FOR EACH ROW EXECUTE FUNCTION test_conflict()",
            "CREATE TRIGGER test_conflict BEFORE INSERT ON calls FOR EACH ROW EXECUTE FUNCTION test_conflict()",
            "CREATE TRIGGER test_conflict BEFORE INSERT ON cdrs FOR EACH ROW EXECUTE FUNCTION test_conflict()",
        ] {
            sqlx::query(sql).execute(&mut db).await.unwrap();
        }
        let again = || async {
            let mut db = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
            sqlx::query("ALTER SEQUENCE test_conflicts RESTART").execute(&mut db).await.unwrap();
        };
        let sent = s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "hi"})).await.expect(201);
        let cost = sent.body["cost"].as_i64().unwrap();
        again().await;
        let id = live_call(&s, &token).await;
        again().await;
        s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(200);
        // Each once: one message, one call, one CDR, one charge each.
        for (table, n) in [("messages", 1), ("calls", 1), ("cdrs", 1), ("credit_ledger", 3)] {
            let sql = format!("SELECT COUNT(*) FROM {table} WHERE tenant_id = $1");
            let count: i64 = sqlx::query_scalar(&sql).bind(&tenant).fetch_one(&mut db).await.unwrap();
            assert_eq!(count, n, "{table}");
        }
        let spent: i64 = sqlx::query_scalar("SELECT spent FROM identity_spend WHERE identity_id = $1")
            .bind(&identity)
            .fetch_one(&mut db)
            .await
            .unwrap();
        // The call was hung up at once: one minute.
        assert_eq!(spent, cost + 10);
        db.close().await.unwrap();
        s.stop().await;
    })
    .await;
}

/// The end of a call takes the identity's spend before the balance, as a
/// send does: a send that holds the spend and then wants the balance
/// never meets an end that holds the balance and wants the spend. Played
/// step by step: this connection is the send, and it would be the one
/// PostgreSQL aborts (its deadlock check runs first).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn a_call_end_takes_the_spend_before_the_balance() {
    on_postgres(|b| async move {
        let s = server(b).await;
        let (tenant, token, identity) = budgeted(&s).await;
        let id = live_call(&s, &token).await;
        // Past the prepaid minute: the end charges the balance and the spend.
        s.clock.advance_ms(150_000);
        let mut send = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
        let path = format!("/v1/calls/{id}/hangup");
        let hangup = s.post(&path, &token, json!({}));
        let (hangup, sent) = as_a_send(&mut send, &identity, &tenant, hangup).await;
        assert!(sent.is_ok(), "the send deadlocked with the call's end: {sent:?}");
        hangup.expect(200);
        send.close().await.unwrap();
        s.stop().await;
    })
    .await;
}

/// Recovery's refund of a message never handed over takes the spend before
/// the balance too (played as above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn a_recovery_refund_takes_the_spend_before_the_balance() {
    on_postgres(|b| async move {
        let s = server(b).await;
        let (tenant, token, identity) = budgeted(&s).await;
        let sent = s.post("/v1/messages", &token, json!({"from": FROM, "to": TO, "body": "hi"})).await.expect(201);
        let id = sent.body["id"].as_str().unwrap().to_owned();
        for _ in 0..500 {
            if s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body["status"] == "delivered" {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        // As if its instance had stopped before the hand-over, long ago.
        let mut send = sqlx::AnyConnection::connect(&s.db_url).await.unwrap();
        sqlx::query("UPDATE messages SET status = 'queued', updated_at = 0 WHERE id = $1")
            .bind(&id)
            .execute(&mut send)
            .await
            .unwrap();
        let sweep = palisade_api::recovery::sweep(s.state());
        let ((), sent) = as_a_send(&mut send, &identity, &tenant, sweep).await;
        assert!(sent.is_ok(), "the send deadlocked with the refund: {sent:?}");
        let m = s.get(&format!("/v1/messages/{id}"), &token).await.expect(200).body;
        assert_eq!(m["status"], "failed", "refunded");
        send.close().await.unwrap();
        s.stop().await;
    })
    .await;
}

/// Plays a send on `send`, step by step, while `other` runs: it takes the
/// identity's spend row, waits until `other` is under way (and waiting for
/// that row), then wants the balance. The send's outcome is an error if
/// PostgreSQL found a deadlock.
async fn as_a_send<F: std::future::Future>(
    send: &mut sqlx::AnyConnection,
    identity: &str,
    tenant: &str,
    other: F,
) -> (F::Output, Result<(), sqlx::Error>) {
    sqlx::query("BEGIN").execute(&mut *send).await.unwrap();
    sqlx::query("SET LOCAL deadlock_timeout = '50ms'").execute(&mut *send).await.unwrap();
    sqlx::query("UPDATE identity_spend SET spent = spent WHERE identity_id = $1")
        .bind(identity)
        .execute(&mut *send)
        .await
        .unwrap();
    let send_goes_on = async {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        let r = sqlx::query("UPDATE balances SET balance = balance WHERE tenant_id = $1")
            .bind(tenant)
            .execute(&mut *send)
            .await;
        sqlx::query(if r.is_ok() { "COMMIT" } else { "ROLLBACK" }).execute(&mut *send).await.unwrap();
        r.map(drop)
    };
    tokio::join!(other, send_goes_on)
}
