//! Passkeys (WebAuthn, through webauthn-rs): a person registers them with
//! their password, uses one as the second factor of a sign-in or a
//! step-up, or signs in with one alone (it proves possession of the key and
//! the person's verification on it: two factors). Every ceremony's state
//! stays on the server, is bound to what started it and is taken once.

use std::str::FromStr;

use axum::extract::State;
use axum::Json;
use base64::Engine as _;
use http::StatusCode;
use palisade_audit::Event;
use palisade_auth::token::{random_base62, sha256_hex};
use palisade_core::principal::Actor;
use palisade_core::{ApiError, TenantId, TenantScope, UserId};
use palisade_store::passkeys::{self, Ceremony, NewPasskey};
use palisade_store::tokens::SessionFactors;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use webauthn_rs::prelude::{
    DiscoverableAuthentication, Passkey, PasskeyAuthentication, PasskeyRegistration, PublicKeyCredential,
    RegisterPublicKeyCredential, Uuid, Webauthn,
};

use super::auth::{ensure_may_sign_in, ensure_sso_allows, open_session, TokenResponse};
use crate::extract::{Auth, Ctx, PathId, ValidJson};
use crate::state::AppState;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;
const URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;
/// How long a ceremony waits for the authenticator.
const CEREMONY_MS: i64 = 5 * 60 * 1000;

pub(super) fn rp(state: &AppState) -> Result<&Webauthn, ApiError> {
    state.webauthn.as_deref().ok_or_else(|| {
        ApiError::conflict("Passkeys are not configured here (auth.webauthn.rp_id and origin, or a named public_url).")
    })
}

/// What a stored passkey is sealed to: its tenant, person, row and
/// credential id, so a row moved to another person does not open.
fn aad(tenant: &str, user: &str, passkey_id: &str, credential_id: &str) -> Vec<u8> {
    format!("passkeys\0{tenant}\0{user}\0{passkey_id}\0{credential_id}").into_bytes()
}

fn user_uuid(user: UserId) -> Uuid {
    user.0
}

/// A passkey as stored, opened (of the person in `tenant`), and its
/// credential id checked against the row's.
pub(super) fn open(state: &AppState, tenant: &str, row: &passkeys::PasskeyRow) -> Result<Passkey, ApiError> {
    let plain = B64
        .decode(&row.passkey_sealed)
        .ok()
        .and_then(|b| state.sealer.open(&b, &aad(tenant, &row.user_id, &row.id, &row.credential_id)).ok())
        .ok_or_else(|| ApiError::internal("a passkey does not open"))?;
    let key: Passkey = serde_json::from_slice(&plain).map_err(ApiError::internal)?;
    let id_bytes: &[u8] = key.cred_id().as_ref();
    if URL.encode(id_bytes) != row.credential_id {
        return Err(ApiError::internal("a passkey's credential id differs from its row's"));
    }
    Ok(key)
}

fn seal(state: &AppState, tenant: &str, row: &passkeys::PasskeyRow, p: &Passkey) -> Result<String, ApiError> {
    let json = serde_json::to_vec(p).map_err(ApiError::internal)?;
    Ok(B64.encode(state.sealer.seal(&json, &aad(tenant, &row.user_id, &row.id, &row.credential_id))))
}

/// Starts a ceremony: its id (to the client) and its state (kept here).
async fn start(
    state: &AppState,
    purpose: &str,
    who: Option<(&TenantScope, UserId)>,
    bound_to: Option<String>,
    st: &impl Serialize,
) -> Result<String, ApiError> {
    let id = random_base62(43);
    let c = Ceremony {
        purpose: purpose.to_owned(),
        tenant_id: who.map(|(s, _)| s.tenant_id().to_string()),
        user_id: who.map(|(_, u)| u.to_string()),
        bound_to,
        state_json: serde_json::to_string(st).map_err(ApiError::internal)?,
    };
    let mut tx = state.db.begin().await?;
    passkeys::start_ceremony(&mut *tx, &sha256_hex(&id), &c, state.now_ms() + CEREMONY_MS).await?;
    tx.commit().await?;
    Ok(id)
}

