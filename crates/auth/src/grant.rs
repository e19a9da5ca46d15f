//! Nobody grants more than they hold. A credential one principal mints for
//! another (child key, agent token) holds at most the minter's permissions,
//! works from no address or origin the minter could not act from, and lives
//! no longer than the minter. The same test decides who may rotate or
//! revoke a credential: nobody touches one wider than themselves.

use ipnet::IpNet;
use palisade_core::principal::Restrictions;
use palisade_core::PermissionSet;

/// What a credential holds, and where and until when it works.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bounds {
    pub permissions: PermissionSet,
    pub restrictions: Restrictions,
}

/// The restrictions a minter asked for; an absent one is inherited.
#[derive(Debug, Clone, Default)]
pub struct Asked {
    pub allowed_ips: Option<Vec<String>>,
    pub allowed_origins: Option<Vec<String>>,
    pub expires_at: Option<i64>,
}

/// The first way in which a credential would be wider than its minter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wider {
    Permissions,
    Addresses,
    Origins,
    Lifetime,
}

impl Wider {
    pub fn detail(self) -> &'static str {
        match self {
            Wider::Permissions => "It would hold permissions you do not hold.",
            Wider::Addresses => "It would work from addresses your credential cannot act from (allowed_ips).",
            Wider::Origins => "It would work from origins your credential cannot act from (allowed_origins).",
            Wider::Lifetime => "It would outlive your credential (expires_at).",
        }
    }
}

impl Bounds {
    /// A credential with these permissions and no restriction.
    pub fn unrestricted(permissions: PermissionSet) -> Self {
        Bounds { permissions, restrictions: Restrictions::default() }
    }

    /// Whether `other` is no wider than `self`.
    pub fn covers(&self, other: &Bounds) -> Result<(), Wider> {
        if !other.permissions.is_subset_of(self.permissions) {
            return Err(Wider::Permissions);
        }
        let (mine, theirs) = (&self.restrictions, &other.restrictions);
        if !nets_within(&theirs.allowed_ips, &mine.allowed_ips) {
            return Err(Wider::Addresses);
        }
        let origins_within = mine.allowed_origins.is_empty()
            || (!theirs.allowed_origins.is_empty()
                && theirs.allowed_origins.iter().all(|o| mine.allowed_origins.contains(o)));
        if !origins_within {
            return Err(Wider::Origins);
        }
        match (mine.expires_at, theirs.expires_at) {
            (Some(m), Some(t)) if t > m => Err(Wider::Lifetime),
            (Some(_), None) => Err(Wider::Lifetime),
            _ => Ok(()),
        }
    }

    /// The bounds of a credential minted under these: the permissions and
    /// restrictions asked for, each absent restriction inherited, refused
    /// if any of it reaches beyond the minter's.
    pub fn mint(&self, permissions: PermissionSet, asked: Asked) -> Result<Bounds, Wider> {
        let mine = &self.restrictions;
        let minted = Bounds {
            permissions,
            restrictions: Restrictions {
                allowed_ips: asked.allowed_ips.unwrap_or_else(|| mine.allowed_ips.clone()),
                allowed_origins: asked.allowed_origins.unwrap_or_else(|| mine.allowed_origins.clone()),
                expires_at: asked.expires_at.or(mine.expires_at),
            },
        };
        self.covers(&minted).map(|()| minted)
    }
}

/// Every network of `inner` lies inside one of `outer`; an empty list is
/// every address. An unparsable entry is never within anything.
fn nets_within(inner: &[String], outer: &[String]) -> bool {
    if outer.is_empty() {
        return true;
    }
    let parse = |s: &String| s.parse::<IpNet>().ok();
    let outer: Vec<IpNet> = outer.iter().filter_map(parse).collect();
    !inner.is_empty() && inner.iter().all(|n| parse(n).is_some_and(|n| outer.iter().any(|o| o.contains(&n))))
}

#[cfg(test)]
mod tests {
    use palisade_core::{Permission, Role};

    use super::*;

    fn bounds(perms: PermissionSet, ips: &[&str], origins: &[&str], expires_at: Option<i64>) -> Bounds {
        Bounds {
            permissions: perms,
            restrictions: Restrictions {
                allowed_ips: ips.iter().map(|s| s.to_string()).collect(),
                allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
                expires_at,
            },
        }
    }

    #[test]
    fn absent_restrictions_are_inherited() {
        let parent = bounds(Role::Admin.permissions(), &["192.0.2.0/24"], &["https://a.example"], Some(1000));
        let child = parent.mint(Role::ReadOnly.permissions(), Asked::default()).unwrap();
        assert_eq!(child.restrictions, parent.restrictions);
    }

    #[test]
    fn nothing_wider_than_the_minter() {
        let parent = bounds(Role::Integration.permissions(), &["192.0.2.0/24"], &[], Some(1000));
        let asked = |ips: Option<&[&str]>, expires_at| Asked {
            allowed_ips: ips.map(|i| i.iter().map(|s| s.to_string()).collect()),
            allowed_origins: None,
            expires_at,
        };
        let perms = Role::Integration.permissions();
        assert_eq!(parent.mint(Role::Admin.permissions(), asked(None, None)), Err(Wider::Permissions));
        assert_eq!(parent.mint(perms, asked(Some(&[]), None)), Err(Wider::Addresses));
        assert_eq!(parent.mint(perms, asked(Some(&["192.0.0.0/16"]), None)), Err(Wider::Addresses));
        assert_eq!(parent.mint(perms, asked(Some(&["198.51.100.1/32"]), None)), Err(Wider::Addresses));
        assert_eq!(parent.mint(perms, asked(None, Some(1001))), Err(Wider::Lifetime));
        let narrow = parent.mint(perms, asked(Some(&["192.0.2.128/25"]), Some(999))).unwrap();
        assert_eq!(narrow.restrictions.expires_at, Some(999));
    }

    #[test]
    fn each_refusal_says_what_is_wider() {
        for (w, word) in [
            (Wider::Permissions, "permissions"),
            (Wider::Addresses, "allowed_ips"),
            (Wider::Origins, "allowed_origins"),
            (Wider::Lifetime, "expires_at"),
        ] {
            assert!(w.detail().contains(word), "{w:?}");
        }
    }

    #[test]
    fn covers_origins_and_lifetimes() {
        let user = Bounds::unrestricted(Role::Owner.permissions());
        let key = bounds(Role::Admin.permissions(), &["10.0.0.0/8"], &["https://a.example"], Some(5));
        assert_eq!(user.covers(&key), Ok(()));
        assert_eq!(key.covers(&user), Err(Wider::Permissions));
        let same_perms = Bounds::unrestricted(Role::Admin.permissions());
        assert_eq!(key.covers(&same_perms), Err(Wider::Addresses));
        let other_origin = bounds(Role::Admin.permissions(), &["10.1.0.0/16"], &["https://b.example"], Some(5));
        assert_eq!(key.covers(&other_origin), Err(Wider::Origins));
        let forever = bounds(Role::Admin.permissions(), &["10.1.0.0/16"], &["https://a.example"], None);
        assert_eq!(key.covers(&forever), Err(Wider::Lifetime));
        let one = PermissionSet::from_iter([Permission::MessagesRead]);
        assert_eq!(bounds(one, &[], &[], None).covers(&bounds(one, &["::1/128"], &[], Some(1))), Ok(()));
    }
}
