//! The command line: `serve`, `migrate`, `admin …`, `keys …`, `webhook …`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use palisade_api::ops::{self, NewTenant};
use palisade_audit::Context;
use palisade_config::Config;
use palisade_core::principal::SysadminProof;
use palisade_core::{Clock, SystemClock, TenantId};

#[derive(Parser)]
#[command(name = "palisade", version, about = "Security-first multi-tenant communications platform server")]
pub struct Cli {
    /// Config file (default: ./palisade.toml if present).
    #[arg(long, global = true, env = "PALISADE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run the server.
    Serve {
        /// Listen address, overrides server.listen.
        #[arg(long)]
        listen: Option<String>,
    },
    /// Apply database migrations and exit.
    Migrate,
    /// Operator tasks (work with the server down).
    Admin {
        #[command(subcommand)]
        command: AdminCommand,
    },
    /// The audit log (works with the server down).
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Key utilities.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Webhook utilities (need no config file or database).
    Webhook {
        #[command(subcommand)]
        command: WebhookCommand,
    },
}

#[derive(Subcommand)]
pub enum AdminCommand {
    Tenant {
        #[command(subcommand)]
        command: TenantCommand,
    },
    #[command(name = "master-key")]
    MasterKey {
        #[command(subcommand)]
        command: MasterKeyCommand,
    },
    /// Operator accounts: sign in to /sysadmin with a password and TOTP.
    Operator {
        #[command(subcommand)]
        command: OperatorCommand,
    },
}

#[derive(Subcommand)]
pub enum OperatorCommand {
    /// Create one; the password comes from PALISADE_OPERATOR_PASSWORD or
    /// standard input. Prints the TOTP secret and its otpauth URI once.
    Create {
        #[arg(long)]
        email: String,
    },
    /// List them.
    List,
    /// Disable one and end its sessions.
    Disable {
        #[arg(long)]
        email: String,
    },
}

#[derive(Subcommand)]
pub enum TenantCommand {
    /// Create a tenant with an active owner. The password is read from
    /// PALISADE_OWNER_PASSWORD or standard input, never from the command line.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        owner_email: String,
    },
    List,
    Freeze {
        id: String,
    },
    Unfreeze {
        id: String,
    },
}

#[derive(Subcommand)]
pub enum MasterKeyCommand {
    /// Generate a new master key, store its hash and write it to data/master.key.
    Rotate,
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Recompute the whole log and check it against every signed
    /// checkpoint. Exit 0 intact, 1 tampered (naming the first bad record).
    Verify {
        /// Verify with this Ed25519 public key (raw 32 bytes, base64, as
        /// `audit checkpoint` prints it) instead of the signing key, e.g. on
        /// an auditor's machine that must not hold the private key.
        #[arg(long)]
        public_key: Option<String>,
        /// Check against this witness file (as `audit export-checkpoints`
        /// writes it, or a server's `audit-checkpoints.jsonl`) instead of
        /// the data directory's checkpoint file; repeat for several.
        #[arg(long, value_name = "FILE")]
        witness: Vec<PathBuf>,
    },
    /// Print the latest signed checkpoint (for an external witness), after
    /// sequencing anything pending.
    Checkpoint,
    /// Write every signed checkpoint and retention statement of the
    /// cluster's log, from the database, to FILE (JSON lines, mode 0600):
    /// a witness copy to keep outside the database.
    #[command(name = "export-checkpoints")]
    ExportCheckpoints { file: PathBuf },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print the SHA-256 (as stored) of a key read from standard input.
    Hash,
    /// Print a new Ed25519 private key (PEM) for auth.jwt_private_key_file.
    GenerateJwtKey,
    /// A new key-encryption key version: added to dev mode's KEK file, or
    /// printed to add to `keys.kek` on every instance.
    NewKek,
    /// Re-wrap every tenant's data keys under the newest KEK version (data
    /// is not re-encrypted), then list the versions no key needs any more.
    Rotate {
        /// Also give every tenant a new data key version for new writes (the
        /// re-sealing job moves old values to it).
        #[arg(long)]
        data_keys: bool,
    },
    /// Remove the KEK versions no key is wrapped under: from dev mode's KEK
    /// file, or name them to remove from `keys.kek`. Copies of the database
    /// from before an erasure are unreadable for that tenant only once the
    /// versions they used are retired.
    Retire,
}

