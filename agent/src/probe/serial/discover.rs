//! Which ports the profiles select: `paths` globs over the entries of their
//! directory, and `match` rules over udev ttys (the tty's own properties
//! and attributes first, then its USB parent's).
//!
//! Invariants: only character devices are selected; a port is keyed by its
//! canonical path (so `/dev/serial/by-id/...` and `/dev/ttyUSB0` are one
//! port); a port selected by several profiles belongs to the first in
//! config order. Reading the filesystem and libudev, no port is opened.

use super::profile::SerialSettings;
use crate::config::MatchRule;
use crate::probe::rules::{self, Lookup};
use crate::probe::udev::{record_of, UdevRecord};
use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

/// Port path → index of the profile that probes it.
pub fn select(settings: &SerialSettings) -> io::Result<BTreeMap<String, usize>> {
    let needs_udev = settings.profiles.iter().any(|p| !p.match_rules.is_empty());
    let ttys = if needs_udev {
        tty_records()?
    } else {
        Vec::new()
    };
    let mut out = BTreeMap::new();
    for (i, profile) in settings.profiles.iter().enumerate() {
        let by_path = profile.paths.iter().flat_map(|p| expand(p));
        let by_rule = udev_matches(&profile.match_rules, &ttys);
        for port in by_path.chain(by_rule) {
            if let Some(port) = canonical_char_device(&port) {
                out.entry(port).or_insert(i);
            }
        }
    }
    Ok(out)
}

/// The paths a pattern names: itself if it has no wildcard, else the
/// entries of its directory whose name matches the last component.
pub fn expand(pattern: &str) -> Vec<PathBuf> {
    let (dir, file) = match pattern.rsplit_once('/') {
        Some(("", file)) => ("/", file),
        Some((dir, file)) => (dir, file),
        None => (".", pattern),
    };
    if !file.contains(['*', '?']) {
        return vec![PathBuf::from(pattern)];
    }
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            if e.kind() != io::ErrorKind::NotFound {
                log::debug!("serial probe: cannot list {dir}: {e}");
            }
            return Vec::new();
        }
    };
    let mut out: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|name| rules::glob(file, name))
        })
        .map(|e| e.path())
        .collect();
    out.sort();
    out
}

fn canonical_char_device(path: &Path) -> Option<String> {
    let real = fs::canonicalize(path).ok()?;
    let is_char = fs::metadata(&real)
        .map(|m| m.file_type().is_char_device())
        .unwrap_or(false);
    if !is_char {
        return None;
    }
    real.into_os_string().into_string().ok()
}

fn tty_records() -> io::Result<Vec<UdevRecord>> {
    let mut en = udev::Enumerator::new()?;
    en.match_subsystem("tty")?;
    Ok(en.scan_devices()?.map(|d| record_of(&d)).collect())
}

/// The device nodes of the ttys any rule matches.
pub fn udev_matches(match_rules: &[MatchRule], ttys: &[UdevRecord]) -> Vec<PathBuf> {
    if match_rules.is_empty() {
        return Vec::new();
    }
    ttys.iter()
        .filter(|t| {
            let view = TtyView(t);
            match_rules.iter().any(|r| rules::rule_matches(r, &view))
        })
        .filter_map(|t| t.devnode.as_ref().map(PathBuf::from))
        .collect()
}

/// A tty seen through its own keys, falling back to its USB parent's.
struct TtyView<'a>(&'a UdevRecord);

impl Lookup for TtyView<'_> {
    fn property(&self, name: &str) -> Option<&str> {
        Lookup::property(self.0, name)
            .or_else(|| Lookup::property(self.0.usb_parent.as_deref()?, name))
    }
    fn attribute(&self, name: &str) -> Option<&str> {
        Lookup::attribute(self.0, name)
            .or_else(|| Lookup::attribute(self.0.usb_parent.as_deref()?, name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(props: &[(&str, &str)], node: &str, parent: Option<UdevRecord>) -> UdevRecord {
        UdevRecord {
            subsystem: "tty".into(),
            devnode: Some(node.into()),
            properties: props
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            usb_parent: parent.map(Box::new),
            ..UdevRecord::default()
        }
    }

    #[test]
    fn rules_see_the_tty_and_then_its_usb_parent() {
        let parent = rec(&[("ID_VENDOR_ID", "0403")], "/dev/bus/usb/001/002", None);
        let ftdi = rec(&[("ID_PATH", "pci-0")], "/dev/ttyUSB0", Some(parent));
        let other = rec(&[("ID_VENDOR_ID", "0403")], "/dev/ttyS0", None);
        let plain = rec(&[], "/dev/ttyS1", None);
        let rule: MatchRule = [("ID_VENDOR_ID".to_string(), "04*".to_string())].into();
        let found = udev_matches(&[rule], &[ftdi, other, plain]);
        assert_eq!(
            found,
            vec![PathBuf::from("/dev/ttyUSB0"), PathBuf::from("/dev/ttyS0")]
        );
    }

    #[test]
    fn a_glob_lists_matching_entries_of_its_directory() {
        let d = tempfile::tempdir().expect("dir");
        for name in ["ttyUSB0", "ttyUSB1", "ttyACM0", "xttyUSB2"] {
            fs::write(d.path().join(name), b"").expect("file");
        }
        let dir = d.path().display();
        let found = expand(&format!("{dir}/ttyUSB*"));
        assert_eq!(
            found,
            vec![d.path().join("ttyUSB0"), d.path().join("ttyUSB1")]
        );
        assert_eq!(expand(&format!("{dir}/tty???0")).len(), 2);
        assert!(expand(&format!("{dir}/missing/*")).is_empty());
    }

    #[test]
    fn only_character_devices_are_selected() {
        let d = tempfile::tempdir().expect("dir");
        let file = d.path().join("ttyFAKE0");
        fs::write(&file, b"").expect("file");
        assert_eq!(canonical_char_device(&file), None);
        assert_eq!(
            canonical_char_device(Path::new("/dev/null")).as_deref(),
            Some("/dev/null")
        );
    }
}
