//! WebSocket streams (SPEC §14) with a real WebSocket client: nothing is
//! upgraded without a credential that holds, none is taken from the query
//! string, the event stream resumes from its cursor without loss or
//! duplicates, and a freeze, the size limit and the duration limit close it.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::common::{Backend, TestServer};

backend_tests!(
    nothing_is_upgraded_without_a_credential_that_holds,
    the_event_stream_resumes_from_its_cursor,
    a_freeze_closes_an_open_stream,
);

pub(crate) type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

fn ws_url(srv: &TestServer, path_and_query: &str) -> String {
    format!("{}{path_and_query}", srv.url.replacen("http://", "ws://", 1))
}

/// Opens a stream, or the HTTP status it was refused with.
pub(crate) async fn open(srv: &TestServer, path_and_query: &str, cred: Option<&str>) -> Result<Ws, (u16, String)> {
    open_from(srv, path_and_query, cred, None).await
}

/// [`open`] from a page of `origin` (a browser sends it).
pub(crate) async fn open_from(
    srv: &TestServer,
    path_and_query: &str,
    cred: Option<&str>,
    origin: Option<&str>,
) -> Result<Ws, (u16, String)> {
    let mut req = ws_url(srv, path_and_query).into_client_request().unwrap();
    if let Some(c) = cred {
        req.headers_mut().insert("authorization", format!("Bearer {c}").parse().unwrap());
    }
    if let Some(o) = origin {
        req.headers_mut().insert("origin", o.parse().unwrap());
    }
    match tokio_tungstenite::connect_async(req).await {
        Ok((ws, resp)) => {
            assert_eq!(resp.status(), 101);
            Ok(ws)
        }
        Err(WsError::Http(resp)) => {
            let body = resp.body().as_ref().map(|b| String::from_utf8_lossy(b).into_owned()).unwrap_or_default();
            Err((resp.status().as_u16(), body))
        }
        Err(e) => panic!("connect failed: {e}"),
    }
}

/// The next event message (skipping pings), or the close frame's code and
/// reason when the server closes.
pub(crate) async fn next(ws: &mut Ws, wait: Duration) -> Result<Value, (u16, String)> {
    loop {
        let msg = tokio::time::timeout(wait, ws.next()).await.expect("nothing from the stream in time");
        match msg {
            Some(Ok(Message::Text(t))) => return Ok(serde_json::from_str(&t).unwrap()),
            Some(Ok(Message::Close(f))) => {
                return Err(f.map(|f| (u16::from(f.code), f.reason.to_string())).unwrap_or((1005, String::new())))
            }
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err((1006, e.to_string())),
            None => return Err((1006, "ended".into())),
        }
    }
}

/// The close frame's code and reason, skipping what comes before it.
pub(crate) async fn closing(ws: &mut Ws, wait: Duration) -> (u16, String) {
    loop {
        if let Err(close) = next(ws, wait).await {
            return close;
        }
    }
}

/// Events of `action` until `n` have come; returns every event seen.
async fn collect(ws: &mut Ws, action: &str, n: usize) -> Vec<Value> {
    let mut seen = Vec::new();
    while seen.iter().filter(|e: &&Value| e["event"]["action"] == action).count() < n {
        let m = next(ws, Duration::from_secs(15)).await.expect("stream closed early");
        assert_eq!(m["type"], "event", "{m}");
        seen.push(m);
    }
    seen
}

