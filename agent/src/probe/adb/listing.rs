//! Parsers for the text the adb server returns, pure (no I/O): device lists
//! (`host:devices-l`, each update of `host:track-devices-l`) and the output
//! of `getprop`.
//!
//! Device list lines, as written by adb's `append_transport`: the long
//! format is `printf("%-22s %s", serial, state)` followed by optional
//! ` <devpath>` (e.g. `usb:1-1`), ` product:<p>`, ` model:<m>` (non
//! alphanumerics replaced by `_`), ` device:<d>` and, always last,
//! ` transport_id:<n>`; the short format is `<serial>\t<state>`. A state
//! may contain spaces (`no permissions (...); see [...]`), so the keyed
//! fields are peeled off the end and the rest is the state.
//!
//! Invariant: parsing never fails; a line that cannot be a device (blank,
//! no state, or the unaddressable `(no serial number)`) is skipped.

use std::collections::BTreeMap;

/// What adb prints for a device whose serial is empty.
pub const NO_SERIAL: &str = "(no serial number)";

/// One line of a device list.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceEntry {
    pub serial: String,
    /// The raw adb state (`device`, `unauthorized`, `offline`, ...).
    pub state: String,
    pub devpath: Option<String>,
    pub product: Option<String>,
    pub model: Option<String>,
    pub device: Option<String>,
    pub transport_id: Option<String>,
}

/// Parses a whole device list; a serial listed twice keeps its last line.
pub fn parse_device_list(text: &str) -> Vec<DeviceEntry> {
    let mut out: Vec<DeviceEntry> = Vec::new();
    for entry in text.lines().filter_map(parse_device_line) {
        out.retain(|e| e.serial != entry.serial);
        out.push(entry);
    }
    out
}

/// Parses one line of a device list, long or short format.
pub fn parse_device_line(line: &str) -> Option<DeviceEntry> {
    let line = line.trim_end_matches('\r');
    if line.starts_with(NO_SERIAL) {
        return None;
    }
    let (serial, rest) = line.split_once(|c: char| c.is_whitespace())?;
    let tokens: Vec<&str> = rest.split_whitespace().collect();
    if serial.is_empty() || tokens.is_empty() {
        return None;
    }
    let mut entry = DeviceEntry {
        serial: serial.to_string(),
        ..DeviceEntry::default()
    };
    // Peel keyed fields off the end; at least one token stays as the state.
    let mut end = tokens.len();
    while end > 1 {
        let token = tokens[end - 1];
        let slot = if let Some(v) = token.strip_prefix("transport_id:") {
            Some((&mut entry.transport_id, v))
        } else if let Some(v) = token.strip_prefix("product:") {
            Some((&mut entry.product, v))
        } else if let Some(v) = token.strip_prefix("model:") {
            Some((&mut entry.model, v))
        } else if let Some(v) = token.strip_prefix("device:") {
            Some((&mut entry.device, v))
        } else if token.starts_with("usb:") {
            Some((&mut entry.devpath, token))
        } else {
            None
        };
        match slot {
            Some((field, value)) if field.is_none() => *field = Some(value.to_string()),
            _ => break,
        }
        end -= 1;
    }
    entry.state = tokens[..end].join(" ");
    Some(entry)
}

/// Parses `getprop` output (`[name]: [value]` per line; a value may span
/// lines). Lines that are not properties are ignored.
pub fn parse_getprop(text: &str) -> BTreeMap<String, String> {
    let mut props = BTreeMap::new();
    let mut pending: Option<(String, String)> = None;
    for line in text.split('\n').map(|l| l.trim_end_matches('\r')) {
        if let Some((name, mut value)) = pending.take() {
            value.push('\n');
            match line.strip_suffix(']') {
                Some(last) => {
                    value.push_str(last);
                    props.insert(name, value);
                }
                None => {
                    value.push_str(line);
                    pending = Some((name, value));
                }
            }
            continue;
        }
        let Some((name, rest)) = line.strip_prefix('[').and_then(|l| l.split_once("]: [")) else {
            continue;
        };
        match rest.strip_suffix(']') {
            Some(value) => {
                props.insert(name.to_string(), value.to_string());
            }
            None => pending = Some((name.to_string(), rest.to_string())),
        }
    }
    props
}

