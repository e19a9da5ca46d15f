//! Extractors: who is calling (`Auth`, `Sysadmin`), request context for the
//! audit trail (`Ctx`), validated JSON bodies and UUID path ids.

use std::net::IpAddr;
use std::str::FromStr;

use axum::extract::{FromRequest, FromRequestParts, MatchedPath, OptionalFromRequest, Path, Query, Request};
use http::request::Parts;
use http::{header, HeaderMap};
use ipnet::IpNet;
use palisade_audit::{Context, Event};
use palisade_auth::token::{ct_eq, sha256, sha256_hex};
use palisade_auth::Credential;
use palisade_core::principal::{Restrictions, SecondFactor, SysadminProof};
use palisade_core::{
    ApiError, ApiKeyId, IdentityId, Permission, PermissionSet, Principal, PrincipalKind, Role, TenantId, TenantScope,
    UserId,
};
use palisade_store::api_keys::{Chain, Lineage};
use serde::de::DeserializeOwned;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use crate::abuse::{AddressPass, CallerKey, Class, TenantPolicy};
use crate::body::CredentialVerified;
use crate::credentials::{Key, Kind};
use crate::middleware::{note_tenant, ClientIp, RequestId};
use crate::state::{AppState, MasterKey};

/// Request context recorded with every audit event.
#[derive(Debug, Clone)]
pub struct Ctx {
    pub audit: Context,
    pub client_ip: IpAddr,
}

impl FromRequestParts<AppState> for Ctx {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &AppState) -> Result<Self, ApiError> {
        Ok(ctx_of(parts))
    }
}

pub(crate) fn ctx_of(parts: &Parts) -> Ctx {
    let client_ip = parts.extensions.get::<ClientIp>().map(|c| c.0).unwrap_or(IpAddr::from([127, 0, 0, 1]));
    Ctx {
        audit: Context {
            source_ip: Some(client_ip.to_string()),
            user_agent: parts
                .headers
                .get(header::USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(palisade_guard::input::sanitize_line),
            request_id: parts.extensions.get::<RequestId>().map(|r| r.0.clone()),
        },
        client_ip,
    }
}

/// A verified tenant principal (person or API key) on a `/v1` route.
pub struct Auth {
    pub principal: Principal,
    pub ctx: Ctx,
    /// The tenant's concurrent-call quota (its override or the default).
    pub concurrent_calls: u32,
    /// Names, as authentication read them with the credential.
    pub profile: Arc<Profile>,
    state: AppState,
}

/// What `GET /v1/me` shows beyond the principal, read with the credential
/// and cached with it (a change to any of it invalidates the tenant's
/// cached credentials, like a revocation).
#[derive(Debug)]
pub struct Profile {
    pub tenant_name: String,
    pub tenant_status: String,
    /// The key's or the agent identity's name.
    pub name: Option<String>,
    /// The person's address.
    pub email: Option<String>,
    /// The person's role, or the key's role label.
    pub role: Option<String>,
}

impl Profile {
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.tenant_name.len()
            + self.tenant_status.len()
            + [&self.name, &self.email, &self.role].iter().map(|s| s.as_ref().map_or(0, String::len)).sum::<usize>()
    }
}

impl Auth {
    /// The tenant scope, if the principal holds `permission`. A refusal is
    /// audited.
    pub async fn scope(&self, permission: Permission) -> Result<TenantScope, ApiError> {
        self.principal
            .require(permission)
            .inspect_err(|_| self.audit_denial(serde_json::json!({ "permission": permission.as_str() })))
    }

    /// The tenant scope for a sensitive operation (admin keys, roles,
    /// secrets shown, deletions): the permission, and for a person with a
    /// second factor (or whose tenant requires one) a recent one.
    pub async fn sensitive_scope(&self, permission: Permission) -> Result<TenantScope, ApiError> {
        let within = i64::try_from(self.state.config.auth.mfa.step_up_secs).unwrap_or(600) * 1000;
        self.principal.require_recent_factor(permission, self.state.now_ms(), within).inspect_err(|e| {
            self.audit_denial(serde_json::json!({ "permission": permission.as_str(), "reason": e.reason() }))
        })
    }

    /// One's own scope, if this session gave a second factor within
    /// `auth.mfa.step_up_secs` (changing one's own second factors).
    pub fn recent_factor_scope(&self) -> Result<TenantScope, ApiError> {
        let within = i64::try_from(self.state.config.auth.mfa.step_up_secs).unwrap_or(600) * 1000;
        if self.principal.second_factor().given_within(self.state.now_ms(), within) {
            Ok(self.principal.own_scope())
        } else {
            Err(ApiError::mfa_required(palisade_core::principal::STEP_UP))
        }
    }

    /// One's own data (a person's export): no permission, but the
    /// second-factor rules of a sensitive operation. Only a person has any.
    pub fn own_sensitive_scope(&self) -> Result<(TenantScope, palisade_core::UserId), ApiError> {
        let palisade_core::principal::PrincipalKind::User { user_id, .. } = self.principal.kind() else {
            return Err(self.denied("Only a person's session has data of its own to export."));
        };
        let f = self.principal.second_factor();
        let within = i64::try_from(self.state.config.auth.mfa.step_up_secs).unwrap_or(600) * 1000;
        if f.missing || (f.expected && !f.given_within(self.state.now_ms(), within)) {
            return Err(ApiError::mfa_required(palisade_core::principal::STEP_UP));
        }
        Ok((self.principal.own_scope(), *user_id))
    }

