//! API keys: shown once, stored as SHA-256, never wider than their creator.

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::grant::{Asked, Bounds};
use palisade_auth::token::{new_api_key, sha256_hex};
use palisade_core::principal::Restrictions;
use palisade_core::{ApiError, ApiKeyId, FieldError, Permission, PermissionSet, PrincipalKind, Role, TenantScope};
use palisade_store::api_keys::{ApiKeyRow, NewApiKey, MAX_LINEAGE};
use palisade_store::Stmt;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{rfc3339_opt, List};
use crate::extract::{Auth, PathId, ValidJson};
use crate::state::AppState;

const MAX_GRACE_SECONDS: u64 = 7 * 24 * 3600;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateKeyRequest {
    #[schema(min_length = 1, max_length = 200)]
    name: String,
    /// A role name; or give `permissions` instead.
    role: Option<Role>,
    /// The permissions, each one the caller holds; or give `role` instead.
    #[schema(schema_with = crate::openapi::permissions)]
    permissions: Option<Vec<String>>,
    /// RFC 3339; must be in the future.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// CIDRs; requests from elsewhere get 401.
    #[schema(max_items = 100)]
    allowed_ips: Option<Vec<String>>,
    /// Exact origins (`https://app.example.com`); a request with another `Origin` gets 401.
    #[schema(schema_with = crate::openapi::origins)]
    allowed_origins: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyView {
    id: String,
    name: String,
    /// The first 8 characters of the key, to recognise it.
    prefix: String,
    role: Option<String>,
    permissions: Vec<String>,
    /// `active`, `frozen`, `expired` or `revoked`.
    status: String,
    allowed_ips: Vec<String>,
    allowed_origins: Vec<String>,
    created_at: String,
    expires_at: Option<String>,
    last_used_at: Option<String>,
    revoked_at: Option<String>,
    /// While a rotation's grace period runs, the previous key works until then.
    previous_key_valid_until: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct KeyWithSecret {
    #[serde(flatten)]
    view: KeyView,
    /// The key itself. Shown in this response only; store it now.
    key: String,
}

fn view(r: ApiKeyRow, now: i64) -> Result<KeyView, ApiError> {
    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).map_err(ApiError::internal);
    let status = if r.revoked_at.is_some() {
        "revoked"
    } else if r.expires_at.is_some_and(|e| e <= now) {
        "expired"
    } else {
        r.status.as_str()
    };
    Ok(KeyView {
        status: status.to_owned(),
        permissions: list(&r.permissions)?,
        allowed_ips: list(&r.allowed_ips)?,
        allowed_origins: list(&r.allowed_origins)?,
        created_at: palisade_core::clock::rfc3339(r.created_at),
        expires_at: rfc3339_opt(r.expires_at),
        last_used_at: rfc3339_opt(r.last_used_at),
        revoked_at: rfc3339_opt(r.revoked_at),
        previous_key_valid_until: rfc3339_opt(r.prev_valid_until.filter(|t| *t > now)),
        id: r.id,
        name: r.name,
        prefix: r.prefix,
        role: r.role,
    })
}

fn prefix_of(key: &str) -> String {
    key.chars().take(8).collect()
}

/// Origins are compared byte for byte with the browser's `Origin` header,
/// so they must be in its exact form: scheme, host, optional port.
pub(crate) fn valid_origin(o: &str) -> bool {
    let Some((scheme, rest)) = o.split_once("://") else {
        return false;
    };
    matches!(scheme, "https" | "http")
        && !rest.is_empty()
        && !rest.contains(['/', '?', '#', '*', '@', ' '])
        && rest.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
}

/// Creates a key. Its permissions must be a subset of the caller's.
#[utoipa::path(post, path = "/v1/api-keys", tag = "api-keys", request_body = CreateKeyRequest, security(("bearer" = [])),
    responses((status = 201, body = KeyWithSecret), (status = 400, body = palisade_core::Problem), (status = 403, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<CreateKeyRequest>,
) -> Result<(StatusCode, Json<KeyWithSecret>), ApiError> {
    let scope = auth.scope(Permission::KeysManage).await?;
    let now = state.now_ms();
    let mut errors = Vec::new();
    let mut err = |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });

    let name = palisade_guard::input::sanitize_line(&req.name);
    if name.is_empty() || name.chars().count() > 200 {
        err("name", "must be 1 to 200 characters");
    }
    let permissions = match (&req.role, &req.permissions) {
        (Some(role), None) => role.permissions(),
        (None, Some(names)) if !names.is_empty() => match PermissionSet::parse(names.iter().map(String::as_str)) {
            Ok(p) => p,
            Err(e) => {
                err("permissions", &e.to_string());
                PermissionSet::EMPTY
            }
        },
        _ => {
            err("role", "give exactly one of `role` or a non-empty `permissions`");
            PermissionSet::EMPTY
        }
    };
    let asked = asked_restrictions(req.expires_at.as_deref(), req.allowed_ips, req.allowed_origins, now, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    // A key that manages anything (keys, people, identities, webhooks, the
    // tenant) is an admin's key: a person needs a recent second factor.
    let everyday = Role::Integration.permissions().iter().chain(Role::ReadOnly.permissions().iter()).collect();
    if !permissions.is_subset_of(everyday) {
        auth.sensitive_scope(Permission::KeysManage).await?;
    }
    // Within the creator's permissions, addresses, origins and lifetime;
    // what is not given is inherited from a creating key.
    let key_bounds = minter_bounds(&auth).mint(permissions, asked).map_err(|w| auth.denied(w.detail()))?;
    let parent = match auth.principal.kind() {
        PrincipalKind::ApiKey { key_id, .. } => Some(*key_id),
        _ => None,
    };
    if let Some(parent) = parent {
        if palisade_store::api_keys::depth(state.db.reader(), &scope, parent).await? >= MAX_LINEAGE {
            return Err(auth.denied("Keys minted by keys may be at most 8 levels deep."));
        }
    }
    let Restrictions { allowed_ips: nets, allowed_origins: origins, expires_at } = key_bounds.restrictions;

    let key = new_api_key();
    let id = ApiKeyId::new();
    let actor = auth.principal.actor();
    let perm_json = serde_json::to_string(&permissions.to_strings()).map_err(ApiError::internal)?;
    let ips_json = serde_json::to_string(&nets).map_err(ApiError::internal)?;
    let origins_json = serde_json::to_string(&origins).map_err(ApiError::internal)?;
    let owner = auth.principal.answerable_user().map(|u| u.to_string());
    let parent = parent.map(|p| p.to_string());
    let new = NewApiKey {
        id,
        name: &name,
        prefix: &prefix_of(&key),
        key_hash: &sha256_hex(&key),
        permissions: &perm_json,
        role: req.role.map(Role::as_str),
        created_by_type: &actor.kind,
        created_by_id: actor.id.as_deref(),
        owner_user_id: owner.as_deref(),
        parent_key_id: parent.as_deref(),
        expires_at,
        allowed_ips: &ips_json,
        allowed_origins: &origins_json,
        now,
    };
    let event = Event::new("api_key.created", Some(scope.tenant_id()), actor.clone()).resource("api_key", id).details(
        serde_json::json!({ "name": name, "permissions": permissions.to_strings(), "prefix": prefix_of(&key) }),
    );
    let insert = palisade_store::api_keys::insert_stmt(&scope, &new);
    let (_, audited) = palisade_audit::append_stmt(&event, &auth.ctx.audit, now);
    let data = serde_json::json!({ "id": id, "name": name, "prefix": prefix_of(&key) });
    let mut stmts = vec![insert, audited];
    stmts.extend(webhook_event(&scope, "api_key.created", data, now));
    state.db.write_all(stmts).await?;
    state.webhook_wake.notify_one();
    let row = palisade_store::api_keys::get(state.db.reader(), &scope, id)
        .await?
        .ok_or_else(|| ApiError::internal("key vanished"))?;
    Ok((StatusCode::CREATED, Json(KeyWithSecret { view: view(row, now)?, key })))
}

/// The tenant's keys (never the key or its hash).
#[utoipa::path(get, path = "/v1/api-keys", tag = "api-keys", security(("bearer" = [])),
    responses((status = 200, body = List<KeyView>)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<List<KeyView>, ApiError> {
    let scope = auth.scope(Permission::KeysRead).await?;
    let now = state.now_ms();
    let rows = palisade_store::api_keys::list(state.db.reader(), &scope).await?;
    let data = rows.into_iter().map(|r| view(r, now)).collect::<Result<_, _>>()?;
    Ok(List { data, next_cursor: None })
}

#[utoipa::path(get, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Key id (UUID)")),
    responses((status = 200, body = KeyView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<ApiKeyId>,
) -> Result<Json<KeyView>, ApiError> {
    let scope = auth.scope(Permission::KeysRead).await?;
    let row = palisade_store::api_keys::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(view(row, state.now_ms())?))
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// How long the previous key keeps working (0 to 604800 seconds; default 0).
    #[schema(maximum = 604800)]
    grace_seconds: Option<u64>,
}

/// Issues a new secret for the key. Whoever rotates must hold every
/// permission of the key, since they receive its new secret.
#[utoipa::path(post, path = "/v1/api-keys/{id}/rotate", tag = "api-keys", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Key id (UUID)")), request_body = Option<RotateRequest>,
    responses((status = 200, body = KeyWithSecret), (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn rotate(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<ApiKeyId>,
    body: Option<ValidJson<RotateRequest>>,
) -> Result<Json<KeyWithSecret>, ApiError> {
    let scope = auth.sensitive_scope(Permission::KeysManage).await?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let grace = req.grace_seconds.unwrap_or(0);
    if grace > MAX_GRACE_SECONDS {
        return Err(ApiError::validation("grace_seconds", "must be between 0 and 604800"));
    }
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let row = palisade_store::api_keys::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    // The new secret goes to the caller while the key stays answerable to
    // its person and to the keys above it: only that person, the key itself
    // or a key above it (whose revocation ends it) may receive it.
    let allowed = match auth.principal.kind() {
        PrincipalKind::User { user_id, .. } => Some(user_id.to_string()) == row.owner_user_id,
        PrincipalKind::ApiKey { key_id, .. } => {
            *key_id == id || palisade_store::api_keys::is_below(state.db.reader(), &scope, id, *key_id).await?
        }
        PrincipalKind::Agent { .. } => false,
    };
    if !allowed {
        return Err(
            auth.denied("Only the person answerable for a key, the key itself or a key above it can rotate it.")
        );
    }
    minter_bounds(&auth).covers(&bounds_of(&row)?).map_err(|w| auth.denied(w.detail()))?;
    let key = new_api_key();
    let grace_ms = i64::try_from(grace).unwrap_or(0) * 1000;
    if !palisade_store::api_keys::rotate(&mut tx, &scope, id, &sha256_hex(&key), &prefix_of(&key), now + grace_ms)
        .await?
    {
        return Err(ApiError::conflict("A revoked key cannot be rotated."));
    }
    let event = Event::new("api_key.rotated", Some(scope.tenant_id()), auth.principal.actor())
        .resource("api_key", id)
        .details(serde_json::json!({ "grace_seconds": grace, "prefix": prefix_of(&key) }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let data = serde_json::json!({ "id": id, "prefix": prefix_of(&key), "grace_seconds": grace });
    tx.run(&webhook_event(&scope, "api_key.rotated", data, now)).await?;
    let row = palisade_store::api_keys::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    state.webhook_wake.notify_one();
    Ok(Json(KeyWithSecret { view: view(row, now)?, key }))
}

/// Revokes the key at once (and any previous secret still in its grace period).
#[utoipa::path(delete, path = "/v1/api-keys/{id}", tag = "api-keys", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Key id (UUID)")),
    responses((status = 204), (status = 404, body = palisade_core::Problem)))]
pub async fn revoke(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.scope(Permission::KeysManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let row = palisade_store::api_keys::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    // A key may always revoke itself; any other only if it is no wider.
    let own_key = matches!(auth.principal.kind(), PrincipalKind::ApiKey { key_id, .. } if *key_id == id);
    if !own_key {
        minter_bounds(&auth).covers(&bounds_of(&row)?).map_err(|w| auth.denied(w.detail()))?;
    }
    if !palisade_store::api_keys::revoke(&mut tx, &scope, id, now).await? {
        return Err(ApiError::not_found());
    }
    let event = Event::new("api_key.revoked", Some(scope.tenant_id()), auth.principal.actor()).resource("api_key", id);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let data = serde_json::json!({ "id": id });
    tx.run(&webhook_event(&scope, "api_key.revoked", data, now)).await?;
    tx.commit().await?;
    state.webhook_wake.notify_one();
    Ok(StatusCode::NO_CONTENT)
}

/// The restrictions a request asks for a credential, checked for form
/// (CIDRs, exact origins, a future time); problems go to `errors`.
pub(crate) fn asked_restrictions(
    expires_at: Option<&str>,
    allowed_ips: Option<Vec<String>>,
    allowed_origins: Option<Vec<String>>,
    now: i64,
    errors: &mut Vec<FieldError>,
) -> Asked {
    let mut err = |field: &str, message: &str| errors.push(FieldError { field: field.into(), message: message.into() });
    let expires_at = match expires_at.map(palisade_core::clock::parse_rfc3339) {
        None => None,
        Some(Some(t)) if t > now => Some(t),
        Some(_) => {
            err("expires_at", "must be an RFC 3339 time in the future");
            None
        }
    };
    let nets = allowed_ips.map(|ips| match palisade_guard::net::parse_cidrs(ips.iter().map(String::as_str)) {
        Ok(n) => n.iter().map(ToString::to_string).collect::<Vec<_>>(),
        Err(e) => {
            err("allowed_ips", &e);
            Vec::new()
        }
    });
    let origins: Option<Vec<String>> = allowed_origins.map(|o| o.into_iter().map(|o| o.trim().to_owned()).collect());
    if let Some(bad) = origins.iter().flatten().find(|o| !valid_origin(o)) {
        err("allowed_origins", &format!("`{bad}` is not an origin like https://app.example.com"));
    }
    if nets.as_ref().is_some_and(|n| n.len() > 100) || origins.as_ref().is_some_and(|o| o.len() > 100) {
        err("allowed_ips", "at most 100 entries each");
    }
    Asked { allowed_ips: nets, allowed_origins: origins, expires_at }
}

/// What the caller holds, to mint or touch a credential within.
pub(crate) fn minter_bounds(auth: &Auth) -> Bounds {
    Bounds { permissions: auth.principal.permissions(), restrictions: auth.principal.restrictions().clone() }
}

/// A stored key's own permissions and restrictions.
fn bounds_of(row: &ApiKeyRow) -> Result<Bounds, ApiError> {
    stored_bounds(&row.permissions, &row.allowed_ips, &row.allowed_origins, row.expires_at)
}

/// A stored credential's bounds, from its JSON columns.
pub(crate) fn stored_bounds(
    permissions: &str,
    allowed_ips: &str,
    allowed_origins: &str,
    expires_at: Option<i64>,
) -> Result<Bounds, ApiError> {
    let list = |s: &str| serde_json::from_str::<Vec<String>>(s).map_err(ApiError::internal);
    let names = list(permissions)?;
    Ok(Bounds {
        permissions: PermissionSet::parse(names.iter().map(String::as_str)).map_err(ApiError::internal)?,
        restrictions: Restrictions {
            allowed_ips: list(allowed_ips)?,
            allowed_origins: list(allowed_origins)?,
            expires_at,
        },
    })
}

/// A key event for the tenant's webhooks, to queue with the change.
fn webhook_event(scope: &TenantScope, event_type: &'static str, data: serde_json::Value, now: i64) -> Vec<Stmt> {
    palisade_store::webhooks::enqueue_stmts(&[palisade_webhooks::events::event(
        scope.tenant_id(),
        event_type,
        data,
        now,
    )])
}
