//! Liveness: every device carries a `state` attribute, combined across its
//! facets by precedence. A facet states its own view in its `state`
//! attribute (serial: `online`/`unresponsive`; ADB: the mapped adb state);
//! a facet without one (udev: the USB link is up) has no opinion.
//!
//! Precedence, best first: `online`, `unauthorized`, `authorizing`,
//! `recovery`, `sideload`, `bootloader`, `connecting`, `unresponsive`,
//! `offline`. The device's state is the best opinion of any present facet,
//! so a device that answers on any transport is `online`; with no opinion
//! at all it is `online` (it is enumerated). Unknown strings rank last.

use rae_protocol::{AttrValue, Attrs};

/// The attribute holding a facet's and a device's liveness.
pub const STATE_ATTR: &str = "state";
/// State of a device that no facet has an opinion about.
pub const DEFAULT_STATE: &str = "online";

/// Known states, best first.
pub const PRECEDENCE: &[&str] = &[
    "online",
    "unauthorized",
    "authorizing",
    "recovery",
    "sideload",
    "bootloader",
    "connecting",
    "unresponsive",
    "offline",
];

fn rank(state: &str) -> usize {
    PRECEDENCE
        .iter()
        .position(|s| *s == state)
        .unwrap_or(PRECEDENCE.len())
}

/// The combined state of a set of facet attribute maps.
pub fn combine<'a>(facets: impl IntoIterator<Item = &'a Attrs>) -> String {
    facets
        .into_iter()
        .filter_map(|a| match a.get(STATE_ATTR) {
            Some(AttrValue::Text(s)) => Some(s.as_str()),
            _ => None,
        })
        .min_by_key(|s| rank(s))
        .unwrap_or(DEFAULT_STATE)
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facet(state: Option<&str>) -> Attrs {
        state
            .map(|s| {
                [(STATE_ATTR.to_string(), AttrValue::from(s))]
                    .into_iter()
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn a_device_without_opinions_is_online() {
        assert_eq!(combine([&facet(None)]), "online");
    }

    #[test]
    fn the_best_opinion_wins() {
        let (a, b) = (facet(Some("unresponsive")), facet(Some("unauthorized")));
        assert_eq!(combine([&a, &b, &facet(None)]), "unauthorized");
        assert_eq!(
            combine([&facet(Some("offline")), &facet(Some("online"))]),
            "online"
        );
    }

    #[test]
    fn an_unknown_state_ranks_last_but_is_kept_when_alone() {
        assert_eq!(
            combine([&facet(Some("weird")), &facet(Some("offline"))]),
            "offline"
        );
        assert_eq!(combine([&facet(Some("weird"))]), "weird");
    }
}
