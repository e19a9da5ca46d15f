//! People of a tenant: list, invite, change role, remove. Nobody can grant
//! or touch more than they hold, and the last owner cannot be removed.

use std::str::FromStr;

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{new_email_token, sha256_hex};
use palisade_core::{ApiError, Permission, Role, TenantScope, UserId};
use palisade_store::tokens::NewEmailToken;
use palisade_store::users::{NewUser, UserRow};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::List;
use crate::extract::{Auth, PathId, ValidJson};
use crate::ops;
use crate::state::AppState;

const INVITE_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

#[derive(Serialize, ToSchema)]
pub struct UserView {
    id: String,
    email: String,
    role: String,
    /// `pending` (email not verified), `invited` or `active`.
    status: String,
    created_at: String,
}

impl From<UserRow> for UserView {
    fn from(u: UserRow) -> Self {
        UserView {
            id: u.id,
            email: u.email,
            role: u.role,
            status: u.status,
            created_at: palisade_core::clock::rfc3339(u.created_at),
        }
    }
}

#[utoipa::path(get, path = "/v1/users", tag = "users", security(("bearer" = [])), responses((status = 200, body = List<UserView>)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<List<UserView>, ApiError> {
    let scope = auth.scope(Permission::UsersRead).await?;
    let rows = palisade_store::users::list(state.db.reader(), &scope).await?;
    Ok(List { data: rows.into_iter().map(UserView::from).collect(), next_cursor: None })
}

