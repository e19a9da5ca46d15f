//! Operator API. Master key only; every action is audited.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use http::{HeaderMap, StatusCode};
use palisade_audit::Event;
use palisade_core::{ApiError, ApiKeyId, IdentityId, TenantId, TenantScope};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{admission, List};
use crate::abuse::TenantLimits;
use crate::extract::{PathId, Sysadmin, ValidJson};
use crate::ops::{self, NewTenant};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct OwnerInput {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 12, max_length = 256)]
    password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTenantRequest {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    owner: OwnerInput,
}

#[derive(Serialize, ToSchema)]
pub struct OwnerView {
    id: String,
    email: String,
}

#[derive(Serialize, ToSchema)]
pub struct CreatedTenantView {
    id: String,
    name: String,
    owner: OwnerView,
}

#[derive(Serialize, ToSchema)]
pub struct TenantView {
    id: String,
    name: String,
    /// `active` or `frozen`.
    status: String,
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusView {
    id: String,
    status: &'static str,
}

/// Creates a tenant with an active owner (the operator vouches for it).
#[utoipa::path(post, path = "/sysadmin/v1/tenants", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    request_body = CreateTenantRequest,
    responses((status = 201, body = CreatedTenantView), (status = 409, body = palisade_core::Problem),
        (status = 503, body = palisade_core::Problem)))]
pub async fn create_tenant(
    State(state): State<AppState>,
    admin: Sysadmin,
    ValidJson(req): ValidJson<CreateTenantRequest>,
) -> Result<(StatusCode, Json<CreatedTenantView>), ApiError> {
    let input = NewTenant { name: req.name, owner_email: req.owner.email, owner_password: req.owner.password };
    let t = ops::create_tenant(&state.db, &state.argon2, &admin.proof, input, &admin.ctx.audit, state.now_ms()).await?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedTenantView {
            id: t.id.to_string(),
            name: t.name,
            owner: OwnerView { id: t.owner_id.to_string(), email: t.owner_email },
        }),
    ))
}

#[utoipa::path(get, path = "/sysadmin/v1/tenants", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    responses((status = 200, body = List<TenantView>), (status = 401, body = palisade_core::Problem)))]
pub async fn list_tenants(State(state): State<AppState>, admin: Sysadmin) -> Result<List<TenantView>, ApiError> {
    let rows = palisade_store::tenants::list(state.db.reader(), &admin.proof).await?;
    let data = rows
        .into_iter()
        .map(|t| TenantView {
            id: t.id,
            name: t.name,
            status: t.status,
            created_at: palisade_core::clock::rfc3339(t.created_at),
        })
        .collect();
    let event = Event::new("sysadmin.tenants_listed", None, admin.proof.actor());
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    Ok(List { data, next_cursor: None })
}

async fn tenant_status(
    state: AppState,
    admin: Sysadmin,
    id: TenantId,
    frozen: bool,
) -> Result<Json<StatusView>, ApiError> {
    if !ops::set_tenant_frozen(&state.db, &admin.proof, id, frozen, &admin.ctx.audit, state.now_ms()).await? {
        return Err(ApiError::not_found());
    }
    Ok(Json(StatusView { id: id.to_string(), status: if frozen { "frozen" } else { "active" } }))
}

/// Kill-switch: every request of the tenant is refused with 423 from now on.
#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/freeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem)))]
pub async fn freeze_tenant(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
) -> Result<Json<StatusView>, ApiError> {
    tenant_status(state, admin, id, true).await
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EraseTenantRequest {
    /// The tenant's id again: erasure cannot be undone.
    confirm: uuid::Uuid,
}

#[derive(Serialize, ToSchema)]
pub struct ErasedView {
    id: String,
    status: &'static str,
    /// Data keys destroyed: everything sealed under them no longer opens.
    keys_destroyed: u64,
}

/// Tenant erasure (crypto-shredding): a frozen tenant's data keys are
/// destroyed, so its message bodies and other sealed data no longer open;
/// it stays frozen for good. Copies of the database taken before stay
/// readable for it until the KEK versions of then are retired (`palisade
/// keys rotate`, then `palisade keys retire`).
#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/erase", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    request_body = EraseTenantRequest,
    responses((status = 200, body = ErasedView), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn erase_tenant(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
    ValidJson(req): ValidJson<EraseTenantRequest>,
) -> Result<Json<ErasedView>, ApiError> {
    if req.confirm.to_string() != id.to_string() {
        return Err(ApiError::validation("confirm", "must be the id of the tenant to erase"));
    }
    let destroyed = ops::erase_tenant(&state, &admin.proof, id, &admin.ctx.audit, state.now_ms())
        .await?
        .ok_or_else(ApiError::not_found)?;
    Ok(Json(ErasedView { id: id.to_string(), status: "erased", keys_destroyed: destroyed }))
}

#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/unfreeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn unfreeze_tenant(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
) -> Result<Json<StatusView>, ApiError> {
    tenant_status(state, admin, id, false).await
}

async fn key_status(
    state: AppState,
    admin: Sysadmin,
    id: ApiKeyId,
    frozen: bool,
) -> Result<Json<StatusView>, ApiError> {
    let status = if frozen { "frozen" } else { "active" };
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let tenant = palisade_store::api_keys::set_status(&mut tx, &admin.proof, id, status)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let tenant = tenant.parse::<TenantId>().map_err(ApiError::internal)?;
    let action = if frozen { "api_key.frozen" } else { "api_key.unfrozen" };
    let event = Event::new(action, Some(tenant), admin.proof.actor()).resource("api_key", id);
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(StatusView { id: id.to_string(), status }))
}

