use std::fmt;

use axum::response::{IntoResponse, Response};
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;

use crate::permission::Permission;

/// One field that failed validation.
#[derive(Debug, Clone, Serialize, PartialEq, Eq, utoipa::ToSchema)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// The one error type of the API. Its client view is a whitelist: a reason,
/// a fixed title and a detail written for the caller. Anything unexpected
/// becomes `internal` with a generic detail; the cause goes to the log only.
#[derive(Debug, Clone)]
pub struct ApiError {
    status: StatusCode,
    reason: &'static str,
    detail: String,
    errors: Vec<FieldError>,
    extra: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(header::HeaderName, HeaderValue)>,
}

/// RFC 9457 problem document. Members that help the caller act on it
/// (`retry_after`, `limit`, `cost`, `limit_bytes`) come beside these.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct Problem {
    /// `urn:palisade:problem:` and the reason.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:palisade:problem:[a-z_]+$")]
    pub kind: String,
    pub title: String,
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    pub detail: String,
    /// What went wrong, as a word for programs (`validation_failed`, …).
    #[schema(pattern = "^[a-z_]+$")]
    pub reason: String,
    pub request_id: Option<String>,
    /// With `validation_failed`: each field that failed, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    #[serde(flatten)]
    #[schema(ignore)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

pub const PROBLEM_CONTENT_TYPE: &str = "application/problem+json";

impl ApiError {
    pub fn new(status: StatusCode, reason: &'static str, detail: impl Into<String>) -> Self {
        Self {
            status,
            reason,
            detail: detail.into(),
            errors: Vec::new(),
            extra: serde_json::Map::new(),
            headers: Vec::new(),
        }
    }

    /// Same body for every unknown, expired, revoked, malformed or misplaced
    /// credential: no oracle telling which.
    pub fn unauthenticated() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthenticated", "A valid credential is required.")
            .with_header(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// A presented access token that is ours and past its expiry (RFC 6750
    /// `invalid_token`). Its signature proves we issued it and anyone holding
    /// it can read its `exp`, so naming the cause tells nothing; it tells a
    /// client to refresh rather than to log in again.
    pub fn token_expired() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthenticated",
            "The access token has expired; refresh it or log in again.",
        )
        .with_header(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Bearer error="invalid_token", error_description="The access token expired""#),
        )
    }

    pub fn forbidden(permission: Permission) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", format!("This credential lacks the `{permission}` permission."))
    }

    /// A second factor is missing, or not recent enough for this operation.
    pub fn mfa_required(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "mfa_required", detail)
    }

    pub fn forbidden_because(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", detail)
    }

    /// Same body for a missing resource and another tenant's resource.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "The resource does not exist.")
    }

    pub fn validation(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation_many(vec![FieldError { field: field.into(), message: message.into() }])
    }

    pub fn validation_many(errors: Vec<FieldError>) -> Self {
        let mut e = Self::new(StatusCode::BAD_REQUEST, "validation_failed", "The request is not valid; see `errors`.");
        e.errors = errors;
        e
    }

    pub fn conflict(detail: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", detail)
    }

    pub fn frozen() -> Self {
        Self::new(StatusCode::LOCKED, "frozen", "This account, credential or identity is frozen.")
    }

    pub fn payload_too_large() -> Self {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "The request body exceeds the size limit.")
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "Send the body as `application/json`.")
    }

    /// Logs the cause with the caller's location; the client sees nothing of it.
    #[track_caller]
    pub fn internal(cause: impl fmt::Display) -> Self {
        let loc = std::panic::Location::caller();
        tracing::error!(location = %loc, error = %cause, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "An internal error occurred. It has been logged.")
    }

    /// The canonical problem for a bare status produced outside our handlers
    /// (router 404/405, body limits).
    pub fn from_status(status: StatusCode) -> Self {
        match status.as_u16() {
            400 => Self::validation("body", "The request could not be read."),
            401 => Self::unauthenticated(),
            404 => Self::not_found(),
            405 => Self::new(status, "method_not_allowed", "This method is not allowed on this path."),
            413 => Self::payload_too_large(),
            415 => Self::unsupported_media_type(),
            503 => Self::new(status, "unavailable", "The service is temporarily unavailable. Try again shortly."),
            s if s >= 500 => Self::new(status, "internal", "An internal error occurred. It has been logged."),
            _ => Self::new(status, "error", status.canonical_reason().unwrap_or("Error")),
        }
    }

    pub fn with_extra(mut self, key: &str, value: impl Into<serde_json::Value>) -> Self {
        self.extra.insert(key.to_owned(), value.into());
        self
    }

    pub fn with_header(mut self, name: header::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }

    pub fn reason(&self) -> &'static str {
        self.reason
    }

    pub fn errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Seconds to wait, when the refusal says (`retry_after`).
    pub fn retry_after(&self) -> Option<u64> {
        self.extra.get("retry_after").and_then(serde_json::Value::as_u64)
    }

    pub fn to_problem(&self, request_id: Option<String>) -> Problem {
        Problem {
            kind: format!("urn:palisade:problem:{}", self.reason),
            title: title(self.reason).to_owned(),
            status: self.status.as_u16(),
            detail: self.detail.clone(),
            reason: self.reason.to_owned(),
            request_id,
            errors: self.errors.clone(),
            extra: self.extra.clone(),
        }
    }
}

