//! In-process TLS termination.

use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

use crate::common::{Backend, TestServer};

pub(crate) fn fixture(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/fixtures").join(name)
}

pub(crate) fn client(versions: &[&'static rustls::SupportedProtocolVersion]) -> tokio_rustls::TlsConnector {
    client_with(rustls::crypto::ring::default_provider(), versions)
}

fn client_with(
    provider: rustls::crypto::CryptoProvider,
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> tokio_rustls::TlsConnector {
    let mut roots = RootCertStore::empty();
    roots.add(CertificateDer::from_pem_file(fixture("ca.pem")).unwrap()).unwrap();
    let config = ClientConfig::builder_with_provider(Arc::new(provider))
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_tls_1_3_and_1_2_only_over_tls() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.server.tls.cert_file = Some(fixture("server.pem"));
        c.server.tls.key_file = Some(fixture("server.key"));
    })
    .await;
    let addr = srv.url.trim_start_matches("http://").to_owned();
    for (versions, expected) in [
        (&[&rustls::version::TLS13, &rustls::version::TLS12][..], rustls::ProtocolVersion::TLSv1_3),
        (&[&rustls::version::TLS12][..], rustls::ProtocolVersion::TLSv1_2),
    ] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let mut tls = client(versions).connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        assert_eq!(tls.get_ref().1.protocol_version(), Some(expected));
        tls.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.unwrap();
        let mut out = Vec::new();
        let _ = tls.read_to_end(&mut out).await;
        let text = String::from_utf8_lossy(&out).to_lowercase();
        assert!(text.starts_with("http/1.1 200"), "{text}");
        assert!(text.contains("strict-transport-security: max-age=31536000; includesubdomains"));
    }
    // Plain HTTP on the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
    tcp.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut out)).await;
    assert!(!String::from_utf8_lossy(&out).contains("200 OK"));
    srv.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_picks_the_cipher_suite() {
    let srv = TestServer::start_with(Backend::Sqlite, |c| {
        c.server.tls.cert_file = Some(fixture("server.pem"));
        c.server.tls.key_file = Some(fixture("server.key"));
    })
    .await;
    let addr = srv.url.trim_start_matches("http://").to_owned();
    // A client that prefers the suites the server ranks last still gets
    // the server's first choice.
    let mut provider = rustls::crypto::ring::default_provider();
    provider.cipher_suites.reverse();
    for (versions, expected) in [
        (&[&rustls::version::TLS13][..], rustls::CipherSuite::TLS13_AES_256_GCM_SHA384),
        (&[&rustls::version::TLS12][..], rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384),
    ] {
        let tcp = tokio::net::TcpStream::connect(&addr).await.unwrap();
        let connector = client_with(provider.clone(), versions);
        let tls = connector.connect(ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
        let suite = tls.get_ref().1.negotiated_cipher_suite().map(|s| s.suite());
        assert_eq!(suite, Some(expected));
    }
    srv.stop().await;
}
