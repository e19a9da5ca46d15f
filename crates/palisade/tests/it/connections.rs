//! Slow and idle clients (SPEC §11): real sockets against short limits.
//! Each test also shows that ordinary requests are served meanwhile.

use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::common::{Backend, TestServer};

const SEC: Duration = Duration::from_secs(1);

async fn server(tweak: impl FnOnce(&mut palisade_config::Config)) -> TestServer {
    TestServer::start_with(Backend::Sqlite, |c| {
        c.server.header_timeout_secs = 1;
        tweak(c)
    })
    .await
}

async fn connect(srv: &TestServer) -> TcpStream {
    TcpStream::connect(srv.url.trim_start_matches("http://")).await.unwrap()
}

/// How long until the server closed `s` (reading and dropping whatever
/// it sends); `None` if it is still open after `within`.
async fn closed_within(s: &mut (impl AsyncRead + Unpin), within: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(t + within, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// One response on a kept-alive connection: status and body.
async fn response(s: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_lowercase();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head.lines().find_map(|l| l.strip_prefix("content-length:"))?.trim().parse().ok()?;
    while buf.len() < head_end + length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    }
    Some((status, String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned()))
}

/// `GET /healthz` on `s`, kept alive; the status, 0 when the connection is gone.
async fn healthz(s: &mut TcpStream) -> u16 {
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.is_err() {
        return 0;
    }
    response(s).await.map_or(0, |(status, _)| status)
}

/// `v` as JSON, followed by spaces up to `len` bytes.
fn padded(v: serde_json::Value, len: usize) -> Vec<u8> {
    let mut b = serde_json::to_vec(&v).unwrap();
    b.resize(len.max(b.len()), b' ');
    b
}

async fn served(srv: &TestServer) {
    let r = srv.client.get(format!("{}/healthz", srv.url)).send().await.unwrap();
    assert_eq!(r.status(), 200);
}

fn assert_closed_about(closed: Option<Duration>, limit: Duration) {
    let closed = closed.unwrap_or_else(|| panic!("still open well past the {limit:?} limit"));
    assert!(closed >= limit.mul_f32(0.8) && closed < limit + 2 * SEC, "closed after {closed:?}, limit {limit:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_connection_is_closed_at_the_header_deadline() {
    let srv = server(|_| {}).await;
    let mut silent = connect(&srv).await;
    served(&srv).await;
    assert_closed_about(closed_within(&mut silent, 5 * SEC).await, SEC);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn b_headers_sent_slowly_are_cut_off_at_the_deadline() {
    let srv = server(|_| {}).await;
    let (mut rd, mut wr) = connect(&srv).await.into_split();
    // A header line every 200 ms: every read brings something, the head
    // never ends.
    let trickle = tokio::spawn(async move {
        wr.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n").await?;
        for i in 0.. {
            tokio::time::sleep(Duration::from_millis(200)).await;
            wr.write_all(format!("X-Slow-{i}: yes\r\n").as_bytes()).await?;
        }
        Ok::<_, std::io::Error>(())
    });
    served(&srv).await;
    let closed = closed_within(&mut rd, 5 * SEC).await;
    trickle.abort();
    assert_closed_about(closed, SEC);
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_trickled_body_is_cut_off_even_when_authenticated() {
    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        (c.server.body_timeout_secs, c.server.body_min_bytes_per_sec) = (1, 1000);
    })
    .await;
    let t = srv.tenant("Trickle").await;
    let body = padded(json!({"name": "ci", "role": "integration"}), 400);
    let (mut rd, mut wr) = connect(&srv).await.into_split();
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.token,
        body.len()
    );
    // 10 bytes each 100 ms: 100 B/s, a tenth of the least rate.
    let trickle = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        for c in body.chunks(10) {
            wr.write_all(c).await?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        std::future::pending::<()>().await;
        Ok::<_, std::io::Error>(wr)
    });
    let started = Instant::now();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(6 * SEC, rd.read_to_end(&mut out)).await;
    let took = started.elapsed();
    trickle.abort();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_timeout"), "{text}");
    // Cut at about one second plus what the received bytes earned, and
    // the connection closed with the answer.
    assert!(took > Duration::from_millis(900) && took < 3 * SEC, "took {took:?}");
    served(&srv).await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_a_steady_body_is_not_cut_off() {
    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        (c.server.body_timeout_secs, c.server.body_min_bytes_per_sec) = (1, 100);
    })
    .await;
    let t = srv.tenant("Steady").await;
    let body = padded(json!({"name": "ci", "role": "integration"}), 300);
    let mut s = connect(&srv).await;
    let head = format!(
        "POST /v1/api-keys HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        t.token,
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    // 50 bytes each 250 ms (200 B/s) for over a second: longer than the
    // deadline alone, but faster than the least rate.
    for c in body.chunks(50) {
        s.write_all(c).await.unwrap();
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let (status, text) = response(&mut s).await.expect("an answer");
    assert_eq!(status, 201, "{text}");
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_an_idle_kept_alive_connection_is_closed_at_the_idle_deadline() {
    let srv = server(|c| c.server.idle_timeout_secs = 2).await;
    let mut s = connect(&srv).await;
    assert_eq!(healthz(&mut s).await, 200);
    // Idle longer than the header deadline: still open, the idle one applies.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(healthz(&mut s).await, 200);
    served(&srv).await;
    assert_closed_about(closed_within(&mut s, 6 * SEC).await, 2 * SEC);
    srv.stop().await;
}

/// Holds `n` connections open (each has had a request answered).
async fn hold(srv: &TestServer, n: usize) -> Vec<TcpStream> {
    let mut held = Vec::new();
    for _ in 0..n {
        let mut s = connect(srv).await;
        assert_eq!(healthz(&mut s).await, 200);
        held.push(s);
    }
    held
}

async fn connections_cut(srv: &TestServer, limit: &str) -> String {
    let url = format!("http://{}/metrics", srv.metrics_addr().unwrap());
    let text = reqwest::get(url).await.unwrap().text().await.unwrap();
    let prefix = format!("palisade_connections_cut_total{{kind=\"{limit}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).unwrap_or("0").to_owned()
}

/// With the cap reached, a further connection is closed at once while the
/// held ones are served; when one closes, its place is free again.
async fn beyond_the_cap(srv: &TestServer, cap: usize, limit: &str) {
    let mut held = hold(srv, cap).await;
    let mut extra = connect(srv).await;
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let closed = closed_within(&mut extra, 3 * SEC).await.expect("refused");
    assert!(closed < Duration::from_millis(500), "refused only after {closed:?}");
    assert_eq!(connections_cut(srv, limit).await, "1");
    for s in &mut held {
        assert_eq!(healthz(s).await, 200);
    }
    drop(held.pop());
    let t = Instant::now();
    loop {
        let mut s = connect(srv).await;
        if healthz(&mut s).await == 200 {
            break;
        }
        assert!(t.elapsed() < 3 * SEC, "the closed connection's place never came back");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e_beyond_the_per_address_cap_a_connection_is_refused_at_once() {
    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        c.server.max_connections_per_address = 3;
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    beyond_the_cap(&srv, 3, "max_connections_per_address").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f_beyond_the_total_cap_a_connection_is_refused_at_once() {
    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        c.server.max_connections = 3;
        c.metrics.listen = "127.0.0.1:0".into();
    })
    .await;
    beyond_the_cap(&srv, 3, "max_connections").await;
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_proxy_counts_toward_the_total_only() {
    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        c.server.max_connections_per_address = 1;
        c.server.trust_proxy = vec!["127.0.0.1/32".parse().unwrap()];
    })
    .await;
    let mut held = hold(&srv, 3).await;
    for s in &mut held {
        assert_eq!(healthz(s).await, 200);
    }
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn g_a_stalled_tls_handshake_is_closed_at_its_deadline() {
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::version::{TLS12, TLS13};

    let srv = server(|c| {
        c.server.header_timeout_secs = 10;
        c.server.tls.cert_file = Some(crate::tls::fixture("server.pem"));
        c.server.tls.key_file = Some(crate::tls::fixture("server.key"));
        c.server.tls.handshake_timeout_secs = 1;
    })
    .await;
    let mut silent = connect(&srv).await;
    // The first bytes of a ClientHello record, then nothing.
    let mut half = connect(&srv).await;
    half.write_all(&[0x16, 0x03, 0x01, 0x02, 0x00, 0x01]).await.unwrap();
    let prompt = async {
        let tcp = connect(&srv).await;
        let mut tls = crate::tls::client(&[&TLS13, &TLS12])
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .expect("a prompt handshake completes");
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    let (silent, half, answer) =
        tokio::join!(closed_within(&mut silent, 5 * SEC), closed_within(&mut half, 5 * SEC), prompt);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert_closed_about(silent, SEC);
    assert_closed_about(half, SEC);
    srv.stop().await;
}

/// An HTTP/2 frame: length, type, flags, stream id, payload.
fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d_a_client_that_reads_no_answer_is_closed_at_the_idle_deadline() {
    let srv = server(|c| c.server.idle_timeout_secs = 2).await;
    let mut s = connect(&srv).await;
    // HTTP/2 with a flow-control window of 0: the server may not send a
    // byte of any answer until the client allows it, which it never does.
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend(h2_frame(0x4, 0, 0, &[0x00, 0x04, 0, 0, 0, 0])); // SETTINGS_INITIAL_WINDOW_SIZE = 0
                                                                // GET http://localhost/healthz, HPACK: indexed :method GET, :scheme http,
                                                                // then literal :path and :authority.
    let mut block = vec![0x82, 0x86, 0x44, 8];
    block.extend_from_slice(b"/healthz");
    block.extend_from_slice(&[0x41, 9]);
    block.extend_from_slice(b"localhost");
    out.extend(h2_frame(0x1, 0x5, 1, &block)); // HEADERS, END_STREAM | END_HEADERS
    s.write_all(&out).await.unwrap();
    let (mut rd, mut wr) = s.into_split();
    // Pings every 300 ms: the client is alive, it just reads nothing.
    let pinger = tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(300)).await;
            wr.write_all(&h2_frame(0x6, 0, 0, b"12345678")).await?;
        }
        #[allow(unreachable_code)]
        Ok::<_, std::io::Error>(())
    });
    served(&srv).await;
    let closed = closed_within(&mut rd, 6 * SEC).await;
    pinger.abort();
    assert_closed_about(closed, 2 * SEC);
    srv.stop().await;
}