fn title(reason: &str) -> &'static str {
    match reason {
        "unauthenticated" => "Unauthenticated",
        "forbidden" => "Forbidden",
        "not_found" => "Not found",
        "validation_failed" => "Validation failed",
        "payload_too_large" => "Payload too large",
        "unsupported_media_type" => "Unsupported media type",
        "conflict" => "Conflict",
        "frozen" => "Frozen",
        "method_not_allowed" => "Method not allowed",
        "rate_limited" => "Too many requests",
        "blocked" => "Blocked",
        "rate_per_second" => "Identity rate exceeded",
        "monthly_budget" => "Monthly budget exceeded",
        "country_not_allowed" => "Country not allowed",
        "concurrent_calls" => "Too many concurrent calls",
        "insufficient_credits" => "Insufficient credits",
        "idempotency_key_reused" => "Idempotency key reused",
        "internal" => "Internal error",
        "unavailable" => "Service unavailable",
        "request_timeout" => "Request timeout",
        "upgrade_required" => "Upgrade required",
        "mfa_required" => "Second factor required",
        "reauthentication_required" => "Sign in again",
        "sso_required" => "Single sign-on required",
        _ => "Error",
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}: {}", self.status.as_u16(), self.reason, self.detail)
    }
}

impl std::error::Error for ApiError {}

