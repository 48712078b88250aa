//! Mapping and diffing of device lists, without I/O.

use super::*;
use crate::registry::Presence;

fn entry(serial: &str, state: &str, transport_id: &str) -> DeviceEntry {
    let online = state == "device";
    DeviceEntry {
        serial: serial.into(),
        state: state.into(),
        devpath: Some("usb:1-1".into()),
        product: online.then(|| "panther".into()),
        model: online.then(|| "Pixel_7".into()),
        device: online.then(|| "panther".into()),
        transport_id: Some(transport_id.into()),
    }
}

fn props(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn wanted() -> Vec<String> {
    [
        "ro.product.model",
        "ro.serialno",
        "ro.build.version.release",
    ]
    .map(String::from)
    .to_vec()
}

fn text(obs: &Observation, key: &str) -> Option<String> {
    match obs.attrs.get(key) {
        Some(AttrValue::Text(s)) => Some(s.clone()),
        _ => None,
    }
}

#[test]
fn every_adb_state_maps_to_a_liveness_state() {
    for (adb, state) in [
        ("device", "online"),
        ("offline", "offline"),
        ("unauthorized", "unauthorized"),
        ("authorizing", "authorizing"),
        ("recovery", "recovery"),
        ("bootloader", "bootloader"),
        ("sideload", "sideload"),
        ("connecting", "connecting"),
        ("rescue", "offline"),
        ("host", "offline"),
        ("no permissions (missing udev rules?)", "offline"),
    ] {
        assert_eq!(liveness(adb), state, "{adb}");
    }
}

#[test]
fn tcp_and_mdns_serials_are_network_endpoints_and_others_are_serials() {
    for serial in [
        "192.168.1.50:5555",
        "localhost:5555",
        "[fe80::1]:5555",
        "adb-28101FDH2000AB-6uNIq1._adb-tls-connect._tcp",
        "adb-28101FDH2000AB-6uNIq1._adb-tls-connect._tcp.",
    ] {
        assert_eq!(
            identifiers(serial),
            [Identifier::Network(serial.into())],
            "{serial}"
        );
    }
    for serial in ["R58M12ABCDE", "emulator-5554", "host:port", "weird:0"] {
        assert_eq!(
            identifiers(serial),
            [Identifier::Serial {
                serial: serial.into(),
                interface: None
            }],
            "{serial}"
        );
    }
}

#[test]
fn properties_are_named_android_dot_the_name_without_ro() {
    assert_eq!(property_attr("ro.product.model"), "android.product.model");
    assert_eq!(property_attr("ro.serialno"), "android.serialno");
    assert_eq!(
        property_attr("persist.sys.timezone"),
        "android.persist.sys.timezone"
    );
}

#[test]
fn a_new_device_is_observed_with_its_list_attributes_and_due_for_a_fetch() {
    let mut table = DeviceTable::default();
    let (obs, fetches) = table.update(vec![entry("S1", "device", "3")]);
    assert_eq!(obs.len(), 1);
    assert_eq!(obs[0].facet, FacetKey::new(Source::Adb, "S1"));
    assert_eq!(obs[0].presence, Presence::Present);
    assert_eq!(text(&obs[0], "state").as_deref(), Some("online"));
    assert_eq!(
        text(&obs[0], "android.adb_state").as_deref(),
        Some("device")
    );
    assert_eq!(
        text(&obs[0], "android.model_name").as_deref(),
        Some("Pixel_7")
    );
    assert_eq!(text(&obs[0], "android.product").as_deref(), Some("panther"));
    assert_eq!(text(&obs[0], "android.device").as_deref(), Some("panther"));
    assert_eq!(
        obs[0].attrs.get("android.transport_id"),
        Some(&AttrValue::Int(3))
    );
    assert_eq!(
        fetches,
        [Fetch {
            serial: "S1".into(),
            generation: 1
        }]
    );
}

#[test]
fn an_unchanged_list_reports_nothing_and_fetches_nothing() {
    let mut table = DeviceTable::default();
    table.update(vec![entry("S1", "device", "3")]);
    let (obs, fetches) = table.update(vec![entry("S1", "device", "3")]);
    assert!(obs.is_empty() && fetches.is_empty());
}

#[test]
fn entering_device_state_fetches_once_until_the_device_leaves_it() {
    let mut table = DeviceTable::default();
    let (obs, fetches) = table.update(vec![entry("S1", "unauthorized", "3")]);
    assert_eq!(text(&obs[0], "state").as_deref(), Some("unauthorized"));
    assert!(fetches.is_empty(), "an unauthorized device cannot be asked");
    let (obs, fetches) = table.update(vec![entry("S1", "device", "3")]);
    assert_eq!(text(&obs[0], "state").as_deref(), Some("online"));
    assert_eq!(fetches.len(), 1);
    let (_, fetches) = table.update(vec![entry("S1", "offline", "3")]);
    assert!(fetches.is_empty());
    let (_, fetches) = table.update(vec![entry("S1", "device", "3")]);
    assert_eq!(
        fetches,
        [Fetch {
            serial: "S1".into(),
            generation: 2
        }]
    );
    let (_, fetches) = table.update(vec![entry("S1", "device", "4")]);
    assert_eq!(fetches.len(), 1, "a new transport is a new visit");
}

#[test]
fn fetched_properties_become_attributes_and_stale_fetches_are_ignored() {
    let mut table = DeviceTable::default();
    let (_, first) = table.update(vec![entry("S1", "device", "3")]);
    table.update(vec![entry("S1", "offline", "3")]);
    let (_, second) = table.update(vec![entry("S1", "device", "3")]);
    let found = props(&[
        ("ro.product.model", "Pixel 7"),
        ("ro.serialno", "S1"),
        ("other", "x"),
    ]);
    assert_eq!(
        table.apply_props(&first[0], Ok(found.clone()), &wanted()),
        None,
        "stale"
    );
    let obs = table
        .apply_props(&second[0], Ok(found), &wanted())
        .expect("changed");
    assert_eq!(
        text(&obs, "android.product.model").as_deref(),
        Some("Pixel 7")
    );
    assert_eq!(text(&obs, "android.serialno").as_deref(), Some("S1"));
    assert_eq!(
        text(&obs, "android.build.version.release"),
        None,
        "not on the device"
    );
    assert_eq!(text(&obs, "android.other"), None, "not configured");
    assert_eq!(text(&obs, "state").as_deref(), Some("online"));
}

#[test]
fn a_failed_fetch_sets_probe_error_and_keeps_earlier_properties() {
    let mut table = DeviceTable::default();
    let (_, f) = table.update(vec![entry("S1", "device", "3")]);
    table.apply_props(&f[0], Ok(props(&[("ro.serialno", "S1")])), &wanted());
    table.update(vec![entry("S1", "offline", "3")]);
    let (obs, f) = table.update(vec![entry("S1", "device", "3")]);
    assert_eq!(
        text(&obs[0], "android.serialno").as_deref(),
        Some("S1"),
        "kept across states"
    );
    let obs = table
        .apply_props(&f[0], Err("closed".into()), &wanted())
        .expect("changed");
    assert_eq!(text(&obs, "android.probe_error").as_deref(), Some("closed"));
    assert_eq!(text(&obs, "android.serialno").as_deref(), Some("S1"));
    table.update(vec![entry("S1", "offline", "3")]);
    let (_, f) = table.update(vec![entry("S1", "device", "3")]);
    let obs = table
        .apply_props(&f[0], Ok(props(&[("ro.serialno", "S1")])), &wanted())
        .expect("changed");
    assert_eq!(
        text(&obs, "android.probe_error"),
        None,
        "cleared by a success"
    );
}

#[test]
fn a_vanished_device_is_absent_and_clear_reports_every_device_absent() {
    let mut table = DeviceTable::default();
    table.update(vec![
        entry("S1", "device", "1"),
        entry("S2", "offline", "2"),
    ]);
    let (obs, _) = table.update(vec![entry("S2", "offline", "2")]);
    assert_eq!(obs, [Observation::absent(FacetKey::new(Source::Adb, "S1"))]);
    let (obs, _) = table.update(vec![
        entry("S1", "device", "5"),
        entry("S2", "offline", "2"),
    ]);
    assert_eq!(obs.len(), 1, "S1 is new again");
    let gone = table.clear();
    assert_eq!(gone.len(), 2);
    assert!(gone.iter().all(|o| o.presence == Presence::Absent));
    assert!(table.is_empty());
}

#[test]
fn a_snapshot_reports_every_device_present() {
    let mut table = DeviceTable::default();
    table.update(vec![entry("192.168.1.50:5555", "device", "1")]);
    let snap = table.snapshot();
    assert_eq!(snap.len(), 1);
    assert_eq!(
        snap[0].identifiers,
        [Identifier::Network("192.168.1.50:5555".into())]
    );
}
