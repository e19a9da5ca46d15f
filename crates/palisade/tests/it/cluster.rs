//! Several instances of one deployment behind a load balancer: two
//! servers on one PostgreSQL database behave as one.

use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";

/// Two instances on a fresh PostgreSQL database.
async fn pair() -> (TestServer, TestServer) {
    let a = TestServer::start_with(Backend::required_postgres(), |c| c.carrier.sandbox_delay_ms = 20).await;
    let b = a.peer().await;
    (a, b)
}

async fn balance(s: &TestServer, cred: &str) -> i64 {
    s.get("/v1/balance", cred).await.expect(200).body["balance"].as_i64().unwrap()
}

/// Retries of one idempotent send, spread over both instances and racing:
/// one message, one charge, the same answer everywhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn idempotent_retries_on_both_instances_charge_once() {
    let (a, b) = pair().await;
    let t = a.tenant("Acme").await;
    a.post("/v1/identities", &t.token, json!({"number": FROM})).await.expect(201);
    a.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let (_, key) = a.api_key(&t.token, json!({"name": "sender", "role": "owner"})).await;
    let body = json!({"from": FROM, "to": TO, "body": "once"});
    let post = |s: &TestServer, idem: &str, body: &Value| {
        let rb = s.request(Method::POST, "/v1/messages").bearer_auth(&key).header("idempotency-key", idem).json(body);
        TestServer::send(rb)
    };
    let race =
        futures_util::future::join_all((0..12).map(|i| post(if i % 2 == 0 { &a } else { &b }, "k-1", &body))).await;
    let ids: std::collections::HashSet<String> =
        race.iter().map(|r| r.body["id"].as_str().unwrap_or_else(|| panic!("{}", r.text)).to_owned()).collect();
    assert_eq!(ids.len(), 1, "one message for one key");
    assert_eq!(balance(&a, &key).await, 95);
    assert_eq!(balance(&b, &key).await, 95);
    // The other instance replays the stored answer.
    let again = post(&b, "k-1", &body).await.expect(201);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.body["id"], race[0].body["id"]);
    // And refuses the key for another request.
    let r = post(&b, "k-1", &json!({"from": FROM, "to": TO, "body": "other"})).await.expect(409);
    assert_eq!(r.body["reason"], "idempotency_key_reused");
    assert_eq!(balance(&a, &key).await, 95);
    b.stop().await;
    a.stop().await;
}
