use serde::Serialize;

use crate::error::ApiError;
use crate::ids::{ApiKeyId, IdentityId, TenantId, UserId};
use crate::permission::{Permission, PermissionSet, Role};

/// Who is acting. Built only by the authentication extractor once a
/// credential has been verified; handlers receive it, never construct it.
#[derive(Debug, Clone)]
pub struct Principal {
    tenant_id: TenantId,
    kind: PrincipalKind,
    permissions: PermissionSet,
    restrictions: Restrictions,
    second_factor: SecondFactor,
}

/// What a person's session has shown of a second factor. Not people
/// (keys, agents) have nothing to show and are asked for nothing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SecondFactor {
    /// The person has a second factor, or their tenant requires one of
    /// them: sensitive operations need a recent one.
    pub expected: bool,
    /// Their tenant requires one and this session never gave one: nothing
    /// that needs a permission is allowed until it does.
    pub missing: bool,
    /// When this session last gave one (ms).
    pub given_at_ms: Option<i64>,
}

impl SecondFactor {
    /// Whether the session gave one within `within_ms` of `now_ms`.
    pub fn given_within(&self, now_ms: i64, within_ms: i64) -> bool {
        self.given_at_ms.is_some_and(|at| now_ms.saturating_sub(at) <= within_ms)
    }
}

/// What a refused sensitive operation tells the person to do.
pub const STEP_UP: &str =
    "This operation needs a recent second factor: give it at POST /v1/auth/step-up, then repeat the request.";

/// Where and until when a credential works; an empty list is anywhere.
/// What it mints can reach no further (see `palisade_auth::grant`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Restrictions {
    /// CIDRs, in their canonical form.
    pub allowed_ips: Vec<String>,
    /// Exact origins.
    pub allowed_origins: Vec<String>,
    /// Milliseconds since the epoch.
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone)]
pub enum PrincipalKind {
    /// A person, authenticated by an access token.
    User { user_id: UserId, role: Role, jti: String, family_id: String, expires_at_ms: i64 },
    /// An API key; `owner_user_id` is the person answerable for it.
    ApiKey { key_id: ApiKeyId, owner_user_id: Option<UserId> },
    /// An agent token: acts as one identity of the tenant, and only as it.
    /// `owner_user_id` is the person answerable for it, `minted_by_key` the
    /// key that minted it, if one did.
    Agent { identity_id: IdentityId, owner_user_id: Option<UserId>, minted_by_key: Option<ApiKeyId> },
}

impl Principal {
    pub fn authenticated(tenant_id: TenantId, kind: PrincipalKind, permissions: PermissionSet) -> Self {
        Self {
            tenant_id,
            kind,
            permissions,
            restrictions: Restrictions::default(),
            second_factor: SecondFactor::default(),
        }
    }

    /// What the person's session has shown of a second factor.
    pub fn with_second_factor(mut self, second_factor: SecondFactor) -> Self {
        self.second_factor = second_factor;
        self
    }

    pub fn second_factor(&self) -> SecondFactor {
        self.second_factor
    }

    /// The credential's own restrictions (a person's are none: what they
    /// mint answers to them instead).
    pub fn with_restrictions(mut self, restrictions: Restrictions) -> Self {
        self.restrictions = restrictions;
        self
    }

    pub fn restrictions(&self) -> &Restrictions {
        &self.restrictions
    }

    /// The person answerable for what this principal does and mints.
    pub fn answerable_user(&self) -> Option<UserId> {
        match &self.kind {
            PrincipalKind::User { user_id, .. } => Some(*user_id),
            PrincipalKind::ApiKey { owner_user_id, .. } | PrincipalKind::Agent { owner_user_id, .. } => *owner_user_id,
        }
    }

    pub fn kind(&self) -> &PrincipalKind {
        &self.kind
    }

    pub fn permissions(&self) -> PermissionSet {
        self.permissions
    }

    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    pub fn user_id(&self) -> Option<UserId> {
        match &self.kind {
            PrincipalKind::User { user_id, .. } => Some(*user_id),
            PrincipalKind::ApiKey { .. } | PrincipalKind::Agent { .. } => None,
        }
    }

    /// The only way to obtain a tenant scope for data access: prove the
    /// permission first. A missing permission inside one's own tenant is 403.
    /// A person whose tenant requires a second factor they have not given
    /// gets `mfa_required` for everything.
    pub fn require(&self, permission: Permission) -> Result<TenantScope, ApiError> {
        if self.second_factor.missing {
            return Err(ApiError::mfa_required(
                "Your tenant requires a second factor: enrol one (POST /v1/me/mfa/totp), then sign in again.",
            ));
        }
        if self.permissions.contains(permission) {
            Ok(TenantScope { tenant_id: self.tenant_id })
        } else {
            Err(ApiError::forbidden(permission))
        }
    }

