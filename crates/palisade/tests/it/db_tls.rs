//! The connection to PostgreSQL verifies the database's certificate with
//! `sslmode=verify-full`: against a PostgreSQL the test starts with TLS and
//! a certificate from the test CA (names `localhost` and `127.0.0.1`).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use crate::common::{Backend, TestServer};
use crate::tls::fixture;

/// A private PostgreSQL cluster serving TLS, stopped on drop.
struct TlsPostgres {
    port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl TlsPostgres {
    fn start() -> TlsPostgres {
        let bin = postgres_bin();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        for f in ["server.pem", "server.key"] {
            std::fs::copy(fixture(f), dir.path().join(f)).unwrap();
        }
        let root = is_root();
        if root {
            run(Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()));
        }
        run(Command::new("chmod").arg("600").arg(dir.path().join("server.key")));
        run(as_postgres(root, &bin.join("initdb"))
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "-D"])
            .arg(&data)
            .stdout(Stdio::null()));
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = as_postgres(root, &bin.join("postgres"));
        cmd.arg("-D").arg(&data).arg("-p").arg(port.to_string()).arg("-k").arg(dir.path());
        for setting in [
            "listen_addresses=127.0.0.1,127.0.0.2".to_owned(),
            "ssl=on".to_owned(),
            format!("ssl_cert_file={}", dir.path().join("server.pem").display()),
            format!("ssl_key_file={}", dir.path().join("server.key").display()),
            "fsync=off".to_owned(),
        ] {
            cmd.arg("-c").arg(setting);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let pg = TlsPostgres { port, child, dir };
        for _ in 0..100 {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return pg;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        panic!("the private PostgreSQL did not start");
    }

    fn url(&self, host: &str, mode: &str, ca: &Path) -> String {
        format!("postgres://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}", self.port, ca.display())
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(cmd: &mut Command) {
    let status = cmd.status().unwrap();
    assert!(status.success(), "{cmd:?} failed");
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// PostgreSQL refuses to run as root: drop to its own account (exec, so
/// the child to kill is the server itself).
fn as_postgres(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("setpriv");
        c.args(["--reuid=postgres", "--regid=postgres", "--init-groups"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn postgres_bin() -> PathBuf {
    let base = Path::new("/usr/lib/postgresql");
    let mut versions: Vec<PathBuf> = std::fs::read_dir(base)
        .expect("PostgreSQL server binaries under /usr/lib/postgresql")
        .filter_map(|e| e.ok().map(|e| e.path().join("bin")))
        .filter(|p| p.join("initdb").exists())
        .collect();
    versions.sort();
    versions.pop().expect("initdb under /usr/lib/postgresql/*/bin")
}

/// A CA the database's certificate does not come from.
fn other_ca(dir: &Path) -> PathBuf {
    let (cert, key) = (dir.join("other-ca.pem"), dir.join("other-ca.key"));
    run(Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1"])
        .args(["-subj", "/CN=Not The Palisade Test CA", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(Stdio::null()));
    cert
}

async fn connects(url: &str) -> Result<(), String> {
    let db = palisade_store::Db::connect(url, 1).await.map_err(|e| e.to_string())?;
    let one: i64 = sqlx::query_scalar("SELECT 1").fetch_one(db.reader()).await.map_err(|e| e.to_string())?;
    assert_eq!(one, 1);
    db.close().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(postgres_tests), ignore = "PALISADE_TEST_POSTGRES_URL is not set")]
async fn verify_full_checks_the_database_certificate() {
    sqlx::any::install_default_drivers();
    let pg = TlsPostgres::start();
    let ca = fixture("ca.pem");

    // The platform runs on it, certificate and name verified.
    let url = pg.url("localhost", "verify-full", &ca);
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.database.url = Some(palisade_config::Secret::new(url.clone()));
    })
    .await;
    srv.tenant("Verified TLS").await;
    srv.stop().await;

    // A certificate from another CA is refused, whatever the name.
    let wrong = other_ca(pg.dir.path());
    let err = connects(&pg.url("localhost", "verify-full", &wrong)).await.unwrap_err();
    assert!(err.to_lowercase().contains("certificate") || err.to_lowercase().contains("tls"), "{err}");
    // The right CA but a name the certificate does not carry is refused;
    // an address it carries is accepted.
    let err = connects(&pg.url("127.0.0.2", "verify-full", &ca)).await.unwrap_err();
    assert!(err.contains("not valid for name"), "{err}");
    connects(&pg.url("127.0.0.1", "verify-full", &ca)).await.unwrap();
    // Without TLS the same server is reachable, which is why production
    // refuses such a URL unless it is loopback or a socket.
    connects(&format!("postgres://postgres@127.0.0.1:{}/postgres?sslmode=disable", pg.port)).await.unwrap();
}
