//! The single sign-on providers, and the HTTP they are reached with: the
//! operator names them, so no SSRF guard, but bounded (5 s, 256 KiB, no
//! redirects) and https only in production (the providers check that).

use std::sync::Arc;
use std::time::Duration;

use palisade_config::{Config, Mode};
use palisade_oidc::{BoxFut, Http, Provider, Settings};

const MAX_BODY: usize = 256 * 1024;

struct Client(reqwest::Client);

impl Client {
    async fn body(mut r: reqwest::Response) -> Result<Vec<u8>, String> {
        let mut out = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
            if out.len() + chunk.len() > MAX_BODY {
                return Err("the answer is too large".into());
            }
            out.extend_from_slice(&chunk);
        }
        Ok(out)
    }
}

impl Http for Client {
    fn get<'a>(&'a self, url: &'a str) -> BoxFut<'a, Result<Vec<u8>, String>> {
        Box::pin(async move {
            let r = self.0.get(url).header("Accept", "application/json").send().await.map_err(|e| e.to_string())?;
            if r.status() != reqwest::StatusCode::OK {
                return Err(format!("{url} answered {}", r.status().as_u16()));
            }
            Self::body(r).await
        })
    }

    fn post_form<'a>(
        &'a self,
        url: &'a str,
        basic: Option<(&'a str, &'a str)>,
        form: &'a [(&'a str, &'a str)],
    ) -> BoxFut<'a, Result<(u16, Vec<u8>), String>> {
        Box::pin(async move {
            let mut rb = self.0.post(url).header("Accept", "application/json").form(form);
            if let Some((id, secret)) = basic {
                // RFC 6749 §2.3.1: each part form-encoded first.
                let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
                rb = rb.basic_auth(enc(id), Some(enc(secret)));
            }
            let r = rb.send().await.map_err(|e| e.to_string())?;
            let status = r.status().as_u16();
            Ok((status, Self::body(r).await?))
        })
    }
}

/// The configured providers.
pub fn providers(config: &Config) -> anyhow::Result<Arc<[Arc<Provider>]>> {
    if config.oidc.providers.is_empty() {
        return Ok(Arc::from(Vec::new()));
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .connect_timeout(Duration::from_secs(3))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent("Palisade-OIDC")
        .build()?;
    let http: Arc<dyn Http> = Arc::new(Client(http));
    let list: Vec<Arc<Provider>> = config
        .oidc
        .providers
        .iter()
        .map(|p| {
            let settings = Settings {
                name: p.name.clone(),
                issuer: p.issuer.clone(),
                client_id: p.client_id.clone(),
                client_secret: p.client_secret.as_ref().map(|s| s.expose().to_owned()).unwrap_or_default(),
                allowed_domains: p.allowed_domains.iter().map(|d| d.trim().to_lowercase()).collect(),
                require_https: config.mode == Mode::Production,
                leeway_secs: 60,
                max_age_secs: 600,
                key_refetch_secs: config.oidc.key_refetch_secs,
            };
            Arc::new(Provider::new(settings, http.clone()))
        })
        .collect();
    Ok(Arc::from(list))
}
