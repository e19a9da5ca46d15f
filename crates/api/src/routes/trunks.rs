//! SIP trunks, the operator's upstream carriers. Master key only; every
//! change is audited, never with the password. The rules are
//! `palisade-voice`'s; this translates HTTP to and from them.

use axum::extract::State;
use axum::Json;
use http::StatusCode;
use palisade_audit::Event;
use palisade_core::ApiError;
use palisade_voice::trunks::{self, Changes, Credentials, NewTrunk, Trunk, TrunkError};
use serde::{Deserialize, Deserializer, Serialize};
use utoipa::ToSchema;

use super::List;
use crate::extract::{PathId, Sysadmin, ValidJson};
use crate::state::AppState;

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TrunkTransport {
    Udp,
    Tcp,
    Tls,
}

impl From<trunks::Transport> for TrunkTransport {
    fn from(t: trunks::Transport) -> Self {
        match t {
            trunks::Transport::Udp => TrunkTransport::Udp,
            trunks::Transport::Tcp => TrunkTransport::Tcp,
            trunks::Transport::Tls => TrunkTransport::Tls,
        }
    }
}

/// The credentials the server answers the trunk's digest challenge with.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrunkAuthInput {
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._~+@-]{1,64}$")]
    username: String,
    /// Kept sealed (the server must send it); never shown again.
    #[schema(min_length = 8, max_length = 128)]
    password: String,
}

impl From<TrunkAuthInput> for Credentials {
    fn from(a: TrunkAuthInput) -> Self {
        Credentials { username: palisade_guard::input::sanitize_line(&a.username), password: a.password }
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateTrunkRequest {
    /// Unique; letters, digits, space, `_`, `.` and `-`.
    #[schema(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9 _.-]{1,64}$")]
    name: String,
    /// The carrier: `sip:` or `sips:`, an optional user, a host and an
    /// optional port (`sip:carrier.example:5060`); no password, no
    /// parameters.
    #[schema(
        max_length = 255,
        pattern = r"^sips?:([A-Za-z0-9._~!$&'()*+,=-]{1,64}@)?([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$"
    )]
    uri: String,
    /// `tls` for a `sips:` URI.
    #[schema(value_type = TrunkTransport)]
    transport: String,
    /// The carrier's source addresses (1 to 32 CIDRs; a bare address is one
    /// host). A request from one of them is the trunk's. `0.0.0.0/0` and
    /// `::/0` are refused.
    #[schema(schema_with = source_cidrs)]
    source_cidrs: Vec<String>,
    /// Digest credentials, when the carrier challenges.
    #[serde(default)]
    auth: Option<TrunkAuthInput>,
    /// Default true.
    #[serde(default)]
    enabled: Option<bool>,
    /// What the carrier's leg must carry: `required` (SRTP both ways, or the
    /// call is refused), `preferred` (default) or `off`.
    #[serde(default)]
    #[schema(pattern = "^(required|preferred|off)$")]
    srtp: Option<String>,
    /// Caller-ID verification of the trunk's calls (STIR/SHAKEN).
    #[serde(default)]
    stir: Option<TrunkStirInput>,
}

/// STIR/SHAKEN for a trunk's calls.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrunkStirInput {
    /// A call whose PASSporT is missing or fails: `mark` it (default; its
    /// `verstat` says so) or `reject` it (428 without one, 438 with a bad
    /// one).
    #[serde(default)]
    #[schema(pattern = "^(mark|reject)$")]
    inbound: Option<String>,
}

/// A trunk's STIR/SHAKEN policy.
#[derive(Serialize, ToSchema)]
pub struct TrunkStirView {
    /// `mark` or `reject`.
    inbound: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UpdateTrunkRequest {
    #[serde(default)]
    #[schema(
        max_length = 255,
        pattern = r"^sips?:([A-Za-z0-9._~!$&'()*+,=-]{1,64}@)?([A-Za-z0-9.-]{1,253}|\[[0-9A-Fa-f:.]{2,45}\])(:[0-9]{1,5})?$"
    )]
    uri: Option<String>,
    #[serde(default)]
    #[schema(value_type = Option<TrunkTransport>)]
    transport: Option<String>,
    /// Replaces the list.
    #[serde(default)]
    #[schema(schema_with = optional_source_cidrs)]
    source_cidrs: Option<Vec<String>>,
    #[serde(default)]
    enabled: Option<bool>,
    /// New credentials; `null` removes them; absent keeps them.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<TrunkAuthInput>)]
    auth: Option<Option<TrunkAuthInput>>,
    #[serde(default)]
    #[schema(pattern = "^(required|preferred|off)$")]
    srtp: Option<String>,
    #[serde(default)]
    stir: Option<TrunkStirInput>,
}

