//! Signed callbacks from carriers and payment providers
//! (`POST /v1/inbound/{provider}`). The signature is the credential: the
//! Standard Webhooks headers with the provider's shared secret, inside the
//! configured timestamp window. Every callback is stored with its verdict
//! (rejected ones too, for forensics); only verified ones act, and a
//! payment acts once per provider event id.

use axum::extract::{Path, Request, State};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_audit::Event;
use palisade_config::InboundKind;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, TenantId, TenantScope};
use palisade_store::webhooks::{self as store, NewInbound};
use palisade_store::Stmt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{PathId, Sysadmin};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct InboundResult {
    /// The stored callback's id (for the operator's replay).
    id: String,
    /// `credited`, `duplicate`, `ignored`, `status_recorded`,
    /// `unknown_tenant`, `unknown_message` or `invalid_payload`.
    outcome: String,
}

/// `message.status` from a carrier.
#[derive(Deserialize)]
struct CarrierStatus {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<CarrierStatusData>,
}

#[derive(Deserialize)]
struct CarrierStatusData {
    message_id: String,
    status: String,
}

/// `payment.succeeded` from a payment provider.
#[derive(Deserialize)]
struct Payment {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<PaymentData>,
}

#[derive(Deserialize)]
struct PaymentData {
    tenant_id: String,
    amount: i64,
}

const HEADERS_KEPT: &[&str] = &["webhook-id", "webhook-timestamp", "webhook-signature", "content-type", "user-agent"];

/// What is kept of a rejected callback's body: anyone can send those, so
/// only its start, with the whole body's length and SHA-256.
const REJECTED_BODY_KEPT: usize = 4096;

fn kept_headers(headers: &HeaderMap, body: &[u8], rejected: bool) -> String {
    let mut m = serde_json::Map::new();
    if rejected {
        m.insert("body_bytes".into(), body.len().into());
        m.insert("body_sha256".into(), palisade_auth::token::sha256_hex_bytes(body).into());
    }
    for name in HEADERS_KEPT {
        if let Some(v) = headers.get(*name).and_then(|v| v.to_str().ok()) {
            m.insert((*name).into(), v.chars().take(512).collect::<String>().into());
        }
    }
    serde_json::Value::Object(m).to_string()
}

/// The raw body as stored: itself when it is UTF-8, else `base64:…`.
fn stored_payload(body: &[u8]) -> String {
    match std::str::from_utf8(body) {
        Ok(s) => s.to_owned(),
        Err(_) => {
            use base64::Engine;
            format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(body))
        }
    }
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> &'a str {
    h.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// Receives one callback from a configured provider.
#[utoipa::path(post, path = "/v1/inbound/{provider}", tag = "inbound",
    params(("provider" = String, Path, description = "Provider name, as configured under inbound.providers")),
    request_body(content = Object, description = "The provider's event, exactly as signed (Standard Webhooks headers \
        `webhook-id`, `webhook-timestamp`, `webhook-signature`): `message.status` from a carrier, \
        `payment.succeeded` from a payment provider; anything else is stored and ignored."),
    responses((status = 200, body = InboundResult), (status = 401, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 408, body = palisade_core::Problem),
        (status = 413, body = palisade_core::Problem), (status = 503, body = palisade_core::Problem)))]