#[utoipa::path(get, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id (UUID)")),
    responses((status = 200, body = UserView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<UserId>,
) -> Result<Json<UserView>, ApiError> {
    let scope = auth.scope(Permission::UsersRead).await?;
    let row = palisade_store::users::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    Ok(Json(row.into()))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InviteRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    role: Role,
}

/// Invites a person by email; they set a password with `POST /v1/auth/accept-invite`.
#[utoipa::path(post, path = "/v1/users", tag = "users", security(("bearer" = [])), request_body = InviteRequest,
    responses((status = 201, body = UserView), (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn invite(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<InviteRequest>,
) -> Result<(StatusCode, Json<UserView>), ApiError> {
    let scope = auth.sensitive_scope(Permission::UsersManage).await?;
    let email = ops::new_email(&req.email, "email").map_err(|e| ApiError::validation_many(vec![e]))?;
    ensure_can_grant(&auth, req.role)?;
    let cannot = || ApiError::conflict("This email address cannot be invited.");
    // Registered here or elsewhere, or a look-alike of such: one answer.
    if !matches!(ops::registered(state.db.reader(), &email).await?, ops::Registered::No) {
        return Err(cannot());
    }
    let now = state.now_ms();
    let id = UserId::new();
    let token = new_email_token();
    let mut tx = state.db.begin().await?;
    let skeleton = palisade_guard::email::skeleton(&email);
    let user = NewUser {
        id,
        email: &email,
        email_skeleton: &skeleton,
        password_hash: None,
        role: req.role.as_str(),
        status: "invited",
        now,
    };
    match palisade_store::users::insert(&mut *tx, &scope, &user).await {
        Err(e) if e.is_unique_violation() => return Err(cannot()),
        r => r?,
    }
    let invite = NewEmailToken {
        user_id: id,
        token_hash: &sha256_hex(&token),
        purpose: "invite",
        password_hash: None,
        expires_at: now + INVITE_TTL_MS,
    };
    palisade_store::tokens::insert_email_token(&mut *tx, &scope, &invite).await?;
    let event = Event::new("user.invited", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", id)
        .details(serde_json::json!({ "role": req.role.as_str() }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let row =
        palisade_store::users::get(&mut *tx, &scope, id).await?.ok_or_else(|| ApiError::internal("user vanished"))?;
    tx.commit().await?;

    let body = format!(
        "You have been invited to a Palisade tenant.\n\nYour invitation token is:\n\n    {token}\n\n\
         Accept it and choose your password with:\n\n    curl -X POST {base}/v1/auth/accept-invite \\\n      \
         -H 'Content-Type: application/json' \\\n      -d '{{\"token\":\"{token}\",\n           \
         \"password\":\"<your new password>\"}}'\n\nThe token expires in 7 days.\n",
        base = state.config.server.public_url
    );
    if let Err(e) = state.mailer.send(&email, "Your Palisade invitation", body).await {
        tracing::error!(error = %e, "sending invitation failed");
    }
    Ok((StatusCode::CREATED, Json(row.into())))
}

fn ensure_can_grant(auth: &Auth, role: Role) -> Result<(), ApiError> {
    if role.permissions().is_subset_of(auth.principal.permissions()) {
        Ok(())
    } else {
        Err(auth.denied("You cannot grant or touch a role with permissions you do not hold."))
    }
}

/// The target must not hold more than the caller (an admin cannot demote or remove an owner).
fn ensure_can_manage(auth: &Auth, target: &UserRow) -> Result<Role, ApiError> {
    let role = Role::from_str(&target.role).map_err(|_| ApiError::internal("stored role is invalid"))?;
    ensure_can_grant(auth, role)?;
    Ok(role)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateUserRequest {
    role: Role,
}

/// Changes a person's role; it takes effect on their next request.
#[utoipa::path(patch, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id (UUID)")), request_body = UpdateUserRequest,
    responses((status = 200, body = UserView), (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<UserId>,
    ValidJson(req): ValidJson<UpdateUserRequest>,
) -> Result<Json<UserView>, ApiError> {
    let scope = auth.sensitive_scope(Permission::UsersManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::tenants::lock(&mut *tx, &scope).await?;
    let target = palisade_store::users::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let old = ensure_can_manage(&auth, &target)?;
    ensure_can_grant(&auth, req.role)?;
    if old == Role::Owner && req.role != Role::Owner {
        ensure_other_owner(&mut tx, &scope, &target).await?;
    }
    palisade_store::users::set_role(&mut tx, &scope, id, req.role.as_str(), now).await?;
    let event = Event::new("user.role_changed", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", id)
        .details(serde_json::json!({ "from": old.as_str(), "to": req.role.as_str() }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    let row = palisade_store::users::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    tx.commit().await?;
    Ok(Json(row.into()))
}

/// Removes a person's second factors (they lost them and their recovery
/// codes): their sessions end, they sign in with the password alone and
/// enrol again. Nobody resets the factors of someone above them. A person
/// with none: nothing changes.
#[utoipa::path(delete, path = "/v1/users/{id}/mfa", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id (UUID)")),
    responses((status = 204), (status = 403, body = palisade_core::Problem), (status = 404, body = palisade_core::Problem)))]
pub async fn reset_mfa(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<UserId>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.sensitive_scope(Permission::UsersManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let target = palisade_store::users::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    ensure_can_manage(&auth, &target)?;
    let had_totp = palisade_store::mfa::remove(&mut tx, &scope, id).await?;
    let passkeys = palisade_store::passkeys::remove_all(&mut tx, &scope, id).await?;
    // Nothing to remove: nothing changes (the same answer, so a reset is
    // safe to repeat).
    if !had_totp && passkeys == 0 {
        return Ok(StatusCode::NO_CONTENT);
    }
    palisade_store::mfa::void_challenges(&mut *tx, &scope, id, now).await?;
    let sessions = palisade_store::tokens::revoke_user_families(&mut tx, &scope, id, now).await?;
    let event = Event::new("user.mfa_reset", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", id)
        .details(serde_json::json!({ "sessions_ended": sessions }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let body = "The second factor of your Palisade account was removed by an administrator of\n\
                your tenant, and your sessions were ended. Sign in with your password and enrol\n\
                a second factor again. If you did not ask for this, tell your administrator.\n"
        .to_owned();
    if let Err(e) = state.mailer.send(&target.email, "Your Palisade second factor was reset", body).await {
        tracing::error!(error = %e, "sending mail failed");
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn ensure_other_owner(
    tx: &mut palisade_store::Tx,
    scope: &TenantScope,
    target: &UserRow,
) -> Result<(), ApiError> {
    let owners = palisade_store::users::count_active_owners(&mut **tx, scope).await?;
    let target_counts = target.status == "active";
    if owners - i64::from(target_counts) < 1 {
        return Err(ApiError::conflict("A tenant must keep at least one active owner."));
    }
    Ok(())
}

/// Removes a person and ends their sessions.
#[utoipa::path(delete, path = "/v1/users/{id}", tag = "users", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "User id (UUID)")),
    responses((status = 204), (status = 404, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<UserId>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.sensitive_scope(Permission::UsersManage).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::tenants::lock(&mut *tx, &scope).await?;
    let target = palisade_store::users::get(&mut *tx, &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let role = ensure_can_manage(&auth, &target)?;
    if role == Role::Owner {
        ensure_other_owner(&mut tx, &scope, &target).await?;
    }
    palisade_store::users::delete(&mut tx, &scope, id).await?;
    let event = Event::new("user.removed", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", id)
        .details(serde_json::json!({ "role": role.as_str() }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
