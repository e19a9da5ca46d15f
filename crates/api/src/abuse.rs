//! Abuse controls on the request path (SPEC §7): rate limits, address
//! lists, WAF blocks and lockouts, audited and counted.
//!
//! Two passes, each one decision on the shared state:
//! - the address pass, in the middleware before anything else: lists, the
//!   address's WAF block, its per-address and auth-route buckets;
//! - the tenant pass, right after authentication: the tenant's lists, the
//!   credential's WAF block, the credential, tenant and endpoint-class
//!   buckets.
//!
//! A refused pass charges nothing, and a request refused by the address
//! pass never reaches the tenant pass.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, StatusCode};
use ipnet::IpNet;
use palisade_audit::{Context, Event};
use palisade_config::Config;
use palisade_core::principal::Actor;
use palisade_core::{ApiError, Principal, PrincipalKind, TenantId};
use palisade_guard::limits::{ip_id, Key, Kind, Limit};
use palisade_guard::state::{
    AbuseState, BlockCheck, Bucket, Decide, LoginAdmission, LoginKeys, LoginRule, Standing, StrikeRule, Verdict,
    MAX_BUCKETS,
};
use palisade_guard::waf::Finding;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::metrics::Metrics;

/// One audit event per key and refusal kind per minute: a flood of refused
/// requests must not become a flood of writes.
const NOTICE_MS: i64 = 60_000;

/// The configured limits, parsed once.
pub struct Abuse {
    pub state: Arc<dyn AbuseState>,
    pub metrics: Arc<Metrics>,
    ip: Option<Limit>,
    auth_ip: Option<Limit>,
    burst_ip: Option<Limit>,
    burst_tenant: Option<Limit>,
    defaults: TenantLimits,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    max_urls: usize,
    max_phones: usize,
    waf_rule: StrikeRule,
    login_rule: LoginRule,
    trust_ms: i64,
    credential_rule: StrikeRule,
    /// `Retry-After` when the shared state is unreachable.
    unavailable_secs: u64,
}

/// A tenant's overrides of the configured limits, set by the operator.
/// Absent fields keep the configured value; 0 turns a limit off.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000)]
    pub key_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000)]
    pub tenant_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000)]
    pub message_create_per_minute: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000)]
    pub call_create_per_minute: Option<u32>,
    /// Calls live at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(maximum = 1_000_000)]
    pub concurrent_calls: Option<u32>,
    /// When not empty, only these addresses (CIDRs) may use the tenant's
    /// credentials.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub ip_allow: Vec<String>,
    /// These addresses may not.
    #[serde(default)]
    #[schema(max_items = 100)]
    pub ip_deny: Vec<String>,
}

/// The highest value of each of a tenant's limits: far above any real use,
/// and the bound the OpenAPI document states.
const MAX_TENANT_LIMIT: u32 = 1_000_000;

impl TenantLimits {
    /// Checks the limits' range and the address lists; the error names the
    /// bad entry.
    pub fn validate(&self) -> Result<(), ApiError> {
        let limits = [
            ("key_per_minute", self.key_per_minute),
            ("tenant_per_minute", self.tenant_per_minute),
            ("message_create_per_minute", self.message_create_per_minute),
            ("call_create_per_minute", self.call_create_per_minute),
            ("concurrent_calls", self.concurrent_calls),
        ];
        for (field, value) in limits {
            if value.is_some_and(|v| v > MAX_TENANT_LIMIT) {
                return Err(ApiError::validation(field, format!("must be between 0 and {MAX_TENANT_LIMIT}")));
            }
        }
        for (field, list) in [("ip_allow", &self.ip_allow), ("ip_deny", &self.ip_deny)] {
            palisade_guard::net::parse_cidrs(list.iter().map(String::as_str))
                .map_err(|m| ApiError::validation(field, m))?;
            if list.len() > 100 {
                return Err(ApiError::validation(field, "at most 100 entries"));
            }
        }
        Ok(())
    }
}

/// What the tenant pass applies: the tenant's limits with the defaults
/// filled in.
#[derive(Debug, Default)]
pub struct TenantPolicy {
    key: Option<Limit>,
    tenant: Option<Limit>,
    message_create: Option<Limit>,
    call_create: Option<Limit>,
    /// Calls live at once.
    pub concurrent_calls: u32,
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
    /// The stored overrides could not be read: the tenant's address lists
    /// are unknown, so every address is refused (fail closed).
    unreadable: bool,
}

