//! Signing in with a six-digit code sent by mail. The answer to a request
//! is the same whether or not the address has an account; the code is kept
//! only as a keyed hash, lives 10 minutes, is used once, and 5 wrong tries
//! kill it and make the address wait 15 minutes (all configurable). Each
//! try is counted before the code is compared, so parallel guesses get no
//! more between them. Requests per address are capped; per client address
//! the `/v1/auth/**` rate limit holds.

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, FieldError, TenantId};
use palisade_store::email_codes::{self, Rules};
use serde::Deserialize;
use std::str::FromStr;
use utoipa::ToSchema;

use super::auth::{sign_in, StatusResponse, TokenResponse};
use crate::extract::{Ctx, ValidJson};
use crate::ops;
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailCodeRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmailCodeVerifyRequest {
    #[schema(format = Email, max_length = 254)]
    email: String,
    /// The six digits from the mail.
    #[schema(pattern = r"^\s*[0-9]{6}\s*$")]
    code: String,
}

fn rules(state: &AppState) -> Rules {
    let e = &state.config.auth.email_code;
    let ms = |secs: u64| i64::try_from(secs).unwrap_or(i64::MAX / 1000) * 1000;
    Rules {
        ttl_ms: ms(e.ttl_secs),
        max_tries: i64::from(e.max_tries),
        lockout_ms: ms(e.lockout_secs),
        max_sends: i64::from(e.max_sends),
        send_window_ms: ms(e.send_window_secs),
    }
}

/// The address as an account knows it (its canonical form), or a 400.
fn account(email: &str) -> Result<String, ApiError> {
    palisade_guard::email::normalize(email).map(|e| palisade_guard::email::canonical(&e)).ok_or_else(|| {
        ApiError::validation_many(vec![FieldError { field: "email".into(), message: "is not an email address".into() }])
    })
}

/// What the table keys the address by: a keyed hash, so the table holds
/// no address, nor a way to test a list of them against it.
fn key(state: &AppState, account: &str) -> String {
    state.email_codes.digest(account, "address")
}

fn wrong_code() -> ApiError {
    super::auth::sign_in_refused("Invalid email or code.")
}

/// Mails a sign-in code to the address, if it has an active account.
/// Always `202 {"status": "sent"}`: the answer never tells whether it has.
#[utoipa::path(post, path = "/v1/auth/email-code", tag = "auth", request_body = EmailCodeRequest,
    responses((status = 202, body = StatusResponse), (status = 400, body = palisade_core::Problem),
        (status = 429, body = palisade_core::Problem)))]
pub async fn request(
    State(state): State<AppState>,
    ctx: Ctx,
    ValidJson(req): ValidJson<EmailCodeRequest>,
) -> Result<(StatusCode, Json<StatusResponse>), ApiError> {
    let account = account(&req.email)?;
    let now = state.now_ms();
    let code = palisade_auth::code::CodeKey::new_code();
    // A code is issued for any address (the same work either way); looking
    // the account up, mailing and auditing happen after the answer, so its
    // time tells nothing of accounts.
    let mut tx = state.db.begin().await?;
    let hash = state.email_codes.digest(&account, &code);
    let issued = email_codes::issue(&mut tx, &key(&state, &account), &hash, now, rules(&state)).await?;
    tx.commit().await?;
    if issued {
        let (state, audit) = (state.clone(), ctx.audit.clone());
        tokio::spawn(async move {
            if let Err(e) = mail_code(&state, &account, &code, &audit, now).await {
                tracing::error!(error = %e, "mailing a sign-in code failed");
            }
        });
    }
    Ok((StatusCode::ACCEPTED, Json(StatusResponse { status: "sent" })))
}

