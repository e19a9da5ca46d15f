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
                backoff = next_backoff(backoff);
            }
        })
    }

    /// How long subscribing may take: connecting, and the SUBSCRIBE's
    /// answer, each a round trip of up to `timeout`.
    fn subscribe_timeout(&self) -> Duration {
        self.timeout * 4
    }

    /// One subscription: returns when its connection ends.
    async fn session(&self, listener: &dyn Listener) -> Result<(), String> {
        let connecting = async {
            let mut pubsub = self.client.get_async_pubsub().await?;
            pubsub.subscribe(&self.channel).await?;
            Ok::<_, redis::RedisError>(pubsub)
        };
        let pubsub = tokio::time::timeout(self.subscribe_timeout(), connecting)
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

/// The pause before the next subscription after one is lost: twice the
/// last, at most 5 s.
fn next_backoff(backoff: Duration) -> Duration {
    (backoff * 2).min(Duration::from_secs(5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use tokio::sync::mpsc;

    #[test]
    fn the_pause_doubles_up_to_five_seconds() {
        assert_eq!(next_backoff(Duration::from_millis(100)), Duration::from_millis(200));
        assert_eq!(next_backoff(Duration::from_millis(1600)), Duration::from_millis(3200));
        assert_eq!(next_backoff(Duration::from_millis(3200)), Duration::from_secs(5));
        assert_eq!(next_backoff(Duration::from_secs(5)), Duration::from_secs(5));
    }

    #[tokio::test]
    async fn subscribing_may_take_four_round_trips() {
        let config = RedisConfig {
            url: Some(palisade_config::Secret::new("redis://127.0.0.1:1".to_owned())),
            timeout_ms: 250,
            ..Default::default()
        };
        let b = Broadcast::new(&config, "t").unwrap();
        assert_eq!(b.subscribe_timeout(), Duration::from_millis(1000));
        assert_eq!(b.channel, format!("{}:t", config.key_prefix));
    }

    /// Reports what the listener hears on a channel.
    struct Heard(Mutex<mpsc::UnboundedSender<Option<String>>>);

    impl Listener for Heard {
        fn live(&self, live: bool) {
            if live {
                let _ = self.0.lock().unwrap().send(None);
            }
        }
        fn message(&self, payload: &str) {
            let _ = self.0.lock().unwrap().send(Some(payload.to_owned()));
        }
    }

    fn config(url: String, prefix: &str) -> RedisConfig {
        RedisConfig {
            url: Some(palisade_config::Secret::new(url)),
            key_prefix: prefix.to_owned(),
            timeout_ms: 400,
            ..Default::default()
        }
    }

    fn test_url() -> String {
        std::env::var("PALISADE_TEST_REDIS_URL").expect("PALISADE_TEST_REDIS_URL is not set")
    }

    async fn next(rx: &mut mpsc::UnboundedReceiver<Option<String>>) -> Option<String> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("nothing heard").expect("closed")
    }

    /// A message published by one instance reaches the listener of
    /// another under the same prefix and name, and no other.
    #[tokio::test]
    #[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
    async fn a_published_message_reaches_the_listeners() {
        let prefix = format!("test-{:016x}", rand::random::<u64>());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let listening = Arc::new(Broadcast::new(&config(test_url(), &prefix), "bus").unwrap());
        let task = listening.listen(Arc::new(Heard(Mutex::new(tx))));
        assert_eq!(next(&mut rx).await, None, "subscribed");
        let other = Broadcast::new(&config(test_url(), &format!("{prefix}-other")), "bus").unwrap();
        other.publish("not for you");
        let sender = Broadcast::new(&config(test_url(), &prefix), "bus").unwrap();
        sender.publish("revoked 42");
        assert_eq!(next(&mut rx).await.as_deref(), Some("revoked 42"));
        task.abort();
    }

    /// Subscribing through a link that answers late (300 ms, more than a
    /// quarter of the 400 ms `timeout`) succeeds: subscribing may take
    /// four timeouts.
    #[tokio::test]
    #[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
    async fn a_slow_subscription_is_waited_for() {
        let upstream = test_url().trim_start_matches("redis://").split('/').next().unwrap().to_owned();
        let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = proxy.local_addr().unwrap().port();
        let relay = tokio::spawn(async move {
            loop {
                let (mut client, _) = proxy.accept().await.unwrap();
                let upstream = upstream.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    let mut server = tokio::net::TcpStream::connect(upstream).await.unwrap();
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        let prefix = format!("test-{:016x}", rand::random::<u64>());
        let (tx, mut rx) = mpsc::unbounded_channel();
        let b = Arc::new(Broadcast::new(&config(format!("redis://127.0.0.1:{port}"), &prefix), "bus").unwrap());
        let task = b.listen(Arc::new(Heard(Mutex::new(tx))));
        let subscribed = tokio::time::timeout(Duration::from_secs(3), rx.recv()).await;
        assert_eq!(subscribed.ok().flatten(), Some(None), "not subscribed in time");
        task.abort();
        relay.abort();
    }
}
