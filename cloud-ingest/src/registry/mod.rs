//! The Cloud Registry: Kafka → database. (Being built: see issue 5.)

use crate::config::Settings;

/// Runs the registry until SIGTERM/SIGINT.
pub async fn run(_settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("`registry` is not built yet")
}
