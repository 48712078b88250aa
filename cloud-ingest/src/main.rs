//! `rae-cloud-ingest`: one binary, one subcommand per role. Exit codes:
//! 0 ok, 1 runtime failure (the whole cause chain is printed), 64 bad
//! config or usage, 65 a database schema this binary does not match
//! (`registry`, `devices`: run `migrate`, or upgrade). systemd restarts
//! neither 64 nor 65: a restart cannot fix them.

use clap::{Parser, Subcommand};
use rae_cloud_ingest::{bridge, cli, config, db, logging, registry};
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Debug, Parser)]
#[command(name = "rae-cloud-ingest", version, about)]
struct Cli {
    /// Config file.
    #[arg(long, global = true, default_value = config::DEFAULT_CONFIG_PATH)]
    config: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MQTT → Kafka bridge (and the command downlink Kafka → MQTT).
    Bridge,
    /// Kafka → database: the Cloud Registry.
    Registry,
    /// Run the embedded database migrations (idempotent).
    Migrate,
    /// Query devices in the database.
    Devices(cli::DevicesArgs),
    /// Validate the config file and exit (0, or 64 with the offending key).
    CheckConfig,
}

/// Usage errors (clap) and bad configs.
const EXIT_USAGE: u8 = 64;
/// The database schema is older or newer than this binary's.
const EXIT_SCHEMA: u8 = 65;
/// How long the exit waits for blocking tasks still running.
const RUNTIME_SHUTDOWN: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help / --version print to stdout and succeed; anything
            // else is a usage error.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let settings = match config::load(&cli.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rae-cloud-ingest: {e}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    if let Command::CheckConfig = cli.command {
        println!("{}: ok", cli.config.display());
        return ExitCode::SUCCESS;
    }
    logging::init(settings.log_level);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("rae-cloud-ingest: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Bridge => bridge::run(settings).await,
            Command::Registry => registry::run(settings).await,
            Command::Migrate => db::migrate_command(settings).await,
            Command::Devices(args) => cli::devices(settings, args).await,
            Command::CheckConfig => Ok(()),
        }
    });
    // Blocking work still running (a Kafka call that does not answer) must
    // not hold the exit; each role bounds its own shutdown before this.
    runtime.shutdown_timeout(RUNTIME_SHUTDOWN);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rae-cloud-ingest: {e:#}");
            let schema = matches!(
                e.downcast_ref::<db::DbError>(),
                Some(db::DbError::SchemaTooOld { .. } | db::DbError::SchemaTooNew { .. })
            );
            ExitCode::from(if schema { EXIT_SCHEMA } else { 1 })
        }
    }
}
