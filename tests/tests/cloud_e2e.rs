//! End to end: the real agent (fed by the fake adb server) → mosquitto →
//! the real bridge → Tansu → the real registry → PostgreSQL. The database's
//! attributes of every session equal the agent's journal state; a gap makes
//! the registry ask for a resync, which reaches the agent over MQTT, and the
//! agent's checkpoint clears `stale`.

#![allow(clippy::unwrap_used)]

mod registry_support;

use anyhow::{ensure, Result};
use rae_protocol::{AttrValue, Envelope, EventKind};
use rae_tests::agent::EventRow;
use rae_tests::mqtt_sub::lab::{Lab, RAE};
use rae_tests::postgres::Postgres;
use rae_tests::tansu::Tansu;
use registry_support::*;
use std::collections::BTreeMap;
use std::process::Command;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

fn render(v: &AttrValue) -> String {
    match v {
        AttrValue::Text(s) => s.clone(),
        AttrValue::Int(i) => i.to_string(),
        AttrValue::Bool(b) => b.to_string(),
        AttrValue::Float(x) => x.to_string(),
    }
}

/// Per session: (last seq, attributes) replayed from the journal.
fn journal_state(rows: &[EventRow]) -> BTreeMap<String, (u64, BTreeMap<String, String>)> {
    let mut out: BTreeMap<String, (u64, BTreeMap<String, String>)> = BTreeMap::new();
    for r in rows {
        let env = Envelope::decode(&r.payload).unwrap();
        let (last, attrs) = out.entry(r.session_id.clone()).or_default();
        *last = env.seq;
        match env.kind {
            EventKind::Attached { attrs: a } | EventKind::Checkpoint { attrs: a } => {
                *attrs = a.iter().map(|(k, v)| (k.clone(), render(v))).collect();
            }
            EventKind::Changed { set, removed } => {
                for k in removed {
                    attrs.remove(&k);
                }
                for (k, v) in set {
                    attrs.insert(k, render(&v));
                }
            }
            EventKind::Detached { .. } => {}
        }
    }
    out
}

fn db_state(pg: &Postgres) -> BTreeMap<String, (u64, BTreeMap<String, String>)> {
    let mut out: BTreeMap<String, (u64, BTreeMap<String, String>)> = BTreeMap::new();
    for r in pg
        .query("SELECT session_id::text, last_seq::text FROM device_sessions")
        .unwrap_or_default()
    {
        let (Some(s), Some(l)) = (&r[0], &r[1]) else {
            continue;
        };
        out.entry(s.clone()).or_default().0 = l.parse().unwrap_or(0);
    }
    for r in pg
        .query("SELECT session_id::text, name, value FROM device_attributes")
        .unwrap_or_default()
    {
        let (Some(s), Some(n), Some(v)) = (&r[0], &r[1], &r[2]) else {
            continue;
        };
        out.entry(s.clone())
            .or_default()
            .1
            .insert(n.clone(), v.clone());
    }
    out
}

struct Cloud2 {
    pg: Postgres,
    tansu: Tansu,
    bridge: Registry,
    registry: Registry,
}

fn start_cloud(dir: &std::path::Path, lab: &Lab) -> Result<Cloud2> {
    let pg = Postgres::start(&dir.join("pg"))?;
    let tansu = Tansu::start(&dir.join("tansu"))?;
    tansu.create_topic(EVENTS, 3)?;
    tansu.create_topic(STATUS, 1)?;
    tansu.create_topic(COMMANDS, 1)?;
    tansu.create_topic(DLQ, 1)?;
    let config = dir.join("cloud.toml");
    std::fs::write(
        &config,
        format!(
            "log_level = \"info\"\n[mqtt]\nbroker = {:?}\nclient_id = \"e2e-bridge\"\nreconnect_max_backoff_secs = 1\n\
             [kafka]\nbrokers = {:?}\n[database]\nurl = {:?}\nretry_max_backoff_secs = 1\n\
             [registry]\nbatch_max_wait_ms = 100\n[metrics]\nbridge_listen = \"\"\nregistry_listen = \"\"\n",
            lab.broker.url(),
            tansu.bootstrap(),
            pg.url()
        ),
    )?;
    let bin = binary(BUILD_HINT)?;
    let out = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("migrate")
        .output()?;
    ensure!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registry = Registry::spawn(&config, &dir.join("registry.log"), bin.clone(), "registry")?;
    let bridge = Registry::spawn(&config, &dir.join("bridge.log"), bin, "bridge")?;
    Ok(Cloud2 {
        pg,
        tansu,
        bridge,
        registry,
    })
}

