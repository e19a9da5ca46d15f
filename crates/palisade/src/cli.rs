//! The command line: `serve`, `migrate`, `admin …`, `keys …`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
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
    },
    /// Print the latest signed checkpoint (for an external witness), after
    /// sequencing anything pending.
    Checkpoint,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Print the SHA-256 (as stored) of a key read from standard input.
    Hash,
    /// Print a new Ed25519 private key (PEM) for auth.jwt_private_key_file.
    GenerateJwtKey,
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
        Command::Admin { command: AdminCommand::MasterKey { command: MasterKeyCommand::Rotate } } => {
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
        Command::Audit { command: AuditCommand::Verify { public_key } } => {
            let db = crate::open_db(&config).await?;
            let verifier = match public_key {
                Some(b64) => palisade_audit::checkpoint::Verifier::from_public_b64(&b64, &config.audit.origin)
                    .context("--public-key must be a base64 Ed25519 public key (32 bytes)")?,
                None => crate::audit_signer(&config)?.verifier().clone(),
            };
            let file = crate::checkpoint_file(&config);
            let started = std::time::Instant::now();
            let report = palisade_audit::verify::verify_log(&db, &verifier, Some(&file), |n| {
                eprintln!("palisade: verified {n} records ({:.1} s)", started.elapsed().as_secs_f64());
            })
            .await?;
            if report.intact() {
                println!("intact: {} records, {} signed checkpoints", report.records, report.checkpoints);
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
        Command::Keys { command: KeysCommand::Hash } => {
            let mut key = String::new();
            std::io::stdin().read_to_string(&mut key)?;
            println!("{}", palisade_auth::token::sha256_hex(key.trim()));
            Ok(0)
        }
        Command::Keys { command: KeysCommand::GenerateJwtKey } => {
            print!("{}", palisade_auth::JwtKeys::generate_ed25519_pem()?);
            Ok(0)
        }
    }
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
