//! Serial probe tests against real kernel PTY pairs (see [`dut`]): one port,
//! probed once. The daemon task's tests are in `tests/daemon.rs`.

mod daemon;
mod dut;

use super::lock::{format_pid, pid_alive};
use super::port::{probe, Outcome};
use super::*;
use dut::{Behaviour, Dut};
use rae_protocol::AttrValue;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

const BANNER: &[u8] = b"U-Boot 2023.04 (Jan 01 2024) esn=ABC123\r\n=> ";
const EXPECT: &str = r"U-Boot (?P<firmware>\S+) .*esn=(?P<esn>\w+)";

/// Settings with one profile per `(name, path, extra TOML)`, locks in `locks`.
fn settings(locks: &Path, profiles: &[(&str, &str, &str)]) -> SerialSettings {
    let mut text = format!("lock_dirs = [{:?}]\n", locks.display().to_string());
    for (name, path, extra) in profiles {
        text += &format!(
            "[[profiles]]\nname = {name:?}\npaths = [{path:?}]\nexpect = '{EXPECT}'\n{extra}\n"
        );
    }
    let raw: RawSerialConfig = toml::from_str(&text).expect("test config parses");
    SerialSettings::validate(raw).expect("test config is valid")
}

fn lock_dir() -> tempfile::TempDir {
    tempfile::tempdir().expect("temp lock dir")
}

fn probe_one(dut: &Dut, locks: &Path, extra: &str) -> Outcome {
    let s = settings(locks, &[("t", &dut.path, extra)]);
    probe(
        &dut.path,
        &s.profiles[0],
        &s.lock_dirs,
        &AtomicBool::new(false),
    )
}

fn answering(reply: &[u8]) -> Dut {
    Dut::start(Behaviour::Answer {
        reply: reply.to_vec(),
        only_at: None,
    })
}

fn error_of(outcome: Outcome) -> String {
    match outcome {
        Outcome::Unresponsive { error } => error,
        other => panic!("expected unresponsive, got {other:?}"),
    }
}

fn text(s: &str) -> AttrValue {
    AttrValue::from(s)
}

#[tokio::test]
async fn a_banner_is_parsed_into_attributes_of_the_ports_facet() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let obs = scan_once(&settings(locks.path(), &[("uboot", &dut.path, "")])).await;
    assert_eq!(obs.len(), 1, "{obs:?}");
    let o = &obs[0];
    assert_eq!(o.facet, FacetKey::new(Source::Serial, dut.path.clone()));
    assert_eq!(o.identifiers, udev::tty_identifiers(&dut.path));
    let a = &o.attrs;
    assert_eq!(a["state"], text("online"));
    assert_eq!(a["serial.firmware"], text("2023.04"));
    assert_eq!(a["serial.esn"], text("ABC123"));
    assert_eq!(
        a["serial.banner"],
        text("U-Boot 2023.04 (Jan 01 2024) esn=ABC123")
    );
    assert_eq!(a["serial.baud"], AttrValue::Int(115_200));
    assert_eq!(a["serial.profile"], text("uboot"));
    assert_eq!(a["tty.node"], text(&dut.path));
    assert!(!a.contains_key("serial.probe_error"), "{a:?}");
    let sent: Vec<u8> = dut
        .requests()
        .iter()
        .flat_map(|r| r.bytes.clone())
        .collect();
    assert_eq!(sent, b"\r\n");
}

#[test]
fn the_baud_list_is_walked_until_the_device_answers() {
    let dut = Dut::start(Behaviour::Answer {
        reply: BANNER.to_vec(),
        only_at: Some(57_600),
    });
    let locks = lock_dir();
    let extra = "baud_rates = [115200, 57600]\ntimeout_ms = 400";
    match probe_one(&dut, locks.path(), extra) {
        Outcome::Answered { baud, attrs } => {
            assert_eq!(baud, 57_600);
            assert_eq!(attrs["serial.esn"], text("ABC123"));
        }
        other => panic!("expected an answer, got {other:?}"),
    }
    let bauds: Vec<u32> = dut.requests().iter().map(|r| r.baud).collect();
    assert_eq!(bauds, vec![115_200, 57_600]);
}

#[test]
fn a_silent_device_is_unresponsive_within_the_timeout() {
    let dut = Dut::start(Behaviour::Silent);
    let locks = lock_dir();
    let start = Instant::now();
    let error = error_of(probe_one(&dut, locks.path(), "timeout_ms = 300"));
    let took = start.elapsed();
    assert_eq!(error, "no response within 300 ms at 115200 baud");
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_millis(1300), "{took:?}");
    assert_eq!(dut.requests().len(), 1);
}

#[test]
fn every_failed_baud_rate_is_named_in_the_error() {
    let dut = Dut::start(Behaviour::Silent);
    let locks = lock_dir();
    let extra = "baud_rates = [9600, 19200]\ntimeout_ms = 150";
    let error = error_of(probe_one(&dut, locks.path(), extra));
    assert_eq!(
        error,
        "no response within 150 ms at 9600 baud; no response within 150 ms at 19200 baud"
    );
}

#[test]
fn garbage_bytes_make_the_port_unresponsive_without_a_panic() {
    let dut = answering(&dut::garbage(700));
    let locks = lock_dir();
    let error = error_of(probe_one(&dut, locks.path(), "timeout_ms = 300"));
    assert!(
        error.starts_with("no match for /U-Boot")
            && error.ends_with("within 300 ms at 115200 baud"),
        "{error}"
    );
}