#[derive(Subcommand)]
pub enum WebhookCommand {
    /// Check a received webhook's Standard Webhooks signature. Exit 0 valid,
    /// 1 invalid (with the check that failed), 2 unusable input.
    Verify {
        /// `whsec_…` (symmetric) or `whpk_…` (Ed25519 public key); repeat for
        /// several. PALISADE_WEBHOOK_SECRET (comma-separated) keeps it out of
        /// the shell history.
        #[arg(
            long = "secret",
            value_name = "KEY",
            required = true,
            env = "PALISADE_WEBHOOK_SECRET",
            hide_env_values = true,
            value_delimiter = ','
        )]
        secrets: Vec<String>,
        /// A file of `Name: value` lines as copied from a request dump, or
        /// those lines themselves. Other headers are ignored.
        #[arg(long)]
        headers: String,
        /// The exact request body: a file, or `-` for standard input.
        #[arg(long, value_name = "FILE")]
        body: String,
        /// Accept a webhook-timestamp this many seconds either side of now.
        #[arg(long, default_value_t = 300)]
        tolerance_secs: u32,
        /// Check the timestamp against this Unix time instead of now.
        #[arg(long)]
        now: Option<i64>,
    },
}

/// Runs the command; the result is the process exit code.
pub async fn run(cli: Cli, config: Config) -> anyhow::Result<i32> {
    let cli_ctx = Context { source_ip: None, user_agent: Some("palisade-cli".into()), request_id: None };
    let clock = SystemClock;
    match cli.command {
        Command::Serve { .. } => serve(config).await,
        Command::Migrate => {
            crate::open_db(&config).await?;
            println!("migrations applied");
            Ok(0)
        }
        Command::Admin { command: AdminCommand::Tenant { command } } => {
            let db = crate::open_db(&config).await?;
            let proof = SysadminProof::verified();
            match command {
                TenantCommand::Create { name, owner_email } => {
                    let owner_password = read_password()?;
                    let input = NewTenant { name, owner_email, owner_password };
                    match ops::create_tenant(&db, &ops::Argon2Slots::new(1, 0), &proof, input, &cli_ctx, clock.now_ms())
                        .await
                    {
                        Ok(t) => println!(
                            "{}",
                            serde_json::json!({"id": t.id.to_string(), "name": t.name, "owner": {"id": t.owner_id.to_string(), "email": t.owner_email}})
                        ),
                        Err(e) => {
                            let p = e.to_problem(None);
                            let fields: Vec<String> =
                                p.errors.iter().map(|f| format!("{}: {}", f.field, f.message)).collect();
                            eprintln!("palisade: {} {}", p.detail, fields.join("; "));
                            return Ok(1);
                        }
                    }
                }
                TenantCommand::List => {
                    for t in palisade_store::tenants::list(db.reader(), &proof).await? {
                        println!("{}\t{}\t{}", t.id, t.status, t.name);
                    }
                }
                TenantCommand::Freeze { id } | TenantCommand::Unfreeze { id } if id.parse::<TenantId>().is_err() => {
                    eprintln!("palisade: `{id}` is not a tenant id");
                    return Ok(1);
                }
                TenantCommand::Freeze { id } => return set_frozen(&db, &proof, &id, true, &cli_ctx).await,
                TenantCommand::Unfreeze { id } => return set_frozen(&db, &proof, &id, false, &cli_ctx).await,
            }
            Ok(0)
        }
        Command::Admin { command: AdminCommand::Operator { command } } => operator(&config, command, &cli_ctx).await,
        Command::Admin { command: AdminCommand::MasterKey { command: MasterKeyCommand::Rotate } } => {
            if config.admin.master_key_disabled() {
                eprintln!(
                    "palisade: admin.master_key is \"disabled\"; no master key is made (operators sign in instead)"
                );
                return Ok(1);
            }
            let db = crate::open_db(&config).await?;
            let path = crate::rotate_master_key(&config, &db).await?;
            let event = palisade_audit::Event::new(
                "sysadmin.master_key_rotated",
                None,
                palisade_core::principal::Actor::sysadmin(),
            );
            palisade_audit::record(&db, &event, &cli_ctx, clock.now_ms()).await?;
            println!("new master key written to {} (mode 0600)", path.display());
            if config.admin.master_key.is_some() {
                println!("note: a master key is configured (PALISADE_ADMIN__MASTER_KEY or admin.master_key_file) and takes precedence; put the new key there and restart");
            }
            Ok(0)
        }
        Command::Audit { command: AuditCommand::Verify { public_key, witness } } => {
            let db = crate::open_db(&config).await?;
            let verifier = match public_key {
                Some(b64) => palisade_audit::checkpoint::Verifier::from_public_b64(&b64, &config.audit.origin)
                    .context("--public-key must be a base64 Ed25519 public key (32 bytes)")?,
                None => crate::audit_signer(&config)?.verifier().clone(),
            };
            let files = if witness.is_empty() { vec![crate::checkpoint_file(&config)] } else { witness };
            let files: Vec<&std::path::Path> = files.iter().map(PathBuf::as_path).collect();
            let started = std::time::Instant::now();
            let report = palisade_audit::verify::verify_log(&db, &verifier, &files, |n| {
                eprintln!("palisade: verified {n} records ({:.1} s)", started.elapsed().as_secs_f64());
            })
            .await?;
            if report.intact() {
                println!("intact: {} records, {} signed checkpoints", report.records, report.checkpoints);
                if report.pending > 0 {
                    // After a crash: written, but in no tree or checkpoint yet,
                    // so "intact" does not speak for them.
                    let n = report.pending;
                    println!(
                        "pending: {n} {} written but not yet integrated, so not covered by this check; \
                         `palisade audit checkpoint` (or the next server start) integrates them",
                        if n == 1 { "event" } else { "events" }
                    );
                }
                Ok(0)
            } else {
                for p in &report.problems {
                    println!("TAMPERED: {p}");
                }
                Ok(1)
            }
        }
        Command::Audit { command: AuditCommand::Checkpoint } => {
            let db = crate::open_db(&config).await?;
            let log =
                palisade_audit::log::AuditLog::new(db, crate::audit_signer(&config)?, crate::checkpoint_file(&config));
            log.integrate(clock.now_ms()).await?;
            log.sync_file().await?;
            match log.latest_checkpoint().await? {
                Some(cp) => {
                    println!("{}", serde_json::to_string_pretty(&cp)?);
                    println!("public key (Ed25519, base64): {}", log.signer().verifier().public_key_b64());
                    Ok(0)
                }
                None => {
                    eprintln!("palisade: the audit log is empty");
                    Ok(1)
                }
            }
        }
        Command::Audit { command: AuditCommand::ExportCheckpoints { file } } => {
            let db = crate::open_db(&config).await?;
            let verifier = crate::audit_signer(&config)?.verifier().clone();
            let (written, skipped) = palisade_audit::verify::export_checkpoints(&db, &verifier, &file).await?;
            println!("{written} signed notes written to {}", file.display());
            if skipped > 0 {
                // Not copied: a witness holds genuine notes only.
                println!("TAMPERED: {skipped} notes in the database do not verify; `audit verify` names them");
                return Ok(1);
            }
            Ok(0)
        }
        Command::Keys { command } => keys(command, &config).await,
        Command::Webhook { command } => Ok(webhook(command)),
    }
}