fn logs(c: &Cloud2) -> String {
    format!(
        "registry log:\n{}\nbridge log:\n{}",
        c.registry.log_tail(),
        c.bridge.log_tail()
    )
}

#[test]
fn the_database_converges_to_the_agents_journal_and_a_gap_is_healed_by_resync() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let lab = Lab::new(&dir.path().join("lab"), "", None)?;
    let cloud = start_cloud(dir.path(), &lab)?;
    lab.run(|lab| {
        let sub = lab.subscribe("e2e-watch")?;
        std::thread::sleep(Duration::from_secs(2)); // the bridge subscribes
        lab.start_agent()?;
        let toggler = lab.toggle();
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(toggler.stop(lab)? >= 40, "too few steps");
        let (rows, _) = lab.converge(&sub)?;
        let want = journal_state(&rows);
        ensure!(
            want.len() >= 3 && want.values().any(|(_, a)| !a.is_empty()),
            "too little to compare: {want:?}"
        );
        wait("the database equals the journal", CONVERGE, || {
            db_state(&cloud.pg) == want
        })
        .map_err(|e| {
            anyhow::anyhow!(
                "{e}\njournal: {want:#?}\ndb: {:#?}\n{}",
                db_state(&cloud.pg),
                logs(&cloud)
            )
        })?;
        ensure!(
            cloud
                .pg
                .scalar("SELECT count(*) FROM device_sessions WHERE stale")?
                == "0",
            "stale sessions"
        );
        ensure!(
            cloud.pg.scalar(&format!(
                "SELECT online::text FROM boxes WHERE rae_id = '{RAE}'"
            ))? == "true"
        );

        // A gap: an envelope of a live session from 3 seqs ahead, straight
        // into Kafka (as if the ones between were lost).
        let ended: Vec<&String> = rows
            .iter()
            .filter(|r| r.kind == "detached")
            .map(|r| &r.session_id)
            .collect();
        let live = rows
            .iter()
            .rev()
            .find(|r| !ended.contains(&&r.session_id))
            .expect("a live session");
        let last = want[&live.session_id].0;
        let mut env = Envelope::decode(&live.payload)?;
        env.seq = last + 3;
        env.kind = EventKind::Changed {
            set: Default::default(),
            removed: vec![],
        };
        let key = env.topic()?;
        let p = cloud
            .tansu
            .produce(EVENTS, key.as_bytes(), &env.encode()?, &[]);
        p?;
        let stale_sql = format!(
            "SELECT stale::text FROM device_sessions WHERE session_id = '{}'",
            live.session_id
        );
        wait("the session marked stale", CONVERGE, || {
            cloud.pg.scalar(&stale_sql).ok().as_deref() == Some("true")
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&cloud)))?;
        // The resync reaches the agent, which journals a checkpoint; the
        // registry applies it and clears stale.
        wait("stale cleared by the agent's checkpoint", CONVERGE, || {
            cloud.pg.scalar(&stale_sql).ok().as_deref() == Some("false")
        })
        .map_err(|e| anyhow::anyhow!("{e}\n{}", logs(&cloud)))?;
        let rows = lab.events()?;
        ensure!(
            rows.iter().any(|r| r.session_id == live.session_id
                && r.kind == "checkpoint"
                && r.seq == last + 1),
            "no checkpoint journaled for {}",
            live.session_id
        );
        let commands = cloud.tansu.read(COMMANDS, 2, Duration::from_secs(3))?;
        ensure!(commands.len() == 1, "{commands:?}");
        Ok(())
    })
}
