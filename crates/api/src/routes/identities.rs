//! Identities: the numbers and agent identities a tenant sends and calls
//! as, each with its policy (rate, monthly budget, countries), and at most
//! one agent token, which acts as that identity alone.

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{random_base62, sha256_hex, AGENT_TOKEN_PREFIX};
use palisade_core::{ApiError, FieldError, IdentityId, Permission, PermissionSet, PrincipalKind};
use palisade_store::identities::{IdentityRow, NewAgentToken, NewIdentity, Policy};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::List;
use crate::extract::{Auth, PathId, ValidJson};
use crate::state::AppState;

const MAX_RATE_PER_SECOND: u32 = 10_000;
/// 10^12 minor units: far above any real budget, far below overflow.
const MAX_BUDGET: i64 = 1_000_000_000_000;

#[derive(Deserialize, Serialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    /// Messages and calls per second as this identity; absent: no own limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1, maximum = 10000)]
    rate_per_second: Option<u32>,
    /// Spending per calendar month (UTC), in minor units; absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1_000_000_000_000_i64)]
    monthly_budget: Option<i64>,
    /// ISO 3166-1 alpha-2 codes of the destinations allowed; empty or
    /// absent: every country.
    #[serde(default)]
    allowed_countries: Vec<String>,
    /// Media its SIP devices must offer: `required` (SRTP, SDES over TLS or
    /// DTLS, or the call is refused with 488), `preferred` (default) or `off`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(pattern = "^(required|preferred|off)$")]
    srtp: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateIdentityRequest {
    /// E.164, e.g. `+34612345678`; checked against the numbering plan.
    #[schema(pattern = r"^\s*\+[0-9]{8,15}\s*$")]
    number: String,
    /// `number` (default) or `agent` (an AI agent's mobile identity).
    #[serde(default)]
    #[schema(pattern = "^(number|agent)$")]
    kind: Option<String>,
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    #[serde(default)]
    policy: Option<PolicyInput>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateIdentityRequest {
    #[serde(default)]
    #[schema(min_length = 1, max_length = 100)]
    name: Option<String>,
    /// Replaces the whole policy.
    #[serde(default)]
    policy: Option<PolicyInput>,
}

#[derive(Serialize, ToSchema)]
pub struct IdentityView {
    id: String,
    kind: String,
    number: String,
    /// ISO 3166-1 alpha-2, from the number.
    country: String,
    name: String,
    policy: PolicyInput,
    /// `active` or `frozen`.
    status: String,
    /// Who holds a freeze on it: `sysadmin` (lifted only by the operator)
    /// and/or `tenant` (lifted only by the tenant). Absent when active.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    frozen_by: Vec<String>,
    /// Whether control of the number was proved (a code the carrier
    /// delivered to it, or the operator's assignment). Until then other
    /// tenants may register it too and, with a carrier that reaches real
    /// phones, the identity sends and calls nothing.
    number_verified: bool,
    /// `carrier` or `operator`; absent until verified.
    #[serde(skip_serializing_if = "Option::is_none")]
    number_verified_by: Option<String>,
    /// First characters of the current agent token, if one was issued.
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_token_prefix: Option<String>,
    created_at: String,
    updated_at: String,
}

impl TryFrom<IdentityRow> for IdentityView {
    type Error = ApiError;
    fn try_from(r: IdentityRow) -> Result<Self, ApiError> {
        let allowed_countries = serde_json::from_str(&r.allowed_countries).map_err(ApiError::internal)?;
        Ok(IdentityView {
            id: r.id,
            kind: r.kind,
            number: r.number,
            country: r.country,
            name: r.name,
            policy: PolicyInput {
                rate_per_second: r.rate_per_second.and_then(|v| u32::try_from(v).ok()),
                monthly_budget: r.monthly_budget,
                allowed_countries,
                srtp: Some(r.srtp),
            },
            status: r.status,
            frozen_by: [(r.operator_frozen != 0, "sysadmin"), (r.tenant_frozen != 0, "tenant")]
                .into_iter()
                .filter(|&(held, _)| held)
                .map(|(_, by)| by.to_owned())
                .collect(),
            number_verified: r.number_verified_at.is_some(),
            number_verified_by: r.number_verified_by,
            agent_token_prefix: r.agent_token_prefix,
            created_at: palisade_core::clock::rfc3339(r.created_at),
            updated_at: palisade_core::clock::rfc3339(r.updated_at),
        })
    }
}

/// A checked policy, ready to store.
struct CheckedPolicy {
    rate_per_second: Option<i64>,
    monthly_budget: Option<i64>,
    allowed_countries: String,
    srtp: String,
}

fn check_policy(p: PolicyInput, errors: &mut Vec<FieldError>) -> CheckedPolicy {
    let mut field = |f: &str, m: &str| errors.push(FieldError { field: format!("policy.{f}"), message: m.into() });
    if p.rate_per_second.is_some_and(|r| r == 0 || r > MAX_RATE_PER_SECOND) {
        field("rate_per_second", "must be between 1 and 10000");
    }
    if p.monthly_budget.is_some_and(|b| !(0..=MAX_BUDGET).contains(&b)) {
        field("monthly_budget", "must be between 0 and 1000000000000 (minor units)");
    }
    let mut countries = Vec::new();
    for c in &p.allowed_countries {
        let code = c.trim().to_ascii_uppercase();
        if !palisade_guard::phone::is_country(&code) {
            field(
                "allowed_countries",
                &format!("`{c}` is not an ISO 3166-1 alpha-2 code of a country with phone numbers"),
            );
        } else if !countries.contains(&code) {
            countries.push(code);
        }
    }
    if countries.len() > 250 {
        field("allowed_countries", "at most 250 entries");
    }
    let srtp = p.srtp.as_deref().map(str::trim).unwrap_or("preferred");
    if palisade_voice::media::SrtpPolicy::parse(srtp).is_none() {
        field("srtp", "must be `required`, `preferred` or `off`");
    }
    CheckedPolicy {
        rate_per_second: p.rate_per_second.map(i64::from),
        monthly_budget: p.monthly_budget,
        allowed_countries: serde_json::to_string(&countries).unwrap_or_else(|_| "[]".into()),
        srtp: srtp.to_owned(),
    }
}

fn check_name(raw: &str, errors: &mut Vec<FieldError>) -> String {
    let name = palisade_guard::input::sanitize_line(raw);
    if name.is_empty() || name.chars().count() > 100 {
        errors.push(FieldError { field: "name".into(), message: "must be 1 to 100 characters".into() });
    }
    name
}

fn event_for(action: &'static str, auth: &Auth, id: &str, number: &str) -> Event {
    Event::new(action, Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("identity", id)
        .details(serde_json::json!({ "number": palisade_guard::phone::masked(number) }))
}

/// Registers a number (or agent identity) for the tenant.
#[utoipa::path(post, path = "/v1/identities", tag = "identities", security(("bearer" = [])),
    request_body = CreateIdentityRequest,
    responses((status = 201, body = IdentityView), (status = 400, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<CreateIdentityRequest>,
) -> Result<(StatusCode, Json<IdentityView>), ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let mut errors = Vec::new();
    let parsed = palisade_guard::phone::parse_e164(req.number.trim()).map_err(|m| {
        errors.push(FieldError { field: "number".into(), message: m.into() });
    });
    let kind = req.kind.as_deref().unwrap_or("number");
    if kind != "number" && kind != "agent" {
        errors.push(FieldError { field: "kind".into(), message: "must be `number` or `agent`".into() });
    }
    let name = check_name(req.name.as_deref().unwrap_or(req.number.trim()), &mut errors);
    let policy = check_policy(req.policy.unwrap_or_default(), &mut errors);
    let Ok(number) = parsed else {
        return Err(ApiError::validation_many(errors));
    };
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    let id = IdentityId::new();
    let now = state.now_ms();
    let new = NewIdentity {
        id,
        kind,
        number: &number.number,
        country: &number.country,
        name: &name,
        policy: Policy {
            rate_per_second: policy.rate_per_second,
            monthly_budget: policy.monthly_budget,
            allowed_countries: &policy.allowed_countries,
            srtp: &policy.srtp,
        },
        now,
    };
    let mut tx = state.db.begin().await?;
    match palisade_store::identities::insert(&mut *tx, &scope, &new).await {
        Err(e) if e.is_unique_violation() => {
            // Only the tenant's own numbers: whether another tenant registered it stays unsaid.
            return Err(ApiError::conflict("This tenant has registered this number already."));
        }
        r => r?,
    }
    let event = event_for("identity.created", &auth, &id.to_string(), &number.number);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let row = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(row.try_into()?)))
}

