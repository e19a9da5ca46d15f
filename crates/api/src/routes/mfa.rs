//! Second factors: TOTP enrolment and one-time recovery codes, the second
//! step of a sign-in, step-up for sensitive operations, and the tenant's
//! rule that owners and admins have one. A wrong factor is counted before
//! it is compared, per person over every challenge and step-up; too many in
//! a row and the second factor waits. A TOTP code works once.

use std::str::FromStr;

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{has_shape, new_mfa_token, sha256_hex, MFA_TOKEN_PREFIX};
use palisade_auth::totp::{self, Totp};
use palisade_core::principal::Actor;
use palisade_core::{ApiError, FieldError, Permission, PrincipalKind, Role, TenantScope, UserId};
use palisade_store::mfa;
use palisade_store::tokens::SessionFactors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::auth::{
    access_token, ensure_may_sign_in, open_session, send_mail, sign_in_refused, AccessTokenResponse, TokenResponse,
};
use super::passkeys::PasskeyAnswer;
use crate::extract::{Auth, Ctx, ValidJson};
use crate::state::AppState;

fn secs_ms(secs: u64) -> i64 {
    i64::try_from(secs).unwrap_or(i64::MAX / 1000) * 1000
}

/// What the sealed secret is bound to: this person of this tenant.
/// The AAD a TOTP secret was sealed with by the platform's static key,
/// before tenants had keys.
fn legacy_aad(tenant: &str, user: &str) -> Vec<u8> {
    format!("user_totp\0{tenant}\0{user}").into_bytes()
}

/// Where a TOTP secret lives under the tenant's keys.
fn place(user: &str) -> palisade_seal::envelope::Place<'_> {
    palisade_seal::envelope::Place { table: "user_totp", column: "secret", row: user }
}

/// TOTP secrets, for the re-sealing job (older ones were sealed by the
/// static key).
pub const SEALED_COLUMNS: palisade_keys::reseal::SealedColumn = palisade_keys::reseal::SealedColumn {
    column: palisade_store::static_sealed::Column { table: "user_totp", id: "user_id", column: "secret_sealed" },
    place,
    legacy_aad: Some(legacy_aad),
};

/// A person's TOTP secret as stored: under the tenant's keys, or (enrolled
/// before them) under the static key.
async fn open_totp(state: &AppState, scope: &TenantScope, user: UserId, stored: &str) -> Result<Vec<u8>, ApiError> {
    let keys = state.keys.existing(scope).await?;
    let (tenant, user) = (scope.tenant_id().to_string(), user.to_string());
    palisade_seal::envelope::open_secret(
        keys.as_deref(),
        &state.sealer,
        place(&user),
        &legacy_aad(&tenant, &user),
        stored,
    )
    .map_err(|_| ApiError::internal("a TOTP secret does not open"))
}

/// Whether the person has a confirmed second factor.
pub(super) async fn enrolled(state: &AppState, scope: &TenantScope, user: UserId) -> Result<bool, ApiError> {
    Ok(!methods(state, scope, user).await?.is_empty())
}

/// The second factors the person has: `totp` and `recovery_code`, `passkey`.
async fn methods(state: &AppState, scope: &TenantScope, user: UserId) -> Result<Vec<&'static str>, ApiError> {
    let mut m = Vec::new();
    if mfa::totp(state.db.reader(), scope, user).await?.is_some_and(|t| t.confirmed_at.is_some()) {
        m.push("totp");
    }
    if mfa::recovery_codes_left(state.db.reader(), scope, user).await? > 0 {
        m.push("recovery_code");
    }
    if !palisade_store::passkeys::list(state.db.reader(), scope, user).await?.is_empty() {
        m.push("passkey");
    }
    Ok(m)
}

