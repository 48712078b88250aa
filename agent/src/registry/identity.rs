//! Identity resolution: which device record an observation belongs to.
//!
//! Rules (see docs/ARCHITECTURE.md, "Identity"):
//! 1. The strongest usable identifier is the identity key: a serial number
//!    not on the denylist, else the physical port, else a network endpoint.
//!    The device id is a hash of that key, so it is stable across re-plugs
//!    and across agent restarts without any lookup.
//! 2. An observation with only a device node joins the device that last
//!    claimed that node in the alias table; failing that the node itself is
//!    the key (a non-USB port such as `/dev/ttyS0`).
//! 3. Every identifier seen is recorded as an alias of the device, so the
//!    CLI and later probes can find the record by any of them.

use super::observation::Identifier;
use std::collections::BTreeSet;

/// Serial numbers known to be shared by many devices; they fall back to the port.
pub const DEFAULT_SERIAL_DENYLIST: &[&str] = &[
    "0123456789ABCDEF",
    "0123456789",
    "0000",
    "00000000",
    "000000000000",
    "????????????",
    "1234567890",
];

/// Configuration of the identity rules.
#[derive(Debug, Clone)]
pub struct IdentityRules {
    denylist: BTreeSet<String>,
}

impl Default for IdentityRules {
    fn default() -> Self {
        IdentityRules::new(DEFAULT_SERIAL_DENYLIST.iter().map(|s| s.to_string()))
    }
}

impl IdentityRules {
    /// Rules with exactly this denylist (compared case-insensitively, trimmed).
    /// Empty and whitespace-only serials are always unusable.
    pub fn new(denylist: impl IntoIterator<Item = String>) -> Self {
        IdentityRules {
            denylist: denylist
                .into_iter()
                .map(|s| s.trim().to_ascii_uppercase())
                .collect(),
        }
    }

    /// Whether a serial number can identify a device on its own.
    pub fn serial_is_usable(&self, serial: &str) -> bool {
        let s = serial.trim();
        !s.is_empty() && !self.denylist.contains(&s.to_ascii_uppercase())
    }

    /// The identity key of the strongest usable identifier, if any besides nodes.
    pub fn identity_key(&self, ids: &[Identifier]) -> Option<String> {
        let serial = ids.iter().find_map(|id| match id {
            Identifier::Serial { serial, interface } if self.serial_is_usable(serial) => Some(
                with_interface(format!("serial:{}", serial.trim()), *interface),
            ),
            _ => None,
        });
        let port = || {
            ids.iter().find_map(|id| match id {
                Identifier::Port { path, interface } if !path.is_empty() => {
                    Some(with_interface(format!("port:{path}"), *interface))
                }
                _ => None,
            })
        };
        let network = || {
            ids.iter().find_map(|id| match id {
                Identifier::Network(addr) if !addr.is_empty() => Some(format!("net:{addr}")),
                _ => None,
            })
        };
        serial.or_else(port).or_else(network)
    }
}

fn with_interface(key: String, interface: Option<u8>) -> String {
    match interface {
        Some(n) => format!("{key}/if{n:02}"),
        None => key,
    }
}

/// The alias string of every identifier (used for lookups, including nodes).
pub fn alias_strings(ids: &[Identifier]) -> Vec<String> {
    let mut out: Vec<String> = ids
        .iter()
        .map(|id| match id {
            Identifier::Serial { serial, interface } => {
                with_interface(format!("serial:{}", serial.trim()), *interface)
            }
            Identifier::Port { path, interface } => {
                with_interface(format!("port:{path}"), *interface)
            }
            Identifier::Network(addr) => format!("net:{addr}"),
            Identifier::Node(node) => format!("node:{node}"),
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The node aliases among the identifiers.
pub fn node_aliases(ids: &[Identifier]) -> impl Iterator<Item = String> + '_ {
    ids.iter().filter_map(|id| match id {
        Identifier::Node(node) => Some(format!("node:{node}")),
        _ => None,
    })
}

/// The stable device id for an identity key: 16 hex digits of FNV-1a 64.
pub fn device_id_for(identity_key: &str) -> String {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = identity_key
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME));
    format!("{hash:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serial(s: &str) -> Identifier {
        Identifier::Serial {
            serial: s.into(),
            interface: None,
        }
    }
    fn port(p: &str) -> Identifier {
        Identifier::Port {
            path: p.into(),
            interface: None,
        }
    }

    #[test]
    fn serial_beats_port() {
        let rules = IdentityRules::default();
        let key = rules.identity_key(&[port("pci-0:1"), serial("ABC123")]);
        assert_eq!(key.as_deref(), Some("serial:ABC123"));
    }

    #[test]
    fn denylisted_serial_falls_back_to_port() {
        let rules = IdentityRules::default();
        for bogus in ["0123456789ABCDEF", "0000", "????????????", "", "  "] {
            let key = rules.identity_key(&[serial(bogus), port("pci-0:1")]);
            assert_eq!(key.as_deref(), Some("port:pci-0:1"), "serial {bogus:?}");
        }
    }

    #[test]
    fn denylist_is_case_insensitive_and_configurable() {
        let rules = IdentityRules::new(["deadbeef".to_string()]);
        assert!(!rules.serial_is_usable("DEADBEEF"));
        assert!(
            rules.serial_is_usable("0000"),
            "replaced list no longer has 0000"
        );
    }

    #[test]
    fn interfaces_of_one_adapter_get_distinct_keys() {
        let rules = IdentityRules::default();
        let a = rules.identity_key(&[Identifier::Serial {
            serial: "FT1".into(),
            interface: Some(0),
        }]);
        let b = rules.identity_key(&[Identifier::Serial {
            serial: "FT1".into(),
            interface: Some(1),
        }]);
        assert_ne!(a, b);
        assert_eq!(b.as_deref(), Some("serial:FT1/if01"));
    }

    #[test]
    fn nodes_alone_have_no_identity_key() {
        let rules = IdentityRules::default();
        assert_eq!(
            rules.identity_key(&[Identifier::Node("/dev/ttyS0".into())]),
            None
        );
    }

    #[test]
    fn device_id_is_stable_and_distinct() {
        assert_eq!(device_id_for("serial:A"), device_id_for("serial:A"));
        assert_ne!(device_id_for("serial:A"), device_id_for("serial:B"));
        assert_eq!(device_id_for("serial:A").len(), 16);
    }
}
