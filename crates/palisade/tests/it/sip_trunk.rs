//! Calls out through an operator's SIP trunk: the edge as a back-to-back
//! user agent towards a carrier played by a raw UDP socket on 127.0.0.3
//! (outside the plaintext networks: served because it is the trunk's).

use std::time::Duration;

use md5::{Digest, Md5};
use reqwest::Method;
use serde_json::{json, Value};

use crate::common::{Backend, TestServer};
use crate::sip_ua::Ua;

backend_tests!(an_api_call_goes_out_through_the_trunk_and_the_trunk_hangs_up);

const TRUNK_SECRET: &str = "trunk-secret-5f2a";
const TRUNK_USER: &str = "palisade-out";

async fn server(b: Backend) -> TestServer {
    server_with(b, |_| {}).await
}

/// SIP over UDP, trunks reread every 100 ms, webhooks to loopback; then `tweak`.
pub(crate) async fn server_with(b: Backend, tweak: impl FnOnce(&mut palisade_config::Config)) -> TestServer {
    TestServer::start_with(b, |c| {
        c.sip.udp_listen = Some("127.0.0.1:0".into());
        c.sip.trunk_reload_ms = 100;
        c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhooks.poll_ms = 25;
        tweak(c);
    })
    .await
}

/// The carrier: a UDP socket on 127.0.0.3, configured as the only trunk
/// (with credentials when `auth`); waits until the edge has read it.
pub(crate) async fn carrier(s: &TestServer, auth: bool) -> Ua {
    let trunk = Ua::udp_from("127.0.0.3:0", s.sip_udp(), "carrier", "carrier.test").await;
    let mut body = json!({
        "name": "carrier",
        "uri": format!("sip:{}", trunk.local),
        "transport": "udp",
        "source_cidrs": ["127.0.0.3/32"],
    });
    if auth {
        body["auth"] = json!({"username": TRUNK_USER, "password": TRUNK_SECRET});
    }
    s.admin(Method::POST, "/sysadmin/v1/trunks", Some(body)).await.expect(201);
    tokio::time::sleep(Duration::from_millis(400)).await;
    trunk
}

/// A tenant whose identity's number is verified (a trunk reaches real
/// phones, so only a number proved theirs may call), with credit.
pub(crate) async fn caller(s: &TestServer) -> crate::sip_edge::Phone {
    let p = crate::sip_edge::phone(s, "Acme").await;
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{}/verify", p.identity), None).await.expect(200);
    s.admin(Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", p.tenant), Some(json!({"amount": 100})))
        .await
        .expect(200);
    p
}

/// `POST /v1/calls` from `number` to `to`: the call's id.
pub(crate) async fn place(s: &TestServer, p: &crate::sip_edge::Phone, number: &str, to: &str) -> String {
    let r = s.post("/v1/calls", &p.token, json!({"from": number, "to": to})).await.expect(201);
    r.body["id"].as_str().unwrap().to_owned()
}

/// A caller (as [`caller`]) whose device is registered over UDP: the
/// callee of a trunk's call, its number, its device.
pub(crate) async fn registered_callee(s: &TestServer) -> (crate::sip_edge::Phone, String, Ua) {
    let p = caller(s).await;
    let number = number_of(s, &p).await;
    let mut device = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let (ok, _) = crate::sip_edge::register(&mut device, &p.password, "SHA-256").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    (p, number, device)
}

/// Disables the server's one trunk.
async fn disable_the_trunk(s: &TestServer) {
    let trunks = s.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200).body;
    let trunk_id = trunks["data"][0]["id"].as_str().unwrap().to_owned();
    s.admin(Method::PATCH, &format!("/sysadmin/v1/trunks/{trunk_id}"), Some(json!({"enabled": false})))
        .await
        .expect(200);
}

pub(crate) async fn number_of(s: &TestServer, p: &crate::sip_edge::Phone) -> String {
    let identity = s.get(&format!("/v1/identities/{}", p.identity), &p.token).await.expect(200).body;
    identity["number"].as_str().unwrap().to_owned()
}

pub(crate) fn header<'a>(raw: &'a str, name: &str) -> Option<&'a str> {
    raw.lines().find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// The next request of `method` the edge sends the carrier (others skipped).
pub(crate) async fn next(trunk: &mut Ua, method: &str) -> String {
    loop {
        let raw = trunk.recv_request(Duration::from_secs(5)).await.unwrap_or_else(|| panic!("no {method} came"));
        if raw.starts_with(&format!("{method} ")) {
            return raw;
        }
    }
}

