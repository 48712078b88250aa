//! `rae-cloud-ingest devices` against a real PostgreSQL holding rows as the
//! registry writes them.

#![allow(clippy::unwrap_used)]

use rae_tests::postgres::Postgres;
use std::path::{Path, PathBuf};
use std::process::Command;

/// `target/<profile>/rae-cloud-ingest`, checked to be newer than its sources.
fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let binary = exe
        .parent()
        .and_then(Path::parent)
        .unwrap()
        .join("rae-cloud-ingest");
    rae_tests::agent::check_binary_with_hint(&binary, "cargo build -p rae-cloud-ingest").unwrap();
    binary
}

struct Db {
    _dir: tempfile::TempDir,
    _pg: Postgres,
    config: std::path::PathBuf,
}

fn db() -> Db {
    let dir = tempfile::tempdir().unwrap();
    let pg = Postgres::start(&dir.path().join("pg")).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[database]\nurl = \"{}\"\n", pg.url())).unwrap();
    let out = run(&config, &["migrate"]);
    assert!(out.0, "{}", out.2);
    pg.query(
        "INSERT INTO devices VALUES
           ('lab1', 'ftdi-1', '01900000-0000-7000-8000-000000000001', now(), now()),
           ('lab1', 'phone-2', '01900000-0000-7000-8000-000000000002', now(), now()),
           ('lab2', 'ftdi-3', '01900000-0000-7000-8000-000000000003', now(), now());
         INSERT INTO device_sessions (session_id, rae_id, device_id, last_seq, stale, started_ms, ended_ms, end_reason, updated_at) VALUES
           ('01900000-0000-7000-8000-000000000001', 'lab1', 'ftdi-1', 4, false, 1000, NULL, NULL, now()),
           ('01900000-0000-7000-8000-000000000002', 'lab1', 'phone-2', 9, true, 2000, NULL, NULL, now()),
           ('01900000-0000-7000-8000-000000000003', 'lab2', 'ftdi-3', 2, false, 3000, 3500, 'unplugged', now());
         INSERT INTO device_attributes VALUES
           ('01900000-0000-7000-8000-000000000001', 'vendor', 'text', 'ftdi', 1, now()),
           ('01900000-0000-7000-8000-000000000001', 'bus', 'int', '3', 1, now()),
           ('01900000-0000-7000-8000-000000000002', 'vendor', 'text', 'google', 1, now()),
           ('01900000-0000-7000-8000-000000000002', 'temp_c', 'float', '41.5', 9, now()),
           ('01900000-0000-7000-8000-000000000003', 'vendor', 'text', 'ftdi', 1, now()),
           ('01900000-0000-7000-8000-000000000003', 'powered', 'bool', 'true', 2, now());",
    )
    .unwrap();
    Db {
        _dir: dir,
        _pg: pg,
        config,
    }
}

fn run(config: &std::path::Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary())
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn devices_lists_every_device_per_box_as_a_table() {
    let db = db();
    let (ok, out, err) = run(&db.config, &["devices"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0].split_whitespace().collect::<Vec<_>>(),
        ["BOX", "DEVICE", "STATE", "SEQ", "ATTRIBUTES"]
    );
    assert_eq!(
        lines[1].split_whitespace().collect::<Vec<_>>(),
        ["lab1", "ftdi-1", "present", "4", "2"]
    );
    assert_eq!(
        lines[2].split_whitespace().collect::<Vec<_>>(),
        ["lab1", "phone-2", "stale", "9", "2"]
    );
    assert_eq!(
        lines[3].split_whitespace().collect::<Vec<_>>(),
        ["lab2", "ftdi-3", "detached", "2", "2"]
    );
    assert_eq!(lines[4], "3 device(s)");

    let (ok, out, _) = run(&db.config, &["devices", "--box", "lab2"]);
    assert!(ok);
    assert!(out.contains("ftdi-3") && !out.contains("ftdi-1"), "{out}");
}

#[test]
fn devices_filters_by_attribute_and_prints_typed_json() {
    let db = db();
    let (ok, out, err) = run(&db.config, &["devices", "--attr", "vendor=ftdi", "--json"]);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["ftdi-1", "ftdi-3"]);
    assert_eq!(v[0]["attributes"]["bus"], serde_json::json!(3));
    assert_eq!(v[1]["attributes"]["powered"], serde_json::json!(true));
    assert_eq!(v[1]["state"], "detached");
    assert_eq!(v[1]["session"]["end_reason"], "unplugged");

    let (ok, out, _) = run(
        &db.config,
        &[
            "devices",
            "--attr",
            "vendor=ftdi",
            "--attr",
            "bus=3",
            "--json",
        ],
    );
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v.as_array().unwrap().len(), 1);
}

#[test]
fn devices_show_prints_one_device_and_fails_for_an_unknown_one() {
    let db = db();
    let (ok, out, err) = run(&db.config, &["devices", "show", "phone-2"]);
    assert!(ok, "{err}");
    assert!(out.contains("state    stale"), "{out}");
    assert!(
        out.contains("session  01900000-0000-7000-8000-000000000002"),
        "{out}"
    );
    assert!(out.contains("temp_c  41.5"), "{out}");

    let (ok, out, _) = run(&db.config, &["devices", "show", "phone-2", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["attributes"]["temp_c"], serde_json::json!(41.5));
    assert_eq!(v["session"]["last_seq"], 9);

    let (ok, _, err) = run(&db.config, &["devices", "show", "nope"]);
    assert!(!ok);
    assert!(err.contains("no device \"nope\""), "{err}");
}

#[test]
fn a_usage_error_exits_64_and_help_exits_0() {
    for (args, want) in [
        (&["--bogus"][..], 64),
        (&["devices", "--attr", "no-equals-sign"][..], 64),
        (&["no-such-command"][..], 64),
        (&["--help"][..], 0),
        (&["--version"][..], 0),
    ] {
        let out = Command::new(binary()).args(args).output().unwrap();
        assert_eq!(
            out.status.code(),
            Some(want),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
