//! Attribute merging and diffing. Pure functions.
//!
//! Invariant: `diff(a, b)` is `None` exactly when `a == b`, so setting an
//! attribute to its current value never produces an event.

use super::liveness;
use super::observation::FacetKey;
use rae_protocol::{AttrValue, Attrs};
use std::collections::BTreeMap;

/// The merged view of a device's facets. On a key asserted by two facets,
/// the facet that sorts last wins (deterministic; sources rarely overlap
/// because each namespaces its attributes, e.g. `usb.*`, `android.*`),
/// except `state`, which is combined by liveness precedence.
pub fn merge_facets(facets: &BTreeMap<FacetKey, Attrs>) -> Attrs {
    let mut out = Attrs::new();
    for attrs in facets.values() {
        for (k, v) in attrs {
            out.insert(k.clone(), v.clone());
        }
    }
    out.insert(
        liveness::STATE_ATTR.to_string(),
        AttrValue::Text(liveness::combine(facets.values())),
    );
    out
}

/// What changed from `before` to `after`: attributes set (new or different
/// values) and attributes removed. `None` if nothing changed.
pub fn diff(before: &Attrs, after: &Attrs) -> Option<(Attrs, Vec<String>)> {
    let set: Attrs = after
        .iter()
        .filter(|(k, v)| before.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let removed: Vec<String> = before
        .keys()
        .filter(|k| !after.contains_key(*k))
        .cloned()
        .collect();
    if set.is_empty() && removed.is_empty() {
        None
    } else {
        Some((set, removed))
    }
}

/// Applies a diff to an attribute map (used by consumers and tests).
pub fn apply_diff(attrs: &mut Attrs, set: &Attrs, removed: &[String]) {
    for k in removed {
        attrs.remove(k);
    }
    for (k, v) in set {
        attrs.insert(k.clone(), v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn attrs(pairs: &[(&str, &str)]) -> Attrs {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), AttrValue::from(*v)))
            .collect()
    }

    #[test]
    fn identical_maps_have_no_diff() {
        let a = attrs(&[("usb.model", "X")]);
        assert_eq!(diff(&a, &a.clone()), None);
    }

    #[test]
    fn diff_reports_sets_and_removals() {
        let a = attrs(&[("a", "1"), ("b", "2")]);
        let b = attrs(&[("a", "1"), ("b", "3"), ("c", "4")]);
        let (set, removed) = diff(&a, &b).expect("a change");
        assert_eq!(set, attrs(&[("b", "3"), ("c", "4")]));
        assert!(removed.is_empty());
        let (set, removed) = diff(&b, &a).expect("a change");
        assert_eq!(set, attrs(&[("b", "2")]));
        assert_eq!(removed, vec!["c".to_string()]);
    }

    #[test]
    fn a_value_of_another_type_is_a_change() {
        let a: Attrs = [("n".to_string(), AttrValue::Int(1))].into();
        let b: Attrs = [("n".to_string(), AttrValue::Text("1".into()))].into();
        assert!(diff(&a, &b).is_some());
    }

    proptest! {
        #[test]
        fn applying_the_diff_reproduces_the_target(
            a in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
            b in proptest::collection::btree_map("[a-d]", "[x-z]", 0..5),
        ) {
            let a: Attrs = a.into_iter().map(|(k, v)| (k, AttrValue::Text(v))).collect();
            let b: Attrs = b.into_iter().map(|(k, v)| (k, AttrValue::Text(v))).collect();
            let mut applied = a.clone();
            if let Some((set, removed)) = diff(&a, &b) {
                apply_diff(&mut applied, &set, &removed);
            } else {
                prop_assert_eq!(&a, &b);
            }
            prop_assert_eq!(applied, b);
        }
    }
}