    /// A 403 for a rule other than a missing permission (granting more than
    /// one holds), audited like one.
    pub fn denied(&self, detail: &'static str) -> ApiError {
        self.audit_denial(serde_json::json!({ "rule": detail }));
        ApiError::forbidden_because(detail)
    }

    fn audit_denial(&self, details: serde_json::Value) {
        let event =
            Event::new("permission.denied", Some(self.principal.tenant_id()), self.principal.actor()).details(details);
        let (state, ctx) = (self.state.clone(), self.ctx.audit.clone());
        // Off the request path: a refusal should not wait on a write.
        tokio::spawn(async move {
            if let Err(e) = palisade_audit::record(&state.db, &event, &ctx, state.now_ms()).await {
                tracing::error!(error = %e, "audit append failed");
            }
        });
    }
}

/// The bearer credential: `Authorization: Bearer …` or `X-API-Key`. Both at
/// once, or several of either, is ambiguous and refused. Query strings and
/// bodies are never read for credentials.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let mut auth = headers.get_all(header::AUTHORIZATION).iter();
    let mut key = headers.get_all("x-api-key").iter();
    match (auth.next(), auth.next(), key.next(), key.next()) {
        (Some(v), None, None, None) => {
            let s = v.to_str().ok()?;
            let (scheme, cred) = s.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| cred.trim())
        }
        (None, None, Some(v), None) => v.to_str().ok().map(str::trim).filter(|s| s.starts_with("ak_")),
        _ => None,
    }
}

impl FromRequestParts<AppState> for Auth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = ctx_of(parts);
        let cred = bearer(&parts.headers).ok_or_else(ApiError::unauthenticated)?;
        let (principal, policy, profile) = match Credential::classify(cred) {
            Credential::Jwt(t) => {
                authenticate_jwt(state, t).await.inspect_err(|_| state.metrics.auth_failure("jwt"))?
            }
            Credential::ApiKey(k) => {
                let checked = authenticate_api_key(state, k, &ctx, &parts.headers);
                throttled(state, parts, &ctx, "api_key", checked).await?
            }
            Credential::AgentToken(t) => {
                throttled(state, parts, &ctx, "agent_token", authenticate_agent(state, t, &ctx, &parts.headers)).await?
            }
            // The master key is for /sysadmin only.
            Credential::MasterKey(_) | Credential::Operator(_) | Credential::Malformed => {
                return Err(ApiError::unauthenticated())
            }
        };
        Auth::admitted(parts, state, ctx, (principal, policy, profile)).await
    }
}

impl Auth {
    /// An authenticated principal through the tenant's abuse controls (the
    /// route's rate-limit class, address lists): the request's `Auth`.
    pub(crate) async fn admitted(
        parts: &mut Parts,
        state: &AppState,
        ctx: Ctx,
        (principal, policy, profile): Authenticated,
    ) -> Result<Auth, ApiError> {
        note_tenant(principal.tenant_id().0);
        let route = parts.extensions.get::<MatchedPath>().map(MatchedPath::as_str);
        let class = Class::of(&parts.method, route);
        let caller = state
            .abuse
            .tenant_pass(&state.db, state.now_ms(), &principal, &policy, class, ctx.client_ip, || ctx.audit.clone())
            .await?;
        parts.extensions.insert(caller);
        parts.extensions.insert(CredentialVerified);
        Ok(Auth { principal, ctx, concurrent_calls: policy.concurrent_calls, profile, state: state.clone() })
    }
}

/// Which credential acts, without its secret: an API key's or agent
/// token's SHA-256 (the form the database keeps), or a person's session
/// (its access token's claims, none of them secret). What a credential
/// mints for later (a stream ticket) and what a long-lived stream checks
/// again is this, authenticated anew at each use as the credential itself
/// would be.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub(crate) enum Minter {
    ApiKey {
        hash: String,
    },
    AgentToken {
        hash: String,
    },
    Session {
        tenant_id: String,
        sub: String,
        sid: String,
        jti: String,
        exp: i64,
        /// When the session last gave a second factor (seconds).
        #[serde(default)]
        mfa_time: Option<i64>,
    },
}

impl Minter {
    /// The request's own credential (`Authorization` or `X-API-Key`), once
    /// `Auth` accepted it.
    pub(crate) fn of_request(state: &AppState, headers: &HeaderMap) -> Option<Minter> {
        let cred = bearer(headers)?;
        match Credential::classify(cred) {
            Credential::ApiKey(k) => Some(Minter::ApiKey { hash: sha256_hex(k) }),
            Credential::AgentToken(t) => Some(Minter::AgentToken { hash: sha256_hex(t) }),
            Credential::Jwt(t) => {
                let skew = i64::try_from(state.config.auth.clock_skew_secs).unwrap_or(0);
                let c = state.jwt.verify(t, state.now_ms() / 1000, skew).ok()?;
                Some(Minter::Session {
                    tenant_id: c.tenant_id,
                    sub: c.sub,
                    sid: c.sid,
                    jti: c.jti,
                    exp: c.exp,
                    mfa_time: c.mfa_time,
                })
            }
            Credential::MasterKey(_) | Credential::Operator(_) | Credential::Malformed => None,
        }
    }