/// Instances seen since this moment are running.
fn live_since() -> i64 {
    SystemClock.now_ms() - palisade_api::recovery::INSTANCE_GONE_MS
}

/// `palisade keys new-kek | rotate | retire`.
async fn keys(command: KeysCommand, config: &Config) -> anyhow::Result<i32> {
    use palisade_keys::Kek as _;
    match command {
        KeysCommand::Hash => {
            let mut key = String::new();
            std::io::stdin().read_to_string(&mut key)?;
            println!("{}", palisade_auth::token::sha256_hex(key.trim()));
            return Ok(0);
        }
        KeysCommand::GenerateJwtKey => {
            print!("{}", palisade_auth::JwtKeys::generate_ed25519_pem()?);
            return Ok(0);
        }
        _ => {}
    }
    // Dev mode's own KEK file: the CLI keeps it. A configured KEK is the
    // operator's to change, on every instance.
    let own_file = config.keys.kek.is_none().then(|| crate::dev_kek_path(config));
    let proof = SysadminProof::verified();
    match command {
        KeysCommand::NewKek => {
            // A lost dev KEK file is restored, never replaced over keys.
            let kek = crate::kek_for(config, &crate::open_db(config).await?).await?;
            let line = palisade_keys::LocalKek::new_line(kek.newest() + 1);
            match own_file {
                Some(path) => {
                    let text = std::fs::read_to_string(&path)?;
                    crate::write_private(&path, format!("{}\n{line}\n", text.trim_end()).as_bytes())?;
                    println!("added KEK v{} to {}; now run `palisade keys rotate`", kek.newest() + 1, path.display());
                }
                None => println!("{line}"),
            }
            Ok(0)
        }
        KeysCommand::Rotate { data_keys } => {
            let db = crate::open_db(config).await?;
            let kek = crate::kek_for(config, &db).await?;
            let ring = palisade_keys::Keyring::new(Arc::new(kek), db, palisade_keys::DEFAULT_TTL);
            let newest = ring.kek().newest();
            let lacking = ring.instances_without(&proof, live_since(), newest).await?;
            if !lacking.is_empty() {
                eprintln!(
                    "palisade: running instances do not hold KEK v{newest} yet (restart them with it first): {}",
                    lacking.join(", ")
                );
                return Ok(1);
            }
            let done = ring.rotate(&proof, data_keys).await?;
            let retirable = ring.retirable(&proof).await?;
            println!(
                "{}",
                serde_json::json!({
                    "kek_version": ring.kek().newest(),
                    "rewrapped": done.rewrapped,
                    "new_data_keys": done.new_data_keys,
                    "retirable_kek_versions": retirable,
                })
            );
            Ok(0)
        }
        KeysCommand::Retire => {
            let db = crate::open_db(config).await?;
            let kek = crate::kek_for(config, &db).await?;
            let ring = palisade_keys::Keyring::new(Arc::new(kek), db, palisade_keys::DEFAULT_TTL);
            let retirable = ring.retirable(&proof).await?;
            let stale: Vec<u32> = ring.kek().versions().into_iter().filter(|v| *v != ring.kek().newest()).collect();
            if stale.iter().any(|v| !retirable.contains(v)) {
                eprintln!("palisade: some keys are still wrapped under an older KEK version; run `palisade keys rotate` first");
                return Ok(1);
            }
            let wrapping = ring.instances_wrapping_with(&proof, live_since(), &retirable).await?;
            if !wrapping.is_empty() {
                eprintln!(
                    "palisade: running instances still wrap new keys under a version to retire (restart them with the new KEK first): {}",
                    wrapping.join(", ")
                );
                return Ok(1);
            }
            match own_file {
                Some(path) if !retirable.is_empty() => {
                    let text = std::fs::read_to_string(&path)?;
                    // Entry by entry (a line may hold several, comma-separated).
                    let kept: Vec<&str> = text
                        .lines()
                        .flat_map(|l| if l.trim_start().starts_with('#') { vec![l] } else { l.split(',').collect() })
                        .map(str::trim)
                        .filter(|e| !e.is_empty())
                        .filter(|e| !retirable.iter().any(|v| e.starts_with(&format!("v{v}:"))))
                        .collect();
                    let text = format!("{}\n", kept.join("\n"));
                    // Never leave a file that opens nothing.
                    palisade_keys::LocalKek::parse(&text).map_err(|e| anyhow::anyhow!("{e}"))?;
                    crate::write_private(&path, text.as_bytes())?;
                    println!("removed KEK versions {retirable:?} from {}", path.display());
                }
                Some(_) => println!("no KEK version to retire"),
                None => println!("remove KEK versions {retirable:?} from keys.kek on every instance"),
            }
            Ok(0)
        }
        KeysCommand::Hash | KeysCommand::GenerateJwtKey => Ok(0),
    }
}