/// The carrier's response to `req`: its Via, From, Call-ID and CSeq, its
/// To with our tag, then `extra` lines and `body`.
pub(crate) fn response(req: &str, status: &str, extra: &[String], body: &str) -> String {
    let mut m = format!("SIP/2.0 {status}\r\n");
    for l in req.lines().filter(|l| l.starts_with("Via:")) {
        m.push_str(&format!("{l}\r\n"));
    }
    let to = header(req, "to").unwrap();
    let to = if to.contains(";tag=") { to.to_owned() } else { format!("{to};tag=trk1") };
    m.push_str(&format!(
        "From: {}\r\nTo: {to}\r\nCall-ID: {}\r\nCSeq: {}\r\n",
        header(req, "from").unwrap(),
        header(req, "call-id").unwrap(),
        header(req, "cseq").unwrap()
    ));
    for l in extra {
        m.push_str(&format!("{l}\r\n"));
    }
    if !body.is_empty() {
        m.push_str("Content-Type: application/sdp\r\n");
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

pub(crate) const TRUNK_SDP: &str = "v=0\r\no=carrier 1 1 IN IP4 127.0.0.3\r\ns=carrier-answer\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";

/// Answers `invite` with 200 and the carrier's SDP; returns the 200.
pub(crate) async fn answer(trunk: &mut Ua, invite: &str) -> String {
    let contact = format!("Contact: <sip:carrier@{}>", trunk.local);
    let ok = response(invite, "200 OK", &[contact], TRUNK_SDP);
    trunk.send_raw(ok.as_bytes()).await;
    ok
}

/// The carrier hangs up the call it answered with `ok` (to `invite`).
async fn carrier_bye(trunk: &mut Ua, invite: &str, ok: &str) {
    let target = header(invite, "contact").unwrap().trim_matches(|c| c == '<' || c == '>');
    let bye = format!(
        "BYE {target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        trunk.local,
        uuid::Uuid::new_v4().simple(),
        header(ok, "to").unwrap(),
        header(ok, "from").unwrap(),
        header(ok, "call-id").unwrap(),
    );
    trunk.send_raw(bye.as_bytes()).await;
}

pub(crate) async fn status_becomes(s: &TestServer, token: &str, id: &str, want: &str) -> Value {
    let mut call = Value::Null;
    for _ in 0..60 {
        call = s.get(&format!("/v1/calls/{id}"), token).await.expect(200).body;
        if call["status"] == want {
            return call;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("call {id} did not become {want}: {call}");
}

fn md5_hex(s: &str) -> String {
    Md5::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

fn param(h: &str, name: &str) -> String {
    crate::sip_ua::param(h, name).unwrap_or_else(|| panic!("no {name} in {h}"))
}

async fn an_api_call_goes_out_through_the_trunk_and_the_trunk_hangs_up(b: Backend) {
    let s = server(b).await;
    let mut trunk = carrier(&s, true).await;
    let p = caller(&s).await;
    let rx = crate::webhooks::Receiver::start().await;
    s.post("/v1/webhooks", &p.token, json!({"url": rx.url, "events": ["call.ended", "cdr.written"]})).await.expect(201);
    let number = number_of(&s, &p).await;
    let placed = s.post("/v1/calls", &p.token, json!({"from": number, "to": "+34612000333"})).await.expect(201);
    let id = placed.body["id"].as_str().unwrap().to_owned();

    // The carrier asks for its credentials; the edge answers them.
    let first = next(&mut trunk, "INVITE").await;
    assert!(first.starts_with(&format!("INVITE sip:+34612000333@{} SIP/2.0", trunk.local)), "{first}");
    let challenge = "Proxy-Authenticate: Digest realm=\"carrier.test\", nonce=\"c4rr13r\", algorithm=MD5";
    trunk.send_raw(response(&first, "407 Proxy Authentication Required", &[challenge.into()], "").as_bytes()).await;
    let invite = next(&mut trunk, "INVITE").await;
    let auth = header(&invite, "proxy-authorization").expect("the INVITE answers the challenge");
    assert_eq!(param(auth, "username"), TRUNK_USER);
    let ha1 = md5_hex(&format!("{TRUNK_USER}:carrier.test:{TRUNK_SECRET}"));
    let ha2 = md5_hex(&format!("INVITE:{}", param(auth, "uri")));
    let expected = match crate::sip_ua::param(auth, "qop") {
        Some(qop) => md5_hex(&format!("{ha1}:c4rr13r:{}:{}:{qop}:{ha2}", param(auth, "nc"), param(auth, "cnonce"))),
        None => md5_hex(&format!("{ha1}:c4rr13r:{ha2}")),
    };
    assert_eq!(param(auth, "response"), expected, "{invite}");

    // Our dialog towards the carrier: the caller's number, nothing else of
    // the tenant's (no ids, no Call-ID of ours, no SIP username, no API
    // address), and an offer since the API brings none.
    assert!(header(&invite, "from").unwrap().contains(&number), "{invite}");
    assert_ne!(header(&invite, "call-id"), Some(id.as_str()));
    for leak in
        [id.as_str(), &p.tenant, &p.identity, &p.user, &p.realm, s.url.trim_start_matches("http://"), TRUNK_SECRET]
    {
        assert!(!invite.contains(leak), "{leak:?} reached the carrier:\n{invite}");
    }
    assert!(invite.contains("m=audio"), "{invite}");
    trunk.send_raw(response(&invite, "180 Ringing", &[], "").as_bytes()).await;
    status_becomes(&s, &p.token, &id, "ringing").await;
    let ok = answer(&mut trunk, &invite).await;
    next(&mut trunk, "ACK").await;
    status_becomes(&s, &p.token, &id, "in_progress").await;

    // The callee hangs up at the carrier: the call ends, billed, its CDR
    // written and its webhooks sent.
    carrier_bye(&mut trunk, &invite, &ok).await;
    let answered = trunk.recv(Duration::from_secs(3)).await.expect("an answer to the carrier's BYE");
    assert_eq!(answered.status, 200, "{}", answered.raw);
    let call = status_becomes(&s, &p.token, &id, "completed").await;
    assert_eq!(call["error_code"], Value::Null, "{call}");
    let cdrs = s.get("/v1/cdrs", &p.token).await.expect(200).body;
    assert_eq!(cdrs["data"].as_array().unwrap().len(), 1, "{cdrs}");
    let seen = rx.wait_for(2).await;
    let types: Vec<String> = seen
        .iter()
        .map(|w| serde_json::from_slice::<Value>(&w.body).unwrap()["type"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert!(types.contains(&"call.ended".to_owned()) && types.contains(&"cdr.written".to_owned()), "{types:?}");
    let balance = s.get("/v1/balance", &p.token).await.expect(200).body;
    assert!(balance["balance"].as_i64().unwrap() < 100, "the call was not billed: {balance}");
    s.stop().await;
}

/// A SIP phone's call goes out through the trunk: the carrier's answer
/// (its SDP) reaches the phone, the phone's BYE reaches the carrier; a
/// CANCEL while ringing reaches it too, and a busy carrier makes the call
/// busy. Nothing is charged for the calls that were not answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_phone_calls_through_the_trunk_and_each_end_reaches_the_other() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let p = caller(&s).await;
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;

    // Answered: the carrier's SDP comes through; the phone hangs up.
    let phone = tokio::spawn(async move {
        let ok = crate::sip_edge::invite(&mut ua, "+34612000444", &p.password).await;
        (ua, p, ok)
    });
    let invite = next(&mut trunk, "INVITE").await;
    assert!(header(&invite, "proxy-authorization").is_none(), "no credentials configured, none sent");
    answer(&mut trunk, &invite).await;
    let (mut ua, p, ok) = phone.await.unwrap();
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.raw.contains("s=carrier-answer"), "the carrier's SDP did not reach the phone:\n{}", ok.raw);
    next(&mut trunk, "ACK").await;
    let to_tag = ok.header("to").unwrap().split(";tag=").nth(1).unwrap().to_owned();
    ua.send_in_dialog("ACK", "+34612000444", &to_tag, ua.cseq).await;
    let list = crate::sip_edge::calls(&s, &p.token).await;
    let first = list[0]["id"].as_str().unwrap().to_owned();
    status_becomes(&s, &p.token, &first, "in_progress").await;
    ua.cseq += 1;
    ua.send_in_dialog("BYE", "+34612000444", &to_tag, ua.cseq).await;
    let bye = next(&mut trunk, "BYE").await;
    assert_eq!(header(&bye, "call-id"), header(&invite, "call-id"), "{bye}");
    trunk.send_raw(response(&bye, "200 OK", &[], "").as_bytes()).await;
    let bye_ok = ua.recv(Duration::from_secs(3)).await.expect("an answer to the phone's BYE");
    assert_eq!(bye_ok.status, 200, "{}", bye_ok.raw);
    status_becomes(&s, &p.token, &first, "completed").await;
    let after_first = s.get("/v1/balance", &p.token).await.expect(200).body["balance"].as_i64().unwrap();

    // Busy at the carrier: busy for the phone, nothing charged.
    let phone = tokio::spawn(async move {
        let busy = crate::sip_edge::invite(&mut ua, "+34612000555", &p.password).await;
        (ua, p, busy)
    });
    let invite = next(&mut trunk, "INVITE").await;
    trunk.send_raw(response(&invite, "486 Busy Here", &[], "").as_bytes()).await;
    let (mut ua, p, busy) = phone.await.unwrap();
    assert_eq!(busy.status, 486, "{}", busy.raw);

    // Canceled while the carrier rings: the CANCEL reaches the carrier.
    let challenge = ua.request_to("INVITE", "+34612000666", &[]).await.unwrap();
    let c = challenge.all("proxy-authenticate")[0].to_owned();
    let (nonce, realm) = (param(&c, "nonce"), param(&c, "realm"));
    let uri = format!("sip:+34612000666@{}", ua.realm);
    let auth = crate::sip_ua::answer("SHA-256", &ua.user, &realm, &p.password, "INVITE", &uri, &nonce, 1).replacen(
        "Authorization:",
        "Proxy-Authorization:",
        1,
    );
    let sent = ua.build_to("INVITE", &uri, None, &[auth, format!("Contact: <sip:{}@127.0.0.1:5999>", ua.user)]);
    ua.send_raw(sent.as_bytes()).await;
    let invite = next(&mut trunk, "INVITE").await;
    trunk.send_raw(response(&invite, "180 Ringing", &[], "").as_bytes()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cancel: String = sent
        .replacen("INVITE sip:", "CANCEL sip:", 1)
        .replace(&format!("CSeq: {} INVITE", ua.cseq), &format!("CSeq: {} CANCEL", ua.cseq))
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with("Proxy-Authorization") && !l.starts_with("Contact"))
        .map(|l| format!("{l}\r\n"))
        .chain(std::iter::once("\r\n".to_owned()))
        .collect();
    ua.send_raw(cancel.as_bytes()).await;
    let theirs = next(&mut trunk, "CANCEL").await;
    assert_eq!(header(&theirs, "call-id"), header(&invite, "call-id"), "{theirs}");
    trunk.send_raw(response(&theirs, "200 OK", &[], "").as_bytes()).await;
    trunk.send_raw(response(&invite, "487 Request Terminated", &[], "").as_bytes()).await;
    let mut got = Vec::new();
    while let Some(m) = ua.recv(Duration::from_secs(3)).await {
        got.push(m.status);
        if m.status == 487 {
            break;
        }
    }
    assert!(got.contains(&487), "the phone's INVITE was not ended: {got:?}");
    let list = crate::sip_edge::calls(&s, &p.token).await;
    let statuses: Vec<&str> = list.iter().map(|c| c["status"].as_str().unwrap()).collect();
    assert!(statuses.contains(&"busy") && statuses.contains(&"canceled"), "{statuses:?}");
    let balance = s.get("/v1/balance", &p.token).await.expect(200).body["balance"].as_i64().unwrap();
    assert_eq!(balance, after_first, "an unanswered call was charged");
    s.stop().await;
}

/// A call hung up over the API while it rings at the carrier is canceled
/// there; without an enabled trunk, calls stay with the sandbox.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_hang_up_cancels_the_trunk_leg_and_a_disabled_trunk_is_not_used() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let p = caller(&s).await;
    let number = number_of(&s, &p).await;
    let id = place(&s, &p, &number, "+34612000777").await;
    let invite = next(&mut trunk, "INVITE").await;
    trunk.send_raw(response(&invite, "180 Ringing", &[], "").as_bytes()).await;
    status_becomes(&s, &p.token, &id, "ringing").await;
    s.post(&format!("/v1/calls/{id}/hangup"), &p.token, json!({})).await.expect(200);
    let cancel = next(&mut trunk, "CANCEL").await;
    assert_eq!(header(&cancel, "call-id"), header(&invite, "call-id"));
    trunk.send_raw(response(&cancel, "200 OK", &[], "").as_bytes()).await;
    trunk.send_raw(response(&invite, "487 Request Terminated", &[], "").as_bytes()).await;

    // Disabled: the next call is the sandbox's; the carrier hears nothing.
    disable_the_trunk(&s).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    let id = place(&s, &p, &number, "+34612000888").await;
    status_becomes(&s, &p.token, &id, "in_progress").await;
    loop {
        match trunk.recv_request(Duration::from_millis(500)).await {
            Some(r) if r.starts_with("INVITE ") => panic!("a disabled trunk got a call:\n{r}"),
            Some(_) => {}
            None => break,
        }
    }
    s.stop().await;
}

/// A request from the carrier outside any dialog of ours, or within one
/// (`to_tag`): `lines` after the usual headers, then `body`.
pub(crate) fn carrier_request(
    trunk: &Ua,
    method: &str,
    uri: &str,
    call: &str,
    to: &str,
    lines: &[String],
    body: &str,
) -> String {
    let mut m = format!(
        "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/UDP {local};branch=z9hG4bK{b};rport\r\nMax-Forwards: 70\r\n\
         From: <sip:+34699000111@carrier.test>;tag=c1\r\nTo: {to}\r\nCall-ID: {call}\r\n",
        local = trunk.local,
        b = uuid::Uuid::new_v4().simple(),
    );
    for l in lines {
        m.push_str(&format!("{l}\r\n"));
    }
    if !body.is_empty() {
        m.push_str("Content-Type: application/sdp\r\n");
    }
    m.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    m
}

/// The newest call of the tenant once it has ended.
pub(crate) async fn wait_for_call_end(s: &TestServer, token: &str) -> serde_json::Value {
    for _ in 0..100 {
        let calls = s.get("/v1/calls", token).await.expect(200).body;
        let newest = calls["data"][0].clone();
        if newest["ended_at"].is_string() {
            return newest;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the call did not end");
}

/// A call the carrier brings in reaches the device the number's identity
/// registered, at the address it registered from; each end's answer and
/// hang-up cross over. Numbers nobody holds verified, holders with no
/// device, and callers that are not the trunk get nothing through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunks_call_reaches_the_registered_device_and_no_one_else_calls_in() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let (p, number, mut device) = registered_callee(&s).await;

    let uri = format!("sip:{number}@{}", s.sip_udp());
    let to = format!("<{uri}>");
    let contact = format!("Contact: <sip:carrier@{}>", trunk.local);
    let invite = carrier_request(
        &trunk,
        "INVITE",
        &uri,
        "in-1@carrier",
        &to,
        &["CSeq: 1 INVITE".into(), contact.clone()],
        TRUNK_SDP,
    );
    trunk.send_raw(invite.as_bytes()).await;
    let ringing = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
    // Our dialog with the device: at the contact it registered (sent to the
    // address it registered from), the caller's number, the carrier's offer,
    // none of the carrier's identifiers.
    assert!(ringing.starts_with(&format!("INVITE sip:{}@127.0.0.1:5999", p.user)), "{ringing}");
    assert!(header(&ringing, "from").unwrap().contains("+34699000111"), "{ringing}");
    assert!(ringing.contains("s=carrier-answer"), "{ringing}");
    assert!(!ringing.contains("in-1@carrier") && !ringing.contains(&trunk.local.to_string()), "{ringing}");
    let device_sdp = TRUNK_SDP.replace("carrier-answer", "device-answer");
    let answer = response(&ringing, "200 OK", &[format!("Contact: <sip:{}@{}>", p.user, device.local)], &device_sdp);
    device.send_raw(answer.as_bytes()).await;
    let ok = trunk.recv(Duration::from_secs(5)).await.expect("the carrier hears the answer");
    assert_eq!(ok.status, 200, "{}", ok.raw);
    assert!(ok.raw.contains("s=device-answer"), "{}", ok.raw);
    let ours = ok.header("contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_owned();
    let to_tagged = ok.header("to").unwrap().to_owned();
    let ack = carrier_request(&trunk, "ACK", &ours, "in-1@carrier", &to_tagged, &["CSeq: 1 ACK".into()], "");
    trunk.send_raw(ack.as_bytes()).await;
    let acked = device.recv_request(Duration::from_secs(5)).await.expect("the device's 200 is acknowledged");
    assert!(acked.starts_with("ACK "), "{acked}");

    // The device hangs up: the carrier gets our BYE.
    let bye_target = header(&ringing, "contact").unwrap().trim_matches(|c| c == '<' || c == '>').to_owned();
    let bye = format!(
        "BYE {bye_target} SIP/2.0\r\nVia: SIP/2.0/UDP {};branch=z9hG4bK{};rport\r\nMax-Forwards: 70\r\n\
         From: {}\r\nTo: {}\r\nCall-ID: {}\r\nCSeq: 1 BYE\r\nContent-Length: 0\r\n\r\n",
        device.local,
        uuid::Uuid::new_v4().simple(),
        header(&answer, "to").unwrap(),
        header(&answer, "from").unwrap(),
        header(&answer, "call-id").unwrap(),
    );
    device.send_raw(bye.as_bytes()).await;
    let theirs = next(&mut trunk, "BYE").await;
    assert_eq!(header(&theirs, "call-id"), Some("in-1@carrier"), "{theirs}");
    trunk.send_raw(response(&theirs, "200 OK", &[], "").as_bytes()).await;
    let bye_ok = device.recv(Duration::from_secs(3)).await.expect("an answer to the device's BYE");
    assert_eq!(bye_ok.status, 200, "{}", bye_ok.raw);
    let events = s.events(&p.token, "action=call.received").await;
    assert_eq!(events.len(), 1, "{events:?}");
    // On the callee's list of calls: inbound, answered, ended, free; its
    // caller ID unverified (the carrier sent no PASSporT), and so its CDR.
    let call = wait_for_call_end(&s, &p.token).await;
    assert_eq!(
        (call["direction"].as_str(), call["status"].as_str(), call["from"].as_str(), call["to"].as_str()),
        (Some("inbound"), Some("completed"), Some("+34699000111"), Some(number.as_str())),
        "{call}"
    );
    assert_eq!((call["verstat"].as_str(), call["prepaid"].as_i64()), (Some("no_signature"), Some(0)), "{call}");
    assert!(call["answered_at"].is_string(), "{call}");
    let cdrs = s.get("/v1/cdrs", &p.token).await.expect(200).body;
    let cdr = &cdrs["data"][0];
    assert_eq!((cdr["call_id"].as_str(), cdr["direction"].as_str()), (call["id"].as_str(), Some("inbound")), "{cdr}");
    assert_eq!((cdr["verstat"].as_str(), cdr["cost"].as_i64()), (Some("no_signature"), Some(0)), "{cdr}");

    // Nobody holds the number verified: 404; a holder with no device: 480.
    let other = crate::sip_edge::phone(&s, "Other").await;
    s.admin(Method::POST, &format!("/sysadmin/v1/identities/{}/verify", other.identity), None).await.expect(200);
    let other_number = number_of(&s, &other).await;
    // The carrier hears plain codes, nothing of a tenant's state.
    for (dialed, status) in [("+34699999999", 404), (other_number.as_str(), 480)] {
        let uri = format!("sip:{dialed}@{}", s.sip_udp());
        let call = format!("in-{dialed}@carrier");
        let m = carrier_request(
            &trunk,
            "INVITE",
            &uri,
            &call,
            &format!("<{uri}>"),
            &["CSeq: 1 INVITE".into(), contact.clone()],
            TRUNK_SDP,
        );
        trunk.send_raw(m.as_bytes()).await;
        let got = trunk.recv(Duration::from_secs(3)).await.expect("an answer");
        assert_eq!((got.status, got.warning()), (status, None), "{}", got.raw);
    }

    // The same INVITE from an address that is not the trunk's is a caller
    // like any other: refused (its realm is none of ours), and the device
    // hears nothing.
    let mut impostor = Ua::udp(s.sip_udp(), "carrier", "carrier.test").await;
    let uri = format!("sip:{number}@{}", s.sip_udp());
    let m = carrier_request(
        &impostor,
        "INVITE",
        &uri,
        "in-2@carrier",
        &format!("<{uri}>"),
        &["CSeq: 1 INVITE".into(), contact],
        TRUNK_SDP,
    );
    impostor.send_raw(m.as_bytes()).await;
    let got = impostor.recv(Duration::from_secs(3)).await.expect("an answer");
    assert_eq!((got.status, got.warning()), (404, Some("unknown_realm")), "{}", got.raw);
    assert!(device.recv_request(Duration::from_millis(500)).await.is_none(), "the impostor reached the device");
    s.stop().await;
}

/// A trunk reached over TLS: the edge dials it, checks its certificate
/// against `sip.trunk_ca_file`, and carries the call on that connection (here
/// the carrier is busy).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_trunk_is_dialed_with_its_certificate_checked() {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let s = server_with(Backend::Sqlite, |c| {
        c.sip.tls_listen = Some("127.0.0.1:0".into());
        c.sip.tls_cert_file = Some(crate::tls::fixture("server.pem"));
        c.sip.tls_key_file = Some(crate::tls::fixture("server.key"));
        c.sip.trunk_ca_file = Some(crate::tls::fixture("ca.pem"));
    })
    .await;
    let certs = vec![CertificateDer::from_pem_file(crate::tls::fixture("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(crate::tls::fixture("server.key")).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let trunk = json!({
        "name": "tls-carrier", "uri": format!("sips:localhost:{port}"), "transport": "tls",
        "source_cidrs": ["127.0.0.3/32"],
    });
    s.admin(Method::POST, "/sysadmin/v1/trunks", Some(trunk)).await.expect(201);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p = caller(&s).await;
    let number = number_of(&s, &p).await;
    let id = place(&s, &p, &number, "+34612000123").await;
    let (tcp, _) =
        tokio::time::timeout(Duration::from_secs(5), listener.accept()).await.expect("the edge dials").unwrap();
    let mut tls = acceptor.accept(tcp).await.expect("the edge trusts the carrier's certificate");
    let mut pending = Vec::new();
    let invite = loop {
        let m = crate::sip_ua::read_framed(&mut tls, &mut pending).await.expect("a request over TLS");
        if m.starts_with("INVITE ") {
            break m;
        }
    };
    assert!(invite.starts_with("INVITE sips:+34612000123@localhost:"), "{invite}");
    use tokio::io::AsyncWriteExt;
    tls.write_all(response(&invite, "486 Busy Here", &[], "").as_bytes()).await.unwrap();
    status_becomes(&s, &p.token, &id, "busy").await;
    s.stop().await;
}

/// A trunk's call answered by a device that names other hosts (its
/// Contact, a Record-Route) in its 200: the edge keeps talking to the
/// address the device's messages come from, over UDP and TCP alike.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_cannot_point_the_edge_at_another_host() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let (_, number, mut device) = registered_callee(&s).await;
    let udp_victim = tokio::net::UdpSocket::bind("127.0.0.9:0").await.unwrap();
    let tcp_victim = tokio::net::TcpListener::bind("127.0.0.9:0").await.unwrap();
    let (u, t) = (udp_victim.local_addr().unwrap(), tcp_victim.local_addr().unwrap());
    let uri = format!("sip:{number}@{}", s.sip_udp());
    let contact = format!("Contact: <sip:carrier@{}>", trunk.local);
    for (n, steer) in [
        (1, vec![format!("Contact: <sip:x@{u}>"), format!("Record-Route: <sip:{u};lr>")]),
        (2, vec![format!("Contact: <sip:x@{t};transport=tcp>"), format!("Record-Route: <sip:{t};transport=tcp;lr>")]),
    ] {
        let call = format!("steer-{n}@carrier");
        let lines = ["CSeq: 1 INVITE".to_owned(), contact.clone()];
        let invite = carrier_request(&trunk, "INVITE", &uri, &call, &format!("<{uri}>"), &lines, TRUNK_SDP);
        trunk.send_raw(invite.as_bytes()).await;
        let ringing = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
        let answer = response(&ringing, "200 OK", &steer, TRUNK_SDP);
        device.send_raw(answer.as_bytes()).await;
        // The ACK comes to the device itself.
        let ack = device.recv_request(Duration::from_secs(5)).await.expect("the device gets the ACK");
        assert!(ack.starts_with("ACK "), "{ack}");
        assert_eq!(trunk.recv(Duration::from_secs(3)).await.map(|m| m.status), Some(200));
    }
    let mut buf = [0u8; 2048];
    let udp = tokio::time::timeout(Duration::from_millis(800), udp_victim.recv_from(&mut buf)).await;
    assert!(udp.is_err(), "the edge sent to a host the device named: {}", String::from_utf8_lossy(&buf));
    let tcp = tokio::time::timeout(Duration::from_millis(200), tcp_victim.accept()).await;
    assert!(tcp.is_err(), "the edge connected to a host the device named");
    s.stop().await;
}

/// A trunk is believed over its own transport only: the same address over
/// TCP, for a UDP trunk, is not served in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_is_believed_over_its_own_transport_only() {
    let s = server_with(Backend::Sqlite, |c| c.sip.tcp_listen = Some("127.0.0.1:0".into())).await;
    let _trunk = carrier(&s, false).await;
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.3:0".parse().unwrap()).unwrap();
    let mut tcp = socket.connect(s.sip_tcp()).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let options = format!(
        "OPTIONS sip:{} SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.3:5060;branch=z9hG4bKx1\r\nFrom: <sip:c@carrier.test>;tag=1\r\n\
         To: <sip:{}>\r\nCall-ID: t1\r\nCSeq: 1 OPTIONS\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n",
        s.sip_tcp(),
        s.sip_tcp()
    );
    let _ = tcp.write_all(options.as_bytes()).await;
    let mut buf = [0u8; 512];
    let n =
        tokio::time::timeout(Duration::from_secs(2), tcp.read(&mut buf)).await.ok().and_then(Result::ok).unwrap_or(0);
    assert_eq!(n, 0, "served over TCP: {}", String::from_utf8_lossy(&buf[..n]));
    s.stop().await;
}

/// A trunk disabled while a call goes through it: the call ends (the
/// carrier gets our BYE) rather than stay up unheard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_ends_when_its_trunk_is_disabled() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let p = caller(&s).await;
    let number = number_of(&s, &p).await;
    let id = place(&s, &p, &number, "+34612000321").await;
    let invite = next(&mut trunk, "INVITE").await;
    answer(&mut trunk, &invite).await;
    next(&mut trunk, "ACK").await;
    status_becomes(&s, &p.token, &id, "in_progress").await;
    disable_the_trunk(&s).await;
    let bye = next(&mut trunk, "BYE").await;
    assert_eq!(header(&bye, "call-id"), header(&invite, "call-id"));
    status_becomes(&s, &p.token, &id, "completed").await;
    s.stop().await;
}

/// A carrier answering an SRTP offer with plain RTP does not get the call:
/// its leg comes down, the phone's INVITE fails, the call ends failed with
/// `srtp_downgrade` and nothing is charged. SDES keys are never sent to a
/// trunk over a plaintext transport.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_carrier_answering_weaker_media_does_not_get_the_call() {
    let s = server_with(Backend::Sqlite, |c| {
        c.sip.tls_listen = Some("127.0.0.1:0".into());
        c.sip.tls_cert_file = Some(crate::tls::fixture("server.pem"));
        c.sip.tls_key_file = Some(crate::tls::fixture("server.key"));
    })
    .await;
    let mut trunk = carrier(&s, false).await;
    let p = caller(&s).await;
    let before = s.get("/v1/balance", &p.token).await.expect(200).body["balance"].as_i64().unwrap();
    let dtls = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\n";
    let mut ua = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    ua.offer = Some(dtls.to_owned());
    let phone = tokio::spawn(async move {
        let r = crate::sip_edge::invite(&mut ua, "+34612000444", &p.password).await;
        (ua, p, r)
    });
    let invite = next(&mut trunk, "INVITE").await;
    assert!(invite.contains("UDP/TLS/RTP/SAVPF"), "the offer goes to the carrier as it is:\n{invite}");
    // The carrier answers in the clear.
    answer(&mut trunk, &invite).await;
    let bye = next(&mut trunk, "BYE").await;
    trunk.send_raw(response(&bye, "200 OK", &[], "").as_bytes()).await;
    let (_, p, r) = phone.await.unwrap();
    // It fails as a media refusal, with the reason (RFC 3326), not as an
    // unreachable callee.
    assert_eq!(r.status, 488, "the phone's INVITE must fail:\n{}", r.raw);
    assert!(r.header("reason").is_some_and(|v| v.contains("srtp_downgrade")), "{}", r.raw);
    assert!(!r.raw.contains("RTP/AVP"), "the carrier's plain answer must not reach the phone:\n{}", r.raw);
    let list = crate::sip_edge::calls(&s, &p.token).await;
    let id = list[0]["id"].as_str().unwrap().to_owned();
    let call = status_becomes(&s, &p.token, &id, "failed").await;
    assert_eq!(call["error_code"], "srtp_downgrade", "{call}");
    let after = s.get("/v1/balance", &p.token).await.expect(200).body["balance"].as_i64().unwrap();
    assert_eq!(after, before, "a call never connected costs nothing");

    // SDES from a TLS phone towards this UDP trunk: the keys never leave.
    let mut tls = Ua::tls(s.sip_tls(), &p.user, &p.realm).await;
    let key = "inline:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH";
    tls.offer = Some(format!(
        "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n\
         m=audio 40000 RTP/SAVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 {key}\r\n"
    ));
    let r = crate::sip_edge::invite(&mut tls, "+34612000445", &p.password).await;
    // Refused at the INVITE, with its reason, before anything is charged.
    assert_eq!((r.status, r.warning()), (488, Some("sdes_plaintext")), "{}", r.raw);
    assert!(trunk.recv_request(Duration::from_millis(500)).await.is_none_or(|m| !m.contains("a=crypto")));
    let list = crate::sip_edge::calls(&s, &p.token).await;
    assert!(list.iter().all(|c| c["to"] != "+34612000445"), "{list:?}");
    s.stop().await;
}

