use clap::Parser;
use palisade::cli::{Cli, Command};
use palisade_config::Config;

// glibc's allocator spends a noticeable share of a busy server's time in
// its locks and bin maintenance; mimalloc's thread-local heaps do not.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    // A receiver's debugging tool: needs neither a config nor a database.
    if let Command::Webhook { command } = cli.command {
        std::process::exit(palisade::cli::webhook(command));
    }
    // A configuration problem is one clear line and exit code 2.
    let mut config = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("palisade: {e}");
            std::process::exit(2);
        }
    };
    if let Command::Serve { listen: Some(addr) } = &cli.command {
        if config.server.public_url == palisade_config::Server::default().public_url {
            let scheme = if config.tls_enabled() { "https" } else { "http" };
            config.server.public_url = format!("{scheme}://{addr}");
        }
        config.server.listen = addr.clone();
        if let Err(e) = config.validate() {
            eprintln!("palisade: {e}");
            std::process::exit(2);
        }
    }
    // The server logs JSON lines to stdout; operator commands print their
    // own results there, so their (warnings-only) log goes to stderr.
    if matches!(cli.command, Command::Serve { .. }) {
        palisade::logging::init(&config.log.level, std::io::stdout);
    } else {
        palisade::logging::init("warn", std::io::stderr);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("palisade: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(async {
        match palisade::cli::run(cli, config).await {
            Ok(code) => code,
            Err(e) => {
                eprintln!("palisade: {e:#}");
                1
            }
        }
    });
    std::process::exit(code);
}
