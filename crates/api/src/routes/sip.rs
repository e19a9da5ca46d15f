//! An identity's SIP side: its digest credentials (the password shown once)
//! and the contacts its devices registered. The rules are
//! `palisade-voice`'s; this translates HTTP to and from them.

use axum::extract::{Path, State};
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_core::{ApiError, IdentityId, Permission};
use serde::Serialize;
use utoipa::ToSchema;

use super::List;
use crate::extract::{Auth, PathId};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct SipCredentialCreated {
    /// Digest username; also the user part of `aor`.
    username: String,
    /// Shown in this response only: only digest keys derived from it are kept.
    password: String,
    /// `<tenant id>.<sip.domain>`: the tenant's realm.
    realm: String,
    /// `sip:<username>@<realm>`: the address of record to register.
    aor: String,
}

#[derive(Serialize, ToSchema)]
pub struct SipCredentialView {
    username: String,
    realm: String,
    aor: String,
    #[schema(format = DateTime)]
    created_at: String,
}

#[derive(Serialize, ToSchema)]
pub struct RegistrationView {
    /// The Contact URI the device registered.
    contact: String,
    /// `udp`, `tcp` or `tls`.
    transport: String,
    /// The address the registration came from.
    source: String,
    /// The device's `User-Agent`, as it sent it.
    user_agent: Option<String>,
    #[schema(format = DateTime)]
    expires_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

fn event_for(action: &'static str, auth: &Auth, identity: &str, username: &str) -> Event {
    Event::new(action, Some(auth.principal.tenant_id()), auth.principal.actor())
        .resource("identity", identity)
        .details(serde_json::json!({ "username": username }))
}

/// Makes a SIP digest credential for the identity. The password is in
/// this response only; the server keeps only digest keys derived from it.
#[utoipa::path(post, path = "/v1/identities/{id}/sip-credentials", tag = "sip", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 201, body = SipCredentialCreated), (status = 404, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem), (status = 423, body = palisade_core::Problem)))]
pub async fn create_credential(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<(StatusCode, Json<SipCredentialCreated>), ApiError> {
    let scope = auth.sensitive_scope(Permission::IdentitiesManage).await?;
    let identity =
        palisade_store::identities::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    if identity.status != "active" {
        return Err(ApiError::frozen());
    }
    let now = state.now_ms();
    let domain = &state.config.sip.domain;
    // Before the transaction: making a tenant's first key writes.
    let keys = state.keys.of(&scope).await?;
    let mut tx = state.db.begin().await?;
    let Some(c) =
        palisade_voice::credentials::create(&mut tx, &keys, &scope, id, domain, now).await.map_err(voice_error)?
    else {
        drop(tx);
        // Active a moment ago: frozen, deleted or filled up since, or full.
        let again = palisade_store::identities::get(state.db.reader(), &scope, id).await?;
        return Err(match again {
            None => ApiError::not_found(),
            Some(i) if i.status != "active" => ApiError::frozen(),
            Some(_) => ApiError::conflict(format!(
                "The identity holds {} SIP credentials already; revoke one first.",
                palisade_voice::credentials::MAX_PER_IDENTITY
            )),
        });
    };
    let event = event_for("sip_credential.created", &auth, &identity.id, &c.username);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    let view = SipCredentialCreated { username: c.username, password: c.password, realm: c.realm, aor: c.aor };
    Ok((StatusCode::CREATED, Json(view)))
}

/// The identity's live SIP credentials (never their passwords).
#[utoipa::path(get, path = "/v1/identities/{id}/sip-credentials", tag = "sip", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = List<SipCredentialView>), (status = 404, body = palisade_core::Problem)))]
pub async fn list_credentials(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<List<SipCredentialView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesRead).await?;
    palisade_store::identities::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let rows = palisade_store::sip::list_credentials(state.db.reader(), &scope, id).await?;
    let data = rows
        .into_iter()
        .map(|r| SipCredentialView {
            aor: format!("sip:{}@{}", r.username, r.realm),
            username: r.username,
            realm: r.realm,
            created_at: palisade_core::clock::rfc3339(r.created_at),
        })
        .collect();
    Ok(List { data, next_cursor: None })
}

/// Revokes a SIP credential; the contacts it registered go with it.
#[utoipa::path(delete, path = "/v1/identities/{id}/sip-credentials/{username}", tag = "sip",
    security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)"),
        ("username" = String, Path, description = "The credential's username", max_length = 64)),
    responses((status = 204), (status = 404, body = palisade_core::Problem)))]
pub async fn revoke_credential(
    State(state): State<AppState>,
    auth: Auth,
    Path((id, username)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let scope = auth.scope(Permission::IdentitiesManage).await?;
    let id: IdentityId = id.parse().map_err(|_| ApiError::not_found())?;
    if username.len() > 64 {
        return Err(ApiError::not_found());
    }
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    if palisade_store::sip::revoke_credential(&mut tx, &scope, id, &username, now).await?.is_none() {
        return Err(ApiError::not_found());
    }
    let event = event_for("sip_credential.revoked", &auth, &id.to_string(), &username);
    palisade_audit::append(&mut *tx, &event, &auth.ctx.audit, now).await?;
    tx.commit().await?;
    // The SIP edge of this instance stops accepting it at once (others
    // within `palisade_voice::credentials::RECENT_TTL_MS`).
    palisade_voice::credentials::forget(&username);
    Ok(StatusCode::NO_CONTENT)
}

/// Where the identity's SIP devices are registered now.
#[utoipa::path(get, path = "/v1/identities/{id}/registrations", tag = "sip", security(("bearer" = [])),
    params(("id" = uuid::Uuid, Path, description = "Identity id (UUID)")),
    responses((status = 200, body = List<RegistrationView>), (status = 404, body = palisade_core::Problem)))]
pub async fn registrations(
    State(state): State<AppState>,
    auth: Auth,
    PathId(id): PathId<IdentityId>,
) -> Result<List<RegistrationView>, ApiError> {
    let scope = auth.scope(Permission::IdentitiesRead).await?;
    palisade_store::identities::get(state.db.reader(), &scope, id).await?.ok_or_else(ApiError::not_found)?;
    let rows = palisade_store::sip::list_registrations(state.db.reader(), &scope, id, state.now_ms()).await?;
    let data = rows
        .into_iter()
        .map(|r| RegistrationView {
            contact: r.contact_uri,
            transport: r.transport,
            source: r.source_addr,
            user_agent: r.user_agent,
            expires_at: palisade_core::clock::rfc3339(r.expires_at),
            updated_at: palisade_core::clock::rfc3339(r.updated_at),
        })
        .collect();
    Ok(List { data, next_cursor: None })
}

fn voice_error(e: palisade_voice::VoiceError) -> ApiError {
    match e {
        palisade_voice::VoiceError::Store(e) => e.into(),
        other => ApiError::internal(other),
    }
}