    /// Authenticates it as its credential would be, from where `ctx` and
    /// `headers` (`Origin`) say the request comes.
    pub(crate) async fn authenticate(
        &self,
        state: &AppState,
        ctx: &Ctx,
        headers: &HeaderMap,
    ) -> Result<Authenticated, ApiError> {
        let hash = |h: &str| -> Result<[u8; 32], ApiError> {
            let mut out = [0u8; 32];
            hex::decode_to_slice(h, &mut out).map_err(|_| ApiError::unauthenticated())?;
            Ok(out)
        };
        match self {
            Minter::ApiKey { hash: h } => authenticate_key_hash(state, hash(h)?, ctx, headers).await,
            Minter::AgentToken { hash: h } => authenticate_agent_hash(state, hash(h)?, ctx, headers).await,
            Minter::Session { tenant_id, sub, sid, jti, exp, mfa_time } => {
                // The access token's own expiry, as its signature check
                // judges it (no allowance for skew on `exp`).
                if *exp <= state.now_ms() / 1000 {
                    return Err(ApiError::token_expired());
                }
                let session = SessionClaims { tenant_id, sub, sid, jti, exp: *exp, mfa_time: *mfa_time };
                authenticate_session(state, session).await
            }
        }
    }
}

/// Whether the credential that opened a stream still authenticates with
/// `permission`: a long-lived stream asks at intervals, so that revoking,
/// freezing or logging out reaches it (through the credential cache, whose
/// entries every instance drops on such a change). No rate-limit or lockout
/// accounting: it is no new request. `Err` when that could not be told (the
/// database did not answer): the caller waits rather than cut everyone off.
pub(crate) async fn still_holds(
    state: &AppState,
    minter: &Minter,
    headers: &HeaderMap,
    ctx: &Ctx,
    permission: Permission,
) -> Result<bool, ()> {
    let (principal, policy, _) = match minter.authenticate(state, ctx, headers).await {
        Ok(a) => a,
        Err(e) if e.status().is_server_error() => return Err(()),
        Err(_) => return Ok(false),
    };
    if principal.require(permission).is_err() {
        return Ok(false);
    }
    // The address lists and blocks the request passed when it came in.
    state.abuse.still_admitted(state.now_ms(), &principal, &policy, ctx.client_ip).await
}

/// A key-like credential check under the per-address lockout: refused
/// unseen while the address is locked out; a failure counts towards it.
pub(crate) async fn throttled(
    state: &AppState,
    parts: &Parts,
    ctx: &Ctx,
    kind: &'static str,
    check: impl std::future::Future<Output = Result<Authenticated, ApiError>>,
) -> Result<Authenticated, ApiError> {
    let now = state.now_ms();
    if credentials_locked(parts) {
        state.abuse.credential_refused_locked(&state.db, ctx.client_ip, now, ctx.audit.clone()).await;
        return Err(ApiError::unauthenticated());
    }
    match check.await {
        Err(e) if e.status() == http::StatusCode::UNAUTHORIZED => {
            state.abuse.credential_failed(&state.db, kind, ctx.client_ip, now, ctx.audit.clone()).await?;
            Err(e)
        }
        r => r,
    }
}

/// Too many failed credentials came from this address: every credential
/// from it is refused as unknown until the lock ends.
fn credentials_locked(parts: &Parts) -> bool {
    parts.extensions.get::<AddressPass>().is_some_and(|p| p.credentials_locked)
}

/// The principal, its tenant's abuse-control policy, and its names.
pub(crate) type Authenticated = (Principal, Arc<TenantPolicy>, Arc<Profile>);

/// The cache's entry for `key`, or what `load` reads (kept if the cache
/// may keep it). Only credentials the database knows are loaded, so an
/// unknown one leaves nothing behind.
async fn cached<T, F>(state: &AppState, key: Key, load: F) -> Result<Arc<T>, ApiError>
where
    T: Grant,
    F: std::future::Future<Output = Result<T, ApiError>>,
{
    let cache = &state.credentials.cache;
    if let Some(hit) = cache.get::<T>(&key, state.now_ms()) {
        return Ok(hit);
    }
    // Before the read: a change committed during it keeps it out, and the
    // entry's age counts from here (a slow read does not lengthen its life).
    let (ticket, read_at) = (cache.ticket(), state.now_ms());
    let grant = Arc::new(load.await?);
    cache.put(key, ticket, grant.tenant_id(), grant.clone(), grant.size(), read_at);
    Ok(grant)
}

/// What authentication read about one credential, as stored: what depends
/// on time or on the request is judged at each use.
trait Grant: Send + Sync + 'static {
    fn tenant_id(&self) -> TenantId;
    /// About what it occupies in memory.
    fn size(&self) -> usize;
}

/// A person's access-token session.
struct SessionGrant {
    tenant_id: TenantId,
    /// The family or token is revoked, or the person is not active.
    ended: bool,
    tenant_active: bool,
    role: Role,
    policy: Arc<TenantPolicy>,
    profile: Arc<Profile>,
    /// The tenant requires a second factor of owners and admins.
    tenant_requires_mfa: bool,
    /// The person has a confirmed second factor.
    mfa_enrolled: bool,
}