tokio::task_local! {
    /// The id of the request being served; set by the request middleware so
    /// that every problem document carries it.
    pub static REQUEST_ID: String;
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let request_id = REQUEST_ID.try_with(Clone::clone).ok();
        let body = serde_json::to_vec(&self.to_problem(request_id)).unwrap_or_default();
        let mut resp = (self.status, body).into_response();
        let h = resp.headers_mut();
        h.insert(header::CONTENT_TYPE, HeaderValue::from_static(PROBLEM_CONTENT_TYPE));
        for (k, v) in self.headers {
            h.insert(k, v);
        }
        resp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_back_from_the_problem() {
        let e =
            ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down").with_extra("retry_after", 7u64);
        assert_eq!(e.retry_after(), Some(7));
        assert_eq!(ApiError::not_found().retry_after(), None);
        let odd = ApiError::not_found().with_extra("retry_after", "soon");
        assert_eq!(odd.retry_after(), None);
    }

    #[test]
    fn problem_shape() {
        let p = ApiError::validation("email", "bad").to_problem(Some("r1".into()));
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["type"], "urn:palisade:problem:validation_failed");
        assert_eq!(v["status"], 400);
        assert_eq!(v["reason"], "validation_failed");
        assert_eq!(v["request_id"], "r1");
        assert_eq!(v["errors"][0]["field"], "email");
    }

    #[test]
    fn bare_statuses_get_their_problem() {
        for (status, reason, title) in [
            (400, "validation_failed", "Validation failed"),
            (401, "unauthenticated", "Unauthenticated"),
            (404, "not_found", "Not found"),
            (405, "method_not_allowed", "Method not allowed"),
            (413, "payload_too_large", "Payload too large"),
            (415, "unsupported_media_type", "Unsupported media type"),
            (418, "error", "Error"),
            (500, "internal", "Internal error"),
            (502, "internal", "Internal error"),
            (503, "unavailable", "Service unavailable"),
        ] {
            let e = ApiError::from_status(StatusCode::from_u16(status).unwrap());
            assert_eq!((e.status().as_u16(), e.reason()), (status, reason), "{status}");
            assert_eq!(e.to_problem(None).title, title, "{status}");
        }
        assert_eq!(ApiError::from_status(StatusCode::IM_A_TEAPOT).to_problem(None).detail, "I'm a teapot");
    }

    #[test]
    fn every_reason_has_its_title() {
        for (reason, title) in [
            ("unauthenticated", "Unauthenticated"),
            ("forbidden", "Forbidden"),
            ("not_found", "Not found"),
            ("validation_failed", "Validation failed"),
            ("payload_too_large", "Payload too large"),
            ("unsupported_media_type", "Unsupported media type"),
            ("conflict", "Conflict"),
            ("frozen", "Frozen"),
            ("method_not_allowed", "Method not allowed"),
            ("rate_limited", "Too many requests"),
            ("blocked", "Blocked"),
            ("rate_per_second", "Identity rate exceeded"),
            ("monthly_budget", "Monthly budget exceeded"),
            ("country_not_allowed", "Country not allowed"),
            ("concurrent_calls", "Too many concurrent calls"),
            ("insufficient_credits", "Insufficient credits"),
            ("idempotency_key_reused", "Idempotency key reused"),
            ("internal", "Internal error"),
            ("unavailable", "Service unavailable"),
            ("request_timeout", "Request timeout"),
            ("upgrade_required", "Upgrade required"),
            ("mfa_required", "Second factor required"),
            ("reauthentication_required", "Sign in again"),
            ("sso_required", "Single sign-on required"),
            ("anything_else", "Error"),
        ] {
            assert_eq!(ApiError::new(StatusCode::BAD_REQUEST, reason, "d").to_problem(None).title, title);
        }
        let e = ApiError::mfa_required("step up");
        assert_eq!(
            (e.status().as_u16(), e.reason(), e.to_problem(None).detail.as_str()),
            (403, "mfa_required", "step up")
        );
    }

    #[test]
    fn accessors_and_display() {
        let e = ApiError::validation("email", "bad");
        assert_eq!(e.errors(), &[FieldError { field: "email".into(), message: "bad".into() }]);
        assert_eq!(e.to_string(), "400 validation_failed: The request is not valid; see `errors`.");
        let e = ApiError::forbidden(Permission::KeysManage);
        assert_eq!((e.status(), e.reason()), (StatusCode::FORBIDDEN, "forbidden"));
        assert_eq!(e.to_problem(None).detail, "This credential lacks the `keys:manage` permission.");
    }

    #[tokio::test]
    async fn the_response_is_the_problem() {
        let e = ApiError::unauthenticated().with_extra("retry_after", 3);
        let resp = REQUEST_ID.sync_scope("r9".to_owned(), || e.into_response());
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(resp.headers()[header::CONTENT_TYPE], PROBLEM_CONTENT_TYPE);
        assert_eq!(resp.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16).await.unwrap();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["reason"], "unauthenticated");
        assert_eq!(v["request_id"], "r9");
        assert_eq!(v["retry_after"], 3);
        assert!(v.get("errors").is_none());
    }

    #[test]
    fn internal_hides_cause() {
        let p = ApiError::internal("SELECT * FROM secrets at /etc/x").to_problem(None);
        let s = serde_json::to_string(&p).unwrap();
        assert!(!s.contains("SELECT") && !s.contains("/etc"));
    }
}