#[utoipa::path(get, path = "/v1/identities", tag = "identities", security(("bearer" = [])),
    responses((status = 200, body = List<IdentityView>)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<List<IdentityView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesRead).await?;
    let rows = palisade_store::identities::list(state.db.reader(), &scope).await?;
    let data = rows.into_iter().map(IdentityView::try_from).collect::<Result<_, _>>()?;
    Ok(List { data, next_cursor: None })
}

#[utoipa::path(get, path = "/v1/identities/{id}", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = IdentityView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<IdentityView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesRead).await?;
    let row = palisade_store::identities::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(row.try_into()?))
}

/// Renames an identity or replaces its policy.
#[utoipa::path(patch, path = "/v1/identities/{id}", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")), request_body = UpdateIdentityRequest,
    responses((status = 200, body = IdentityView), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
    ValidJson(req): ValidJson<UpdateIdentityRequest>,
) -> Result<Json<IdentityView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let current = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let mut errors = Vec::new();
    let name = match req.name.as_deref() {
        Some(n) => check_name(n, &mut errors),
        None => current.name.clone(),
    };
    let policy = match req.policy {
        Some(p) => check_policy(p, &mut errors),
        None => CheckedPolicy {
            rate_per_second: current.rate_per_second,
            monthly_budget: current.monthly_budget,
            allowed_countries: current.allowed_countries.clone(),
            srtp: current.srtp.clone(),
        },
    };
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    let stored = Policy {
        rate_per_second: policy.rate_per_second,
        monthly_budget: policy.monthly_budget,
        allowed_countries: &policy.allowed_countries,
        srtp: &policy.srtp,
    };
    palisade_store::identities::update(&mut tx, &scope, id, &name, &stored, now).await?;
    let event = event_for("identity.updated", &auth, &current.id, &current.number);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let row = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok(Json(row.try_into()?))
}

