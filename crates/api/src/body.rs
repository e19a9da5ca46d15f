//! Reading a request body within a limit. A declared oversize body is
//! refused before any of it is read, a chunked one as soon as it crosses
//! the limit. A body sent before anyone is authenticated (inbound
//! callbacks, `/v1/auth/*`) also needs one of a fixed number of read slots
//! and must arrive within a deadline: however many clients send at once,
//! the server holds at most slots × limit bytes of such bodies, and a slow
//! sender cannot keep a slot. Every body, authenticated or not, also has
//! the connection's deadline (`server.body_timeout_secs`, enforced where
//! connections are served); past it, reading ends with [`BodyTimedOut`].

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::request::Parts;
use http::{header, HeaderValue, StatusCode};
use palisade_core::ApiError;
use tokio::sync::Semaphore;

/// Set by the `Auth` and `Sysadmin` extractors once a credential verified:
/// a body read without it counts as unauthenticated.
#[derive(Debug, Clone, Copy)]
pub struct CredentialVerified;

/// The read slots for unauthenticated bodies, shared by the process.
pub struct UnauthenticatedReads {
    slots: Arc<Semaphore>,
    deadline: Duration,
}

impl UnauthenticatedReads {
    pub fn new(slots: usize, deadline_secs: u64) -> UnauthenticatedReads {
        UnauthenticatedReads { slots: Arc::new(Semaphore::new(slots)), deadline: Duration::from_secs(deadline_secs) }
    }

    /// Slots free right now.
    pub fn available(&self) -> usize {
        self.slots.available_permits()
    }
}

/// The body, at most `limit` bytes of it.
pub async fn read(reads: &UnauthenticatedReads, parts: &Parts, body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let too_large = || ApiError::payload_too_large().with_extra("limit_bytes", limit);
    let declared = parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let read = async {
        axum::body::to_bytes(body, limit).await.map_err(|e| {
            if is_length_limit(&e) {
                too_large()
            } else if caused_by::<BodyTimedOut>(&e) {
                timed_out()
            } else {
                ApiError::validation("body", "The body could not be read.")
            }
        })
    };
    if parts.extensions.get::<CredentialVerified>().is_some() {
        return read.await;
    }
    // Refused rather than queued: a queue would hold the connections.
    let Ok(_slot) = reads.slots.try_acquire() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "Too many requests are sending a body at once; retry shortly.",
        )
        .with_header(header::RETRY_AFTER, HeaderValue::from_static("1"))
        .with_extra("retry_after", 1));
    };
    tokio::time::timeout(reads.deadline, read).await.unwrap_or_else(|_| Err(timed_out()))
}

fn timed_out() -> ApiError {
    ApiError::new(StatusCode::REQUEST_TIMEOUT, "request_timeout", "The request body did not arrive in time.")
}

/// The error a body gives when it arrives slower than the server allows
/// (`server.body_timeout_secs`, `server.body_min_bytes_per_sec`); the
/// connection serving it enforces this for every request.
#[derive(Debug)]
pub struct BodyTimedOut;

impl std::fmt::Display for BodyTimedOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the request body did not arrive in time")
    }
}

impl std::error::Error for BodyTimedOut {}

fn is_length_limit(e: &axum::Error) -> bool {
    caused_by::<http_body_util::LengthLimitError>(e)
}

fn caused_by<E: std::error::Error + 'static>(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if err.is::<E>() {
            return true;
        }
        source = err.source();
    }
    false
}
