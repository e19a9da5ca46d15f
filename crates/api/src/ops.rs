//! Operations shared by the HTTP API and the CLI.

use palisade_audit::{Context, Event};
use palisade_core::principal::{Actor, SysadminProof};
use palisade_core::{ApiError, FieldError, Role, TenantId, TenantScope, UserId};
use palisade_store::users::NewUser;
use palisade_store::Db;

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

pub fn email(raw: &str, field: &str) -> Result<String, FieldError> {
    palisade_guard::input::normalize_email(raw)
        .ok_or_else(|| FieldError { field: field.into(), message: "must be a valid email address".into() })
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
fn argon2_slots() -> &'static tokio::sync::Semaphore {
    static SLOTS: std::sync::OnceLock<tokio::sync::Semaphore> = std::sync::OnceLock::new();
    SLOTS.get_or_init(|| {
        let cores = std::thread::available_parallelism().map(std::num::NonZeroUsize::get).unwrap_or(2);
        tokio::sync::Semaphore::new(cores * 2)
    })
}

const ARGON2_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

async fn with_argon2<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Result<T, ApiError> {
    let busy = || {
        ApiError::new(http::StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Too many sign-ins at once; retry shortly.")
            .with_header(http::header::RETRY_AFTER, http::HeaderValue::from_static("1"))
            .with_extra("retry_after", 1)
    };
    let _permit =
        tokio::time::timeout(ARGON2_WAIT, argon2_slots().acquire()).await.map_err(|_| busy())?.map_err(|_| busy())?;
    tokio::task::spawn_blocking(work).await.map_err(ApiError::internal)
}

/// Argon2id on a blocking thread, off the async workers.
pub async fn hash_password(password: String) -> Result<String, ApiError> {
    with_argon2(move || palisade_auth::password::hash(&password)).await?.map_err(ApiError::internal)
}

pub async fn verify_password(password: String, phc: String) -> Result<bool, ApiError> {
    with_argon2(move || palisade_auth::password::verify(&password, &phc)).await
}

/// The operator creates a tenant with an active owner.
pub async fn create_tenant(
    db: &Db,
    _proof: &SysadminProof,
    input: NewTenant,
    ctx: &Context,
    now: i64,
) -> Result<CreatedTenant, ApiError> {
    let name = tenant_name(&input.name, "name");
    let owner_email = email(&input.owner_email, "owner.email");
    let pw = password(&input.owner_password, owner_email.as_deref().ok(), "owner.password");
    let (name, owner_email) = match (name, owner_email, pw) {
        (Ok(n), Ok(e), Ok(())) => (n, e),
        (n, e, p) => {
            return Err(ApiError::validation_many([n.err(), e.err(), p.err()].into_iter().flatten().collect()))
        }
    };
    let hash = hash_password(input.owner_password).await?;
    let id = TenantId::new();
    let owner_id = UserId::new();
    let scope = TenantScope::for_system(id);
    let mut tx = db.begin().await?;
    palisade_store::tenants::insert(&mut *tx, id, &name, now).await?;
    let user = NewUser {
        id: owner_id,
        email: &owner_email,
        password_hash: Some(&hash),
        role: Role::Owner.as_str(),
        status: "active",
        now,
    };
    match palisade_store::users::insert(&mut *tx, &scope, &user).await {
        Err(e) if e.is_unique_violation() => {
            return Err(ApiError::validation("owner.email", "is already registered"));
        }
        r => r?,
    }
    let event = Event::new("tenant.created", Some(id), Actor::sysadmin())
        .resource("tenant", id)
        .details(serde_json::json!({ "owner_id": owner_id.to_string() }));
    palisade_audit::append(&mut *tx, &event, ctx, now).await?;
    tx.commit().await?;
    Ok(CreatedTenant { id, name, owner_id, owner_email })
}

/// Freezes or unfreezes a tenant. Returns false if it does not exist.
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
    if !palisade_store::tenants::set_status(&mut *tx, &scope, status).await? {
        return Ok(false);
    }
    let action = if frozen { "tenant.frozen" } else { "tenant.unfrozen" };
    let event = Event::new(action, Some(id), Actor::sysadmin()).resource("tenant", id);
    palisade_audit::append(&mut *tx, &event, ctx, now).await?;
    tx.commit().await?;
    Ok(true)
}
