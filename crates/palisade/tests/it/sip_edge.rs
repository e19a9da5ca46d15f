//! The SIP edge, talked to like a SIP phone over UDP and TCP: digest
//! REGISTER with SHA-256 and MD5, replays, stale nonces, the address block,
//! plaintext sources, malformed requests and the flood guard.

use std::time::Duration;

use serde_json::json;

use crate::common::{Backend, TestServer};
use crate::sip_ua::{Msg, Ua};

backend_tests!(register_with_sha256_and_md5_and_refuse_replays);

pub(crate) struct Phone {
    pub(crate) identity: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) realm: String,
    pub(crate) token: String,
}

async fn server_with(b: Backend, tweak: impl FnOnce(&mut palisade_config::Config)) -> TestServer {
    TestServer::start_with(b, |c| {
        c.sip.udp_listen = Some("127.0.0.1:0".into());
        c.sip.tcp_listen = Some("127.0.0.1:0".into());
        tweak(c);
    })
    .await
}

pub(crate) async fn phone(s: &TestServer, tenant: &str) -> Phone {
    let t = s.tenant(tenant).await;
    let number = format!("+3461{:07}", rand_digits());
    let id = s.post("/v1/identities", &t.token, json!({"number": number})).await.expect(201).body["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let c = s.post(&format!("/v1/identities/{id}/sip-credentials"), &t.token, json!({})).await.expect(201);
    let text = |k: &str| c.body[k].as_str().unwrap().to_owned();
    Phone { identity: id, user: text("username"), password: text("password"), realm: text("realm"), token: t.token }
}

fn rand_digits() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 % 10_000_000
}

fn contact(ua: &Ua, expires: u32) -> Vec<String> {
    vec![format!("Contact: <sip:{}@127.0.0.1:5999>;expires={expires}", ua.user)]
}

/// REGISTER, answer the challenge, return the final answer and the challenge.
async fn register(ua: &mut Ua, password: &str, alg: &str) -> (Msg, Msg) {
    let challenge = ua.request("REGISTER", &contact(ua, 600)).await.expect("a challenge");
    assert_eq!(challenge.status, 401, "{}", challenge.raw);
    let mut lines = contact(ua, 600);
    lines.push(ua.authorization(&challenge, alg, password, 1));
    let answer = ua.request("REGISTER", &lines).await.expect("an answer");
    (answer, challenge)
}

