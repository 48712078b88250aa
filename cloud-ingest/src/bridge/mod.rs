//! The MQTT → Kafka bridge. (Being built: see issue 5.)

use crate::config::Settings;

/// Runs the bridge until SIGTERM/SIGINT.
pub async fn run(_settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("`bridge` is not built yet")
}