/// A trunk's own media policy: `required` refuses a plain offer towards it
/// (an API call offers plain RTP: the call fails with `srtp_required`) and
/// from it (488 to the carrier), and an invalid policy is a 400.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trunk_requiring_srtp_carries_no_plain_call() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let list = s.admin(Method::GET, "/sysadmin/v1/trunks", None).await.expect(200);
    let id = list.body["data"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(list.body["data"][0]["srtp"], "preferred");
    let path = format!("/sysadmin/v1/trunks/{id}");
    s.admin(Method::PATCH, &path, Some(json!({"srtp": "sometimes"}))).await.expect(400);
    let r = s.admin(Method::PATCH, &path, Some(json!({"srtp": "required"}))).await.expect(200);
    assert_eq!(r.body["srtp"], "required");
    // The edge rereads its trunks every 100 ms.
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p = caller(&s).await;
    let number = number_of(&s, &p).await;
    let call = place(&s, &p, &number, "+34612000123").await;
    let call = status_becomes(&s, &p.token, &call, "failed").await;
    assert_eq!(call["error_code"], "srtp_required", "{call}");
    assert!(trunk.recv_request(Duration::from_millis(300)).await.is_none(), "nothing reaches the carrier");
    // A phone's plain offer towards it: 488 at the INVITE, nothing charged.
    let mut phone = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let r = crate::sip_edge::invite(&mut phone, "+34612000124", &p.password).await;
    assert_eq!((r.status, r.warning()), (488, Some("srtp_required")), "{}", r.raw);

    // From the carrier, a plain offer: 488, and no device is rung.
    let mut device = Ua::udp(s.sip_udp(), &p.user, &p.realm).await;
    let (ok, _) = crate::sip_edge::register(&mut device, &p.password, "SHA-256").await;
    assert_eq!(ok.status, 200, "{}", ok.raw);
    let uri = format!("sip:{number}@{}", s.sip_udp());
    let contact = format!("Contact: <sip:carrier@{}>", trunk.local);
    let lines = ["CSeq: 1 INVITE".to_owned(), contact];
    let invite = carrier_request(&trunk, "INVITE", &uri, "in-srtp@carrier", &format!("<{uri}>"), &lines, TRUNK_SDP);
    trunk.send_raw(invite.as_bytes()).await;
    assert_eq!(final_answer(&mut trunk).await, Some(488));
    assert!(device.recv_request(Duration::from_millis(300)).await.is_none(), "the device is not rung");
    s.stop().await;
}