/// Opens a challenge for a person who proved their first factor: the 403
/// `mfa_required` that carries its `mfa_token`.
pub(super) async fn challenge(
    state: &AppState,
    ctx: &Ctx,
    scope: &TenantScope,
    user: UserId,
    first_factor: &str,
    now: i64,
) -> Result<ApiError, ApiError> {
    let token = new_mfa_token();
    let ttl = state.config.auth.mfa.challenge_ttl_secs;
    let mut tx = state.db.begin().await?;
    mfa::create_challenge(&mut *tx, scope, user, &sha256_hex(&token), first_factor, now, now + secs_ms(ttl)).await?;
    let event = Event::new("auth.mfa_challenged", Some(scope.tenant_id()), Actor::user(user))
        .resource("user", user)
        .details(serde_json::json!({ "first_factor": first_factor }));
    palisade_audit::append(&mut *tx, &event, &ctx.audit, now).await?;
    tx.commit().await?;
    Ok(ApiError::mfa_required("Give your second factor at POST /v1/auth/mfa with this mfa_token.")
        .with_extra("mfa_token", token)
        .with_extra("methods", serde_json::json!(methods(state, scope, user).await?))
        .with_extra("expires_in", ttl))
}

/// A second factor as given: a TOTP code, a recovery code or a passkey.
enum Factor<'a> {
    Totp(&'a str),
    Recovery(&'a str),
    Passkey(&'a PasskeyAnswer),
}

impl Factor<'_> {
    fn method(&self) -> &'static str {
        match self {
            Factor::Totp(_) => "totp",
            Factor::Recovery(_) => "recovery_code",
            Factor::Passkey(_) => "passkey",
        }
    }
}

/// Exactly one of `code`, `recovery_code` and `passkey`.
fn factor<'a>(
    code: &'a Option<String>,
    recovery_code: &'a Option<String>,
    passkey: &'a Option<PasskeyAnswer>,
) -> Result<Factor<'a>, ApiError> {
    match (code, recovery_code, passkey) {
        (Some(c), None, None) => Ok(Factor::Totp(c)),
        (None, Some(r), None) => Ok(Factor::Recovery(r)),
        (None, None, Some(p)) => Ok(Factor::Passkey(p)),
        _ => Err(ApiError::validation_many(vec![FieldError {
            field: "code".into(),
            message: "give one of `code` (from your authenticator app), `recovery_code` or `passkey`".into(),
        }])),
    }
}

fn wrong_factor() -> ApiError {
    sign_in_refused("Invalid code.")
}

/// What a right factor proved.
enum Proof {
    /// A TOTP code of this step, accepted (a confirmed enrolment), or to be
    /// accepted by the caller (confirming a pending one).
    Totp(i64),
    /// A recovery code, used up.
    Recovery,
    /// A passkey's assertion, checked.
    Passkey,
}

impl Proof {
    /// Its RFC 8176 `amr` value.
    fn amr(&self) -> &'static str {
        match self {
            Proof::Totp(_) => "otp",
            Proof::Recovery => "rec",
            Proof::Passkey => "hwk",
        }
    }
}

