use palisade_core::{IdentityId, TenantId, TenantScope};
use palisade_digest::Algorithm;
use palisade_keys::{Keyring, LocalKek};
use palisade_seal::Sealer;
use palisade_store::identities::{NewIdentity, Policy};
use palisade_store::Db;

use crate::credentials::{self, DigestUser, MAX_PER_IDENTITY};
use crate::registrar::{self, Bounds, Contact, Outcome, Request};

const NOW: i64 = 1_700_000_000_000;
const DOMAIN: &str = "sip.example.net";
const BOUNDS: Bounds =
    Bounds { min_expires_secs: 60, max_expires_secs: 3600, default_expires_secs: 1800, max_contacts: 2 };

/// A fresh SQLite database and a sealer (the trunk tests use it too).
pub(crate) struct World {
    _dir: tempfile::TempDir,
    pub(crate) db: Db,
    pub(crate) sealer: Sealer,
    pub(crate) keys: Keyring,
}

/// A keyring over `db` with a KEK of `byte`s.
pub(crate) fn keyring(db: &Db, byte: u8) -> Keyring {
    use base64::Engine as _;
    let line = format!("v1:{}", base64::engine::general_purpose::STANDARD.encode([byte; 32]));
    Keyring::new(std::sync::Arc::new(LocalKek::parse(&line).unwrap()), db.clone(), palisade_keys::DEFAULT_TTL)
}

pub(crate) async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/v.db", dir.path().display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    World { _dir: dir, keys: keyring(&db, 5), db, sealer: Sealer::new(&[9; 32]) }
}

impl World {
    async fn tenant(&self) -> TenantScope {
        let t = TenantId::new();
        palisade_store::tenants::insert(self.db.reader(), t, "t", NOW).await.unwrap();
        TenantScope::for_system(t)
    }

    async fn identity(&self, scope: &TenantScope, number: &str) -> IdentityId {
        let id = IdentityId::new();
        let policy = Policy { rate_per_second: None, monthly_budget: None, allowed_countries: "[]", srtp: "preferred" };
        let new = NewIdentity { id, kind: "number", number, country: "US", name: "n", policy, now: NOW };
        palisade_store::identities::insert(self.db.reader(), scope, &new).await.unwrap();
        id
    }

    async fn create(&self, scope: &TenantScope, identity: IdentityId) -> Option<credentials::Created> {
        let keys = self.keys.of(scope).await.unwrap();
        let mut tx = self.db.begin().await.unwrap();
        let c = credentials::create(&mut tx, &keys, scope, identity, DOMAIN, NOW).await.unwrap();
        tx.commit().await.unwrap();
        c
    }

    async fn credential(&self, scope: &TenantScope, identity: IdentityId) -> credentials::Created {
        self.create(scope, identity).await.expect("created")
    }

    async fn user(&self, username: &str) -> Option<DigestUser> {
        credentials::for_digest(&self.db, &self.keys, &self.sealer, username).await.unwrap()
    }
}

#[tokio::test]
async fn a_credential_keeps_only_sealed_ha1s_of_its_own_realm() {
    let w = world().await;
    let scope = w.tenant().await;
    let identity = w.identity(&scope, "+12025550100").await;
    let c = w.credential(&scope, identity).await;
    assert_eq!(c.realm, format!("{}.{DOMAIN}", scope.tenant_id()));
    assert_eq!(c.aor, format!("sip:{}@{}", c.username, c.realm));
    assert!(c.username.len() == 16 && c.username.chars().all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit()));
    assert_eq!(c.password.len(), 24);

    let user = w.user(&c.username).await.expect("found");
    assert_eq!((user.tenant, user.identity, user.realm.as_str()), (scope.tenant_id(), identity, c.realm.as_str()));
    for alg in [Algorithm::Md5, Algorithm::Sha256] {
        assert_eq!(user.ha1(alg), palisade_digest::ha1(alg, &c.username, &c.realm, &c.password));
    }
    // The row holds neither the password nor a HA1 in clear.
    let row = palisade_store::sip::credential_by_username(w.db.reader(), &c.username).await.unwrap().unwrap();
    for stored in [&row.ha1_md5_sealed, &row.ha1_sha256_sealed] {
        assert!(!stored.contains(&c.password));
        assert!(!stored.contains(user.ha1(Algorithm::Md5)) && !stored.contains(user.ha1(Algorithm::Sha256)));
    }
    assert!(!format!("{user:?}").contains(user.ha1(Algorithm::Md5)), "HA1 in Debug output");
    // Another KEK opens nothing.
    let other = credentials::for_digest(&w.db, &keyring(&w.db, 1), &w.sealer, &c.username).await;
    assert!(other.is_err());
    assert!(w.user("unknown").await.is_none());
}