/// A member given (even as `null`), as opposed to absent.
fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

fn cidr_item() -> utoipa::openapi::schema::ObjectBuilder {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .min_length(Some(2))
        .max_length(Some(49))
        .pattern(Some(r"^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$"))
}

fn source_cidrs() -> utoipa::openapi::schema::Array {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(cidr_item())
        .min_items(Some(1))
        .max_items(Some(trunks::MAX_CIDRS))
        .build()
}

fn optional_source_cidrs() -> utoipa::openapi::schema::Array {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(cidr_item())
        .min_items(Some(1))
        .max_items(Some(trunks::MAX_CIDRS))
        .build()
}

/// A trunk; never its password.
#[derive(Serialize, ToSchema)]
pub struct TrunkView {
    id: String,
    name: String,
    uri: String,
    transport: TrunkTransport,
    /// As stored: host bits cleared, IPv4-mapped IPv6 as IPv4.
    source_cidrs: Vec<String>,
    enabled: bool,
    /// Whether the trunk has digest credentials.
    has_auth: bool,
    /// Media policy: `required`, `preferred` or `off`.
    srtp: String,
    stir: TrunkStirView,
    auth_username: Option<String>,
    #[schema(format = DateTime)]
    created_at: String,
    #[schema(format = DateTime)]
    updated_at: String,
}

impl From<&Trunk> for TrunkView {
    fn from(t: &Trunk) -> Self {
        TrunkView {
            id: t.id.clone(),
            name: t.name.clone(),
            uri: t.uri.clone(),
            transport: t.transport.into(),
            source_cidrs: t.source_cidrs.iter().map(ToString::to_string).collect(),
            enabled: t.enabled,
            has_auth: t.has_auth(),
            srtp: t.srtp.as_str().to_owned(),
            stir: TrunkStirView { inbound: t.stir_inbound.as_str().to_owned() },
            auth_username: t.auth_username.clone(),
            created_at: palisade_core::clock::rfc3339(t.created_at),
            updated_at: palisade_core::clock::rfc3339(t.updated_at),
        }
    }
}

/// What the audit trail keeps of a trunk: everything the view shows
/// (which holds no password).
fn details(t: &Trunk) -> serde_json::Value {
    let v = TrunkView::from(t);
    serde_json::json!({
        "name": v.name,
        "uri": v.uri,
        "transport": t.transport.as_str(),
        "source_cidrs": v.source_cidrs,
        "enabled": v.enabled,
        "has_auth": v.has_auth,
        "srtp": v.srtp,
        "stir": { "inbound": v.stir.inbound },
        "auth_username": v.auth_username,
    })
}

fn trunk_error(e: TrunkError) -> ApiError {
    match e {
        TrunkError::Invalid(errors) => ApiError::validation_many(errors),
        TrunkError::DuplicateName => ApiError::conflict("A trunk of this name exists."),
        TrunkError::Voice(palisade_voice::VoiceError::Store(e)) => e.into(),
        TrunkError::Voice(other) => ApiError::internal(other),
    }
}

fn voice_error(e: palisade_voice::VoiceError) -> ApiError {
    trunk_error(TrunkError::Voice(e))
}

/// Adds an upstream carrier. Requests from its source CIDRs are taken as
/// the trunk's; its password is kept sealed and never shown.
#[utoipa::path(post, path = "/sysadmin/v1/trunks", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    request_body = CreateTrunkRequest,
    responses((status = 201, body = TrunkView), (status = 400, body = palisade_core::Problem),
        (status = 409, body = palisade_core::Problem)))]
pub async fn create(
    State(state): State<AppState>,
    admin: Sysadmin,
    ValidJson(req): ValidJson<CreateTrunkRequest>,
) -> Result<(StatusCode, Json<TrunkView>), ApiError> {
    let line = palisade_guard::input::sanitize_line;
    let new = NewTrunk {
        name: line(&req.name),
        uri: line(&req.uri),
        transport: req.transport,
        source_cidrs: req.source_cidrs.iter().map(|c| line(c)).collect(),
        auth: req.auth.map(Into::into),
        enabled: req.enabled.unwrap_or(true),
        srtp: req.srtp,
        stir_inbound: req.stir.and_then(|s| s.inbound),
    };
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let trunk = trunks::create(&mut tx, &state.sealer, &admin.proof, new, now).await.map_err(trunk_error)?;
    let event = Event::new("trunk.created", None, admin.proof.actor())
        .resource("sip_trunk", &trunk.id)
        .details(details(&trunk));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(TrunkView::from(&trunk))))
}

