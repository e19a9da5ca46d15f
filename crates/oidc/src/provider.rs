//! One provider: its discovery document and keys, kept a while, and the
//! two halves of a sign-in.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use serde::Deserialize;
use tokio::sync::Mutex;

use crate::{code_challenge, random_token, Error, Http, Identity, Settings, Start};

/// How long a discovery document or key set is used before it is read again.
const FRESH: Duration = Duration::from_secs(3600);
/// After a failed read, how long the last good one serves before another try.
const RETRY_AFTER: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
    jwks_uri: String,
    #[serde(default)]
    token_endpoint_auth_methods_supported: Option<Vec<String>>,
}

pub(crate) struct Kept<T> {
    value: T,
    pub(crate) at: Instant,
}

pub struct Provider {
    settings: Settings,
    http: Arc<dyn Http>,
    discovery: Mutex<Option<Kept<Discovery>>>,
    keys: Mutex<Option<Kept<JwkSet>>>,
}

#[derive(Deserialize)]
struct TokenAnswer {
    id_token: String,
}

impl Provider {
    pub fn new(settings: Settings, http: Arc<dyn Http>) -> Provider {
        Provider { settings, http, discovery: Mutex::new(None), keys: Mutex::new(None) }
    }

    #[cfg(test)]
    pub(crate) async fn keys_for_test(&self) -> tokio::sync::MutexGuard<'_, Option<Kept<JwkSet>>> {
        self.keys.lock().await
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// The first half: where to send the browser (`redirect_uri` is our
    /// callback), with a fresh state, nonce and PKCE verifier to keep.
    pub async fn start(&self, redirect_uri: &str) -> Result<Start, Error> {
        let d = self.discovery().await?;
        let (state, nonce, verifier) = (random_token(43), random_token(43), random_token(64));
        let mut url = url::Url::parse(&d.authorization_endpoint)
            .map_err(|_| Error::Unavailable("authorization_endpoint is not a URL".into()))?;
        url.query_pairs_mut()
            .append_pair("response_type", "code")
            .append_pair("client_id", &self.settings.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", "openid email")
            .append_pair("state", &state)
            .append_pair("nonce", &nonce)
            .append_pair("code_challenge", &code_challenge(&verifier))
            .append_pair("code_challenge_method", "S256");
        Ok(Start { url: url.into(), state, nonce, verifier })
    }

    /// The second half: the code exchanged (with the verifier) for an ID
    /// token, which must prove a verified address and carry our `nonce`.
    pub async fn finish(
        &self,
        code: &str,
        verifier: &str,
        nonce: &str,
        redirect_uri: &str,
        now_secs: i64,
    ) -> Result<Identity, Error> {
        let d = self.discovery().await?;
        let s = &self.settings;
        // Basic unless the provider says it takes only a form secret.
        let post_only = d.token_endpoint_auth_methods_supported.as_ref().is_some_and(|m| {
            !m.iter().any(|a| a == "client_secret_basic") && m.iter().any(|a| a == "client_secret_post")
        });
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier),
        ];
        let basic = if post_only {
            form.push(("client_id", &s.client_id));
            form.push(("client_secret", &s.client_secret));
            None
        } else {
            Some((s.client_id.as_str(), s.client_secret.as_str()))
        };
        let (status, body) = self.http.post_form(&d.token_endpoint, basic, &form).await.map_err(Error::Unavailable)?;
        match status {
            200 => {}
            400..=499 => return Err(Error::Rejected("code_rejected")),
            other => return Err(Error::Unavailable(format!("the token endpoint answered {other}"))),
        }
        let answer: TokenAnswer =
            serde_json::from_slice(&body).map_err(|_| Error::Unavailable("the token answer has no id_token".into()))?;
        crate::token::verify(self, &answer.id_token, nonce, now_secs).await
    }

    /// The discovery document, read again once it is an hour old (the old
    /// one serves while the provider cannot answer).
    async fn discovery(&self) -> Result<Discovery, Error> {
        let mut kept = self.discovery.lock().await;
        if let Some(k) = kept.as_ref().filter(|k| k.at.elapsed() < FRESH) {
            return Ok(k.value.clone());
        }
        match self.fetch_discovery().await {
            Ok(d) => {
                *kept = Some(Kept { value: d.clone(), at: Instant::now() });
                Ok(d)
            }
            Err(e) => match kept.as_mut() {
                Some(k) => {
                    tracing::warn!(provider = %self.settings.name, error = %e, "OIDC discovery failed; using the last one");
                    // Asked again in a while, not by every sign-in meanwhile.
                    k.at = Instant::now().checked_sub(FRESH - RETRY_AFTER).unwrap_or_else(Instant::now);
                    Ok(k.value.clone())
                }
                None => Err(e),
            },
        }
    }

    async fn fetch_discovery(&self) -> Result<Discovery, Error> {
        let url = format!("{}/.well-known/openid-configuration", self.settings.issuer.trim_end_matches('/'));
        let body = self.http.get(&url).await.map_err(Error::Unavailable)?;
        let d: Discovery = serde_json::from_slice(&body)
            .map_err(|_| Error::Unavailable("the discovery document is not one".into()))?;
        // OpenID Connect Discovery §4.3: the issuer it names is the one asked.
        if d.issuer != self.settings.issuer {
            return Err(Error::Unavailable("the discovery document names another issuer".into()));
        }
        for endpoint in [&d.authorization_endpoint, &d.token_endpoint, &d.jwks_uri] {
            let ok = url::Url::parse(endpoint).is_ok_and(|u| match u.scheme() {
                "https" => true,
                "http" => !self.settings.require_https,
                _ => false,
            });
            if !ok {
                return Err(Error::Unavailable(format!("endpoint {endpoint} is not an allowed URL")));
            }
        }
        Ok(d)
    }

    /// The provider's keys; read again when an hour old, or when asked to
    /// (an unknown key id) and the last read is old enough.
    pub(crate) async fn keys(&self, refetch: bool) -> Result<JwkSet, Error> {
        let refetch_after = Duration::from_secs(self.settings.key_refetch_secs);
        let mut kept = self.keys.lock().await;
        if let Some(k) = kept.as_ref() {
            let age = k.at.elapsed();
            if age < FRESH && !(refetch && age >= refetch_after) {
                return Ok(k.value.clone());
            }
        }
        let d = self.discovery().await?;
        let fetched = async {
            let body = self.http.get(&d.jwks_uri).await.map_err(Error::Unavailable)?;
            #[derive(Deserialize)]
            struct Loose {
                keys: Vec<serde_json::Value>,
            }
            let loose: Loose =
                serde_json::from_slice(&body).map_err(|_| Error::Unavailable("the key set is not one".into()))?;
            // A key of a kind we do not read is skipped, not the whole set.
            let keys = loose.keys.into_iter().filter_map(|k| serde_json::from_value(k).ok()).collect();
            Ok(JwkSet { keys })
        }
        .await;
        match fetched {
            Ok(set) => {
                *kept = Some(Kept { value: set.clone(), at: Instant::now() });
                Ok(set)
            }
            Err(e) => match kept.as_mut() {
                Some(k) => {
                    tracing::warn!(provider = %self.settings.name, error = %e, "OIDC keys could not be read; using the last ones");
                    // Not asked again at once for every token.
                    k.at = Instant::now().checked_sub(FRESH - RETRY_AFTER).unwrap_or_else(Instant::now);
                    Ok(k.value.clone())
                }
                None => Err(e),
            },
        }
    }
}