/// Mails `code` to the account of `account`, if it is an active one.
async fn mail_code(
    state: &AppState,
    account: &str,
    code: &str,
    audit: &palisade_audit::Context,
    now: i64,
) -> Result<(), ApiError> {
    let Some(user) = ops::registered(state.db.reader(), account).await?.same().filter(|u| u.status == "active") else {
        return Ok(());
    };
    let minutes = state.config.auth.email_code.ttl_secs / 60;
    let body = format!(
        "Your Palisade sign-in code is {code}\n\nIt works once, for {minutes} minutes. If you did not ask for it, \
         ignore this mail: nobody can sign in without it."
    );
    // Worthless once the code has expired: never sent late.
    let until = now + rules(state).ttl_ms;
    if let Err(e) = state.mailer.send_until(&user.email, "Your Palisade sign-in code", body, Some(until)).await {
        tracing::error!(error = %e, "sending mail failed");
    }
    let tenant = TenantId::from_str(&user.tenant_id).ok();
    let event = Event::new("auth.email_code_sent", tenant, Actor::anonymous()).resource("user", &user.id);
    palisade_audit::record(&state.db, &event, audit, now).await?;
    Ok(())
}

/// Exchanges the address and its mailed code for the login response.
#[utoipa::path(post, path = "/v1/auth/email-code/verify", tag = "auth", request_body = EmailCodeVerifyRequest,
    responses((status = 200, body = TokenResponse), (status = 400, body = palisade_core::Problem),
        (status = 401, body = palisade_core::Problem), (status = 403, body = palisade_core::Problem),
        (status = 423, body = palisade_core::Problem), (status = 429, body = palisade_core::Problem)))]
pub async fn verify(
    State(state): State<AppState>,
    ctx: Ctx,
    pass: Option<axum::Extension<crate::abuse::AddressPass>>,
    ValidJson(req): ValidJson<EmailCodeVerifyRequest>,
) -> Result<Json<TokenResponse>, ApiError> {
    let account = account(&req.email)?;
    let (key, rules, now) = (key(&state, &account), rules(&state), state.now_ms());
    // A client address that failed too many credentials of any kind (wrong
    // codes for many addresses included) is refused unseen: no try is taken.
    if pass.is_some_and(|p| p.credentials_locked) {
        state.abuse.credential_refused_locked(&state.db, ctx.client_ip, now, ctx.audit.clone()).await;
        return Err(wrong_code());
    }
    let mut tx = state.db.begin().await?;
    let taken = email_codes::take_try(&mut *tx, &key, now, rules).await?;
    tx.commit().await?;
    let matched = taken.as_ref().filter(|(stored, _)| state.email_codes.matches(&account, &req.code, stored));
    let user = ops::registered(state.db.reader(), &account).await?.same();
    let tenant = user.as_ref().and_then(|u| TenantId::from_str(&u.tenant_id).ok());
    let Some((stored, _)) = matched else {
        // A wrong code counts against the client address too, whatever
        // address it tried.
        state.abuse.credential_failed(&state.db, "email_code", ctx.client_ip, now, ctx.audit.clone()).await?;
        // The last try spent: the code dies and the address waits (longer
        // each time within the window), before anything else can fail.
        let locked = match taken.filter(|(_, t)| *t >= rules.max_tries) {
            Some((_, tries)) => {
                let mut tx = state.db.begin().await?;
                let until = email_codes::lock(&mut tx, &key, now, rules).await?;
                tx.commit().await?;
                Some((tries, until))
            }
            None => None,
        };
        let mut event = Event::new("auth.login_failed", tenant, Actor::anonymous());
        if let Some(u) = &user {
            event = event.resource("user", &u.id);
        }
        palisade_audit::record(
            &state.db,
            &event.details(serde_json::json!({ "method": "email_code" })),
            &ctx.audit,
            now,
        )
        .await?;
        if let Some((tries, until)) = locked {
            let mut e = Event::new("auth.email_code_locked", tenant, Actor::anonymous())
                .details(serde_json::json!({ "tries": tries, "until": palisade_core::clock::rfc3339(until) }));
            if let Some(u) = &user {
                e = e.resource("user", &u.id);
            }
            palisade_audit::record(&state.db, &e, &ctx.audit, now).await?;
        }
        return Err(wrong_code());
    };
    // Used once, whoever else holds it.
    let mut tx = state.db.begin().await?;
    let consumed = email_codes::consume(&mut *tx, &key, stored).await?;
    tx.commit().await?;
    let user = match (consumed, user) {
        (true, Some(user)) => user,
        _ => return Err(wrong_code()),
    };
    Ok(Json(sign_in(&state, &ctx, &user, "email_code", serde_json::Value::Null, now).await?))
}