/// Requests that cost money have their own per-tenant bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    MessageCreate,
    CallCreate,
}

impl Class {
    pub fn of(method: &http::Method, route: Option<&str>) -> Option<Class> {
        match (method, route?) {
            (&http::Method::POST, "/v1/messages") => Some(Class::MessageCreate),
            (&http::Method::POST, "/v1/calls") => Some(Class::CallCreate),
            _ => None,
        }
    }
}

/// What the address pass learned, for the extractors.
#[derive(Debug, Clone, Copy)]
pub struct AddressPass {
    /// Too many failed credentials from here: every credential is refused
    /// as unknown until the lock ends.
    pub credentials_locked: bool,
}

/// A login attempt admitted by [`Abuse::login_attempt`].
#[derive(Debug, Clone, Copy)]
pub struct LoginAttempt {
    partition: u128,
    keys: LoginKeys,
    started_lock: Option<i64>,
}

/// What a failed login started, for the audit trail.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoginFailure {
    /// This failure locked the address out of the account, until then.
    pub address_locked_until: Option<i64>,
    /// This failure throttled the account, until then.
    pub account_throttled_until: Option<i64>,
}

/// The caller's WAF key, left by authentication for the body check.
#[derive(Debug, Clone, Copy)]
pub struct CallerKey {
    pub tenant: TenantId,
    pub key: Key,
}

impl Abuse {
    pub fn new(config: &Config, state: Arc<dyn AbuseState>, metrics: Arc<Metrics>) -> Abuse {
        let r = &config.rate_limits;
        let (w, l) = (&config.waf, &config.lockout);
        let secs = |s: u32| i64::from(s) * 1000;
        Abuse {
            state,
            metrics,
            ip: Limit::per_minute("ip", r.ip_per_minute),
            auth_ip: Limit::per_minute("auth_ip", r.auth_ip_per_minute),
            burst_ip: Limit::per_second("burst_ip", r.burst_ip_per_second),
            burst_tenant: Limit::per_second("burst_tenant", r.burst_tenant_per_second),
            defaults: TenantLimits {
                key_per_minute: Some(r.key_per_minute),
                tenant_per_minute: Some(r.tenant_per_minute),
                message_create_per_minute: Some(r.message_create_per_minute),
                call_create_per_minute: Some(r.call_create_per_minute),
                concurrent_calls: Some(r.concurrent_calls_per_tenant),
                ip_allow: Vec::new(),
                ip_deny: Vec::new(),
            },
            allow: w.ip_allow.clone(),
            deny: w.ip_deny.clone(),
            max_urls: w.max_urls,
            max_phones: w.max_phone_numbers,
            waf_rule: StrikeRule {
                threshold: w.violations_to_block,
                window_ms: secs(w.violation_window_secs),
                block_ms: secs(w.block_secs),
            },
            login_rule: LoginRule {
                pair: StrikeRule {
                    threshold: l.login_failures,
                    window_ms: secs(l.window_secs),
                    block_ms: secs(l.lock_secs),
                },
                account: StrikeRule {
                    threshold: l.account_login_failures,
                    window_ms: secs(l.window_secs),
                    block_ms: secs(l.lock_secs),
                },
                spacing_ms: secs(l.account_spacing_secs),
            },
            trust_ms: secs(l.trusted_address_secs),
            credential_rule: StrikeRule {
                threshold: l.credential_failures_per_ip,
                window_ms: secs(l.window_secs),
                block_ms: secs(l.lock_secs),
            },
            unavailable_secs: config.redis.retry_ms.div_ceil(1000).max(1),
        }
    }