#[utoipa::path(delete, path = "/v1/identities/{id}", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 204), (status = 404, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.sensitive_scope(Permission::IdentitiesManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let current = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    // Deleting and registering the number again must not lift a freeze.
    if current.status != "active" {
        return Err(ApiError::frozen());
    }
    if !palisade_store::identities::delete(&mut tx, &scope, id).await? {
        // Frozen since it was read.
        return Err(ApiError::frozen());
    }
    let event = event_for("identity.deleted", &auth, &current.id, &current.number);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    // Its SIP credentials stop answering on this instance at once.
    palisade_voice::credentials::forget_identity(id);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct AgentTokenRequest {
    /// What the token may do, among `messages:read`, `messages:write`,
    /// `calls:read`, `calls:write`, `cdrs:read` (always only as this
    /// identity). Default: all five. You must hold each one.
    #[schema(schema_with = crate::openapi::agent_permissions)]
    permissions: Option<Vec<String>>,
    /// RFC 3339; default: that of the minting key, else none.
    #[schema(format = DateTime)]
    expires_at: Option<String>,
    /// CIDRs; default: those of the minting key, else any address.
    #[schema(max_items = 100)]
    allowed_ips: Option<Vec<String>>,
    /// Exact origins; default: those of the minting key, else any.
    #[schema(schema_with = crate::openapi::origins)]
    allowed_origins: Option<Vec<String>>,
}

#[derive(Serialize, ToSchema)]
pub struct AgentTokenView {
    identity_id: String,
    /// `at_…`: shown in this response only. Acts as this identity alone.
    token: String,
    prefix: String,
    permissions: Vec<String>,
    allowed_ips: Vec<String>,
    allowed_origins: Vec<String>,
    expires_at: Option<String>,
    /// The person the token answers to: it works only while they hold a
    /// role that grants its permissions.
    answerable_user_id: Option<String>,
}