/// Kill-switch for one API key: its requests get 423 from now on.
#[utoipa::path(post, path = "/sysadmin/v1/api-keys/{id}/freeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "API key id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem)))]
pub async fn freeze_api_key(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<ApiKeyId>,
) -> Result<Json<StatusView>, ApiError> {
    key_status(state, admin, id, true).await
}

#[utoipa::path(post, path = "/sysadmin/v1/api-keys/{id}/unfreeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "API key id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem)))]
pub async fn unfreeze_api_key(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<ApiKeyId>,
) -> Result<Json<StatusView>, ApiError> {
    key_status(state, admin, id, false).await
}

/// A tenant's abuse-control overrides: absent fields use the configured
/// defaults.
#[utoipa::path(get, path = "/sysadmin/v1/tenants/{id}/limits", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")),
    responses((status = 200, body = TenantLimits), (status = 404, body = palisade_core::Problem)))]
pub async fn get_tenant_limits(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
) -> Result<Json<TenantLimits>, ApiError> {
    let scope = TenantScope::for_sysadmin(&admin.proof, id);
    palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let stored = palisade_store::tenants::limits(state.db.reader(), &scope).await?;
    let limits = match stored {
        Some(s) => serde_json::from_str(&s).map_err(ApiError::internal)?,
        None => TenantLimits::default(),
    };
    let event = Event::new("tenant.limits_read", Some(id), admin.proof.actor()).resource("tenant", id);
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    Ok(Json(limits))
}

/// Replaces a tenant's abuse-control overrides (rate limits per minute, 0
/// turning one off; address allow and deny lists). They apply from the
/// tenant's next request. An empty document restores the defaults.
#[utoipa::path(put, path = "/sysadmin/v1/tenants/{id}/limits", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)")), request_body = TenantLimits,
    responses((status = 200, body = TenantLimits), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem)))]
