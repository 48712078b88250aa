//! Bridge throughput: MQTT → Kafka messages per second per core of the
//! bridge process, against a real mosquitto and a real Tansu.
//!
//! Run: `cargo build --release -p rae-cloud-ingest && cargo bench -p
//! rae-tests --bench bridge` (needs `tansu`: scripts/install-tansu).
//!
//! A publisher streams `N` device messages (200 bytes, 100 sessions) to
//! mosquitto on one connection, paced so that at most 800 are not yet acked by the bridge
//! (mosquitto's default `max_queued_messages` is 1000 per client and would
//! drop beyond it). The figure is `N / CPU seconds of the bridge process`
//! (utime + stime of every thread, from /proc/<pid>/stat), i.e. msgs/s per
//! fully busy core, plus the wall-clock rate. The baseline measured in the
//! same run is the same publisher against mosquitto with no subscriber:
//! the rate the load generator reaches on this machine, so a bridge rate
//! near it means the publisher, not the bridge, was the limit. Target:
//! ≥ 20,000 msgs/s per core (5× EMQX's published Kafka-sink figure). Then
//! the same paced stream through two bridges on one shared subscription
//! (over 101 and over 5 device topics): how many records reach Kafka after
//! a later message of their topic, and how far apart. Prints figures;
//! asserts nothing about timing.

#[path = "../tests/bridge_support/mod.rs"]
mod bridge_support;

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bridge_support::*;

const N: usize = 60_000;
const SESSIONS: usize = 100;
const PAYLOAD: usize = 200;
const WINDOW: usize = 800;
const CHUNK: usize = 200;
const TARGET_PER_CORE: f64 = 20_000.0;
/// How often the publisher checks the bridge's ack count while pacing.
const PACE_POLL: Duration = Duration::from_millis(2);

fn main() -> Result<()> {
    let binary = binary("cargo build --release -p rae-cloud-ingest")?;
    let lab = Lab::start()?;
    let msgs = padded_messages("bench", SESSIONS, N, PAYLOAD);

    // Baseline: the same publisher, no bridge (mosquitto drops them: no
    // subscriber), the ceiling of the load generator on this machine.
    let start = Instant::now();
    publish_stream(lab.mosquitto.port(), "bench-pub-base", &msgs, &[])?;
    let base_rate = N as f64 / start.elapsed().as_secs_f64();

    let config = lab.config("bench-bridge", 1000, "\"linger.ms\" = \"5\"")?;
    let bridge = Bridge::start_binary(&config, binary.clone())?;
    lab.wait_subscribed("bench-bridge", 1)?;
    let pid = bridge.pid().context("bridge pid")?;
    let tansu_pid = lab.tansu.pid().context("tansu pid")?;
    let cpu0 = cpu_secs(pid)?;
    let tansu0 = cpu_secs(tansu_pid)?;
    let start = Instant::now();
    let waiting = publish_stream(lab.mosquitto.port(), "bench-pub", &msgs, &[&bridge])?;
    bridge.wait_metric(
        "rae_bridge_mqtt_acks_total",
        N as i64,
        Duration::from_secs(120),
    )?;
    let wall = start.elapsed().as_secs_f64();
    let cpu = cpu_secs(pid)? - cpu0;
    let tansu_cpu = cpu_secs(tansu_pid)? - tansu0;
    let per_core = N as f64 / cpu;
    let records = lab.tansu.read(EVENTS, N, Duration::from_secs(120))?.len();

    println!("bridge bench: {N} messages of {PAYLOAD} B over {SESSIONS} device topics, mosquitto → bridge → Tansu (3 partitions)");
    println!("  publisher alone (baseline, same run): {base_rate:>10.0} msgs/s wall");
    println!(
        "  bridge wall-clock rate:               {:>10.0} msgs/s ({wall:.2} s)",
        N as f64 / wall
    );
    println!(
        "  publisher paused {:.2} s waiting for the bridge's acks (window {WINDOW})",
        waiting.as_secs_f64()
    );
    println!("  bridge CPU time:                      {cpu:>10.2} s (all threads)");
    println!("  bridge per core:                      {per_core:>10.0} msgs/s per core");
    println!(
        "  target {TARGET_PER_CORE:.0} msgs/s per core: ratio {:.2}",
        per_core / TARGET_PER_CORE
    );
    println!(
        "  bridge wall rate / publisher-alone rate: {:.2}",
        (N as f64 / wall) / base_rate
    );
    println!("  Tansu CPU time: {tansu_cpu:.2} s; records read back: {records}");
    drop(bridge);
    // Odd topic counts: mosquitto hands a shared subscription's messages
    // to its members in turn, so with two bridges and an even count each
    // topic would always reach the same bridge (no reorder possible).
    for topics in [SESSIONS + 1, 5] {
        let msgs = padded_messages("bench2", topics, N, PAYLOAD);
        two_bridges(binary.clone(), &msgs, topics)?;
    }
    Ok(())
}

