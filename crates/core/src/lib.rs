//! Palisade's shared vocabulary: ids, principals, tenant scopes, permissions,
//! the one error type and the clock. Every other crate speaks these types.

pub mod clock;
pub mod error;
pub mod ids;
pub mod permission;
pub mod principal;

pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{ApiError, FieldError, Problem};
pub use ids::{ApiKeyId, EventId, IdentityId, TenantId, UserId};
pub use permission::{Permission, PermissionSet, Role};
pub use principal::{Principal, PrincipalKind, TenantScope};
