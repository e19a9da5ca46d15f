//! `POST /v1/inbound/{provider}` reads no body for an unknown provider and
//! at most the provider's limit for a known one; bodies read before
//! authentication are bounded in number and in time. Over raw TCP, so the
//! test decides how much of the body is ever sent.

use std::time::Duration;

use palisade_core::Clock;
use reqwest::Method;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::{Backend, TestServer};
use crate::webhooks::{signed_for, PAY_SECRET};

backend_tests!(
    oversize_and_unknown_are_answered_without_the_body,
    the_hard_body_cap_holds_where_no_route_cap_does,
    unauthenticated_body_reads_are_bounded,
);

/// Past this, an answer that needed the unsent rest of a body is late.
const ANSWER_WITHIN: Duration = Duration::from_secs(5);

fn with_pay(c: &mut palisade_config::Config) {
    c.inbound.providers.insert(
        "pay".into(),
        palisade_config::InboundProvider {
            kind: palisade_config::InboundKind::Payment,
            secret: Some(palisade_config::Secret::new(PAY_SECRET.into())),
            secret_file: None,
        },
    );
}

/// A request whose head and first body bytes went out; the connection stays
/// open and nothing more is sent.
async fn start_post(srv: &TestServer, path: &str, framing: &str, sent: &[u8]) -> TcpStream {
    let addr = srv.url.trim_start_matches("http://").to_owned();
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n{framing}\r\n");
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(sent).await.unwrap();
    s
}

