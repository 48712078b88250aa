//! The serial-port probe (stub: being built; see issue "Serial and ADB discovery").

use super::ProbeEvent;
use crate::config::ConfigError;
use crate::registry::Observation;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

/// `[serial]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSerialConfig {}

/// Validated serial probe settings.
#[derive(Debug, Clone, Default)]
pub struct SerialSettings {}

impl SerialSettings {
    pub fn validate(_raw: RawSerialConfig) -> Result<SerialSettings, ConfigError> {
        Ok(SerialSettings {})
    }

    /// Whether any profile is configured.
    pub fn enabled(&self) -> bool {
        false
    }
}

/// The long-running serial probe task.
#[derive(Debug)]
pub struct SerialProbe {
    pub settings: SerialSettings,
    pub tx: mpsc::Sender<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl SerialProbe {
    pub async fn run(self) {}
}

/// One probing pass over all configured ports, for `rae-agent probe`.
pub async fn scan_once(_settings: &SerialSettings) -> Vec<Observation> {
    Vec::new()
}