/// Two bridges on one shared subscription (fresh mosquitto and Tansu), the
/// same paced stream: how often a topic's message reaches Kafka after a
/// later one of the same topic, and how far back (in offsets of its
/// partition) the first later one is. The registry applies each session's
/// envelopes of one batch in seq order and lets a gap in a batch's tail
/// wait for the next batch once, so an inversion costs a resync only when
/// it spans more than one batch.
fn two_bridges(binary: std::path::PathBuf, msgs: &[Msg], topics: usize) -> Result<()> {
    let lab = Lab::start()?;
    let configs = [
        lab.config("bench-bridge-1", 1000, "\"linger.ms\" = \"5\"")?,
        lab.config("bench-bridge-2", 1000, "\"linger.ms\" = \"5\"")?,
    ];
    let bridges = [
        Bridge::start_binary(&configs[0], binary.clone())?,
        Bridge::start_binary(&configs[1], binary)?,
    ];
    lab.wait_subscribed("bench-bridge-1", 1)?;
    lab.wait_subscribed("bench-bridge-2", 1)?;
    let start = Instant::now();
    publish_stream(
        lab.mosquitto.port(),
        "bench-pub-2",
        msgs,
        &[&bridges[0], &bridges[1]],
    )?;
    let records = lab
        .tansu
        .read(EVENTS, msgs.len(), Duration::from_secs(120))?;
    let wall = start.elapsed().as_secs_f64();
    let Inversions {
        parsed,
        inverted,
        mut distances,
    } = inversions(&records);
    anyhow::ensure!(
        parsed == msgs.len(),
        "{parsed} of {} records carried a topic and a message number",
        msgs.len()
    );
    distances.sort_unstable();
    let pct = |q: f64| {
        distances
            .get(((distances.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    let took: Vec<i64> = bridges
        .iter()
        .map(|b| b.metric("rae_bridge_messages_in_total").unwrap_or(0))
        .collect();
    println!(
        "two bridges, one shared subscription, {topics} device topics: {} records in {wall:.2} s (the bridges took {took:?}); {inverted} reached Kafka after a later message of their topic ({:.2}%)",
        records.len(),
        100.0 * inverted as f64 / records.len().max(1) as f64
    );
    println!(
        "  distance back to the first later message of the topic, in offsets of its partition: median {}, p99 {}, max {}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    Ok(())
}

/// Publishes `msgs` at QoS 1 on one connection (up to 100 unacked by
/// mosquitto) and waits for every PUBACK. With bridges in `pace`, before
/// each chunk of [`CHUNK`] it waits (polling `/metrics` every
/// [`PACE_POLL`]) until at most [`WINDOW`] messages are not yet acked by
/// them together (each takes about half with two); returns the
/// time spent so waiting. (A new connection per chunk, as `publish_all`
/// does, cost ~40 ms per chunk and capped the rate near 4,000 msgs/s.)
fn publish_stream(port: u16, client_id: &str, msgs: &[Msg], pace: &[&Bridge]) -> Result<Duration> {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        opts.set_inflight(100).set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(opts, 1000);
        let acked = Arc::new(AtomicUsize::new(0));
        let counter = acked.clone();
        let poller = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(e) => return anyhow::Result::<()>::Err(e.into()),
                }
            }
        });
        let mut waiting = Duration::ZERO;
        let mut sent = 0usize;
        for chunk in msgs.chunks(CHUNK) {
            if !pace.is_empty() {
                let floor = (sent + chunk.len()).saturating_sub(WINDOW) as i64;
                let t = Instant::now();
                let acked = || -> i64 {
                    pace.iter()
                        .map(|b| b.metric("rae_bridge_mqtt_acks_total").unwrap_or(0))
                        .sum()
                };
                while acked() < floor {
                    anyhow::ensure!(
                        t.elapsed() < Duration::from_secs(60),
                        "the bridges acked fewer than {floor} messages in 60 s"
                    );
                    tokio::time::sleep(PACE_POLL).await;
                }
                waiting += t.elapsed();
            }
            for m in chunk {
                client
                    .publish(m.topic.clone(), QoS::AtLeastOnce, false, m.payload.clone())
                    .await?;
            }
            sent += chunk.len();
        }
        let t = Instant::now();
        while acked.load(Ordering::Relaxed) < msgs.len() {
            anyhow::ensure!(!poller.is_finished(), "the publisher's connection failed");
            anyhow::ensure!(
                t.elapsed() < Duration::from_secs(120),
                "mosquitto acked {} of {} in 120 s",
                acked.load(Ordering::Relaxed),
                msgs.len()
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = client.try_disconnect();
        poller.abort();
        Ok(waiting)
    })
}

/// utime + stime of process `pid` (all threads), in seconds.
fn cpu_secs(pid: u32) -> Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the parenthesised command name; utime and stime are
    // fields 14 and 15 (1-based), i.e. 11 and 12 after ") ".
    let rest = stat.rsplit_once(") ").context("odd /proc stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / hz.max(1) as f64)
}