#[test]
fn an_endless_stream_is_cut_off_at_max_read_bytes() {
    let dut = Dut::start(Behaviour::Stream(b"spam spam spam spam\r\n".repeat(20)));
    let locks = lock_dir();
    let start = Instant::now();
    let extra = "timeout_ms = 20000\nmax_read_bytes = 4096";
    let error = error_of(probe_one(&dut, locks.path(), extra));
    assert!(
        error.ends_with("in 4096 bytes (read limit) at 115200 baud"),
        "{error}"
    );
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn a_prompt_without_a_line_end_still_matches() {
    let dut = answering(b"\r\nDUT-7 login: ");
    let locks = lock_dir();
    let s = settings(locks.path(), &[("t", &dut.path, "")]);
    let mut profile = s.profiles[0].clone();
    profile.expect = regex::Regex::new(r"(?P<host>\S+) login: $").expect("regex");
    profile.captures = vec![("host".into(), "serial.host".into())];
    let start = Instant::now();
    match probe(&dut.path, &profile, &s.lock_dirs, &AtomicBool::new(false)) {
        Outcome::Answered { attrs, .. } => assert_eq!(attrs["serial.host"], text("DUT-7")),
        other => panic!("expected an answer, got {other:?}"),
    }
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "waited for the timeout"
    );
}

#[test]
fn a_port_locked_by_a_live_process_is_not_touched() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let name = Path::new(&dut.path).file_name().expect("name").to_owned();
    let lock = locks
        .path()
        .join(format!("LCK..{}", name.to_string_lossy()));
    let content = format_pid(std::process::id() as i32);
    std::fs::write(&lock, &content).expect("write lock");
    let before = dut::termios(&dut.slave);
    match probe_one(&dut, locks.path(), "") {
        Outcome::Skipped { reason } => assert!(reason.contains("locked by pid"), "{reason}"),
        other => panic!("expected skipped, got {other:?}"),
    }
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        dut.requests().is_empty(),
        "the DUT saw {:?}",
        dut.requests()
    );
    assert_eq!(std::fs::read_to_string(&lock).expect("lock kept"), content);
    assert_eq!(dut::termios(&dut.slave).c_cflag, before.c_cflag);
}

#[test]
fn a_stale_lock_is_removed_and_the_port_probed() {
    let dut = answering(BANNER);
    let locks = lock_dir();
    let dead = (999_999..).find(|p| !pid_alive(*p)).expect("a free pid");
    let lock = locks.path().join(format!(
        "LCK..{}",
        dut.path.rsplit('/').next().expect("name")
    ));
    std::fs::write(&lock, format_pid(dead)).expect("write lock");
    let outcome = probe_one(&dut, locks.path(), "");
    assert!(matches!(outcome, Outcome::Answered { .. }), "{outcome:?}");
    assert!(!lock.exists(), "neither the stale lock nor ours may remain");
}

#[test]
fn our_lock_exists_during_the_probe_and_is_gone_after() {
    let locks = lock_dir();
    let dir = locks.path().to_path_buf();
    let watch = dir.clone();
    let dut = Dut::start_with(
        Behaviour::Answer {
            reply: BANNER.to_vec(),
            only_at: None,
        },
        true,
        Box::new(move || {
            let names: Vec<String> = std::fs::read_dir(&watch)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let content = names
                .iter()
                .map(|n| std::fs::read_to_string(watch.join(n)).unwrap_or_default())
                .collect::<Vec<_>>();
            format!("{names:?} {content:?}")
        }),
    );
    let outcome = probe_one(&dut, &dir, "");
    assert!(matches!(outcome, Outcome::Answered { .. }), "{outcome:?}");
    let name = dut.path.rsplit('/').next().expect("name");
    let expected = format!(
        "[\"LCK..{name}\"] [{:?}]",
        format!("{:>10}\n", std::process::id())
    );
    assert_eq!(dut.requests()[0].note, expected);
    assert_eq!(std::fs::read_dir(&dir).expect("dir").count(), 0);
}

fn termios_fields(t: &libc::termios) -> impl PartialEq + std::fmt::Debug {
    (
        (t.c_iflag, t.c_oflag, t.c_cflag, t.c_lflag, t.c_line),
        t.c_cc,
        (t.c_ispeed, t.c_ospeed),
    )
}

#[test]
fn the_port_settings_are_identical_before_and_after_a_probe() {
    for (behaviour, raw) in [
        (Behaviour::Silent, false),
        (
            Behaviour::Answer {
                reply: BANNER.to_vec(),
                only_at: Some(57_600),
            },
            false,
        ),
        (Behaviour::Stream(b"xyz".repeat(100)), true),
    ] {
        let dut = Dut::start_with(behaviour, raw, Box::new(String::new));
        let locks = lock_dir();
        let before = dut::termios(&dut.slave);
        let speed = dut::ospeed(dut.slave.as_raw_fd());
        let extra = "baud_rates = [115200, 57600]\ntimeout_ms = 200\nmax_read_bytes = 256\n\
                     parity = \"even\"\nstop_bits = 2\ndata_bits = 7\nflow_control = \"hardware\"";
        let _ = probe_one(&dut, locks.path(), extra);
        assert!(!dut.requests().is_empty(), "the probe reached the DUT");
        let after = dut::termios(&dut.slave);
        assert_eq!(termios_fields(&after), termios_fields(&before));
        assert_eq!(dut::ospeed(dut.slave.as_raw_fd()), speed);
    }
}

#[test]
fn a_port_that_cannot_be_opened_is_unresponsive_and_says_why() {
    let locks = lock_dir();
    let s = settings(locks.path(), &[("t", "/dev/null", "")]);
    let no = AtomicBool::new(false);
    let outcome = probe("/nonexistent/ttyX0", &s.profiles[0], &s.lock_dirs, &no);
    assert!(
        matches!(&outcome, Outcome::Unresponsive { error } if error.starts_with("cannot open: ")),
        "{outcome:?}"
    );
}
