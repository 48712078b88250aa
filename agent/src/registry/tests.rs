//! Registry behaviour, tested as plain functions: no tokio, no I/O.

use super::*;
use proptest::prelude::*;
use rae_protocol::AttrValue;

fn sid(n: u128) -> Uuid {
    Uuid::from_u128(n)
}

fn attrs(pairs: &[(&str, &str)]) -> Attrs {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), AttrValue::from(*v)))
        .collect()
}

fn usb(syspath: &str, serial: &str, port: &str, pairs: &[(&str, &str)]) -> Observation {
    Observation::present(
        FacetKey::new(Source::Udev, syspath),
        vec![
            Identifier::Serial {
                serial: serial.into(),
                interface: None,
            },
            Identifier::Port {
                path: port.into(),
                interface: None,
            },
        ],
        attrs(pairs),
    )
}

fn gone(syspath: &str) -> Observation {
    Observation::absent(FacetKey::new(Source::Udev, syspath))
}

/// Feeds an observation and applies the result, as the registry task does.
fn step(reg: &mut Registry, obs: &Observation, now: u64, session: u128) -> Vec<Event> {
    let t = reg.observe(obs, now, sid(session));
    let events: Vec<Event> = t.events().cloned().collect();
    reg.apply(t);
    events
}

fn kinds(events: &[Event]) -> Vec<&'static str> {
    events.iter().map(|e| e.kind.name()).collect()
}

#[test]
fn attach_opens_a_session_starting_at_seq_1() {
    let mut reg = Registry::new(RegistryConfig::default());
    let ev = step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "X")]),
        10,
        1,
    );
    assert_eq!(kinds(&ev), ["attached"]);
    assert_eq!(ev[0].seq, 1);
    assert_eq!(ev[0].session_id, sid(1));
    assert_eq!(
        ev[0].kind,
        EventKind::Attached {
            attrs: attrs(&[("state", "online"), ("usb.model", "X")])
        }
    );
}

#[test]
fn observing_the_same_attributes_again_produces_nothing() {
    let mut reg = Registry::new(RegistryConfig::default());
    let obs = usb("/a", "S1", "p1", &[("usb.model", "X")]);
    step(&mut reg, &obs, 10, 1);
    let t = reg.observe(&obs, 20, sid(2));
    assert!(t.is_durable_noop(), "{t:?}");
}

#[test]
fn a_changed_attribute_produces_one_changed_event_with_the_next_seq() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "X")]),
        10,
        1,
    );
    let ev = step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "Y")]),
        20,
        2,
    );
    assert_eq!(kinds(&ev), ["changed"]);
    assert_eq!(ev[0].seq, 2);
    assert_eq!(ev[0].session_id, sid(1));
}

#[test]
fn a_tty_facet_joins_its_usb_parent_and_leaves_again() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "X")]),
        10,
        1,
    );
    let tty = usb("/a/tty", "S1", "p1", &[("tty.node", "/dev/ttyUSB0")]);
    let ev = step(&mut reg, &tty, 11, 2);
    assert_eq!(kinds(&ev), ["changed"]);
    assert_eq!(reg.devices().count(), 1, "one record for usb + tty");
    let ev = step(&mut reg, &gone("/a/tty"), 12, 3);
    assert_eq!(
        ev[0].kind,
        EventKind::Changed {
            set: Attrs::new(),
            removed: vec!["tty.node".into()]
        }
    );
}

#[test]
fn a_device_back_within_the_grace_period_keeps_its_session() {
    let mut reg = Registry::new(RegistryConfig::default());
    let obs = usb("/a", "S1", "p1", &[("usb.model", "X")]);
    step(&mut reg, &obs, 1_000, 1);
    assert!(step(&mut reg, &gone("/a"), 2_000, 2).is_empty());
    assert_eq!(reg.next_deadline_ms(), Some(7_000));
    assert!(reg.expire(6_999).is_durable_noop());
    let ev = step(&mut reg, &obs, 3_000, 3);
    assert_eq!(kinds(&ev), ["changed"]);
    assert_eq!(ev[0].session_id, sid(1));
    assert_eq!(ev[0].seq, 2);
    let EventKind::Changed { set, .. } = &ev[0].kind else {
        panic!("not a change: {:?}", ev[0]);
    };
    assert_eq!(set.get(RECONNECTS_ATTR), Some(&AttrValue::Int(1)));
    assert!(reg.expire(100_000).is_durable_noop());
}