impl Grant for SessionGrant {
    fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>() + POLICY_SIZE + self.profile.size()
    }
}

/// About what a tenant policy occupies (its address lists are short).
const POLICY_SIZE: usize = 512;

async fn authenticate_jwt(state: &AppState, token: &str) -> Result<Authenticated, ApiError> {
    let now = state.now_ms();
    let skew = i64::try_from(state.config.auth.clock_skew_secs).unwrap_or(0);
    let claims = state.jwt.verify(token, now / 1000, skew).map_err(|r| match r {
        palisade_auth::Refused::Expired => ApiError::token_expired(),
        palisade_auth::Refused::Invalid => ApiError::unauthenticated(),
    })?;
    let session = SessionClaims {
        tenant_id: &claims.tenant_id,
        sub: &claims.sub,
        sid: &claims.sid,
        jti: &claims.jti,
        exp: claims.exp,
        mfa_time: claims.mfa_time,
    };
    authenticate_session(state, session).await
}

/// What names a person's session: its access token's claims (signed by
/// this server, or stored by it for a ticket).
struct SessionClaims<'a> {
    tenant_id: &'a str,
    sub: &'a str,
    sid: &'a str,
    jti: &'a str,
    exp: i64,
    mfa_time: Option<i64>,
}

/// A person's session: it must still be live.
async fn authenticate_session(state: &AppState, c: SessionClaims<'_>) -> Result<Authenticated, ApiError> {
    let SessionClaims { tenant_id, sub, sid, jti, exp, mfa_time } = c;
    let tenant_id = TenantId::from_str(tenant_id).map_err(|_| ApiError::unauthenticated())?;
    let user_id = UserId::from_str(sub).map_err(|_| ApiError::unauthenticated())?;
    // Only claims this server signed get here: the session names the entry.
    let name = format!("{tenant_id}\n{user_id}\n{sid}\n{jti}");
    let key = Key { kind: Kind::Session, hash: sha256(&name) };
    let s = cached(state, key, async {
        let scope = TenantScope::for_system(tenant_id);
        let s = palisade_store::users::session_state(state.db.reader(), &scope, user_id, sid, jti)
            .await?
            .ok_or_else(ApiError::unauthenticated)?;
        Ok(SessionGrant {
            tenant_id,
            ended: s.family_revoked != 0 || s.jti_revoked != 0 || s.user_status != "active",
            tenant_active: s.tenant_status == "active",
            role: Role::from_str(&s.role).map_err(|_| ApiError::internal("stored role is invalid"))?,
            tenant_requires_mfa: s.tenant_mfa_required == 1,
            mfa_enrolled: s.mfa_enrolled > 0,
            policy: Arc::new(state.abuse.tenant_policy(s.tenant_limits.as_deref())),
            profile: Arc::new(Profile {
                tenant_name: s.tenant_name,
                tenant_status: s.tenant_status,
                name: None,
                email: Some(s.email),
                role: Some(s.role),
            }),
        })
    })
    .await?;
    if s.ended {
        return Err(ApiError::unauthenticated());
    }
    if !s.tenant_active {
        return Err(ApiError::frozen());
    }
    // The role is read from the database, not the token, so a demotion or
    // removal takes effect on the next request.
    let role = s.role;
    let principal = Principal::authenticated(
        tenant_id,
        PrincipalKind::User {
            user_id,
            role,
            jti: jti.to_owned(),
            family_id: sid.to_owned(),
            expires_at_ms: exp.saturating_mul(1000),
        },
        role.permissions(),
    )
    .with_second_factor(second_factor(&s, mfa_time));
    Ok((principal, s.policy.clone(), s.profile.clone()))
}

/// What the session has shown of a second factor, against what its person
/// and tenant expect: the rule itself is `Principal::require`.
fn second_factor(s: &SessionGrant, mfa_time: Option<i64>) -> SecondFactor {
    let policy = s.tenant_requires_mfa && matches!(s.role, Role::Owner | Role::Admin);
    let given_at_ms = mfa_time.map(|t| t.saturating_mul(1000));
    // A factor given once and removed since is none.
    let given = s.mfa_enrolled && given_at_ms.is_some();
    SecondFactor { expected: policy || s.mfa_enrolled, missing: policy && !given, given_at_ms }
}

/// An API key as stored, with the keys above it.
struct KeyGrant {
    tenant_id: TenantId,
    key_id: ApiKeyId,
    revoked: bool,
    /// The key and its tenant are active (not frozen).
    active: bool,
    /// Its own restrictions; for a previous secret, the grace period's end
    /// is its expiry.
    restrictions: Restrictions,
    fence: Fence,
    /// The person answerable and what the key may do now; `None` when
    /// that person is gone (or no longer active).
    answerable: Option<(Option<UserId>, PermissionSet)>,
    above: Option<Above>,
    policy: Arc<TenantPolicy>,
    profile: Arc<Profile>,
    /// Last recorded use, so a cached key records one a minute too.
    last_used_at: AtomicI64,
}

