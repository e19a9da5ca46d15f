//! The admission rules over a real (SQLite) database, one test per rule,
//! so that a mutated comparison or arm fails here, fast.

mod calls;
mod life;
mod messages;
mod recording;

use std::sync::Arc;

use palisade_audit::Context;
use palisade_config::Pricing;
use palisade_core::{
    ApiKeyId, IdentityId, ManualClock, PermissionSet, Principal, PrincipalKind, TenantId, TenantScope,
};
use palisade_store::calls::CallRow;
use palisade_store::identities::{NewIdentity, Policy};
use palisade_store::messages::MessageRow;
use palisade_store::Db;

use crate::calls::Call;
use crate::messages::Message;
use crate::NumberRule;
use crate::{Answer, Caller, Outcome, Service};

/// 2026-06-15: mid-month, so a test never crosses into the next.
const START: i64 = 1_781_524_800_000;
pub const US: &str = "+14155550123";
pub const FR: &str = "+33612345678";

pub struct World {
    _dir: tempfile::TempDir,
    pub svc: Arc<Service>,
    pub clock: ManualClock,
    pub scope: TenantScope,
    pub principal: Principal,
    pub ctx: Context,
    pub slots: u32,
    numbers: std::sync::atomic::AtomicU32,
}

/// An identity's policy and state, as a test wants it.
#[derive(Default)]
pub struct Id {
    pub rate: Option<i64>,
    pub budget: Option<i64>,
    pub countries: &'static str,
    pub frozen: bool,
    pub verified: bool,
}

pub async fn world() -> World {
    world_with(false, Pricing::default()).await
}

/// A world whose tenant may keep `quota` bytes of recordings.
pub async fn world_quota(quota: u64) -> World {
    world_full(false, Pricing::default(), quota).await
}

pub async fn world_with(verified_numbers: bool, pricing: Pricing) -> World {
    world_full(verified_numbers, pricing, 1 << 30).await
}

async fn world_full(verified_numbers: bool, pricing: Pricing, recording_quota: u64) -> World {
    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}/a.db", dir.path().display()), 4).await.unwrap();
    db.migrate().await.unwrap();
    let tenant = TenantId::new();
    palisade_store::tenants::insert(db.reader(), tenant, "t", START).await.unwrap();
    let clock = ManualClock::new(START);
    let kek = palisade_keys::LocalKek::parse(&palisade_keys::LocalKek::new_line(1)).unwrap();
    let keys = Arc::new(palisade_keys::Keyring::new(Arc::new(kek), db.clone(), palisade_keys::DEFAULT_TTL));
    let svc = Arc::new(Service {
        keys,
        db,
        clock: Arc::new(clock.clone()),
        limits: Arc::new(palisade_guard::state::LocalState::new()),
        pricing,
        verified_numbers: NumberRule { required: verified_numbers, carrier: None },
        instance_id: "i1".into(),
        webhook_wake: Arc::new(tokio::sync::Notify::new()),
        minute: std::time::Duration::from_secs(60),
        watchers: Default::default(),
        recordings: Arc::new(palisade_recordings::local::LocalStorage::new(dir.path().join("recordings"))),
        recording_quota,
    });
    let kind = PrincipalKind::ApiKey { key_id: ApiKeyId::new(), owner_user_id: None };
    let principal = Principal::authenticated(tenant, kind, PermissionSet::all());
    let w = World {
        _dir: dir,
        svc,
        clock,
        scope: TenantScope::for_system(tenant),
        principal,
        ctx: Context { request_id: Some("req-1".into()), ..Context::default() },
        slots: 2,
        numbers: 0.into(),
    };
    w.top_up(100).await;
    w
}

impl World {
    /// The world's folder (its database, its recordings).
    pub fn svc_dir(&self) -> &std::path::Path {
        self._dir.path()
    }

