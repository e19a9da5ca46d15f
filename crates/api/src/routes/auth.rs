//! People: sign-up, email verification, password reset, login, refresh,
//! logout, invitations.

use std::str::FromStr;

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{
    has_shape, new_email_token, new_refresh_token, sha256_hex, EMAIL_TOKEN_PREFIX, REFRESH_PREFIX,
};
use palisade_auth::AccessClaims;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, PrincipalKind, Role, TenantId, TenantScope, UserId};
use palisade_store::tokens::{NewEmailToken, RefreshUse, SessionFactors};
use palisade_store::users::NewUser;
use palisade_store::Tx;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::extract::{Auth, Ctx, ValidJson};
use crate::ops;
use crate::state::AppState;

const EMAIL_TOKEN_TTL_MS: i64 = 24 * 3600 * 1000;
const RESET_TOKEN_TTL_MS: i64 = 30 * 60 * 1000;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SignupRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    #[schema(min_length = 12, max_length = 256)]
    password: String,
    #[schema(min_length = 1, max_length = 200)]
    tenant_name: String,
}

#[derive(Serialize, ToSchema)]
pub struct StatusResponse {
    /// `pending_verification`, `verified`, `active` or `sent`.
    pub(super) status: &'static str,
}

/// Creates a tenant and its owner, inactive until the email is verified.
/// The response is the same whether or not the address is already
/// registered (that owner gets a notice by mail instead), so sign-up is not
/// an oracle for who has an account. A repeated sign-up of an address not
/// yet verified changes nothing the first one set: it mails another token
/// for the same sign-up, and from then on every token of it needs the
/// password chosen at verification, so neither caller's password becomes
/// active by a click on a mail.
#[utoipa::path(post, path = "/v1/auth/signup", tag = "auth", request_body = SignupRequest,
    responses((status = 201, body = StatusResponse), (status = 400, body = palisade_core::Problem)))]
