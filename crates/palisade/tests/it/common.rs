use std::path::PathBuf;
use std::sync::Arc;

use palisade::Running;
use palisade_config::{Config, Secret};
use palisade_core::{Clock, ManualClock, SystemClock};
use reqwest::Method;
use serde_json::{json, Value};
use sqlx::Connection;

/// Runs each named `async fn(Backend)` once per database backend.
macro_rules! backend_tests {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::common::Backend::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
            async fn postgres() {
                super::$name(crate::common::Backend::required_postgres()).await
            }
        }
    )*};
}

#[derive(Clone, Debug)]
pub enum Backend {
    Sqlite,
    Postgres(String),
}

impl Backend {
    pub fn postgres() -> Option<Backend> {
        std::env::var("PALISADE_TEST_POSTGRES_URL").ok().filter(|u| !u.is_empty()).map(Backend::Postgres)
    }

    /// For a PostgreSQL test that runs: it was built with the variable set
    /// (see build.rs) or asked for with `--run-ignored`, and never passes
    /// without a database.
    pub fn required_postgres() -> Backend {
        Self::postgres().expect("PALISADE_TEST_POSTGRES_URL must be set to run the PostgreSQL tests")
    }
}

pub struct TestServer {
    pub url: String,
    pub client: reqwest::Client,
    pub master_key: String,
    pub clock: ManualClock,
    pub data_dir: PathBuf,
    /// The database URL the server used (for the CLI and for tampering).
    pub db_url: String,
    running: Option<Running>,
    config: Config,
    pg: Option<(String, String)>,
    _dir: tempfile::TempDir,
}

