//! The agent's MQTT uplink end to end: the real `rae-agent` binary, a real
//! mosquitto, a recording subscriber and a fake adb server whose device
//! state changes make the agent journal a stream of events (`[udev]
//! enabled = false`); the setup is `rae_tests::mqtt_sub::lab::Lab`.
//!
//! What arrived is compared with the journal (`assert_delivered`): after
//! dedupe by `(session_id, seq)` every journal event must have arrived with
//! the same bytes, in journal order per session, nothing else may have
//! arrived, and every event must end `published = 1`.
//!
//! The broker runs with `persistence false`, so a killed broker forgets the
//! subscriber's session; the subscriber resubscribes on reconnect. So that
//! this race cannot lose events the agent publishes right after the restart,
//! the agent is SIGSTOPped while the broker restarts and SIGCONTed once the
//! subscriber has resubscribed. Every wait is bounded. The agent binary must
//! be built (`cargo build -p rae-agent`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use rae_protocol::EventKind;
use rae_tests::agent::{check_sessions, wait_until, EventRow};
use rae_tests::mqtt_sub::lab::{Lab, PHONES, RAE, WAIT};
use rae_tests::mqtt_sub::{
    assert_delivered, dedupe_by_session_seq, device_envelopes, records, resync_payload,
    status_field, statuses, Message, Subscriber,
};

/// Runs `scenario` in a [`Lab`] in a fresh temp dir.
fn in_lab(
    mqtt_extra: &str,
    login: Option<(&str, &str)>,
    scenario: impl FnOnce(&mut Lab) -> Result<()>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    Lab::new(dir.path(), mqtt_extra, login)?.run(scenario)
}

#[test]
fn events_reach_a_subscriber_in_journal_order_with_gapless_seq_per_session() -> Result<()> {
    in_lab("", None, |lab| {
        let sub = lab.subscribe("uplink-order")?;
        lab.start_agent()?;
        let toggler = lab.toggle();
        std::thread::sleep(Duration::from_millis(1500));
        ensure!(toggler.stop(lab)? >= 48, "too few steps");
        let (rows, messages) = lab.converge(&sub)?;
        ensure!(
            rows.iter().any(|r| r.kind == "detached"),
            "no unplug journaled: {rows:#?}"
        );
        let received = device_envelopes(&messages)?;
        // Nothing failed, so nothing may have been sent twice.
        ensure!(
            dedupe_by_session_seq(received.clone()).len() == received.len(),
            "duplicates"
        );
        assert_delivered(&rows, received)?;

        // A fresh subscriber gets the retained status and, per session, the
        // last checkpoint unless the session ended (cleared by an empty retained).
        let fresh = lab.subscribe("uplink-order-fresh")?;
        std::thread::sleep(Duration::from_millis(500));
        let retained = fresh.messages();
        ensure!(retained.iter().all(|m| m.retain), "{retained:#?}");
        let status = statuses(&retained, RAE);
        ensure!(
            status.len() == 1 && status[0].1.as_deref() == Some("online"),
            "{status:#?}"
        );
        let detached: BTreeSet<&str> = rows
            .iter()
            .filter(|r| r.kind == "detached")
            .map(|r| r.session_id.as_str())
            .collect();
        let mut want = BTreeMap::new();
        for r in rows
            .iter()
            .filter(|r| r.kind == "checkpoint" && !detached.contains(r.session_id.as_str()))
        {
            want.insert(r.session_id.clone(), r.payload.clone());
        }
        let got: BTreeMap<String, Vec<u8>> = device_envelopes(&retained)?
            .into_iter()
            .map(|r| (r.session(), r.message.payload))
            .collect();
        let cleared = rows
            .iter()
            .filter(|r| r.kind == "checkpoint" && detached.contains(r.session_id.as_str()))
            .count();
        eprintln!(
            "{} events in {} sessions; {} retained checkpoints, {cleared} cleared by a detach",
            rows.len(),
            check_sessions(&rows)?.len(),
            want.len()
        );
        ensure!(
            got == want,
            "retained checkpoints {:?}, expected those of {:?}",
            got.keys(),
            want.keys()
        );
        Ok(())
    })
}