#[test]
fn a_device_gone_past_the_grace_period_is_detached_and_returns_with_a_new_session() {
    let mut reg = Registry::new(RegistryConfig::default());
    let obs = usb("/a", "S1", "p1", &[("usb.model", "X")]);
    step(&mut reg, &obs, 1_000, 1);
    step(&mut reg, &gone("/a"), 2_000, 2);
    let t = reg.expire(7_000);
    let ev: Vec<Event> = t.events().cloned().collect();
    reg.apply(t);
    assert_eq!(kinds(&ev), ["detached"]);
    assert_eq!(
        ev[0].kind,
        EventKind::Detached {
            reason: REASON_UNPLUGGED.into()
        }
    );
    assert_eq!(ev[0].seq, 2);
    let ev = step(&mut reg, &obs, 8_000, 9);
    assert_eq!(kinds(&ev), ["attached"]);
    assert_eq!((ev[0].session_id, ev[0].seq), (sid(9), 1));
    assert_eq!(reg.devices().count(), 1, "same device id across re-plugs");
}

#[test]
fn the_state_attribute_combines_the_facets_opinions_by_precedence() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1, 1);
    let adb = |state: &str| {
        Observation::present(
            FacetKey::new(Source::Adb, "S1"),
            vec![Identifier::Serial {
                serial: "S1".into(),
                interface: None,
            }],
            attrs(&[("state", state)]),
        )
    };
    let ev = step(&mut reg, &adb("unauthorized"), 2, 2);
    assert_eq!(
        ev[0].kind,
        EventKind::Changed {
            set: attrs(&[("state", "unauthorized")]),
            removed: vec![]
        }
    );
    let ev = step(&mut reg, &adb("online"), 3, 3);
    assert_eq!(kinds(&ev), ["changed"]);
    let ev = step(
        &mut reg,
        &Observation::absent(FacetKey::new(Source::Adb, "S1")),
        4,
        4,
    );
    assert!(ev.is_empty(), "back to no opinion = online: no change");
    assert_eq!(reg.devices().count(), 1, "udev and adb are one record");
}

#[test]
fn a_device_missing_on_one_transport_but_present_on_another_is_not_detached() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1, 1);
    let adb = Observation::present(
        FacetKey::new(Source::Adb, "S1"),
        vec![Identifier::Serial {
            serial: "S1".into(),
            interface: None,
        }],
        attrs(&[("state", "online")]),
    );
    step(&mut reg, &adb, 2, 2);
    step(&mut reg, &gone("/a"), 3, 3);
    assert!(reg.expire(1_000_000).is_durable_noop());
    assert_eq!(reg.next_deadline_ms(), None);
}

#[test]
fn an_adb_over_tcp_device_is_its_own_device_keyed_by_its_adb_serial() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1, 1);
    let tcp = Observation::present(
        FacetKey::new(Source::Adb, "192.168.1.50:5555"),
        vec![Identifier::Network("192.168.1.50:5555".into())],
        attrs(&[("state", "online")]),
    );
    step(&mut reg, &tcp, 2, 2);
    assert_eq!(reg.devices().count(), 2);
    let id = identity::device_id_for("net:192.168.1.50:5555");
    assert_eq!(
        reg.device(&id).map(|d| d.identity.as_str()),
        Some("net:192.168.1.50:5555")
    );
}

#[test]
fn a_phone_seen_by_udev_and_adb_is_one_device_with_both_attribute_sets() {
    let mut reg = Registry::new(RegistryConfig::default());
    let phone = usb("/p", "R58M12ABCDE", "p3", &[("usb.model", "Pixel 7")]);
    step(&mut reg, &phone, 1, 1);
    let adb = Observation::present(
        FacetKey::new(Source::Adb, "R58M12ABCDE"),
        vec![Identifier::Serial {
            serial: "R58M12ABCDE".into(),
            interface: None,
        }],
        attrs(&[("android.product.model", "Pixel 7"), ("state", "online")]),
    );
    step(&mut reg, &adb, 2, 2);
    let devices: Vec<_> = reg.devices().collect();
    assert_eq!(devices.len(), 1);
    assert!(devices[0].attrs.contains_key("usb.model"));
    assert!(devices[0].attrs.contains_key("android.product.model"));
}

#[test]
fn two_devices_sharing_a_denylisted_serial_on_different_ports_stay_two_devices() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "0123456789ABCDEF", "p1", &[]), 1, 1);
    step(&mut reg, &usb("/b", "0123456789ABCDEF", "p2", &[]), 1, 2);
    assert_eq!(reg.devices().count(), 2);
}

#[test]
fn one_serial_on_two_ports_is_one_device() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1, 1);
    step(&mut reg, &gone("/a"), 2, 2);
    let ev = step(&mut reg, &usb("/b", "S1", "p2", &[]), 3, 3);
    assert_eq!(reg.devices().count(), 1);
    assert_eq!(kinds(&ev), ["changed"], "re-plugged elsewhere within grace");
}