impl Grant for KeyGrant {
    fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.restrictions.size()
            + self.fence.size()
            + self.above.as_ref().map_or(0, Above::size)
            + POLICY_SIZE
            + self.profile.size()
    }
}

async fn load_key(state: &AppState, hash: &str, now: i64) -> Result<KeyGrant, ApiError> {
    let row =
        palisade_store::api_keys::find_by_hash(&state.db, hash, now).await?.ok_or_else(ApiError::unauthenticated)?;
    let mut restrictions = restrictions_of(&row.allowed_ips, &row.allowed_origins, row.expires_at)?;
    // A previous secret in its grace period only keeps serving: it ends with
    // the grace period, and so does all it mints; it manages no keys (no
    // rotation, revocation or child key that would outlive it).
    let previous = row.by_previous_secret == Some(1);
    if previous {
        let grace = row.prev_valid_until.unwrap_or(now);
        restrictions.expires_at = Some(restrictions.expires_at.map_or(grace, |e| e.min(grace)));
    }
    let tenant_id = TenantId::from_str(&row.tenant_id).map_err(ApiError::internal)?;
    let mut answerable = answerable(&row.permissions, row.owner_user_id.as_deref(), row.owner_role.as_deref())?;
    if let (true, Some((_, permissions))) = (previous, answerable.as_mut()) {
        *permissions = permissions.iter().filter(|p| *p != Permission::KeysManage).collect();
    }
    Ok(KeyGrant {
        tenant_id,
        key_id: ApiKeyId::from_str(&row.id).map_err(ApiError::internal)?,
        revoked: row.revoked_at.is_some(),
        active: row.status == "active" && row.tenant_status.as_deref() == Some("active"),
        fence: Fence::of(&restrictions)?,
        restrictions,
        answerable,
        above: match row.parent_key_id.as_deref() {
            Some(parent) => Some(Above::load(state, tenant_id, parent).await?),
            None => None,
        },
        policy: Arc::new(state.abuse.tenant_policy(row.tenant_limits.as_deref())),
        profile: Arc::new(Profile {
            tenant_name: row.tenant_name.unwrap_or_default(),
            tenant_status: row.tenant_status.unwrap_or_default(),
            name: Some(row.name),
            email: None,
            role: row.role,
        }),
        last_used_at: AtomicI64::new(row.last_used_at.unwrap_or(i64::MIN)),
    })
}

async fn authenticate_api_key(
    state: &AppState,
    key: &str,
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<Authenticated, ApiError> {
    authenticate_key_hash(state, sha256(key), ctx, headers).await
}

async fn authenticate_key_hash(
    state: &AppState,
    hash: [u8; 32],
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<Authenticated, ApiError> {
    let now = state.now_ms();
    let g = cached(state, Key { kind: Kind::ApiKey, hash }, load_key(state, &hex::encode(hash), now)).await?;
    if g.revoked {
        return Err(ApiError::unauthenticated());
    }
    admit(g.restrictions.expires_at, &g.fence, ctx, headers, now)?;
    if !g.active {
        return Err(ApiError::frozen());
    }
    let (owner_user_id, permissions) = g.answerable.ok_or_else(ApiError::unauthenticated)?;
    if let Some(above) = &g.above {
        above.live(ctx, headers, now)?;
    }
    let last = g.last_used_at.load(Ordering::Relaxed);
    // One task records the use: the one that moved the mark.
    if last < now - 60_000 && g.last_used_at.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
        let state = state.clone();
        let (scope, key_id) = (TenantScope::for_system(g.tenant_id), g.key_id);
        tokio::spawn(async move {
            let touched = async {
                let mut tx = state.db.begin().await?;
                palisade_store::api_keys::touch(&mut *tx, &scope, key_id, now).await?;
                tx.commit().await
            };
            if let Err(e) = touched.await {
                tracing::warn!(error = %e, "could not record key use");
            }
        });
    }
    let principal =
        Principal::authenticated(g.tenant_id, PrincipalKind::ApiKey { key_id: g.key_id, owner_user_id }, permissions)
            .with_restrictions(g.restrictions.clone());
    Ok((principal, g.policy.clone(), g.profile.clone()))
}

/// An agent token as stored, with its identity and the keys above it.
struct AgentGrant {
    tenant_id: TenantId,
    identity_id: IdentityId,
    /// The identity and its tenant are active (not frozen).
    active: bool,
    restrictions: Restrictions,
    fence: Fence,
    answerable: Option<(Option<UserId>, PermissionSet)>,
    minted_by_key: Option<ApiKeyId>,
    above: Option<Above>,
    policy: Arc<TenantPolicy>,
    profile: Arc<Profile>,
}

impl Grant for AgentGrant {
    fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }
    fn size(&self) -> usize {
        std::mem::size_of::<Self>()
            + self.restrictions.size()
            + self.fence.size()
            + self.above.as_ref().map_or(0, Above::size)
            + POLICY_SIZE
            + self.profile.size()
    }
}

