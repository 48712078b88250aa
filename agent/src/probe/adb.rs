//! The ADB probe (stub: being built; see issue "Serial and ADB discovery").

use super::ProbeEvent;
use crate::config::ConfigError;
use crate::registry::Observation;
use serde::Deserialize;
use tokio::sync::{mpsc, watch};

/// `[adb]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAdbConfig {}

/// Validated ADB probe settings.
#[derive(Debug, Clone, Default)]
pub struct AdbSettings {}

impl AdbSettings {
    pub fn validate(_raw: RawAdbConfig) -> Result<AdbSettings, ConfigError> {
        Ok(AdbSettings {})
    }

    /// Whether any profile is configured.
    pub fn enabled(&self) -> bool {
        false
    }
}

/// The long-running ADB probe task.
#[derive(Debug)]
pub struct AdbProbe {
    pub settings: AdbSettings,
    pub tx: mpsc::Sender<ProbeEvent>,
    pub shutdown: watch::Receiver<bool>,
}

impl AdbProbe {
    pub async fn run(self) {}
}

/// One probing pass over the devices the adb server lists, for `rae-agent probe`.
pub async fn scan_once(_settings: &AdbSettings) -> Vec<Observation> {
    Vec::new()
}
