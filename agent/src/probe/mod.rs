//! Probes: the I/O shells that watch the outside world and turn what they
//! see into [`Observation`]s for the registry task.
//!
//! Invariant: a probe never blocks another. Each runs as its own task and
//! only talks to the registry through a bounded channel. After its first
//! full scan a probe sends [`ProbeEvent::Synced`], so the registry can settle
//! devices that vanished while the agent was down.

pub mod adb;
pub mod rules;
pub mod serial;
pub mod udev;

use crate::registry::{Observation, Source};

/// What a probe sends to the registry task.
#[derive(Debug, Clone, PartialEq)]
pub enum ProbeEvent {
    Observed(Observation),
    /// The probe's first full scan is complete.
    Synced(Source),
    /// The probe failed; the registry task records it for `status`.
    Failed {
        source: Source,
        message: String,
    },
    /// The probe works again after a failure.
    Recovered(Source),
}