async fn load_agent(state: &AppState, hash: &str) -> Result<AgentGrant, ApiError> {
    let row = palisade_store::identities::find_by_agent_token(state.db.reader(), hash)
        .await?
        .ok_or_else(ApiError::unauthenticated)?;
    let restrictions = restrictions_of(&row.allowed_ips, &row.allowed_origins, row.expires_at)?;
    let tenant_id = TenantId::from_str(&row.tenant_id).map_err(ApiError::internal)?;
    Ok(AgentGrant {
        tenant_id,
        identity_id: IdentityId::from_str(&row.id).map_err(ApiError::internal)?,
        active: row.status == "active" && row.tenant_status == "active",
        fence: Fence::of(&restrictions)?,
        restrictions,
        answerable: answerable(&row.permissions, row.owner_user_id.as_deref(), row.owner_role.as_deref())?,
        minted_by_key: row.key_id.as_deref().map(ApiKeyId::from_str).transpose().map_err(ApiError::internal)?,
        above: match row.key_id.as_deref() {
            Some(key) => Some(Above::load(state, tenant_id, key).await?),
            None => None,
        },
        policy: Arc::new(state.abuse.tenant_policy(row.tenant_limits.as_deref())),
        profile: Arc::new(Profile {
            tenant_name: row.tenant_name,
            tenant_status: row.tenant_status,
            name: Some(row.name),
            email: None,
            role: None,
        }),
    })
}

