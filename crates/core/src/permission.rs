use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

macro_rules! permissions {
    ($($variant:ident => $s:literal),+ $(,)?) => {
        /// A `resource:action` permission.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Permission { $($variant),+ }

        impl Permission {
            pub const ALL: &'static [Permission] = &[$(Permission::$variant),+];
            pub fn as_str(self) -> &'static str {
                match self { $(Permission::$variant => $s),+ }
            }
        }

        impl FromStr for Permission {
            type Err = UnknownPermission;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s { $($s => Ok(Permission::$variant),)+ _ => Err(UnknownPermission(s.to_owned())) }
            }
        }
    };
}

permissions! {
    MessagesRead => "messages:read",
    MessagesWrite => "messages:write",
    CallsRead => "calls:read",
    CallsWrite => "calls:write",
    CdrsRead => "cdrs:read",
    IdentitiesRead => "identities:read",
    IdentitiesManage => "identities:manage",
    KeysRead => "keys:read",
    KeysManage => "keys:manage",
    UsersRead => "users:read",
    UsersManage => "users:manage",
    WebhooksRead => "webhooks:read",
    WebhooksManage => "webhooks:manage",
    EventsRead => "events:read",
    BillingRead => "billing:read",
    TenantManage => "tenant:manage",
    // Last, so the bits of those before keep their values.
    RecordingsRead => "recordings:read",
    RecordingsManage => "recordings:manage",
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown permission `{0}`")]
pub struct UnknownPermission(pub String);

impl Permission {
    fn bit(self) -> u32 {
        1 << (self as u32)
    }
    pub fn is_read(self) -> bool {
        self.as_str().ends_with(":read")
    }
}

impl fmt::Display for Permission {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Permission {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Permission {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A set of permissions, as a bit set so checks and subset tests are cheap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct PermissionSet(u32);

impl PermissionSet {
    pub const EMPTY: PermissionSet = PermissionSet(0);

    /// What an agent token holds: sending and calling as its identity and
    /// reading that identity's results (the routes narrow every read to the
    /// identity). Never deleting recordings: they are evidence of its calls.
    pub fn agent() -> Self {
        use Permission::*;
        [MessagesRead, MessagesWrite, CallsRead, CallsWrite, CdrsRead, RecordingsRead].into_iter().collect()
    }

    pub fn all() -> Self {
        Permission::ALL.iter().copied().collect()
    }
    pub fn contains(self, p: Permission) -> bool {
        self.0 & p.bit() != 0
    }
    pub fn is_subset_of(self, other: PermissionSet) -> bool {
        self.0 & !other.0 == 0
    }
    pub fn intersect(self, other: PermissionSet) -> PermissionSet {
        PermissionSet(self.0 & other.0)
    }
    pub fn iter(self) -> impl Iterator<Item = Permission> {
        Permission::ALL.iter().copied().filter(move |p| self.contains(*p))
    }
    pub fn to_strings(self) -> Vec<String> {
        self.iter().map(|p| p.as_str().to_owned()).collect()
    }
    /// Parses a stored or requested list; any unknown name is an error.
    pub fn parse<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Self, UnknownPermission> {
        names.into_iter().map(str::parse::<Permission>).collect()
    }
}

impl FromIterator<Permission> for PermissionSet {
    fn from_iter<I: IntoIterator<Item = Permission>>(iter: I) -> Self {
        PermissionSet(iter.into_iter().fold(0, |acc, p| acc | p.bit()))
    }
}

/// Named permission sets for people and keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    ReadOnly,
    Integration,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::ReadOnly => "read_only",
            Role::Integration => "integration",
        }
    }

    pub fn permissions(self) -> PermissionSet {
        use Permission::*;
        match self {
            Role::Owner => PermissionSet::all(),
            // Everything but changing the tenant itself (ownership, deletion).
            Role::Admin => PermissionSet::all().iter().filter(|p| *p != TenantManage).collect(),
            Role::ReadOnly => PermissionSet::all().iter().filter(|p| p.is_read()).collect(),
            Role::Integration => {
                [MessagesRead, MessagesWrite, CallsRead, CallsWrite, CdrsRead, IdentitiesRead, RecordingsRead]
                    .into_iter()
                    .collect()
            }
        }
    }
}

impl FromStr for Role {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "owner" => Ok(Role::Owner),
            "admin" => Ok(Role::Admin),
            "read_only" => Ok(Role::ReadOnly),
            "integration" => Ok(Role::Integration),
            _ => Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Permission::ALL {
            assert_eq!(p.as_str().parse::<Permission>(), Ok(*p));
        }
        assert!("keys:delete_everything".parse::<Permission>().is_err());
    }

    #[test]
    fn sets_and_their_forms() {
        use Permission::*;
        assert_eq!(KeysRead.to_string(), "keys:read");
        assert_eq!(serde_json::to_string(&KeysRead).unwrap(), r#""keys:read""#);
        assert_eq!(serde_json::from_str::<Permission>(r#""keys:manage""#).unwrap(), KeysManage);
        assert!(serde_json::from_str::<Permission>(r#""keys:all""#).is_err());
        let agent = PermissionSet::agent();
        assert_eq!(
            agent.iter().collect::<Vec<_>>(),
            [MessagesRead, MessagesWrite, CallsRead, CallsWrite, CdrsRead, RecordingsRead]
        );
        let twice: PermissionSet = [KeysRead, KeysRead, UsersRead].into_iter().collect();
        assert_eq!(twice.to_strings(), ["keys:read", "users:read"]);
        assert_eq!(PermissionSet::parse(["users:read", "keys:read"]), Ok(twice));
        assert!(PermissionSet::parse(["keys:read", "keys:all"]).is_err());
        assert_eq!(twice.intersect(PermissionSet::from_iter([UsersRead, UsersManage])).to_strings(), ["users:read"]);
        assert_eq!(PermissionSet::all().iter().count(), Permission::ALL.len());
        assert_eq!(PermissionSet::EMPTY.to_strings(), Vec::<String>::new());
    }

    #[test]
    fn role_names_and_the_admin() {
        for r in [Role::Owner, Role::Admin, Role::ReadOnly, Role::Integration] {
            assert_eq!(r.as_str().parse::<Role>(), Ok(r));
        }
        assert_eq!(Role::ReadOnly.as_str(), "read_only");
        assert!("root".parse::<Role>().is_err());
        let admin = Role::Admin.permissions();
        assert!(admin.contains(Permission::KeysManage) && admin.contains(Permission::UsersManage));
        assert!(!admin.contains(Permission::TenantManage));
        assert_eq!(admin.iter().count(), Permission::ALL.len() - 1);
    }

    #[test]
    fn roles_nest_as_expected() {
        let owner = Role::Owner.permissions();
        for r in [Role::Admin, Role::ReadOnly, Role::Integration] {
            assert!(r.permissions().is_subset_of(owner), "{r:?}");
        }
        assert!(Role::ReadOnly.permissions().iter().all(Permission::is_read));
        let integ = Role::Integration.permissions();
        assert!(integ.contains(Permission::MessagesWrite));
        assert!(!integ.contains(Permission::KeysManage));
        assert!(!integ.contains(Permission::UsersManage));
        assert!(!integ.contains(Permission::WebhooksManage));
        assert!(!Role::Admin.permissions().is_subset_of(Role::ReadOnly.permissions()));
    }
}