/// The response on `s` (status, head, problem body), or `None` if none came
/// within [`ANSWER_WITHIN`].
async fn answer(s: &mut TcpStream) -> Option<(u16, String, Value)> {
    let read = async {
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                let len = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + len {
                    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
                    let body = serde_json::from_slice(&buf[end + 4..end + 4 + len]).unwrap_or(Value::Null);
                    return (status, head, body);
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return (0, String::new(), Value::Null),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(ANSWER_WITHIN, read).await.ok()
}

fn chunk(data: &[u8]) -> Vec<u8> {
    [format!("{:x}\r\n", data.len()).into_bytes(), data.to_vec(), b"\r\n".to_vec()].concat()
}

async fn stored_callbacks(srv: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM inbound_callbacks").fetch_one(srv.state().db.reader()).await.unwrap()
}

async fn oversize_and_unknown_are_answered_without_the_body(b: Backend) {
    let srv = TestServer::start_with(b, with_pay).await;
    let limit = srv.state().config.limits.max_json_bytes;
    // Under the 25 MiB hard cap, so only the route can answer early.
    let declared = 20_000_000;
    assert!(declared < srv.state().config.limits.max_body_bytes);

    // Unknown provider: the same 404 as before, with the body unsent.
    let framing = format!("Content-Length: {declared}\r\n");
    let mut s = start_post(&srv, "/v1/inbound/nobody", &framing, b"{\"type\":").await;
    let (status, _, problem) = answer(&mut s).await.expect("an unknown provider must not wait for the body");
    assert_eq!(status, 404);
    assert_eq!(problem["reason"], "not_found");

    // Known provider, declared over its limit: 413 at once.
    let framing = format!("Content-Length: {}\r\n", limit + 1);
    let mut s = start_post(&srv, "/v1/inbound/pay", &framing, b"{\"type\":").await;
    let (status, _, problem) = answer(&mut s).await.expect("a declared oversize body must be refused unread");
    assert_eq!(status, 413);
    assert_eq!(problem["reason"], "payload_too_large");
    assert_eq!(problem["limit_bytes"], limit);

    // Chunked: cut off once past the limit, though the body never ends.
    let half = vec![b'a'; limit / 2 + 1024];
    let sent = [chunk(&half), chunk(&half)].concat();
    let mut s = start_post(&srv, "/v1/inbound/pay", "Transfer-Encoding: chunked\r\n", &sent).await;
    let (status, _, problem) = answer(&mut s).await.expect("a chunked body must be cut off at the limit");
    assert_eq!(status, 413);
    assert_eq!(problem["reason"], "payload_too_large");

    assert_eq!(stored_callbacks(&srv).await, 0, "nothing of a refused body is stored");
    srv.stop().await;
}

/// The 25 MiB cap (SPEC §6) is the server's, not the routes': a route that
/// never reads its body, or one whose own limit is set above it, still sees
/// no more than it.
async fn the_hard_body_cap_holds_where_no_route_cap_does(b: Backend) {
    // A provider limit above the hard cap leaves the hard cap the only one.
    let srv = TestServer::start_with(b, |c| {
        with_pay(c);
        c.limits.max_json_bytes = 64 * 1024 * 1024;
    })
    .await;
    let hard = srv.state().config.limits.max_body_bytes;
    assert_eq!(hard, 25 * 1024 * 1024);

    // Declared over it, to a route that reads no body (unknown provider:
    // 404 just under the cap, as the test above shows).
    let framing = format!("Content-Length: {}\r\n", hard + 1);
    let mut s = start_post(&srv, "/v1/inbound/nobody", &framing, b"{\"type\":").await;
    let (status, _, problem) = answer(&mut s).await.expect("a declared oversize body must be refused unread");
    assert_eq!(status, 413);
    assert_eq!(problem["reason"], "payload_too_large");

    // Chunked past it, to a route that would read up to 64 MiB: cut off.
    let addr = srv.url.trim_start_matches("http://").to_owned();
    let s = TcpStream::connect(&addr).await.unwrap();
    let (mut rx, mut tx) = s.into_split();
    let head = format!(
        "POST /v1/inbound/pay HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        let piece = chunk(&vec![b' '; 1024 * 1024]);
        tx.write_all(head.as_bytes()).await?;
        tx.write_all(&chunk(b"{\"type\":\"payment.succeeded\",\"pad\":\"")).await?;
        // 26 MiB, and the body never ends: only the cap can answer.
        for _ in 0..26 {
            tx.write_all(&piece).await?;
        }
        Ok::<_, std::io::Error>(tx)
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(30), async {
        let mut chunk = [0u8; 4096];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match rx.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    read.await.expect("a chunked body past the hard cap must be cut off");
    let head = String::from_utf8_lossy(&buf).into_owned();
    assert!(head.starts_with("HTTP/1.1 413 "), "{head}");
    writer.abort();
    assert_eq!(stored_callbacks(&srv).await, 0, "nothing of a refused body is stored");
    srv.stop().await;
}

async fn unauthenticated_body_reads_are_bounded(b: Backend) {
    let srv = TestServer::start_with(b, |c| {
        with_pay(c);
        c.limits.unauthenticated_body_reads = 2;
        c.limits.unauthenticated_body_secs = 1;
    })
    .await;
    let t = srv.tenant("Bounded").await;
    let reads = &srv.state().body_reads;

    // Two slow senders hold both slots.
    let mut slow = Vec::new();
    for _ in 0..2 {
        slow.push(start_post(&srv, "/v1/inbound/pay", "Content-Length: 1000\r\n", b"{\"type\":").await);
    }
    for _ in 0..200 {
        if reads.available() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(reads.available(), 0, "the slow senders should hold the slots");

    // A third is refused at once, as is a sign-in body (the same bound).
    let mut third = start_post(&srv, "/v1/inbound/pay", "Content-Length: 1000\r\n", b"{\"type\":").await;
    let (status, head, problem) = answer(&mut third).await.expect("refused at once, not queued");
    assert_eq!(status, 503);
    assert_eq!(problem["reason"], "unavailable");
    assert!(head.contains("\r\nretry-after: 1"), "{head}");
    let login = json!({"email": t.email, "password": "not the password"});
    srv.call(Method::POST, "/v1/auth/login", None, Some(login.clone())).await.expect(503);
    // Authenticated bodies do not use the slots.
    srv.post("/v1/api-keys", &t.token, json!({"name": "during", "role": "read_only"})).await.expect(201);

    // The slow senders are cut off at the deadline, freeing their slots.
    for s in &mut slow {
        let (status, _, problem) = answer(s).await.expect("a slow body is cut off at the deadline");
        assert_eq!(status, 408);
        assert_eq!(problem["reason"], "request_timeout");
    }
    assert_eq!(reads.available(), 2);
    srv.call(Method::POST, "/v1/auth/login", None, Some(login)).await.expect(401);
    let now = srv.clock.now_ms() / 1000;
    let body = json!({"type": "payment.succeeded", "data": {"tenant_id": t.id, "amount": 500}}).to_string();
    let r = TestServer::send(signed_for(&srv, "pay", "evt_after", now, &body, PAY_SECRET)).await.expect(200);
    assert_eq!(r.body["outcome"], "credited");
    srv.stop().await;
}
