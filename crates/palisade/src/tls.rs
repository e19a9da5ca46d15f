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
    let mut config = build(cert_file, key_file, None, false, "server.tls")?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The SIP TLS listener's configuration (`sip.tls_*`): the same versions
/// and suites, and client certificates from `client_ca` when set
/// (required, or only checked when offered).
pub fn sip_config(s: &palisade_config::Sip) -> anyhow::Result<Option<Arc<ServerConfig>>> {
    let (Some(_), Some(cert), Some(key)) = (&s.tls_listen, &s.tls_cert_file, &s.tls_key_file) else {
        return Ok(None);
    };
    let config = build(cert, key, s.tls_client_ca_file.as_deref(), s.tls_require_client_cert, "sip")?;
    Ok(Some(Arc::new(config)))
}

fn build(
    cert_file: &Path,
    key_file: &Path,
    client_ca: Option<&Path>,
    require_client_cert: bool,
    section: &str,
) -> anyhow::Result<ServerConfig> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|it| it.collect::<Result<_, _>>())
        .with_context(|| format!("{section}: cannot read PEM certificates from {}", cert_file.display()))?;
    anyhow::ensure!(!certs.is_empty(), "{section}: {} holds no certificate", cert_file.display());
    let key = PrivateKeyDer::from_pem_file(key_file)
        .with_context(|| format!("{section}: cannot read a PEM private key from {}", key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("{section}: cannot read the client CA from {}", ca.display()))?
            {
                roots.add(c).with_context(|| format!("{section}: a client CA certificate is unusable"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if require_client_cert { verifier } else { verifier.allow_unauthenticated() };
            builder.with_client_cert_verifier(verifier.build().context("the client CA")?)
        }
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .with_context(|| format!("{section}: the certificate and key do not match or are unsupported"))?;
    // The server's order of suites (strongest first), not the client's: a
    // client cannot steer the handshake to the weakest suite both support.
    config.ignore_client_order = true;
    Ok(config)
}