pub async fn receive(
    State(state): State<AppState>,
    Path(provider): Path<String>,
    request: Request,
) -> Result<Json<InboundResult>, ApiError> {
    // The provider first, then at most its limit of the body: anyone can
    // send here, and the body is only the signature's to judge.
    let Some((name, config)) = state.config.inbound.providers.get_key_value(&provider) else {
        return Err(ApiError::not_found());
    };
    let (parts, body) = request.into_parts();
    let body = crate::body::read(&state.body_reads, &parts, body, state.config.limits.max_json_bytes).await?;
    let headers = parts.headers;
    let now = state.now_ms();
    let msg_id = header(&headers, "webhook-id");
    let verdict = verify(&state, config, &headers, &body, now);
    let id = uuid::Uuid::now_v7().to_string();
    let provider_event_id = (!msg_id.is_empty()).then(|| msg_id.chars().take(200).collect::<String>());
    let mut row = NewInbound {
        id: &id,
        provider: name,
        provider_event_id: provider_event_id.as_deref(),
        verified: verdict.is_ok(),
        failure: verdict.as_ref().err().map(String::as_str),
        headers: &kept_headers(&headers, &body, verdict.is_err()),
        payload: &stored_payload(if verdict.is_err() { &body[..body.len().min(REJECTED_BODY_KEPT)] } else { &body }),
        outcome: None,
        now,
    };
    if let Err(reason) = &verdict {
        state.db.write_all(vec![store::insert_inbound_stmt(&row)]).await?;
        tracing::info!(provider = %name, reason, "inbound callback refused");
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_signature",
            format!("The callback's signature does not verify: {reason}."),
        ));
    }
    let (outcome, effect) =
        act(&state, name, config.kind, &id, provider_event_id.as_deref(), &body, now, Actor::system()).await?;
    row.outcome = Some(outcome);
    let mut stmts = vec![store::insert_inbound_stmt(&row)];
    stmts.extend(effect);
    let outcome = match state.db.write_all(stmts).await {
        Ok(_) => outcome,
        // The provider sent this event before: it acted then.
        Err(e) if e.is_unique_violation() => {
            row.outcome = Some("duplicate");
            state.db.write_all(vec![store::insert_inbound_stmt(&row)]).await?;
            "duplicate"
        }
        Err(e) => return Err(e.into()),
    };
    if outcome == "credited" {
        state.webhook_wake.notify_one();
    }
    Ok(Json(InboundResult { id, outcome: outcome.into() }))
}

fn verify(
    state: &AppState,
    config: &palisade_config::InboundProvider,
    headers: &HeaderMap,
    body: &[u8],
    now_ms: i64,
) -> Result<(), String> {
    let raw = config.secret.as_ref().map(|s| s.expose()).unwrap_or("");
    // `whsec_…` (Standard Webhooks), else the configured string's bytes.
    let secret = if raw.starts_with("whsec_") {
        palisade_webhooks::signature::WebhookSecret::parse(raw)
    } else {
        palisade_webhooks::signature::WebhookSecret::from_bytes(raw.as_bytes().to_vec())
    }
    .map_err(|_| "provider secret unusable".to_owned())?;
    palisade_webhooks::signature::verify(
        &[secret],
        &[],
        header(headers, "webhook-id"),
        header(headers, "webhook-timestamp"),
        header(headers, "webhook-signature"),
        body,
        now_ms.div_euclid(1000),
        i64::try_from(state.config.inbound.tolerance_secs).unwrap_or(300),
    )
    .map(|_| ())
    .map_err(|e| e.to_string())
}

/// What a verified callback does: its outcome and the statements that do
/// it (to commit with the stored callback).
#[allow(clippy::too_many_arguments)]
async fn act(
    state: &AppState,
    provider: &str,
    kind: InboundKind,
    callback_id: &str,
    provider_event_id: Option<&str>,
    body: &[u8],
    now: i64,
    // Who makes it happen: the provider's call (the system), or an
    // operator's replay of it.
    actor: Actor,
) -> Result<(&'static str, Vec<Stmt>), ApiError> {
    match kind {
        InboundKind::Carrier => carrier_status(state, body, now).await.map(|o| (o, Vec::new())),
        InboundKind::Payment => {
            let Ok(p) = serde_json::from_slice::<Payment>(body) else {
                return Ok(("invalid_payload", Vec::new()));
            };
            if p.kind != "payment.succeeded" {
                return Ok(("ignored", Vec::new()));
            }
            let (Some(data), Some(event_id)) = (p.data, provider_event_id) else {
                return Ok(("invalid_payload", Vec::new()));
            };
            if !(1..=1_000_000_000_000).contains(&data.amount) {
                return Ok(("invalid_payload", Vec::new()));
            }
            let Ok(tenant) = data.tenant_id.parse::<TenantId>() else {
                return Ok(("unknown_tenant", Vec::new()));
            };
            // The verified provider names the tenant it was paid by.
            let scope = TenantScope::for_system(tenant);
            if palisade_store::tenants::get(state.db.reader(), &scope).await?.is_none() {
                return Ok(("unknown_tenant", Vec::new()));
            }
            let reference = format!("{provider}:{event_id}");
            let ledger_id = uuid::Uuid::now_v7().to_string();
            let mut stmts = vec![store::claim_effect_stmt(provider, event_id, callback_id, now)];
            stmts.extend(palisade_store::credits::top_up_stmts(&scope, &ledger_id, data.amount, &reference, now));
            let details =
                serde_json::json!({ "amount": data.amount, "provider": provider, "provider_event_id": event_id });
            let event = Event::new("credits.topped_up", Some(tenant), actor.clone())
                .resource("tenant", tenant)
                .details(details.clone());
            stmts.push(palisade_audit::append_stmt(&event, &Default::default(), now).1);
            stmts.extend(store::enqueue_stmts(&[palisade_webhooks::events::event(
                tenant,
                "credits.added",
                details,
                now,
            )]));
            Ok(("credited", stmts))
        }
    }
}

