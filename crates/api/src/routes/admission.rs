//! Admission control shared by everything that costs money (messages,
//! calls): idempotent retries, the sending identity and its checks, the
//! monthly budget and the debit. Each refusal charges and sends nothing.

use std::str::FromStr;

use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, HeaderValue, StatusCode};
use palisade_core::{ApiError, PrincipalKind, TenantScope};
use palisade_guard::limits::{Key, Kind, Limit};
use palisade_guard::phone::E164;
use palisade_guard::state::{Bucket, Decide};
use palisade_store::identities::IdentityRow;
use palisade_store::messages::IdempotentResponse;
use palisade_store::{StoreError, Tx};

use crate::extract::{Auth, UnscannedJson};
use crate::state::AppState;

pub const IDEMPOTENCY_TTL_MS: i64 = 24 * 3600 * 1000;

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

/// What an Idempotency-Key is bound to: the route, the credential that
/// sent it and the request's fields. The same key with anything else is
/// 409, so a key can neither replay another route's response nor let one
/// credential (an agent token) see another's.
pub fn request_hash(auth: &Auth, route: &str, fields: &[&str]) -> String {
    let actor = auth.principal.actor();
    let doc = serde_json::json!([route, actor.kind, actor.id, fields]);
    palisade_auth::token::sha256_hex(&doc.to_string())
}

/// The first response again, or 409 when the key came with another body.
pub fn replay(stored: IdempotentResponse, request_hash: &str) -> Result<Response, ApiError> {
    if stored.request_hash != request_hash {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request.",
        ));
    }
    let status = StatusCode::from_u16(u16::try_from(stored.status).unwrap_or(500)).map_err(ApiError::internal)?;
    let body: serde_json::Value = serde_json::from_str(&stored.response).map_err(ApiError::internal)?;
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
    let since = now - IDEMPOTENCY_TTL_MS;
    match palisade_store::messages::idempotent(state.db.reader(), scope, key, since).await? {
        Some(stored) => replay(stored, request_hash).map(Some),
        None => Ok(None),
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
    replay_if_known(state, scope, key, request_hash, now)
        .await?
        .ok_or_else(|| ApiError::conflict("A request with this Idempotency-Key is in progress."))
}

/// What the checks before the money admitted.
pub struct Admitted {
    pub identity: IdentityRow,
    pub to: E164,
}

/// A request that sends as one of the tenant's identities.
pub trait Sending {
    /// The sending identity: its id or its number.
    fn from(&self) -> &str;
    /// The E.164 destination.
    fn to(&self) -> &str;
}

/// The checks that need no transaction, in order: the sending identity
/// (an agent token only as its own), the kill-switch, a verified number
/// where the carrier requires one, the WAF's body check,
/// the destination, the identity's rate, the destination's country. The
/// body is returned once it passed the WAF.
pub async fn admit<R: Sending>(
    state: &AppState,
    auth: &Auth,
    scope: &TenantScope,
    body: UnscannedJson<R>,
    now: i64,
) -> Result<(R, Admitted), ApiError> {
    let identity = sending_identity(state, scope, body.peek().from()).await?;
    if let PrincipalKind::Agent { identity_id, .. } = auth.principal.kind() {
        if identity_id.to_string() != identity.id {
            return Err(auth.denied("An agent token acts only as its own identity."));
        }
    }
    if identity.status != "active" {
        return Err(ApiError::frozen());
    }
    // A number shown as the sender must be the tenant's to show.
    if identity.number_verified_at.is_none() && state.requires_verified_numbers() {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "number_not_verified",
            "The identity's number is not verified; verify it with POST /v1/identities/{id}/verification.",
        ));
    }
    let req = body.scan(state).await?;
    let to = palisade_guard::phone::parse_e164(req.to().trim()).map_err(|m| ApiError::validation("to", m))?;
    if let Some(limit) =
        identity.rate_per_second.and_then(|r| Limit::per_second("rate_per_second", u32::try_from(r).ok()?))
    {
        let id = uuid::Uuid::from_str(&identity.id).map_err(ApiError::internal)?;
        let bucket = [Bucket::enforce(Key::uuid(Kind::IdentityRate, id), limit)];
        let v = state
            .abuse
            .state
            .decide(Decide { partition: id.as_u128(), now_ms: now, blocks: &[], buckets: &bucket, notice_ms: 60_000 })
            .await
            .map_err(|_| state.abuse.unavailable())?;
        if let Some(i) = v.refused {
            let secs = v.standings[i].retry_after_ns.div_ceil(1_000_000_000).max(1);
            return Err(too_many("rate_per_second", "The identity's rate_per_second is exceeded.", Some(secs)));
        }
    }
    let allowed: Vec<String> = serde_json::from_str(&identity.allowed_countries).map_err(ApiError::internal)?;
    if !allowed.is_empty() && !allowed.contains(&to.country) {
        return Err(too_many("country_not_allowed", "The identity may not reach this country.", None));
    }
    Ok((req, Admitted { identity, to }))
}