#[test]
fn a_broker_killed_mid_stream_and_restarted_loses_no_event() -> Result<()> {
    in_lab("", None, |lab| {
        let sub = lab.subscribe("uplink-broker-kill")?;
        lab.start_agent()?;
        let toggler = lab.toggle();
        sub.wait_for("20 device messages", WAIT, |m| {
            Ok((device_envelopes(m)?.len() >= 20).then_some(()))
        })?;
        lab.broker.kill()?;
        let at_kill = lab.events()?.len();
        std::thread::sleep(Duration::from_millis(1500));
        let subacks = sub.subacks();
        lab.agent()?.signal(libc::SIGSTOP)?;
        let restarted = lab
            .broker
            .restart()
            .and_then(|()| sub.wait_resubscribed(subacks, WAIT));
        let pending = lab.events()?.iter().filter(|r| !r.published).count();
        lab.agent()?.signal(libc::SIGCONT)?;
        restarted?;
        std::thread::sleep(Duration::from_millis(1000));
        toggler.stop(lab)?;
        let (rows, messages) = lab.converge(&sub)?;
        ensure!(
            rows.len() > at_kill + 10,
            "too few events during and after the outage"
        );
        ensure!(
            messages.iter().any(|m| m.connection >= 2),
            "nothing after the restart"
        );
        let received = device_envelopes(&messages)?;
        eprintln!(
            "{at_kill} events at the broker kill, {pending} unpublished at its restart, \
             {} in all; {} received, {} after dedupe",
            rows.len(),
            received.len(),
            dedupe_by_session_seq(received.clone()).len()
        );
        assert_delivered(&rows, received)
    })
}

#[test]
fn an_agent_killed_mid_publish_and_restarted_loses_no_event() -> Result<()> {
    in_lab("", None, |lab| {
        let sub = lab.subscribe("uplink-agent-kill")?;
        lab.start_agent()?;
        let toggler = lab.toggle();
        sub.wait_for("20 device messages", WAIT, |m| {
            Ok((device_envelopes(m)?.len() >= 20).then_some(()))
        })?;
        // Kill as soon as an event is seen journaled but not yet acknowledged.
        let _ = wait_until("an unpublished event", Duration::from_secs(3), || {
            Ok(lab.events()?.iter().any(|r| !r.published).then_some(()))
        });
        lab.agent()?.kill_hard()?;
        let pending = lab.events()?.iter().filter(|r| !r.published).count();
        eprintln!("SIGKILLed the agent with {pending} events not yet acknowledged");
        std::thread::sleep(Duration::from_millis(500));
        lab.start_agent()?;
        std::thread::sleep(Duration::from_millis(1500));
        toggler.stop(lab)?;
        let (rows, messages) = lab.converge(&sub)?;
        lab.agent()?.ensure_running()?;
        assert_delivered(&rows, device_envelopes(&messages)?)
    })
}