/// An agent token acts as its one identity, with at most what its minter
/// could give it, for as long as its minter may act. A frozen identity or
/// tenant is 423 at once.
async fn authenticate_agent(
    state: &AppState,
    token: &str,
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<Authenticated, ApiError> {
    authenticate_agent_hash(state, sha256(token), ctx, headers).await
}

async fn authenticate_agent_hash(
    state: &AppState,
    hash: [u8; 32],
    ctx: &Ctx,
    headers: &HeaderMap,
) -> Result<Authenticated, ApiError> {
    let now = state.now_ms();
    let g = cached(state, Key { kind: Kind::AgentToken, hash }, load_agent(state, &hex::encode(hash))).await?;
    admit(g.restrictions.expires_at, &g.fence, ctx, headers, now)?;
    if !g.active {
        return Err(ApiError::frozen());
    }
    let (owner_user_id, permissions) = g.answerable.ok_or_else(ApiError::unauthenticated)?;
    if let Some(above) = &g.above {
        above.live(ctx, headers, now)?;
    }
    // Whatever was stored, an agent token never holds more than an agent may.
    let permissions = permissions.intersect(PermissionSet::agent());
    let principal = Principal::authenticated(
        g.tenant_id,
        PrincipalKind::Agent { identity_id: g.identity_id, owner_user_id, minted_by_key: g.minted_by_key },
        permissions,
    )
    .with_restrictions(g.restrictions.clone());
    Ok((principal, g.policy.clone(), g.profile.clone()))
}

/// A credential's stored restrictions.
fn restrictions_of(ips: &str, origins: &str, expires_at: Option<i64>) -> Result<Restrictions, ApiError> {
    Ok(Restrictions {
        allowed_ips: serde_json::from_str(ips).map_err(ApiError::internal)?,
        allowed_origins: serde_json::from_str(origins).map_err(ApiError::internal)?,
        expires_at,
    })
}

trait Size {
    fn size(&self) -> usize;
}

impl Size for Restrictions {
    fn size(&self) -> usize {
        self.allowed_ips.iter().chain(&self.allowed_origins).map(|s| s.len() + 24).sum()
    }
}

/// Where a credential may be used from, parsed once.
struct Fence {
    nets: Vec<IpNet>,
    origins: Vec<String>,
}

impl Fence {
    fn of(r: &Restrictions) -> Result<Fence, ApiError> {
        Ok(Fence {
            nets: palisade_guard::net::parse_cidrs(r.allowed_ips.iter().map(String::as_str))
                .map_err(ApiError::internal)?,
            origins: r.allowed_origins.clone(),
        })
    }

    fn size(&self) -> usize {
        self.nets.len() * std::mem::size_of::<IpNet>() + self.origins.iter().map(|s| s.len() + 24).sum::<usize>()
    }
}

/// An expired credential, or one used from an address outside its
/// `allowed_ips` or with an `Origin` outside its `allowed_origins`, is
/// unknown (401).
fn admit(expires_at: Option<i64>, f: &Fence, ctx: &Ctx, headers: &HeaderMap, now: i64) -> Result<(), ApiError> {
    if expires_at.is_some_and(|e| e <= now) {
        return Err(ApiError::unauthenticated());
    }
    if !f.nets.is_empty() && !palisade_guard::net::in_any(ctx.client_ip, &f.nets) {
        return Err(ApiError::unauthenticated());
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        if !f.origins.is_empty() && !f.origins.iter().any(|o| o.as_bytes() == origin.as_bytes()) {
            return Err(ApiError::unauthenticated());
        }
    }
    Ok(())
}

/// A minted credential never holds more than the person answerable for it
/// holds now: a demotion narrows it, a removal ends it (`None`).
#[allow(clippy::type_complexity)]
fn answerable(
    stored: &str,
    owner: Option<&str>,
    owner_role: Option<&str>,
) -> Result<Option<(Option<UserId>, PermissionSet)>, ApiError> {
    let names: Vec<String> = serde_json::from_str(stored).map_err(ApiError::internal)?;
    let permissions = PermissionSet::parse(names.iter().map(String::as_str)).map_err(ApiError::internal)?;
    let Some(owner) = owner else { return Ok(Some((None, permissions))) };
    let owner = UserId::from_str(owner).map_err(ApiError::internal)?;
    let Some(role) = owner_role.and_then(|r| Role::from_str(r).ok()) else { return Ok(None) };
    Ok(Some((Some(owner), permissions.intersect(role.permissions()))))
}

/// The key that minted a credential, and every key above it, as stored.
struct Above {
    chain: Chain,
    fences: Vec<Fence>,
}

impl Above {
    async fn load(state: &AppState, tenant_id: TenantId, key: &str) -> Result<Above, ApiError> {
        let key = ApiKeyId::from_str(key).map_err(ApiError::internal)?;
        let scope = TenantScope::for_system(tenant_id);
        let chain = palisade_store::api_keys::chain(state.db.reader(), &scope, key).await?;
        let fences = chain
            .fences
            .iter()
            .map(|f| Fence::of(&restrictions_of(&f.allowed_ips, &f.allowed_origins, None)?))
            .collect::<Result<_, ApiError>>()?;
        Ok(Above { chain, fences })
    }

    fn size(&self) -> usize {
        self.chain.size() + self.fences.iter().map(Fence::size).sum::<usize>()
    }

    /// They all still work: one revoked or expired ends the credential
    /// (401), one frozen suspends it (423); and the request comes from
    /// where each of them could act (401 otherwise: this also holds
    /// credentials minted before minting was bounded).
    fn live(&self, ctx: &Ctx, headers: &HeaderMap, now: i64) -> Result<(), ApiError> {
        match self.chain.lineage(now) {
            Lineage::Ended => Err(ApiError::unauthenticated()),
            lineage => {
                for fence in &self.fences {
                    admit(None, fence, ctx, headers, now)?;
                }
                match lineage {
                    Lineage::Frozen => Err(ApiError::frozen()),
                    _ => Ok(()),
                }
            }
        }
    }
}

/// The operator, authenticated by the master key on `/sysadmin` routes only.
pub struct Sysadmin {
    /// Names who acts: an operator account, or the master key (break-glass).
    pub proof: SysadminProof,
    pub ctx: Ctx,
    /// An operator's session token's hash (to sign out).
    pub operator_session: Option<String>,
}

impl FromRequestParts<AppState> for Sysadmin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let ctx = ctx_of(parts);
        let cred = bearer(&parts.headers).map(Credential::classify);
        if !matches!(cred, Some(Credential::MasterKey(_) | Credential::Operator(_))) {
            return Err(ApiError::unauthenticated());
        }
        if credentials_locked(parts) {
            state.abuse.credential_refused_locked(&state.db, ctx.client_ip, state.now_ms(), ctx.audit.clone()).await;
            return Err(ApiError::unauthenticated());
        }
        let now = state.now_ms();
        let (actor, operator_session) = match cred {
            Some(Credential::Operator(token)) => {
                let hash = sha256_hex(token);
                match palisade_store::operators::session(state.db.reader(), &hash, now).await? {
                    Some((id, _)) => (Some(SysadminProof::operator(&id)), Some(hash)),
                    None => (None, None),
                }
            }
            Some(Credential::MasterKey(key)) => {
                let valid = match &state.master_key {
                    MasterKey::Configured(hash) => ct_eq(&sha256(key), hash),
                    MasterKey::Stored => {
                        let stored = palisade_store::settings::get(
                            state.db.reader(),
                            palisade_store::settings::MASTER_KEY_SHA256,
                        )
                        .await?
                        .unwrap_or_default();
                        !stored.is_empty() && ct_eq(sha256_hex(key).as_bytes(), stored.as_bytes())
                    }
                    // Operators only: the key opens nothing, whatever it is.
                    MasterKey::Disabled => false,
                };
                (valid.then(SysadminProof::verified), None)
            }
            _ => (None, None),
        };
        let Some(proof) = actor else {
            let kind = if matches!(cred, Some(Credential::Operator(_))) { "operator_token" } else { "master_key" };
            state.abuse.credential_failed(&state.db, kind, ctx.client_ip, now, ctx.audit.clone()).await?;
            return Err(ApiError::unauthenticated());
        };
        parts.extensions.insert(CredentialVerified);
        Ok(Sysadmin { proof, ctx, operator_session })
    }
}

/// A JSON body that passed the input rules: `application/json`, within the
/// size and depth limits, valid UTF-8, every string NFC-normalized, stripped
/// of control characters and within the length limit.
pub struct ValidJson<T>(pub T);

impl<T: DeserializeOwned> FromRequest<AppState> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (value, ctx, caller) = read_json(req, state).await?;
        state.abuse.check_body(&state.db, state.now_ms(), &value, ctx.client_ip, caller, ctx.audit).await?;
        serde_json::from_value(value).map(ValidJson).map_err(|e| ApiError::validation("body", e.to_string()))
    }
}

/// A JSON body that passed the input rules but not yet the WAF's body
/// check. For the routes that cost money, whose admission order puts the
/// sending identity's kill-switch first (a frozen identity is 423 whatever
/// its body says): the handler may look at it through [`peek`](Self::peek)
/// (the sender, what the idempotency hash needs) and owns it only after
/// [`scan`](Self::scan).
pub struct UnscannedJson<T> {
    body: T,
    value: serde_json::Value,
    ctx: Ctx,
    caller: Option<CallerKey>,
}

