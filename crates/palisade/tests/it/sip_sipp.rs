//! The SIP edge against a SIP peer we did not write: sipp (Debian's
//! sip-tester 3.6.1) running the scenarios in `sipp/`. That sipp does MD5
//! only and takes the first `algorithm=` of all the challenges, so these
//! servers offer MD5 alone (docs/plans/sip-edge.md §5). Built as ignored
//! when no `sipp` is on PATH (build.rs).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::{Backend, TestServer};
use crate::sip_edge::{phone, Phone};

async fn server() -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.sip.udp_listen = Some("127.0.0.1:0".into());
        c.sip.tcp_listen = Some("127.0.0.1:0".into());
        c.sip.digest_algorithms = vec!["MD5".into()];
    })
    .await
}

/// How one sipp run ended: its exit code (0: every call succeeded, 1: some
/// failed) and what it logged, for the assertion messages.
struct Run {
    code: Option<i32>,
    log: String,
}

impl Run {
    fn assert_code(&self, code: i32) {
        assert_eq!(self.code, Some(code), "sipp exit code\n{}", self.log);
    }
}

/// Runs `scenario` once (one call) from `source` over `transport` (`u1`
/// or `t1`) as `p`'s user, answering challenges with `password`.
async fn sipp(
    server: std::net::SocketAddr,
    scenario: &str,
    transport: &str,
    source: &str,
    p: &Phone,
    password: &str,
) -> Run {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.csv");
    std::fs::write(&users, format!("SEQUENTIAL\n{};{}\n", p.user, p.realm)).unwrap();
    let errors = dir.path().join("errors.log");
    let messages = dir.path().join("messages.log");
    let scenario_file = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/sipp").join(format!("{scenario}.xml"));
    let mut child = Command::new("sipp")
        .arg(server.to_string())
        .arg("-sf")
        .arg(&scenario_file)
        .arg("-inf")
        .arg(&users)
        .args(["-au", &p.user, "-ap", password])
        .args(["-m", "1", "-t", transport, "-i", source, "-bind_local", "-nostdin"])
        // A global bound: a run that hangs fails as a timeout, not as a pass.
        .args(["-timeout", "20s", "-timeout_error", "-trace_err", "-error_file"])
        .arg(&errors)
        .args(["-trace_msg", "-message_file"])
        .arg(&messages)
        .current_dir(dir.path())
        .stdin(Stdio::null())
        // Files, not pipes: nobody reads a pipe while we wait, and a full
        // one would stall sipp.
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("sipp runs (build.rs found it on PATH)");
    // tokio's process feature is not in the workspace: poll instead.
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if started.elapsed() > Duration::from_secs(40) {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    let log = format!(
        "scenario {scenario} from {source} over {transport}: {status:?}\n--- stdout (tail)\n{}\n--- stderr\n{}\n--- errors\n{}\n--- messages (tail)\n{}",
        tail(&read("stdout"), 30),
        read("stderr"),
        read("errors.log"),
        tail(&read("messages.log"), 80),
    );
    Run { code: status.and_then(|s| s.code()), log }
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(sipp_tests), ignore = "sipp is not installed")]
async fn sipp_registers_over_udp_and_tcp_with_md5() {
    let s = server().await;
    let p = phone(&s, "Acme").await;
    let path = format!("/v1/identities/{}/registrations", p.identity);
    sipp(s.sip_udp(), "register", "u1", "127.0.0.1", &p, &p.password).await.assert_code(0);
    let regs = s.get(&path, &p.token).await.expect(200);
    let data = regs.body["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 1, "{}", regs.text);
    assert_eq!(data[0]["transport"], "udp");
    let udp_contact = data[0]["contact"].as_str().unwrap().to_owned();
    assert!(udp_contact.starts_with(&format!("sip:{}@127.0.0.1:", p.user)), "{}", regs.text);

    sipp(s.sip_tcp(), "register", "t1", "127.0.0.1", &p, &p.password).await.assert_code(0);
    let regs = s.get(&path, &p.token).await.expect(200);
    let data = regs.body["data"].as_array().unwrap();
    assert!(data.iter().any(|r| r["transport"] == "tcp" && r["contact"] != udp_contact.as_str()), "{}", regs.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(sipp_tests), ignore = "sipp is not installed")]
async fn sipp_five_wrong_passwords_block_the_address() {
    let s = server().await;
    let p = phone(&s, "Acme").await;
    // Four 401s, then 403 with Warning "blocked" (the scenario checks it).
    sipp(s.sip_udp(), "register_wrong", "u1", "127.0.0.1", &p, "not the password").await.assert_code(0);
    // The right password now fails too: 403 before any challenge.
    sipp(s.sip_udp(), "register", "u1", "127.0.0.1", &p, &p.password).await.assert_code(1);
    sipp(s.sip_udp(), "register_blocked", "u1", "127.0.0.1", &p, &p.password).await.assert_code(0);
    let regs = s.get(&format!("/v1/identities/{}/registrations", p.identity), &p.token).await.expect(200);
    assert_eq!(regs.body["data"].as_array().map(Vec::len), Some(0), "{}", regs.text);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(sipp_tests), ignore = "sipp is not installed")]