pub async fn signup(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<SignupRequest>,
) -> Result<(StatusCode, Json<StatusResponse>), ApiError> {
    let email = ops::new_email(&req.email, "email");
    let name = ops::tenant_name(&req.tenant_name, "tenant_name");
    let pw = ops::password(&req.password, email.as_deref().ok(), "password");
    let (email, name) = match (email, name, pw) {
        (Ok(e), Ok(n), Ok(())) => (e, n),
        (e, n, p) => {
            return Err(ApiError::validation_many([e.err(), n.err(), p.err()].into_iter().flatten().collect()))
        }
    };
    let hash = state.argon2.hash(req.password).await?;
    let now = state.now_ms();
    let token = new_email_token();

    match ops::registered(state.db.reader(), &email).await? {
        ops::Registered::No => {
            let (tenant_id, user_id) = (TenantId::new(), UserId::new());
            let scope = TenantScope::for_system(tenant_id);
            let mut tx = state.db.begin().await?;
            palisade_store::tenants::insert(&mut *tx, tenant_id, &name, now).await?;
            let user = NewUser {
                id: user_id,
                email: &email,
                email_skeleton: &palisade_guard::email::skeleton(&email),
                // Kept so that logging in before verifying says why it fails;
                // verification applies the hash bound to the token used.
                password_hash: Some(&hash),
                role: Role::Owner.as_str(),
                status: "pending",
                now,
            };
            match palisade_store::users::insert(&mut *tx, &scope, &user).await {
                // A concurrent sign-up of the same address won; answer alike.
                Err(e) if e.is_unique_violation() => return Ok(pending()),
                r => r?,
            }
            insert_verify_token(&mut tx, &scope, user_id, &token, Some(&hash), now).await?;
            let event = Event::new("auth.signup", Some(tenant_id), Actor::user(user_id)).resource("user", user_id);
            palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
            commit(tx).await?;
        }
        // An address that passes for a registered one gets the answer a
        // registered one gets, and changes nothing; its owner hears of it.
        ops::Registered::LookAlike(existing) => {
            let (tenant_id, user_id) = parse_ids(&existing.tenant_id, &existing.id)?;
            let event =
                Event::new("auth.signup_look_alike", Some(tenant_id), Actor::anonymous()).resource("user", user_id);
            palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
            send_mail(
                &state,
                &existing.email,
                "Palisade sign-up attempt",
                "Someone tried to sign up for Palisade with an address that looks like\n\
                 this one but is not the same (it differs in characters that look alike).\n\
                 No account was created for it.\n\n\
                 Nothing has changed for your account. If you did not try this yourself,\n\
                 someone may be trying to pass as you: you can ignore this message.\n"
                    .into(),
            )
            .await;
            return Ok(pending());
        }
        ops::Registered::Same(existing) => {
            let (tenant_id, user_id) = parse_ids(&existing.tenant_id, &existing.id)?;
            let scope = TenantScope::for_system(tenant_id);
            // The account's own address, should the one typed differ in form.
            let email = existing.email.as_str();
            if existing.status != "pending" {
                let event = Event::new("auth.signup_for_existing_account", Some(tenant_id), Actor::anonymous())
                    .resource("user", user_id);
                palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
                send_mail(
                    &state,
                    email,
                    "Palisade sign-up attempt",
                    "Someone tried to sign up for Palisade with this address,\n\
                     which already has an account.\n\n\
                     If it was you, log in instead. If not, you can ignore this message.\n"
                        .into(),
                )
                .await;
                return Ok(pending());
            }
            // The hash of this request is dropped: a second caller's
            // password must never become active.
            let mut tx = state.db.begin().await?;
            palisade_store::tokens::unbind_verify_passwords(&mut *tx, &scope, user_id).await?;
            insert_verify_token(&mut tx, &scope, user_id, &token, None, now).await?;
            let event =
                Event::new("auth.signup_repeated", Some(tenant_id), Actor::anonymous()).resource("user", user_id);
            palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
            commit(tx).await?;
            let body = format!(
                "Someone asked again to sign up for Palisade with this address, which is\n\
                 not verified yet. Because the sign-up was requested more than once, you\n\
                 choose your password when you verify (no password sent with a sign-up\n\
                 will be used). Your verification token is:\n\n    {token}\n\n\
                 Verify your address and choose your password with:\n\n    \
                 curl -X POST {base}/v1/auth/verify-email \\\n      \
                 -H 'Content-Type: application/json' \\\n      \
                 -d '{{\"token\":\"{token}\",\"password\":\"YOUR NEW PASSWORD\"}}'\n\n\
                 Any earlier verification mail for this address needs a password too.\n\
                 The token expires in 24 hours. If you did not sign up, ignore this message.\n",
                base = state.config.server.public_url
            );
            send_mail(&state, email, "Verify your Palisade account", body).await;
            return Ok(pending());
        }
    }
    let body = format!(
        "Welcome to Palisade.\n\nYour verification token is:\n\n    {token}\n\n\
         Verify your address with:\n\n    curl -X POST {base}/v1/auth/verify-email \\\n      \
         -H 'Content-Type: application/json' \\\n      -d '{{\"token\":\"{token}\"}}'\n\n\
         The token expires in 24 hours. If you did not sign up, ignore this message.\n",
        base = state.config.server.public_url
    );
    send_mail(&state, &email, "Verify your Palisade account", body).await;
    Ok(pending())
}

async fn insert_verify_token(
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: UserId,
    token: &str,
    password_hash: Option<&str>,
    now: i64,
) -> Result<(), ApiError> {
    let t = NewEmailToken {
        user_id,
        token_hash: &sha256_hex(token),
        purpose: "verify",
        password_hash,
        expires_at: now + EMAIL_TOKEN_TTL_MS,
    };
    palisade_store::tokens::insert_email_token(&mut **tx, scope, &t).await?;
    Ok(())
}

fn pending() -> (StatusCode, Json<StatusResponse>) {
    (StatusCode::CREATED, Json(StatusResponse { status: "pending_verification" }))
}

/// Mail failures are logged, never shown: the response must not depend on them.
pub(super) async fn send_mail(state: &AppState, to: &str, subject: &str, body: String) {
    if let Err(e) = state.mailer.send(to, subject, body).await {
        tracing::error!(error = %e, "sending mail failed");
    }
}

async fn commit(tx: Tx) -> Result<(), ApiError> {
    tx.commit().await?;
    Ok(())
}