#[test]
fn a_node_only_observation_joins_the_device_that_claims_the_node() {
    let mut reg = Registry::new(RegistryConfig::default());
    let mut tty = usb("/a/tty", "S1", "p1", &[("tty.node", "/dev/ttyUSB0")]);
    tty.identifiers
        .push(Identifier::Node("/dev/ttyUSB0".into()));
    step(&mut reg, &tty, 1, 1);
    let probe = Observation::present(
        FacetKey::new(Source::Serial, "/dev/ttyUSB0"),
        vec![Identifier::Node("/dev/ttyUSB0".into())],
        attrs(&[("serial.banner", "U-Boot")]),
    );
    step(&mut reg, &probe, 2, 2);
    assert_eq!(reg.devices().count(), 1);
    let ttys0 = Observation::present(
        FacetKey::new(Source::Serial, "/dev/ttyS0"),
        vec![Identifier::Node("/dev/ttyS0".into())],
        attrs(&[]),
    );
    step(&mut reg, &ttys0, 3, 3);
    assert_eq!(
        reg.devices().count(),
        2,
        "an unclaimed node is its own device"
    );
}

fn snapshot_of(reg: &Registry) -> Snapshot {
    Snapshot {
        devices: reg.devices().cloned().collect(),
        aliases: reg
            .aliases
            .iter()
            .map(|(a, d)| (a.clone(), d.clone()))
            .collect(),
    }
}

#[test]
fn after_a_restart_a_present_device_continues_its_session() {
    let mut reg = Registry::new(RegistryConfig::default());
    let obs = usb("/a", "S1", "p1", &[("usb.model", "X")]);
    step(&mut reg, &obs, 1, 1);
    step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "Y")]),
        2,
        2,
    );
    let mut reg = Registry::from_snapshot(RegistryConfig::default(), snapshot_of(&reg));
    let same = usb("/a", "S1", "p1", &[("usb.model", "Y")]);
    assert!(step(&mut reg, &same, 3, 3).is_empty());
    let t = reg.reconcile(Source::Udev, 4);
    assert!(t.is_durable_noop(), "{t:?}");
    reg.apply(t);
    let ev = step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "Z")]),
        5,
        5,
    );
    assert_eq!((ev[0].session_id, ev[0].seq), (sid(1), 3));
}

#[test]
fn after_a_restart_a_device_gone_meanwhile_is_detached_as_missing_at_start() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1, 1);
    step(&mut reg, &usb("/b", "S2", "p2", &[]), 1, 2);
    step(&mut reg, &usb("/c", "S3", "p3", &[]), 1, 3);
    step(&mut reg, &gone("/c"), 2, 4); // missing within grace when the agent died
    let mut reg = Registry::from_snapshot(RegistryConfig::default(), snapshot_of(&reg));
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 3, 5);
    let t = reg.reconcile(Source::Udev, 4);
    let mut detached: Vec<(String, u64)> = t
        .events()
        .map(|e| {
            assert_eq!(
                e.kind,
                EventKind::Detached {
                    reason: REASON_MISSING_AT_START.into()
                }
            );
            (e.device_id.clone(), e.seq)
        })
        .collect();
    detached.sort();
    let mut want = vec![
        (identity::device_id_for("serial:S2"), 2),
        (identity::device_id_for("serial:S3"), 2),
    ];
    want.sort();
    assert_eq!(detached, want);
    reg.apply(t);
    assert!(reg.reconcile(Source::Udev, 5).is_durable_noop());
}

#[test]
fn a_grace_period_that_ran_out_while_the_agent_was_down_waits_for_the_first_scan() {
    let mut reg = Registry::new(RegistryConfig::default());
    let obs = usb("/a", "S1", "p1", &[]);
    step(&mut reg, &obs, 1_000, 1);
    step(&mut reg, &gone("/a"), 2_000, 2);
    let mut reg = Registry::from_snapshot(RegistryConfig::default(), snapshot_of(&reg));
    assert_eq!(reg.next_deadline_ms(), None);
    assert!(
        reg.expire(60_000).is_durable_noop(),
        "no detach before the scan"
    );
    let ev = step(&mut reg, &obs, 60_000, 3);
    assert_eq!(kinds(&ev), ["changed"], "plugged back in: same session");
    assert_eq!(ev[0].session_id, sid(1));
    let t = reg.reconcile(Source::Udev, 60_001);
    reg.apply(t);
    step(&mut reg, &gone("/a"), 61_000, 4);
    assert_eq!(
        reg.next_deadline_ms(),
        Some(66_000),
        "timers run after the scan"
    );
}

