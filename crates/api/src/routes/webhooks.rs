//! Webhook endpoints (SPEC §10): CRUD, secret rotation with a grace
//! period, optional Ed25519 signing, and the record of deliveries with
//! replay. The secret is shown once (create, rotate) and sealed at rest.

use axum::extract::{Path, State};
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_core::{ApiError, FieldError, Permission, TenantScope};
use palisade_store::webhooks::{self as store, EndpointRow, NewEndpoint};
use palisade_webhooks::signature::{Ed25519Signer, WebhookSecret};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{List, Paging};
use crate::extract::{Auth, PathId, QueryParams, ValidJson};
use crate::state::AppState;

const MAX_EVENTS: usize = 20;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateWebhookRequest {
    /// Where deliveries go: https (http only outside production); checked
    /// by the SSRF guard now and before every delivery.
    #[schema(format = "uri")]
    url: String,
    /// Event types (see `docs/webhooks.md`), or `["*"]` for all.
    #[schema(schema_with = crate::openapi::webhook_events)]
    events: Vec<String>,
    #[serde(default)]
    #[schema(max_length = 200)]
    description: Option<String>,
    /// Also sign with an Ed25519 key (`v1a,` signatures); its public key is
    /// returned so receivers need no shared secret.
    #[serde(default)]
    ed25519: bool,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateWebhookRequest {
    #[serde(default)]
    #[schema(format = "uri")]
    url: Option<String>,
    #[serde(default)]
    #[schema(schema_with = crate::openapi::optional_webhook_events)]
    events: Option<Vec<String>>,
    #[serde(default)]
    #[schema(max_length = 200)]
    description: Option<String>,
    /// `true` re-enables a disabled endpoint (nothing else is accepted).
    #[serde(default)]
    #[schema(schema_with = crate::openapi::only_true)]
    enabled: Option<bool>,
}

#[derive(Serialize, ToSchema)]
pub struct WebhookView {
    id: String,
    url: String,
    events: Vec<String>,
    description: String,
    /// `enabled` or `disabled`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    disabled_reason: Option<String>,
    /// `whpk_…`: verifies `v1a,` signatures, when Ed25519 signing is on.
    #[serde(skip_serializing_if = "Option::is_none")]
    public_key: Option<String>,
    /// Until then the previous secret signs alongside the current one.
    #[serde(skip_serializing_if = "Option::is_none")]
    previous_secret_expires_at: Option<String>,
    created_at: String,
    updated_at: String,
    /// `whsec_…`: in the create and rotate responses only.
    #[serde(skip_serializing_if = "Option::is_none")]
    secret: Option<String>,
}

impl WebhookView {
    fn of(r: EndpointRow, secret: Option<String>) -> Result<Self, ApiError> {
        Ok(WebhookView {
            events: serde_json::from_str(&r.events).map_err(ApiError::internal)?,
            id: r.id,
            url: r.url,
            description: r.description,
            status: r.status,
            disabled_reason: r.disabled_reason,
            public_key: r.ed25519_public,
            previous_secret_expires_at: super::rfc3339_opt(r.previous_secret_until),
            created_at: palisade_core::clock::rfc3339(r.created_at),
            updated_at: palisade_core::clock::rfc3339(r.updated_at),
            secret,
        })
    }
}

/// Known event types, deduplicated; `*` alone stands for all.
fn check_events(events: &[String], errors: &mut Vec<FieldError>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut all = false;
    for e in events {
        let e = e.trim();
        if e == "*" {
            all = true;
            continue;
        }
        match palisade_webhooks::events::known(e) {
            Some(t) if !out.iter().any(|o| o == t) => out.push(t.to_owned()),
            Some(_) => {}
            None => errors.push(FieldError {
                field: "events".into(),
                message: format!("`{e}` is not an event type (see /v1/openapi.json and docs/webhooks.md)"),
            }),
        }
    }
    if all {
        return vec!["*".into()];
    }
    if out.is_empty() && errors.is_empty() {
        errors.push(FieldError { field: "events".into(), message: "list at least one event type, or `*`".into() });
    }
    if out.len() > MAX_EVENTS {
        errors.push(FieldError { field: "events".into(), message: format!("at most {MAX_EVENTS} types") });
    }
    out
}

fn check_description(raw: &str, errors: &mut Vec<FieldError>) -> String {
    let d = palisade_guard::input::sanitize_line(raw);
    if d.chars().count() > 200 {
        errors.push(FieldError { field: "description".into(), message: "at most 200 characters".into() });
    }
    d
}

/// The SSRF guard's verdict on a URL, as a field error. A host name that
/// does not resolve to public addresses only gets one message whatever it
/// resolved to (see [`palisade_guard::ssrf::NAME_NOT_PUBLIC`]): anything
/// more would map the platform's internal DNS for the tenant.
async fn check_url(state: &AppState, raw: &str, errors: &mut Vec<FieldError>) -> String {
    match state.webhook_client.check(raw.trim()).await {
        Ok(checked) => checked.url().to_string(),
        Err(e) => {
            errors.push(FieldError { field: "url".into(), message: e.to_string() });
            String::new()
        }
    }
}

fn seal(keys: &palisade_keys::TenantKeys, endpoint_id: &str, plain: &str) -> String {
    keys.seal(palisade_webhooks::worker::secret_place(endpoint_id), plain.as_bytes())
}

fn seal_ed25519(keys: &palisade_keys::TenantKeys, endpoint_id: &str, plain: &str) -> String {
    keys.seal(palisade_webhooks::worker::ed25519_place(endpoint_id), plain.as_bytes())
}

fn event_for(action: &'static str, auth: &Auth, id: &str, details: serde_json::Value) -> Event {
    Event::new(action, Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("webhook", id)
        .details(details)
}

async fn load(state: &AppState, scope: &TenantScope, id: uuid::Uuid) -> Result<EndpointRow, ApiError> {
    store::get_endpoint(state.db.reader(), scope, &id.to_string()).await?.ok_or_else(ApiError::not_found)
}

/// Creates an endpoint; the response holds its secret, shown only here.
#[utoipa::path(post, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    request_body = CreateWebhookRequest,
    responses((status = 201, body = WebhookView), (status = 400, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<CreateWebhookRequest>,
) -> Result<(StatusCode, Json<WebhookView>), ApiError> {
    let scope = auth.sensitive_scope(Permission::WebhooksManage).await?;
    let mut errors = Vec::new();
    let events = check_events(&req.events, &mut errors);
    let description = check_description(req.description.as_deref().unwrap_or(""), &mut errors);
    let url = check_url(&state, &req.url, &mut errors).await;
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    let id = uuid::Uuid::now_v7().to_string();
    let secret = WebhookSecret::generate().to_string_whsec();
    let ed = req.ed25519.then(Ed25519Signer::generate);
    let keys = state.keys.of(&scope).await?;
    let ed_sealed = ed.as_ref().map(|k| seal_ed25519(&keys, &id, &k.secret_string()));
    let ed_public = ed.as_ref().map(Ed25519Signer::public_key_string);
    let now = state.now_ms();
    let new = NewEndpoint {
        id: &id,
        url: &url,
        description: &description,
        events: &events,
        secret_sealed: &seal(&keys, &id, &secret),
        ed25519_sealed: ed_sealed.as_deref(),
        ed25519_public: ed_public.as_deref(),
        now,
    };
    let mut stmts = store::insert_endpoint_stmts(&scope, &new);
    let event =
        event_for("webhook.created", &auth, &id, serde_json::json!({ "events": events, "ed25519": ed.is_some() }));
    stmts.push(palisade_audit::append_stmt(&event, &auth.ctx.audit, now).1);
    let mut tx = state.db.begin().await?;
    store::serialize_endpoint_creates(&mut tx, &scope).await?;
    match tx.run(&stmts).await {
        Ok(_) => tx.commit().await?,
        Err(palisade_store::StoreError::Refused("TOO_MANY_ENDPOINTS")) => {
            return Err(ApiError::conflict(format!(
                "A tenant has at most {} webhook endpoints.",
                store::MAX_ENDPOINTS
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let row = store::get_endpoint(state.db.reader(), &scope, &id).await?.ok_or_else(ApiError::not_found)?;
    Ok((StatusCode::CREATED, Json(WebhookView::of(row, Some(secret))?)))
}

#[utoipa::path(get, path = "/v1/webhooks", tag = "webhooks", security(("bearer" = [])),
    responses((status = 200, body = List<WebhookView>)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<List<WebhookView>, ApiError> {
    let scope = auth.scope(Permission::WebhooksRead).await?;
    let rows = store::list_endpoints(state.db.reader(), &scope).await?;
    let data = rows.into_iter().map(|r| WebhookView::of(r, None)).collect::<Result<_, _>>()?;
    Ok(List { data, next_cursor: None })
}

#[utoipa::path(get, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)")),
    responses((status = 200, body = WebhookView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<WebhookView>, ApiError> {
    let scope = auth.scope(Permission::WebhooksRead).await?;
    Ok(Json(WebhookView::of(load(&state, &scope, id).await?, None)?))
}

/// Changes the URL, events or description, or re-enables the endpoint.
#[utoipa::path(patch, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)")), request_body = UpdateWebhookRequest,
    responses((status = 200, body = WebhookView), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
    ValidJson(req): ValidJson<UpdateWebhookRequest>,
) -> Result<Json<WebhookView>, ApiError> {
    let scope = auth.sensitive_scope(Permission::WebhooksManage).await?;
    let current = load(&state, &scope, id).await?;
    let mut errors = Vec::new();
    let events = match &req.events {
        Some(e) => check_events(e, &mut errors),
        None => serde_json::from_str(&current.events).map_err(ApiError::internal)?,
    };
    let description = match &req.description {
        Some(d) => check_description(d, &mut errors),
        None => current.description.clone(),
    };
    let url = match &req.url {
        Some(u) => check_url(&state, u, &mut errors).await,
        None => current.url.clone(),
    };
    if req.enabled == Some(false) {
        errors.push(FieldError { field: "enabled".into(), message: "only `true` (re-enable) is accepted".into() });
    }
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    let now = state.now_ms();
    let enable = req.enabled == Some(true);
    let mut stmts = store::update_endpoint_stmts(&scope, &current.id, &url, &description, &events, enable, now);
    let details = serde_json::json!({ "url_changed": url != current.url, "events": events, "enabled": enable });
    stmts.push(
        palisade_audit::append_stmt(&event_for("webhook.updated", &auth, &current.id, details), &auth.ctx.audit, now).1,
    );
    if state.db.write_guarded(stmts).await?.is_err() {
        return Err(ApiError::not_found());
    }
    Ok(Json(WebhookView::of(load(&state, &scope, id).await?, None)?))
}

#[utoipa::path(delete, path = "/v1/webhooks/{id}", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)")),
    responses((status = 204), (status = 404, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.sensitive_scope(Permission::WebhooksManage).await?;
    let now = state.now_ms();
    let id = id.to_string();
    let mut stmts = store::delete_endpoint_stmts(&scope, &id);
    stmts.push(
        palisade_audit::append_stmt(
            &event_for("webhook.deleted", &auth, &id, serde_json::Value::Null),
            &auth.ctx.audit,
            now,
        )
        .1,
    );
    if state.db.write_guarded(stmts).await?.is_err() {
        return Err(ApiError::not_found());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// A new secret, shown once; the old one keeps signing alongside it for
/// `webhooks.rotation_grace_secs` (default 24 h), so receivers can switch
/// without losing a delivery.
#[utoipa::path(post, path = "/v1/webhooks/{id}/rotate-secret", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)")),
    responses((status = 200, body = WebhookView), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<WebhookView>, ApiError> {
    let scope = auth.sensitive_scope(Permission::WebhooksManage).await?;
    let current = load(&state, &scope, id).await?;
    let now = state.now_ms();
    let secret = WebhookSecret::generate().to_string_whsec();
    let grace_ms = i64::try_from(state.config.webhooks.rotation_grace_secs).unwrap_or(0).saturating_mul(1000);
    let keys = state.keys.of(&scope).await?;
    // The stored ciphertext moves as it is: it is bound to this endpoint.
    let stmt = store::rotate_secret_stmt(
        &scope,
        &current.id,
        &seal(&keys, &current.id, &secret),
        &current.secret_sealed,
        now + grace_ms,
        now,
    );
    let event =
        event_for("webhook.secret_rotated", &auth, &current.id, serde_json::json!({ "grace_secs": grace_ms / 1000 }));
    let audit = palisade_audit::append_stmt(&event, &auth.ctx.audit, now).1;
    if state.db.write_guarded(vec![stmt, audit]).await?.is_err() {
        // Deleted meanwhile (404), or another rotation won: its secret stands.
        load(&state, &scope, id).await?;
        return Err(ApiError::conflict("The secret was rotated concurrently; rotate again if you need a new one."));
    }
    Ok(Json(WebhookView::of(load(&state, &scope, id).await?, Some(secret))?))
}

#[derive(Serialize, ToSchema)]
pub struct AttemptView {
    attempt: i64,
    at: String,
    /// The HTTP status, when a response came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    status_code: Option<i64>,
    latency_ms: i64,
    /// The start of the response body (at most 1 KiB).
    response: String,
    /// `ssrf`, `dns`, `connect`, `timeout`, `tls`, `response_body`, … when no
    /// usable response came back.
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// `delivered`, `retry`, `failed`, `gone` or `skipped`.
    outcome: String,
}

#[derive(Serialize, ToSchema)]
pub struct DeliveryView {
    /// The event's id: the `webhook-id` header of every attempt.
    id: String,
    event_type: String,
    /// `pending`, `delivered` or `failed`.
    status: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    next_attempt_at: Option<String>,
    attempts: Vec<AttemptView>,
    created_at: String,
    updated_at: String,
}

/// The endpoint's deliveries, newest first, each with its attempts.
#[utoipa::path(get, path = "/v1/webhooks/{id}/deliveries", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)"), Paging),
    responses((status = 200, body = List<DeliveryView>), (status = 404, body = palisade_core::Problem)))]
pub async fn deliveries(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
    QueryParams(paging): QueryParams<Paging>,
) -> Result<List<DeliveryView>, ApiError> {
    let scope = auth.scope(Permission::WebhooksRead).await?;
    let limit = paging.limit()?;
    let endpoint = load(&state, &scope, id).await?;
    let rows = store::list_deliveries(state.db.reader(), &scope, &endpoint.id, limit).await?;
    let mut data: Vec<DeliveryView> = Vec::new();
    for r in rows {
        if data.last().is_none_or(|d| d.id != r.event_id) {
            data.push(DeliveryView {
                next_attempt_at: (r.status == "pending").then(|| palisade_core::clock::rfc3339(r.next_attempt_at)),
                attempts: Vec::new(),
                id: r.event_id.clone(),
                event_type: r.event_type.clone(),
                status: r.status.clone(),
                created_at: palisade_core::clock::rfc3339(r.created_at),
                updated_at: palisade_core::clock::rfc3339(r.updated_at),
            });
        }
        if let (Some(attempt), Some(at), Some(last)) = (r.attempt, r.attempted_at, data.last_mut()) {
            last.attempts.push(AttemptView {
                attempt,
                at: palisade_core::clock::rfc3339(at),
                status_code: r.status_code,
                latency_ms: r.latency_ms.unwrap_or(0),
                response: r.response_excerpt.unwrap_or_default(),
                error: r.error_class,
                outcome: r.outcome.unwrap_or_default(),
            });
        }
    }
    Ok(List { data, next_cursor: None })
}

/// Sends a delivery again now, whatever its state.
#[utoipa::path(post, path = "/v1/webhooks/{id}/deliveries/{delivery_id}/replay", tag = "webhooks",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)"),
        ("delivery_id" = uuid::Uuid, Path, description = "Delivery (event) id (UUID)")),
    responses((status = 202), (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn replay(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.scope(Permission::WebhooksManage).await?;
    let (Ok(id), Ok(delivery_id)) = (id.parse::<uuid::Uuid>(), delivery_id.parse::<uuid::Uuid>()) else {
        return Err(ApiError::not_found());
    };
    let (id, delivery_id) = (id.to_string(), delivery_id.to_string());
    let now = state.now_ms();
    let event = event_for("webhook.delivery_replayed", &auth, &id, serde_json::json!({ "delivery_id": delivery_id }));
    let stmts = vec![
        store::replay_stmt(&scope, &id, &delivery_id, now),
        palisade_audit::append_stmt(&event, &auth.ctx.audit, now).1,
    ];
    if state.db.write_guarded(stmts).await?.is_err() {
        if store::delivery_exists(state.db.reader(), &scope, &id, &delivery_id).await? {
            return Err(ApiError::conflict(
                "An attempt of this delivery is in flight; replay it when it has finished.",
            ));
        }
        return Err(ApiError::not_found());
    }
    state.webhook_wake.notify_one();
    Ok(StatusCode::ACCEPTED)
}

#[derive(Serialize, ToSchema)]
pub struct TestDelivery {
    /// The delivery's id (its `webhook-id`), for `…/deliveries`.
    id: String,
    /// `pending`.
    status: &'static str,
}

/// Queues a `webhook.test` event for this endpoint alone.
#[utoipa::path(post, path = "/v1/webhooks/{id}/test", tag = "webhooks", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Webhook endpoint id (UUID)")),
    responses((status = 202, body = TestDelivery), (status = 404, body = palisade_core::Problem)))]
pub async fn test(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<(StatusCode, Json<TestDelivery>), ApiError> {
    let scope = auth.scope(Permission::WebhooksManage).await?;
    let endpoint = load(&state, &scope, id).await?;
    let now = state.now_ms();
    let ev = palisade_webhooks::events::event(
        scope.tenant_id(),
        "webhook.test",
        serde_json::json!({ "endpoint_id": endpoint.id }),
        now,
    );
    let event_id = ev.id.clone();
    let mut stmts = store::enqueue_to_endpoint_stmts(&scope, &ev, &endpoint.id);
    let audit = event_for("webhook.test_sent", &auth, &endpoint.id, serde_json::json!({ "delivery_id": event_id }));
    stmts.push(palisade_audit::append_stmt(&audit, &auth.ctx.audit, now).1);
    if state.db.write_guarded(stmts).await?.is_err() {
        return Err(ApiError::not_found());
    }
    state.webhook_wake.notify_one();
    Ok((StatusCode::ACCEPTED, Json(TestDelivery { id: event_id, status: "pending" })))
}