async fn sipp_from_outside_the_plaintext_networks_gets_no_answer() {
    // The default plaintext networks are 127.0.0.1/32 and ::1/128.
    let s = server().await;
    let p = phone(&s, "Acme").await;
    sipp(s.sip_udp(), "options", "u1", "127.0.0.1", &p, &p.password).await.assert_code(0);
    let outside = sipp(s.sip_udp(), "options", "u1", "127.0.0.2", &p, &p.password).await;
    outside.assert_code(1);
    assert!(outside.log.contains("receive timeout"), "{}", outside.log);
    s.stop().await;
}

/// A call through a trunk answered by a sipp UAS (its built-in `uas`
/// scenario on 127.0.0.3): placed over the API, answered, hung up over the
/// API (our BYE ends sipp's call), with its CDR and webhooks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(sipp_tests), ignore = "sipp is not installed")]
async fn sipp_answers_a_call_through_the_trunk() {
    let s = TestServer::start_with(crate::common::Backend::Sqlite, |c| {
        c.sip.udp_listen = Some("127.0.0.1:0".into());
        c.sip.trunk_reload_ms = 100;
        c.webhooks.allowed_private_cidrs = vec!["127.0.0.0/8".parse().unwrap()];
        c.webhooks.poll_ms = 25;
    })
    .await;
    let port = std::net::UdpSocket::bind("127.0.0.3:0").unwrap().local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let mut uas = Command::new("sipp")
        .args(["-sn", "uas", "-i", "127.0.0.3", "-p", &port.to_string(), "-m", "1", "-t", "u1", "-nostdin"])
        .args(["-timeout", "30s", "-timeout_error", "-trace_err", "-error_file"])
        .arg(dir.path().join("errors.log"))
        .current_dir(dir.path())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(dir.path().join("stderr")).unwrap())
        .spawn()
        .expect("sipp runs");
    let trunk = serde_json::json!({
        "name": "sipp", "uri": format!("sip:127.0.0.3:{port}"), "transport": "udp", "source_cidrs": ["127.0.0.3/32"],
    });
    s.admin(reqwest::Method::POST, "/sysadmin/v1/trunks", Some(trunk)).await.expect(201);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let p = phone(&s, "Acme").await;
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/identities/{}/verify", p.identity), None).await.expect(200);
    let credits = serde_json::json!({"amount": 100});
    s.admin(reqwest::Method::POST, &format!("/sysadmin/v1/tenants/{}/credits", p.tenant), Some(credits))
        .await
        .expect(200);
    let rx = crate::webhooks::Receiver::start().await;
    let hooks = serde_json::json!({"url": rx.url, "events": ["call.ended", "cdr.written"]});
    s.post("/v1/webhooks", &p.token, hooks).await.expect(201);
    let number = s.get(&format!("/v1/identities/{}", p.identity), &p.token).await.expect(200).body["number"]
        .as_str()
        .unwrap()
        .to_owned();
    let placed = serde_json::json!({"from": number, "to": "+34612000999"});
    let id = s.post("/v1/calls", &p.token, placed).await.expect(201).body["id"].as_str().unwrap().to_owned();
    let mut status = String::new();
    for _ in 0..100 {
        status = s.get(&format!("/v1/calls/{id}"), &p.token).await.expect(200).body["status"].as_str().unwrap().into();
        if status == "in_progress" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert_eq!(status, "in_progress", "sipp did not answer:\n{}\n{}", tail(&read("stdout"), 30), read("errors.log"));
    s.post(&format!("/v1/calls/{id}/hangup"), &p.token, serde_json::json!({})).await.expect(200);
    let started = Instant::now();
    let code = loop {
        if let Some(st) = uas.try_wait().unwrap() {
            break st.code();
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = uas.kill();
            let _ = uas.wait();
            break None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        code,
        Some(0),
        "sipp's call did not end cleanly:\n{}\n{}",
        tail(&read("stdout"), 30),
        read("errors.log")
    );
    let cdrs = s.get("/v1/cdrs", &p.token).await.expect(200).body;
    assert_eq!(cdrs["data"].as_array().unwrap().len(), 1, "{cdrs}");
    rx.wait_for(2).await;
    s.stop().await;
}
