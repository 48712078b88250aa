use super::*;

fn parse(text: &str) -> Result<SerialSettings, ConfigError> {
    let raw: RawSerialConfig =
        toml::from_str(text).map_err(|e| invalid("<toml>", e.to_string()))?;
    SerialSettings::validate(raw)
}

fn one_profile(extra: &str) -> String {
    format!("[[profiles]]\nname = \"p\"\npaths = [\"/dev/ttyUSB*\"]\nexpect = 'U-Boot'\n{extra}\n")
}

fn error_of(text: &str) -> String {
    parse(text).expect_err("must be refused").to_string()
}

#[test]
fn no_profile_means_the_probe_is_disabled_with_default_lock_dirs() {
    let s = parse("").expect("defaults");
    assert!(!s.enabled());
    assert_eq!(
        s.lock_dirs,
        vec![PathBuf::from("/run/lock"), PathBuf::from("/var/lock")]
    );
}

#[test]
fn a_minimal_profile_gets_the_documented_defaults() {
    let s = parse(&one_profile("")).expect("valid");
    assert!(s.enabled());
    let p = &s.profiles[0];
    assert_eq!(p.baud_rates, vec![115_200]);
    assert_eq!((p.data_bits, p.stop_bits), (8, 1));
    assert_eq!(p.parity, Parity::None);
    assert_eq!(p.flow_control, FlowControl::None);
    assert_eq!(p.send, b"\r\n");
    assert_eq!(p.timeout, Duration::from_millis(2000));
    assert_eq!(p.reprobe_interval, Duration::from_secs(30));
    assert_eq!(p.max_read_bytes, 4096);
}

#[test]
fn a_bad_regex_names_the_expect_key() {
    let msg = error_of(&one_profile("").replace("U-Boot", "(unclosed"));
    assert!(msg.contains("serial.profiles[0].expect"), "{msg}");
}

#[test]
fn an_empty_baud_list_names_its_key() {
    let msg = error_of(&one_profile("baud_rates = []"));
    assert!(msg.contains("serial.profiles[0].baud_rates"), "{msg}");
}

#[test]
fn a_bad_escape_in_send_names_its_key() {
    for send in [r"\q", r"\x4", r"\xZZ", r"\x+1", "abc\\\\\\"] {
        let msg = error_of(&one_profile(&format!("send = '{send}'")));
        assert!(msg.contains("serial.profiles[0].send"), "{send}: {msg}");
    }
}

#[test]
fn the_error_names_the_index_of_the_bad_profile() {
    let text = format!("{}{}", one_profile(""), one_profile("timeout_ms = 0")).replacen(
        "name = \"p\"",
        "name = \"q\"",
        1,
    );
    let msg = error_of(&text);
    assert!(msg.contains("serial.profiles[1].timeout_ms"), "{msg}");
}

#[test]
fn duplicate_names_are_refused() {
    let msg = error_of(&format!("{}{}", one_profile(""), one_profile("")));
    assert!(msg.contains("serial.profiles[1].name"), "{msg}");
}

#[test]
fn a_profile_must_select_ports() {
    let msg = error_of("[[profiles]]\nname = \"p\"\nexpect = \"x\"\n");
    assert!(msg.contains("serial.profiles[0].paths"), "{msg}");
    let ok = parse(
        "[[profiles]]\nname = \"p\"\nexpect = \"x\"\nmatch = [{ ID_VENDOR_ID = \"0403\" }]\n",
    );
    assert!(ok.is_ok(), "{ok:?}");
}

#[test]
fn wildcards_are_only_allowed_in_the_last_path_component() {
    let msg = error_of(&one_profile("").replace("/dev/ttyUSB*", "/dev/*/tty0"));
    assert!(msg.contains("serial.profiles[0].paths"), "{msg}");
    let msg = error_of(&one_profile("").replace("/dev/ttyUSB*", "ttyUSB0"));
    assert!(msg.contains("absolute"), "{msg}");
}

#[test]
fn unknown_keys_and_bad_enum_values_are_refused() {
    let msg = error_of(&one_profile("baud = 9600"));
    assert!(msg.contains("baud"), "{msg}");
    let msg = error_of(&one_profile("parity = \"mark\""));
    assert!(msg.contains("odd") && msg.contains("even"), "{msg}");
    let msg = error_of(&one_profile("data_bits = 9"));
    assert!(msg.contains("serial.profiles[0].data_bits"), "{msg}");
    let msg = error_of(&one_profile("stop_bits = 3"));
    assert!(msg.contains("serial.profiles[0].stop_bits"), "{msg}");
}

#[test]
fn named_captures_map_to_serial_attributes_unless_dotted() {
    let re = r"fw=(?P<firmware>\S+) (?P<board.rev>\d+) (\d+)";
    let s = parse(&one_profile("").replace("U-Boot", re)).expect("valid");
    assert_eq!(
        s.profiles[0].captures,
        vec![
            ("firmware".to_string(), "serial.firmware".to_string()),
            ("board.rev".to_string(), "board.rev".to_string()),
        ]
    );
}

#[test]
fn a_capture_may_not_overwrite_an_attribute_the_probe_sets() {
    for name in [
        "baud",
        "banner",
        "probe_error",
        "profile",
        "tty.node",
        "session.x",
    ] {
        let re = format!("(?P<{name}>x)");
        let msg = error_of(&one_profile("").replace("U-Boot", &re));
        assert!(msg.contains("serial.profiles[0].expect"), "{name}: {msg}");
    }
}

#[test]
fn relative_lock_dirs_are_refused() {
    let msg = error_of("lock_dirs = [\"lock\"]");
    assert!(msg.contains("serial.lock_dirs"), "{msg}");
}

#[test]
fn the_example_profile_in_agent_toml_is_valid_and_shows_the_defaults() {
    let text = include_str!("../../../examples/agent.toml");
    let serial = &text[text.find("\n[serial]").expect("a [serial] section")..];
    let start = serial
        .find("# [[serial.profiles]]")
        .expect("an example profile");
    let example: String = serial[start..]
        .lines()
        .map(|l| l.strip_prefix("# ").unwrap_or(l))
        .map(|l| format!("{}\n", l.replace("[[serial.profiles]]", "[[profiles]]")))
        .collect();
    let lock_dirs = "lock_dirs = [\"/run/lock\", \"/var/lock\"]\n";
    assert!(serial.contains(lock_dirs), "lock_dirs shows its default");
    let s = parse(&format!("{lock_dirs}{example}")).expect("the example is valid");
    let p = &s.profiles[0];
    let defaults =
        parse("[[profiles]]\nname = \"d\"\npaths = [\"/dev/x\"]\nexpect = 'x'\n").expect("valid");
    let d = &defaults.profiles[0];
    assert_eq!(s.lock_dirs, defaults.lock_dirs);
    assert_eq!(p.baud_rates, d.baud_rates);
    assert_eq!(
        (p.data_bits, p.parity, p.stop_bits, p.flow_control),
        (d.data_bits, d.parity, d.stop_bits, d.flow_control)
    );
    assert_eq!(p.send, d.send);
    assert_eq!(
        (p.timeout, p.reprobe_interval, p.max_read_bytes),
        (d.timeout, d.reprobe_interval, d.max_read_bytes)
    );
    assert_eq!(p.captures.len(), 2);
}
