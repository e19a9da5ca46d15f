//! Operations shared by the HTTP API and the CLI.

use palisade_audit::{Context, Event};
use palisade_core::principal::SysadminProof;
use palisade_core::{ApiError, FieldError, Role, TenantId, TenantScope, UserId};
use palisade_store::users::{NewUser, UserRow};
use palisade_store::Db;
use sqlx::{Any, Executor};

pub struct NewTenant {
    pub name: String,
    pub owner_email: String,
    pub owner_password: String,
}

pub struct CreatedTenant {
    pub id: TenantId,
    pub name: String,
    pub owner_id: UserId,
    pub owner_email: String,
}

/// Validates a tenant's display name.
pub fn tenant_name(raw: &str, field: &str) -> Result<String, FieldError> {
    let name = palisade_guard::input::sanitize_line(raw);
    if name.is_empty() || name.chars().count() > 200 {
        return Err(FieldError { field: field.into(), message: "must be 1 to 200 characters".into() });
    }
    Ok(name)
}

/// An address to look someone up by (login, password reset): its stored form.
pub fn email(raw: &str, field: &str) -> Result<String, FieldError> {
    palisade_guard::email::normalize(raw)
        .ok_or_else(|| FieldError { field: field.into(), message: "must be a valid email address".into() })
}

/// An address for a new account: also refused when it mixes scripts or
/// holds characters that let it pass for another (UTS #39). This depends on
/// the address alone, so the refusal tells nothing about accounts.
pub fn new_email(raw: &str, field: &str) -> Result<String, FieldError> {
    palisade_guard::email::check_new(raw).map_err(|m| FieldError { field: field.into(), message: m.into() })
}

/// Whether an address, or one that passes for it, has an account.
pub enum Registered {
    No,
    /// The same address (equal canonical forms).
    Same(UserRow),
    /// Another address a reader cannot tell from it.
    LookAlike(UserRow),
}

impl Registered {
    /// The account of this very address, if any: only that one logs in or
    /// resets a password.
    pub fn same(self) -> Option<UserRow> {
        match self {
            Registered::Same(u) => Some(u),
            _ => None,
        }
    }
}

/// Looks up a [`email`]-normalized address among every tenant's people.
pub async fn registered<'c>(ex: impl Executor<'c, Database = Any>, email: &str) -> Result<Registered, ApiError> {
    use palisade_guard::email::{likeness, skeleton, Likeness};
    let mut rows = palisade_store::users::find_by_email(ex, email, &skeleton(email)).await?;
    if let Some(i) = rows.iter().position(|r| r.email == email) {
        return Ok(Registered::Same(rows.swap_remove(i)));
    }
    let mut look_alike = None;
    for row in rows {
        match likeness(email, &row.email) {
            Likeness::Same => return Ok(Registered::Same(row)),
            Likeness::LookAlike if look_alike.is_none() => look_alike = Some(row),
            _ => {}
        }
    }
    Ok(look_alike.map_or(Registered::No, Registered::LookAlike))
}

/// Fills in the skeleton of every address stored without one: rows from
/// before migration 0018, or written by an older instance in an upgrade.
/// Returns how many.
pub async fn backfill_email_skeletons(db: &Db) -> palisade_store::Result<u64> {
    let mut after = String::new();
    let mut filled = 0;
    loop {
        let batch = palisade_store::users::without_skeleton(db.reader(), &after, 500).await?;
        let Some((last, _)) = batch.last() else { return Ok(filled) };
        after = last.clone();
        let mut tx = db.begin().await?;
        for (id, email) in &batch {
            let skeleton = palisade_guard::email::skeleton(email);
            palisade_store::users::set_skeleton(&mut *tx, id, email, &skeleton).await?;
            filled += 1;
        }
        tx.commit().await?;
    }
}

pub fn password(raw: &str, email: Option<&str>, field: &str) -> Result<(), FieldError> {
    match palisade_auth::password::policy_violation(raw, email) {
        Some(why) => Err(FieldError { field: field.into(), message: why.into() }),
        None => Ok(()),
    }
}

/// Collects field errors so one response lists them all.
pub fn all_valid<const N: usize>(results: [Result<(), FieldError>; N]) -> Result<(), ApiError> {
    let errors: Vec<FieldError> = results.into_iter().filter_map(Result::err).collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation_many(errors))
    }
}

/// Each Argon2id run takes 19 MiB and a core for tens of milliseconds, and
/// login is reachable without a credential: bound how many run at once and
/// refuse (503, retry shortly) rather than queue without limit.
pub struct Argon2Slots {
    slots: std::sync::Arc<tokio::sync::Semaphore>,
    wait: std::time::Duration,
}

impl Argon2Slots {
    /// `max` 0 means twice the number of cores.
    pub fn new(max: usize, wait_ms: u64) -> Argon2Slots {
        let cores = std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2);
        let max = if max == 0 { cores * 2 } else { max };
        Argon2Slots {
            slots: std::sync::Arc::new(tokio::sync::Semaphore::new(max)),
            wait: std::time::Duration::from_millis(wait_ms),
        }
    }

    async fn run<T: Send + 'static>(&self, work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
        let busy = || {
            ApiError::new(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Too many sign-ins at once; retry shortly.",
            )
            .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"))
            .with_extra("retry_after", 1)
        };
        let _permit = match self.slots.try_acquire() {
            Ok(p) => p,
            Err(_) if self.wait.is_zero() => return Err(busy()),
            Err(_) => {
                tokio::time::timeout(self.wait, self.slots.acquire()).await.map_err(|_| busy())?.map_err(|_| busy())?
            }
        };
        tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)
    }

    /// Argon2id on a blocking thread, off the async workers.
    pub async fn hash(&self, password: String) -> Result<String, ApiError> {
        self.run(move || palisade_auth::password::hash(&password)).await?.map_err(ApiError::internal)
    }

    pub async fn verify(&self, password: String, phc: String) -> Result<bool, ApiError> {
        self.run(move || palisade_auth::password::verify(&password, &phc)).await
    }
}