#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Resp {
    #[track_caller]
    pub fn expect(self, status: u16) -> Resp {
        assert_eq!(self.status, status, "unexpected status; body: {}", self.text);
        self
    }

    /// The problem body without its per-request id, for comparing bodies.
    pub fn problem_shape(&self) -> Value {
        let mut b = self.body.clone();
        if let Some(o) = b.as_object_mut() {
            o.remove("request_id");
        }
        b
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

pub struct Tenant {
    pub id: String,
    pub owner_id: String,
    pub email: String,
    pub password: String,
    pub token: String,
    pub refresh: String,
}

pub const PASSWORD: &str = "violet tram ocean ninety";

impl TestServer {
    pub async fn start(backend: Backend) -> TestServer {
        Self::start_with(backend, |_| {}).await
    }

    pub async fn start_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        let master_key = palisade_auth::token::new_master_key();
        let mut config = Config::default();
        config.server.data_dir = data_dir.clone();
        config.admin.master_key = Some(Secret::new(master_key.clone()));
        config.log.level = "info".into();
        // Tests send far more than a person would; the limit tests set
        // their own.
        let r = &mut config.rate_limits;
        (r.ip_per_minute, r.auth_ip_per_minute, r.key_per_minute, r.tenant_per_minute) =
            (1 << 20, 1 << 20, 1 << 20, 1 << 20);
        (r.burst_ip_per_second, r.burst_tenant_per_second) = (1 << 20, 1 << 20);
        // Every test client is one address; the connection tests set their own caps.
        config.server.max_connections_per_address = config.server.max_connections;
        let mut pg = None;
        if let Backend::Postgres(base) = &backend {
            let (url, name) = fresh_postgres_db(base).await;
            config.database.url = Some(Secret::new(url));
            pg = Some((base.clone(), name));
        }
        tweak(&mut config);
        let db_url = config.database_url();
        let clock = ManualClock::new(SystemClock.now_ms());
        let state = palisade::build_state(config.clone(), Arc::new(clock.clone())).await.unwrap();
        let running = palisade::start(state, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        TestServer {
            url: format!("http://{}", running.addr),
            client: reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap(),
            master_key,
            clock,
            data_dir,
            db_url,
            running: Some(running),
            config,
            pg,
            _dir: dir,
        }
    }

    pub async fn stop(mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
        if let Some((base, name)) = self.pg.take() {
            if let Ok(mut c) = sqlx::AnyConnection::connect(&base).await {
                let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(&mut c).await;
            }
        }
    }

    /// Stops serving (writing the shutdown checkpoint) but keeps the data.
    pub async fn halt(&mut self) {
        if let Some(r) = self.running.take() {
            r.stop().await;
        }
    }

    /// Stops and starts again on the same database and data dir (a fresh
    /// process would see the same), with a new clock at the old one's time.
    pub async fn restart(&mut self) {
        self.halt().await;
        self.resume().await;
    }

    /// Starts again after [`halt`](Self::halt) (a new instance of the
    /// server on the same data), with a new clock at the old one's time.
    pub async fn resume(&mut self) {
        let clock = ManualClock::new(self.clock.now_ms());
        let state = palisade::build_state(self.config.clone(), Arc::new(clock.clone())).await.unwrap();
        let running = palisade::start(state, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        self.url = format!("http://{}", running.addr);
        self.clock = clock;
        self.running = Some(running);
    }

    /// Another instance of the same deployment, as a load balancer would
    /// see it: the same database, keys and configuration, its own data dir
    /// (outbox, checkpoint file), and the same clock. Stopping it leaves
    /// the database to the first instance.
    pub async fn peer(&self) -> TestServer {
        self.peer_with(|_| {}).await
    }

    pub async fn peer_with(&self, tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        // What every instance must share (README, "Running several instances").
        for shared in ["master.key", "jwt-ed25519.pem", "audit-ed25519.pem", "webhook-secrets.key", "kek"] {
            let from = self.data_dir.join(shared);
            if from.exists() {
                std::fs::copy(&from, data_dir.join(shared)).unwrap();
            }
        }
        let mut config = self.config.clone();
        config.server.data_dir = data_dir.clone();
        tweak(&mut config);
        let clock = self.clock.clone();
        let state = palisade::build_state(config.clone(), Arc::new(clock.clone())).await.unwrap();
        let running = palisade::start(state, "127.0.0.1:0".parse().unwrap()).await.unwrap();
        TestServer {
            url: format!("http://{}", running.addr),
            client: self.client.clone(),
            master_key: self.master_key.clone(),
            clock,
            data_dir,
            db_url: self.db_url.clone(),
            running: Some(running),
            config,
            pg: None,
            _dir: dir,
        }
    }

    pub fn metrics_addr(&self) -> Option<std::net::SocketAddr> {
        self.running.as_ref()?.metrics_addr
    }

    /// The SIP edge's UDP and TCP addresses (when configured).
    pub fn sip_udp(&self) -> std::net::SocketAddr {
        self.running.as_ref().and_then(|r| r.sip.as_ref()).and_then(|s| s.udp_addr).expect("sip.udp_listen set")
    }

    pub fn sip_tcp(&self) -> std::net::SocketAddr {
        self.running.as_ref().and_then(|r| r.sip.as_ref()).and_then(|s| s.tcp_addr).expect("sip.tcp_listen set")
    }

    pub fn sip_tls(&self) -> std::net::SocketAddr {
        self.running.as_ref().and_then(|r| r.sip.as_ref()).and_then(|s| s.tls_addr).expect("sip.tls_listen set")
    }

    pub fn state(&self) -> &palisade_api::AppState {
        &self.running.as_ref().unwrap().state
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.client.request(method, format!("{}{}", self.url, path))
    }

    pub async fn send(rb: reqwest::RequestBuilder) -> Resp {
        let r = rb.send().await.unwrap();
        let status = r.status().as_u16();
        let headers = r.headers().clone();
        let bytes = r.bytes().await.unwrap();
        let text = String::from_utf8_lossy(&bytes).into_owned();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        Resp { status, headers, body, text }
    }

    /// A JSON call with an optional bearer credential.
    pub async fn call(&self, method: Method, path: &str, cred: Option<&str>, body: Option<Value>) -> Resp {
        let mut rb = self.request(method, path);
        if let Some(c) = cred {
            rb = rb.bearer_auth(c);
        }
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        Self::send(rb).await
    }

    pub async fn get(&self, path: &str, cred: &str) -> Resp {
        self.call(Method::GET, path, Some(cred), None).await
    }

    pub async fn post(&self, path: &str, cred: &str, body: Value) -> Resp {
        self.call(Method::POST, path, Some(cred), Some(body)).await
    }

    pub async fn admin(&self, method: Method, path: &str, body: Option<Value>) -> Resp {
        self.call(method, path, Some(&self.master_key.clone()), body).await
    }

    /// Speaks HTTP/1.1 over a raw socket, so the test controls framing and
    /// keeps sending while the server answers (as an abusive client would).
    pub async fn raw_post(&self, path: &str, token: Option<&str>, framing: &str, chunks: Vec<Vec<u8>>) -> (u16, Value) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let addr = self.url.trim_start_matches("http://").to_owned();
        let stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let (mut rd, mut wr) = stream.into_split();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nConnection: close\r\n{framing}\r\n",
            auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default()
        );
        let writer = tokio::spawn(async move {
            wr.write_all(head.as_bytes()).await?;
            for c in chunks {
                wr.write_all(&c).await?;
            }
            // Dropping the write half would half-close the socket, which the
            // server takes as the client leaving; hold it until the answer came.
            std::future::pending::<()>().await;
            Ok::<_, std::io::Error>(wr)
        });
        let mut buf = Vec::new();
        let _ = tokio::time::timeout(std::time::Duration::from_secs(30), rd.read_to_end(&mut buf)).await;
        writer.abort();
        let text = String::from_utf8_lossy(&buf).into_owned();
        let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A tenant created by the operator, with its owner logged in.
    pub async fn tenant(&self, name: &str) -> Tenant {
        let domain: String = name.to_lowercase().chars().filter(char::is_ascii_alphanumeric).collect();
        let email = format!("owner-{}@{domain}.example.com", unique_letters());
        let r = self
            .admin(
                Method::POST,
                "/sysadmin/v1/tenants",
                Some(json!({"name": name, "owner": {"email": email, "password": PASSWORD}})),
            )
            .await
            .expect(201);
        let id = r.body["id"].as_str().unwrap().to_owned();
        let owner_id = r.body["owner"]["id"].as_str().unwrap().to_owned();
        let (token, refresh) = self.login(&email, PASSWORD).await;
        Tenant { id, owner_id, email, password: PASSWORD.into(), token, refresh }
    }

    pub async fn login(&self, email: &str, password: &str) -> (String, String) {
        let r = self
            .call(Method::POST, "/v1/auth/login", None, Some(json!({"email": email, "password": password})))
            .await
            .expect(200);
        (r.body["access_token"].as_str().unwrap().to_owned(), r.body["refresh_token"].as_str().unwrap().to_owned())
    }

    /// Invites a person with `role` and has them accept and log in;
    /// returns (user id, access token).
    pub async fn member(&self, token: &str, email: &str, role: &str) -> (String, String) {
        let r = self.post("/v1/users", token, json!({"email": email, "role": role})).await.expect(201);
        assert_eq!(r.body["status"], "invited");
        let id = r.body["id"].as_str().unwrap().to_owned();
        let invite = self.mailed_token(email);
        self.call(Method::POST, "/v1/auth/accept-invite", None, Some(json!({"token": invite, "password": PASSWORD})))
            .await
            .expect(200);
        let (access, _) = self.login(email, PASSWORD).await;
        (id, access)
    }

    /// Creates an API key; returns (id, key).
    pub async fn api_key(&self, cred: &str, body: Value) -> (String, String) {
        let r = self.post("/v1/api-keys", cred, body).await.expect(201);
        (r.body["id"].as_str().unwrap().to_owned(), r.body["key"].as_str().unwrap().to_owned())
    }

    /// The newest mail in the dev outbox addressed to `to`.
    pub fn last_mail_to(&self, to: &str) -> String {
        let dir = self.data_dir.join("outbox");
        let mut mails: Vec<(std::time::SystemTime, String)> = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| (e.metadata().unwrap().modified().unwrap(), std::fs::read_to_string(e.path()).unwrap()))
            .filter(|(_, m)| m.contains(&format!("To: {to}")))
            .collect();
        mails.sort_by_key(|(t, _)| *t);
        mails.pop().map(|(_, m)| m).unwrap_or_else(|| panic!("no mail to {to}"))
    }

    /// The `et_…` token from the newest mail to `to`.
    pub fn mailed_token(&self, to: &str) -> String {
        let mail = self.last_mail_to(to);
        let start = mail.find("et_").expect("token in mail");
        mail[start..start + 46].to_owned()
    }

    /// Audit events of the tenant, as seen through the API.
    pub async fn events(&self, cred: &str, query: &str) -> Vec<Value> {
        self.get(&format!("/v1/events?{query}"), cred).await.expect(200).body["data"].as_array().unwrap().clone()
    }
}

async fn fresh_postgres_db(base: &str) -> (String, String) {
    sqlx::any::install_default_drivers();
    let name = format!("palisade_it_{}", uuid::Uuid::new_v4().simple());
    let mut c = sqlx::AnyConnection::connect(base).await.expect("PALISADE_TEST_POSTGRES_URL must be reachable");
    sqlx::query(&format!("CREATE DATABASE {name}")).execute(&mut c).await.unwrap();
    let (head, query) = base.split_once('?').map(|(h, q)| (h, Some(q))).unwrap_or((base, None));
    let scheme_end = head.find("://").unwrap() + 3;
    let host_part = match head[scheme_end..].find('/') {
        Some(i) => &head[..scheme_end + i],
        None => head,
    };
    let url = match query {
        Some(q) => format!("{host_part}/{name}?{q}"),
        None => format!("{host_part}/{name}"),
    };
    (url, name)
}

/// A unique name of letters only: random hex can hold runs of digits that
/// the WAF rightly counts as phone numbers.
pub fn unique_letters() -> String {
    uuid::Uuid::new_v4()
        .simple()
        .to_string()
        .bytes()
        .map(|b| if b.is_ascii_digit() { (b - b'0' + b'g') as char } else { b as char })
        .collect()
}
