//! Carriers behind one trait, and the built-in sandbox carrier that makes
//! everything work with no account.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message handed to a carrier after admission.
#[derive(Debug, Clone)]
pub struct OutboundMessage {
    pub id: String,
    pub from: String,
    pub to: String,
    pub body: String,
}

/// What went wrong, in words fit for a client: a carrier's own message and
/// any credential stay in the log, never in these.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CarrierError {
    #[error("the destination rejected the message")]
    Undeliverable,
    #[error("the carrier did not answer in time")]
    Timeout,
    #[error("the carrier is unavailable")]
    Unavailable,
}

impl CarrierError {
    /// A stable code for APIs and events.
    pub fn code(&self) -> &'static str {
        match self {
            CarrierError::Undeliverable => "undeliverable",
            CarrierError::Timeout => "carrier_timeout",
            CarrierError::Unavailable => "carrier_unavailable",
        }
    }
}

pub trait Carrier: Send + Sync + 'static {
    /// Hands the message over; `Ok` is the carrier's reference for it.
    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>>;

    /// Whether a message the carrier accepted reached the handset (the
    /// delivery report).
    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>>;
}

/// Numbers the sandbox treats specially: North American 555-01XX numbers,
/// reserved for fiction (valid in the numbering plan, never anyone's phone).
pub mod magic {
    /// Accepted, then the delivery report says undeliverable.
    pub const FAILS: &str = "+12025550101";
    /// The carrier times out.
    pub const TIMES_OUT: &str = "+12025550102";
    /// Calls to it are busy.
    pub const BUSY: &str = "+12025550103";
}

/// Accepts every message at once and reports delivery after `delay`, except
/// for the [`magic`] numbers.
#[derive(Debug, Clone)]
pub struct SandboxCarrier {
    pub delay: Duration,
}

impl Carrier for SandboxCarrier {
    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>> {
        Box::pin(async move {
            if m.to == magic::TIMES_OUT {
                return Err(CarrierError::Timeout);
            }
            Ok(format!("sandbox-{}", m.id))
        })
    }

    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            if m.to == magic::FAILS {
                Err(CarrierError::Undeliverable)
            } else {
                Ok(())
            }
        })
    }
}