#[test]
fn a_resync_command_publishes_checkpoints_and_a_garbage_command_is_only_counted() -> Result<()> {
    in_lab("", None, |lab| {
        let sub = lab.subscribe("uplink-resync")?;
        lab.start_agent()?;
        let before = lab.settle(&sub, |rows| {
            records(rows).is_ok_and(|r| r.len() == PHONES.len())
        })?;
        let present = records(&before)?;
        let last = check_sessions(&before)?;
        let sessions: Vec<String> = present.keys().cloned().collect();
        let one = sessions[0].clone();
        // Checkpoint wanted: session → seq.
        let mut want: BTreeMap<String, u64> =
            sessions.iter().map(|s| (s.clone(), last[s] + 1)).collect();
        let has = |want: &BTreeMap<String, u64>, rows: &[EventRow]| {
            want.iter()
                .all(|(s, seq)| rows.iter().any(|r| &r.session_id == s && r.seq == *seq))
        };

        sub.command(RAE, "resync", b"")?;
        lab.converge_until(&sub, "a checkpoint per session", |rows| has(&want, rows))?;
        want.insert(one.clone(), last[&one] + 2);
        sub.command(RAE, "resync", &resync_payload(&one)?)?;
        lab.converge_until(&sub, "a second checkpoint of one session", |rows| {
            has(&want, rows)
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let (rows, messages) = lab.converge(&sub)?;
        let new = &rows[before.len()..];
        ensure!(
            new.len() == sessions.len() + 1,
            "expected a checkpoint per session, then one: {new:#?}"
        );
        for r in new {
            let EventKind::Checkpoint { attrs } = r.kind()? else {
                anyhow::bail!("not a checkpoint: {r:?}");
            };
            let record = &present[&r.session_id];
            ensure!(
                &attrs == record,
                "checkpoint {r:?} is not the full record {record:?}"
            );
        }
        assert_delivered(&rows, device_envelopes(&messages)?)?;

        // A fresh subscriber gets the latest checkpoint of each session, retained.
        let fresh = lab.subscribe("uplink-resync-fresh")?;
        fresh.wait_for("retained checkpoints", WAIT, |m| {
            let got: BTreeMap<String, u64> = device_envelopes(m)?
                .iter()
                .filter(|r| r.message.retain && r.envelope.kind.name() == "checkpoint")
                .map(|r| (r.session(), r.envelope.seq))
                .collect();
            Ok((got == want).then_some(()))
        })?;

        // Garbage: undecodable payload, unknown command, malformed session id.
        sub.command(RAE, "resync", b"\xff\x00 garbage")?;
        sub.command(RAE, "format-everything", b"")?;
        sub.command(RAE, "resync", &resync_payload("not-a-uuid")?)?;
        let up = lab.wait_uplink("commands_rejected = 3", |u| u["commands_rejected"] == 3)?;
        ensure!(up["connected"] == true, "{up}");
        std::thread::sleep(Duration::from_millis(500));
        let end = lab.events()?;
        ensure!(
            end.len() == rows.len(),
            "garbage changed the journal: {:#?}",
            &end[rows.len()..]
        );
        ensure!(
            lab.uplink_status()?["commands_rejected"] == 3,
            "counted more"
        );
        Ok(())
    })
}

#[test]
fn the_last_will_says_offline_after_sigkill_and_the_agent_says_it_itself_on_sigterm() -> Result<()>
{
    in_lab("keepalive_secs = 60", None, |lab| {
        let sub = lab.subscribe("uplink-will")?;
        let count = |sub: &Subscriber| statuses(&sub.messages(), RAE).len();
        lab.start_agent()?;
        let online = sub.wait_status(RAE, 0, "online", WAIT)?;
        for key in ["agent_version", "started_ms", "boot_count"] {
            ensure!(
                status_field(&online.payload, key).is_some(),
                "status without {key}: {online:?}"
            );
        }
        let seen = count(&sub);
        lab.agent()?.kill_hard()?;
        sub.wait_status(RAE, seen, "offline", Duration::from_secs(5))?;
        let fresh = lab.subscribe("uplink-will-fresh")?;
        let will = fresh.wait_status(RAE, 0, "offline", Duration::from_secs(2))?;
        ensure!(will.retain, "status not retained: {will:?}");

        let seen = count(&sub);
        lab.start_agent()?;
        let again = sub.wait_status(RAE, seen, "online", WAIT)?;
        let boots = |m: &Message| {
            status_field(&m.payload, "boot_count")
                .and_then(|v| v.as_integer())
                .map(i128::from)
        };
        ensure!(
            boots(&again) > boots(&online),
            "boot_count did not grow: {online:?} {again:?}"
        );
        let (seen, mark) = (count(&sub), lab.broker.log_text().len());
        lab.agent()?.signal(libc::SIGTERM)?;
        // keepalive is 60 s: an offline this soon is the agent's own (or a
        // will fired because the connection closed without a DISCONNECT,
        // which the broker log below tells apart).
        sub.wait_status(RAE, seen, "offline", Duration::from_secs(5))?;
        let exit = lab
            .agent()?
            .wait_timeout(WAIT)?
            .context("the agent did not exit on SIGTERM")?;
        ensure!(exit.success(), "exit {exit}");
        let log = lab.broker.log_text()[mark..].to_string();
        let topic = format!("'rae/v1/{RAE}/status'");
        let published = log
            .lines()
            .find(|l| l.contains("Received PUBLISH from") && l.contains(&topic));
        ensure!(
            published.is_some_and(|l| l.contains(", r1,")),
            "the broker received no retained status PUBLISH from the agent after SIGTERM:\n{log}"
        );
        let ends: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("disconnected") || l.contains("closed its"))
            .collect();
        eprintln!("after SIGTERM the broker logged: {published:?}, then {ends:?}");
        Ok(())
    })
}

#[test]
fn bad_credentials_are_retried_until_the_broker_accepts_them_without_a_restart() -> Result<()> {
    let creds = "username = \"rae\"\npassword = \"agent-pw\"";
    in_lab(creds, Some(("rae", "broker-pw")), |lab| {
        lab.start_agent()?;
        wait_until("two refused connections", WAIT, || {
            Ok((lab.broker.log_text().matches("not authorised").count() >= 2).then_some(()))
        })?;
        let up = lab.wait_uplink("connected: false with an auth error", |u| {
            let err: String = u["last_error"]
                .as_str()
                .unwrap_or("")
                .to_lowercase()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect();
            u["connected"] == false && (err.contains("notauthori") || err.contains("badusername"))
        })?;
        let pid = lab.agent()?.pid();
        lab.agent()?.ensure_running()?;
        ensure!(
            up["broker"]
                .as_str()
                .is_some_and(|b| b.contains(&lab.broker.port().to_string())),
            "{up}"
        );

        lab.broker.set_password("rae", "agent-pw")?;
        lab.broker.reload()?;
        let sub =
            Subscriber::connect_as(lab.broker.port(), "uplink-auth", Some(("rae", "agent-pw")))?;
        sub.wait_status(RAE, 0, "online", WAIT)?;
        lab.wait_uplink("connected: true", |u| u["connected"] == true)?;
        lab.agent()?.ensure_running()?;
        ensure!(lab.agent()?.pid() == pid);
        let (rows, messages) = lab.converge(&sub)?;
        assert_delivered(&rows, device_envelopes(&messages)?)
    })
}

#[test]
fn a_long_outage_over_the_backlog_bound_is_compacted_and_the_cloud_state_still_converges(
) -> Result<()> {
    // `mqtt_extra` goes at the end of the config, so a new table may follow.
    let extra = "\n[journal]\nmax_backlog_events = 25\n";
    in_lab(extra, None, |lab| {
        let sub = lab.subscribe("uplink-outage")?;
        lab.start_agent()?;
        wait_until("a first event published", WAIT, || {
            let rows = lab.events().unwrap_or_default();
            Ok(rows.iter().any(|r| r.published).then_some(()))
        })?;
        lab.broker.kill()?;
        let toggler = lab.toggle();
        wait_until("a backlog over its bound", WAIT, || {
            let pending = lab.events()?.iter().filter(|r| !r.published).count();
            Ok((pending > 60).then_some(()))
        })?;
        toggler.stop(lab)?;
        // The registry task checks the bound every 10 s.
        let runtime = wait_until("a compaction", Duration::from_secs(25), || {
            let out = rae_tests::agent::cli(&lab.binary, &lab.config, &["status", "--json"], WAIT)?;
            let v: serde_json::Value = serde_json::from_str(&out.stdout)?;
            let done = v["runtime"]["compactions"].as_u64().unwrap_or(0) > 0;
            Ok(done.then_some(v))
        })?;
        let pending = lab.events()?.iter().filter(|r| !r.published).count();
        ensure!(
            pending <= 25 + PHONES.len(),
            "{pending} unpublished after compaction"
        );
        eprintln!(
            "compacted: {pending} unpublished, dropped {}",
            runtime["runtime"]["dropped_events"]
        );
        let subacks = sub.subacks();
        lab.agent()?.signal(libc::SIGSTOP)?;
        let restarted = lab
            .broker
            .restart()
            .and_then(|()| sub.wait_resubscribed(subacks, WAIT));
        lab.agent()?.signal(libc::SIGCONT)?;
        restarted?;
        // Compaction folds deltas into checkpoints, so journal seqs may
        // jump (by design); what must hold is the rebuilt state.
        let (_rows, messages) = lab.converge(&sub)?;
        // Rebuild each session as a consumer would: dedupe, order by seq,
        // a checkpoint replaces, a change applies, a detach ends it.
        let mut received = dedupe_by_session_seq(device_envelopes(&messages)?);
        received.sort_by_key(|r| (r.session(), r.envelope.seq));
        let mut cloud: BTreeMap<String, rae_protocol::Attrs> = BTreeMap::new();
        for r in &received {
            match &r.envelope.kind {
                EventKind::Attached { attrs } | EventKind::Checkpoint { attrs } => {
                    cloud.insert(r.session(), attrs.clone());
                }
                EventKind::Changed { set, removed } => {
                    let rec = cloud.entry(r.session()).or_default();
                    rec.extend(set.clone());
                    rec.retain(|k, _| !removed.contains(k));
                }
                EventKind::Detached { .. } => {
                    cloud.remove(&r.session());
                }
            }
        }
        let devices =
            rae_tests::agent::devices_json(&lab.binary, &lab.config)?.context("devices --json")?;
        let mut live = 0;
        for d in &devices {
            let Some(session) = d["session_id"].as_str() else {
                continue;
            };
            live += 1;
            let want: rae_protocol::Attrs = serde_json::from_value(d["attrs"].clone())?;
            ensure!(
                cloud.get(session) == Some(&want),
                "session {session}: cloud {:?} != agent {want:?}",
                cloud.get(session)
            );
        }
        ensure!(
            live > 0 && cloud.len() == live,
            "cloud has {} live sessions, agent {live}",
            cloud.len()
        );
        Ok(())
    })
}
