//! Keeps the worked examples of `docs/PROTOCOL.md` honest: the diagnostic
//! notation, annotated hex and plain hex shown there are compared with what
//! the encoder produces. To regenerate after an intended wire change, run
//! `cargo test -p rae-protocol print_documented_examples -- --ignored --nocapture`
//! and paste the output into the doc.

use std::fmt::Write as _;

use ciborium::Value;

use super::*;

fn examples() -> Vec<(&'static str, Envelope)> {
    let session_id = Uuid::try_parse("0190b2c4-5e6f-7a8b-9c0d-1e2f3a4b5c6d").expect("uuid");
    let base = |seq, ts_ms, kind| Envelope {
        schema: SCHEMA_VERSION,
        rae_id: "lab1-rack3".into(),
        device_id: "usb-0403:6001-FT4ZK1".into(),
        session_id,
        seq,
        ts_ms,
        kind,
    };
    let attrs = Attrs::from([
        ("bus".to_owned(), AttrValue::Int(3)),
        ("product".to_owned(), AttrValue::from("FT232R")),
        ("powered".to_owned(), AttrValue::Bool(true)),
        ("temp_c".to_owned(), AttrValue::Float(41.5)),
    ]);
    let set = Attrs::from([
        ("temp_c".to_owned(), AttrValue::Float(43.3)),
        ("offset_mv".to_owned(), AttrValue::Int(-12)),
    ]);
    vec![
        (
            "attached",
            base(1, 1_720_000_000_000, EventKind::Attached { attrs }),
        ),
        (
            "changed",
            base(
                2,
                1_720_000_004_250,
                EventKind::Changed {
                    set,
                    removed: vec!["powered".into()],
                },
            ),
        ),
    ]
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

/// CBOR diagnostic notation (RFC 8949 §8), one map entry per line.
fn diag(value: &Value, depth: usize, out: &mut String) {
    let pad = "    ".repeat(depth + 1);
    match value {
        Value::Map(entries) => {
            out.push_str("{\n");
            for (i, (k, v)) in entries.iter().enumerate() {
                out.push_str(&pad);
                diag(k, depth + 1, out);
                out.push_str(": ");
                diag(v, depth + 1, out);
                out.push_str(if i + 1 < entries.len() { ",\n" } else { "\n" });
            }
            out.push_str(&"    ".repeat(depth));
            out.push('}');
        }
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|item| {
                    let mut s = String::new();
                    diag(item, depth + 1, &mut s);
                    s
                })
                .collect();
            let _ = write!(out, "[{}]", parts.join(", "));
        }
        Value::Text(s) => {
            let _ = write!(out, "{s:?}");
        }
        Value::Integer(i) => {
            let _ = write!(out, "{}", i128::from(*i));
        }
        Value::Float(x) => {
            let _ = write!(out, "{x:?}");
        }
        Value::Bool(b) => {
            let _ = write!(out, "{b}");
        }
        other => panic!("no diagnostic notation for {other:?} in examples"),
    }
}

fn f16_to_f64(bits: u64) -> f64 {
    let half = u16::try_from(bits).expect("a float16 argument has 2 bytes");
    crate::envelope::fast::half_to_f64(half).unwrap_or(f64::NAN)
}

/// Annotated hex dump in the style of RFC 8949 appendix A, for the subset
/// of CBOR an envelope uses.
struct Annotator<'a> {
    bytes: &'a [u8],
    pos: usize,
    lines: Vec<(String, String)>,
}

