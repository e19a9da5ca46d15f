//! A call's audio over WebSocket (SPEC §14) and stream tickets, with a real
//! WebSocket client: the sandbox's far end plays a tone and plays back what
//! the agent sends; marks come back when playback reaches them; nobody
//! hears another tenant's or another identity's call; a ticket opens one
//! stream, once, from one origin, and acts as its minter for as long as
//! the stream lasts.

use std::time::Duration;

use base64::Engine as _;
use futures_util::SinkExt;
use reqwest::Method;
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

use crate::common::{Backend, TestServer};
use crate::streams::{closing, next, open, open_from, Ws};

backend_tests!(
    the_far_end_plays_back_what_the_agent_sends,
    nobody_hears_a_call_that_is_not_theirs,
    a_ticket_opens_one_stream_once_from_one_origin,
);

const FROM: &str = "+34612345678";
const TO: &str = "+34699000111";
const WAIT: Duration = Duration::from_secs(10);

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

fn unb64(s: &Value) -> Vec<u8> {
    base64::engine::general_purpose::STANDARD.decode(s.as_str().unwrap()).unwrap()
}

async fn server(b: Backend) -> TestServer {
    TestServer::start_with(b, |c| {
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await
}

/// A tenant with credit and an identity: (owner token, identity id).
async fn tenant(s: &TestServer, name: &str, number: &str) -> (String, String) {
    let t = s.tenant(name).await;
    let i = s.post("/v1/identities", &t.token, json!({"number": number})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", t.id), Some(json!({"amount": 1000})))
        .await
        .expect(200);
    (t.token, i.body["id"].as_str().unwrap().to_owned())
}

async fn place(s: &TestServer, cred: &str, from: &str) -> String {
    s.post("/v1/calls", cred, json!({"from": from, "to": TO})).await.expect(201).body["id"].as_str().unwrap().to_owned()
}

/// The next message of `event`, skipping others (and their frames).
async fn next_event(ws: &mut Ws, event: &str) -> Value {
    loop {
        let m = next(ws, WAIT).await.unwrap_or_else(|c| panic!("closed while waiting for {event}: {c:?}"));
        if m["event"] == event {
            return m;
        }
    }
}

/// Opens a call's stream once the stream before it has let go (within 2 s).
async fn open_when_free(s: &TestServer, path: &str, cred: &str) -> Ws {
    for _ in 0..20 {
        if let Ok(ws) = open(s, path, Some(cred)).await {
            return ws;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("the call's audio was not let go");
}

async fn send(ws: &mut Ws, m: Value) {
    ws.send(Message::Text(m.to_string().into())).await.unwrap();
}

async fn the_far_end_plays_back_what_the_agent_sends(b: Backend) {
    let s = server(b).await;
    let (token, _) = tenant(&s, "Voice", FROM).await;
    let id = place(&s, &token, FROM).await;
    let mut ws = open(&s, &format!("/v1/calls/{id}/stream"), Some(&token)).await.expect("upgraded");
    let connected = next(&mut ws, WAIT).await.unwrap();
    assert_eq!(connected["event"], "connected", "{connected}");
    // `start` once the call is answered, naming the call and the audio.
    let start = next(&mut ws, WAIT).await.unwrap();
    assert_eq!(start["event"], "start", "{start}");
    assert_eq!(start["start"]["callSid"], id.as_str());
    assert_eq!(start["start"]["mediaFormat"], json!({"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1}));
    let sid = start["streamSid"].as_str().unwrap().to_owned();
    // The sandbox's tone: 20 ms frames of μ-law, not silence.
    let first = next_event(&mut ws, "media").await;
    let tone = unb64(&first["media"]["payload"]);
    assert_eq!(tone.len(), 160);
    assert!(tone.iter().any(|&b| b != 0xFF));
    assert_eq!(first["media"]["track"], "inbound");

    // Two frames of the agent's audio, then a mark: the far end plays them
    // back, and the mark comes once they have played.
    send(&mut ws, json!({"event": "media", "streamSid": sid, "media": {"payload": b64(&[0x11; 320])}})).await;
    send(&mut ws, json!({"event": "mark", "streamSid": sid, "mark": {"name": "said-hello"}})).await;
    let mut echoed = 0;
    loop {
        let m = next(&mut ws, WAIT).await.unwrap();
        match m["event"].as_str().unwrap() {
            "media" if unb64(&m["media"]["payload"]) == [0x11; 160] => echoed += 1,
            "media" => {}
            "mark" => {
                assert_eq!(m["mark"]["name"], "said-hello");
                break;
            }
            other => panic!("unexpected {other}: {m}"),
        }
    }
    assert_eq!(echoed, 2, "both frames played back before the mark");

    // `clear` drops what is queued: its marks are reported at once, and the
    // tone is back long before 10 s of queued audio would have played.
    send(&mut ws, json!({"event": "media", "media": {"payload": b64(&[0x22; 160 * 500])}})).await;
    send(&mut ws, json!({"event": "mark", "mark": {"name": "long"}})).await;
    // Playing (what was already on its way may come first).
    loop {
        let m = next_event(&mut ws, "media").await;
        if unb64(&m["media"]["payload"]) == [0x22; 160] {
            break;
        }
    }
    send(&mut ws, json!({"event": "clear"})).await;
    let cleared_at = std::time::Instant::now();
    assert_eq!(next_event(&mut ws, "mark").await["mark"]["name"], "long");
    loop {
        let m = next_event(&mut ws, "media").await;
        if unb64(&m["media"]["payload"]) == tone {
            break;
        }
    }
    assert!(cleared_at.elapsed() < Duration::from_secs(2), "{:?}", cleared_at.elapsed());

    // What cannot be acted on is answered with an error and changes nothing.
    for bad in
        [json!("not an object"), json!({"event": "media", "media": {"payload": "***"}}), json!({"event": "dance"})]
    {
        send(&mut ws, bad).await;
        let e = next_event(&mut ws, "error").await;
        assert_eq!(e["error"]["reason"], "invalid_message", "{e}");
    }
    send(&mut ws, json!({"event": "media", "streamSid": "another", "media": {"payload": b64(&[0x33; 160])}})).await;
    assert_eq!(next_event(&mut ws, "error").await["error"]["reason"], "invalid_message");
    // Too much audio ahead: refused, not buffered (the limit is 60 s).
    send(&mut ws, json!({"event": "media", "media": {"payload": b64(&vec![0x44; 160 * 3001])}})).await;
    assert_eq!(next_event(&mut ws, "error").await["error"]["reason"], "playback_buffer_full");

    // The call ends: `stop`, then a normal close.
    s.post(&format!("/v1/calls/{id}/hangup"), &token, json!({})).await.expect(200);
    let stop = next_event(&mut ws, "stop").await;
    assert_eq!(stop["stop"]["callSid"], id.as_str());
    assert_eq!(closing(&mut ws, WAIT).await, (1000, "call ended".to_owned()));
    // Audited with the call and the bytes each way.
    let mut closed = Vec::new();
    for _ in 0..50 {
        closed = s.events(&token, "action=stream.closed").await;
        if !closed.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let d = &closed[0]["details"];
    assert_eq!(d["stream"], "call");
    assert_eq!(d["call_id"], id.as_str());
    assert!(d["bytes_received"].as_u64().unwrap() > 160 * 500, "{d}");
    assert!(d["bytes_sent"].as_u64().unwrap() > 0, "{d}");
    // An ended call has no stream.
    assert_eq!(open(&s, &format!("/v1/calls/{id}/stream"), Some(&token)).await.err().map(|e| e.0), Some(409));

    // A call ended where this instance's carrier does not hear of it (a
    // hang-up on another instance): the stream's own reading of the call
    // ends it, with `stop`, within its 5 s.
    let id = place(&s, &token, FROM).await;
    let mut ws = open(&s, &format!("/v1/calls/{id}/stream"), Some(&token)).await.expect("upgraded");
    next_event(&mut ws, "media").await;
    sqlx::any::install_default_drivers();
    let mut db = <sqlx::AnyConnection as sqlx::Connection>::connect(&s.db_url).await.unwrap();
    sqlx::query("UPDATE calls SET status = 'completed' WHERE id = $1").bind(&id).execute(&mut db).await.unwrap();
    let ended_at = std::time::Instant::now();
    assert_eq!(next_event(&mut ws, "stop").await["stop"]["callSid"], id.as_str());
    assert_eq!(closing(&mut ws, WAIT).await, (1000, "call ended".to_owned()));
    assert!(ended_at.elapsed() < Duration::from_millis(6500), "ended after {:?}", ended_at.elapsed());
}

async fn nobody_hears_a_call_that_is_not_theirs(b: Backend) {
    let s = server(b).await;
    let (token, identity) = tenant(&s, "Mine", FROM).await;
    let (theirs, _) = tenant(&s, "Theirs", "+34612345670").await;
    let other = s.post("/v1/identities", &token, json!({"number": "+34612345679"})).await.expect(201);
    let other_id = other.body["id"].as_str().unwrap().to_owned();
    let agent = s.post(&format!("/v1/identities/{identity}/agent-token"), &token, json!({})).await.expect(201).body
        ["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let (_, reader) = s.api_key(&token, json!({"name": "r", "role": "read_only"})).await;
    let mine = place(&s, &token, FROM).await;
    let sibling = place(&s, &token, &other_id).await;
    let path = |id: &str| format!("/v1/calls/{id}/stream");
    // Another tenant's call: the same 404 as an unknown id, before any upgrade.
    assert_eq!(open(&s, &path(&mine), Some(&theirs)).await.err().map(|e| e.0), Some(404));
    let unknown = uuid::Uuid::now_v7().to_string();
    assert_eq!(open(&s, &path(&unknown), Some(&theirs)).await.err().map(|e| e.0), Some(404));
    // An agent token: its identity's calls only.
    assert_eq!(open(&s, &path(&sibling), Some(&agent)).await.err().map(|e| e.0), Some(404));
    // Hearing and speaking into a call needs `calls:write`.
    assert_eq!(open(&s, &path(&mine), Some(&reader)).await.err().map(|e| e.0), Some(403));
    // No parameters but a ticket; none without a credential.
    assert_eq!(open(&s, &format!("{}?after=1", path(&mine)), Some(&agent)).await.err().map(|e| e.0), Some(400));
    assert_eq!(open(&s, &path(&mine), None).await.err().map(|e| e.0), Some(401));
    let mut ws = open(&s, &path(&mine), Some(&agent)).await.expect("upgraded");
    assert_eq!(next(&mut ws, WAIT).await.unwrap()["event"], "connected");
    // One stream per call at a time.
    assert_eq!(open(&s, &path(&mine), Some(&token)).await.err().map(|e| e.0), Some(409));
    // Binary is not the protocol: 1003.
    ws.send(Message::Binary(vec![0u8; 10].into())).await.unwrap();
    assert_eq!(closing(&mut ws, WAIT).await.0, 1003);
    // Let go: another stream may attach.
    let mut ws = open_when_free(&s, &path(&mine), &token).await;
    next_event(&mut ws, "media").await;
    ws.close(None).await.unwrap();
    // A frozen identity's call: its stream closes within a second, whoever
    // opened it, and none opens.
    let mut owner_ws = open(&s, &path(&sibling), Some(&token)).await.expect("upgraded");
    next_event(&mut owner_ws, "media").await;
    s.post(&format!("/v1/identities/{other_id}/freeze"), &token, json!({})).await.expect(200);
    let frozen_at = std::time::Instant::now();
    assert_eq!(closing(&mut owner_ws, WAIT).await, (1008, "identity frozen".to_owned()));
    assert!(frozen_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", frozen_at.elapsed());
    assert_eq!(open(&s, &path(&sibling), Some(&token)).await.err().map(|e| e.0), Some(423));
    // Freezing the identity closes its agent's stream within a second.
    let mut ws = open_when_free(&s, &path(&mine), &agent).await;
    next_event(&mut ws, "media").await;
    s.post(&format!("/v1/identities/{identity}/freeze"), &token, json!({})).await.expect(200);
    let frozen_at = std::time::Instant::now();
    assert_eq!(closing(&mut ws, WAIT).await.0, 1008);
    assert!(frozen_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", frozen_at.elapsed());
    assert_eq!(open(&s, &path(&mine), Some(&agent)).await.err().map(|e| e.0), Some(423));
}

async fn a_ticket_opens_one_stream_once_from_one_origin(b: Backend) {
    let s = server(b).await;
    let owner = s.tenant("Tickets").await;
    let token = owner.token.clone();
    s.post("/v1/identities", &token, json!({"number": FROM})).await.expect(201);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", owner.id), Some(json!({"amount": 1000})))
        .await
        .expect(200);
    let (theirs_token, _) = tenant(&s, "Others", "+34612345670").await;
    let web = json!({"name": "web", "permissions": ["events:read", "calls:read", "calls:write"]});
    let (key_id, key) = s.api_key(&token, web).await;
    let app = "https://app.example";
    let mint = |cred: String, body: Value, origin: Option<&'static str>| {
        let s = &s;
        async move {
            let mut req = s.request(Method::POST, "/v1/stream-tickets").bearer_auth(cred).json(&body);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let r = req.send().await.unwrap();
            let status = r.status().as_u16();
            (status, r.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let events = "/v1/events/stream";
    let (status, t) = mint(key.clone(), json!({"resource": events}), Some(app)).await;
    assert_eq!(status, 201, "{t}");
    let ticket = t["ticket"].as_str().unwrap().to_owned();
    assert!(ticket.starts_with("st_"));
    assert_eq!(t["expires_in"], 60);
    assert_eq!(t["origin"], app);
    // From another page: refused, and the ticket is used up by the try.
    let q = format!("{events}?ticket={ticket}");
    assert_eq!(open_from(&s, &q, None, Some("https://evil.example")).await.err().map(|e| e.0), Some(401));
    assert_eq!(open_from(&s, &q, None, Some(app)).await.err().map(|e| e.0), Some(401));
    // A fresh one: opens once, from its page.
    let ticket =
        mint(key.clone(), json!({"resource": events}), Some(app)).await.1["ticket"].as_str().unwrap().to_owned();
    let q = format!("{events}?ticket={ticket}&action=api_key.created");
    let mut ws = open_from(&s, &q, None, Some(app)).await.expect("upgraded");
    assert_eq!(open_from(&s, &q, None, Some(app)).await.err().map(|e| e.0), Some(401), "single use");
    // With a header too: ambiguous.
    let ticket2 = mint(key.clone(), json!({"resource": events}), None).await.1["ticket"].as_str().unwrap().to_owned();
    assert_eq!(open(&s, &format!("{events}?ticket={ticket2}"), Some(&key)).await.err().map(|e| e.0), Some(400));

    // A ticket for one call opens no other stream.
    let call_a = place(&s, &token, FROM).await;
    let call_b = place(&s, &token, FROM).await;
    // (Its id in any case: the ticket names it as the stream's path does.)
    let upper = call_a.to_uppercase();
    let for_a = mint(key.clone(), json!({"resource": format!("/v1/calls/{upper}/stream")}), None).await;
    assert_eq!(for_a.0, 201, "{}", for_a.1);
    assert_eq!(for_a.1["resource"], format!("/v1/calls/{call_a}/stream"));
    let ta = for_a.1["ticket"].as_str().unwrap();
    assert_eq!(open(&s, &format!("/v1/calls/{call_b}/stream?ticket={ta}"), None).await.err().map(|e| e.0), Some(401));
    // Minting: another tenant's call is 404, a reader gets no call ticket,
    // a browser cannot mint for another page, and the resource is checked.
    let theirs = mint(theirs_token.clone(), json!({"resource": format!("/v1/calls/{call_a}/stream")}), None).await;
    assert_eq!(theirs.0, 404, "{}", theirs.1);
    let (_, reader) = s.api_key(&token, json!({"name": "r", "role": "read_only"})).await;
    assert_eq!(mint(reader, json!({"resource": format!("/v1/calls/{call_a}/stream")}), None).await.0, 403);
    assert_eq!(
        mint(key.clone(), json!({"resource": events, "origin": "https://evil.example"}), Some(app)).await.0,
        400
    );
    assert_eq!(mint(key.clone(), json!({"resource": "/v1/api-keys"}), None).await.0, 400);
    // A key held to its origins mints for those only.
    let (_, fenced) = s.api_key(&token, json!({"name": "f", "role": "read_only", "allowed_origins": [app]})).await;
    assert_eq!(mint(fenced.clone(), json!({"resource": events, "origin": "https://other.example"}), None).await.0, 403);
    assert_eq!(mint(fenced, json!({"resource": events}), Some(app)).await.0, 201);

    // The ticket's stream acts as its minter: revoking the key closes it.
    next(&mut ws, WAIT).await.unwrap();
    s.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&token), None).await.expect(204);
    let revoked_at = std::time::Instant::now();
    let closed = closing(&mut ws, WAIT).await;
    assert_eq!(closed.0, 1008, "{closed:?}");
    assert!(revoked_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", revoked_at.elapsed());
    // And its unused tickets open nothing.
    let q = format!("/v1/calls/{call_a}/stream?ticket={ta}");
    assert_eq!(open(&s, &q, None).await.err().map(|e| e.0), Some(401));

    // A person's ticket: logging out ends its stream.
    let (access, _) = s.login(&owner.email, &owner.password).await;
    let t = mint(access.clone(), json!({"resource": events}), None).await.1;
    let mut ws = open(&s, &format!("{events}?ticket={}", t["ticket"].as_str().unwrap()), None).await.expect("upgraded");
    next(&mut ws, WAIT).await.unwrap();
    s.call(Method::POST, "/v1/auth/logout", Some(&access), None).await.expect(204);
    assert_eq!(closing(&mut ws, WAIT).await.0, 1008);
}

/// Expired tickets open nothing; a client sending too many messages is cut off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_tickets_and_message_floods() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.streams.ticket_ttl_secs = 1;
        c.streams.max_client_messages_per_sec = 5;
    })
    .await;
    let t = s.tenant("Expiry").await;
    let r = s.post("/v1/stream-tickets", &t.token, json!({"resource": "/v1/events/stream"})).await.expect(201);
    assert_eq!(r.body["expires_in"], 1);
    s.clock.advance_ms(1001);
    let q = format!("/v1/events/stream?ticket={}", r.body["ticket"].as_str().unwrap());
    assert_eq!(open(&s, &q, None).await.err().map(|e| e.0), Some(401));
    let mut ws = open(&s, "/v1/events/stream", Some(&t.token)).await.expect("upgraded");
    for _ in 0..30 {
        if ws.send(Message::Text("{}".into())).await.is_err() {
            break;
        }
    }
    let closed = closing(&mut ws, WAIT).await;
    assert_eq!(closed.0, 1008, "{closed:?}");
    assert!(closed.1.contains("rate"), "{closed:?}");
}

/// The byte limit and the idle limit close a stream (1008, with the
/// reason); a frozen tenant's streams close within a second; every kind of
/// bad credential is refused before the upgrade.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn byte_and_idle_limits_tenant_freeze_and_bad_credentials() {
    let s = TestServer::start_with(Backend::Sqlite, |c| {
        c.streams.max_connection_bytes = 4000;
        c.streams.idle_timeout_secs = 1;
        c.carrier.sandbox_delay_ms = 20;
        c.carrier.sandbox_call_secs = 3600;
    })
    .await;
    let (token, _) = tenant(&s, "Bounds", FROM).await;
    // A call's frames add up: past 4,000 bytes sent, 1008.
    let id = place(&s, &token, FROM).await;
    let mut ws = open(&s, &format!("/v1/calls/{id}/stream"), Some(&token)).await.expect("upgraded");
    let closed = closing(&mut ws, WAIT).await;
    assert_eq!(closed.0, 1008, "{closed:?}");
    assert!(closed.1.contains("byte limit"), "{closed:?}");
    // A client that reads nothing (so answers no ping): pinged, then cut.
    let mut ws = open(&s, "/v1/events/stream?action=api_key.created", Some(&token)).await.expect("upgraded");
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let closed = closing(&mut ws, WAIT).await;
    assert_eq!(closed, (1008, "idle timeout".to_owned()));

    // Bad credentials of every kind: no upgrade.
    let path = "/v1/events/stream";
    let (key_id, key) = s.api_key(&token, json!({"name": "k", "role": "read_only"})).await;
    s.call(Method::DELETE, &format!("/v1/api-keys/{key_id}"), Some(&token), None).await.expect(204);
    let forged_jwt = format!("{}x", &token[..token.len() - 1]);
    for (cred, why) in [
        (key.as_str(), "a revoked key"),
        (forged_jwt.as_str(), "a JWT with a bad signature"),
        ("at_00000000000000000000000000000000", "an unknown agent token"),
        ("garbage", "a malformed credential"),
    ] {
        assert_eq!(open(&s, path, Some(cred)).await.err().map(|e| e.0), Some(401), "{why}");
    }
    // The master key is for /sysadmin only.
    let master = s.master_key.clone();
    assert_eq!(open(&s, path, Some(&master)).await.err().map(|e| e.0), Some(401));

    // Freezing the tenant closes its streams within a second.
    let t = s.tenant("Frozen").await;
    let mut ws = open(&s, path, Some(&t.token)).await.expect("upgraded");
    next(&mut ws, WAIT).await.unwrap();
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/freeze", t.id), None).await.expect(200);
    let frozen_at = std::time::Instant::now();
    assert_eq!(closing(&mut ws, WAIT).await.0, 1008);
    assert!(frozen_at.elapsed() < Duration::from_millis(1500), "closed after {:?}", frozen_at.elapsed());
    assert_eq!(open(&s, path, Some(&t.token)).await.err().map(|e| e.0), Some(423));
}