/// Checks a person's second factor, or 401. A TOTP code is counted before
/// it is compared (per person, over every challenge and step-up; the try
/// that uses the last one allowed locks TOTP for a while, and the person is
/// told) and, for a confirmed enrolment, accepted once. A recovery code (60
/// bits: no guessing) is not held back by that lock, so a stranger who has
/// the password cannot keep its owner out. Every wrong factor counts
/// against the client address as a failed credential.
async fn prove(
    state: &AppState,
    ctx: &Ctx,
    scope: &TenantScope,
    user: UserId,
    given: &Factor<'_>,
    confirmed: bool,
    ceremony: (&str, &str),
) -> Result<Proof, ApiError> {
    let now = state.now_ms();
    let rules = &state.config.auth.mfa;
    let (mut lock, mut unseen) = (None, false);
    let proved = match given {
        Factor::Totp(code) => {
            let lock_until = now + secs_ms(rules.lockout_secs);
            let mut tx = state.db.begin().await?;
            let row =
                mfa::take_try(&mut *tx, scope, user, now, i64::from(rules.max_tries), lock_until, confirmed).await?;
            tx.commit().await?;
            lock = row.as_ref().filter(|r| r.locked_until != 0).map(|r| (r.tries, r.locked_until));
            unseen = row.is_none();
            match row {
                Some(r) => {
                    let secret = open_totp(state, scope, user, &r.secret_sealed).await?;
                    let generator =
                        Totp::new(secret, &rules.issuer, "-").ok_or_else(|| ApiError::internal("TOTP secret"))?;
                    match generator.step_of(code, u64::try_from(now / 1000).unwrap_or(0)) {
                        Some(step) if confirmed => {
                            let step = i64::try_from(step).unwrap_or(i64::MAX);
                            let mut tx = state.db.begin().await?;
                            let fresh = mfa::accept_step(&mut *tx, scope, user, step).await?;
                            tx.commit().await?;
                            fresh.then_some(Proof::Totp(step))
                        }
                        Some(step) => Some(Proof::Totp(i64::try_from(step).unwrap_or(i64::MAX))),
                        None => None,
                    }
                }
                None => None,
            }
        }
        Factor::Recovery(code) if confirmed => match totp::normalize_recovery_code(code) {
            Some(code) => {
                let hash = state.recovery_codes.digest(&user.to_string(), &code);
                let mut tx = state.db.begin().await?;
                let unused = mfa::use_recovery_code(&mut *tx, scope, user, &hash, now).await?;
                if unused {
                    mfa::reset_tries(&mut *tx, scope, user).await?;
                }
                tx.commit().await?;
                unused.then_some(Proof::Recovery)
            }
            None => None,
        },
        Factor::Recovery(_) => None,
        Factor::Passkey(answer) if confirmed => {
            let (purpose, bound_to) = ceremony;
            super::passkeys::verify(state, scope, user, answer, purpose, bound_to).await?.then_some(Proof::Passkey)
        }
        Factor::Passkey(_) => None,
    };
    if let Some(proof) = proved {
        return Ok(proof);
    }
    state.abuse.credential_failed(&state.db, "second_factor", ctx.client_ip, now, ctx.audit.clone()).await?;
    let tenant = Some(scope.tenant_id());
    let failed =
        Event::new("auth.mfa_failed", tenant, Actor::user(user)).resource("user", user).details(serde_json::json!({
            "method": given.method(),
            // Refused unseen: TOTP was locked before this try.
            "locked": unseen,
        }));
    palisade_audit::record(&state.db, &failed, &ctx.audit, now).await?;
    // This try used the last one allowed: TOTP now waits, and its owner hears.
    if let Some((tries, until)) = lock {
        let locked = Event::new("auth.mfa_locked", tenant, Actor::user(user))
            .resource("user", user)
            .details(serde_json::json!({ "tries": tries, "until": palisade_core::clock::rfc3339(until) }));
        palisade_audit::record(&state.db, &locked, &ctx.audit, now).await?;
        if let Some(u) = palisade_store::users::get(state.db.reader(), scope, user).await? {
            let body = format!(
                "Several wrong codes were given for your Palisade account's second factor, so it\n\
                 waits {} minutes before it takes codes again (recovery codes still work).\n\n\
                 Only someone who knows your password (or holds a session of yours) can try\n\
                 codes: if this was not you, change your password.\n",
                rules.lockout_secs / 60
            );
            send_mail(state, &u.email, "Your Palisade second factor is locked for a while", body).await;
        }
    }
    Err(wrong_factor())
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MfaRequest {
    /// From the 403 `mfa_required` of the sign-in.
    #[schema(pattern = "^mfa_[A-Za-z0-9]{43}$")]
    mfa_token: String,
    /// The six digits of the authenticator app.
    #[schema(pattern = r"^\s*[0-9]{6}\s*$")]
    code: Option<String>,
    /// One of the recovery codes (each works once).
    #[schema(max_length = 20)]
    recovery_code: Option<String>,
    /// A passkey's answer (options from `POST /v1/auth/mfa/passkey`).
    passkey: Option<PasskeyAnswer>,
}

/// The second step of a sign-in: the `mfa_token` of the first and a second
/// factor give the login response. The token works once, for
/// `auth.mfa.challenge_ttl_secs`.
#[utoipa::path(post, path = "/v1/auth/mfa", tag = "auth", request_body = MfaRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = palisade_core::Problem),
        (status = 401, body = palisade_core::Problem), (status = 403, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem), (status = 423, body = palisade_core::Problem)))]