    /// The shared state is unreachable and its failure policy keeps this
    /// closed: refused for now, never a 500.
    pub fn unavailable(&self) -> ApiError {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "A service this request needs is unreachable; retry shortly.",
        )
        .with_header(http::header::RETRY_AFTER, HeaderValue::from(self.unavailable_secs))
        .with_extra("retry_after", self.unavailable_secs)
    }

    /// The tenant's policy from its stored overrides (JSON), if any. An
    /// unreadable document (which the API never stores) fails closed.
    pub fn tenant_policy(&self, stored: Option<&str>) -> TenantPolicy {
        let mut unreadable = false;
        let o = match stored.map(serde_json::from_str::<TenantLimits>) {
            None => TenantLimits::default(),
            Some(Ok(o)) => o,
            Some(Err(e)) => {
                tracing::error!(error = %e, "stored tenant limits are unreadable; refusing the tenant's requests");
                unreadable = true;
                TenantLimits::default()
            }
        };
        let d = &self.defaults;
        let pick = |o: Option<u32>, d: Option<u32>| o.or(d).unwrap_or(0);
        let mut nets = |l: &[String]| {
            palisade_guard::net::parse_cidrs(l.iter().map(String::as_str)).unwrap_or_else(|_| {
                unreadable = true;
                Vec::new()
            })
        };
        let (allow, deny) = (nets(&o.ip_allow), nets(&o.ip_deny));
        TenantPolicy {
            key: Limit::per_minute("key", pick(o.key_per_minute, d.key_per_minute)),
            tenant: Limit::per_minute("tenant", pick(o.tenant_per_minute, d.tenant_per_minute)),
            message_create: Limit::per_minute(
                "message_create",
                pick(o.message_create_per_minute, d.message_create_per_minute),
            ),
            call_create: Limit::per_minute("call_create", pick(o.call_create_per_minute, d.call_create_per_minute)),
            concurrent_calls: pick(o.concurrent_calls, d.concurrent_calls),
            allow,
            deny,
            unreadable,
        }
    }

    /// The address pass. `ctx` builds the audit context only when needed.
    pub async fn address_pass(
        &self,
        db: &palisade_store::Db,
        now_ms: i64,
        client: IpAddr,
        auth_route: bool,
        ctx: impl FnOnce() -> Context,
    ) -> Result<AddressPass, ApiError> {
        let partition = ip_id(client);
        if listed_out(client, &self.deny, &self.allow) {
            let refusal =
                Refusal { partition, notice: Key::ip(Kind::Notice, client), tenant: None, actor: Actor::anonymous() };
            return Err(self
                .refuse(db, refusal, "abuse.address_refused", serde_json::json!({ "list": "global" }), now_ms, ctx)
                .await);
        }
        let blocks = [
            BlockCheck { key: Key::ip(Kind::Waf, client), refuses: true },
            BlockCheck { key: Key::ip(Kind::CredentialFailure, client), refuses: false },
        ];
        let mut buckets = [None; 3];
        buckets[0] = self.ip.map(|l| Bucket::enforce(Key::ip(Kind::Ip, client), l));
        if auth_route {
            buckets[1] = self.auth_ip.map(|l| Bucket::enforce(Key::ip(Kind::AuthIp, client), l));
        }
        buckets[2] = self.burst_ip.map(|l| Bucket::observe(Key::ip(Kind::Burst, client), l));
        let (buckets, n) = compact(buckets);
        let v = self
            .state
            .decide(Decide { partition, now_ms, blocks: &blocks, buckets: &buckets[..n], notice_ms: NOTICE_MS })
            .await
            .map_err(|_| self.unavailable())?;
        if let Some((_, until)) = v.blocked {
            let refusal =
                Refusal { partition, notice: Key::ip(Kind::Notice, client), tenant: None, actor: Actor::anonymous() };
            let details = serde_json::json!({ "block": "address", "until": until });
            let e = self.refuse(db, refusal, "abuse.blocked_request", details, now_ms, ctx).await;
            return Err(with_retry_after(e, now_ms, until));
        }
        self.after_decision(db, &v, &buckets[..n], None, now_ms, ctx)?;
        Ok(AddressPass { credentials_locked: v.block_active(1) })
    }

    /// The tenant pass, after authentication.
    #[allow(clippy::too_many_arguments)]
    pub async fn tenant_pass(
        &self,
        db: &palisade_store::Db,
        now_ms: i64,
        principal: &Principal,
        policy: &TenantPolicy,
        class: Option<Class>,
        client: IpAddr,
        ctx: impl FnOnce() -> Context,
    ) -> Result<CallerKey, ApiError> {
        let tenant = principal.tenant_id();
        let partition = tenant.0.as_u128();
        let caller = caller_key(principal);
        if policy.unreadable || listed_out(client, &policy.deny, &policy.allow) {
            // Keyed by tenant and address: one tenant's refusals must not
            // silence another's.
            let notice = Key::new(Kind::Notice, ip_id(client) ^ partition.rotate_left(1));
            let refusal = Refusal { partition, notice, tenant: Some(tenant), actor: principal.actor() };
            return Err(self
                .refuse(db, refusal, "abuse.address_refused", serde_json::json!({ "list": "tenant" }), now_ms, ctx)
                .await);
        }
        let blocks = [BlockCheck { key: caller, refuses: true }];
        let mut buckets = [None; 4];
        buckets[0] = policy.key.map(|l| Bucket::enforce(caller_bucket(caller), l));
        buckets[1] = policy.tenant.map(|l| Bucket::enforce(Key::uuid(Kind::Tenant, tenant.0), l));
        buckets[2] = match class {
            Some(Class::MessageCreate) => {
                policy.message_create.map(|l| Bucket::enforce(Key::uuid(Kind::MessageCreate, tenant.0), l))
            }
            Some(Class::CallCreate) => {
                policy.call_create.map(|l| Bucket::enforce(Key::uuid(Kind::CallCreate, tenant.0), l))
            }
            None => None,
        };
        buckets[3] = self.burst_tenant.map(|l| Bucket::observe(Key::uuid(Kind::Burst, tenant.0), l));
        let (buckets, n) = compact(buckets);
        let v = self
            .state
            .decide(Decide { partition, now_ms, blocks: &blocks, buckets: &buckets[..n], notice_ms: NOTICE_MS })
            .await
            .map_err(|_| self.unavailable())?;
        if let Some((_, until)) = v.blocked {
            let refusal = Refusal {
                partition,
                notice: Key::new(Kind::Notice, caller.id),
                tenant: Some(tenant),
                actor: principal.actor(),
            };
            let details = serde_json::json!({ "block": "credential", "until": until });
            let e = self.refuse(db, refusal, "abuse.blocked_request", details, now_ms, ctx).await;
            return Err(with_retry_after(e, now_ms, until));
        }
        self.after_decision(db, &v, &buckets[..n], Some((tenant, principal.actor())), now_ms, ctx)?;
        Ok(CallerKey { tenant, key: caller })
    }

    /// Whether a caller admitted earlier still would be, by the address
    /// lists (the platform's and the tenant's) and the blocks on its address
    /// and credential: asked at intervals by a long-lived stream. Charges no
    /// bucket and audits nothing (no new request). `Err` when the state
    /// could not be read.
    pub async fn still_admitted(
        &self,
        now_ms: i64,
        principal: &Principal,
        policy: &TenantPolicy,
        client: IpAddr,
    ) -> Result<bool, ()> {
        let (global, tenant) = ((&self.deny, &self.allow), (&policy.deny, &policy.allow));
        if listed_out(client, global.0, global.1) || policy.unreadable || listed_out(client, tenant.0, tenant.1) {
            return Ok(false);
        }
        let checks =
            [(ip_id(client), Key::ip(Kind::Waf, client)), (principal.tenant_id().0.as_u128(), caller_key(principal))];
        for (partition, key) in checks {
            let blocks = [BlockCheck { key, refuses: true }];
            let decide = Decide { partition, now_ms, blocks: &blocks, buckets: &[], notice_ms: NOTICE_MS };
            if self.state.decide(decide).await.map_err(|_| ())?.blocked.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// A 403 `blocked`: counted, and audited once per notice period.
    async fn refuse(
        &self,
        db: &palisade_store::Db,
        r: Refusal,
        action: &'static str,
        details: serde_json::Value,
        now_ms: i64,
        ctx: impl FnOnce() -> Context,
    ) -> ApiError {
        let kind = match (action, r.tenant) {
            ("abuse.address_refused", _) => "ip_list",
            (_, None) => "blocked_address",
            (_, Some(_)) => "blocked_key",
        };
        self.metrics.waf_refusal(kind);
        if self.state.notice(r.partition, r.notice, now_ms, NOTICE_MS).await.unwrap_or(false) {
            audit_later(db, Event::new(action, r.tenant, r.actor).details(details), ctx(), now_ms);
        }
        blocked()
    }

    /// Notes the standings for the response headers; audits and counts a
    /// refusal or a spike; the refusal as an error.
    fn after_decision(
        &self,
        db: &palisade_store::Db,
        v: &Verdict,
        buckets: &[Bucket],
        who: Option<(TenantId, Actor)>,
        now_ms: i64,
        ctx: impl FnOnce() -> Context,
    ) -> Result<(), ApiError> {
        let (tenant, actor) = match who {
            Some((t, a)) => (Some(t), a),
            None => (None, Actor::anonymous()),
        };
        let mut ctx = Some(ctx);
        let mut take_ctx = || ctx.take().map(|f| f()).unwrap_or_default();
        if let Some(i) = v.spike {
            let scope = if tenant.is_some() { "tenant" } else { "address" };
            self.metrics.burst(scope);
            tracing::warn!(target: "palisade::abuse", scope, limit = buckets[i].limit.name, "request burst detected");
            let event = Event::new("abuse.burst_detected", tenant, actor.clone()).details(serde_json::json!({
                "scope": scope,
                "per_second": buckets[i].limit.quota,
            }));
            audit_later(db, event, take_ctx(), now_ms);
        }
        let Some(i) = v.refused else {
            note_standings(buckets, &v.standings, None);
            return Ok(());
        };
        let limit = buckets[i].limit;
        note_standings(buckets, &v.standings, Some(i));
        self.metrics.rate_limited(limit.name);
        if v.refusal_is_new {
            let event = Event::new("rate_limit.exceeded", tenant, actor).details(
                serde_json::json!({ "limit": limit.name, "quota": limit.quota, "window_secs": limit.window_secs }),
            );
            audit_later(db, event, take_ctx(), now_ms);
        }
        Err(rate_limited(limit, &v.standings[i]))
    }

    /// The body check: the first free-text field with too many links or
    /// phone numbers refuses the request and counts a violation against
    /// the address and the credential; enough violations block them.
    pub async fn check_body(
        &self,
        db: &palisade_store::Db,
        now_ms: i64,
        body: &serde_json::Value,
        client: IpAddr,
        caller: Option<CallerKey>,
        ctx: Context,
    ) -> Result<(), ApiError> {
        let Some(Finding { field, rule, count }) = palisade_guard::waf::scan_json(body, self.max_urls, self.max_phones)
        else {
            return Ok(());
        };
        self.metrics.waf_refusal(rule.as_str());
        let tenant = caller.map(|c| c.tenant);
        let actor = Actor::anonymous();
        let event = Event::new("waf.refused", tenant, actor.clone())
            .details(serde_json::json!({ "rule": rule.as_str(), "field": field, "count": count }));
        audit_later(db, event, ctx.clone(), now_ms);
        let ip_key = Key::ip(Kind::Waf, client);
        let mut strikes = vec![(ip_id(client), ip_key, "address")];
        if let Some(c) = caller {
            strikes.push((c.tenant.0.as_u128(), c.key, "credential"));
        }
        for (partition, key, target) in strikes {
            let out = self.state.strike(partition, key, self.waf_rule, now_ms).await.map_err(|_| self.unavailable())?;
            if let Some(until) = out.blocked_until {
                self.metrics.lockout(if target == "address" { "waf_address" } else { "waf_credential" });
                tracing::warn!(target: "palisade::abuse", block = target, "WAF violations: blocked");
                let event = Event::new("waf.block_started", tenant, actor.clone())
                    .details(serde_json::json!({ "target": target, "until": until }));
                audit_later(db, event, ctx.clone(), now_ms);
            }
        }
        let what = match rule {
            palisade_guard::waf::Rule::Urls => format!("more than {} links", self.max_urls),
            palisade_guard::waf::Rule::PhoneNumbers => format!("more than {} phone numbers", self.max_phones),
        };
        Err(ApiError::new(StatusCode::BAD_REQUEST, "blocked", format!("The field {field} holds {what}."))
            .with_extra("rule", rule.as_str())
            .with_extra("field", field))
    }

    /// The login keys of `account` (the address as typed, normalized) from
    /// `client`, and their partition: the account's.
    fn login_keys(account: &str, client: IpAddr) -> (u128, LoginKeys) {
        let account = account.trim().to_lowercase();
        let keys = LoginKeys {
            pair: Key::text(Kind::Login, &format!("{account}\n{:032x}", ip_id(client))),
            account: Key::text(Kind::LoginAccount, &account),
        };
        (keys.account.id, keys)
    }

    /// Admits a login attempt for `account` from `client`, counting it as a
    /// failure of that pair up front (so parallel guesses cannot exceed the
    /// threshold); `None` when the pair is locked, or the account is
    /// throttled and this attempt is not admitted. Pass what it returns to
    /// [`Self::login_failed`] or [`Self::login_succeeded`]. An error when
    /// the lockout state cannot be reached (logins fail closed).
    pub async fn login_attempt(
        &self,
        account: &str,
        client: IpAddr,
        now_ms: i64,
    ) -> Result<Option<LoginAttempt>, ApiError> {
        let (partition, keys) = Self::login_keys(account, client);
        let admission =
            self.state.login_attempt(partition, keys, self.login_rule, now_ms).await.map_err(|_| self.unavailable())?;
        Ok(match admission {
            LoginAdmission::Refused { pair_locked } => {
                self.metrics.auth_failure(if pair_locked { "login_locked" } else { "login_throttled" });
                None
            }
            LoginAdmission::Admitted { pair_lock_started } => {
                Some(LoginAttempt { partition, keys, started_lock: pair_lock_started })
            }
        })
    }

    /// The attempt failed: it counts against the account too. Says what
    /// this failure started.
    pub async fn login_failed(&self, attempt: LoginAttempt, now_ms: i64) -> Result<LoginFailure, ApiError> {
        self.metrics.auth_failure("login");
        if attempt.started_lock.is_some() {
            // Kept as `account` (the SPEC's per-account lock, now per address).
            self.metrics.lockout("account");
        }
        let out = self
            .state
            .strike(attempt.partition, attempt.keys.account, self.login_rule.account, now_ms)
            .await
            .map_err(|_| self.unavailable())?;
        if out.blocked_until.is_some() {
            self.metrics.lockout("account_throttle");
        }
        Ok(LoginFailure { address_locked_until: attempt.started_lock, account_throttled_until: out.blocked_until })
    }

    /// The password was right: the pair's failures are forgotten (and a
    /// lock this very attempt started is lifted).
    pub async fn login_succeeded(&self, attempt: LoginAttempt) -> Result<(), ApiError> {
        self.state
            .forgive(attempt.partition, attempt.keys.pair, attempt.started_lock)
            .await
            .map_err(|_| self.unavailable())
    }

    /// The login went through: its address is trusted for the account, so
    /// a throttle others cause does not keep the owner out.
    pub async fn trust_login_address(&self, attempt: LoginAttempt, now_ms: i64) {
        if self.trust_ms > 0 {
            let until = now_ms.saturating_add(self.trust_ms);
            // The login is done; without the mark the address is only not
            // exempt from a throttle.
            if self.state.mark(attempt.partition, attempt.keys.trust(), now_ms, until).await.is_err() {
                tracing::warn!(target: "palisade::abuse", "could not mark the login address trusted");
            }
        }
    }

    /// The account's password was reset from `client`: its throttle and
    /// failures, and that address's lock, are gone, and the address is
    /// trusted. Locks of other addresses stay (they are someone else's).
    pub async fn login_password_reset(&self, account: &str, client: IpAddr, now_ms: i64) {
        let (partition, keys) = Self::login_keys(account, client);
        // The password is reset already: what cannot be cleared now ends
        // on its own.
        let mut done = true;
        for key in [keys.account, keys.spacing(), keys.pair] {
            done &= self.state.clear(partition, key).await.is_ok();
        }
        if self.trust_ms > 0 {
            let until = now_ms.saturating_add(self.trust_ms);
            done &= self.state.mark(partition, keys.trust(), now_ms, until).await.is_ok();
        }
        if !done {
            tracing::warn!(target: "palisade::abuse", "could not lift the login locks after a password reset");
        }
    }

    /// Whether to audit a refused login for a locked account now (once a
    /// minute per account).
    pub async fn notice_locked_login(&self, account: &str, now_ms: i64) -> bool {
        let (partition, keys) = Self::login_keys(account, IpAddr::from([0, 0, 0, 0]));
        self.state.notice(partition, Key::new(Kind::Notice, keys.account.id), now_ms, NOTICE_MS).await.unwrap_or(false)
    }

    /// Whether a password-reset mail may go to `account` now: one a minute,
    /// so the route cannot be used to flood a mailbox.
    pub async fn reset_mail_allowed(&self, account: &str, now_ms: i64) -> bool {
        let (partition, keys) = Self::login_keys(account, IpAddr::from([0, 0, 0, 0]));
        // Unknown: no mail (mailboxes are not to be flooded).
        let key = Key::new(Kind::Notice, keys.account.id ^ 1);
        self.state.notice(partition, key, now_ms, NOTICE_MS).await.unwrap_or(false)
    }

    /// A credential refused because its address is locked out of key
    /// checks: counted, and audited once a minute per address.
    pub async fn credential_refused_locked(&self, db: &palisade_store::Db, client: IpAddr, now_ms: i64, ctx: Context) {
        self.metrics.auth_failure("credential_address_locked");
        let notice = Key::new(Kind::Notice, ip_id(client) ^ 1);
        if self.state.notice(ip_id(client), notice, now_ms, NOTICE_MS).await.unwrap_or(false) {
            let event = Event::new("abuse.blocked_request", None, Actor::anonymous())
                .details(serde_json::json!({ "block": "credential_address" }));
            audit_later(db, event, ctx, now_ms);
        }
    }

    /// Counts a failed credential from `client`; the one that reaches the
    /// threshold locks the address out of credential checks. An error when
    /// the failure cannot be counted and the policy keeps that closed.
    pub async fn credential_failed(
        &self,
        db: &palisade_store::Db,
        kind: &'static str,
        client: IpAddr,
        now_ms: i64,
        ctx: Context,
    ) -> Result<(), ApiError> {
        self.metrics.auth_failure(kind);
        let key = Key::ip(Kind::CredentialFailure, client);
        let out = self
            .state
            .strike(ip_id(client), key, self.credential_rule, now_ms)
            .await
            .map_err(|_| self.unavailable())?;
        if let Some(until) = out.blocked_until {
            self.metrics.lockout("credential_address");
            tracing::warn!(target: "palisade::abuse", "failed credentials: address locked out");
            let event = Event::new("auth.credential_lockout", None, Actor::anonymous())
                .details(serde_json::json!({ "failures": out.count, "until": until }));
            audit_later(db, event, ctx, now_ms);
        }
        Ok(())
    }
}

fn compact<const N: usize>(items: [Option<Bucket>; N]) -> ([Bucket; MAX_BUCKETS], usize) {
    let filler = Bucket::observe(
        Key::new(Kind::Burst, 0),
        Limit { name: "", quota: 1, window_secs: 1, interval_ns: 1, burst: 1 },
    );
    let mut out = [filler; MAX_BUCKETS];
    let mut n = 0;
    for b in items.into_iter().flatten().take(MAX_BUCKETS) {
        out[n] = b;
        n += 1;
    }
    (out, n)
}

/// The credential's own key: API key id or person id.
/// Whether an address list refuses `client`: denied, or not among the
/// allowed when there are any. The one rule of the platform's and the
/// tenants' lists, at a request and at a stream's re-check.
fn listed_out(client: IpAddr, deny: &[IpNet], allow: &[IpNet]) -> bool {
    palisade_guard::net::in_any(client, deny) || (!allow.is_empty() && !palisade_guard::net::in_any(client, allow))
}

fn caller_key(p: &Principal) -> Key {
    let id = match p.kind() {
        PrincipalKind::User { user_id, .. } => user_id.0,
        PrincipalKind::ApiKey { key_id, .. } => key_id.0,
        PrincipalKind::Agent { identity_id, .. } => identity_id.0,
    };
    Key::uuid(Kind::Waf, id)
}

fn caller_bucket(waf_key: Key) -> Key {
    Key::new(Kind::Credential, waf_key.id)
}

fn secs_until(now_ms: i64, until_ms: i64) -> i64 {
    ((until_ms - now_ms).max(0) + 999) / 1000
}

fn ns_to_secs(ns: u64) -> u64 {
    ns.div_ceil(1_000_000_000)
}

pub fn blocked() -> ApiError {
    ApiError::new(StatusCode::FORBIDDEN, "blocked", "Requests from this client are blocked.")
}

/// Who a refusal is audited for, and the key that keeps it to one event
/// per notice period.
struct Refusal {
    partition: u128,
    notice: Key,
    tenant: Option<TenantId>,
    actor: Actor,
}

fn with_retry_after(e: ApiError, now_ms: i64, until_ms: i64) -> ApiError {
    let secs = secs_until(now_ms, until_ms).max(1);
    e.with_header(http::header::RETRY_AFTER, HeaderValue::from(secs)).with_extra("retry_after", secs)
}

fn rate_limited(limit: Limit, s: &Standing) -> ApiError {
    let secs = ns_to_secs(s.retry_after_ns).max(1);
    ApiError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limited",
        format!(
            "Rate limit `{}` ({} per {} s) exceeded; retry in {secs} s.",
            limit.name, limit.quota, limit.window_secs
        ),
    )
    .with_header(http::header::RETRY_AFTER, HeaderValue::from(secs))
    .with_extra("limit", limit.name)
    .with_extra("retry_after", secs)
}