#[cfg(test)]
mod tests {
    use super::*;

    fn some(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn a_long_format_line_yields_every_field() {
        let line = "R58M12ABCDE            device usb:1-1 product:a52qnsxx model:SM_A525F device:a52q transport_id:3";
        let e = parse_device_line(line).expect("entry");
        assert_eq!(
            e,
            DeviceEntry {
                serial: "R58M12ABCDE".into(),
                state: "device".into(),
                devpath: some("usb:1-1"),
                product: some("a52qnsxx"),
                model: some("SM_A525F"),
                device: some("a52q"),
                transport_id: some("3"),
            }
        );
    }

    #[test]
    fn an_unauthorized_device_has_only_a_devpath_and_a_transport_id() {
        let e = parse_device_line("R58M12ABCDE            unauthorized usb:1-1 transport_id:7")
            .expect("entry");
        assert_eq!(e.state, "unauthorized");
        assert_eq!((e.devpath, e.product), (some("usb:1-1"), None));
        assert_eq!(e.transport_id, some("7"));
    }

    #[test]
    fn a_short_format_line_and_a_tcp_serial_parse() {
        let e = parse_device_line("192.168.1.50:5555\toffline").expect("entry");
        assert_eq!(
            (e.serial.as_str(), e.state.as_str()),
            ("192.168.1.50:5555", "offline")
        );
        assert_eq!(e.transport_id, None);
    }

    #[test]
    fn a_state_with_spaces_is_kept_whole() {
        let line = "0123456789ABCDEF       no permissions (missing udev rules? user is in the plugdev group); see [http://developer.android.com/tools/device.html] usb:1-4 transport_id:2";
        let e = parse_device_line(line).expect("entry");
        assert!(
            e.state.starts_with("no permissions (missing udev rules?"),
            "{}",
            e.state
        );
        assert!(e.state.ends_with("device.html]"), "{}", e.state);
        assert_eq!((e.devpath, e.transport_id), (some("usb:1-4"), some("2")));
    }

    #[test]
    fn blank_stateless_and_serialless_lines_are_skipped() {
        for line in [
            "",
            "   ",
            "LONELYSERIAL",
            "(no serial number)     offline transport_id:1",
        ] {
            assert_eq!(parse_device_line(line), None, "{line:?}");
        }
    }

    #[test]
    fn a_list_keeps_the_last_line_of_a_repeated_serial() {
        let list = parse_device_list("A\toffline\nB\tdevice\r\nA\tdevice\n\n");
        let states: Vec<_> = list
            .iter()
            .map(|e| (e.serial.as_str(), e.state.as_str()))
            .collect();
        assert_eq!(states, [("B", "device"), ("A", "device")]);
        assert!(parse_device_list("").is_empty());
    }

    #[test]
    fn getprop_output_yields_names_and_values() {
        let text = "[ro.product.model]: [Pixel 7]\r\n[ro.serialno]: [28101FDH2000AB]\n\
                    [empty.one]: []\n[multi.line]: [first\nsecond]\nnoise line\n";
        let props = parse_getprop(text);
        assert_eq!(
            props.get("ro.product.model").map(String::as_str),
            Some("Pixel 7")
        );
        assert_eq!(
            props.get("ro.serialno").map(String::as_str),
            Some("28101FDH2000AB")
        );
        assert_eq!(props.get("empty.one").map(String::as_str), Some(""));
        assert_eq!(
            props.get("multi.line").map(String::as_str),
            Some("first\nsecond")
        );
        assert_eq!(props.len(), 4);
    }

    #[test]
    fn a_value_containing_brackets_is_kept() {
        let props = parse_getprop("[a.b]: [x]: [y]\n");
        assert_eq!(props.get("a.b").map(String::as_str), Some("x]: [y"));
    }
}
