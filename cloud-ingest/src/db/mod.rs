//! Database schema and SQL. (Being built: see issue 5.)

use crate::config::Settings;

/// `rae-cloud-ingest migrate`.
pub async fn migrate_command(_settings: Settings) -> anyhow::Result<()> {
    anyhow::bail!("`migrate` is not built yet")
}
