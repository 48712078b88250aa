//! labgrid-style match rules: a device matches a rule when every key of the
//! rule matches, and a rule list matches when any rule does. Keys name udev
//! properties, or sysfs attributes as `attr:NAME`; values are globs with `*`
//! and `?`. Pure functions.

use crate::config::MatchRule;

/// Where a rule looks up its keys.
pub trait Lookup {
    fn property(&self, name: &str) -> Option<&str>;
    fn attribute(&self, name: &str) -> Option<&str>;
}

/// Whether `value` matches the glob `pattern` (`*` any run, `?` one char).
pub fn glob(pattern: &str, value: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let v: Vec<char> = value.chars().collect();
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// Whether every key of the rule matches.
pub fn rule_matches(rule: &MatchRule, dev: &impl Lookup) -> bool {
    rule.iter().all(|(key, pattern)| {
        let value = match key.strip_prefix("attr:") {
            Some(attr) => dev.attribute(attr),
            None => dev.property(key),
        };
        value.is_some_and(|v| glob(pattern, v.trim()))
    })
}

/// Included (or no include rules) and not excluded.
pub fn tracked(include: &[MatchRule], exclude: &[MatchRule], dev: &impl Lookup) -> bool {
    let included = include.is_empty() || include.iter().any(|r| rule_matches(r, dev));
    included && !exclude.iter().any(|r| rule_matches(r, dev))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    struct Dev(BTreeMap<String, String>, BTreeMap<String, String>);
    impl Lookup for Dev {
        fn property(&self, name: &str) -> Option<&str> {
            self.0.get(name).map(String::as_str)
        }
        fn attribute(&self, name: &str) -> Option<&str> {
            self.1.get(name).map(String::as_str)
        }
    }

    fn rule(pairs: &[(&str, &str)]) -> MatchRule {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn globs_match_like_a_shell() {
        assert!(glob("4ee?", "4ee7"));
        assert!(glob("pci-*-usb-0:9*", "pci-0000:00:14.0-usb-0:9.1"));
        assert!(glob("*", ""));
        assert!(!glob("4ee?", "4ee"));
        assert!(!glob("abc", "abcd"));
        assert!(glob("a*b*c", "axxbyyc"));
    }

    #[test]
    fn every_key_of_a_rule_must_match_and_any_rule_may() {
        let dev = Dev(
            rule(&[("ID_VENDOR_ID", "0403"), ("ID_MODEL_ID", "6001")]),
            rule(&[("bDeviceClass", "00")]),
        );
        assert!(rule_matches(&rule(&[("ID_VENDOR_ID", "0403")]), &dev));
        assert!(!rule_matches(
            &rule(&[("ID_VENDOR_ID", "0403"), ("ID_MODEL_ID", "6010")]),
            &dev
        ));
        assert!(tracked(
            &[
                rule(&[("ID_VENDOR_ID", "18d1")]),
                rule(&[("ID_MODEL_ID", "60*")])
            ],
            &[],
            &dev
        ));
    }

    #[test]
    fn exclude_wins_over_include_and_reads_sysfs_attributes() {
        let hub = Dev(
            rule(&[("ID_VENDOR_ID", "1d6b")]),
            rule(&[("bDeviceClass", "09")]),
        );
        let exclude = [rule(&[("attr:bDeviceClass", "09")])];
        assert!(!tracked(&[], &exclude, &hub));
        assert!(!tracked(
            &[rule(&[("ID_VENDOR_ID", "1d6b")])],
            &exclude,
            &hub
        ));
    }

    #[test]
    fn a_missing_key_does_not_match() {
        let dev = Dev(BTreeMap::new(), BTreeMap::new());
        assert!(!rule_matches(&rule(&[("ID_SERIAL_SHORT", "*")]), &dev));
    }
}