/// Every trunk, by name.
#[utoipa::path(get, path = "/sysadmin/v1/trunks", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    responses((status = 200, body = List<TrunkView>)))]
pub async fn list(State(state): State<AppState>, admin: Sysadmin) -> Result<List<TrunkView>, ApiError> {
    let all = trunks::list(&state.db, &admin.proof).await.map_err(voice_error)?;
    // Every operator call is audited, reads too.
    let event = Event::new("sysadmin.trunks_listed", None, admin.proof.actor());
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    Ok(List { data: all.iter().map(TrunkView::from).collect(), next_cursor: None })
}

#[utoipa::path(get, path = "/sysadmin/v1/trunks/{id}", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Trunk id (UUID)")),
    responses((status = 200, body = TrunkView), (status = 404, body = palisade_core::Problem)))]
pub async fn get(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<Json<TrunkView>, ApiError> {
    let trunk = trunks::get(&state.db, &admin.proof, &id.to_string())
        .await
        .map_err(voice_error)?
        .ok_or_else(ApiError::not_found)?;
    let event = Event::new("trunk.read", None, admin.proof.actor()).resource("sip_trunk", &trunk.id);
    palisade_audit::record(&state.db, &event, &admin.ctx.audit, state.now_ms()).await?;
    Ok(Json(TrunkView::from(&trunk)))
}

/// Changes a trunk; absent members stay as they are. The result is checked
/// as a whole (a `sips:` URI needs `tls`, whichever of the two changed).
#[utoipa::path(patch, path = "/sysadmin/v1/trunks/{id}", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Trunk id (UUID)")), request_body = UpdateTrunkRequest,
    responses((status = 200, body = TrunkView), (status = 400, body = palisade_core::Problem),
        (status = 404, body = palisade_core::Problem)))]
pub async fn update(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<uuid::Uuid>,
    ValidJson(req): ValidJson<UpdateTrunkRequest>,
) -> Result<Json<TrunkView>, ApiError> {
    let line = palisade_guard::input::sanitize_line;
    let mut changed = Vec::new();
    for (field, given) in [
        ("uri", req.uri.is_some()),
        ("transport", req.transport.is_some()),
        ("source_cidrs", req.source_cidrs.is_some()),
        ("enabled", req.enabled.is_some()),
        ("auth", req.auth.is_some()),
        ("srtp", req.srtp.is_some()),
        ("stir", req.stir.is_some()),
    ] {
        if given {
            changed.push(field);
        }
    }
    let changes = Changes {
        uri: req.uri.as_deref().map(line),
        transport: req.transport,
        source_cidrs: req.source_cidrs.map(|cs| cs.iter().map(|c| line(c)).collect()),
        enabled: req.enabled,
        auth: req.auth.map(|a| a.map(Into::into)),
        srtp: req.srtp,
        stir_inbound: req.stir.and_then(|s| s.inbound),
    };
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let trunk = trunks::update(&mut tx, &state.sealer, &admin.proof, &id.to_string(), changes, now)
        .await
        .map_err(trunk_error)?
        .ok_or_else(ApiError::not_found)?;
    let mut d = details(&trunk);
    d["changed"] = serde_json::json!(changed);
    let event = Event::new("trunk.updated", None, admin.proof.actor()).resource("sip_trunk", &trunk.id).details(d);
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(Json(TrunkView::from(&trunk)))
}

/// Removes a trunk: its sources are no longer taken as a carrier's.
#[utoipa::path(delete, path = "/sysadmin/v1/trunks/{id}", tag = "sysadmin", security(("operator" = []), ("master_key" = [])),
    params(("id" = uuid::Uuid, Path, description = "Trunk id (UUID)")),
    responses((status = 204), (status = 404, body = palisade_core::Problem)))]
pub async fn remove(
    State(state): State<AppState>,
    admin: Sysadmin,
    PathId(id): PathId<uuid::Uuid>,
) -> Result<StatusCode, ApiError> {
    let id = id.to_string();
    let now = state.now_ms();
    let mut tx = state.db.begin().await?;
    let name =
        palisade_store::sip_trunks::delete(&mut *tx, &admin.proof, &id).await?.ok_or_else(ApiError::not_found)?;
    let event = Event::new("trunk.deleted", None, admin.proof.actor())
        .resource("sip_trunk", &id)
        .details(serde_json::json!({ "name": name }));
    palisade_audit::append(&mut *tx, &event, &admin.ctx.audit, now).await?;
    tx.commit().await?;
    Ok(StatusCode::NO_CONTENT)
}