async fn register_with_sha256_and_md5_and_refuse_replays(b: Backend) {
    let s = server_with(b, |_| {}).await;
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let (ok, challenge) = register(&mut ua, &p.password, "SHA-256").await;
    // SHA-256 offered first, then MD5, each with qop="auth".
    let offered = challenge.all("www-authenticate");
    assert_eq!(offered.len(), 2, "{}", challenge.raw);
    assert!(offered[0].contains("algorithm=SHA-256") && offered[1].contains("algorithm=MD5"));
    assert!(offered.iter().all(|c| c.contains("qop=\"auth\"") && c.contains(&format!("realm=\"{}\"", p.realm))));
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.header("contact").unwrap().contains("expires=600"), "{}", ok.raw);
    let regs = s.get(&format!("/v1/identities/{}/registrations", p.identity), &p.token).await.expect(200);
    assert_eq!(regs.body["data"][0]["transport"], "udp");
    assert_eq!(regs.body["data"][0]["contact"], format!("sip:{}@127.0.0.1:5999", p.user));

    // MD5 too, over TCP.
    let mut tcp = Ua::tcp(s.sip_tcp(), &p.user, &p.realm).await;
    let (ok, _) = register(&mut tcp, &p.password, "MD5").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);

    // The same Authorization again (same nonce and nc): refused, even in a
    // new request; the next nc of that nonce is accepted.
    let challenge = ua.request("REGISTER", &contact(&ua, 600)).await.unwrap();
    let auth = ua.authorization(&challenge, "SHA-256", &p.password, 1);
    let mut lines = contact(&ua, 600);
    lines.push(auth.clone());
    assert_eq!(ua.request("REGISTER", &lines).await.unwrap().status, 200);
    let replay = ua.request("REGISTER", &lines).await.unwrap();
    assert_eq!(replay.status, 401, "a replayed (nonce, nc) was accepted: {}", replay.raw);
    let mut lines = contact(&ua, 600);
    lines.push(ua.authorization(&challenge, "SHA-256", &p.password, 2));
    assert_eq!(ua.request("REGISTER", &lines).await.unwrap().status, 200);

    // Expires 0 removes the binding.
    let challenge = ua.request("REGISTER", &contact(&ua, 0)).await.unwrap();
    let mut lines = contact(&ua, 0);
    lines.push(ua.authorization(&challenge, "SHA-256", &p.password, 1));
    let gone = ua.request("REGISTER", &lines).await.unwrap();
    assert_eq!(gone.status, 200);
    let regs = s.get(&format!("/v1/identities/{}/registrations", p.identity), &p.token).await.expect(200);
    assert_eq!(regs.body["data"].as_array().unwrap().len(), 0, "{}", regs.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_failures_block_the_address_and_the_right_password_then_fails() {
    let s = server_with(Backend::Sqlite, |_| {}).await;
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let mut last = None;
    for _ in 0..5 {
        let (answer, _) = register(&mut ua, "wrong password", "SHA-256").await;
        last = Some(answer);
    }
    let blocked = last.unwrap();
    assert_eq!((blocked.status, blocked.warning()), (403, Some("blocked")), "{}", blocked.raw);
    assert!(blocked.header("warning").unwrap().starts_with("399 localhost "), "{}", blocked.raw);
    // Now even the right password is refused from this address...
    let r = ua.request("REGISTER", &contact(&ua, 600)).await.unwrap();
    assert_eq!((r.status, r.warning()), (403, Some("blocked")));
    // The block is audited once (written in the background).
    let mut found = 0;
    for _ in 0..50 {
        let e = s.admin(reqwest::Method::GET, "/sysadmin/v1/events?action=sip.address_blocked", None).await;
        found = e.body["data"].as_array().map_or(0, Vec::len);
        if found > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(found, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_nonce_gets_stale_and_a_frozen_identity_no_binding() {
    let s = server_with(Backend::Sqlite, |_| {}).await;
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let challenge = ua.request("REGISTER", &contact(&ua, 600)).await.unwrap();
    s.clock.advance_ms(301_000);
    let mut lines = contact(&ua, 600);
    lines.push(ua.authorization(&challenge, "SHA-256", &p.password, 1));
    let stale = ua.request("REGISTER", &lines).await.unwrap();
    assert_eq!(stale.status, 401);
    assert!(stale.all("www-authenticate").iter().all(|c| c.contains("stale=true")), "{}", stale.raw);
    // Below the minimum expiry: 423 with Min-Expires.
    let challenge = ua.request("REGISTER", &contact(&ua, 10)).await.unwrap();
    let mut lines = contact(&ua, 10);
    lines.push(ua.authorization(&challenge, "MD5", &p.password, 1));
    let brief = ua.request("REGISTER", &lines).await.unwrap();
    assert_eq!((brief.status, brief.header("min-expires")), (423, Some("60")), "{}", brief.raw);
    // A frozen identity registers nothing.
    s.post(&format!("/v1/identities/{}/freeze", p.identity), &p.token, json!({})).await.expect(200);
    let (frozen, _) = register(&mut ua, &p.password, "SHA-256").await;
    assert_eq!((frozen.status, frozen.warning()), (403, Some("frozen")), "{}", frozen.raw);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_tenant_cannot_register_as_another() {
    let s = server_with(Backend::Sqlite, |_| {}).await;
    let (a, b) = (phone(&s, "A").await, phone(&s, "B").await);
    // B's credential, in A's realm: not a credential of that realm.
    let mut ua = Ua::udp(s.sip_udp(), &b.user, &a.realm).await;
    let (r, _) = register(&mut ua, &b.password, "SHA-256").await;
    assert_eq!(r.status, 401, "{}", r.raw);
    // A's own realm and credential, but another user's address of record.
    let mut ua = Ua::udp(s.sip_udp(), &a.user, &a.realm).await;
    let challenge = ua.request("REGISTER", &contact(&ua, 600)).await.unwrap();
    let auth = ua.authorization(&challenge, "SHA-256", &a.password, 1);
    let mut m = ua.build("REGISTER", &[contact(&ua, 600)[0].clone(), auth]);
    m = m.replace(&format!("To: <sip:{}@", a.user), "To: <sip:someone@");
    ua.send_raw(m.as_bytes()).await;
    let r = ua.recv(Duration::from_secs(3)).await.unwrap();
    assert_eq!((r.status, r.warning()), (403, Some("aor_mismatch")), "{}", r.raw);
    let regs = s.get(&format!("/v1/identities/{}/registrations", a.identity), &a.token).await.expect(200);
    assert_eq!(regs.body["data"], json!([]));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_is_served_only_to_the_allowed_networks() {
    let s =
        server_with(Backend::Sqlite, |c| c.sip.plaintext_allowed_cidrs = vec!["127.0.0.2/32".parse().unwrap()]).await;
    let p = phone(&s, "Acme").await;
    let mut outside = Ua::udp_from("127.0.0.1:0", s.sip_udp(), &p.user, &p.realm).await;
    assert!(outside.request("OPTIONS", &[]).await.is_none(), "a plaintext request from elsewhere was answered");
    // Over TCP the connection is closed unread.
    let mut tcp = Ua::tcp(s.sip_tcp(), &p.user, &p.realm).await;
    assert!(tcp.request("OPTIONS", &[]).await.is_none());
    let mut inside = Ua::udp_from("127.0.0.2:0", s.sip_udp(), &p.user, &p.realm).await;
    assert_eq!(inside.request("OPTIONS", &[]).await.map(|m| m.status), Some(200));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_400_or_nothing_and_the_edge_stays_up() {
    let s = server_with(Backend::Sqlite, |_| {}).await;
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let without_call_id = ua.build("OPTIONS", &[]).replace(&format!("Call-ID: {}\r\n", ua.call_id), "");
    ua.send_raw(without_call_id.as_bytes()).await;
    // The stack itself drops a request it cannot key (no Call-ID): no answer
    // or a 400, never a crash.
    if let Some(r) = ua.recv(Duration::from_millis(500)).await {
        assert_eq!(r.status, 400, "{}", r.raw);
    }
    let hops = ua.build("OPTIONS", &[]).replace("Max-Forwards: 70", "Max-Forwards: 0");
    ua.send_raw(hops.as_bytes()).await;
    let r = ua.recv(Duration::from_secs(3)).await.unwrap();
    assert_eq!((r.status, r.warning()), (483, Some("too_many_hops")), "{}", r.raw);
    let cseq = ua.build("OPTIONS", &[]).replace(" OPTIONS\r\nUser-Agent", " INVITE\r\nUser-Agent");
    ua.send_raw(cseq.as_bytes()).await;
    let r = ua.recv(Duration::from_secs(3)).await.unwrap();
    assert_eq!((r.status, r.warning()), (400, Some("cseq_method")), "{}", r.raw);
    let many: Vec<String> = (0..70).map(|i| format!("X-Filler-{i}: x")).collect();
    let r = ua.request("OPTIONS", &many).await.unwrap();
    assert_eq!((r.status, r.warning()), (400, Some("too_many_headers")), "{}", r.raw);
    // Garbage and an oversized datagram: dropped.
    ua.send_raw(b"\x00\x01garbage\r\n\r\n").await;
    let big = ua.build("OPTIONS", &[format!("X-Big: {}", "a".repeat(20_000))]);
    ua.send_raw(big.as_bytes()).await;
    let huge_length = ua.build("OPTIONS", &[]).replace("Content-Length: 0", "Content-Length: 18446744073709551615");
    ua.send_raw(huge_length.as_bytes()).await;
    // A non-UTF-8 header line.
    let mut bad_utf8 = ua.build("OPTIONS", &[]).into_bytes();
    let at = bad_utf8.windows(2).position(|w| w == b"\r\n").unwrap() + 2;
    bad_utf8.splice(at..at, b"X-Bad: \xff\xfe\r\n".iter().copied());
    ua.send_raw(&bad_utf8).await;
    while ua.recv(Duration::from_millis(300)).await.is_some() {}
    // Still serving.
    assert_eq!(ua.request("OPTIONS", &[]).await.map(|m| m.status), Some(200));
    let mut tcp = Ua::tcp(s.sip_tcp(), &p.user, &p.realm).await;
    tcp.send_raw(huge_length.as_bytes()).await;
    let mut tcp = Ua::tcp(s.sip_tcp(), &p.user, &p.realm).await;
    assert_eq!(tcp.request("OPTIONS", &[]).await.map(|m| m.status), Some(200));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flooding_address_gets_no_answer() {
    let s = server_with(Backend::Sqlite, |c| {
        c.sip.pike.max_requests = 10;
        c.sip.pike.window_ms = 60_000;
    })
    .await;
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let mut answered = 0;
    for _ in 0..15 {
        let m = ua.build("OPTIONS", &[]);
        ua.send_raw(m.as_bytes()).await;
        if ua.recv(Duration::from_millis(500)).await.is_some() {
            answered += 1;
        }
    }
    assert_eq!(answered, 10);
    s.stop().await;
}
