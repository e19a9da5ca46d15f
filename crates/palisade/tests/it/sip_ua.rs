//! A minimal SIP user agent for the tests, over UDP or TCP, with a digest
//! implementation of its own (so the server's is checked against another).

use std::net::SocketAddr;
use std::time::Duration;

use md5::Md5;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

/// A response as received.
#[derive(Debug, Clone)]
pub struct Msg {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub raw: String,
}

impl Msg {
    fn parse(raw: &str) -> Option<Msg> {
        let mut lines = raw.split("\r\n");
        let status = lines.next()?.strip_prefix("SIP/2.0 ")?.get(..3)?.parse().ok()?;
        let headers = lines
            .take_while(|l| !l.is_empty())
            .filter_map(|l| l.split_once(':').map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned())))
            .collect();
        Some(Msg { status, headers, raw: raw.to_owned() })
    }

    pub fn all(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(n, _)| n == name).map(|(_, v)| v.as_str()).collect()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.all(name).first().copied()
    }

    /// The reason word of a `Warning: 399 host "reason"`.
    pub fn warning(&self) -> Option<&str> {
        self.header("warning")?.split('"').nth(1)
    }
}

type Tls = tokio_rustls::client::TlsStream<TcpStream>;

enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream, Vec<u8>),
    Tls(Box<Tls>, Vec<u8>),
}

pub struct Ua {
    link: Link,
    server: SocketAddr,
    pub local: SocketAddr,
    pub user: String,
    pub realm: String,
    pub call_id: String,
    pub cseq: u32,
    /// The SDP offer its INVITEs carry, if any.
    pub offer: Option<String>,
}

impl Ua {
    pub async fn udp_from(bind: &str, server: SocketAddr, user: &str, realm: &str) -> Ua {
        let sock = UdpSocket::bind(bind).await.unwrap();
        let local = sock.local_addr().unwrap();
        Ua::new(Link::Udp(sock), server, local, user, realm)
    }

    pub async fn udp(server: SocketAddr, user: &str, realm: &str) -> Ua {
        Ua::udp_from("127.0.0.1:0", server, user, realm).await
    }

    pub async fn tcp(server: SocketAddr, user: &str, realm: &str) -> Ua {
        let s = TcpStream::connect(server).await.unwrap();
        let local = s.local_addr().unwrap();
        Ua::new(Link::Tcp(s, Vec::new()), server, local, user, realm)
    }

    /// Over TLS, trusting the test CA (tests/it/fixtures).
    pub async fn tls(server: SocketAddr, user: &str, realm: &str) -> Ua {
        let s = TcpStream::connect(server).await.unwrap();
        let local = s.local_addr().unwrap();
        let versions = [&tokio_rustls::rustls::version::TLS13, &tokio_rustls::rustls::version::TLS12];
        let name = tokio_rustls::rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let tls = crate::tls::client(&versions).connect(name, s).await.unwrap();
        Ua::new(Link::Tls(Box::new(tls), Vec::new()), server, local, user, realm)
    }

    fn new(link: Link, server: SocketAddr, local: SocketAddr, user: &str, realm: &str) -> Ua {
        Ua {
            link,
            server,
            local,
            user: user.into(),
            realm: realm.into(),
            call_id: format!("{}@test", uuid::Uuid::new_v4()),
            cseq: 0,
            offer: None,
        }
    }