pub async fn complete(
    State(state): State<AppState>,
    ctx: Ctx,
    pass: Option<axum::Extension<crate::abuse::AddressPass>>,
    ValidJson(req): ValidJson<MfaRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let given = factor(&req.code, &req.recovery_code, &req.passkey)?;
    if !has_shape(&req.mfa_token, MFA_TOKEN_PREFIX, 43) {
        return Err(wrong_factor());
    }
    let now = state.now_ms();
    if pass.is_some_and(|p| p.credentials_locked) {
        state.abuse.credential_refused_locked(&state.db, ctx.client_ip, now, ctx.audit.clone()).await;
        return Err(wrong_factor());
    }
    let token_hash = sha256_hex(&req.mfa_token);
    let c = mfa::challenge(state.db.reader(), &token_hash, now).await?.ok_or_else(wrong_factor)?;
    let tenant_id = palisade_core::TenantId::from_str(&c.tenant_id).map_err(ApiError::internal)?;
    let user_id = UserId::from_str(&c.user_id).map_err(ApiError::internal)?;
    let scope = TenantScope::for_system(tenant_id);
    let amr = prove(&state, &ctx, &scope, user_id, &given, true, ("second_factor", &token_hash)).await?.amr();
    let mut tx = state.db.begin().await?;
    let live = mfa::consume_challenge(&mut *tx, &token_hash, state.now_ms()).await?;
    tx.commit().await?;
    if !live {
        return Err(wrong_factor());
    }
    let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(wrong_factor)?;
    ensure_may_sign_in(&state, &scope, &user).await?;
    // The tenant's single sign-on rule may have been turned on meanwhile.
    super::auth::ensure_sso_allows(&state, &scope, &user.role, &c.first_factor).await?;
    let now = state.now_ms();
    let factors =
        SessionFactors { amr: format!("{} {amr} mfa", c.first_factor), auth_time: c.created_at, mfa_at: Some(now) };
    let method = match c.first_factor.as_str() {
        "email" => "email_code",
        "fed" => "oidc",
        _ => "password",
    };
    let details = serde_json::json!({ "method": method, "second_factor": given.method() });
    let tokens = open_session(&state, &ctx, &user, &factors, details, now).await?;
    if amr == "rec" {
        recovery_code_used_notice(&state, &scope, &user).await?;
    }
    Ok(Json(tokens))
}

async fn recovery_code_used_notice(
    state: &AppState,
    scope: &TenantScope,
    user: &palisade_store::users::UserRow,
) -> Result<(), ApiError> {
    let user_id = UserId::from_str(&user.id).map_err(ApiError::internal)?;
    let left = mfa::recovery_codes_left(state.db.reader(), scope, user_id).await?;
    let body = format!(
        "A recovery code was used to sign in to your Palisade account.\n\n\
         You have {left} recovery codes left. If this was not you, change your password\n\
         and make new recovery codes at once.\n"
    );
    send_mail(state, &user.email, "A Palisade recovery code was used", body).await;
    Ok(())
}

