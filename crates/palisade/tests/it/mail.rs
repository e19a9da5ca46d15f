//! Mail through a real SMTP conversation with a relay this test runs on
//! loopback: the request that asks for a mail never waits on the relay or
//! fails because of it; a relay that is down gets the mail later from the
//! durable outbox (sealed at rest); a relay that cannot do STARTTLS gets
//! nothing in the clear; a mail that never goes through is given up and
//! counted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::common::{Backend, TestServer};

const PASSWORD: &str = "quiet lantern orchard river";

/// What the relay heard: the SMTP commands and the mails (their DATA).
#[derive(Default)]
struct Heard {
    commands: Vec<String>,
    mails: Vec<String>,
}

/// A minimal SMTP relay on `listener` (EHLO without STARTTLS, MAIL, RCPT,
/// DATA, QUIT), keeping what it hears.
fn relay(listener: tokio::net::TcpListener) -> Arc<Mutex<Heard>> {
    let heard = Arc::new(Mutex::new(Heard::default()));
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let h = h.clone();
            tokio::spawn(async move {
                let (rd, mut wr) = conn.into_split();
                let mut lines = BufReader::new(rd).lines();
                let _ = wr.write_all(b"220 relay.test ESMTP\r\n").await;
                while let Ok(Some(line)) = lines.next_line().await {
                    let verb = line.split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
                    h.lock().unwrap().commands.push(verb.clone());
                    let reply: &[u8] = match verb.as_str() {
                        "EHLO" => b"250-relay.test\r\n250 8BITMIME\r\n",
                        "DATA" => {
                            let _ = wr.write_all(b"354 go on\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            h.lock().unwrap().mails.push(data);
                            b"250 queued\r\n"
                        }
                        "QUIT" => {
                            let _ = wr.write_all(b"221 bye\r\n").await;
                            return;
                        }
                        "STARTTLS" => b"502 not here\r\n",
                        _ => b"250 ok\r\n",
                    };
                    if wr.write_all(reply).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    heard
}

async fn metric(s: &TestServer, kind: &str) -> u64 {
    let addr = s.metrics_addr().unwrap();
    let text = reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap();
    let needle = format!("palisade_mail_total{{kind=\"{kind}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&needle)).map_or(0, |v| v.trim().parse().unwrap())
}

/// The metric once it is above zero (waited for), or 0.
async fn counted(s: &TestServer, kind: &str) -> u64 {
    for _ in 0..100 {
        let n = metric(s, kind).await;
        if n > 0 {
            return n;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    0
}

async fn outbox(s: &TestServer) -> Vec<(String, i64)> {
    sqlx::any::install_default_drivers();
    let pool = sqlx::AnyPool::connect(&s.db_url).await.unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT body_sealed, attempts FROM mail_outbox").fetch_all(&pool).await.unwrap();
    pool.close().await;
    rows
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..100 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen");
}

async fn server(url: String, plaintext: bool, schedule: Vec<u64>) -> TestServer {
    TestServer::start_with(Backend::Sqlite, move |c| {
        c.mail.smtp_url = Some(palisade_config::Secret::new(url));
        c.mail.smtp_allow_plaintext = plaintext;
        c.mail.retry_schedule_secs = schedule;
        c.mail.poll_ms = 50;
        c.mail.send_timeout_secs = 5;
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await
}

async fn signup(s: &TestServer, email: &str) {
    let body = json!({"email": email, "password": PASSWORD, "tenant_name": "Mailed"});
    let r = s.call(Method::POST, "/v1/auth/signup", None, Some(body)).await.expect(201);
    assert_eq!(r.body["status"], "pending_verification");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_that_is_down_gets_the_mail_later_from_the_sealed_outbox() {
    // A port nobody listens on yet: the relay is down.
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    drop(held);
    let s = server(format!("smtp://127.0.0.1:{port}"), true, vec![5, 5]).await;
    let email = "ada@mailed.example.com";
    // The request does not fail, nor wait, because the relay is down.
    signup(&s, email).await;
    assert_eq!(counted(&s, "failed").await, 1, "one attempt, then it waits for its retry");
    // Kept, sealed: the link and its token are not in the database.
    let rows = outbox(&s).await;
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0].1, 1, "one attempt recorded");
    assert!(!rows[0].0.contains("et_") && !rows[0].0.contains("verify"), "the body is sealed");

    // The relay comes up; at the retry's time the mail goes through.
    let heard = relay(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(heard.lock().unwrap().mails.is_empty(), "not before its time");
    s.clock.advance_ms(5_000);
    until("the mail reaches the relay", || !heard.lock().unwrap().mails.is_empty()).await;
    let mail = heard.lock().unwrap().mails[0].clone();
    assert!(mail.contains(&format!("To: {email}")), "{mail}");
    assert_eq!(metric(&s, "sent").await, 1);
    assert!(outbox(&s).await.is_empty(), "sent mail leaves the outbox");
    // What came through works: its token verifies the address.
    let start = mail.find("et_").expect("a token in the mail");
    let token = &mail[start..start + 46];
    s.call(Method::POST, "/v1/auth/verify-email", None, Some(json!({"token": token}))).await.expect(200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_starttls_nothing_is_sent_in_the_clear_and_the_mail_is_given_up() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let heard = relay(listener);
    let s = server(format!("smtp://127.0.0.1:{port}?tls=required"), false, vec![1]).await;
    signup(&s, "bob@mailed.example.com").await;
    assert_eq!(counted(&s, "failed").await, 1);
    // The relay offered no STARTTLS: the mail did not go in the clear.
    let commands = heard.lock().unwrap().commands.clone();
    assert!(commands.contains(&"EHLO".to_owned()), "{commands:?}");
    assert!(!commands.contains(&"MAIL".to_owned()) && heard.lock().unwrap().mails.is_empty(), "{commands:?}");
    // After its last attempt it is given up: counted, and gone.
    s.clock.advance_ms(1_000);
    assert_eq!(counted(&s, "dropped").await, 1);
    assert!(outbox(&s).await.is_empty());
    assert!(!heard.lock().unwrap().commands.contains(&"MAIL".to_owned()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sign_in_code_is_never_mailed_after_it_expired() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let s = server(format!("smtp://127.0.0.1:{port}"), true, vec![60, 600]).await;
    let t = s.tenant("Coded").await;
    s.call(Method::POST, "/v1/auth/email-code", None, Some(json!({"email": t.email}))).await.expect(202);
    assert_eq!(counted(&s, "failed").await, 1, "the relay is down");
    // The relay comes up only after the code has expired: the mail is
    // dropped as worthless, not sent late.
    let heard = relay(tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap());
    s.clock.advance_ms(11 * 60 * 1000);
    assert_eq!(counted(&s, "expired").await, 1);
    assert!(outbox(&s).await.is_empty());
    assert!(heard.lock().unwrap().mails.is_empty(), "an expired code was mailed");
    assert_eq!(metric(&s, "sent").await, 0);
    s.stop().await;
}

/// One SMTP conversation on `stream`; when `starttls` is offered and asked
/// for, answers 220 and hands the stream back for the TLS handshake.
async fn converse<S>(stream: S, h: &Mutex<Heard>, starttls: bool) -> Option<S>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut s = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        if s.read_line(&mut line).await.ok()? == 0 {
            return None;
        }
        let verb = line.trim_end().split([' ', ':']).next().unwrap_or_default().to_ascii_uppercase();
        h.lock().unwrap().commands.push(verb.clone());
        let reply: &[u8] = match verb.as_str() {
            "EHLO" if starttls => b"250-relay.test\r\n250 STARTTLS\r\n",
            "EHLO" => b"250-relay.test\r\n250 8BITMIME\r\n",
            "STARTTLS" if starttls => {
                s.get_mut().write_all(b"220 go ahead\r\n").await.ok()?;
                return Some(s.into_inner());
            }
            "DATA" => {
                s.get_mut().write_all(b"354 go on\r\n").await.ok()?;
                let mut data = String::new();
                loop {
                    line.clear();
                    if s.read_line(&mut line).await.ok()? == 0 || line.trim_end() == "." {
                        break;
                    }
                    data.push_str(&line);
                }
                h.lock().unwrap().mails.push(data);
                b"250 queued\r\n"
            }
            "QUIT" => {
                let _ = s.get_mut().write_all(b"221 bye\r\n").await;
                return None;
            }
            _ => b"250 ok\r\n",
        };
        s.get_mut().write_all(reply).await.ok()?;
    }
}

/// A relay that offers STARTTLS and then speaks only over TLS, with the
/// test CA's certificate for `localhost`.
fn tls_relay(listener: tokio::net::TcpListener) -> Arc<Mutex<Heard>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let certs = vec![CertificateDer::from_pem_file(crate::tls::fixture("server.pem")).unwrap()];
    let key = PrivateKeyDer::from_pem_file(crate::tls::fixture("server.key")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let heard = Arc::new(Mutex::new(Heard::default()));
    let h = heard.clone();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let (h, acceptor) = (h.clone(), acceptor.clone());
            tokio::spawn(async move {
                if conn.write_all(b"220 relay.test ESMTP\r\n").await.is_err() {
                    return;
                }
                let Some(plain) = converse(conn, &h, true).await else { return };
                match acceptor.accept(plain).await {
                    Ok(tls) => {
                        h.lock().unwrap().commands.push("TLS".into());
                        converse(tls, &h, false).await;
                    }
                    Err(_) => h.lock().unwrap().commands.push("TLS_FAILED".into()),
                }
            });
        }
    });
    heard
}

/// A relay whose certificate a private CA signed: trusted through
/// `mail.smtp_ca_file`, the mail goes over STARTTLS; without it, the
/// certificate is refused and nothing is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_with_a_private_cas_certificate_gets_the_mail_over_starttls() {
    for trusted in [true, false] {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let heard = tls_relay(listener);
        let s = TestServer::start_with(Backend::Sqlite, move |c| {
            c.mail.smtp_url = Some(palisade_config::Secret::new(format!("smtp://localhost:{port}?tls=required")));
            c.mail.smtp_ca_file = trusted.then(|| crate::tls::fixture("ca.pem"));
            c.mail.retry_schedule_secs = vec![600];
            c.mail.poll_ms = 50;
            c.mail.send_timeout_secs = 5;
            c.metrics.listen = "127.0.0.1:0".into();
        })
        .await;
        let email = "tls@mailed.example.com";
        signup(&s, email).await;
        if trusted {
            until("the mail reaches the relay", || !heard.lock().unwrap().mails.is_empty()).await;
            let mail = heard.lock().unwrap().mails[0].clone();
            assert!(mail.contains(&format!("To: {email}")), "{mail}");
            // Every mail command came after the handshake.
            let commands = heard.lock().unwrap().commands.clone();
            let tls_at = commands.iter().position(|c| c == "TLS").expect("a TLS handshake");
            let mail_at = commands.iter().position(|c| c == "MAIL").expect("a MAIL command");
            assert!(commands[tls_at - 1] == "STARTTLS" && tls_at < mail_at, "{commands:?}");
            assert_eq!(counted(&s, "sent").await, 1);
        } else {
            assert_eq!(counted(&s, "failed").await, 1);
            let commands = heard.lock().unwrap().commands.clone();
            assert!(commands.contains(&"TLS_FAILED".to_owned()), "{commands:?}");
            assert!(!commands.contains(&"MAIL".to_owned()) && heard.lock().unwrap().mails.is_empty(), "{commands:?}");
        }
        s.stop().await;
    }
}