/// A sealed HA1 is bound to its row and column: moved elsewhere it does
/// not open, so a database writer cannot give one account another's key.
#[tokio::test]
async fn sealed_ha1s_do_not_open_in_another_row_or_column() {
    let w = world().await;
    let scope = w.tenant().await;
    let identity = w.identity(&scope, "+12025550100").await;
    let (a, b) = (w.credential(&scope, identity).await, w.credential(&scope, identity).await);
    let row_a = palisade_store::sip::credential_by_username(w.db.reader(), &a.username).await.unwrap().unwrap();
    let set = |column: &str| format!("UPDATE sip_credentials SET {column} = $1 WHERE username = $2");
    let db = &w.db;
    let swap = |sql: String, value: String, user: String| async move {
        sqlx::query(&sql).bind(value).bind(user).execute(db.reader()).await.unwrap();
    };
    swap(set("ha1_md5_sealed"), row_a.ha1_md5_sealed.clone(), b.username.clone()).await;
    assert!(credentials::for_digest(&w.db, &w.keys, &w.sealer, &b.username).await.is_err());
    swap(set("ha1_sha256_sealed"), row_a.ha1_md5_sealed.clone(), a.username.clone()).await;
    assert!(credentials::for_digest(&w.db, &w.keys, &w.sealer, &a.username).await.is_err());
}

#[tokio::test]
async fn only_an_active_identity_of_the_tenant_gets_credentials_up_to_the_cap() {
    let w = world().await;
    let (mine, theirs) = (w.tenant().await, w.tenant().await);
    let identity = w.identity(&mine, "+12025550100").await;
    let create = |scope: TenantScope, id: IdentityId| {
        let w = &w;
        async move { w.create(&scope, id).await }
    };
    // Another tenant cannot make one for it.
    assert!(create(theirs.clone(), identity).await.is_none());
    for _ in 0..MAX_PER_IDENTITY {
        assert!(create(mine.clone(), identity).await.is_some());
    }
    assert!(create(mine.clone(), identity).await.is_none(), "over the cap");
    let frozen = w.identity(&mine, "+12025550101").await;
    let mut tx = w.db.begin().await.unwrap();
    assert!(palisade_store::identities::set_own_status(&mut tx, &mine, frozen, true, NOW).await.unwrap());
    tx.commit().await.unwrap();
    assert!(create(mine.clone(), frozen).await.is_none(), "frozen identity");
}

#[tokio::test]
async fn revoking_ends_the_credential_and_its_bindings_only_in_its_tenant() {
    let w = world().await;
    let (mine, theirs) = (w.tenant().await, w.tenant().await);
    let identity = w.identity(&mine, "+12025550100").await;
    let (c, kept) = (w.credential(&mine, identity).await, w.credential(&mine, identity).await);
    let user = w.user(&c.username).await.unwrap();
    let kept_user = w.user(&kept.username).await.unwrap();
    for (u, uri) in [(&user, "sip:a@192.0.2.1:5060"), (&kept_user, "sip:b@192.0.2.2:5060")] {
        assert!(matches!(register(&w, u, &[uri_contact(uri, None)], None, "c1", 1).await, Outcome::Bound(_)));
    }
    let revoke = |scope: &TenantScope| {
        let scope = scope.clone();
        let (w, name) = (&w, c.username.clone());
        async move {
            let mut tx = w.db.begin().await.unwrap();
            let r = palisade_store::sip::revoke_credential(&mut tx, &scope, identity, &name, NOW).await.unwrap();
            tx.commit().await.unwrap();
            r
        }
    };
    assert!(revoke(&theirs).await.is_none(), "another tenant revoked it");
    assert!(w.user(&c.username).await.is_some());
    assert!(revoke(&mine).await.is_some());
    assert!(w.user(&c.username).await.is_none());
    assert!(revoke(&mine).await.is_none(), "revoked twice");
    let left = palisade_store::sip::list_registrations(w.db.reader(), &mine, identity, NOW).await.unwrap();
    assert_eq!(left.iter().map(|r| r.contact_uri.as_str()).collect::<Vec<_>>(), ["sip:b@192.0.2.2:5060"]);
}

fn uri_contact(uri: &str, expires: Option<u32>) -> Contact<'_> {
    Contact::Uri { uri, expires }
}

