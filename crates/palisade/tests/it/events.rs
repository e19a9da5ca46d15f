//! The audit trail as a tenant reads it: own events only, cursor paging,
//! filters, and the record shape of SPEC §8.

use reqwest::Method;
use serde_json::json;

use crate::common::{Backend, TestServer};

backend_tests!(
    events_are_scoped_paged_and_filtered,
    feed_delivers_an_event_committed_late,
    operator_details_stay_in_the_platform_log,
);

async fn events_are_scoped_paged_and_filtered(b: Backend) {
    let srv = TestServer::start(b).await;
    let a = srv.tenant("A").await;
    let other = srv.tenant("B").await;
    for i in 0..5 {
        srv.api_key(&a.token, json!({"name": format!("k{i}"), "role": "read_only"})).await;
    }
    srv.api_key(&other.token, json!({"name": "theirs", "role": "read_only"})).await;

    let all = srv.events(&a.token, "limit=500").await;
    assert!(all.iter().all(|e| e["tenant_id"] == a.id.as_str()), "only the tenant's own events");
    let e = &all[0];
    for field in [
        "id",
        "seq",
        "ts",
        "tenant_id",
        "actor",
        "action",
        "resource_type",
        "resource_id",
        "source_ip",
        "user_agent",
        "request_id",
        "details",
    ] {
        assert!(e.get(field).is_some(), "event lacks {field}: {e}");
    }
    assert!(all.windows(2).all(|w| w[0]["seq"].as_i64() < w[1]["seq"].as_i64()));

    // Paging two at a time walks the same sequence.
    let mut paged = Vec::new();
    let mut cursor = String::new();
    loop {
        let q = if cursor.is_empty() { "limit=2".to_owned() } else { format!("limit=2&after={cursor}") };
        let r = srv.get(&format!("/v1/events?{q}"), &a.token).await.expect(200);
        paged.extend(r.body["data"].as_array().unwrap().clone());
        match r.body["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(paged, all);

    // Each record names the request that caused it: the X-Request-Id its
    // response carried, generated or echoed.
    let made = srv.post("/v1/api-keys", &a.token, json!({"name": "traced", "role": "read_only"})).await.expect(201);
    let generated = made.header("x-request-id").unwrap().to_owned();
    let key_id = made.body["id"].as_str().unwrap();
    let rec = srv.events(&a.token, &format!("resource_id={key_id}")).await;
    assert_eq!(rec.len(), 1);
    assert_eq!(rec[0]["request_id"], generated.as_str(), "{}", rec[0]);
    let echoed = TestServer::send(
        srv.request(Method::POST, "/v1/api-keys")
            .bearer_auth(&a.token)
            .header("X-Request-Id", "client-chosen.42")
            .json(&json!({"name": "traced-too", "role": "read_only"})),
    )
    .await
    .expect(201);
    assert_eq!(echoed.header("x-request-id"), Some("client-chosen.42"));
    let rec = srv.events(&a.token, &format!("resource_id={}", echoed.body["id"].as_str().unwrap())).await;
    assert_eq!(rec[0]["request_id"], "client-chosen.42", "{}", rec[0]);

    let created = srv.events(&a.token, "action=api_key.created").await;
    assert_eq!(created.len(), 7);
    assert!(created.iter().all(|e| e["actor"]["type"] == "user" && e["actor"]["id"] == a.owner_id.as_str()));
    let by_actor = srv.events(&a.token, &format!("actor_id={}&action=api_key.created", a.owner_id)).await;
    assert_eq!(by_actor.len(), 7);
    let one = created[2]["resource_id"].as_str().unwrap();
    assert_eq!(srv.events(&a.token, &format!("resource_id={one}")).await.len(), 1);
    let future = palisade_core::clock::rfc3339(srv.clock.now_ms() + 3_600_000);
    assert!(srv.events(&a.token, &format!("since={future}")).await.is_empty());
    assert_eq!(srv.events(&a.token, &format!("until={future}&action=api_key.created")).await.len(), 7);
    // Another tenant's filter values find nothing here.
    assert!(srv.events(&a.token, &format!("actor_id={}", other.owner_id)).await.is_empty());
    // The cursor is digits only (as the OpenAPI document says), filters
    // are at most 200 characters.
    let long = "a".repeat(201);
    let bad = ["limit=0", "limit=501", "after=abc", "after=-1", "after=%2B5", "after=1234567890123456789", "since=x"];
    for bad in bad.map(String::from).into_iter().chain(["bogus=1".into(), format!("action={long}")]) {
        srv.call(Method::GET, &format!("/v1/events?{bad}"), Some(&a.token), None).await.expect(400);
    }
    srv.call(Method::GET, &format!("/v1/events?action={}", "a".repeat(200)), Some(&a.token), None).await.expect(200);
    srv.stop().await;
}

/// A client following the feed: reads pages after its cursor until the
/// end, then keeps the last event's `seq` as its cursor (as clients do).
struct Follower {
    after: Option<String>,
    seen: Vec<Value>,
}

impl Follower {
    async fn read(&mut self, srv: &TestServer, token: &str) {
        loop {
            let q = match &self.after {
                Some(c) => format!("/v1/events?limit=2&after={c}"),
                None => "/v1/events?limit=2".to_owned(),
            };
            let r = srv.get(&q, token).await.expect(200);
            let page = r.body["data"].as_array().unwrap().clone();
            if let Some(last) = page.last() {
                self.after = Some(last["seq"].to_string());
            }
            self.seen.extend(page);
            if r.body["next_cursor"].is_null() {
                return;
            }
        }
    }

    fn has(&self, action: &str) -> bool {
        self.seen.iter().any(|e| e["action"] == action)
    }
}

/// An event whose transaction commits after a later event's still reaches
/// a client that already paged past the later one (PostgreSQL assigns
/// `seq` at insert, not at commit; SQLite serialises writers, so there the
/// later write simply waits).
async fn feed_delivers_an_event_committed_late(b: Backend) {
    let srv = TestServer::start(b.clone()).await;
    let t = srv.tenant("Late").await;
    let mut client = Follower { after: None, seen: Vec::new() };
    client.read(&srv, &t.token).await;

    // The slow transaction: an event written the way actions write theirs,
    // held uncommitted.
    let state = srv.state().clone();
    let tenant: TenantId = t.id.parse().unwrap();
    let mut slow = state.db.begin().await.unwrap();
    let event = palisade_audit::Event::new("test.slow", Some(tenant), Actor::system());
    palisade_audit::append(&mut *slow, &event, &palisade_audit::Context::default(), srv.clock.now_ms()).await.unwrap();

    // A later event, committed meanwhile, and read by the client.
    let later = tokio::spawn(TestServer::send(
        srv.request(Method::POST, "/v1/api-keys")
            .bearer_auth(&t.token)
            .json(&json!({"name": "later", "role": "read_only"})),
    ));
    let later = if matches!(b, Backend::Postgres(_)) {
        later.await.unwrap().expect(201);
        for _ in 0..50 {
            client.read(&srv, &t.token).await;
            if client.has("api_key.created") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert!(client.has("api_key.created"), "the later event is served: {:?}", client.seen);
        None
    } else {
        // SQLite: the later write waits for the slow one.
        client.read(&srv, &t.token).await;
        Some(later)
    };

    slow.commit().await.unwrap();
    if let Some(later) = later {
        later.await.unwrap().expect(201);
    }
    for _ in 0..50 {
        client.read(&srv, &t.token).await;
        if client.has("test.slow") && client.has("api_key.created") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(client.has("test.slow"), "the late event reaches the client: {:?}", client.seen);
    let mut ids: Vec<_> = client.seen.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    let n = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "no event is delivered twice");
    srv.stop().await;
}

const OPERATOR_IP: &str = "198.51.100.77";
const OPERATOR_UA: &str = "ops-console/9.9 (laptop-of-the-night-shift)";

/// An operator's freeze and unfreeze of a tenant's key and identity: the
/// tenant's feed, proofs and verification show that the operator acted and
/// nothing of where from (address, user agent, request id); the platform's
/// log keeps it.
async fn operator_details_stay_in_the_platform_log(b: Backend) {
    let srv = TestServer::start_with(b, |c| c.server.trust_proxy = vec!["127.0.0.1/32".parse().unwrap()]).await;
    let t = srv.tenant("Watched").await;
    let (key, _) = srv.api_key(&t.token, json!({"name": "k", "role": "read_only"})).await;
    let identity = srv.post("/v1/identities", &t.token, json!({"number": "+34612345679", "name": "desk"})).await;
    let identity = identity.expect(201).body["id"].as_str().unwrap().to_owned();
    let operator = |path: String| {
        TestServer::send(
            srv.request(Method::POST, &path)
                .bearer_auth(&srv.master_key)
                .header("user-agent", OPERATOR_UA)
                .header("x-forwarded-for", OPERATOR_IP),
        )
    };
    for what in ["freeze", "unfreeze"] {
        operator(format!("/sysadmin/v1/api-keys/{key}/{what}")).await.expect(200);
        operator(format!("/sysadmin/v1/identities/{identity}/{what}")).await.expect(200);
    }

    let feed = srv.get("/v1/events?limit=500", &t.token).await.expect(200);
    let mine = feed.body["data"].as_array().unwrap();
    let acts: Vec<&Value> = mine.iter().filter(|e| e["action"].as_str().unwrap().ends_with("frozen")).collect();
    assert_eq!(acts.len(), 4, "{}", feed.text);
    for e in &acts {
        assert_eq!(e["actor"], json!({"type": "sysadmin", "id": null}));
        assert!(e["source_ip"].is_null() && e["user_agent"].is_null() && e["request_id"].is_null(), "{e}");
    }
    for secret in [OPERATOR_IP, "laptop-of-the-night-shift"] {
        assert!(!feed.text.contains(secret), "the tenant's feed shows {secret}");
    }
    // An inclusion proof shows the record as logged, byte for byte.
    let proof = srv.get(&format!("/v1/events/{}/proof", acts[0]["id"].as_str().unwrap()), &t.token).await.expect(200);
    for secret in [OPERATOR_IP, "laptop-of-the-night-shift"] {
        assert!(!proof.text.contains(secret), "the tenant's proof shows {secret}");
    }

    // The platform's log keeps where each request came from, naming the
    // tenant's record.
    let platform = srv.admin(Method::GET, "/sysadmin/v1/events?action=sysadmin.tenant_event&limit=500", None).await;
    let platform = platform.expect(200).body["data"].as_array().unwrap().clone();
    for e in &acts {
        let own = platform.iter().find(|p| p["details"]["event_id"] == e["id"]).unwrap_or_else(|| panic!("{e}"));
        assert_eq!((own["source_ip"].as_str(), own["user_agent"].as_str()), (Some(OPERATOR_IP), Some(OPERATOR_UA)));
        assert!(own["tenant_id"].is_null());
        assert_eq!((&own["details"]["tenant_id"], &own["details"]["action"]), (&json!(t.id), &e["action"]));
        assert_eq!(own["resource_id"], e["resource_id"]);
    }

    // A record written before the operator's details went to the platform
    // (they were on the tenant's record) is shown to the tenant without them.
    let old = palisade_store::audit::NewAuditRow {
        id: uuid::Uuid::now_v7().to_string(),
        ts: srv.clock.now_ms(),
        tenant_id: Some(t.id.clone()),
        actor_type: "sysadmin".into(),
        action: "api_key.frozen".into(),
        source_ip: Some(OPERATOR_IP.into()),
        user_agent: Some(OPERATOR_UA.into()),
        request_id: Some("req-of-the-operator".into()),
        details: "{}".into(),
        ..Default::default()
    };
    srv.state().db.write_all(vec![palisade_store::audit::insert_stmt(vec![old.clone()])]).await.unwrap();
    let shown = srv.events(&t.token, "limit=500").await;
    let shown = shown.iter().find(|e| e["id"] == old.id.as_str()).unwrap();
    assert!(shown["source_ip"].is_null() && shown["user_agent"].is_null() && shown["request_id"].is_null());
    let all = srv.admin(Method::GET, &format!("/sysadmin/v1/events?tenant_id={}&limit=500", t.id), None).await;
    assert!(all.expect(200).text.contains("req-of-the-operator"), "the operator still sees it");

    let verified = srv.get("/v1/events/verify", &t.token).await.expect(200);
    assert_eq!(verified.body["status"], "intact", "{}", verified.text);
    srv.stop().await;
}

use std::time::Duration;

use palisade_core::principal::Actor;
use palisade_core::{Clock, TenantId};
use serde_json::Value;
