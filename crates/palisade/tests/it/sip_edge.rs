//! The SIP edge, talked to like a SIP phone over UDP and TCP: digest
//! REGISTER with SHA-256 and MD5, replays, stale nonces, the address block,
//! plaintext sources, malformed requests and the flood guard.

use std::time::Duration;

use serde_json::json;

use crate::common::{Backend, TestServer};
use crate::sip_ua::{Msg, Ua};

backend_tests!(register_with_sha256_and_md5_and_refuse_replays, invite_is_admitted_like_post_v1_calls_and_bye_ends_it);

pub(crate) struct Phone {
    pub(crate) tenant: String,
    pub(crate) identity: String,
    pub(crate) user: String,
    pub(crate) password: String,
    pub(crate) realm: String,
    pub(crate) token: String,
}

pub(crate) async fn server_with(b: Backend, tweak: impl FnOnce(&mut palisade_config::Config)) -> TestServer {
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
    let (user, password, realm) = (text("username"), text("password"), text("realm"));
    Phone { tenant: t.id, identity: id, user, password, realm, token: t.token }
}

fn rand_digits() -> u32 {
    uuid::Uuid::new_v4().as_u128() as u32 % 10_000_000
}

pub(crate) fn contact(ua: &Ua, expires: u32) -> Vec<String> {
    vec![format!("Contact: <sip:{}@127.0.0.1:5999>;expires={expires}", ua.user)]
}

