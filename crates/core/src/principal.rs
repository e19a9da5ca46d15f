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
}

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
        Self { tenant_id, kind, permissions, restrictions: Restrictions::default() }
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
    pub fn require(&self, permission: Permission) -> Result<TenantScope, ApiError> {
        if self.permissions.contains(permission) {
            Ok(TenantScope { tenant_id: self.tenant_id })
        } else {
            Err(ApiError::forbidden(permission))
        }
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

/// Returned only by the master-key check; required to build sysadmin scopes.
#[derive(Debug, Clone)]
pub struct SysadminProof(());

impl SysadminProof {
    /// Called by the sysadmin extractor after the master key verified, and
    /// by the CLI, whose caller has direct access to the database anyway.
    pub fn verified() -> Self {
        SysadminProof(())
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
    pub fn sysadmin() -> Self {
        Self { kind: "sysadmin".into(), id: None }
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
}