async fn register(
    w: &World,
    user: &DigestUser,
    contacts: &[Contact<'_>],
    expires: Option<u32>,
    call_id: &str,
    cseq: i64,
) -> Outcome {
    let req = Request {
        user,
        contacts,
        expires,
        call_id,
        cseq,
        transport: "udp",
        source: "192.0.2.1:5060",
        instance: "i1",
        user_agent: Some("test"),
    };
    registrar::register(&w.db, &BOUNDS, &req, NOW).await.unwrap()
}

fn expiries(outcome: &Outcome) -> Vec<(String, i64)> {
    match outcome {
        Outcome::Bound(rows) => rows.iter().map(|r| (r.contact_uri.clone(), (r.expires_at - NOW) / 1000)).collect(),
        other => panic!("not bound: {other:?}"),
    }
}

#[tokio::test]
async fn registrations_follow_the_expiry_rules() {
    let w = world().await;
    let scope = w.tenant().await;
    let identity = w.identity(&scope, "+12025550100").await;
    let c = w.credential(&scope, identity).await;
    let user = w.user(&c.username).await.unwrap();
    let (a, b) = ("sip:a@192.0.2.1", "sip:b@192.0.2.1");
    // Below the minimum: 423, nothing bound.
    let brief = register(&w, &user, &[uri_contact(a, Some(59))], None, "c1", 1).await;
    assert_eq!(brief, Outcome::TooBrief { min_expires_secs: 60 });
    assert_eq!(register(&w, &user, &[uri_contact(a, None)], Some(30), "c1", 2).await, brief);
    assert!(expiries(&register(&w, &user, &[], None, "c1", 3).await).is_empty());
    // The contact's own expiry wins over the header; above the maximum it
    // is shortened; none at all: the default.
    let bound = register(&w, &user, &[uri_contact(a, Some(60)), uri_contact(b, None)], Some(7200), "c1", 4).await;
    assert_eq!(expiries(&bound), [(a.to_owned(), 60), (b.to_owned(), 3600)]);
    let bound = register(&w, &user, &[uri_contact(a, None)], None, "c1", 5).await;
    assert_eq!(expiries(&bound), [(a.to_owned(), 1800), (b.to_owned(), 3600)]);
    // The same Call-ID with a CSeq not above the last: refused, unchanged.
    let stale = register(&w, &user, &[uri_contact(a, Some(100))], None, "c1", 5).await;
    assert_eq!(stale, Outcome::OutOfOrder);
    // Another Call-ID (a rebooted phone) may start again.
    let bound = register(&w, &user, &[uri_contact(a, Some(100))], None, "c2", 1).await;
    assert_eq!(expiries(&bound), [(a.to_owned(), 100), (b.to_owned(), 3600)]);
    // Expires 0 removes one; `*` with Expires 0 removes all.
    let bound = register(&w, &user, &[uri_contact(a, Some(0))], None, "c2", 2).await;
    assert_eq!(expiries(&bound), [(b.to_owned(), 3600)]);
    assert_eq!(register(&w, &user, &[Contact::All], None, "c2", 3).await, Outcome::BadWildcard);
    assert_eq!(register(&w, &user, &[Contact::All], Some(60), "c2", 3).await, Outcome::BadWildcard);
    let both = [Contact::All, uri_contact(a, None)];
    assert_eq!(register(&w, &user, &both, Some(0), "c2", 3).await, Outcome::BadWildcard);
    assert!(expiries(&register(&w, &user, &[Contact::All], Some(0), "c2", 4).await).is_empty());
}

#[tokio::test]
async fn the_contact_cap_and_freezes_hold() {
    let w = world().await;
    let scope = w.tenant().await;
    let identity = w.identity(&scope, "+12025550100").await;
    let c = w.credential(&scope, identity).await;
    let user = w.user(&c.username).await.unwrap();
    let (a, b, x) = ("sip:a@192.0.2.1", "sip:b@192.0.2.1", "sip:x@192.0.2.1");
    let bound = register(&w, &user, &[uri_contact(a, None), uri_contact(b, None)], None, "c1", 1).await;
    assert_eq!(expiries(&bound).len(), 2);
    // A third contact: refused, and nothing of the request is kept.
    let third = register(&w, &user, &[uri_contact(x, None)], None, "c2", 1).await;
    assert_eq!(third, Outcome::TooManyContacts);
    let listed = palisade_store::sip::list_registrations(w.db.reader(), &scope, identity, NOW).await.unwrap();
    assert_eq!(listed.len(), 2);
    // A frozen identity, then a frozen tenant, registers nothing.
    let mut tx = w.db.begin().await.unwrap();
    assert!(palisade_store::identities::set_own_status(&mut tx, &scope, identity, true, NOW).await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(register(&w, &user, &[uri_contact(a, None)], None, "c1", 2).await, Outcome::Frozen);
    let mut tx = w.db.begin().await.unwrap();
    assert!(palisade_store::identities::set_own_status(&mut tx, &scope, identity, false, NOW).await.unwrap());
    assert!(palisade_store::tenants::set_status(&mut tx, &scope, "frozen").await.unwrap());
    tx.commit().await.unwrap();
    assert_eq!(register(&w, &user, &[uri_contact(a, None)], None, "c1", 3).await, Outcome::Frozen);
}

#[tokio::test]
async fn deleting_an_identity_forgets_its_credentials_and_bindings() {
    let w = world().await;
    let scope = w.tenant().await;
    let identity = w.identity(&scope, "+12025550100").await;
    let c = w.credential(&scope, identity).await;
    let user = w.user(&c.username).await.unwrap();
    assert!(matches!(
        register(&w, &user, &[uri_contact("sip:a@192.0.2.1", None)], None, "c", 1).await,
        Outcome::Bound(_)
    ));
    let mut tx = w.db.begin().await.unwrap();
    assert!(palisade_store::identities::delete(&mut tx, &scope, identity).await.unwrap());
    tx.commit().await.unwrap();
    assert!(w.user(&c.username).await.is_none());
    let listed = palisade_store::sip::list_registrations(w.db.reader(), &scope, identity, NOW).await.unwrap();
    assert!(listed.is_empty());
}