/// Issues the identity's agent token, revoking the previous one. The token
/// holds at most what the caller holds, works only where and until when
/// the caller's credential does, and answers to the caller's person (and
/// minting key): removed, demoted or revoked, the token ends or narrows.
#[utoipa::path(post, path = "/v1/identities/{id}/agent-token", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")), request_body(content = Option<AgentTokenRequest>),
    responses((status = 201, body = AgentTokenView), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn agent_token(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
    body: Option<ValidJson<AgentTokenRequest>>,
) -> Result<(StatusCode, Json<AgentTokenView>), ApiError> {
    let scope = auth.sensitive_scope(Permission::IdentitiesManage).await?;
    let req = body.map(|b| b.0).unwrap_or_default();
    let now = state.now_ms();
    let mut errors = Vec::new();
    let permissions = match &req.permissions {
        None => PermissionSet::agent(),
        Some(names) => match PermissionSet::parse(names.iter().map(String::as_str)) {
            Ok(p) if !p.is_subset_of(PermissionSet::agent()) || p == PermissionSet::EMPTY => {
                let message =
                    "a non-empty subset of messages:read, messages:write, calls:read, calls:write, cdrs:read, \
                               recordings:read";
                errors.push(FieldError { field: "permissions".into(), message: message.into() });
                p
            }
            Ok(p) => p,
            Err(e) => {
                errors.push(FieldError { field: "permissions".into(), message: e.to_string() });
                PermissionSet::EMPTY
            }
        },
    };
    let asked = super::api_keys::asked_restrictions(
        req.expires_at.as_deref(),
        req.allowed_ips,
        req.allowed_origins,
        now,
        &mut errors,
    );
    if !errors.is_empty() {
        return Err(ApiError::validation_many(errors));
    }
    let bounds = super::api_keys::minter_bounds(&auth).mint(permissions, asked).map_err(|w| auth.denied(w.detail()))?;
    let minted_by_key = match auth.principal.kind() {
        PrincipalKind::ApiKey { key_id, .. } => Some(key_id.to_string()),
        _ => None,
    };
    let owner = auth.principal.answerable_user().map(|u| u.to_string());
    let list = |v: &[String]| serde_json::to_string(v).map_err(ApiError::internal);
    let r = &bounds.restrictions;
    let (perms_json, ips_json, origins_json) =
        (list(&bounds.permissions.to_strings())?, list(&r.allowed_ips)?, list(&r.allowed_origins)?);
    let token = format!("{AGENT_TOKEN_PREFIX}{}", random_base62(32));
    let prefix = token[..8].to_owned();
    let hash = sha256_hex(&token);
    let new = NewAgentToken {
        hash: &hash,
        prefix: &prefix,
        owner_user_id: owner.as_deref(),
        key_id: minted_by_key.as_deref(),
        permissions: &perms_json,
        allowed_ips: &ips_json,
        allowed_origins: &origins_json,
        expires_at: r.expires_at,
    };
    let mut tx = state.db.begin().await?;
    let current = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    // A new token revokes the old one: nobody revokes a token wider than themselves.
    let old = palisade_store::identities::agent_token_bounds(&mut *tx, &scope, id).await?;
    if let Some(old) = &old {
        let bounds =
            super::api_keys::stored_bounds(&old.permissions, &old.allowed_ips, &old.allowed_origins, old.expires_at)?;
        if bounds.restrictions.expires_at.is_none_or(|e| e > now) {
            super::api_keys::minter_bounds(&auth).covers(&bounds).map_err(|w| auth.denied(w.detail()))?;
        }
    }
    // Exactly the token checked: one issued meanwhile (PostgreSQL) is not replaced unchecked.
    let replaces = old.as_ref().map(|o| o.hash.as_str());
    if !palisade_store::identities::set_agent_token(&mut tx, &scope, id, &new, replaces, now).await? {
        return Err(ApiError::conflict("The identity's agent token changed meanwhile; try again."));
    }
    let event =
        event_for("identity.agent_token_issued", &auth, &current.id, &current.number).details(serde_json::json!({
            "number": palisade_guard::phone::masked(&current.number),
            "prefix": prefix,
            "permissions": bounds.permissions.to_strings(),
            "expires_at": r.expires_at.map(palisade_core::clock::rfc3339),
        }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let view = AgentTokenView {
        identity_id: id.to_string(),
        token,
        prefix,
        permissions: bounds.permissions.to_strings(),
        allowed_ips: r.allowed_ips.clone(),
        allowed_origins: r.allowed_origins.clone(),
        expires_at: r.expires_at.map(palisade_core::clock::rfc3339),
        answerable_user_id: owner,
    };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The tenant's kill-switch for one of its identities: from this moment it
/// sends and calls nothing, and its agent token gets 423.
#[utoipa::path(post, path = "/v1/identities/{id}/freeze", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = IdentityView), (status = 404, body = palisade_core::Problem)))]
pub async fn freeze(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<IdentityView>, ApiError> {
    set_own_status(state, auth, id, true).await
}

/// Lifts the tenant's own freeze; one the operator set stays (423).
#[utoipa::path(post, path = "/v1/identities/{id}/unfreeze", tag = "identities", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = IdentityView), (status = 404, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn unfreeze(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<Json<IdentityView>, ApiError> {
    set_own_status(state, auth, id, false).await
}

async fn set_own_status(
    state: AppState,
    auth: Auth,
    id: IdentityId,
    frozen: bool,
) -> Result<Json<IdentityView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let current = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    if !palisade_store::identities::set_own_status(&mut tx, &scope, id, frozen, now).await? {
        // Gone since it was read, or (an unfreeze) the operator holds a freeze.
        palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
        return Err(ApiError::new(
            StatusCode::LOCKED,
            "frozen",
            "The operator froze this identity; only the operator can unfreeze it.",
        ));
    }
    // Only a change is an event (freezing twice records one freeze).
    if (current.tenant_frozen != 0) != frozen {
        let action = if frozen { "identity.frozen" } else { "identity.unfrozen" };
        let event = event_for(action, &auth, &current.id, &current.number);
        palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    }
    let row = palisade_store::identities::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok(Json(row.try_into()?))
}