    pub fn caller(&self) -> Caller<'_> {
        Caller::new(&self.principal, &self.scope, &self.ctx, self.slots).expect("the principal's own tenant")
    }

    pub async fn identity(&self, p: Id) -> String {
        let id = IdentityId::new();
        let n = self.numbers.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let number = format!("+1202555{:04}", 1000 + n);
        let countries = if p.countries.is_empty() { "[]" } else { p.countries };
        let policy = Policy {
            rate_per_second: p.rate,
            monthly_budget: p.budget,
            allowed_countries: countries,
            srtp: "preferred",
        };
        let new = NewIdentity { id, kind: "number", number: &number, country: "US", name: "n", policy, now: START };
        palisade_store::identities::insert(self.svc.db.reader(), &self.scope, &new).await.unwrap();
        let mut tx = self.svc.db.begin().await.unwrap();
        if p.frozen {
            assert!(palisade_store::identities::set_own_status(&mut tx, &self.scope, id, true, START).await.unwrap());
        }
        if p.verified {
            let by = palisade_store::identities::VerifiedBy::Operator;
            palisade_store::identities::verify_number(&mut *tx, &self.scope, id, by, START).await.unwrap();
        }
        tx.commit().await.unwrap();
        id.to_string()
    }

    pub async fn top_up(&self, amount: i64) {
        let ledger = uuid::Uuid::now_v7().to_string();
        let stmts = palisade_store::credits::top_up_stmts(&self.scope, &ledger, amount, "test", START);
        self.svc.db.write_all(stmts).await.unwrap();
    }

    pub async fn balance(&self) -> i64 {
        palisade_store::credits::balance(self.svc.db.reader(), &self.scope).await.unwrap()
    }

    /// Rows of `table` where `cond` holds.
    pub async fn count(&self, table: &str, cond: &str) -> i64 {
        let sql = format!("SELECT COUNT(*) FROM {table} WHERE {cond}");
        sqlx::query_scalar(sql.as_str()).fetch_one(self.svc.db.reader()).await.unwrap()
    }

    /// Debits: ledger lines below zero.
    pub async fn debits(&self) -> i64 {
        self.count("credit_ledger", "amount < 0").await
    }

    pub async fn send(&self, from: &str, to: &str, body: &str, key: Option<&str>) -> Outcome<MessageRow, &'static str> {
        self.send_screened(from, to, body, key, Ok(())).await
    }

    pub async fn send_screened(
        &self,
        from: &str,
        to: &str,
        body: &str,
        key: Option<&str>,
        screen: Result<(), &'static str>,
    ) -> Outcome<MessageRow, &'static str> {
        let m = Message { from: from.into(), to: to.into(), body: body.into(), key: key.map(Into::into) };
        let answer = |r: &MessageRow| Answer { status: 201, body: format!("{{\"id\":\"{}\"}}", r.id) };
        self.svc.send_message(&self.caller(), m, async { screen }, answer).await.unwrap()
    }

    pub async fn call(&self, from: &str, to: &str, key: Option<&str>) -> Outcome<CallRow, &'static str> {
        self.call_screened(from, to, key, Ok(())).await
    }

    pub async fn call_screened(
        &self,
        from: &str,
        to: &str,
        key: Option<&str>,
        screen: Result<(), &'static str>,
    ) -> Outcome<CallRow, &'static str> {
        let c = Call { from: from.into(), to: to.into(), key: key.map(Into::into), record: false };
        let answer = |r: &CallRow| Answer { status: 201, body: format!("{{\"id\":\"{}\"}}", r.id) };
        self.svc.place_call(&self.caller(), c, async { screen }, answer).await.unwrap()
    }
}

/// The refusal's reason word, or `admitted` / `replayed`.
pub fn word<T, W>(o: &Outcome<T, W>) -> &'static str {
    match o {
        Outcome::Admitted(_) => "admitted",
        Outcome::Replayed(_) => "replayed",
        Outcome::Refused(r) => r.reason(),
    }
}

pub fn admitted<T: std::fmt::Debug, W: std::fmt::Debug>(o: Outcome<T, W>) -> T {
    match o {
        Outcome::Admitted(t) => t,
        other => panic!("not admitted: {other:?}"),
    }
}

/// A transport cannot pair a principal with another tenant's scope.
#[tokio::test]
async fn a_caller_is_held_to_its_principals_tenant() {
    let w = world().await;
    let other = TenantScope::for_system(TenantId::new());
    assert!(Caller::new(&w.principal, &other, &w.ctx, 1).is_none());
    assert!(Caller::new(&w.principal, &w.scope, &w.ctx, 1).is_some());
}