#[test]
fn a_disabled_probes_devices_are_forgotten_at_start_without_ending_the_wait_for_a_scan() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(&mut reg, &usb("/a", "S1", "p1", &[]), 1_000, 1); // udev only
    step(&mut reg, &usb("/b", "S2", "p2", &[]), 1_000, 2); // udev and adb
    let adb_s2 = Observation::present(
        FacetKey::new(Source::Adb, "S2"),
        vec![Identifier::Serial {
            serial: "S2".into(),
            interface: None,
        }],
        attrs(&[]),
    );
    step(&mut reg, &adb_s2, 1_000, 2);
    let adb_s3 = Observation::present(
        FacetKey::new(Source::Adb, "S3"),
        vec![Identifier::Serial {
            serial: "S3".into(),
            interface: None,
        }],
        attrs(&[]),
    );
    step(&mut reg, &adb_s3, 1_000, 3);
    step(
        &mut reg,
        &Observation::absent(FacetKey::new(Source::Adb, "S3")),
        2_000,
        3,
    ); // S3 was missing, in its grace period, when the agent stopped
    let mut reg = Registry::from_snapshot(RegistryConfig::default(), snapshot_of(&reg));

    let t = reg.forget_disabled(Source::Udev, 60_000);
    let detached: Vec<String> = t.events().map(|e| e.device_id.clone()).collect();
    assert_eq!(
        detached,
        [identity::device_id_for("serial:S1")],
        "only the device seen by udev alone is detached"
    );
    assert!(t.events().all(|e| e.kind
        == EventKind::Detached {
            reason: REASON_MISSING_AT_START.into()
        }));
    reg.apply(t);
    assert_eq!(
        reg.next_deadline_ms(),
        None,
        "the grace period of S3 still waits for the ADB probe's first scan"
    );
    assert!(reg.forget_disabled(Source::Udev, 60_001).is_durable_noop());
    let t = reg.reconcile(Source::Adb, 60_002);
    let detached: Vec<String> = t.events().map(|e| e.device_id.clone()).collect();
    assert_eq!(
        detached,
        [
            identity::device_id_for("serial:S2"),
            identity::device_id_for("serial:S3")
        ],
        "S2 is not seen by the first ADB scan either; S3 ran out meanwhile"
    );
}

#[test]
fn a_checkpoint_takes_the_next_seq_and_carries_the_full_record() {
    let mut reg = Registry::new(RegistryConfig::default());
    step(
        &mut reg,
        &usb("/a", "S1", "p1", &[("usb.model", "X")]),
        1,
        1,
    );
    step(&mut reg, &usb("/b", "S2", "p2", &[]), 1, 2);
    step(&mut reg, &gone("/b"), 2, 3); // missing: no checkpoint
    let t = reg.checkpoint(3, None);
    let ev: Vec<Event> = t.events().cloned().collect();
    reg.apply(t);
    assert_eq!(ev.len(), 1);
    assert_eq!((ev[0].session_id, ev[0].seq), (sid(1), 2));
    assert_eq!(
        ev[0].kind,
        EventKind::Checkpoint {
            attrs: attrs(&[("state", "online"), ("usb.model", "X")])
        }
    );
    assert!(
        reg.checkpoint(4, Some(sid(99))).is_durable_noop(),
        "unknown session"
    );
    assert_eq!(reg.checkpoint(4, Some(sid(1))).events().count(), 1);
}

#[derive(Debug, Clone)]
enum Op {
    Plug(usize, u8),
    Unplug(usize),
    Wait(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0usize..3, 0u8..3).prop_map(|(d, v)| Op::Plug(d, v)),
        (0usize..3).prop_map(Op::Unplug),
        (0u64..8_000).prop_map(Op::Wait),
    ]
}

proptest! {
    #[test]
    fn seq_is_gapless_per_session_for_any_history(ops in proptest::collection::vec(op(), 1..60)) {
        let mut reg = Registry::new(RegistryConfig::default());
        let mut now = 0u64;
        let mut next_sid = 1u128;
        let mut per_session: BTreeMap<Uuid, Vec<Event>> = BTreeMap::new();
        for op in ops {
            let t = match op {
                Op::Plug(d, v) => {
                    let o = usb(&format!("/d{d}"), &format!("S{d}"), "p", &[("v", &v.to_string())]);
                    next_sid += 1;
                    reg.observe(&o, now, sid(next_sid))
                }
                Op::Unplug(d) => reg.observe(&gone(&format!("/d{d}")), now, sid(0)),
                Op::Wait(ms) => { now += ms; reg.expire(now) }
            };
            for e in t.events() {
                per_session.entry(e.session_id).or_default().push(e.clone());
            }
            reg.apply(t);
        }
        for events in per_session.values() {
            for (i, e) in events.iter().enumerate() {
                prop_assert_eq!(e.seq, i as u64 + 1);
            }
            prop_assert_eq!(events[0].kind.name(), "attached");
            let detaches = events.iter().filter(|e| e.kind.name() == "detached").count();
            prop_assert!(detaches <= 1);
            if detaches == 1 {
                prop_assert_eq!(events.last().map(|e| e.kind.name()), Some("detached"));
            }
        }
    }
}
