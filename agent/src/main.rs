//! `rae-agent` entry point: parse the command line, load and validate the
//! config (exit 64 on error), then run the daemon or a CLI command. Errors
//! print their whole cause chain.

use clap::Parser;
use rae_agent::cli::{self, Cli, Command, Failure, EXIT_DATAERR, EXIT_USAGE};
use rae_agent::journal::JournalError;
use std::process::ExitCode;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let settings = match cli::load_settings(cli.config.as_ref()) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("rae-agent: {e}");
            return ExitCode::from(EXIT_USAGE as u8);
        }
    };
    let result = match &cli.command {
        Command::Run => run_daemon(settings),
        other => cli::dispatch(other, &settings),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure { code, error }) => {
            if is_broken_pipe(&error) {
                // `rae-agent devices | head`: the reader left; not an error.
                return ExitCode::SUCCESS;
            }
            eprintln!("rae-agent: {error:#}");
            ExitCode::from(u8::try_from(code).unwrap_or(1))
        }
    }
}

fn is_broken_pipe(error: &anyhow::Error) -> bool {
    use std::io::ErrorKind::BrokenPipe;
    error.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|e| e.kind() == BrokenPipe)
            || cause
                .downcast_ref::<serde_json::Error>()
                .and_then(serde_json::Error::io_error_kind)
                == Some(BrokenPipe)
    })
}

fn run_daemon(settings: rae_agent::config::Settings) -> Result<(), Failure> {
    rae_agent::logging::init(settings.log_level);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::from(anyhow::Error::new(e).context("starting the tokio runtime")))?;
    let result = rt.block_on(rae_agent::runtime::run(settings));
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    result.map_err(|error| {
        let code = match error.downcast_ref::<JournalError>() {
            Some(JournalError::NewerSchema { .. }) => EXIT_DATAERR,
            _ => 1,
        };
        log::error!("{error:#}");
        Failure { code, error }
    })
}
