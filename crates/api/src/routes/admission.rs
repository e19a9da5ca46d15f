//! The HTTP side of admission ([`palisade_admission`]): the
//! `Idempotency-Key` header, a replay as a response, and each refusal as
//! its problem. The rules themselves live in the service.

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, HeaderValue, StatusCode};
use palisade_admission::idempotency::{self, Known};
use palisade_admission::{Answer, Caller, Outcome, Refusal};
use palisade_core::{ApiError, TenantScope};
use palisade_store::{StoreError, Tx};

use crate::extract::Auth;
use crate::state::AppState;

pub const IDEMPOTENCY_TTL_MS: i64 = idempotency::TTL_MS;

/// The detail of an agent token's refusal to send as another identity.
const AGENT_ONLY: &str = "An agent token acts only as its own identity.";

pub fn too_many(reason: &'static str, detail: &str, retry_after: Option<u64>) -> ApiError {
    let e = ApiError::new(StatusCode::TOO_MANY_REQUESTS, reason, detail);
    match retry_after {
        Some(s) => e.with_header(http::header::RETRY_AFTER, HeaderValue::from(s)).with_extra("retry_after", s),
        None => e,
    }
}

/// The `Idempotency-Key` header: 1 to 255 visible ASCII characters.
pub fn idempotency_key(h: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = h.get("idempotency-key") else { return Ok(None) };
    let ok = v.to_str().ok().filter(|s| !s.is_empty() && s.len() <= 255 && s.bytes().all(|b| b.is_ascii_graphic()));
    ok.map(|s| Some(s.to_owned()))
        .ok_or_else(|| ApiError::validation("Idempotency-Key", "must be 1 to 255 visible ASCII characters"))
}

/// The caller of an admission, as authenticated.
pub fn caller<'a>(auth: &'a Auth, scope: &'a TenantScope) -> Result<Caller<'a>, ApiError> {
    Caller::new(&auth.principal, scope, &auth.ctx.audit, auth.concurrent_calls)
        .ok_or_else(|| ApiError::internal("admission scope is not the principal's tenant"))
}

/// How a record is stored with its key: 201 and its view.
pub fn created(view: impl serde::Serialize) -> Answer {
    Answer { status: 201, body: serde_json::json!(view).to_string() }
}

/// The answer to an admission: `admitted` for a new record, the first
/// response again, or the refusal's problem.
pub fn respond<T>(
    state: &AppState,
    auth: &Auth,
    outcome: Outcome<T, ApiError>,
    admitted: impl FnOnce(T) -> Response,
) -> Result<Response, ApiError> {
    match outcome {
        Outcome::Admitted(t) => Ok(admitted(t)),
        Outcome::Replayed(a) => replay(a),
        Outcome::Refused(r) => Err(refused(r, |detail| auth.denied(detail), || state.abuse.unavailable())),
    }
}

/// A refusal as its problem. An agent's refusal is audited as a denial
/// (`denied`); `unavailable` carries the configured Retry-After.
fn refused(
    r: Refusal<ApiError>,
    denied: impl FnOnce(&'static str) -> ApiError,
    unavailable: impl FnOnce() -> ApiError,
) -> ApiError {
    let reason = r.reason();
    match r {
        Refusal::Invalid { field, message } => ApiError::validation(field, message),
        Refusal::NotOwnIdentity => denied(AGENT_ONLY),
        Refusal::Frozen => ApiError::frozen(),
        Refusal::NumberNotVerified => ApiError::new(
            StatusCode::FORBIDDEN,
            reason,
            "The identity's number is not verified; verify it with POST /v1/identities/{id}/verification.",
        ),
        Refusal::Screened(e) => e,
        Refusal::RatePerSecond { retry_after } => {
            too_many(reason, "The identity's rate_per_second is exceeded.", Some(retry_after))
        }
        Refusal::CountryNotAllowed => too_many(reason, "The identity may not reach this country.", None),
        Refusal::MonthlyBudget => too_many(reason, "The identity's monthly_budget would be exceeded.", None),
        Refusal::ConcurrentCalls => too_many(reason, "The tenant's concurrent-call quota is reached.", None),
        Refusal::InsufficientCredits { cost } => insufficient_credits(cost),
        Refusal::KeyReused => key_reused(),
        Refusal::KeyInProgress => key_in_progress(),
        Refusal::Unavailable => unavailable(),
    }
}

fn key_reused() -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        "idempotency_key_reused",
        "This Idempotency-Key was used with a different request.",
    )
}

fn key_in_progress() -> ApiError {
    ApiError::conflict("A request with this Idempotency-Key is in progress.")
}

fn insufficient_credits(cost: i64) -> ApiError {
    ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", "The balance does not cover this.")
        .with_extra("cost", cost)
}

