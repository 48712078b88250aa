use super::*;
use crate::probe::serial::profile::{RawSerialConfig, SerialSettings};

fn profile(expect: &str) -> Profile {
    let raw: RawSerialConfig = toml::from_str(&format!(
        "[[profiles]]\nname = \"p\"\npaths = [\"/dev/null\"]\nexpect = '{expect}'\n"
    ))
    .expect("toml");
    let mut s = SerialSettings::validate(raw).expect("valid");
    s.profiles.remove(0)
}

#[test]
fn the_banner_is_the_whole_matched_line() {
    let p = profile(r"U-Boot (?P<firmware>\S+)");
    let attrs = matched(&p, b"junk\r\nU-Boot 2023.04 (Jan 01)\r\n=> ").expect("match");
    assert_eq!(attrs["serial.firmware"], AttrValue::from("2023.04"));
    assert_eq!(
        attrs["serial.banner"],
        AttrValue::from("U-Boot 2023.04 (Jan 01)")
    );
}

#[test]
fn a_match_ending_in_a_newline_keeps_its_own_line() {
    let p = profile(r"ready\r\n");
    let attrs = matched(&p, b"boot\nready\r\nnext line\n").expect("match");
    assert_eq!(attrs["serial.banner"], AttrValue::from("ready"));
}

#[test]
fn invalid_utf8_is_matched_lossily() {
    let p = profile(r"id=(?P<id>\w+)");
    let attrs = matched(&p, b"\xff\xfe id=abc \x80\n").expect("match");
    assert_eq!(attrs["serial.id"], AttrValue::from("abc"));
    assert!(matched(&p, b"\xff\xfe\x80").is_none());
}