    /// As [`require`](Self::require), for a sensitive operation: a person
    /// with a second factor (or whose tenant requires one) must have given
    /// it within `within_ms` of `now_ms` (step-up).
    pub fn require_recent_factor(
        &self,
        permission: Permission,
        now_ms: i64,
        within_ms: i64,
    ) -> Result<TenantScope, ApiError> {
        let scope = self.require(permission)?;
        let f = self.second_factor;
        if f.expected && !f.given_within(now_ms, within_ms) {
            return Err(ApiError::mfa_required(STEP_UP));
        }
        Ok(scope)
    }

    /// Scope for reading one's own principal record (`/v1/me`), which needs no permission.
    pub fn own_scope(&self) -> TenantScope {
        TenantScope { tenant_id: self.tenant_id }
    }

    pub fn actor(&self) -> Actor {
        match &self.kind {
            PrincipalKind::User { user_id, .. } => Actor::user(*user_id),
            PrincipalKind::ApiKey { key_id, .. } => Actor::api_key(*key_id),
            PrincipalKind::Agent { identity_id, .. } => Actor::agent(*identity_id),
        }
    }
}

/// Proof that the holder may touch data of exactly one tenant. Every
/// repository function that reads or writes tenant data takes one, so a query
/// without a tenant filter does not type-check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantScope {
    tenant_id: TenantId,
}

impl TenantScope {
    pub fn tenant_id(&self) -> TenantId {
        self.tenant_id
    }

    /// For the operator: the sysadmin acts on a tenant it names explicitly.
    pub fn for_sysadmin(_proof: &SysadminProof, tenant_id: TenantId) -> Self {
        Self { tenant_id }
    }

    /// For work the platform does on its own behalf for a tenant it already
    /// identified from a verified token (signup, verification, login).
    pub fn for_system(tenant_id: TenantId) -> Self {
        Self { tenant_id }
    }
}

/// Returned only by the sysadmin check (an operator's session or the master
/// key); required to build sysadmin scopes. It names who acts, so every
/// operation done with it is audited under them.
#[derive(Debug, Clone)]
pub struct SysadminProof {
    actor: Actor,
}

impl SysadminProof {
    /// Called by the sysadmin extractor after the master key verified, and
    /// by the CLI, whose caller has direct access to the database anyway.
    pub fn verified() -> Self {
        SysadminProof { actor: Actor::sysadmin() }
    }

    /// Called by the sysadmin extractor for a live operator session.
    pub fn operator(id: &str) -> Self {
        SysadminProof { actor: Actor::operator(id) }
    }

    /// Who acts.
    pub fn actor(&self) -> Actor {
        self.actor.clone()
    }
}

/// Who did something, as recorded in the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct Actor {
    #[serde(rename = "type")]
    pub kind: String,
    pub id: Option<String>,
}