/// A carrier's `{"type":"message.status","data":{"message_id","status"}}`
/// moves the message like the built-in carrier's reports do (through the
/// same batched writer: a report that would move it backwards changes
/// nothing, and the tenant's webhooks hear of it).
async fn carrier_status(state: &AppState, body: &[u8], now: i64) -> Result<&'static str, ApiError> {
    let Ok(c) = serde_json::from_slice::<CarrierStatus>(body) else {
        return Ok("invalid_payload");
    };
    if c.kind != "message.status" {
        return Ok("ignored");
    }
    let Some(data) = c.data else { return Ok("invalid_payload") };
    let status = match data.status.as_str() {
        "sent" => "sent",
        "delivered" => "delivered",
        "failed" => "failed",
        _ => return Ok("invalid_payload"),
    };
    let Some(tenant) = palisade_store::messages::tenant_of(state.db.reader(), &data.message_id).await? else {
        return Ok("unknown_message");
    };
    let tenant: TenantId = tenant.parse().map_err(ApiError::internal)?;
    state
        .reports
        .record(crate::reports::Report {
            scope: TenantScope::for_system(tenant),
            message_id: data.message_id,
            status,
            error_code: (status == "failed").then_some("carrier_reported_failure"),
            carrier_ref: None,
            at_ms: now,
        })
        .await;
    Ok("status_recorded")
}

/// Acts again on a stored, verified callback (a payment still credits
/// once). Rejected callbacks never act.
#[utoipa::path(post, path = "/sysadmin/v1/inbound/{id}/replay", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Stored callback id (UUID)")),
    responses((status = 200, body = InboundResult), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn replay(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<InboundResult>, ApiError> {
    let id = id.to_string();
    let row = store::get_inbound(state.db.reader(), &admin.proof, &id).await?.ok_or_else(ApiError::not_found)?;
    if row.verified == 0 {
        return Err(ApiError::conflict("This callback's signature did not verify; it is kept for forensics only."));
    }
    let Some((name, config)) = state.config.inbound.providers.get_key_value(&row.provider) else {
        return Err(ApiError::conflict("The callback's provider is no longer configured."));
    };
    let body = match row.payload.strip_prefix("base64:") {
        Some(b64) => {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.decode(b64).map_err(ApiError::internal)?
        }
        None => row.payload.clone().into_bytes(),
    };
    let now = state.now_ms();
    let (outcome, effect) =
        act(&state, name, config.kind, &id, row.provider_event_id.as_deref(), &body, now, admin.proof.actor()).await?;
    let event = Event::new("inbound.replayed", None, admin.proof.actor())
        .resource("inbound_callback", &id)
        .details(serde_json::json!({ "provider": name, "outcome": outcome }));
    let mut stmts = vec![store::set_inbound_outcome_stmt(&id, outcome)];
    stmts.extend(effect);
    stmts.push(palisade_audit::append_stmt(&event, &admin.ctx.audit, now).1);
    let outcome = match state.db.write_all(stmts).await {
        Ok(_) => outcome,
        Err(e) if e.is_unique_violation() => {
            palisade_audit::record(
                &state.db,
                &event.details(serde_json::json!({ "provider": name, "outcome": "duplicate" })),
                &admin.ctx.audit,
                now,
            )
            .await?;
            "duplicate"
        }
        Err(e) => return Err(e.into()),
    };
    Ok(Json(InboundResult { id, outcome: outcome.into() }))
}