/// The first response again, marked as a replay.
pub fn replay(a: Answer) -> Result<Response, ApiError> {
    let status = StatusCode::from_u16(u16::try_from(a.status).unwrap_or(500)).map_err(ApiError::internal)?;
    let body: serde_json::Value = serde_json::from_str(&a.body).map_err(ApiError::internal)?;
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    Ok(resp)
}

/// The first response for `key` again (or 409 when it came with another
/// request); `None` when the key is new.
pub async fn replay_if_known(
    state: &AppState,
    scope: &TenantScope,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<Option<Response>, ApiError> {
    match idempotency::look_up(&state.db, &state.keys, scope, key, request_hash, now).await? {
        Known::New => Ok(None),
        Known::Replay(a) => replay(a).map(Some),
        Known::Reused => Err(key_reused()),
    }
}

/// The answer when a concurrent request with the same key was first.
pub async fn replay_winner(
    state: &AppState,
    scope: &TenantScope,
    key: &str,
    request_hash: &str,
    now: i64,
) -> Result<Response, ApiError> {
    replay_if_known(state, scope, key, request_hash, now).await?.ok_or_else(key_in_progress)
}

/// Debits `cost` in `tx`; 402 to answer when the credits do not cover it.
pub async fn debit(
    tx: &mut Tx,
    scope: &TenantScope,
    cost: i64,
    reason: &str,
    reference: &str,
    now: i64,
) -> Result<Result<(), ApiError>, StoreError> {
    if cost > 0 && !palisade_store::credits::debit(&mut **tx, scope, cost, reason, reference, now).await? {
        return Ok(Err(insufficient_credits(cost)));
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_kept_a_day() {
        assert_eq!(IDEMPOTENCY_TTL_MS, 86_400_000);
    }

    #[test]
    fn idempotency_keys_are_visible_ascii() {
        let key = |v: &[u8]| {
            let mut h = HeaderMap::new();
            h.insert("idempotency-key", HeaderValue::from_bytes(v).unwrap());
            idempotency_key(&h)
        };
        assert_eq!(idempotency_key(&HeaderMap::new()).unwrap(), None);
        let longest = "k".repeat(255);
        for ok in ["a", "order-1234", "~!#", longest.as_str()] {
            assert_eq!(key(ok.as_bytes()).unwrap().as_deref(), Some(ok));
        }
        for bad in [&b""[..], b"a b", b"\t", "k".repeat(256).as_bytes(), "caf\u{e9}".as_bytes()] {
            let e = key(bad).unwrap_err();
            assert_eq!((e.reason(), e.errors()[0].field.as_str()), ("validation_failed", "Idempotency-Key"));
        }
    }

    #[test]
    fn a_replay_is_the_first_answer() {
        let resp = replay(Answer { status: 201, body: r#"{"id":"m1"}"#.into() }).unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["idempotent-replayed"], "true");
    }

    fn problem(r: Refusal<ApiError>) -> ApiError {
        refused(r, ApiError::forbidden_because, || ApiError::from_status(StatusCode::SERVICE_UNAVAILABLE))
    }

    #[test]
    fn refusals_by_reason() {
        let e = problem(Refusal::InsufficientCredits { cost: 12 });
        assert_eq!((e.status(), e.to_problem(None).extra["cost"].clone()), (StatusCode::PAYMENT_REQUIRED, 12.into()));
        for r in [Refusal::MonthlyBudget, Refusal::ConcurrentCalls, Refusal::CountryNotAllowed] {
            let reason = r.reason();
            let e = problem(r);
            assert_eq!((e.status(), e.reason()), (StatusCode::TOO_MANY_REQUESTS, reason));
            assert!(!e.to_problem(None).extra.contains_key("retry_after"));
        }
        let e = problem(Refusal::RatePerSecond { retry_after: 3 });
        assert_eq!((e.status(), e.reason()), (StatusCode::TOO_MANY_REQUESTS, "rate_per_second"));
        assert_eq!(e.to_problem(None).extra["retry_after"], 3);
        let statuses = [
            (Refusal::Frozen, StatusCode::LOCKED, "frozen"),
            (Refusal::NumberNotVerified, StatusCode::FORBIDDEN, "number_not_verified"),
            (Refusal::NotOwnIdentity, StatusCode::FORBIDDEN, "forbidden"),
            (Refusal::KeyReused, StatusCode::CONFLICT, "idempotency_key_reused"),
            (Refusal::KeyInProgress, StatusCode::CONFLICT, "conflict"),
            (Refusal::Unavailable, StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            (
                Refusal::Screened(ApiError::new(StatusCode::BAD_REQUEST, "blocked", "x")),
                StatusCode::BAD_REQUEST,
                "blocked",
            ),
        ];
        for (r, status, reason) in statuses {
            let e = problem(r);
            assert_eq!((e.status(), e.reason()), (status, reason));
        }
        let e = problem(Refusal::Invalid { field: "to", message: "bad".into() });
        assert_eq!((e.reason(), e.errors()[0].field.as_str()), ("validation_failed", "to"));
    }
}