/// Refuses work for a frozen tenant inside the transaction doing it.
async fn ensure_not_frozen(tx: &mut Tx, scope: &TenantScope) -> Result<(), ApiError> {
    let tenant = palisade_store::tenants::get(&mut **tx, scope).await?.ok_or_else(ApiError::not_found)?;
    if tenant.status != "active" {
        return Err(ApiError::frozen());
    }
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VerifyEmailRequest {
    /// The mailed token (`et_…`).
    #[schema(pattern = "^et_[A-Za-z0-9]{43}$")]
    token: String,
    /// The password to activate instead of the sign-up's. Required when
    /// the sign-up was requested more than once.
    #[serde(default)]
    #[schema(min_length = 12, max_length = 256)]
    password: Option<String>,
}

/// Activates the account the emailed token was issued for, with the
/// password chosen here or, when none is and the sign-up was requested
/// only once, the sign-up's. Ends every session of the account and voids
/// its other verification tokens.
#[utoipa::path(post, path = "/v1/auth/verify-email", tag = "auth", request_body = VerifyEmailRequest,
    responses((status = 200, body = StatusResponse), (status = 400, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn verify_email(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<VerifyEmailRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    let invalid = || ApiError::validation("token", "is invalid or expired");
    let must_choose = || {
        ApiError::validation(
            "password",
            "is required: this sign-up was requested more than once, so the password is chosen at verification",
        )
    };
    if !has_shape(&req.token, EMAIL_TOKEN_PREFIX, 43) {
        return Err(invalid());
    }
    let token_hash = sha256_hex(&req.token);
    // Look the token up before spending an Argon2 run on a password, and
    // judge the password against the account's own address.
    let live = palisade_store::tokens::find_email_token(state.db.reader(), &token_hash, "verify", state.now_ms())
        .await?
        .ok_or_else(invalid)?;
    let (tenant_id, user_id) = parse_ids(&live.tenant_id, &live.user_id)?;
    let scope = TenantScope::for_system(tenant_id);
    let chosen = match req.password {
        Some(pw) => {
            let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(invalid)?;
            ops::all_valid([ops::password(&pw, Some(&user.email), "password")])?;
            Some(state.argon2.hash(pw).await?)
        }
        None if live.password_hash.is_none() => return Err(must_choose()),
        None => None,
    };
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let used =
        palisade_store::tokens::consume_email_token(&mut *tx, &token_hash, "verify", now).await?.ok_or_else(invalid)?;
    // The sign-up may have been repeated since the look-up: the bound
    // password, read again in this transaction, is the one that counts.
    let hash = chosen.as_deref().or(used.password_hash.as_deref()).ok_or_else(must_choose)?;
    ensure_not_frozen(&mut tx, &scope).await?;
    if !palisade_store::users::activate(&mut tx, &scope, user_id, hash, now).await? {
        return Err(invalid());
    }
    palisade_store::tokens::void_email_tokens(&mut *tx, &scope, user_id, "verify", now).await?;
    palisade_store::tokens::revoke_user_families(&mut tx, &scope, user_id, now).await?;
    palisade_store::mfa::void_challenges(&mut *tx, &scope, user_id, now).await?;
    let event = Event::new("auth.email_verified", Some(tenant_id), Actor::user(user_id))
        .resource("user", user_id)
        .details(serde_json::json!({ "password_chosen": chosen.is_some() }));
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    commit(tx).await?;
    Ok(Json(StatusResponse { status: "verified" }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

/// Mails a password-reset token (30 minutes, single use) to the address
/// if it has an account, active or still pending. The answer is the same
/// whether or not it has one, and the mail is issued off the request path
/// so the time does not tell either. At most one mail a minute per address;
/// a new token voids the previous one.
#[utoipa::path(post, path = "/v1/auth/password-reset", tag = "auth", request_body = PasswordResetRequest,
    responses((status = 202, body = StatusResponse), (status = 400, body = palisade_core::Problem)))]
pub async fn password_reset(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<PasswordResetRequest>,
) -> Result<(StatusCode, Json<StatusResponse>), ApiError> {
    let email = ops::email(&req.email, "email").map_err(|e| ApiError::validation_many(vec![e]))?;
    let user = ops::registered(state.db.reader(), &email).await?.same();
    let now = state.now_ms();
    if let Some(user) = user.filter(|u| u.status == "active" || u.status == "pending") {
        if state.abuse.reset_mail_allowed(&palisade_guard::email::canonical(&user.email), now).await {
            let state = state.clone();
            tokio::spawn(async move {
                if let Err(e) = issue_reset(&state, &ctx, &user, now).await {
                    tracing::error!(error = %e, "issuing a password reset failed");
                }
            });
        }
    }
    Ok((StatusCode::ACCEPTED, Json(StatusResponse { status: "reset_requested" })))
}

async fn issue_reset(
    state: &AppState,
    ctx: &Ctx,
    user: &palisade_store::users::UserRow,
    now: i64,
) -> Result<(), ApiError> {
    let (tenant_id, user_id) = parse_ids(&user.tenant_id, &user.id)?;
    let scope = TenantScope::for_system(tenant_id);
    let token = new_email_token();
    let mut tx = state.db.begin().await?;
    palisade_store::tokens::void_email_tokens(&mut *tx, &scope, user_id, "reset", now).await?;
    let t = NewEmailToken {
        user_id,
        token_hash: &sha256_hex(&token),
        purpose: "reset",
        password_hash: None,
        expires_at: now + RESET_TOKEN_TTL_MS,
    };
    palisade_store::tokens::insert_email_token(&mut *tx, &scope, &t).await?;
    let event =
        Event::new("auth.password_reset_requested", Some(tenant_id), Actor::anonymous()).resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    commit(tx).await?;
    let body = format!(
        "Someone asked to reset the password of your Palisade account.\n\n\
         Your reset token is:\n\n    {token}\n\n\
         Choose a new password with:\n\n    curl -X POST {base}/v1/auth/password-reset/confirm \\\n      \
         -H 'Content-Type: application/json' \\\n      \
         -d '{{\"token\":\"{token}\",\"password\":\"YOUR NEW PASSWORD\"}}'\n\n\
         The token works once and expires in 30 minutes. Resetting ends every\n\
         session of the account. If you did not ask for this, ignore this message:\n\
         your password stays as it is.\n",
        base = state.config.server.public_url
    );
    send_mail(state, &user.email, "Reset your Palisade password", body).await;
    Ok(())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordResetConfirmRequest {
    #[schema(pattern = "^et_[A-Za-z0-9]{43}$")]
    token: String,
    #[schema(min_length = 12, max_length = 256)]
    password: String,
}

/// Sets a new password with a mailed reset token. The token works once;
/// every session of the account ends (refresh and access tokens), its
/// login lock and throttle are lifted for this address, and a sign-up not
/// yet verified becomes active (the mailbox's holder chose the password).
#[utoipa::path(post, path = "/v1/auth/password-reset/confirm", tag = "auth",
    request_body = PasswordResetConfirmRequest,
    responses((status = 200, body = StatusResponse), (status = 400, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn password_reset_confirm(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<PasswordResetConfirmRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    let invalid = invalid_token;
    let MailedToken { token_hash, tenant_id, user_id, scope, hash } =
        token_with_password(&state, &req.token, "reset", req.password).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    // One conditional update: of two racing confirms, one wins.
    palisade_store::tokens::consume_email_token(&mut *tx, &token_hash, "reset", now).await?.ok_or_else(invalid)?;
    ensure_not_frozen(&mut tx, &scope).await?;
    let before = palisade_store::users::get(&mut *tx, &scope, user_id).await?.ok_or_else(invalid)?;
    if !palisade_store::users::reset_password(&mut tx, &scope, user_id, &hash, now).await? {
        return Err(invalid());
    }
    for purpose in ["reset", "verify"] {
        palisade_store::tokens::void_email_tokens(&mut *tx, &scope, user_id, purpose, now).await?;
    }
    let sessions = palisade_store::tokens::revoke_user_families(&mut tx, &scope, user_id, now).await?;
    // A sign-in half done with the old password ends too.
    palisade_store::mfa::void_challenges(&mut *tx, &scope, user_id, now).await?;
    let event = Event::new("auth.password_reset", Some(tenant_id), Actor::user(user_id))
        .resource("user", user_id)
        .details(serde_json::json!({ "activated": before.status == "pending", "sessions_ended": sessions }));
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    commit(tx).await?;
    state.abuse.login_password_reset(&palisade_guard::email::canonical(&before.email), ctx.client_ip, now).await;
    Ok(Json(StatusResponse { status: "active" }))
}

fn invalid_token() -> ApiError {
    ApiError::validation("token", "is invalid or expired")
}

/// A live mailed token and the new password of its person.
struct MailedToken {
    token_hash: String,
    tenant_id: TenantId,
    user_id: UserId,
    scope: TenantScope,
    /// The Argon2id hash of the new password.
    hash: String,
}

/// Looks the token of `purpose` up before spending an Argon2 run on the
/// password, and judges the password against the person's own address.
/// The token is used up later, in the transaction that acts on it.
async fn token_with_password(
    state: &AppState,
    token: &str,
    purpose: &str,
    password: String,
) -> Result<MailedToken, ApiError> {
    if !has_shape(token, EMAIL_TOKEN_PREFIX, 43) {
        return Err(invalid_token());
    }
    let token_hash = sha256_hex(token);
    let live = palisade_store::tokens::find_email_token(state.db.reader(), &token_hash, purpose, state.now_ms())
        .await?
        .ok_or_else(invalid_token)?;
    let (tenant_id, user_id) = parse_ids(&live.tenant_id, &live.user_id)?;
    let scope = TenantScope::for_system(tenant_id);
    let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(invalid_token)?;
    ops::all_valid([ops::password(&password, Some(&user.email), "password")])?;
    let hash = state.argon2.hash(password).await?;
    Ok(MailedToken { token_hash, tenant_id, user_id, scope, hash })
}

fn parse_ids(tenant: &str, user: &str) -> Result<(TenantId, UserId), ApiError> {
    Ok((TenantId::from_str(tenant).map_err(ApiError::internal)?, UserId::from_str(user).map_err(ApiError::internal)?))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AcceptInviteRequest {
    #[schema(pattern = "^et_[A-Za-z0-9]{43}$")]
    token: String,
    #[schema(min_length = 12, max_length = 256)]
    password: String,
}

/// Sets the password of an invited person and activates them.
#[utoipa::path(post, path = "/v1/auth/accept-invite", tag = "auth", request_body = AcceptInviteRequest,
    responses((status = 200, body = StatusResponse), (status = 400, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn accept_invite(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<AcceptInviteRequest>,
) -> Result<Json<StatusResponse>, ApiError> {
    let invalid = invalid_token;
    let MailedToken { token_hash, tenant_id, user_id, scope, hash } =
        token_with_password(&state, &req.token, "invite", req.password).await?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    palisade_store::tokens::consume_email_token(&mut *tx, &token_hash, "invite", now).await?.ok_or_else(invalid)?;
    ensure_not_frozen(&mut tx, &scope).await?;
    if !palisade_store::users::activate(&mut tx, &scope, user_id, &hash, now).await? {
        return Err(invalid());
    }
    let event = Event::new("user.invite_accepted", Some(tenant_id), Actor::user(user_id)).resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    commit(tx).await?;
    Ok(Json(StatusResponse { status: "active" }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    email: String,
    password: String,
}

#[derive(Serialize, ToSchema)]
pub struct TokenResponse {
    pub(super) access_token: String,
    refresh_token: String,
    /// Always `Bearer`.
    token_type: &'static str,
    /// Seconds until the access token expires.
    expires_in: u64,
}

fn bad_credentials() -> ApiError {
    sign_in_refused("Invalid email or password.")
}

/// A sign-in that did not prove who it is: one 401 for every reason.
pub(super) fn sign_in_refused(detail: &'static str) -> ApiError {
    ApiError::new(StatusCode::UNAUTHORIZED, "unauthenticated", detail)
        .with_header(http::header::WWW_AUTHENTICATE, http::HeaderValue::from_static("Bearer"))
}

/// Exchanges email and password for an access and a refresh token. A
/// failure never says whether the email exists, and takes as long either way.
#[utoipa::path(post, path = "/v1/auth/login", tag = "auth", request_body = LoginRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn login(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<LoginRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let email = palisade_guard::email::normalize(&req.email);
    // Locks are per address as typed (in canonical form when it parses, so
    // that another spelling of it is the same lock), whether or not an
    // account has it, so a lock tells nothing about accounts.
    let account =
        email.as_deref().map(palisade_guard::email::canonical).unwrap_or_else(|| req.email.trim().to_lowercase());
    let user = match &email {
        Some(e) => ops::registered(state.db.reader(), e).await?.same(),
        None => None,
    };
    let phc = user
        .as_ref()
        .and_then(|u| u.password_hash.clone())
        .unwrap_or_else(|| palisade_auth::password::dummy_hash().to_owned());
    let Some(attempt) = state.abuse.login_attempt(&account, ctx.client_ip, state.now_ms()).await? else {
        // Locked: exactly the wrong-password answer, after the same work
        // (the hash is checked against nothing anyone knows), so neither the
        // body nor the time tells a lock from a wrong password.
        state.argon2.verify(req.password, palisade_auth::password::dummy_hash().to_owned()).await?;
        let now = state.now_ms();
        if state.abuse.notice_locked_login(&account, now).await {
            let tenant = user.as_ref().and_then(|u| TenantId::from_str(&u.tenant_id).ok());
            let mut event = Event::new("auth.login_refused_locked", tenant, Actor::anonymous());
            if let Some(u) = &user {
                event = event.resource("user", &u.id);
            }
            let (db, audit) = (state.db.clone(), ctx.audit.clone());
            tokio::spawn(async move {
                if let Err(e) = palisade_audit::record(&db, &event, &audit, now).await {
                    tracing::error!(error = %e, "audit append failed");
                }
            });
        }
        return Err(bad_credentials());
    };
    let verified = state.argon2.verify(req.password, phc).await?;
    let now = state.now_ms();
    let user = match user {
        Some(u) if verified && u.password_hash.is_some() => u,
        other => {
            let tenant = other.as_ref().and_then(|u| TenantId::from_str(&u.tenant_id).ok());
            let mut event = Event::new("auth.login_failed", tenant, Actor::anonymous());
            if let Some(u) = &other {
                event = event.resource("user", &u.id);
            }
            palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
            let failure = state.abuse.login_failed(attempt, now).await?;
            let started = [
                ("auth.account_locked", "address", failure.address_locked_until),
                ("auth.account_throttled", "account", failure.account_throttled_until),
            ];
            for (action, scope, until) in started {
                let Some(until) = until else { continue };
                let mut e = Event::new(action, tenant, Actor::anonymous())
                    .details(serde_json::json!({ "scope": scope, "until": palisade_core::clock::rfc3339(until) }));
                if let Some(u) = &other {
                    e = e.resource("user", &u.id);
                }
                palisade_audit::record(&state.db, &e, &ctx.audit, now).await?;
                tracing::warn!(target: "palisade::abuse", scope, "failed logins: {action}");
            }
            return Err(bad_credentials());
        }
    };
    state.abuse.login_succeeded(attempt).await?;
    let tokens = sign_in(&state, &ctx, &user, "password", serde_json::Value::Null, now).await?;
    state.abuse.trust_login_address(attempt, now).await;
    Ok(Json(tokens))
}

/// A signed-in person proves their password again (to enrol a second
/// factor): the lockouts of a login apply, and a wrong password counts as
/// a failed login. Refused: 403 `reauthentication_required`.
pub(super) async fn check_password(
    state: &AppState,
    ctx: &Ctx,
    user: &palisade_store::users::UserRow,
    password: String,
) -> Result<(), ApiError> {
    let wrong = || {
        ApiError::new(StatusCode::FORBIDDEN, "reauthentication_required", "Give your current password (`password`).")
    };
    let account = palisade_guard::email::canonical(&user.email);
    let dummy = || palisade_auth::password::dummy_hash().to_owned();
    let Some(attempt) = state.abuse.login_attempt(&account, ctx.client_ip, state.now_ms()).await? else {
        state.argon2.verify(password, dummy()).await?;
        return Err(wrong());
    };
    let verified = state.argon2.verify(password, user.password_hash.clone().unwrap_or_else(dummy)).await?;
    if verified && user.password_hash.is_some() {
        state.abuse.login_succeeded(attempt).await?;
        return Ok(());
    }
    let now = state.now_ms();
    state.abuse.login_failed(attempt, now).await?;
    let tenant = TenantId::from_str(&user.tenant_id).ok();
    let event = Event::new("auth.password_check_failed", tenant, Actor::user(parse_ids(&user.tenant_id, &user.id)?.1))
        .resource("user", &user.id);
    palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
    Err(wrong())
}

/// A person who proved who they are (`method`: `password`, `email_code`):
/// refused while their sign-up is pending, their account not active or
/// their tenant frozen. With a second factor enrolled they get a challenge
/// (403 `mfa_required` with an `mfa_token`) instead of a session; without
/// one, a new session, audited as `auth.login`.
pub(super) async fn sign_in(
    state: &AppState,
    ctx: &Ctx,
    user: &palisade_store::users::UserRow,
    method: &str,
    extra: serde_json::Value,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    let (tenant_id, user_id) = parse_ids(&user.tenant_id, &user.id)?;
    let scope = TenantScope::for_system(tenant_id);
    ensure_may_sign_in(state, &scope, user).await?;
    let first_factor = match method {
        "email_code" => "email",
        "oidc" => "fed",
        _ => "pwd",
    };
    // Checked after the password or code was proved: it tells nothing.
    ensure_sso_allows(state, &scope, &user.role, first_factor).await?;
    if super::mfa::enrolled(state, &scope, user_id).await? {
        return Err(super::mfa::challenge(state, ctx, &scope, user_id, first_factor, now).await?);
    }
    let factors = SessionFactors { amr: first_factor.to_owned(), auth_time: now, mfa_at: None };
    let mut details = serde_json::json!({ "method": method });
    if let (Some(d), serde_json::Value::Object(more)) = (details.as_object_mut(), extra) {
        d.extend(more);
    }
    open_session(state, ctx, user, &factors, details, now).await
}

/// A tenant that signs in with single sign-on: no session begun by a
/// password or mailed code (`first_factor` other than `fed`). Owners keep
/// the password, for the day the provider fails.
pub(super) async fn ensure_sso_allows(
    state: &AppState,
    scope: &TenantScope,
    role: &str,
    first_factor: &str,
) -> Result<(), ApiError> {
    if first_factor != "fed"
        && role != Role::Owner.as_str()
        && palisade_store::mfa::tenant_requires_sso(state.db.reader(), scope).await?
    {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "sso_required",
            "Your tenant signs in with single sign-on (GET /v1/auth/oidc/providers).",
        ));
    }
    Ok(())
}

/// Sessions are for active people of active tenants only.
pub(super) async fn ensure_may_sign_in(
    state: &AppState,
    scope: &TenantScope,
    user: &palisade_store::users::UserRow,
) -> Result<(), ApiError> {
    if user.status == "pending" {
        return Err(ApiError::forbidden_because("Verify your email address before logging in."));
    }
    if user.status != "active" {
        return Err(bad_credentials());
    }
    let tenant = palisade_store::tenants::get(state.db.reader(), scope).await?.ok_or_else(bad_credentials)?;
    if tenant.status != "active" {
        return Err(ApiError::frozen());
    }
    Ok(())
}

/// A new session for a person who proved who they are as `factors` say,
/// audited as `auth.login` with `details`.
pub(super) async fn open_session(
    state: &AppState,
    ctx: &Ctx,
    user: &palisade_store::users::UserRow,
    factors: &SessionFactors,
    details: serde_json::Value,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    let (tenant_id, user_id) = parse_ids(&user.tenant_id, &user.id)?;
    let scope = TenantScope::for_system(tenant_id);
    let role = Role::from_str(&user.role).map_err(|_| ApiError::internal("stored role is invalid"))?;
    let family_id = uuid::Uuid::new_v4().to_string();
    let mut tx = state.db.begin().await?;
    let family_expiry = now + refresh_ttl_ms(state) + 24 * 3600 * 1000;
    palisade_store::tokens::create_family(&mut *tx, &scope, &family_id, user_id, now, family_expiry, factors).await?;
    let tokens = issue_tokens(state, &mut tx, &scope, user_id, role, &family_id, factors, now).await?;
    let event =
        Event::new("auth.login", Some(tenant_id), Actor::user(user_id)).resource("user", user_id).details(details);
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    commit(tx).await?;
    Ok(tokens)
}

fn refresh_ttl_ms(state: &AppState) -> i64 {
    i64::try_from(state.config.auth.refresh_token_ttl_secs).unwrap_or(i64::MAX / 4_000) * 1000
}

/// A new access token and a new refresh token in the same family.
#[allow(clippy::too_many_arguments)]
async fn issue_tokens(
    state: &AppState,
    tx: &mut Tx,
    scope: &TenantScope,
    user_id: UserId,
    role: Role,
    family_id: &str,
    factors: &SessionFactors,
    now: i64,
) -> Result<TokenResponse, ApiError> {
    let access = access_token(state, scope, user_id, role, family_id, factors, now)?;
    let refresh_token = new_refresh_token();
    palisade_store::tokens::insert_refresh(
        &mut **tx,
        scope,
        &sha256_hex(&refresh_token),
        family_id,
        user_id,
        now,
        now + refresh_ttl_ms(state),
    )
    .await?;
    Ok(TokenResponse {
        access_token: access.access_token,
        refresh_token,
        token_type: "Bearer",
        expires_in: access.expires_in,
    })
}

/// An access token alone, without a refresh token.
#[derive(Serialize, ToSchema)]
pub struct AccessTokenResponse {
    pub(super) access_token: String,
    /// Always `Bearer`.
    pub(super) token_type: &'static str,
    /// Seconds until the access token expires.
    pub(super) expires_in: u64,
}

/// A signed access token of the session, saying how it began (`amr`,
/// `auth_time`) and when it last gave a second factor (`mfa_time`).
pub(super) fn access_token(
    state: &AppState,
    scope: &TenantScope,
    user_id: UserId,
    role: Role,
    family_id: &str,
    factors: &SessionFactors,
    now: i64,
) -> Result<AccessTokenResponse, ApiError> {
    let ttl = state.config.auth.access_token_ttl_secs;
    let iat = now / 1000;
    let claims = AccessClaims {
        iss: state.jwt.issuer().to_owned(),
        sub: user_id.to_string(),
        tenant_id: scope.tenant_id().to_string(),
        role: role.as_str().to_owned(),
        permissions: role.permissions().to_strings(),
        jti: uuid::Uuid::new_v4().to_string(),
        sid: family_id.to_owned(),
        iat,
        nbf: None,
        exp: iat + i64::try_from(ttl).unwrap_or(3600),
        amr: factors.amr.split_whitespace().map(str::to_owned).collect(),
        auth_time: factors.auth_time / 1000,
        mfa_time: factors.mfa_at.map(|ms| ms / 1000),
    };
    let access_token = state.jwt.sign(&claims).map_err(ApiError::internal)?;
    Ok(AccessTokenResponse { access_token, token_type: "Bearer", expires_in: ttl })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    #[schema(pattern = "^rt_[A-Za-z0-9]{43}$")]
    refresh_token: String,
}

/// Rotates both tokens. A refresh token works once; presenting a used one
/// again revokes its whole family (every session token derived from it).
#[utoipa::path(post, path = "/v1/auth/refresh", tag = "auth", request_body = RefreshRequest,
    responses((status = 200, body = TokenResponse), (status = 401, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn refresh(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<RefreshRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    if !has_shape(&req.refresh_token, REFRESH_PREFIX, 43) {
        return Err(ApiError::unauthenticated());
    }
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    match palisade_store::tokens::use_refresh(&mut tx, &sha256_hex(&req.refresh_token), now).await? {
        RefreshUse::Fresh { tenant_id, user_id, family_id } => {
            let (tenant_id, user_id) = parse_ids(&tenant_id, &user_id)?;
            let scope = TenantScope::for_system(tenant_id);
            let user =
                palisade_store::users::get(&mut *tx, &scope, user_id).await?.ok_or_else(ApiError::unauthenticated)?;
            let tenant = palisade_store::tenants::get(&mut *tx, &scope).await?.ok_or_else(ApiError::unauthenticated)?;
            if user.status != "active" {
                return Err(ApiError::unauthenticated());
            }
            if tenant.status != "active" {
                return Err(ApiError::frozen());
            }
            let role = Role::from_str(&user.role).map_err(|_| ApiError::internal("stored role is invalid"))?;
            let family_expiry = now + refresh_ttl_ms(&state) + 24 * 3600 * 1000;
            palisade_store::tokens::extend_family(&mut *tx, &scope, &family_id, family_expiry).await?;
            let factors = palisade_store::tokens::family_factors(&mut *tx, &scope, &family_id)
                .await?
                .ok_or_else(ApiError::unauthenticated)?;
            // A session a tenant's single sign-on rule no longer allows.
            let first = factors.amr.split_whitespace().next().unwrap_or_default();
            if ensure_sso_allows(&state, &scope, &user.role, first).await.is_err() {
                return Err(ApiError::unauthenticated());
            }
            let tokens = issue_tokens(&state, &mut tx, &scope, user_id, role, &family_id, &factors, now).await?;
            let event =
                Event::new("auth.token_refreshed", Some(tenant_id), Actor::user(user_id)).resource("user", user_id);
            palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
            commit(tx).await?;
            Ok(Json(tokens))
        }
        RefreshUse::Reused { tenant_id, family_id } => {
            let tenant_id = TenantId::from_str(&tenant_id).map_err(ApiError::internal)?;
            let scope = TenantScope::for_system(tenant_id);
            palisade_store::tokens::revoke_family(&mut tx, &scope, &family_id, now).await?;
            let event = Event::new("auth.refresh_reused", Some(tenant_id), Actor::anonymous())
                .resource("session", &family_id)
                .details(serde_json::json!({ "outcome": "family_revoked" }));
            palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
            commit(tx).await?;
            Err(ApiError::unauthenticated())
        }
        RefreshUse::Invalid => Err(ApiError::unauthenticated()),
    }
}

/// Revokes the access token (until it would expire) and its refresh family.
#[utoipa::path(post, path = "/v1/auth/logout", tag = "auth", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = palisade_core::Problem)))]
pub async fn logout(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    let PrincipalKind::User { user_id, jti, family_id, expires_at_ms, .. } = auth.principal.kind() else {
        // API keys have no session to end: wrong kind of credential here.
        return Err(ApiError::unauthenticated());
    };
    let now = state.now_ms();
    let scope = auth.principal.own_scope();
    let mut tx = state.db.begin().await?;
    palisade_store::tokens::revoke_jti(&mut *tx, jti, *expires_at_ms).await?;
    palisade_store::tokens::revoke_family(&mut tx, &scope, family_id, now).await?;
    let event = Event::new("auth.logout", Some(scope.tenant_id()), Actor::user(*user_id)).resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    commit(tx).await?;
    Ok(StatusCode::NO_CONTENT)
}