impl Actor {
    pub fn user(id: UserId) -> Self {
        Self { kind: "user".into(), id: Some(id.to_string()) }
    }
    pub fn api_key(id: ApiKeyId) -> Self {
        Self { kind: "api_key".into(), id: Some(id.to_string()) }
    }
    pub fn agent(identity: IdentityId) -> Self {
        Self { kind: "agent".into(), id: Some(identity.to_string()) }
    }
    /// The master key (break-glass): nobody in particular.
    pub fn sysadmin() -> Self {
        Self { kind: "sysadmin".into(), id: None }
    }
    /// An operator account, by its id.
    pub fn operator(id: &str) -> Self {
        Self { kind: "operator".into(), id: Some(id.to_owned()) }
    }
    pub fn system() -> Self {
        Self { kind: "system".into(), id: None }
    }
    pub fn anonymous() -> Self {
        Self { kind: "anonymous".into(), id: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn who_acts_and_who_answers() {
        let (tenant, user, key, identity) = (TenantId::new(), UserId::new(), ApiKeyId::new(), IdentityId::new());
        let person = Principal::authenticated(
            tenant,
            PrincipalKind::User {
                user_id: user,
                role: Role::Admin,
                jti: "j".into(),
                family_id: "f".into(),
                expires_at_ms: 1,
            },
            Role::Admin.permissions(),
        );
        assert_eq!((person.user_id(), person.answerable_user()), (Some(user), Some(user)));
        assert_eq!(person.actor(), Actor { kind: "user".into(), id: Some(user.to_string()) });
        assert_eq!(person.permissions(), Role::Admin.permissions());
        assert_eq!(person.own_scope().tenant_id(), tenant);
        let restrictions =
            Restrictions { allowed_ips: vec!["10.0.0.0/8".into()], allowed_origins: vec![], expires_at: Some(5) };
        let api_key = Principal::authenticated(
            tenant,
            PrincipalKind::ApiKey { key_id: key, owner_user_id: Some(user) },
            PermissionSet::EMPTY,
        )
        .with_restrictions(restrictions.clone());
        assert_eq!(api_key.restrictions(), &restrictions);
        assert_eq!((api_key.user_id(), api_key.answerable_user()), (None, Some(user)));
        assert_eq!(api_key.actor(), Actor { kind: "api_key".into(), id: Some(key.to_string()) });
        let agent = Principal::authenticated(
            tenant,
            PrincipalKind::Agent { identity_id: identity, owner_user_id: None, minted_by_key: Some(key) },
            PermissionSet::agent(),
        );
        assert_eq!((agent.user_id(), agent.answerable_user()), (None, None));
        assert_eq!(agent.actor(), Actor { kind: "agent".into(), id: Some(identity.to_string()) });
        assert!(matches!(agent.kind(), PrincipalKind::Agent { .. }));
        for (a, kind) in
            [(Actor::sysadmin(), "sysadmin"), (Actor::system(), "system"), (Actor::anonymous(), "anonymous")]
        {
            assert_eq!((a.kind.as_str(), a.id), (kind, None));
        }
        let t = TenantId::new();
        assert_eq!(TenantScope::for_system(t).tenant_id(), t);
        assert_eq!(TenantScope::for_sysadmin(&SysadminProof::verified(), t).tenant_id(), t);
    }

    #[test]
    fn scope_requires_permission() {
        let p = Principal::authenticated(
            TenantId::new(),
            PrincipalKind::ApiKey { key_id: ApiKeyId::new(), owner_user_id: None },
            Role::ReadOnly.permissions(),
        );
        assert!(p.require(Permission::KeysRead).is_ok());
        let err = p.require(Permission::KeysManage).unwrap_err();
        assert_eq!(err.status().as_u16(), 403);
        assert_eq!(p.require(Permission::EventsRead).unwrap().tenant_id(), p.tenant_id());
    }

    fn owner(second_factor: SecondFactor) -> Principal {
        let kind = PrincipalKind::User {
            user_id: UserId::new(),
            role: Role::Owner,
            jti: "j".into(),
            family_id: "f".into(),
            expires_at_ms: 1,
        };
        Principal::authenticated(TenantId::new(), kind, Role::Owner.permissions()).with_second_factor(second_factor)
    }

    #[test]
    fn a_missing_second_factor_refuses_every_permission() {
        let p = owner(SecondFactor { expected: true, missing: true, given_at_ms: None });
        for perm in Permission::ALL {
            assert_eq!(p.require(*perm).unwrap_err().reason(), "mfa_required");
        }
        let p = owner(SecondFactor { expected: true, missing: false, given_at_ms: Some(7) });
        assert!(p.require(Permission::KeysManage).is_ok());
        assert_eq!(p.second_factor(), SecondFactor { expected: true, missing: false, given_at_ms: Some(7) });
    }

    #[test]
    fn sensitive_operations_need_a_recent_factor_when_one_is_expected() {
        let (now, window) = (1_000_000, 600_000);
        let recent = owner(SecondFactor { expected: true, missing: false, given_at_ms: Some(now - window) });
        assert!(recent.require_recent_factor(Permission::KeysManage, now, window).is_ok());
        let stale = owner(SecondFactor { expected: true, missing: false, given_at_ms: Some(now - window - 1) });
        let e = stale.require_recent_factor(Permission::KeysManage, now, window).unwrap_err();
        assert_eq!((e.status().as_u16(), e.reason()), (403, "mfa_required"));
        let never = owner(SecondFactor { expected: true, missing: false, given_at_ms: None });
        assert_eq!(
            never.require_recent_factor(Permission::KeysManage, now, window).unwrap_err().reason(),
            "mfa_required"
        );
        // Nobody expects one of a person without a factor or a policy.
        let none = owner(SecondFactor::default());
        assert!(none.require_recent_factor(Permission::KeysManage, now, window).is_ok());
        // The permission is still checked first.
        let reader = Principal::authenticated(TenantId::new(), none.kind().clone(), Role::ReadOnly.permissions());
        assert_eq!(
            reader.require_recent_factor(Permission::KeysManage, now, window).unwrap_err().reason(),
            "forbidden"
        );
    }

    #[test]
    fn a_sysadmin_proof_names_who_acts() {
        assert_eq!(SysadminProof::verified().actor(), Actor::sysadmin());
        assert_eq!(SysadminProof::operator("op-1").actor(), Actor { kind: "operator".into(), id: Some("op-1".into()) });
    }
}
