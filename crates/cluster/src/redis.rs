//! The Redis connection, built from `[redis]`.

use std::time::Duration;

use palisade_config::Redis as RedisConfig;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

pub use redis::{Client, RedisError};

/// `redis.url` is not set, or not a Redis URL. Never holds the URL (it may
/// hold a password).
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// A client for `redis.url` (plain or TLS, with its user and password),
/// e.g. for a pub/sub connection. Connects nothing yet.
pub fn client(config: &RedisConfig) -> Result<Client, ConfigError> {
    let url = config.url.as_ref().ok_or_else(|| ConfigError("redis.url is not set".into()))?;
    palisade_config::redis_url_info(url.expose()).map_err(|m| ConfigError(format!("redis.url: {m}")))?;
    // rustls needs a process-wide crypto provider; ring, as elsewhere. An
    // error means one is installed already.
    let _ = rustls::crypto::ring::default_provider().install_default();
    // The crate's own message may quote the URL: replaced by a plain one.
    Client::open(url.expose()).map_err(|e| ConfigError(format!("redis.url is not usable ({:?})", e.kind())))
}

/// A multiplexed connection that reconnects by itself: one attempt each
/// time a call finds it broken (the caller decides how often to call while
/// Redis is down). Connects lazily, so a server starts while Redis is
/// down, degraded.
pub fn connect(config: &RedisConfig) -> Result<ConnectionManager, ConfigError> {
    let settings = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_millis(config.connect_timeout_ms)))
        .set_response_timeout(Some(Duration::from_millis(config.timeout_ms)))
        .set_number_of_retries(0);
    ConnectionManager::new_lazy_with_config(client(config)?, settings)
        .map_err(|e| ConfigError(format!("cannot set up the Redis connection ({:?})", e.kind())))
}

/// Whether Redis answers a PING within `timeout`.
pub async fn ping(conn: &ConnectionManager, timeout: Duration) -> bool {
    let mut conn = conn.clone();
    let cmd = redis::cmd("PING");
    matches!(tokio::time::timeout(timeout, cmd.query_async::<String>(&mut conn)).await, Ok(Ok(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use palisade_config::Secret;

    fn config(url: &str) -> RedisConfig {
        RedisConfig {
            url: Some(Secret::new(url.to_owned())),
            connect_timeout_ms: 500,
            timeout_ms: 500,
            ..Default::default()
        }
    }

    #[test]
    fn config_errors_show_their_message_and_never_the_url() {
        assert_eq!(ConfigError("redis.url is not set".into()).to_string(), "redis.url is not set");
        let e = client(&RedisConfig::default()).expect_err("no url");
        assert_eq!(e.to_string(), "redis.url is not set");
        let e = client(&config("http://user:hunter2@127.0.0.1/")).expect_err("not a Redis URL");
        assert!(e.to_string().starts_with("redis.url"), "{e}");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }

    /// Nothing listens on port 1: the ping fails, within its timeout.
    #[tokio::test]
    async fn ping_is_false_when_nothing_answers() {
        let conn = connect(&config("redis://127.0.0.1:1")).unwrap();
        assert!(!ping(&conn, Duration::from_millis(500)).await);
    }

    #[tokio::test]
    #[cfg_attr(not(redis_tests), ignore = "PALISADE_TEST_REDIS_URL was not set at build time")]
    async fn ping_is_true_when_redis_answers() {
        let url = std::env::var("PALISADE_TEST_REDIS_URL").expect("PALISADE_TEST_REDIS_URL is not set");
        let conn = connect(&config(&url)).unwrap();
        assert!(ping(&conn, Duration::from_secs(5)).await);
    }
}
