//! In-process TLS termination (rustls: TLS 1.3 and 1.2 only, AEAD suites
//! only). Handshakes run in each connection's own task with a deadline
//! (`server.tls.handshake_timeout_secs`, see `serve.rs`), so a slow or
//! silent client cannot hold up other connections.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{self, ServerConfig};

pub fn server_config(cert_file: &Path, key_file: &Path) -> anyhow::Result<Arc<ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("server.tls.cert_file: cannot read PEM certificates from {}", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "server.tls.cert_file {} holds no certificate", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("server.tls.key_file: cannot read a PEM private key from {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("server.tls: the certificate and key do not match or are unsupported")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    // The server's order of suites (strongest first), not the client's: a
    // client cannot steer the handshake to the weakest suite both support.
    config.ignore_client_order = true;
    Ok(Arc::new(config))
}
