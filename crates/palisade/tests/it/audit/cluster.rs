//! Several instances on one PostgreSQL database keep one audit log: one
//! leader sequences and signs, the checkpoints form one chain in the
//! database, and another instance takes over when the leader stops.

use std::time::{Duration, Instant};

use serde_json::json;

use super::{scalar, verify_with};
use crate::common::{Backend, TestServer};

/// Two instances on one database; the first one leads.
async fn pair() -> (TestServer, TestServer) {
    let a = TestServer::start(Backend::required_postgres()).await;
    assert!(a.state().audit_log.lead().await, "the only instance takes the lead");
    let b = a.peer().await;
    assert!(!b.state().audit_log.lead().await, "the lead is held by the first instance");
    (a, b)
}

async fn wait_until<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn two_instances_write_one_signed_chain() {
    let (mut a, b) = pair().await;
    let t = a.tenant("Clustered").await;
    for i in 0..4 {
        a.api_key(&t.token, json!({"name": format!("a{i}"), "role": "read_only"})).await;
        b.api_key(&t.token, json!({"name": format!("b{i}"), "role": "read_only"})).await;
    }
    // The follower's reader sees its own writes at once (it sequences them
    // under the cluster's lock), and so does the leader's.
    let on_b = b.events(&t.token, "limit=500").await;
    assert_eq!(on_b.iter().filter(|e| e["action"] == "api_key.created").count(), 8, "{on_b:?}");
    let on_a = a.events(&t.token, "limit=500").await;
    assert_eq!(on_a, on_b, "both instances serve the same log");
    let v = b.get("/v1/events/verify", &t.token).await.expect(200).body;
    assert_eq!(v["status"], "intact", "{v}");
    // The operator's full verification, on either instance, sees one chain.
    for srv in [&a, &b] {
        let v = srv.admin(reqwest::Method::GET, "/sysadmin/v1/events/verify", None).await.expect(200).body;
        assert_eq!(v["status"], "intact", "{v}");
        assert!(v["records"].as_u64().unwrap() >= 9, "{v}");
    }

    // The follower keeps no witness file: the leader writes the chain.
    assert!(!b.data_dir.join("audit-checkpoints.jsonl").exists(), "only the leader writes a witness file");
    b.stop().await;
    a.halt().await;
    assert_eq!(scalar(&a, "SELECT COUNT(*) FROM audit_pending").await, 0);
    let (code, text) = verify_with(&a, &[]);
    assert_eq!(code, 0, "{text}");
    // A witness exported from the database verifies the same log.
    let witness = a.data_dir.join("witness.jsonl");
    let (code, text) = export(&a, &witness);
    assert_eq!(code, 0, "{text}");
    let (code, text) = verify_with(&a, &["--witness", witness.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    let n = scalar(&a, "SELECT COUNT(*) FROM audit_events").await;
    assert!(text.contains(&format!("intact: {n} records")), "{text}");
    a.stop().await;
}

fn export(srv: &TestServer, file: &std::path::Path) -> (i32, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["audit", "export-checkpoints", file.to_str().unwrap()])
        .env("PALISADE_SERVER__DATA_DIR", &srv.data_dir)
        .env("PALISADE_DATABASE__URL", &srv.db_url)
        .env_remove("PALISADE_MODE")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn another_instance_takes_over_when_the_leader_stops() {
    let (mut a, b) = pair().await;
    let t = a.tenant("Handed over").await;
    a.api_key(&t.token, json!({"name": "before", "role": "read_only"})).await;
    let signed_before = scalar(&a, "SELECT MAX(tree_size) FROM audit_checkpoints").await;
    // The leader stops (its lock connection closes with it).
    a.halt().await;
    let stopped = Instant::now();
    let log = b.state().audit_log.clone();
    wait_until("the second instance leads", || std::future::ready(log.leading())).await;
    assert!(stopped.elapsed() < Duration::from_secs(5), "took over in {:?}", stopped.elapsed());
    // It sequences and signs in the background what is written now, with
    // nobody reading the feed.
    b.api_key(&t.token, json!({"name": "after", "role": "read_only"})).await;
    wait_until("the new leader signed", || async {
        scalar(&a, "SELECT COUNT(*) FROM audit_pending").await == 0
            && scalar(&a, "SELECT MAX(tree_size) FROM audit_checkpoints").await > signed_before
    })
    .await;
    assert!(b.data_dir.join("audit-checkpoints.jsonl").exists(), "the new leader keeps the witness file");
    b.stop().await;
    // One chain, from both leaders' checkpoints: the database's, the new
    // leader's file and an export all agree with the records.
    let (code, text) = verify_with(&a, &[]);
    assert_eq!(code, 0, "{text}");
    let witness = a.data_dir.join("witness.jsonl");
    assert_eq!(export(&a, &witness).0, 0);
    let (code, text) = verify_with(&a, &["--witness", witness.to_str().unwrap()]);
    assert_eq!(code, 0, "{text}");
    a.stop().await;
}
