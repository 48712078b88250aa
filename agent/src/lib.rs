//! rae-agent: discovers devices under test on a RAE box, keeps a durable,
//! ordered journal of every change in SQLite, and (later) publishes it.
//!
//! Layout: `probe/` sees devices, `registry/` decides what changed (pure),
//! `journal/` makes it durable, `runtime/` wires the tasks, `cli/` reads the
//! journal for people and scripts, `config.rs` loads and validates settings.

pub mod cli;
pub mod config;
pub mod journal;
pub mod logging;
pub mod probe;
pub mod registry;
pub mod runtime;
pub mod status;
pub mod timefmt;
pub mod uplink;