/// `palisade webhook …`; touches neither the config nor the database, so
/// `main` may call it before loading the config.
pub fn webhook(command: WebhookCommand) -> i32 {
    use palisade_webhooks::signature::{self, VerifyError};
    let WebhookCommand::Verify { secrets, headers, body, tolerance_secs, now } = command;
    let input = match read_webhook_input(&secrets, &headers, &body) {
        Ok(i) => i,
        Err(e) => {
            eprintln!("palisade: {e:#}");
            return 2;
        }
    };
    let now = now.unwrap_or_else(|| SystemClock.now_ms().div_euclid(1000));
    let check = |tolerance: i64| {
        signature::verify(
            &input.secrets,
            &input.public_keys,
            &input.id,
            &input.timestamp,
            &input.signature,
            &input.body,
            now,
            tolerance,
        )
    };
    match check(i64::from(tolerance_secs)) {
        Ok(scheme) => {
            println!("signature valid ({}, webhook-id {})", scheme.as_str(), input.id);
            0
        }
        Err(e @ (VerifyError::TimestampTooOld { .. } | VerifyError::TimestampTooNew { .. })) => {
            // Say whether the signature itself is right: it tells a replay
            // or a skewed clock apart from a wrong secret.
            let sig =
                if check(i64::MAX).is_ok() { "the signature itself matches" } else { "no signature matches either" };
            eprintln!("palisade: invalid: {e} ({sig})");
            1
        }
        Err(e) => {
            eprintln!("palisade: invalid: {e}");
            1
        }
    }
}