/// The operator creates a tenant with an active owner.
pub async fn create_tenant(
    db: &Db,
    argon2: &Argon2Slots,
    proof: &SysadminProof,
    input: NewTenant,
    ctx: &Context,
    now: i64,
) -> Result<CreatedTenant, ApiError> {
    let name = tenant_name(&input.name, "name");
    let owner_email = new_email(&input.owner_email, "owner.email");
    let pw = password(&input.owner_password, owner_email.as_deref().ok(), "owner.password");
    let (name, owner_email) = match (name, owner_email, pw) {
        (Ok(n), Ok(e), Ok(())) => (n, e),
        (n, e, p) => {
            return Err(ApiError::validation_many([n.err(), e.err(), p.err()].into_iter().flatten().collect()))
        }
    };
    // The operator may hear which: the sysadmin sees every account anyway.
    match registered(db.reader(), &owner_email).await? {
        Registered::No => {}
        // A well-formed request that collides with what exists: a conflict.
        Registered::Same(_) => return Err(ApiError::conflict("The owner's email address is already registered.")),
        Registered::LookAlike(_) => {
            return Err(ApiError::conflict(
                "The owner's email address looks like a registered one but is not the same.",
            ))
        }
    }
    let hash = argon2.hash(input.owner_password).await?;
    let id = TenantId::new();
    let owner_id = UserId::new();
    let scope = TenantScope::for_system(id);
    let mut tx = db.begin().await?;
    palisade_store::tenants::insert(&mut *tx, id, &name, now).await?;
    let user = NewUser {
        id: owner_id,
        email: &owner_email,
        email_skeleton: &palisade_guard::email::skeleton(&owner_email),
        password_hash: Some(&hash),
        role: Role::Owner.as_str(),
        status: "active",
        now,
    };
    match palisade_store::users::insert(&mut *tx, &scope, &user).await {
        // A well-formed request that collides with what exists: a conflict.
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::conflict("The owner's email address is already registered."));
        }
        r => r?,
    }
    let event = Event::new("tenant.created", Some(id), proof.actor())
        .resource("tenant", id)
        .details(serde_json::json!({ "owner_id": owner_id.to_string() }));
    palisade_audit::append(&mut *tx, &event, ctx, now).await?;
    tx.commit().await?;
    Ok(CreatedTenant { id, name, owner_id, owner_email })
}

/// Freezes or unfreezes a tenant. Returns false if it does not exist.
/// Tenant erasure's crypto-shredding: the tenant, frozen first, loses its
/// data keys for good (and is marked erased, so it never gets one again and
/// stays frozen). `None` when there is no such tenant; the number of keys
/// destroyed otherwise. Copies of the database from before stay readable
/// for it until the KEK versions of then are retired (`palisade keys
/// rotate`, then `retire`).
pub async fn erase_tenant(
    state: &crate::state::AppState,
    proof: &SysadminProof,
    id: TenantId,
    ctx: &Context,
    now: i64,
) -> Result<Option<u64>, ApiError> {
    let scope = TenantScope::for_sysadmin(proof, id);
    let Some(tenant) = palisade_store::tenants::get(state.db.reader(), &scope).await? else { return Ok(None) };
    if tenant.status != "frozen" {
        return Err(ApiError::conflict("Freeze the tenant first (and offer its export): erasure cannot be undone."));
    }
    let mut tx = state.db.begin().await?;
    let Some(destroyed) = state.keys.destroy(&mut tx, &scope).await? else {
        // Unfrozen or erased meanwhile.
        return Err(ApiError::conflict("The tenant is no longer frozen, or was erased already."));
    };
    let event = Event::new("tenant.erased", Some(id), proof.actor())
        .resource("tenant", id)
        .details(serde_json::json!({ "keys_destroyed": destroyed }));
    palisade_audit::append(&mut *tx, &event, ctx, now).await?;
    tx.commit().await?;
    state.keys.forget(&id.to_string());
    state.admission.erase_recording_files(&scope).await;
    Ok(Some(destroyed))
}

pub async fn set_tenant_frozen(
    db: &Db,
    proof: &SysadminProof,
    id: TenantId,
    frozen: bool,
    ctx: &Context,
    now: i64,
) -> Result<bool, ApiError> {
    let scope = TenantScope::for_sysadmin(proof, id);
    let mut tx = db.begin().await?;
    let status = if frozen { "frozen" } else { "active" };
    if !palisade_store::tenants::set_status(&mut tx, &scope, status).await? {
        drop(tx);
        // The update is what decides (an erasure may commit meanwhile).
        if palisade_store::tenant_keys::erased_at(db.reader(), &scope).await?.is_some() {
            return Err(ApiError::conflict("An erased tenant stays frozen: its keys are destroyed."));
        }
        return Ok(false);
    }
    let action = if frozen { "tenant.frozen" } else { "tenant.unfrozen" };
    let event = Event::new(action, Some(id), proof.actor()).resource("tenant", id);
    palisade_audit::append(&mut *tx, &event, ctx, now).await?;
    tx.commit().await?;
    Ok(true)
}