async fn nothing_is_upgraded_without_a_credential_that_holds(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Streams").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "reader", "role": "read_only"})).await;
    let (_, no_events) = srv.api_key(&t.token, json!({"name": "keys", "permissions": ["keys:read"]})).await;
    let path = "/v1/events/stream";
    assert_eq!(open(&srv, path, None).await.err().map(|e| e.0), Some(401));
    assert_eq!(open(&srv, path, Some("ak_not_a_real_key_0000000000000000000000")).await.err().map(|e| e.0), Some(401));
    assert_eq!(open(&srv, path, Some(&no_events)).await.err().map(|e| e.0), Some(403));
    // A valid credential in the query string: refused, with or without a header.
    for q in [format!("?api_key={key}"), format!("?token={}", t.token), format!("?after={key}")] {
        let (status, body) = open(&srv, &format!("{path}{q}"), None).await.expect_err("refused");
        assert_eq!(status, 401, "{q}");
        assert!(body.contains("query string"), "{body}");
        assert_eq!(open(&srv, &format!("{path}{q}"), Some(&key)).await.err().map(|e| e.0), Some(401), "{q}");
    }
    // Bad filters: 400 before any upgrade.
    assert_eq!(open(&srv, &format!("{path}?after=-1"), Some(&key)).await.err().map(|e| e.0), Some(400));
    assert_eq!(open(&srv, &format!("{path}?limit=0"), Some(&key)).await.err().map(|e| e.0), Some(400));
    assert_eq!(open(&srv, &format!("{path}?page=2"), Some(&key)).await.err().map(|e| e.0), Some(400));
    // A key held to one origin streams to pages of that origin only.
    let (_, fenced) = srv
        .api_key(&t.token, json!({"name": "web", "role": "read_only", "allowed_origins": ["https://app.example"]}))
        .await;
    let evil = open_from(&srv, path, Some(&fenced), Some("https://evil.example")).await;
    assert_eq!(evil.err().map(|e| e.0), Some(401));
    open_from(&srv, path, Some(&fenced), Some("https://app.example")).await.expect("upgraded");
    // With the header: the upgrade.
    let mut ws = open(&srv, path, Some(&key)).await.expect("upgraded");
    let first = next(&mut ws, Duration::from_secs(15)).await.unwrap();
    assert_eq!(first["type"], "event");
    assert_eq!(first["event"]["tenant_id"], t.id.as_str());
}

async fn the_event_stream_resumes_from_its_cursor(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Resume").await;
    let other = srv.tenant("Other").await;
    let mut ws = open(&srv, "/v1/events/stream?action=api_key.created", Some(&t.token)).await.expect("upgraded");
    for i in 0..3 {
        srv.api_key(&t.token, json!({"name": format!("a{i}"), "role": "read_only"})).await;
    }
    srv.api_key(&other.token, json!({"name": "theirs", "role": "read_only"})).await;
    let first = collect(&mut ws, "api_key.created", 3).await;
    assert!(first
        .iter()
        .all(|m| m["event"]["tenant_id"] == t.id.as_str() && m["event"]["action"] == "api_key.created"));
    let cursor = first.last().unwrap()["cursor"].as_str().unwrap().to_owned();
    ws.close(None).await.unwrap();

    // Written while no stream was open.
    for i in 0..2 {
        srv.api_key(&t.token, json!({"name": format!("b{i}"), "role": "read_only"})).await;
    }
    let mut ws = open(&srv, &format!("/v1/events/stream?action=api_key.created&after={cursor}"), Some(&t.token))
        .await
        .expect("upgraded");
    let second = collect(&mut ws, "api_key.created", 2).await;
    // Exactly what the feed holds after the cursor: nothing lost, nothing twice.
    let feed = srv.events(&t.token, &format!("action=api_key.created&after={cursor}")).await;
    let ids = |v: &[Value]| v.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let streamed: Vec<Value> = second.iter().map(|m| m["event"].clone()).collect();
    assert_eq!(ids(&streamed), ids(&feed));
    let names: Vec<_> = feed.iter().map(|e| e["details"]["name"].clone()).collect();
    assert_eq!(names, [json!("b0"), json!("b1")], "{feed:?}");
    let before: Vec<Value> = first.iter().map(|m| m["event"].clone()).collect();
    assert!(ids(&before).iter().all(|id| !ids(&streamed).contains(id)));
    // Opening and closing are audited, with the bytes sent.
    ws.close(None).await.unwrap();
    let mut closed = Vec::new();
    for _ in 0..50 {
        closed = srv.events(&t.token, "action=stream.closed").await;
        if closed.len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed.len() >= 2, "{closed:?}");
    assert!(closed[0]["details"]["bytes_sent"].as_u64().unwrap() > 0, "{:?}", closed[0]);
    assert_eq!(srv.events(&t.token, "action=stream.opened").await.len(), 2);
}