struct WebhookInput {
    secrets: Vec<palisade_webhooks::signature::WebhookSecret>,
    public_keys: Vec<palisade_webhooks::signature::VerifyingKey>,
    id: String,
    timestamp: String,
    signature: String,
    body: Vec<u8>,
}

fn read_webhook_input(secrets: &[String], headers: &str, body: &str) -> anyhow::Result<WebhookInput> {
    use palisade_webhooks::signature::{self, Ed25519Signer, WebhookSecret};
    let (mut symmetric, mut public_keys) = (Vec::new(), Vec::new());
    for (i, s) in secrets.iter().map(|s| s.trim()).enumerate() {
        let n = i + 1;
        if s.starts_with("whpk_") {
            public_keys.push(signature::parse_public_key(s).with_context(|| format!("--secret #{n} (whpk_)"))?);
        } else if s.starts_with("whsk_") {
            let key = Ed25519Signer::from_secret_string(s).with_context(|| format!("--secret #{n} (whsk_)"))?;
            public_keys.push(key.verifying_key());
        } else {
            symmetric.push(WebhookSecret::parse(s).with_context(|| format!("--secret #{n} (whsec_)"))?);
        }
    }
    // Literal header text is rarely a valid path (too long, or not there),
    // so anything that is not a file is read as the lines themselves.
    let text = if std::path::Path::new(headers).is_file() {
        std::fs::read_to_string(headers).with_context(|| format!("--headers: reading {headers}"))?
    } else if headers.contains(':') {
        headers.to_owned()
    } else {
        anyhow::bail!("--headers: no file {headers} and no `Name: value` lines")
    };
    let (mut id, mut timestamp, mut sigs) = (None, None, Vec::new());
    for (name, value) in text.lines().filter_map(|l| l.split_once(':')) {
        let value = value.trim().to_owned();
        match name.trim().to_ascii_lowercase().as_str() {
            signature::HEADER_ID => id = id.or(Some(value)),
            signature::HEADER_TIMESTAMP => timestamp = timestamp.or(Some(value)),
            signature::HEADER_SIGNATURE => sigs.push(value),
            _ => {}
        }
    }
    let body = if body == "-" {
        let mut b = Vec::new();
        std::io::stdin().read_to_end(&mut b).context("--body: reading standard input")?;
        b
    } else {
        std::fs::read(body).with_context(|| format!("--body: reading {body}"))?
    };
    Ok(WebhookInput {
        secrets: symmetric,
        public_keys,
        id: id.unwrap_or_default(),
        timestamp: timestamp.unwrap_or_default(),
        signature: sigs.join(" "),
        body,
    })
}

async fn set_frozen(
    db: &palisade_store::Db,
    proof: &SysadminProof,
    id: &str,
    frozen: bool,
    ctx: &Context,
) -> anyhow::Result<i32> {
    let id: TenantId = id.parse().context("not a tenant id")?;
    if ops::set_tenant_frozen(db, proof, id, frozen, ctx, SystemClock.now_ms()).await? {
        println!("{id}\t{}", if frozen { "frozen" } else { "active" });
        Ok(0)
    } else {
        eprintln!("palisade: no tenant {id}");
        Ok(1)
    }
}