/// Off the request path: an audit write must not slow or fail a refusal.
fn audit_later(db: &palisade_store::Db, event: Event, ctx: Context, now_ms: i64) {
    let db = db.clone();
    tokio::spawn(async move {
        if let Err(e) = palisade_audit::record(&db, &event, &ctx, now_ms).await {
            tracing::error!(error = %e, "audit append failed");
        }
    });
}

/// The limits a request was measured against, for its `RateLimit` headers.
#[derive(Default)]
pub struct RateNotes {
    items: [Option<(Limit, Standing)>; 8],
}

fn note_standings(buckets: &[Bucket], standings: &[Standing], refused: Option<usize>) {
    let _ = crate::middleware::NOTES.try_with(|n| {
        let n = &mut n.borrow_mut().rate;
        for (i, b) in buckets.iter().enumerate() {
            // On a refusal only the limit that refused speaks; observed
            // buckets are internal.
            if b.observe_only || refused.is_some_and(|r| r != i) {
                continue;
            }
            if let Some(slot) = n.items.iter_mut().find(|s| s.is_none()) {
                *slot = Some((b.limit, standings[i]));
            }
        }
    });
}

impl RateNotes {
    /// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers):
    /// `"key";q=60;w=60` and `"key";r=59;t=1`, one list member per limit.
    pub fn write_headers(&self, h: &mut HeaderMap) {
        use std::fmt::Write;
        let (mut policy, mut current) = (String::new(), String::new());
        for (limit, s) in self.items.iter().flatten() {
            let sep = if policy.is_empty() { "" } else { ", " };
            let _ = write!(policy, "{sep}\"{}\";q={};w={}", limit.name, limit.quota, limit.window_secs);
            let (r, t) = if s.retry_after_ns > 0 {
                (0, ns_to_secs(s.retry_after_ns))
            } else {
                (limit.remaining(s.reset_ns), ns_to_secs(s.reset_ns))
            };
            let _ = write!(current, "{sep}\"{}\";r={r};t={t}", limit.name);
        }
        if policy.is_empty() {
            return;
        }
        if let (Ok(p), Ok(c)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&current)) {
            h.insert(http::HeaderName::from_static("ratelimit-policy"), p);
            h.insert(http::HeaderName::from_static("ratelimit"), c);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_follow_the_draft_syntax() {
        let mut n = RateNotes::default();
        let key = Limit::per_minute("key", 60).unwrap();
        let tenant = Limit::per_minute("tenant", 1000).unwrap();
        n.items[0] = Some((key, Standing { reset_ns: 1_000_000_000, retry_after_ns: 0 }));
        n.items[1] = Some((tenant, Standing { reset_ns: 5, retry_after_ns: 2_500_000_000 }));
        let mut h = HeaderMap::new();
        n.write_headers(&mut h);
        assert_eq!(h["ratelimit-policy"], r#""key";q=60;w=60, "tenant";q=1000;w=60"#);
        assert_eq!(h["ratelimit"], r#""key";r=59;t=1, "tenant";r=0;t=3"#);
    }

    #[test]
    fn classes() {
        assert_eq!(Class::of(&http::Method::POST, Some("/v1/messages")), Some(Class::MessageCreate));
        assert_eq!(Class::of(&http::Method::POST, Some("/v1/calls")), Some(Class::CallCreate));
        assert_eq!(Class::of(&http::Method::GET, Some("/v1/messages")), None);
        assert_eq!(Class::of(&http::Method::POST, None), None);
    }

    #[test]
    fn overrides_fill_from_defaults() {
        let config = Config::default();
        let abuse = Abuse::new(&config, Arc::new(palisade_guard::state::LocalState::new()), Arc::new(Metrics::new()));
        let p = abuse.tenant_policy(None);
        assert_eq!(p.key.unwrap().quota, 60);
        assert_eq!(p.tenant.unwrap().quota, 1000);
        let p =
            abuse.tenant_policy(Some(r#"{"key_per_minute": 5, "tenant_per_minute": 0, "ip_deny": ["10.0.0.0/8"]}"#));
        assert_eq!(p.key.unwrap().quota, 5);
        assert!(p.tenant.is_none());
        assert_eq!(p.message_create.unwrap().quota, 100);
        assert_eq!(p.deny.len(), 1);
        assert!(!p.unreadable);
        // Unreadable overrides fail closed.
        assert!(abuse.tenant_policy(Some("{not json")).unreadable);
        assert!(abuse.tenant_policy(Some(r#"{"ip_allow": ["nope"]}"#)).unreadable);
    }
}