/// A device answering a carrier's SRTP offer with plain RTP: the carrier
/// gets 488, never the plain answer, and the device is hung up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_answering_weaker_media_is_not_connected_to_the_carrier() {
    let s = server(Backend::Sqlite).await;
    let mut trunk = carrier(&s, false).await;
    let (p, number, mut device) = registered_callee(&s).await;
    let dtls = "v=0\r\no=carrier 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n\
                m=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=fingerprint:sha-256 AB:CD:EF\r\na=setup:actpass\r\n";
    let uri = format!("sip:{number}@{}", s.sip_udp());
    let contact = format!("Contact: <sip:carrier@{}>", trunk.local);
    let lines = ["CSeq: 1 INVITE".to_owned(), contact];
    let invite = carrier_request(&trunk, "INVITE", &uri, "in-dtls@carrier", &format!("<{uri}>"), &lines, dtls);
    trunk.send_raw(invite.as_bytes()).await;
    let ringing = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
    assert!(ringing.contains("UDP/TLS/RTP/SAVPF"), "{ringing}");
    let answer = response(&ringing, "200 OK", &[format!("Contact: <sip:{}@{}>", p.user, device.local)], TRUNK_SDP);
    device.send_raw(answer.as_bytes()).await;
    // A 488 carries no SDP: the device's plain answer never reaches the carrier.
    assert_eq!(final_answer(&mut trunk).await, Some(488));
    // The device's leg comes down.
    let mut bye = false;
    for _ in 0..5 {
        match device.recv_request(Duration::from_secs(2)).await {
            Some(r) if r.starts_with("BYE ") => {
                bye = true;
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
    assert!(bye, "the device was not hung up");

    // A carrier's offer with keys over UDP: refused, the device not rung.
    let keyed = "v=0\r\no=carrier 1 1 IN IP4 127.0.0.3\r\ns=-\r\nc=IN IP4 127.0.0.3\r\nt=0 0\r\n\
                 m=audio 4000 RTP/AVP 0\r\na=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:BwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcHBwcH\r\n";
    let invite = carrier_request(&trunk, "INVITE", &uri, "in-keys@carrier", &format!("<{uri}>"), &lines, keyed);
    trunk.send_raw(invite.as_bytes()).await;
    assert_eq!(final_answer(&mut trunk).await, Some(488));
    assert!(device.recv_request(Duration::from_millis(300)).await.is_none_or(|r| !r.starts_with("INVITE ")));
    // No offer from the carrier, and the device's offer in its answer holds
    // keys: they would go back over UDP, so the carrier gets 488.
    let invite = carrier_request(&trunk, "INVITE", &uri, "in-late@carrier", &format!("<{uri}>"), &lines, "");
    trunk.send_raw(invite.as_bytes()).await;
    let ringing = loop {
        let r = device.recv_request(Duration::from_secs(5)).await.expect("the device is called");
        if r.starts_with("INVITE ") {
            break r;
        }
    };
    let contact = format!("Contact: <sip:{}@{}>", p.user, device.local);
    device.send_raw(response(&ringing, "200 OK", &[contact], keyed).as_bytes()).await;
    assert_eq!(final_answer(&mut trunk).await, Some(488));
    s.stop().await;
}

/// The carrier's final answer (1xx skipped); none carries SDP back to it.
async fn final_answer(trunk: &mut Ua) -> Option<u16> {
    for _ in 0..5 {
        match trunk.recv(Duration::from_secs(2)).await {
            Some(m) if m.status >= 200 => {
                assert!(!m.raw.contains("m=audio"), "media reached the carrier:\n{}", m.raw);
                return Some(m.status);
            }
            Some(_) => continue,
            None => return None,
        }
    }
    None
}