async fn operator(config: &Config, command: OperatorCommand, ctx: &Context) -> anyhow::Result<i32> {
    let db = crate::open_db(config).await?;
    let now = SystemClock.now_ms();
    match command {
        OperatorCommand::Create { email } => {
            let Some(email) = palisade_guard::email::normalize(&email) else {
                eprintln!("palisade: `{email}` is not an email address");
                return Ok(1);
            };
            // Never the owner password variable `tenant create` reads.
            let password = match std::env::var("PALISADE_OPERATOR_PASSWORD") {
                Ok(p) => p,
                Err(_) => {
                    let mut s = String::new();
                    std::io::stdin().read_line(&mut s).context("reading the operator password from standard input")?;
                    s.trim_end_matches(['\r', '\n']).to_owned()
                }
            };
            if let Err(e) = ops::password(&password, Some(&email), "password") {
                eprintln!("palisade: the password {}", e.message);
                return Ok(1);
            }
            let hash = ops::Argon2Slots::new(1, 0).hash(password).await.map_err(|e| anyhow::anyhow!("{e}"))?;
            let id = uuid::Uuid::new_v4().to_string();
            let secret = palisade_auth::totp::Totp::new_secret();
            let sealer = palisade_seal::Sealer::new(&crate::webhook_key(config)?);
            let sealed = base64::engine::general_purpose::STANDARD
                .encode(sealer.seal(&secret, &palisade_api::routes::operators_totp_aad(&id)));
            let totp = palisade_auth::totp::Totp::new(secret, &config.auth.mfa.issuer, &email)
                .ok_or_else(|| anyhow::anyhow!("a new TOTP secret was refused"))?;
            let mut tx = db.begin().await?;
            if let Err(e) = palisade_store::operators::insert(&mut *tx, &id, &email, &hash, &sealed, now).await {
                if e.is_unique_violation() {
                    eprintln!("palisade: an operator with this address exists");
                    return Ok(1);
                }
                return Err(e.into());
            }
            let event =
                palisade_audit::Event::new("operator.created", None, palisade_core::principal::Actor::sysadmin())
                    .details(serde_json::json!({ "operator_id": id }));
            palisade_audit::append(&mut *tx, &event, ctx, now).await?;
            tx.commit().await?;
            println!(
                "{}",
                serde_json::json!({"id": id, "email": email, "totp_secret": totp.secret_base32(), "otpauth_uri": totp.uri()})
            );
            eprintln!("palisade: add the TOTP secret to the operator's authenticator app now; it is not shown again");
            Ok(0)
        }
        OperatorCommand::List => {
            for o in palisade_store::operators::list(db.reader()).await? {
                let status = if o.disabled_at.is_some() { "disabled" } else { "active" };
                println!("{}\t{}\t{}", o.id, status, o.email);
            }
            Ok(0)
        }
        OperatorCommand::Disable { email } => {
            let email = palisade_guard::email::normalize(&email).unwrap_or(email);
            // With the master key off, the last operator is the only way in.
            if config.admin.master_key_disabled() && palisade_store::operators::count_active(db.reader()).await? <= 1 {
                eprintln!("palisade: refusing to disable the last operator while admin.master_key is \"disabled\"");
                return Ok(1);
            }
            let mut tx = db.begin().await?;
            if !palisade_store::operators::disable(&mut tx, &email, now).await? {
                eprintln!("palisade: no active operator has this address");
                return Ok(1);
            }
            let event =
                palisade_audit::Event::new("operator.disabled", None, palisade_core::principal::Actor::sysadmin())
                    .details(serde_json::json!({ "email": email }));
            palisade_audit::append(&mut *tx, &event, ctx, now).await?;
            tx.commit().await?;
            println!("disabled");
            Ok(0)
        }
    }
}

fn read_password() -> anyhow::Result<String> {
    if let Ok(p) = std::env::var("PALISADE_OWNER_PASSWORD") {
        return Ok(p);
    }
    let mut s = String::new();
    std::io::stdin().read_line(&mut s).context("reading the owner password from standard input")?;
    Ok(s.trim_end_matches(['\r', '\n']).to_owned())
}

async fn serve(config: Config) -> anyhow::Result<i32> {
    let listen: SocketAddr = config.listen_addr()?;
    let state = crate::build_state(config, Arc::new(SystemClock)).await?;
    let running = crate::start(state, listen).await?;
    tracing::info!(addr = %running.addr, "palisade listening");
    let scheme = if running.state.config.tls_enabled() { "https" } else { "http" };
    eprintln!("palisade: listening on {scheme}://{}", running.addr);
    shutdown_signal().await;
    tracing::info!("shutting down");
    running.stop().await;
    Ok(0)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(_) => {
                let _ = ctrl_c.await;
                return;
            }
        };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
