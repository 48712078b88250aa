//! The `devices` query commands. (Being built: see issue 5.)

use crate::config::Settings;

/// Arguments of `rae-cloud-ingest devices`.
#[derive(Debug, clap::Args)]
pub struct DevicesArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// `rae-cloud-ingest devices`.
pub async fn devices(_settings: Settings, _args: DevicesArgs) -> anyhow::Result<()> {
    anyhow::bail!("`devices` is not built yet")
}