/// The person of a session; other credentials have no second factor.
fn person(auth: &Auth) -> Result<(UserId, &str, Role), ApiError> {
    match auth.principal.kind() {
        PrincipalKind::User { user_id, family_id, role, .. } => Ok((*user_id, family_id.as_str(), *role)),
        _ => Err(ApiError::forbidden_because("Only a person's session has a second factor.")),
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StepUpRequest {
    /// The six digits of the authenticator app.
    #[schema(pattern = r"^\s*[0-9]{6}\s*$")]
    code: Option<String>,
    /// One of the recovery codes (each works once).
    #[schema(max_length = 20)]
    recovery_code: Option<String>,
    /// A passkey's answer (options from `POST /v1/auth/step-up/passkey`).
    passkey: Option<PasskeyAnswer>,
}

/// Gives a second factor within a session: the new access token (the
/// refresh token stays) lets sensitive operations through for
/// `auth.mfa.step_up_secs`. Tokens refreshed later do not carry it.
#[utoipa::path(post, path = "/v1/auth/step-up", tag = "auth", request_body = StepUpRequest, security(("bearer" = [])),
    responses((status = 200, body = AccessTokenResponse), (status = 400, body = palisade_core::Problem),
        (status = 401, body = palisade_core::Problem), (status = 403, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn step_up(
    State(state): State<AppState>,
    auth: Auth,
    pass: Option<axum::Extension<crate::abuse::AddressPass>>,
    ValidJson(req): ValidJson<StepUpRequest>,
) -> Result<Json<AccessTokenResponse>, ApiError> {
    let given = factor(&req.code, &req.recovery_code, &req.passkey)?;
    let (user_id, family_id, _) = person(&auth)?;
    let scope = auth.principal.own_scope();
    if !enrolled(&state, &scope, user_id).await? {
        return Err(ApiError::conflict("No second factor is enrolled (POST /v1/me/mfa/totp)."));
    }
    if pass.is_some_and(|p| p.credentials_locked) {
        let now = state.now_ms();
        state.abuse.credential_refused_locked(&state.db, auth.ctx.client_ip, now, auth.ctx.audit.clone()).await;
        return Err(wrong_factor());
    }
    let amr = prove(&state, &auth.ctx, &scope, user_id, &given, true, ("step_up", family_id)).await?.amr();
    // The factor is this access token's only: the session does not keep it,
    // so whoever else holds its refresh token gets no step-up from it.
    let mut factors = palisade_store::tokens::family_factors(state.db.reader(), &scope, family_id)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    if !factors.amr.split_whitespace().any(|a| a == "mfa") {
        factors.amr = format!("{} {amr} mfa", factors.amr);
    }
    let now = state.now_ms();
    factors.mfa_at = Some(now);
    let role = match auth.principal.kind() {
        PrincipalKind::User { role, .. } => *role,
        _ => return Err(ApiError::unauthenticated()),
    };
    let token = access_token(&state, &scope, user_id, role, family_id, &factors, now)?;
    let event = Event::new("auth.step_up", Some(scope.tenant_id()), auth.principal.actor())
        .resource("session", family_id)
        .details(serde_json::json!({ "second_factor": given.method() }));
    palisade_audit::record(&state.db, &event, &auth.ctx.audit, state.now_ms()).await?;
    Ok(Json(token))
}

/// The session gave a second factor now: its new access token.
async fn gave_factor(
    state: &AppState,
    tx: &mut palisade_store::Tx,
    auth: &Auth,
    amr: &str,
) -> Result<AccessTokenResponse, ApiError> {
    let (user_id, family_id, role) = person(auth)?;
    let scope = auth.principal.own_scope();
    let now = state.now_ms();
    let factors = palisade_store::tokens::family_gave_factor(&mut **tx, &scope, family_id, user_id, amr, now)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    access_token(state, &scope, user_id, role, family_id, &factors, now)
}

#[derive(Serialize, ToSchema)]
pub struct MfaStatus {
    /// `off`, `pending` (enrolment not confirmed yet) or `on`.
    totp: &'static str,
    /// Unused recovery codes.
    recovery_codes_left: i64,
    /// Registered passkeys.
    passkeys: usize,
    /// Whether your tenant requires a second factor of you.
    required: bool,
}

/// Your second factors.
#[utoipa::path(get, path = "/v1/me/mfa", tag = "me", security(("bearer" = [])),
    responses((status = 200, body = MfaStatus), (status = 401, body = palisade_core::Problem)))]
pub async fn status(State(state): State<AppState>, auth: Auth) -> Result<Json<MfaStatus>, ApiError> {
    let (user_id, _, role) = person(&auth)?;
    let scope = auth.principal.own_scope();
    let row = mfa::totp(state.db.reader(), &scope, user_id).await?;
    let totp = match &row {
        None => "off",
        Some(r) if r.confirmed_at.is_none() => "pending",
        Some(_) => "on",
    };
    let left = mfa::recovery_codes_left(state.db.reader(), &scope, user_id).await?;
    let required = matches!(role, Role::Owner | Role::Admin) && mfa::tenant_requires(state.db.reader(), &scope).await?;
    let passkeys = palisade_store::passkeys::list(state.db.reader(), &scope, user_id).await?.len();
    Ok(Json(MfaStatus { totp, recovery_codes_left: left, passkeys, required }))
}

#[derive(Serialize, ToSchema)]
pub struct TotpEnrolment {
    /// The secret as base 32, to type into an app; shown this once.
    secret: String,
    /// `otpauth://totp/…`, for an app to read (as text or a QR code).
    otpauth_uri: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EnrolRequest {
    /// Your password: a session alone (a stolen one) cannot add a factor.
    #[schema(max_length = 256)]
    password: String,
}

/// Starts a TOTP enrolment (replacing one not yet confirmed). The secret is
/// shown once; confirm with a first code. Needs the person's password, with
/// the login lockouts of a sign-in.
#[utoipa::path(post, path = "/v1/me/mfa/totp", tag = "me", request_body = EnrolRequest, security(("bearer" = [])),
    responses((status = 201, body = TotpEnrolment), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn enrol(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<EnrolRequest>,
) -> Result<(StatusCode, Json<TotpEnrolment>), ApiError> {
    let (user_id, _, _) = person(&auth)?;
    let scope = auth.principal.own_scope();
    // A person who has a second factor adds another only with it, recently
    // given: the password and a session are not enough.
    if enrolled(&state, &scope, user_id).await? {
        auth.recent_factor_scope()?;
    }
    let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(ApiError::not_found)?;
    super::auth::check_password(&state, &auth.ctx, &user, req.password).await?;
    let now = state.now_ms();
    let secret = Totp::new_secret();
    let keys = state.keys.of(&scope).await?;
    let sealed = keys.seal(place(&user_id.to_string()), &secret);
    let generator = Totp::new(secret, &state.config.auth.mfa.issuer, &user.email)
        .ok_or_else(|| ApiError::internal("a new TOTP secret was refused"))?;
    let mut tx = state.db.begin().await?;
    if !mfa::begin(&mut tx, &scope, user_id, &sealed, now).await? {
        return Err(ApiError::conflict("A TOTP is already enrolled; remove it first (DELETE /v1/me/mfa/totp)."));
    }
    let event = Event::new("auth.mfa_enrolment_started", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(TotpEnrolment { secret: generator.secret_base32(), otpauth_uri: generator.uri() })))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConfirmRequest {
    /// A code the app shows for the new secret.
    #[schema(pattern = r"^\s*[0-9]{6}\s*$")]
    code: String,
}

#[derive(Serialize, ToSchema)]
pub struct Enrolled {
    /// Ten one-time codes for when the app is lost; shown this once.
    recovery_codes: Vec<String>,
    /// A new access token of this session, with the second factor given.
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Confirms the enrolment with a first code: the second factor is on, and
/// the recovery codes are shown once.
#[utoipa::path(post, path = "/v1/me/mfa/totp/confirm", tag = "me", request_body = ConfirmRequest,
    security(("bearer" = [])),
    responses((status = 200, body = Enrolled), (status = 400, body = palisade_core::Problem),
        (status = 401, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn confirm(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<ConfirmRequest>,
) -> Result<Json<Enrolled>, ApiError> {
    let (user_id, family_id, _) = person(&auth)?;
    let scope = auth.principal.own_scope();
    match mfa::totp(state.db.reader(), &scope, user_id).await? {
        None => return Err(ApiError::conflict("Start an enrolment first (POST /v1/me/mfa/totp).")),
        Some(r) if r.confirmed_at.is_some() => return Err(ApiError::conflict("The TOTP is already confirmed.")),
        Some(_) => {}
    }
    let Proof::Totp(step) =
        prove(&state, &auth.ctx, &scope, user_id, &Factor::Totp(&req.code), false, ("", "")).await?
    else {
        return Err(wrong_factor());
    };
    // All or nothing: the factor, its recovery codes, this session's token,
    // the other sessions ended.
    let (codes, hashes) = recovery_codes(&state, user_id);
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    if !mfa::confirm(&mut tx, &scope, user_id, step, now).await? {
        return Err(wrong_factor());
    }
    mfa::replace_recovery_codes(&mut tx, &scope, user_id, &hashes).await?;
    let token = gave_factor(&state, &mut tx, &auth, "otp").await?;
    let ended = palisade_store::tokens::revoke_other_families(&mut tx, &scope, user_id, family_id, now).await?;
    let event = Event::new("auth.mfa_enrolled", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", user_id)
        .details(serde_json::json!({ "method": "totp", "other_sessions_ended": ended }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    notice(&state, &auth, "A second factor was added to your Palisade account").await;
    Ok(Json(Enrolled {
        recovery_codes: codes,
        access_token: token.access_token,
        token_type: token.token_type,
        expires_in: token.expires_in,
    }))
}

/// Ten new recovery codes for the person, and what is stored of them.
fn recovery_codes(state: &AppState, user: UserId) -> (Vec<String>, Vec<String>) {
    let codes = totp::new_recovery_codes();
    let subject = user.to_string();
    let hashes = codes
        .iter()
        .filter_map(|c| totp::normalize_recovery_code(c))
        .map(|c| state.recovery_codes.digest(&subject, &c))
        .collect();
    (codes, hashes)
}

/// Tells the person by mail that their second factors changed.
pub(super) async fn notice(state: &AppState, auth: &Auth, subject: &str) {
    if let Some(email) = auth.profile.email.as_deref() {
        let body = format!(
            "{subject}.\n\nIf this was not you, sign in, change your password and check your\n\
             second factors at once.\n"
        );
        send_mail(state, email, subject, body).await;
    }
}

#[derive(Serialize, ToSchema)]
pub struct RecoveryCodes {
    /// Ten one-time codes; shown this once. Earlier ones no longer work.
    recovery_codes: Vec<String>,
}

/// New recovery codes (the old ones stop working). Needs a recent second
/// factor.
#[utoipa::path(post, path = "/v1/me/mfa/recovery-codes", tag = "me", security(("bearer" = [])),
    responses((status = 200, body = RecoveryCodes), (status = 401, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn new_recovery_codes(State(state): State<AppState>, auth: Auth) -> Result<Json<RecoveryCodes>, ApiError> {
    let (user_id, _, _) = person(&auth)?;
    let scope = auth.recent_factor_scope()?;
    if !enrolled(&state, &scope, user_id).await? {
        return Err(ApiError::conflict("Enrol a second factor first (TOTP or a passkey)."));
    }
    let (codes, hashes) = recovery_codes(&state, user_id);
    let mut tx = state.db.begin().await?;
    mfa::replace_recovery_codes(&mut tx, &scope, user_id, &hashes).await?;
    let event = Event::new("auth.mfa_recovery_codes_replaced", Some(scope.tenant_id()), auth.principal.actor())
        .resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, state.now_ms()).await?;
    tx.commit().await?;
    notice(&state, &auth, "New recovery codes were made for your Palisade account").await;
    Ok(Json(RecoveryCodes { recovery_codes: codes }))
}

/// Removes the TOTP and the recovery codes. Needs a recent second factor;
/// refused while the tenant requires one of the person.
#[utoipa::path(delete, path = "/v1/me/mfa/totp", tag = "me", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn remove(State(state): State<AppState>, auth: Auth) -> Result<StatusCode, ApiError> {
    let (user_id, _, role) = person(&auth)?;
    let scope = auth.recent_factor_scope()?;
    let keeps_passkey = !palisade_store::passkeys::list(state.db.reader(), &scope, user_id).await?.is_empty();
    if !keeps_passkey
        && matches!(role, Role::Owner | Role::Admin)
        && mfa::tenant_requires(state.db.reader(), &scope).await?
    {
        return Err(ApiError::conflict("Your tenant requires a second factor of owners and admins."));
    }
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    if !mfa::remove(&mut tx, &scope, user_id).await? {
        return Err(ApiError::not_found());
    }
    mfa::void_challenges(&mut *tx, &scope, user_id, now).await?;
    let event =
        Event::new("auth.mfa_removed", Some(scope.tenant_id()), auth.principal.actor()).resource("user", user_id);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    notice(&state, &auth, "The second factor of your Palisade account was removed").await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, ToSchema)]
pub struct TenantSecurity {
    /// Owners and admins must have a second factor: until they give one,
    /// everything but enrolling answers 403 `mfa_required`.
    mfa_required: bool,
    /// People sign in with single sign-on only (owners keep the password,
    /// for the day the provider fails); a password or mailed code answers
    /// 403 `sso_required`.
    sso_required: bool,
    /// The configured single sign-on providers the tenant's people may
    /// sign in with (none unless the tenant names them).
    sso_providers: Vec<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantSecurityChange {
    mfa_required: Option<bool>,
    sso_required: Option<bool>,
    #[schema(max_items = 16)]
    sso_providers: Option<Vec<String>>,
}

async fn read_security(state: &AppState, scope: &TenantScope) -> Result<TenantSecurity, ApiError> {
    Ok(TenantSecurity {
        mfa_required: mfa::tenant_requires(state.db.reader(), scope).await?,
        sso_required: mfa::tenant_requires_sso(state.db.reader(), scope).await?,
        sso_providers: palisade_store::oidc::tenant_providers(state.db.reader(), scope).await?,
    })
}

/// The tenant's sign-in rules.
#[utoipa::path(get, path = "/v1/tenant/security", tag = "tenant", security(("bearer" = []), ("api_key" = [])),
    responses((status = 200, body = TenantSecurity), (status = 403, body = palisade_core::Problem)))]
pub async fn get_security(State(state): State<AppState>, auth: Auth) -> Result<Json<TenantSecurity>, ApiError> {
    let scope = auth.scope(Permission::UsersRead).await?;
    Ok(Json(read_security(&state, &scope).await?))
}

/// Changes the tenant's sign-in rules (`tenant:manage`, a person's
/// session, and a recent second factor); a field not given stays.
#[utoipa::path(patch, path = "/v1/tenant/security", tag = "tenant", request_body = TenantSecurityChange,
    security(("bearer" = [])),
    responses((status = 200, body = TenantSecurity), (status = 400, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem)))]
pub async fn put_security(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<TenantSecurityChange>,
) -> Result<Json<TenantSecurity>, ApiError> {
    let scope = auth.sensitive_scope(Permission::TenantManage).await?;
    // A key has no second factor to give: the rules about people are
    // changed by people.
    let PrincipalKind::User { user_id, .. } = auth.principal.kind() else {
        return Err(auth.denied("Only a person's session can change the tenant's sign-in rules."));
    };
    // A person would shut themselves out of everything but enrolling.
    if req.mfa_required == Some(true) && !enrolled(&state, &scope, *user_id).await? {
        return Err(ApiError::conflict("Enrol a second factor yourself before requiring one."));
    }
    if let Some(names) = &req.sso_providers {
        if names.len() > 16 {
            return Err(ApiError::validation("sso_providers", "at most 16"));
        }
        if let Some(n) = names.iter().find(|n| !state.oidc.iter().any(|p| &p.settings().name == *n)) {
            return Err(ApiError::conflict(format!("sso_providers: {n} is not a configured provider")));
        }
    }
    let before = read_security(&state, &scope).await?;
    let providers = req.sso_providers.clone().unwrap_or_else(|| before.sso_providers.clone());
    let sso_after = req.sso_required.unwrap_or(before.sso_required);
    if sso_after && providers.is_empty() {
        return Err(ApiError::conflict("Name the providers first (sso_providers) to require single sign-on."));
    }
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    if let Some(on) = req.mfa_required {
        mfa::set_tenant_requires(&mut tx, &scope, on).await?;
    }
    if let Some(names) = &req.sso_providers {
        let mut names = names.clone();
        names.sort();
        names.dedup();
        palisade_store::oidc::set_tenant_providers(&mut tx, &scope, &names).await?;
    }
    let mut sessions_ended = 0;
    if let Some(on) = req.sso_required {
        mfa::set_tenant_requires_sso(&mut tx, &scope, on).await?;
        // Sessions begun with a password or code end with the rule.
        if on && !before.sso_required {
            sessions_ended = palisade_store::tokens::revoke_non_sso_sessions(&mut tx, &scope, now).await?;
        }
    }
    let mut sso_providers = providers;
    sso_providers.sort();
    sso_providers.dedup();
    let after = TenantSecurity {
        mfa_required: req.mfa_required.unwrap_or(before.mfa_required),
        sso_required: sso_after,
        sso_providers,
    };
    let event = Event::new("tenant.security_changed", Some(scope.tenant_id()), auth.principal.actor()).details(
        serde_json::json!({
            "mfa_required": { "from": before.mfa_required, "to": after.mfa_required },
            "sso_required": { "from": before.sso_required, "to": after.sso_required },
            "sso_providers": { "from": before.sso_providers, "to": after.sso_providers },
            "sessions_ended": sessions_ended,
        }),
    );
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(after))
}