impl<T> UnscannedJson<T> {
    pub fn peek(&self) -> &T {
        &self.body
    }

    /// The WAF's body check (a refusal counts a violation).
    pub async fn scan(self, state: &AppState) -> Result<T, ApiError> {
        let UnscannedJson { body, value, ctx, caller } = self;
        state.abuse.check_body(&state.db, state.now_ms(), &value, ctx.client_ip, caller, ctx.audit).await?;
        Ok(body)
    }
}

impl<T: DeserializeOwned> FromRequest<AppState> for UnscannedJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, ApiError> {
        let (value, ctx, caller) = read_json(req, state).await?;
        let body = T::deserialize(&value).map_err(|e| ApiError::validation("body", e.to_string()))?;
        Ok(UnscannedJson { body, value, ctx, caller })
    }
}

/// The body as JSON under the input rules, with who sent it.
async fn read_json(req: Request, state: &AppState) -> Result<(serde_json::Value, Ctx, Option<CallerKey>), ApiError> {
    if !is_json(req.headers()) {
        return Err(ApiError::unsupported_media_type());
    }
    let limits = &state.config.limits;
    let (parts, body) = req.into_parts();
    let bytes = crate::body::read(&state.body_reads, &parts, body, limits.max_json_bytes).await?;
    if !palisade_guard::input::json_depth_within(&bytes, limits.max_json_depth) {
        return Err(ApiError::validation("body", format!("JSON nesting deeper than {}", limits.max_json_depth)));
    }
    let mut value = palisade_guard::input::parse_json_strict(&bytes).map_err(|e| {
        let what = if e.is_data() { e.to_string() } else { format!("malformed JSON: {}", json_error(&e)) };
        ApiError::validation("body", what)
    })?;
    // Every request body is an object (serde would also read a struct
    // from an array, by position).
    if !value.is_object() {
        return Err(ApiError::validation("body", "must be a JSON object"));
    }
    palisade_guard::input::sanitize_json(&mut value, limits.max_text_chars).map_err(ApiError::validation_many)?;
    whole_numbers_as_integers(&mut value);
    let caller = parts.extensions.get::<CallerKey>().copied();
    Ok((value, ctx_of(&parts), caller))
}

/// JSON has one kind of number: `5.0` is the integer 5, as JSON Schema's
/// `integer` (the OpenAPI document's) counts it. Such numbers become
/// integers before the body is read into its type, so that a field of an
/// integer type takes them; `5.5` stays what it is and is refused there.
/// (Below 2^53, where every whole number is exact as a double.)
fn whole_numbers_as_integers(v: &mut serde_json::Value) {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match v {
        serde_json::Value::Number(n) if n.is_f64() => {
            if let Some(f) = n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < EXACT) {
                *n = serde_json::Number::from(f as i64);
            }
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(whole_numbers_as_integers),
        serde_json::Value::Object(map) => map.values_mut().for_each(whole_numbers_as_integers),
        _ => {}
    }
}

/// An optional body: a request with no body and no `Content-Type` is `None`.
impl<T: DeserializeOwned> OptionalFromRequest<AppState> for ValidJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Option<Self>, ApiError> {
        let h = req.headers();
        let empty = h.get(header::CONTENT_TYPE).is_none()
            && h.get(header::TRANSFER_ENCODING).is_none()
            && h.get(header::CONTENT_LENGTH).is_none_or(|v| v.as_bytes() == b"0");
        if empty {
            return Ok(None);
        }
        <Self as FromRequest<AppState>>::from_request(req, state).await.map(Some)
    }
}

fn json_error(e: &serde_json::Error) -> String {
    match e.classify() {
        serde_json::error::Category::Eof => "unexpected end of input".into(),
        _ => format!("error at line {} column {}", e.line(), e.column()),
    }
}

fn is_json(h: &HeaderMap) -> bool {
    let Some(ct) = h.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mut parts = ct.split(';');
    let mime = parts.next().unwrap_or("").trim().to_ascii_lowercase();
    let json = mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"));
    let charset_ok = parts.all(|p| {
        let p = p.trim().to_ascii_lowercase();
        !p.starts_with("charset=") || p == "charset=utf-8" || p == "charset=\"utf-8\""
    });
    json && charset_ok
}

/// Query parameters. A query that does not fit is a `validation_failed`
/// problem naming the query, like a body that does not.
pub struct QueryParams<T>(pub T);

impl<T: DeserializeOwned + Send> FromRequestParts<AppState> for QueryParams<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Query(q) = Query::<T>::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::validation("query", e.body_text()))?;
        Ok(QueryParams(q))
    }
}

/// A UUID path id; anything else is the same 404 as a missing resource.
pub struct PathId<T>(pub T);

impl<T: FromStr + Send> FromRequestParts<AppState> for PathId<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Path(raw) = Path::<String>::from_request_parts(parts, state).await.map_err(|_| ApiError::not_found())?;
        T::from_str(&raw).map(PathId).map_err(|_| ApiError::not_found())
    }
}