/// The identity named by `from` (its id or its number), in the tenant.
async fn sending_identity(state: &AppState, scope: &TenantScope, from: &str) -> Result<IdentityRow, ApiError> {
    palisade_store::identities::find_sender(&state.db, scope, from.trim())
        .await?
        .ok_or_else(|| ApiError::validation("from", "is not one of your identities (id or number)"))
}

/// Counts `cost` against the identity's monthly budget, in `tx`; the
/// refusal to answer when it would pass it. (A store error, outside, may
/// be a conflict to run the transaction again for.)
pub async fn within_budget(
    tx: &mut Tx,
    identity: &IdentityRow,
    cost: i64,
    now: i64,
) -> Result<Result<(), ApiError>, StoreError> {
    if let Some(budget) = identity.monthly_budget {
        let month = palisade_core::clock::rfc3339(now)[..7].to_owned();
        if !palisade_store::messages::spend_within_budget(&mut **tx, &identity.id, &month, cost, budget).await? {
            return Ok(Err(too_many("monthly_budget", "The identity's monthly_budget would be exceeded.", None)));
        }
    }
    Ok(Ok(()))
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
        return Ok(Err(refusal("insufficient_credits", cost)));
    }
    Ok(Ok(()))
}

/// The answer for a guard of an atomic list that refused.
pub fn refusal(reason: &'static str, cost: i64) -> ApiError {
    match reason {
        "insufficient_credits" => {
            ApiError::new(StatusCode::PAYMENT_REQUIRED, "insufficient_credits", "The balance does not cover this.")
                .with_extra("cost", cost)
        }
        "monthly_budget" => too_many("monthly_budget", "The identity's monthly_budget would be exceeded.", None),
        "concurrent_calls" => too_many("concurrent_calls", "The tenant's concurrent-call quota is reached.", None),
        other => ApiError::internal(format!("unexpected refusal `{other}`")),
    }
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
    fn a_replay_is_the_first_answer_or_a_conflict() {
        let stored =
            || IdempotentResponse { request_hash: "h1".into(), status: 201, response: r#"{"id":"m1"}"#.into() };
        let resp = replay(stored(), "h1").unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(resp.headers()["idempotent-replayed"], "true");
        let e = replay(stored(), "h2").unwrap_err();
        assert_eq!((e.status(), e.reason()), (StatusCode::CONFLICT, "idempotency_key_reused"));
    }

    #[test]
    fn refusals_by_reason() {
        let e = refusal("insufficient_credits", 12);
        assert_eq!((e.status(), e.to_problem(None).extra["cost"].clone()), (StatusCode::PAYMENT_REQUIRED, 12.into()));
        for r in ["monthly_budget", "concurrent_calls"] {
            assert_eq!((refusal(r, 1).status(), refusal(r, 1).reason()), (StatusCode::TOO_MANY_REQUESTS, r));
        }
        assert_eq!(refusal("other", 1).reason(), "internal");
        let e = too_many("rate_per_second", "slow down", Some(3));
        assert_eq!(e.to_problem(None).extra["retry_after"], 3);
    }
}
