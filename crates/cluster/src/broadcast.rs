//! A broadcast between instances over Redis pub/sub: short messages on one
//! channel, at most once. Whoever uses it must survive a lost message (the
//! credential cache has its TTL) and is told when nobody can hear, so it
//! can stop trusting what it holds.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use palisade_config::Redis as RedisConfig;
use redis::aio::ConnectionManager;

use crate::redis::{client, connect, Client, ConfigError};

pub struct Broadcast {
    client: Client,
    publisher: ConnectionManager,
    channel: String,
    timeout: Duration,
}

/// What the listener reports.
pub trait Listener: Send + Sync + 'static {
    /// `true` once subscribed; `false` when the subscription is lost
    /// (messages may have been missed meanwhile).
    fn live(&self, live: bool);
    fn message(&self, payload: &str);
}

impl Broadcast {
    /// The channel `<key_prefix>:<name>`: deployments sharing a Redis under
    /// different prefixes do not hear each other.
    pub fn new(config: &RedisConfig, name: &str) -> Result<Broadcast, ConfigError> {
        Ok(Broadcast {
            client: client(config)?,
            publisher: connect(config)?,
            channel: format!("{}:{name}", config.key_prefix),
            timeout: Duration::from_millis(config.timeout_ms.max(1)),
        })
    }

    /// Sends `payload` to every listener, off the caller's path: a failure
    /// is logged, not returned (the listeners' backstop covers it).
    pub fn publish(&self, payload: &str) {
        let (mut conn, channel, payload, timeout) =
            (self.publisher.clone(), self.channel.clone(), payload.to_owned(), self.timeout);
        tokio::spawn(async move {
            let mut cmd = redis::cmd("PUBLISH");
            cmd.arg(&channel).arg(&payload);
            match tokio::time::timeout(timeout, cmd.query_async::<i64>(&mut conn)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => tracing::warn!(error = ?e.kind(), "broadcast: publish failed"),
                Err(_) => tracing::warn!("broadcast: publish timed out"),
            }
        });
    }

    /// Delivers the channel's messages to `listener` until the task is
    /// aborted, subscribing again (with a growing pause) whenever the
    /// subscription is lost.
    pub fn listen(self: Arc<Self>, listener: Arc<dyn Listener>) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let mut backoff = Duration::from_millis(100);
            loop {
                match self.session(&*listener).await {
                    Ok(()) => backoff = Duration::from_millis(100),
                    Err(e) => tracing::warn!(error = %e, "broadcast: subscription lost"),
                }
                listener.live(false);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        })
    }

    /// One subscription: returns when its connection ends.
    async fn session(&self, listener: &dyn Listener) -> Result<(), String> {
        let connecting = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(self.timeout * 4, connecting)
            .await
            .map_err(|_| "timed out".to_owned())?
            .map_err(|e| format!("{:?}", e.kind()))?;
        listener.live(true);
        let mut messages = pubsub.into_on_message();
        while let Some(m) = messages.next().await {
            if let Ok(payload) = m.get_payload::<String>() {
                listener.message(&payload);
            }
        }
        Ok(())
    }
}