impl Annotator<'_> {
    fn take(&mut self, n: usize) -> &[u8] {
        let slice = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        slice
    }

    fn item(&mut self, depth: usize) {
        let start = self.pos;
        let initial = self.take(1)[0];
        let (major, info) = (initial >> 5, initial & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24..=27 => {
                let len = 1 << (info - 24);
                self.take(len).iter().fold(0, |a, b| a << 8 | u64::from(*b))
            }
            _ => panic!("indefinite lengths are not used by the encoder"),
        };
        let head = format!(
            "{}{}",
            "   ".repeat(depth),
            hex(&self.bytes[start..self.pos])
        );
        let len = usize::try_from(arg).unwrap_or(usize::MAX);
        let note = match (major, info) {
            (0, _) => format!("unsigned({arg})"),
            (1, _) => format!("negative({})", -1 - i128::from(arg)),
            (3, _) => format!("text({arg})"),
            (4, _) => format!("array({arg})"),
            (5, _) => format!("map({arg})"),
            (7, 20) => "false".to_owned(),
            (7, 21) => "true".to_owned(),
            (7, 25) => format!("float16({:?})", f16_to_f64(arg)),
            (7, 26) => format!("float32({:?})", f32::from_bits(arg as u32)),
            (7, 27) => format!("float64({:?})", f64::from_bits(arg)),
            _ => panic!("unexpected item {initial:#04x}"),
        };
        self.lines.push((head, note));
        match major {
            3 => {
                let text = self.take(len).to_vec();
                let mut note = format!("{:?}", String::from_utf8(text.clone()).expect("utf8"));
                for chunk in text.chunks(16) {
                    let line = format!("{}{}", "   ".repeat(depth + 1), hex(chunk));
                    self.lines.push((line, std::mem::take(&mut note)));
                }
            }
            4 => (0..len).for_each(|_| self.item(depth + 1)),
            5 => (0..len * 2).for_each(|_| self.item(depth + 1)),
            _ => {}
        }
    }
}

fn annotate(bytes: &[u8]) -> String {
    let mut a = Annotator {
        bytes,
        pos: 0,
        lines: Vec::new(),
    };
    a.item(0);
    assert_eq!(a.pos, bytes.len(), "one item, no trailing bytes");
    let width = a.lines.iter().map(|(h, _)| h.len()).max().unwrap_or(0) + 2;
    a.lines
        .iter()
        .map(|(h, n)| match n.is_empty() {
            true => format!("{h}\n"),
            false => format!("{h:<width$}# {n}\n"),
        })
        .collect()
}

/// Renders the three documented blocks of one example.
fn render(env: &Envelope) -> (String, String, String) {
    let bytes = env.encode().expect("encodes");
    let value: Value = ciborium::from_reader(bytes.as_slice()).expect("cbor");
    let mut notation = String::new();
    diag(&value, 0, &mut notation);
    (notation, annotate(&bytes), hex(&bytes))
}

/// The fenced block right after `<!-- marker -->` in the protocol doc.
fn doc_block(doc: &str, marker: &str) -> String {
    let tag = format!("<!-- {marker} -->");
    let after = &doc[doc.find(&tag).unwrap_or_else(|| panic!("{tag} not in doc"))..];
    let body = after.split_once("```").expect("fence").1;
    let body = body.split_once('\n').expect("fence line").1;
    body.split_once("```").expect("closing fence").0.to_owned()
}

fn squash(text: &str) -> String {
    text.split_whitespace().collect()
}

#[test]
fn documented_example_bytes_match_encoder() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/PROTOCOL.md");
    let doc = std::fs::read_to_string(path).expect("docs/PROTOCOL.md is readable");
    for (name, env) in examples() {
        let (notation, annotated, bytes) = render(&env);
        let shown_hex = squash(&doc_block(&doc, &format!("example:{name}:hex")));
        assert_eq!(
            shown_hex, bytes,
            "{name}: hex in doc differs from the encoder"
        );
        let shown_annotated = doc_block(&doc, &format!("example:{name}:annotated"));
        assert_eq!(shown_annotated, annotated, "{name}: annotated hex differs");
        let annotated_hex: String = annotated
            .lines()
            .map(|l| squash(l.split('#').next().unwrap_or("")))
            .collect();
        assert_eq!(
            annotated_hex, bytes,
            "{name}: annotation does not cover the bytes"
        );
        let shown_notation = doc_block(&doc, &format!("example:{name}:diag"));
        assert_eq!(
            squash(&shown_notation),
            squash(&notation),
            "{name}: diag differs"
        );
        assert_eq!(Envelope::decode(&hex_to_bytes(&shown_hex)), Ok(env));
    }
}

fn hex_to_bytes(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

#[test]
#[ignore = "prints the documented examples; run to regenerate docs/PROTOCOL.md"]
fn print_documented_examples() {
    for (name, env) in examples() {
        let (notation, annotated, bytes) = render(&env);
        let wrapped: Vec<&str> = (0..bytes.len())
            .step_by(64)
            .map(|i| &bytes[i..bytes.len().min(i + 64)])
            .collect();
        let size = bytes.len() / 2;
        println!(
            "== {name} ({size} bytes)\n{notation}\n\n{annotated}\n{}\n",
            wrapped.join("\n")
        );
    }
}
