//! Mapping recorded udev property sets (committed fixtures in
//! `agent/fixtures/udev/`) to observations, and through the registry.

use super::*;
use crate::config::Settings;
use crate::registry::{Registry, RegistryConfig};
use std::path::Path;

fn fixture(name: &str) -> UdevRecord {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures/udev")
        .join(name);
    let text = std::fs::read_to_string(&path).expect("fixture exists");
    serde_json::from_str(&text).expect("fixture parses")
}

fn defaults() -> UdevSettings {
    Settings::from_toml("", Path::new("/"))
        .expect("defaults")
        .udev
}

fn text(obs: &Observation, key: &str) -> Option<String> {
    obs.attrs.get(key).map(|v| v.to_string())
}

#[test]
fn a_usb_device_maps_to_usb_attributes_and_serial_then_port_identifiers() {
    let obs = map(&fixture("ftdi_usb_device.json"), &defaults()).expect("tracked");
    assert_eq!(
        obs.facet,
        FacetKey::new(
            Source::Udev,
            "/sys/devices/pci0000:00/0000:00:14.0/usb1/1-2"
        )
    );
    assert_eq!(text(&obs, "usb.vendor_id").as_deref(), Some("0403"));
    assert_eq!(text(&obs, "usb.product_id").as_deref(), Some("6001"));
    assert_eq!(
        text(&obs, "usb.vendor").as_deref(),
        Some("Future Technology Devices International, Ltd")
    );
    assert_eq!(
        text(&obs, "usb.model").as_deref(),
        Some("FT232 Serial (UART) IC")
    );
    assert_eq!(text(&obs, "usb.serial").as_deref(), Some("A10KZ3X9"));
    assert_eq!(
        text(&obs, "usb.path").as_deref(),
        Some("pci-0000:00:14.0-usb-0:2")
    );
    assert_eq!(obs.attrs.get("usb.speed"), Some(&AttrValue::Int(12)));
    assert_eq!(
        obs.identifiers,
        vec![
            Identifier::Serial {
                serial: "A10KZ3X9".into(),
                interface: None
            },
            Identifier::Port {
                path: "pci-0000:00:14.0-usb-0:2".into(),
                interface: None
            },
        ]
    );
}

#[test]
fn hubs_and_root_hubs_are_excluded_by_default() {
    assert_eq!(map(&fixture("root_hub.json"), &defaults()), None);
}

#[test]
fn a_tty_on_interface_zero_joins_its_usb_parent_record() {
    let s = defaults();
    let mut reg = Registry::new(RegistryConfig::default());
    for name in ["ftdi_usb_device.json", "ftdi_tty.json"] {
        let obs = map(&fixture(name), &s).expect("tracked");
        let t = reg.observe(&obs, 1, uuid::Uuid::now_v7());
        reg.apply(t);
    }
    let devices: Vec<_> = reg.devices().collect();
    assert_eq!(devices.len(), 1);
    let d = devices[0];
    assert_eq!(
        d.attrs.get("tty.node"),
        Some(&AttrValue::from("/dev/ttyUSB0"))
    );
    assert_eq!(
        d.attrs.get("usb.serial"),
        Some(&AttrValue::from("A10KZ3X9"))
    );
    assert_eq!(
        reg.resolve_alias("node:/dev/ttyUSB0"),
        Some(d.device_id.as_str())
    );
}

#[test]
fn a_tty_on_another_interface_of_a_multi_port_adapter_is_its_own_device() {
    let obs = map(&fixture("quad_ftdi_tty_if02.json"), &defaults()).expect("tracked");
    assert_eq!(obs.attrs.get("usb.interface"), Some(&AttrValue::Int(2)));
    assert_eq!(text(&obs, "tty.node").as_deref(), Some("/dev/ttyUSB3"));
    assert_eq!(text(&obs, "usb.model").as_deref(), Some("Quad_RS232-HS"));
    let key = RegistryConfig::default()
        .rules
        .identity_key(&obs.identifiers);
    assert_eq!(key.as_deref(), Some("serial:FT4QUAD1/if02"));
}

#[test]
fn a_tty_without_a_usb_parent_is_left_to_the_serial_probe() {
    assert_eq!(map(&fixture("platform_ttyS0.json"), &defaults()), None);
}

#[test]
fn a_denylisted_serial_makes_the_port_the_identity() {
    let obs = map(&fixture("bogus_serial_board.json"), &defaults()).expect("tracked");
    let key = RegistryConfig::default()
        .rules
        .identity_key(&obs.identifiers);
    assert_eq!(key.as_deref(), Some("port:pci-0000:00:14.0-usb-0:4"));
}

#[test]
fn without_a_udev_database_sysfs_attributes_and_the_kernel_port_are_used() {
    let obs = map(&fixture("no_udev_database.json"), &defaults()).expect("tracked");
    assert_eq!(text(&obs, "usb.vendor_id").as_deref(), Some("2341"));
    assert_eq!(text(&obs, "usb.model").as_deref(), Some("Uno"));
    assert_eq!(
        text(&obs, "usb.serial").as_deref(),
        Some("75833353934351B05101")
    );
    assert!(obs.identifiers.contains(&Identifier::Port {
        path: "usb-1-1.3".into(),
        interface: None
    }));
}

#[test]
fn include_rules_limit_tracking_to_matching_devices() {
    let text = "[udev]\ninclude = [{ ID_VENDOR_ID = \"18d1\" }]\n";
    let s = Settings::from_toml(text, Path::new("/"))
        .expect("settings")
        .udev;
    assert!(map(&fixture("android_phone.json"), &s).is_some());
    assert!(map(&fixture("ftdi_usb_device.json"), &s).is_none());
    assert!(
        map(&fixture("ftdi_tty.json"), &s).is_none(),
        "parent not tracked"
    );
}

#[test]
fn a_removal_is_an_absent_observation_of_the_same_facet() {
    let added = map(&fixture("ftdi_tty.json"), &defaults()).expect("tracked");
    let removed = map_removed(&fixture("ftdi_tty.json").syspath);
    assert_eq!(removed.facet, added.facet);
    assert_eq!(removed.presence, crate::registry::Presence::Absent);
}
