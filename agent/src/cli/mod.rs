//! The command line: `rae-agent` is both the daemon (`run`) and the tool to
//! inspect what it journaled. Read commands open the journal read-only and
//! are safe while the daemon runs.
//!
//! Exit codes: 0 success, 1 failure, 64 bad usage or config (EX_USAGE),
//! 65 journal from a newer rae-agent (EX_DATAERR), 69 no journal yet.

mod devices;
mod probe;
mod show;
mod status;
pub mod table;

use crate::config::{ConfigError, Settings, DEFAULT_CONFIG_PATH};
use crate::journal::read::JournalReader;
use crate::journal::JournalError;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Exit code for a bad command line or config.
pub const EXIT_USAGE: i32 = 64;
/// Exit code for a journal written by a newer agent.
pub const EXIT_DATAERR: i32 = 65;
/// Exit code when there is no journal yet.
pub const EXIT_UNAVAILABLE: i32 = 69;

#[derive(Debug, Parser)]
#[command(
    name = "rae-agent",
    version,
    about = "rae box agent: device discovery, journal and uplink"
)]
pub struct Cli {
    /// Config file [default: /etc/rae/agent.toml; built-in defaults if it does not exist]
    #[arg(long, short = 'c', global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the daemon until SIGTERM or SIGINT.
    Run,
    /// List devices (present and missing; --all adds detached ones).
    Devices {
        /// Include detached devices.
        #[arg(long)]
        all: bool,
        /// Machine-readable output (see docs/CLI.md).
        #[arg(long)]
        json: bool,
    },
    /// Show one device: by id, unique id prefix, or any alias (serial, /dev node, port).
    Show {
        device: String,
        #[arg(long)]
        json: bool,
    },
    /// A device's journaled events, oldest first.
    History {
        device: String,
        /// How many of the newest events to show.
        #[arg(long, default_value_t = 20)]
        limit: u64,
        #[arg(long)]
        json: bool,
    },
    /// Daemon health, device counts, journal size and backlog.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// One discovery pass, printed; nothing is written.
    Probe {
        #[arg(long)]
        json: bool,
    },
    /// Validate the config file and exit 0 (valid) or 64 (invalid).
    CheckConfig,
}

/// A CLI failure with its exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub error: anyhow::Error,
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        let error = e.into();
        let code = match error.downcast_ref::<JournalError>() {
            Some(JournalError::NewerSchema { .. }) => EXIT_DATAERR,
            Some(JournalError::Missing { .. }) => EXIT_UNAVAILABLE,
            _ if error.downcast_ref::<ConfigError>().is_some() => EXIT_USAGE,
            _ => 1,
        };
        Failure { code, error }
    }
}

/// Loads settings: the given file, else the default path if it exists,
/// else built-in defaults.
pub fn load_settings(path: Option<&PathBuf>) -> Result<Settings, ConfigError> {
    match path {
        Some(p) => Settings::load(p),
        None if std::path::Path::new(DEFAULT_CONFIG_PATH).exists() => {
            Settings::load(std::path::Path::new(DEFAULT_CONFIG_PATH))
        }
        None => Settings::from_toml("", std::path::Path::new("/")),
    }
}

fn reader(settings: &Settings) -> Result<JournalReader, JournalError> {
    JournalReader::open(&settings.journal_path())
}

/// Runs a non-daemon command, printing to stdout.
pub fn dispatch(command: &Command, settings: &Settings) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    match command {
        Command::Run => unreachable_run(),
        Command::CheckConfig => {
            use std::io::Write;
            writeln!(
                out,
                "config ok: rae_id={} state_dir={} udev={} serial={} adb={} mqtt={}",
                settings.rae_id,
                settings.state_dir.display(),
                onoff(settings.udev.enabled),
                onoff(settings.serial.enabled()),
                onoff(settings.adb.enabled()),
                settings
                    .mqtt
                    .broker
                    .as_ref()
                    .map_or("offline", |b| b.url.as_str()),
            )?;
            Ok(())
        }
        Command::Devices { all, json } => devices::run(&reader(settings)?, *all, *json, &mut out),
        Command::Show { device, json } => show::show(&reader(settings)?, device, *json, &mut out),
        Command::History {
            device,
            limit,
            json,
        } => show::history(&reader(settings)?, device, *limit, *json, &mut out),
        Command::Status { json } => status::run(settings, *json, &mut out),
        Command::Probe { json } => probe::run(settings, *json, &mut out),
    }
}

fn onoff(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

fn unreachable_run() -> Result<(), Failure> {
    Err(Failure {
        code: 1,
        error: anyhow::anyhow!("`run` is handled by main"),
    })
}