/// REGISTER, answer the challenge, return the final answer and the challenge.
pub(crate) async fn register(ua: &mut Ua, password: &str, alg: &str) -> (Msg, Msg) {
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
async fn tls_serves_every_address_with_its_connection_caps() {
    let s = server_with(Backend::Sqlite, |c| {
        c.sip.tls_listen = Some("127.0.0.1:0".into());
        c.sip.tls_cert_file = Some(crate::tls::fixture("server.pem"));
        c.sip.tls_key_file = Some(crate::tls::fixture("server.key"));
        // TLS is served outside the plaintext networks.
        c.sip.plaintext_allowed_cidrs = vec![];
        c.sip.max_connections_per_address = 2;
        c.sip.tls_handshake_timeout_ms = 500;
    })
    .await;
    let tls_addr = s.sip_tls();
    let p = phone(&s, "Acme").await;
    let mut ua = Ua::tls(tls_addr, &p.user, &p.realm).await;
    let (ok, _) = register(&mut ua, &p.password, "SHA-256").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let regs = s.get(&format!("/v1/identities/{}/registrations", p.identity), &p.token).await.expect(200);
    assert_eq!(regs.body["data"][0]["transport"], "tls");
    // A client that never finishes its handshake holds its slot only until
    // the deadline; a third connection from one address is closed at once.
    let idle = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(tls_addr).await.unwrap();
    let mut buf = [0u8; 16];
    let closed =
        tokio::time::timeout(Duration::from_secs(2), tokio::io::AsyncReadExt::read(&mut third, &mut buf)).await;
    assert!(matches!(closed, Ok(Ok(0)) | Ok(Err(_))), "a connection over the per-address cap was kept: {closed:?}");
    tokio::time::sleep(Duration::from_millis(800)).await;
    drop(idle);
    drop(ua);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut again = Ua::tls(tls_addr, &p.user, &p.realm).await;
    assert_eq!(again.request("OPTIONS", &[]).await.map(|m| m.status), Some(200));
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

/// An INVITE to `to` answered with `password` (407 first), then whatever
/// final answer follows; also the challenge.
pub(crate) async fn invite(ua: &mut Ua, to: &str, password: &str) -> Msg {
    invite_with(ua, to, password, &[]).await
}

/// [`invite`] with `extra` header lines on both requests.
pub(crate) async fn invite_with(ua: &mut Ua, to: &str, password: &str, extra: &[String]) -> Msg {
    let challenge = ua.request_to("INVITE", to, extra).await.expect("a challenge");
    assert_eq!(challenge.status, 407, "{}", challenge.raw);
    let offered = challenge.all("proxy-authenticate");
    assert!(offered.len() == 2 && offered[0].contains("algorithm=SHA-256"), "{}", challenge.raw);
    let c = offered[0];
    let (nonce, realm) = (crate::sip_ua::param(c, "nonce").unwrap(), crate::sip_ua::param(c, "realm").unwrap());
    let uri = format!("sip:{to}@{}", ua.realm);
    let auth = crate::sip_ua::answer("SHA-256", &ua.user, &realm, password, "INVITE", &uri, &nonce, 1).replacen(
        "Authorization:",
        "Proxy-Authorization:",
        1,
    );
    let lines: Vec<String> = extra.iter().cloned().chain([auth]).collect();
    ua.request_to("INVITE", to, &lines).await.expect("an answer")
}

/// A server with a TLS listener whose sandbox calls last 10 minutes, and a
/// phone with credit: where SRTP offers may carry keys. `tweak` after.
pub(crate) async fn media_server(tweak: impl FnOnce(&mut palisade_config::Config)) -> (TestServer, Phone) {
    let s = server_with(Backend::Sqlite, |c| {
        c.carrier.sandbox_call_secs = 600;
        c.sip.tls_listen = Some("127.0.0.1:0".into());
        c.sip.tls_cert_file = Some(crate::tls::fixture("server.pem"));
        c.sip.tls_key_file = Some(crate::tls::fixture("server.key"));
        tweak(c);
    })
    .await;
    let p = phone(&s, "Media").await;
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", p.tenant), Some(json!({"amount": 100})))
        .await
        .expect(200);
    (s, p)
}

pub(crate) async fn calls(s: &TestServer, token: &str) -> Vec<serde_json::Value> {
    s.get("/v1/calls", token).await.expect(200).body["data"].as_array().unwrap().clone()
}

async fn invite_is_admitted_like_post_v1_calls_and_bye_ends_it(b: Backend) {
    let s = server_with(b, |c| c.carrier.sandbox_call_secs = 600).await;
    let p = phone(&s, "Acme").await;
    let tenant = p.tenant.clone();
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/tenants/{tenant}/credits"), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let ok = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.raw.contains("application/sdp") && ok.raw.contains("m=audio"), "{}", ok.raw);
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000222", &to_tag, ua.cseq).await;
    let list = calls(&s, &p.token).await;
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!((list[0]["to"].as_str(), list[0]["status"].as_str()), (Some("+34612000222"), Some("in_progress")));
    assert_eq!(list[0]["identity_id"], p.identity.as_str());
    // The caller hangs up: 200 to the BYE, the call completed, billed, its CDR written.
    ua.cseq += 1;
    ua.send_in_dialog("BYE", "+34612000222", &to_tag, ua.cseq).await;
    let bye = ua.recv(Duration::from_secs(3)).await.expect("an answer to the BYE");
    assert_eq!(bye.status, 200, "{}", bye.raw);
    let id = list[0]["id"].as_str().unwrap();
    let mut status = String::new();
    for _ in 0..50 {
        status = s.get(&format!("/v1/calls/{id}"), &p.token).await.expect(200).body["status"].as_str().unwrap().into();
        if status == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "completed");
    let cdrs = s.get("/v1/cdrs", &p.token).await.expect(200);
    assert_eq!(cdrs.body["data"].as_array().unwrap().len(), 1, "{}", cdrs.text);
    let placed = s.events(&p.token, "action=call.placed").await;
    assert_eq!(placed[0]["actor"]["type"], "agent", "{placed:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_invite_says_why_and_charges_nothing() {
    let s = server_with(Backend::Sqlite, |c| c.carrier.sandbox_call_secs = 600).await;
    let p = phone(&s, "Acme").await;
    let tenant = p.tenant.clone();
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let refused = |m: &Msg| (m.status, m.warning().map(str::to_owned));
    // No credit: 402.
    let r = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(refused(&r), (402, Some("insufficient_credits".into())), "{}", r.raw);
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/tenants/{tenant}/credits"), Some(json!({"amount": 100})))
        .await
        .expect(200);
    // Not a number: 404.
    let r = invite(&mut ua, "alice", &p.password).await;
    assert_eq!(refused(&r), (404, Some("not_a_number".into())), "{}", r.raw);
    // A country the identity may not reach: 403.
    let path = format!("/v1/identities/{}", p.identity);
    s.call(reqwest::Method::PATCH, &path, Some(&p.token), Some(json!({"policy": {"allowed_countries": ["FR"]}})))
        .await
        .expect(200);
    let r = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(refused(&r), (403, Some("country_not_allowed".into())), "{}", r.raw);
    // Over the monthly budget: 403.
    s.call(reqwest::Method::PATCH, &path, Some(&p.token), Some(json!({"policy": {"monthly_budget": 0}})))
        .await
        .expect(200);
    let r = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(refused(&r), (403, Some("monthly_budget".into())), "{}", r.raw);
    // The identity's own rate: 503 with Retry-After.
    s.call(reqwest::Method::PATCH, &path, Some(&p.token), Some(json!({"policy": {"rate_per_second": 1}})))
        .await
        .expect(200);
    s.admin(
        reqwest::Method::PUT,
        &format!("/sysadmin/v1/tenants/{tenant}/limits"),
        Some(json!({"concurrent_calls": 1})),
    )
    .await
    .expect(200);
    let first = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(first.status, 200, "{}", first.raw);
    let r = invite(&mut ua, "+34612000223", &p.password).await;
    assert!(
        refused(&r) == (503, Some("rate_per_second".into())) || refused(&r) == (486, Some("concurrent_calls".into())),
        "{}",
        r.raw
    );
    if r.status == 503 {
        assert!(r.header("retry-after").is_some(), "{}", r.raw);
        s.clock.advance_ms(2_000);
        // Past the rate: the second concurrent call finds no slot: 486.
        let r = invite(&mut ua, "+34612000223", &p.password).await;
        assert_eq!(refused(&r), (486, Some("concurrent_calls".into())), "{}", r.raw);
    }
    // A frozen identity: 403.
    s.post(&format!("{path}/freeze"), &p.token, json!({})).await.expect(200);
    let r = invite(&mut ua, "+34612000224", &p.password).await;
    assert_eq!(refused(&r), (403, Some("frozen".into())), "{}", r.raw);
    // Only the one admitted call exists, and only it was charged.
    assert_eq!(calls(&s, &p.token).await.len(), 1);
    let balance = s.get("/v1/balance", &p.token).await.expect(200);
    assert_eq!(balance.body["balance"].as_i64().unwrap(), 100 - first_minute(&s));
    s.stop().await;
}

fn first_minute(s: &TestServer) -> i64 {
    s.state().config.pricing.call_minute
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_before_the_answer_charges_nothing_and_the_callee_hangs_up_with_a_bye() {
    let s = server_with(Backend::Sqlite, |c| {
        c.carrier.sandbox_delay_ms = 1500;
        c.carrier.sandbox_call_secs = 1;
    })
    .await;
    let p = phone(&s, "Acme").await;
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", p.tenant), Some(json!({"amount": 100})))
        .await
        .expect(200);
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    // Ringing for 1.5 s: canceled meanwhile.
    let challenge = ua.request_to("INVITE", "+34612000222", &[]).await.unwrap();
    let c = challenge.all("proxy-authenticate")[0].to_owned();
    let (nonce, realm) = (crate::sip_ua::param(&c, "nonce").unwrap(), crate::sip_ua::param(&c, "realm").unwrap());
    let uri = format!("sip:+34612000222@{}", ua.realm);
    let auth = crate::sip_ua::answer("SHA-256", &ua.user, &realm, &p.password, "INVITE", &uri, &nonce, 1).replacen(
        "Authorization:",
        "Proxy-Authorization:",
        1,
    );
    let mut lines = vec![auth, format!("Contact: <sip:{}@127.0.0.1:5999>", ua.user)];
    let sent = ua.build_to("INVITE", &uri, None, &lines);
    ua.send_raw(sent.as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    // CANCEL: the INVITE's request line, Via (branch), Call-ID and CSeq number.
    let cancel = sent
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace(&format!("CSeq: {} INVITE", ua.cseq), &format!("CSeq: {} CANCEL", ua.cseq));
    let mut cancel: String = cancel
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("Proxy-Authorization") && !l.starts_with("Contact"))
        .map(|l| format!("{l}\r\n"))
        .collect();
    cancel.push_str("\r\n");
    ua.send_raw(cancel.as_bytes()).await;
    let mut got = Vec::new();
    while let Some(m) = ua.recv(Duration::from_secs(3)).await {
        got.push(m.status);
        if m.status == 487 {
            break;
        }
    }
    assert!(got.contains(&487), "the INVITE was not ended by the CANCEL: {got:?}");
    let mut status = String::new();
    for _ in 0..50 {
        let list = calls(&s, &p.token).await;
        status = list[0]["status"].as_str().unwrap().to_owned();
        if status == "canceled" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "canceled");
    let balance = s.get("/v1/balance", &p.token).await.expect(200);
    assert_eq!(balance.body["balance"], 100, "a canceled call was charged");

    // Answered, then the callee hangs up after a second: we send the BYE.
    lines.clear();
    let ok = invite(&mut ua, "+34612000333", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000333", &to_tag, ua.cseq).await;
    let bye = ua.recv_request(Duration::from_secs(5)).await.expect("a BYE from the edge");
    assert!(bye.starts_with("BYE "), "{bye}");
    s.stop().await;
}

/// The tenant's limits of `POST /v1/calls` hold for SIP calls too: its
/// call-creation rate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenants_call_rate_holds_over_sip() {
    let s = server_with(Backend::Sqlite, |c| c.carrier.sandbox_call_secs = 600).await;
    let p = phone(&s, "Acme").await;
    let credits = format!("/sysadmin/v1/tenants/{}/credits", p.tenant);
    s.admin(reqwest::Method::POST, &credits, Some(json!({"amount": 100}))).await.expect(200);
    let limits = format!("/sysadmin/v1/tenants/{}/limits", p.tenant);
    s.admin(reqwest::Method::PUT, &limits, Some(json!({"call_create_per_minute": 1}))).await.expect(200);
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    assert_eq!(invite(&mut ua, "+34612000222", &p.password).await.status, 200);
    let r = invite(&mut ua, "+34612000223", &p.password).await;
    assert_eq!((r.status, r.warning()), (503, Some("rate_limited")), "{}", r.raw);
    assert!(r.header("retry-after").is_some(), "{}", r.raw);
    assert_eq!(calls(&s, &p.token).await.len(), 1);
    s.stop().await;
}

/// A request within the call that we do not serve (a re-INVITE) is
/// answered at once, not left waiting on us.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reinvite_within_a_call_is_answered_at_once() {
    let s = server_with(Backend::Sqlite, |c| c.carrier.sandbox_call_secs = 600).await;
    let p = phone(&s, "Acme").await;
    let credits = format!("/sysadmin/v1/tenants/{}/credits", p.tenant);
    s.admin(reqwest::Method::POST, &credits, Some(json!({"amount": 100}))).await.expect(200);
    let mut ua = Ua::tcp(s.sip_tcp(), &p.user, &p.realm).await;
    let ok = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000222", &to_tag, ua.cseq).await;
    ua.cseq += 1;
    ua.send_in_dialog("INVITE", "+34612000222", &to_tag, ua.cseq).await;
    let r = ua.recv(Duration::from_secs(2)).await.expect("an answer to the re-INVITE");
    assert_eq!(r.status, 488, "{}", r.raw);
    ua.cseq += 1;
    ua.send_in_dialog("BYE", "+34612000222", &to_tag, ua.cseq).await;
    assert_eq!(ua.recv(Duration::from_secs(3)).await.map(|m| m.status), Some(200));
    s.stop().await;
}

/// A SIP call hung up over the API: the caller gets our BYE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_hung_up_over_the_api_ends_the_callers_dialog() {
    let s = server_with(Backend::Sqlite, |c| c.carrier.sandbox_call_secs = 600).await;
    let p = phone(&s, "Acme").await;
    let credits = format!("/sysadmin/v1/tenants/{}/credits", p.tenant);
    s.admin(reqwest::Method::POST, &credits, Some(json!({"amount": 100}))).await.expect(200);
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let ok = invite(&mut ua, "+34612000222", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000222", &to_tag, ua.cseq).await;
    let id = calls(&s, &p.token).await[0]["id"].as_str().unwrap().to_owned();
    let r = s.post(&format!("/v1/calls/{id}/hangup"), &p.token, json!({})).await.expect(200);
    assert_eq!(r.body["status"], "completed");
    let bye = ua.recv_request(Duration::from_secs(5)).await.expect("a BYE from the edge");
    assert!(bye.starts_with("BYE "), "{bye}");
    s.stop().await;
}

/// A credential revoked, or its identity deleted, answers no more at once,
/// though it answered rightly a moment before (and so would be reused
/// without a store read for a short while).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_credential_answers_no_more_at_once() {
    let s = server_with(Backend::Sqlite, |_| {}).await;
    for how in ["revoke", "delete the identity"] {
        let p = phone(&s, "Acme").await;
        let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
        let (ok, _) = register(&mut ua, &p.password, "SHA-256").await;
        assert_eq!(ok.status, 200, "{}", ok.raw);
        let path = match how {
            "revoke" => format!("/v1/identities/{}/sip-credentials/{}", p.identity, p.user),
            _ => format!("/v1/identities/{}", p.identity),
        };
        s.call(reqwest::Method::DELETE, &path, Some(&p.token), None).await.expect(204);
        let (after, _) = register(&mut ua, &p.password, "SHA-256").await;
        assert_ne!(after.status, 200, "{how}: the credential still answered: {}", after.raw);
    }
    s.stop().await;
}

/// The identity's media policy at the INVITE (SPEC §13): SDES keys never
/// over a plaintext transport, a `required` policy refuses plain RTP, weak
/// suites are refused (488 with the reason, nothing charged), and an SRTP
/// offer is never answered in the clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_policy_refuses_weak_or_exposed_srtp_and_never_answers_weaker() {
    let (s, p) = media_server(|_| {}).await;
    let sdp = |media: &str| format!("v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n{media}");
    // Inline keys of each suite's length (key and salt).
    let key = |suite: &str| {
        if suite.starts_with("AEAD_AES_256") {
            "inline:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwc="
        } else {
            "inline:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH"
        }
    };
    let sdes = |suite: &str| sdp(&format!("m=audio 40000 RTP/SAVP 0\r\na=crypto:1 {suite} {}\r\n", key(suite)));
    let plain = sdp("m=audio 40000 RTP/AVP 0\r\n");
    let refused = |m: &Msg| (m.status, m.warning().map(str::to_owned));

    // A body that is not SDP (a multipart one) is no offer: 415, nothing read.
    let mut mp = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let body = "--x\r\nContent-Type: application/sdp\r\n\r\nv=0\r\n--x--\r\n";
    let raw = mp.build_to("INVITE", &format!("sip:+34612000222@{}", p.realm), None, &[]).replace(
        "Content-Length: 0\r\n\r\n",
        &format!("Content-Type: multipart/mixed;boundary=x\r\nContent-Length: {}\r\n\r\n{body}", body.len()),
    );
    mp.send_raw(raw.as_bytes()).await;
    let r = mp.recv(std::time::Duration::from_secs(3)).await.expect("an answer");
    assert_eq!((r.status, r.header("accept")), (415, Some("application/sdp")), "{}", r.raw);

    // SDES over UDP: its keys would travel in the clear.
    let mut udp = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    udp.offer = Some(sdes("AES_CM_128_HMAC_SHA1_80"));
    let r = invite(&mut udp, "+34612000222", &p.password).await;
    assert_eq!(refused(&r), (488, Some("sdes_plaintext".into())), "{}", r.raw);
    // Over TLS: a weak suite is refused; a good one is admitted and answered
    // in its own profile (the sandbox's SRTP echo, see sip_srtp.rs), never
    // with plain RTP.
    let mut tls = Ua::tls(s.sip_tls(), &p.user, &p.realm).await;
    tls.offer = Some(sdes("AES_CM_128_HMAC_SHA1_32"));
    let r = invite(&mut tls, "+34612000222", &p.password).await;
    assert_eq!(refused(&r), (488, Some("srtp_suite".into())), "{}", r.raw);
    tls.offer = Some(sdes("AEAD_AES_256_GCM"));
    let ok = invite(&mut tls, "+34612000222", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.raw.contains(" RTP/SAVP 0\r\na=crypto:1 AEAD_AES_256_GCM inline:"), "{}", ok.raw);
    assert!(!ok.raw.contains("RTP/AVP"), "{}", ok.raw);

    // The identity requires SRTP: plain RTP, or no offer, is refused.
    let path = format!("/v1/identities/{}", p.identity);
    let patched = s
        .call(reqwest::Method::PATCH, &path, Some(&p.token), Some(json!({"policy": {"srtp": "required"}})))
        .await
        .expect(200);
    assert_eq!(patched.body["policy"]["srtp"], "required");
    s.call(reqwest::Method::PATCH, &path, Some(&p.token), Some(json!({"policy": {"srtp": "always"}})))
        .await
        .expect(400);
    tls.offer = Some(plain.clone());
    let r = invite(&mut tls, "+34612000224", &p.password).await;
    assert_eq!(refused(&r), (488, Some("srtp_required".into())), "{}", r.raw);
    tls.offer = None;
    let r = invite(&mut tls, "+34612000224", &p.password).await;
    assert_eq!(refused(&r), (488, Some("srtp_required".into())), "{}", r.raw);
    // SDP that cannot be checked, where SRTP is required: 400.
    tls.offer = Some("v=0\r\nnonsense\r\n".into());
    let r = invite(&mut tls, "+34612000223", &p.password).await;
    assert_eq!(refused(&r), (400, Some("sdp".into())), "{}", r.raw);
    // DTLS-SRTP needs no key in the SDP, but where SRTP is required its
    // fingerprint must not travel in the clear (it could be replaced).
    let dtls = sdp("m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\n");
    udp.offer = Some(dtls.clone());
    let r = invite(&mut udp, "+34612000225", &p.password).await;
    assert_eq!(refused(&r), (488, Some("dtls_plaintext".into())), "{}", r.raw);
    tls.offer = Some(dtls);
    let ok = invite(&mut tls, "+34612000225", &p.password).await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.raw.contains("m=audio 0 UDP/TLS/RTP/SAVPF"), "{}", ok.raw);
    // Only the two admitted calls exist, each with its media security,
    // which its CDR keeps.
    let list = calls(&s, &p.token).await;
    let media: Vec<_> = list.iter().map(|c| c["media"].as_str().unwrap().to_owned()).collect();
    assert_eq!(media.len(), 2, "{list:?}");
    assert!(media.contains(&"AEAD_AES_256_GCM".to_owned()) && media.contains(&"dtls".to_owned()), "{media:?}");
    let id = list.iter().find(|c| c["media"] == "dtls").unwrap()["id"].as_str().unwrap().to_owned();
    s.post(&format!("/v1/calls/{id}/hangup"), &p.token, json!({})).await.expect(200);
    let cdrs = s.get("/v1/cdrs", &p.token).await.expect(200);
    let cdr = cdrs.body["data"].as_array().unwrap().iter().find(|c| c["call_id"] == id.as_str()).cloned();
    assert_eq!(cdr.expect("the call's CDR")["media"], "dtls");
    s.stop().await;
}