/// Takes the ceremony `id` if it is of `purpose`, for `who`, bound to
/// `bound_to`: its state.
async fn take<T: serde::de::DeserializeOwned>(
    state: &AppState,
    id: &str,
    purpose: &str,
    who: Option<(&TenantScope, UserId)>,
    bound_to: Option<&str>,
) -> Result<Option<T>, ApiError> {
    let mut tx = state.db.begin().await?;
    let c = passkeys::take_ceremony(&mut *tx, &sha256_hex(id), state.now_ms()).await?;
    tx.commit().await?;
    let fits = |c: &Ceremony| {
        c.purpose == purpose
            && c.tenant_id == who.map(|(s, _)| s.tenant_id().to_string())
            && c.user_id == who.map(|(_, u)| u.to_string())
            && c.bound_to.as_deref() == bound_to
    };
    Ok(match c.filter(fits) {
        Some(c) => Some(serde_json::from_str(&c.state_json).map_err(ApiError::internal)?),
        None => None,
    })
}

/// What the client sends back from its authenticator.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasskeyAnswer {
    #[schema(max_length = 64)]
    ceremony_id: String,
    /// The `PublicKeyCredential` from `navigator.credentials.get()`, as JSON.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct CeremonyStart {
    ceremony_id: String,
    /// Pass to `navigator.credentials.create()` or `.get()` as `publicKey`
    /// (after decoding its base64url fields).
    #[schema(value_type = Object)]
    options: serde_json::Value,
}

fn wrong_passkey() -> ApiError {
    super::auth::sign_in_refused("The passkey did not prove who you are.")
}

/// Checks a passkey answer for `user` in the ceremony `purpose` bound to
/// `bound_to`; on success the credential's counter is kept. `false`: not
/// proved (an unknown or used ceremony, another person's key, a bad
/// signature, a counter gone back).
pub(super) async fn verify(
    state: &AppState,
    scope: &TenantScope,
    user: UserId,
    answer: &PasskeyAnswer,
    purpose: &str,
    bound_to: &str,
) -> Result<bool, ApiError> {
    let rp = rp(state)?;
    let Some(st) =
        take::<PasskeyAuthentication>(state, &answer.ceremony_id, purpose, Some((scope, user)), Some(bound_to)).await?
    else {
        return Ok(false);
    };
    let Ok(cred) = serde_json::from_value::<PublicKeyCredential>(answer.credential.clone()) else { return Ok(false) };
    let Ok(result) = rp.finish_passkey_authentication(&cred, &st) else { return Ok(false) };
    let id_bytes: &[u8] = result.cred_id().as_ref();
    let cred_id = URL.encode(id_bytes);
    let Some((tenant, row)) = passkeys::by_credential(state.db.reader(), &cred_id).await? else { return Ok(false) };
    if tenant != scope.tenant_id().to_string() || row.user_id != user.to_string() {
        return Ok(false);
    }
    let mut key = open(state, &tenant, &row)?;
    if key.update_credential(&result).is_some() {
        let sealed = seal(state, &tenant, &row, &key)?;
        let mut tx = state.db.begin().await?;
        passkeys::used(&mut *tx, scope, &row.id, &row.passkey_sealed, &sealed, state.now_ms()).await?;
        tx.commit().await?;
    }
    Ok(true)
}