async fn a_freeze_closes_an_open_stream(b: Backend) {
    let srv = TestServer::start(b).await;
    let t = srv.tenant("Kill").await;
    let (id, key) = srv.api_key(&t.token, json!({"name": "k", "role": "read_only"})).await;
    let mut ws = open(&srv, "/v1/events/stream", Some(&key)).await.expect("upgraded");
    next(&mut ws, Duration::from_secs(15)).await.unwrap();
    srv.admin(Method::POST, &format!("/sysadmin/v1/api-keys/{id}/freeze"), None).await.expect(200);
    let frozen_at = std::time::Instant::now();
    let closed = closing(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(closed.0, u16::from(CloseCode::Policy), "{closed:?}");
    assert!(frozen_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", frozen_at.elapsed());
    // And it cannot open again.
    assert_eq!(open(&srv, "/v1/events/stream", Some(&key)).await.err().map(|e| e.0), Some(423));

    // The tenant's address list, changed while a stream is open, reaches it
    // too: the stream's address is no longer allowed.
    let mut ws = open(&srv, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    next(&mut ws, Duration::from_secs(15)).await.unwrap();
    let limits = json!({"ip_deny": ["127.0.0.0/8"]});
    srv.admin(Method::PUT, &format!("/sysadmin/v1/tenants/{}/limits", t.id), Some(limits)).await.expect(200);
    let listed_at = std::time::Instant::now();
    let closed = closing(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(closed.0, u16::from(CloseCode::Policy), "{closed:?}");
    assert!(listed_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", listed_at.elapsed());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limits_close_a_stream() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.streams.max_message_bytes = 200;
        c.streams.max_duration_secs = 2;
        c.streams.max_per_credential = 2;
    })
    .await;
    let t = srv.tenant("Limits").await;
    let mut ws = open(&srv, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    // The server keeps the limit too: an event too large for a message is
    // named by its id and cursor instead.
    let m = next(&mut ws, Duration::from_secs(15)).await.unwrap();
    assert_eq!(m["type"], "event_too_large", "{m}");
    assert!(m["id"].is_string() && m["cursor"].is_string(), "{m}");
    // A message over the limit from the client: 1009.
    ws.send(Message::Text("x".repeat(2000).into())).await.unwrap();
    let closed = closing(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(closed.0, 1009, "{closed:?}");
    // Two open at once per person; a third is refused before the upgrade,
    // with a token of a new login too.
    let mut a = open(&srv, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    let _b = open(&srv, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    assert_eq!(open(&srv, "/v1/events/stream", Some(&t.token)).await.err().map(|e| e.0), Some(429));
    let (again, _) = srv.login(&t.email, &t.password).await;
    assert_eq!(open(&srv, "/v1/events/stream", Some(&again)).await.err().map(|e| e.0), Some(429));
    // The duration limit: 1008 with its reason.
    let closed = closing(&mut a, Duration::from_secs(5)).await;
    assert_eq!(closed.0, 1008);
    assert!(closed.1.contains("duration"), "{closed:?}");
}

/// A stopping server closes its streams (1001) rather than leaving them to
/// a process that is going away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_closes_its_streams() {
    let srv = TestServer::start(Backend::Sqlite).await;
    let t = srv.tenant("Stop").await;
    let mut ws = open(&srv, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    next(&mut ws, Duration::from_secs(15)).await.unwrap();
    let stopping = tokio::spawn(srv.stop());
    let closed = closing(&mut ws, Duration::from_secs(10)).await;
    assert_eq!(closed, (1001, "server stopping".to_owned()));
    tokio::time::timeout(Duration::from_secs(10), stopping).await.expect("the server stopped").unwrap();
}

/// An upgraded connection still counts against the listener's caps: one
/// address cannot hold more streams than it may hold connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_count_as_connections() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| c.server.max_connections_per_address = 3).await;
    let t = srv.tenant("Conns").await;
    let (_, key) = srv.api_key(&t.token, json!({"name": "k", "role": "read_only"})).await;
    let mut open_streams = Vec::new();
    for _ in 0..5 {
        let mut req = ws_url(&srv, "/v1/events/stream").into_client_request().unwrap();
        req.headers_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        if let Ok((mut ws, _)) = tokio_tungstenite::connect_async(req).await {
            // Upgraded and serving (not merely accepted).
            if next(&mut ws, Duration::from_secs(5)).await.is_ok() {
                open_streams.push(ws);
            }
        }
    }
    assert!(!open_streams.is_empty());
    assert!(open_streams.len() <= 3, "{} streams from one address with room for 3 connections", open_streams.len());
}
