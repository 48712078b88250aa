//! Tests of [`super`]: defaults, key names in errors, cross-field rules.

use super::*;

fn parse_str(s: &str) -> Result<Settings, ConfigError> {
    parse(s, Path::new("test.toml"))
}

#[test]
fn empty_config_gets_documented_defaults() {
    let s = parse_str("").unwrap();
    assert_eq!(s.mqtt.port, 1883);
    assert_eq!(s.mqtt.share_group, "rae-bridge");
    assert_eq!(s.mqtt.max_in_flight, 1000);
    assert_eq!(s.kafka.events_topic, "rae.device-events");
    assert_eq!(s.kafka.dlq_topic, "rae.device-events.dlq");
    assert_eq!(s.registry.batch_max_records, 1000);
    assert_eq!(s.registry.batch_max_wait_ms, 1000);
    assert_eq!(s.registry.batch_min_interval_ms, 100);
    assert_eq!(
        s.metrics.registry_listen,
        Some("127.0.0.1:9465".parse().unwrap())
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let e = parse_str("[kafka]\nbrokerz = \"x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("brokerz"), "{e}");
}

#[test]
fn out_of_range_values_name_the_key() {
    let e = parse_str("[registry]\nbatch_max_records = 0\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("registry.batch_max_records"), "{e}");
    let e = parse_str("[mqtt]\nbroker = \"tcp://x\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("mqtt.broker"), "{e}");
    let e = parse_str("[kafka]\nevents_topic = \"a b\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("kafka.events_topic"), "{e}");
}

#[test]
fn a_batch_min_interval_longer_than_the_batch_max_wait_is_rejected() {
    let e = parse_str("[registry]\nbatch_max_wait_ms = 200\nbatch_min_interval_ms = 300\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains(
            "registry.batch_min_interval_ms` is 300; expected at most registry.batch_max_wait_ms (200)"
        ),
        "{e}"
    );
    // A max wait below the default interval lowers the default.
    let s = parse_str("[registry]\nbatch_max_wait_ms = 50\n").unwrap();
    assert_eq!(s.registry.batch_min_interval_ms, 50);
    let s =
        parse_str("[registry]\nbatch_max_wait_ms = 200\nbatch_min_interval_ms = 200\n").unwrap();
    assert_eq!(s.registry.batch_min_interval_ms, 200);
}

#[test]
fn empty_metrics_listen_disables_the_endpoint() {
    let s = parse_str("[metrics]\nbridge_listen = \"\"\n").unwrap();
    assert_eq!(s.metrics.bridge_listen, None);
}

#[test]
fn mqtts_brokers_need_a_ca_file_and_default_to_port_8883() {
    let s = parse_str(
        "[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"/ca.pem\"\n\
         client_cert_file = \"/c.pem\"\nclient_key_file = \"/c.key\"\n",
    )
    .unwrap();
    assert_eq!((s.mqtt.host.as_str(), s.mqtt.port), ("b", 8883));
    let tls = s.mqtt.tls.unwrap();
    assert_eq!(tls.ca_file, PathBuf::from("/ca.pem"));
    assert_eq!(
        tls.client_auth,
        Some((PathBuf::from("/c.pem"), PathBuf::from("/c.key")))
    );
    assert!(parse_str("").unwrap().mqtt.tls.is_none());
    for (toml, key) in [
        ("broker = \"mqtts://b\"\n", "`mqtt.ca_file` is required"),
        (
            "broker = \"mqtt://b\"\nca_file = \"/ca.pem\"\n",
            "`mqtt.broker` uses mqtt:// but TLS files are set",
        ),
        (
            "broker = \"mqtts://b\"\nca_file = \"/ca.pem\"\nclient_cert_file = \"/c\"\n",
            "`mqtt.client_cert_file` and mqtt.client_key_file",
        ),
    ] {
        let e = parse_str(&format!("[mqtt]\n{toml}"))
            .unwrap_err()
            .to_string();
        assert!(e.contains(key), "{toml}: {e}");
    }
}

#[test]
fn database_url_tls_conflicts_and_bad_strings_name_the_key() {
    let s = parse_str(
        "[database]\nurl = \"postgresql://rae@db:26257/rae?sslmode=verify-full&sslrootcert=/ca.crt\"\n",
    )
    .unwrap();
    assert_eq!(s.database.tls.mode, crate::db::tls::SslMode::VerifyFull);
    let e = parse_str("[database]\nurl = \"host=db sslmode=prefer\"\n")
        .unwrap_err()
        .to_string();
    assert!(e.contains("`database.url` has sslmode=prefer"), "{e}");
    let e = parse_str("[database]\nurl = \"host=db sslpassword=x\"\n")
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("`database.url` is not a valid connection string"),
        "{e}"
    );
}

#[test]
fn missing_tls_files_fail_the_file_check_with_the_key_and_path() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.pem");
    let m = missing.display();
    for (toml, key) in [
        (
            format!("[mqtt]\nbroker = \"mqtts://b\"\nca_file = \"{m}\"\n"),
            "`mqtt.ca_file/client_cert_file/client_key_file` cannot be loaded: cannot read",
        ),
        (
            format!("[database]\nurl = \"host=db sslmode=verify-full sslrootcert={m}\"\n"),
            "`database.url` has TLS files that cannot be loaded: cannot read",
        ),
        (
            format!("[kafka.properties]\n\"ssl.ca.location\" = \"{m}\"\n"),
            "`kafka.properties.\"ssl.ca.location\"` names",
        ),
    ] {
        let s = parse_str(&toml).unwrap();
        let e = check_files(&s).unwrap_err().to_string();
        assert!(e.contains(key) && e.contains(&m.to_string()), "{toml}: {e}");
    }
    let s = parse_str("[kafka.properties]\n\"ssl.ca.location\" = \"probe\"\n").unwrap();
    check_files(&s).unwrap();
    check_files(&parse_str("").unwrap()).unwrap();
}

#[test]
fn example_config_parses() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/cloud-ingest.toml");
    load(&path).unwrap();
}

#[test]
fn kafka_properties_librdkafka_refuses_are_config_errors() {
    for (toml, problem) in [
        (
            "\"fetch.wait.max.mss\" = \"10\"",
            "`kafka.properties.\"fetch.wait.max.mss\"` is refused by librdkafka: No such configuration property",
        ),
        (
            "\"fetch.wait.max.ms\" = \"ten\"",
            "`kafka.properties.\"fetch.wait.max.ms\"` is refused by librdkafka: Invalid value",
        ),
    ] {
        let s = parse_str(&format!("[kafka.properties]\n{toml}\n")).unwrap();
        let e = check_kafka_properties(&s).unwrap_err().to_string();
        assert!(e.contains(problem), "{e}");
    }
    let ok =
        parse_str("[kafka.properties]\n\"client.id\" = \"x\"\n\"request.required.acks\" = \"1\"\n")
            .unwrap();
    check_kafka_properties(&ok).unwrap();
}