/// Options to use one of the person's passkeys in ceremony `purpose`.
pub(super) async fn options_for(
    state: &AppState,
    scope: &TenantScope,
    user: UserId,
    purpose: &str,
    bound_to: String,
) -> Result<CeremonyStart, ApiError> {
    let rp = rp(state)?;
    let tenant = scope.tenant_id().to_string();
    let keys: Vec<Passkey> = passkeys::list(state.db.reader(), scope, user)
        .await?
        .iter()
        .map(|r| open(state, &tenant, r))
        .collect::<Result<_, _>>()?;
    if keys.is_empty() {
        return Err(ApiError::conflict("No passkey is registered."));
    }
    let (options, st) = rp.start_passkey_authentication(&keys).map_err(ApiError::internal)?;
    let ceremony_id = start(state, purpose, Some((scope, user)), Some(bound_to), &st).await?;
    Ok(CeremonyStart { ceremony_id, options: serde_json::to_value(options).map_err(ApiError::internal)? })
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterStart {
    /// Your password: a session alone (a stolen one) cannot add a factor.
    #[schema(max_length = 256)]
    password: String,
}

fn person(auth: &Auth) -> Result<(UserId, &str), ApiError> {
    match auth.principal.kind() {
        palisade_core::PrincipalKind::User { user_id, family_id, .. } => Ok((*user_id, family_id.as_str())),
        _ => Err(ApiError::forbidden_because("Only a person's session has passkeys.")),
    }
}

/// Starts registering a passkey (needs the password): the options for
/// `navigator.credentials.create()`.
#[utoipa::path(post, path = "/v1/me/passkeys/register", tag = "me", request_body = RegisterStart,
    security(("bearer" = [])),
    responses((status = 200, body = CeremonyStart), (status = 403, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn register_start(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<RegisterStart>,
) -> Result<Json<CeremonyStart>, ApiError> {
    let rp = rp(&state)?;
    let (user_id, family) = person(&auth)?;
    let scope = auth.principal.own_scope();
    // A person who has a second factor adds another only with it, recently
    // given: the password and a session are not enough.
    if super::mfa::enrolled(&state, &scope, user_id).await? {
        auth.recent_factor_scope()?;
    }
    let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(ApiError::not_found)?;
    super::auth::check_password(&state, &auth.ctx, &user, req.password).await?;
    let tenant = scope.tenant_id().to_string();
    let existing: Vec<Passkey> = passkeys::list(state.db.reader(), &scope, user_id)
        .await?
        .iter()
        .map(|r| open(&state, &tenant, r))
        .collect::<Result<_, _>>()?;
    let exclude = Some(existing.iter().map(|k| k.cred_id().clone()).collect());
    let (options, st): (_, PasskeyRegistration) = rp
        .start_passkey_registration(user_uuid(user_id), &user.email, &user.email, exclude)
        .map_err(ApiError::internal)?;
    let ceremony_id = start(&state, "register", Some((&scope, user_id)), Some(family.to_owned()), &st).await?;
    Ok(Json(CeremonyStart { ceremony_id, options: serde_json::to_value(options).map_err(ApiError::internal)? }))
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterFinish {
    #[schema(max_length = 64)]
    ceremony_id: String,
    /// What you call it ("laptop", "phone").
    #[schema(min_length = 1, max_length = 100)]
    name: String,
    /// The `PublicKeyCredential` from `navigator.credentials.create()`, as JSON.
    #[schema(value_type = Object)]
    credential: serde_json::Value,
}

#[derive(Serialize, ToSchema)]
pub struct PasskeyView {
    id: String,
    name: String,
    created_at: String,
    last_used_at: Option<String>,
}

impl From<&passkeys::PasskeyRow> for PasskeyView {
    fn from(r: &passkeys::PasskeyRow) -> Self {
        PasskeyView {
            id: r.id.clone(),
            name: r.name.clone(),
            created_at: palisade_core::clock::rfc3339(r.created_at),
            last_used_at: super::rfc3339_opt(r.last_used_at),
        }
    }
}

#[derive(Serialize, ToSchema)]
pub struct Registered {
    passkey: PasskeyView,
    /// A new access token of this session, with a second factor given.
    access_token: String,
    token_type: &'static str,
    expires_in: u64,
}

/// Finishes registering: the passkey is a second factor from now on (and a
/// sign-in of its own); the person's other sessions end.
#[utoipa::path(post, path = "/v1/me/passkeys", tag = "me", request_body = RegisterFinish, security(("bearer" = [])),
    responses((status = 201, body = Registered), (status = 400, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn register_finish(
    State(state): State<AppState>,
    auth: Auth,
    ValidJson(req): ValidJson<RegisterFinish>,
) -> Result<(StatusCode, Json<Registered>), ApiError> {
    let rp = rp(&state)?;
    let (user_id, family) = person(&auth)?;
    let scope = auth.principal.own_scope();
    let name = palisade_guard::input::sanitize_line(&req.name);
    if name.is_empty() || name.chars().count() > 100 {
        return Err(ApiError::validation("name", "must be 1 to 100 characters"));
    }
    let invalid = || ApiError::validation("credential", "does not complete this registration");
    let st: PasskeyRegistration =
        take(&state, &req.ceremony_id, "register", Some((&scope, user_id)), Some(family)).await?.ok_or_else(invalid)?;
    let cred: RegisterPublicKeyCredential = serde_json::from_value(req.credential).map_err(|_| invalid())?;
    let key = rp.finish_passkey_registration(&cred, &st).map_err(|_| invalid())?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = state.now_ms();
    let id_bytes: &[u8] = key.cred_id().as_ref();
    let cred_id = URL.encode(id_bytes);
    let tenant = scope.tenant_id().to_string();
    let mut row = passkeys::PasskeyRow {
        id: id.clone(),
        user_id: user_id.to_string(),
        name: name.clone(),
        credential_id: cred_id.clone(),
        passkey_sealed: String::new(),
        created_at: now,
        last_used_at: None,
    };
    let sealed = seal(&state, &tenant, &row, &key)?;
    row.passkey_sealed = sealed.clone();
    let new = NewPasskey { id: &id, user: user_id, name: &name, credential_id: &cred_id, passkey_sealed: &sealed, now };
    let mut tx = state.db.begin().await?;
    match passkeys::insert(&mut tx, &scope, &new).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::conflict("At most 10 passkeys per person.")),
        Err(e) if e.is_unique_violation() => return Err(ApiError::conflict("This passkey is registered already.")),
        Err(e) => return Err(e.into()),
    }
    let factors = palisade_store::tokens::family_gave_factor(&mut *tx, &scope, family, user_id, "hwk", now)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let ended = palisade_store::tokens::revoke_other_families(&mut tx, &scope, user_id, family, now).await?;
    let event = Event::new("auth.passkey_added", Some(scope.tenant_id()), auth.principal.actor())
        .resource("passkey", &id)
        .details(serde_json::json!({ "name": name, "other_sessions_ended": ended }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let role = match auth.principal.kind() {
        palisade_core::PrincipalKind::User { role, .. } => *role,
        _ => return Err(ApiError::unauthenticated()),
    };
    let token = super::auth::access_token(&state, &scope, user_id, role, family, &factors, now)?;
    super::mfa::notice(&state, &auth, "A passkey was added to your Palisade account").await;
    Ok((
        StatusCode::CREATED,
        Json(Registered {
            passkey: (&row).into(),
            access_token: token.access_token,
            token_type: token.token_type,
            expires_in: token.expires_in,
        }),
    ))
}

/// Your passkeys.
#[utoipa::path(get, path = "/v1/me/passkeys", tag = "me", security(("bearer" = [])),
    responses((status = 200, body = super::List<PasskeyView>), (status = 403, body = palisade_core::Problem)))]
pub async fn list(State(state): State<AppState>, auth: Auth) -> Result<super::List<PasskeyView>, ApiError> {
    let (user_id, _) = person(&auth)?;
    let rows = passkeys::list(state.db.reader(), &auth.principal.own_scope(), user_id).await?;
    Ok(super::List { data: rows.iter().map(PasskeyView::from).collect(), next_cursor: None })
}

/// Removes one of your passkeys (a recent second factor; not your last
/// factor while your tenant requires one).
#[utoipa::path(delete, path = "/v1/me/passkeys/{id}", tag = "me", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Passkey id (UUID)")),
    responses((status = 204), (status = 403, body = palisade_core::Problem), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<StatusCode, ApiError> {
    // A credential that is no person has no passkeys: none of them is found.
    let Ok((user_id, _)) = person(&auth) else { return Err(ApiError::not_found()) };
    let id = id.to_string();
    let own = auth.principal.own_scope();
    if !passkeys::list(state.db.reader(), &own, user_id).await?.iter().any(|k| k.id == id) {
        return Err(ApiError::not_found());
    }
    let scope = auth.recent_factor_scope()?;
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    if !passkeys::remove(&mut tx, &scope, user_id, &id).await? {
        return Err(ApiError::not_found());
    }
    let second_factor = auth.principal.second_factor();
    let left_totp =
        palisade_store::mfa::totp(&mut *tx, &scope, user_id).await?.is_some_and(|t| t.confirmed_at.is_some());
    let left_keys = !passkeys::list(&mut *tx, &scope, user_id).await?.is_empty();
    let required = matches!(
        auth.principal.kind(),
        palisade_core::PrincipalKind::User { role: palisade_core::Role::Owner | palisade_core::Role::Admin, .. }
    ) && palisade_store::mfa::tenant_requires(&mut *tx, &scope).await?;
    if required && !left_totp && !left_keys && second_factor.expected {
        return Err(ApiError::conflict("Your tenant requires a second factor of owners and admins."));
    }
    // The last factor gone: recovery codes would stand in for none.
    if !left_totp && !left_keys {
        palisade_store::mfa::replace_recovery_codes(&mut tx, &scope, user_id, &[]).await?;
    }
    // Sessions the lost device may have opened end (this one gave a factor just now).
    let (_, family) = person(&auth)?;
    let ended = palisade_store::tokens::revoke_other_families(&mut tx, &scope, user_id, family, now).await?;
    let event = Event::new("auth.passkey_removed", Some(scope.tenant_id()), auth.principal.actor())
        .resource("passkey", &id)
        .details(serde_json::json!({ "other_sessions_ended": ended }));
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    super::mfa::notice(&state, &auth, "A passkey was removed from your Palisade account").await;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChallengePasskey {
    #[schema(pattern = "^mfa_[A-Za-z0-9]{43}$")]
    mfa_token: String,
}

/// The options to answer a sign-in's second-factor challenge with a
/// passkey; then `POST /v1/auth/mfa` with `passkey`.
#[utoipa::path(post, path = "/v1/auth/mfa/passkey", tag = "auth", request_body = ChallengePasskey,
    responses((status = 200, body = CeremonyStart), (status = 401, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn challenge_options(
    State(state): State<AppState>,
    ValidJson(req): ValidJson<ChallengePasskey>,
) -> Result<Json<CeremonyStart>, ApiError> {
    let token_hash = sha256_hex(&req.mfa_token);
    let c = palisade_store::mfa::challenge(state.db.reader(), &token_hash, state.now_ms())
        .await?
        .ok_or_else(wrong_passkey)?;
    let tenant_id = TenantId::from_str(&c.tenant_id).map_err(ApiError::internal)?;
    let user_id = UserId::from_str(&c.user_id).map_err(ApiError::internal)?;
    let scope = TenantScope::for_system(tenant_id);
    Ok(Json(options_for(&state, &scope, user_id, "second_factor", token_hash).await?))
}

/// The options to step up with a passkey; then `POST /v1/auth/step-up`
/// with `passkey`.
#[utoipa::path(post, path = "/v1/auth/step-up/passkey", tag = "auth", security(("bearer" = [])),
    responses((status = 200, body = CeremonyStart), (status = 403, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn step_up_options(State(state): State<AppState>, auth: Auth) -> Result<Json<CeremonyStart>, ApiError> {
    let (user_id, family) = person(&auth)?;
    let scope = auth.principal.own_scope();
    Ok(Json(options_for(&state, &scope, user_id, "step_up", family.to_owned()).await?))
}

/// Starts a sign-in with a passkey alone (no address asked: the
/// authenticator offers the person's passkey for this site).
#[utoipa::path(post, path = "/v1/auth/passkey/start", tag = "auth",
    responses((status = 200, body = CeremonyStart), (status = 409, body = palisade_core::Problem)))]
pub async fn sign_in_start(State(state): State<AppState>) -> Result<Json<CeremonyStart>, ApiError> {
    let rp = rp(&state)?;
    let (options, st): (_, DiscoverableAuthentication) =
        rp.start_discoverable_authentication().map_err(ApiError::internal)?;
    let ceremony_id = start(&state, "sign_in", None, None, &st).await?;
    Ok(Json(CeremonyStart { ceremony_id, options: serde_json::to_value(options).map_err(ApiError::internal)? }))
}

/// Signs in with the passkey: the login response (the passkey is both
/// factors: possession of the key and the person's verification on it).
#[utoipa::path(post, path = "/v1/auth/passkey", tag = "auth", request_body = PasskeyAnswer,
    responses((status = 200, body = TokenResponse), (status = 401, body = palisade_core::Problem),
        (status = 403, body = palisade_core::Problem), (status = 409, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem)))]
pub async fn sign_in(
    State(state): State<AppState>,
    ctx: Ctx,
    pass: Option<axum::Extension<crate::abuse::AddressPass>>,
    ValidJson(req): ValidJson<PasskeyAnswer>,
) -> Result<Json<TokenResponse>, ApiError> {
    let rp = rp(&state)?;
    let now = state.now_ms();
    if pass.is_some_and(|p| p.credentials_locked) {
        state.abuse.credential_refused_locked(&state.db, ctx.client_ip, now, ctx.audit.clone()).await;
        return Err(wrong_passkey());
    }
    let proved = async {
        let st: DiscoverableAuthentication =
            take(&state, &req.ceremony_id, "sign_in", None, None).await.map_err(|_| ())?.ok_or(())?;
        let cred: PublicKeyCredential = serde_json::from_value(req.credential.clone()).map_err(|_| ())?;
        let (uuid, cred_id) = rp.identify_discoverable_authentication(&cred).map_err(|_| ())?;
        let cred_id = URL.encode(cred_id);
        let (tenant, row) = passkeys::by_credential(state.db.reader(), &cred_id).await.map_err(|_| ())?.ok_or(())?;
        if row.user_id != uuid.to_string() {
            return Err(());
        }
        let mut key = open(&state, &tenant, &row).map_err(|_| ())?;
        let result = rp.finish_discoverable_authentication_v2(&cred, st, &key).map_err(|_| ())?;
        let changed = key.update_credential(&result).is_some();
        Ok::<_, ()>((tenant, row, changed.then_some(key)))
    };
    let Ok((tenant, row, updated)) = proved.await else {
        state.abuse.credential_failed(&state.db, "passkey", ctx.client_ip, now, ctx.audit.clone()).await?;
        let event = Event::new("auth.login_failed", None, Actor::anonymous())
            .details(serde_json::json!({ "method": "passkey" }));
        palisade_audit::record(&state.db, &event, &ctx.audit, now).await?;
        return Err(wrong_passkey());
    };
    let scope = TenantScope::for_system(TenantId::from_str(&tenant).map_err(ApiError::internal)?);
    if let Some(key) = updated {
        let sealed = seal(&state, &tenant, &row, &key)?;
        let mut tx = state.db.begin().await?;
        passkeys::used(&mut *tx, &scope, &row.id, &row.passkey_sealed, &sealed, now).await?;
        tx.commit().await?;
    }
    let user_id = UserId::from_str(&row.user_id).map_err(ApiError::internal)?;
    let user = palisade_store::users::get(state.db.reader(), &scope, user_id).await?.ok_or_else(wrong_passkey)?;
    ensure_may_sign_in(&state, &scope, &user).await?;
    ensure_sso_allows(&state, &scope, &user.role, "hwk").await?;
    let factors = SessionFactors { amr: "hwk mfa".into(), auth_time: now, mfa_at: Some(now) };
    let details = serde_json::json!({ "method": "passkey", "passkey": row.id });
    Ok(Json(open_session(&state, &ctx, &user, &factors, details, now).await?))
}
