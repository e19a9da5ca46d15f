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

/// A call handed to a carrier after admission.
#[derive(Debug, Clone)]
pub struct OutboundCall {
    pub id: String,
    pub from: String,
    pub to: String,
    /// The caller's session description (SDP), passed through as it is:
    /// none from the API.
    pub offer: Option<Vec<u8>>,
}

/// How the callee answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallAnswer {
    /// With the callee's session description, if it sent one.
    Answered {
        sdp: Option<Vec<u8>>,
    },
    Busy,
}

pub trait Carrier: Send + Sync + 'static {
    /// Places the call and waits until it is answered or refused.
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>>;

    /// Resolves when the callee of an answered call hangs up (the sandbox's
    /// after its call length; a trunk's when its BYE comes); never when
    /// nothing ends it from the far side.
    fn callee_hangs_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, ()>;

    /// Ends the call at the carrier (a hang-up through the API): billing
    /// stops in the database, so the line must stop too.
    fn hang_up<'a>(&'a self, call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Hands the message over; `Ok` is the carrier's reference for it.
    fn send_message<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<String, CarrierError>>;

    /// Whether a message the carrier accepted reached the handset (the
    /// delivery report).
    fn delivery_report<'a>(&'a self, m: &'a OutboundMessage) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Delivers a text from the platform itself (a one-time code proving
    /// control of a number), not from any tenant's identity.
    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>>;

    /// Whether what it sends reaches real phones. A carrier that does
    /// lets an identity send only once its number is verified: a number
    /// shown as the sender must be its tenant's to show.
    fn reaches_phones(&self) -> bool;
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

/// Accepts every message at once and reports delivery after `delay`;
/// answers calls after `delay` and hangs up after `call_length`; except for
/// the [`magic`] numbers.
#[derive(Debug, Clone)]
pub struct SandboxCarrier {
    pub delay: Duration,
    pub call_length: Duration,
    /// Where the sandbox's handsets receive the platform's codes, one file
    /// each (mode 0600), as the dev outbox receives mail; none: dropped.
    pub handset_dir: Option<std::path::PathBuf>,
}

impl Carrier for SandboxCarrier {
    fn place_call<'a>(&'a self, c: &'a OutboundCall) -> BoxFut<'a, Result<CallAnswer, CarrierError>> {
        Box::pin(async move {
            tokio::time::sleep(self.delay).await;
            match c.to.as_str() {
                magic::BUSY => Ok(CallAnswer::Busy),
                magic::FAILS => Err(CarrierError::Undeliverable),
                magic::TIMES_OUT => Err(CarrierError::Timeout),
                _ => Ok(CallAnswer::Answered { sdp: None }),
            }
        })
    }

    fn callee_hangs_up<'a>(&'a self, _call_id: &'a str) -> BoxFut<'a, ()> {
        Box::pin(tokio::time::sleep(self.call_length))
    }

    fn hang_up<'a>(&'a self, _call_id: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        // The sandbox's calls exist only in the database.
        Box::pin(std::future::ready(Ok(())))
    }

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

    fn send_code<'a>(&'a self, to: &'a str, text: &'a str) -> BoxFut<'a, Result<(), CarrierError>> {
        Box::pin(async move {
            match to {
                magic::TIMES_OUT => return Err(CarrierError::Timeout),
                magic::FAILS => return Err(CarrierError::Undeliverable),
                _ => {}
            }
            let Some(dir) = self.handset_dir.clone() else { return Ok(()) };
            let content = format!("To: {to}\n\n{text}\n");
            tokio::task::spawn_blocking(move || write_private(&dir, content.as_bytes()))
                .await
                .map_err(|_| CarrierError::Unavailable)?
                .map_err(|e| {
                    tracing::warn!(error = %e, "the sandbox could not write a code to its handset folder");
                    CarrierError::Unavailable
                })
        })
    }

    fn reaches_phones(&self) -> bool {
        false
    }
}

/// A new file in `dir` (created 0700) that only the server can read.
fn write_private(dir: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        opts.mode(0o600);
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let name = format!("sms-{now}-{}.txt", uuid::Uuid::now_v7());
    opts.open(dir.join(name))?.write_all(bytes)
}
