//! Kafka (Tansu) unavailable: the bridge stops acking and stops reading
//! (the broker holds the messages), its in-flight count stays within
//! `mqtt.max_in_flight`, and once Kafka is back every message arrives.
//!
//! Tansu runs with memory storage, so a killed Tansu comes back empty:
//! records written before the kill are gone with it (not the bridge's
//! doing). The test therefore checks only the messages published while
//! Tansu is down; it restarts Tansu empty and recreates the topics.
//!
//! A restarted Tansu has also forgotten the bridge's idempotent producer
//! id: the old producer's records are refused (unknown producer id, which
//! librdkafka retries internally until the delivery times out) forever, so
//! the bridge must replace its producer and produce every unacked message
//! again, in order. Without that, this test fails (nothing arrives).

mod bridge_support;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bridge_support::*;

#[test]
fn while_kafka_is_down_the_bridge_stops_acking_and_reading_and_loses_nothing_once_it_is_back(
) -> Result<()> {
    let mut lab = Lab::start()?;
    let max_in_flight = 5;
    // A 3 s delivery timeout (default 10 s) keeps the test short: the
    // producer is replaced after 3 timeouts in a row.
    let config = lab.config(
        "bridge-d",
        max_in_flight,
        "\"message.timeout.ms\" = \"3000\"\n",
    )?;
    let bridge = Bridge::start(&config)?;
    lab.wait_subscribed("bridge-d", 1)?;
    let warm = device_messages("box-w", 1, 3);
    publish_all(lab.mosquitto.port(), "pub-w", &warm)?;
    bridge.wait_metric("rae_bridge_mqtt_acks_total", 3, Duration::from_secs(30))?;

    lab.tansu.kill()?;
    let sent = device_messages("box-d", 4, 200);
    publish_all(lab.mosquitto.port(), "pub-d", &sent)?;
    bridge.wait_metric(
        "rae_bridge_in_flight",
        i64::from(max_in_flight),
        Duration::from_secs(30),
    )?;
    // Over a few seconds of outage: no ack, in-flight within the bound,
    // and reading stopped at the bound.
    for _ in 0..20 {
        let acks = bridge.metric("rae_bridge_mqtt_acks_total");
        let in_flight = bridge.metric("rae_bridge_in_flight").unwrap_or(-1);
        let taken = bridge.metric("rae_bridge_messages_in_total").unwrap_or(-1);
        ensure!(acks == Some(3), "acked while Kafka was down: {acks:?}");
        ensure!(
            (1..=i64::from(max_in_flight)).contains(&in_flight),
            "in flight {in_flight} outside 1..={max_in_flight}"
        );
        ensure!(
            taken <= 3 + i64::from(max_in_flight),
            "read {taken} messages with Kafka down (bound {max_in_flight})"
        );
        std::thread::sleep(Duration::from_millis(150));
    }
    let failures_down = bridge.metric("rae_bridge_delivery_failures_total");

    lab.tansu.restart()?;
    lab.create_topics()?;
    let records = read_all_of(&lab, EVENTS, &sent, Duration::from_secs(90))
        .with_context(|| format!("bridge log:\n{}", bridge.log_tail()))?;
    bridge.wait_metric(
        "rae_bridge_mqtt_acks_total",
        3 + sent.len() as i64,
        Duration::from_secs(30),
    )?;
    let replaced = bridge.metric("rae_bridge_producer_replacements_total");
    ensure!(
        replaced.is_some_and(|n| n >= 1),
        "every message arrived but the producer was never replaced ({replaced:?}): \
         the restarted broker accepted the old producer's id?"
    );
    eprintln!(
        "{} records for {} messages; delivery failures during the outage: {failures_down:?}; \
         producer replacements: {replaced:?}",
        records.len(),
        sent.len()
    );
    Ok(())
}