    fn transport(&self) -> &'static str {
        match self.link {
            Link::Udp(_) => "UDP",
            Link::Tcp(..) => "TCP",
            Link::Tls(..) => "TLS",
        }
    }

    /// A request with the usual headers, then `extra` lines.
    pub fn build(&mut self, method: &str, extra: &[String]) -> String {
        let target = self.realm.clone();
        self.build_to(method, &format!("sip:{target}"), None, extra)
    }

    /// A request to `uri`, within a dialog when `to_tag` is given (then at
    /// the current CSeq, else at the next).
    pub fn build_to(&mut self, method: &str, uri: &str, to_tag: Option<&str>, extra: &[String]) -> String {
        if to_tag.is_none() {
            self.cseq += 1;
        }
        let branch = format!("z9hG4bK{}", uuid::Uuid::new_v4().simple());
        let aor = format!("sip:{}@{}", self.user, self.realm);
        let to = match to_tag {
            Some(tag) => format!("<{uri}>;tag={tag}"),
            None if method == "REGISTER" => format!("<{aor}>"),
            None => format!("<{uri}>"),
        };
        let mut m = format!(
            "{method} {uri} SIP/2.0\r\nVia: SIP/2.0/{t} {local};branch={branch};rport\r\nMax-Forwards: 70\r\n\
             From: <{aor}>;tag=ua1\r\nTo: {to}\r\nCall-ID: {cid}\r\nCSeq: {cseq} {method}\r\nUser-Agent: palisade-test\r\n",
            t = self.transport(),
            local = self.local,
            cid = self.call_id,
            cseq = self.cseq,
        );
        for l in extra {
            m.push_str(l);
            m.push_str("\r\n");
        }
        match self.offer.as_deref().filter(|_| method == "INVITE") {
            Some(sdp) => {
                m.push_str(&format!("Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}", sdp.len()));
            }
            None => m.push_str("Content-Length: 0\r\n\r\n"),
        }
        m
    }

    pub async fn send_raw(&mut self, raw: &[u8]) {
        match &mut self.link {
            Link::Udp(s) => {
                s.send_to(raw, self.server).await.unwrap();
            }
            Link::Tcp(s, _) => s.write_all(raw).await.unwrap(),
            Link::Tls(s, _) => s.write_all(raw).await.unwrap(),
        }
    }

    /// The next final response (provisional ones skipped); `None` when
    /// nothing comes within `wait`.
    pub async fn recv(&mut self, wait: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let raw = tokio::time::timeout_at(deadline, self.recv_one()).await.ok()??;
            let msg = Msg::parse(&raw)?;
            if msg.status >= 200 {
                return Some(msg);
            }
        }
    }

    /// The next request the edge sends us (a BYE), raw.
    pub async fn recv_request(&mut self, wait: Duration) -> Option<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let raw = tokio::time::timeout_at(deadline, self.recv_one()).await.ok()??;
            if !raw.starts_with("SIP/2.0 ") {
                return Some(raw);
            }
        }
    }

    async fn recv_one(&mut self) -> Option<String> {
        match &mut self.link {
            Link::Udp(s) => {
                let mut buf = vec![0u8; 65_536];
                let (n, _) = s.recv_from(&mut buf).await.ok()?;
                Some(String::from_utf8_lossy(&buf[..n]).into_owned())
            }
            Link::Tcp(s, pending) => read_framed(s, pending).await,
            Link::Tls(s, pending) => read_framed(s.as_mut(), pending).await,
        }
    }

    /// A request to the number `to` in our realm (a new call's INVITE: a new Call-ID).
    pub async fn request_to(&mut self, method: &str, to: &str, extra: &[String]) -> Option<Msg> {
        if method == "INVITE" && extra.is_empty() {
            // A new call: a new Call-ID (the answer to its challenge keeps it).
            self.call_id = format!("{}@test", uuid::Uuid::new_v4());
        }
        let uri = format!("sip:{to}@{}", self.realm);
        let mut lines = extra.to_vec();
        if method == "INVITE" {
            lines.push(format!("Contact: <sip:{}@{}>", self.user, self.local));
        }
        let m = self.build_to(method, &uri, None, &lines);
        self.send_raw(m.as_bytes()).await;
        self.recv(Duration::from_secs(5)).await
    }

    /// ACK or BYE of the current call.
    pub async fn send_in_dialog(&mut self, method: &str, to: &str, to_tag: &str, cseq: u32) {
        let uri = format!("sip:{to}@{}", self.realm);
        let saved = self.cseq;
        self.cseq = cseq;
        let m = self.build_to(method, &uri, Some(to_tag), &[]);
        self.cseq = saved;
        self.send_raw(m.as_bytes()).await;
    }

    pub async fn request(&mut self, method: &str, extra: &[String]) -> Option<Msg> {
        let m = self.build(method, extra);
        self.send_raw(m.as_bytes()).await;
        self.recv(Duration::from_secs(3)).await
    }

    /// A REGISTER of `contact`, answering the challenge in `challenge` (the
    /// first one of algorithm `alg`) with `password` and count `nc`.
    pub fn authorization(&self, challenge: &Msg, alg: &str, password: &str, nc: u32) -> String {
        let c = challenge
            .all("www-authenticate")
            .into_iter()
            .find(|c| c.contains(&format!("algorithm={alg}")))
            .expect("a challenge with the algorithm")
            .to_owned();
        let nonce = param(&c, "nonce").unwrap();
        let realm = param(&c, "realm").unwrap();
        answer(alg, &self.user, &realm, password, "REGISTER", &format!("sip:{}", self.realm), &nonce, nc)
    }
}

/// One message from a stream, framed by its Content-Length.
pub(crate) async fn read_framed(s: &mut (impl tokio::io::AsyncRead + Unpin), pending: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = pending.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&pending[..end + 4]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_owned()))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            if pending.len() >= end + 4 + len {
                let msg: Vec<u8> = pending.drain(..end + 4 + len).collect();
                return Some(String::from_utf8_lossy(&msg).into_owned());
            }
        }
        let mut buf = [0u8; 4096];
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..n]);
    }
}

/// A parameter of a challenge, unquoted.
pub fn param(challenge: &str, name: &str) -> Option<String> {
    let at = challenge.find(&format!("{name}="))? + name.len() + 1;
    let rest = &challenge[at..];
    Some(match rest.strip_prefix('"') {
        Some(q) => q[..q.find('"')?].to_owned(),
        None => rest.split([',', ' ']).next()?.to_owned(),
    })
}

fn hex_hash(alg: &str, s: &str) -> String {
    match alg {
        "MD5" => format!("{:x}", Md5::digest(s.as_bytes())),
        _ => format!("{:x}", Sha256::digest(s.as_bytes())),
    }
}

/// The `Authorization` value for a digest response (RFC 7616, qop=auth).
#[allow(clippy::too_many_arguments)]
pub fn answer(
    alg: &str,
    user: &str,
    realm: &str,
    password: &str,
    method: &str,
    uri: &str,
    nonce: &str,
    nc: u32,
) -> String {
    let cnonce = "0a4f113b";
    let nc = format!("{nc:08x}");
    let ha1 = hex_hash(alg, &format!("{user}:{realm}:{password}"));
    let ha2 = hex_hash(alg, &format!("{method}:{uri}"));
    let response = hex_hash(alg, &format!("{ha1}:{nonce}:{nc}:{cnonce}:auth:{ha2}"));
    format!(
        "Authorization: Digest username=\"{user}\", realm=\"{realm}\", nonce=\"{nonce}\", uri=\"{uri}\", \
         response=\"{response}\", algorithm={alg}, qop=auth, nc={nc}, cnonce=\"{cnonce}\""
    )
}