pub async fn put_tenant_limits(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
    ValidJson(mut limits): ValidJson<TenantLimits>,
) -> Result<Json<TenantLimits>, ApiError> {
    limits.validate()?;
    // Stored canonical, so what is read back is what applies.
    for list in [&mut limits.ip_allow, &mut limits.ip_deny] {
        let nets = palisade_guard::net::parse_cidrs(list.iter().map(String::as_str)).map_err(ApiError::internal)?;
        *list = nets.iter().map(ToString::to_string).collect();
    }
    let scope = TenantScope::for_sysadmin(&admin.proof, id);
    palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let now = state.now_ms();
    let doc = (limits != TenantLimits::default())
        .then(|| serde_json::to_string(&limits))
        .transpose()
        .map_err(ApiError::internal)?;
    let event = Event::new("tenant.limits_updated", Some(id), admin.proof.actor())
        .resource("tenant", id)
        .details(serde_json::to_value(&limits).map_err(ApiError::internal)?);
    let (_, audit) = palisade_audit::append_stmt(&event, &admin.ctx.audit, now);
    state.db.write_all(vec![palisade_store::tenants::set_limits_stmt(&scope, doc.as_deref(), now), audit]).await?;
    Ok(Json(limits))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TopUpRequest {
    /// Minor units to add, 1 to 10^12.
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    amount: i64,
    /// Free text for the ledger (an invoice number, say).
    #[serde(default)]
    #[schema(max_length = 200)]
    reference: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BalanceAfter {
    tenant_id: String,
    balance: i64,
}

/// Adds credits to a tenant's balance. With `Idempotency-Key`, a retry
/// gets the first answer and credits nothing more.
#[utoipa::path(post, path = "/sysadmin/v1/tenants/{id}/credits", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Tenant id (UUID)"),
        ("Idempotency-Key" = Option<String>, Header, pattern = "^[!-~]{1,255}$", description = "Retries with the same key and body get the first response; no second credit")),
    request_body = TopUpRequest,
    responses((status = 200, body = BalanceAfter), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn top_up(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<TenantId>,
    headers: HeaderMap,
    ValidJson(req): ValidJson<TopUpRequest>,
) -> Result<Response, ApiError> {
    if !(1..=1_000_000_000_000).contains(&req.amount) {
        return Err(ApiError::validation("amount", "must be between 1 and 1000000000000 (minor units)"));
    }
    let reference = req.reference.as_deref().map(palisade_guard::input::sanitize_line).unwrap_or_default();
    if reference.chars().count() > 200 {
        return Err(ApiError::validation("reference", "must be at most 200 characters"));
    }
    let scope = TenantScope::for_sysadmin(&admin.proof, id);
    palisade_store::tenants::get(state.db.reader(), &scope).await?.ok_or_else(ApiError::not_found)?;
    let now = state.now_ms();
    // The operator's keys live beside the tenant's own, under a prefix a
    // tenant's key cannot have (a space), so neither can take the other's.
    let key = admission::idempotency_key(&headers)?.map(|k| format!("sysadmin {k}"));
    let doc = serde_json::json!(["POST /sysadmin/v1/tenants/{id}/credits", req.amount, reference]);
    let request_hash = palisade_auth::token::sha256_hex(&doc.to_string());
    if let Some(k) = &key {
        if let Some(first) = admission::replay_if_known(&state, &scope, k, &request_hash, now).await? {
            return Ok(first);
        }
    }
    let event = Event::new("credits.topped_up", Some(id), admin.proof.actor())
        .resource("tenant", id)
        .details(serde_json::json!({ "amount": req.amount }));
    let (_, audit) = palisade_audit::append_stmt(&event, &admin.ctx.audit, now);
    let ledger_id = uuid::Uuid::now_v7().to_string();
    let mut stmts = palisade_store::credits::top_up_stmts(&scope, &ledger_id, req.amount, &reference, now);
    stmts.push(audit);
    let Some(k) = key else {
        state.db.write_all(stmts).await?;
        let balance = palisade_store::credits::balance(state.db.reader(), &scope).await?;
        return Ok(Json(BalanceAfter { tenant_id: id.to_string(), balance }).into_response());
    };
    // With a key: the credit, the balance it leads to and the key in one
    // transaction, so a retry racing the first credits nothing either. The
    // key comes after the balance, against the order of
    // `palisade_store::locks`: an operator's keys are no other write's.
    let since = now - admission::IDEMPOTENCY_TTL_MS;
    // Before the transaction: making a tenant's first key writes.
    let keys = state.keys.of(&scope).await?;
    let credited = palisade_store::locks::retrying(|| async {
        let mut tx = state.db.begin().await?;
        tx.run(&stmts).await?;
        let balance = palisade_store::credits::balance(&mut *tx, &scope).await?;
        let after = BalanceAfter { tenant_id: id.to_string(), balance };
        let body = serde_json::to_string(&after).map_err(|e| palisade_store::StoreError::Corrupt(e.to_string()))?;
        match palisade_store::messages::remember(&mut *tx, &scope, &keys, &k, &request_hash, 200, &body, now, since)
            .await
        {
            Err(e) if e.is_unique_violation() => return Ok(None),
            r => r?,
        }
        tx.commit().await?;
        Ok(Some(after))
    })
    .await?;
    let Some(after) = credited else {
        return admission::replay_winner(&state, &scope, &k, &request_hash, now).await;
    };
    Ok(Json(after).into_response())
}

async fn identity_status(
    state: AppState,
    admin: Sysadmin,
    id: IdentityId,
    frozen: bool,
) -> Result<Json<StatusView>, ApiError> {
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let (tenant, status) = palisade_store::identities::set_status(&mut tx, &admin.proof, id, frozen, now)
        .await?
        .ok_or_else(ApiError::not_found)?;
    let tenant = tenant.parse::<TenantId>().map_err(ApiError::internal)?;
    let action = if frozen { "identity.frozen" } else { "identity.unfrozen" };
    // After the operator's unfreeze the status says whether the tenant
    // still holds a freeze of its own.
    let event = Event::new(action, Some(tenant), admin.proof.actor())
        .resource("identity", id)
        .details(serde_json::json!({ "status": status }));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    let status = if status == "frozen" { "frozen" } else { "active" };
    Ok(Json(StatusView { id: id.to_string(), status }))
}

/// Kill-switch for one identity (and its agent token).
#[utoipa::path(post, path = "/sysadmin/v1/identities/{id}/freeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem)))]
pub async fn freeze_identity(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<StatusView>, ApiError> {
    identity_status(state, admin, id, true).await
}

#[utoipa::path(post, path = "/sysadmin/v1/identities/{id}/unfreeze", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = StatusView), (status = 404, body = palisade_core::Problem)))]
pub async fn unfreeze_identity(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<StatusView>, ApiError> {
    identity_status(state, admin, id, false).await
}
