//! The fast path of [`Envelope::decode`](super::Envelope::decode): a
//! direct reader of the envelope's usual CBOR shape into the same
//! [`WireIn`] the general (serde) path builds, several times cheaper per
//! envelope (the registry decodes every record; docs/BENCHMARKS.md).
//!
//! Owns [`parse`]. Invariants:
//! - it only ever *declines*: whatever it does not recognise (an unknown
//!   or repeated key, a tag, an indefinite length, a null, a NaN half
//!   float, a value of an unexpected type, truncated input) returns
//!   `None`, and the caller runs the general decoder, which then decides
//!   and words any error. So errors and forward compatibility (unknown
//!   keys are skipped there) stay exactly those of the general decoder;
//! - when it returns `Some(w)`, the general decoder returns the same `w`
//!   for the same bytes (checked by differential tests on valid,
//!   mutated and truncated input);
//! - like the general decoder it reads exactly one item: trailing bytes
//!   are not looked at; it never panics and never reads past the input.

use super::wire::WireIn;
use super::{AttrValue, Attrs};

const MAJOR_UNSIGNED: u8 = 0;
const MAJOR_NEGATIVE: u8 = 1;
const MAJOR_TEXT: u8 = 3;
const MAJOR_ARRAY: u8 = 4;
const MAJOR_MAP: u8 = 5;
const MAJOR_SIMPLE: u8 = 7;

/// Parses `bytes` when they hold an envelope map of the usual shape.
pub(super) fn parse(bytes: &[u8]) -> Option<WireIn> {
    let mut c = Cursor(bytes);
    let entries = c.definite(MAJOR_MAP)?;
    let mut w = WireIn::default();
    for _ in 0..entries {
        match c.text()? {
            "v" => once(&mut w.v, c.unsigned()?)?,
            "rae_id" => once(&mut w.rae_id, c.text()?.to_owned())?,
            "device_id" => once(&mut w.device_id, c.text()?.to_owned())?,
            "session_id" => once(&mut w.session_id, c.text()?.to_owned())?,
            "seq" => once(&mut w.seq, c.unsigned()?)?,
            "ts" => once(&mut w.ts, c.unsigned()?)?,
            "kind" => once(&mut w.kind, c.text()?.to_owned())?,
            "attrs" => once(&mut w.attrs, c.attrs()?)?,
            "set" => once(&mut w.set, c.attrs()?)?,
            "removed" => once(&mut w.removed, c.texts()?)?,
            "reason" => once(&mut w.reason, c.text()?.to_owned())?,
            // Unknown keys are skipped by the general decoder.
            _ => return None,
        }
    }
    Some(w)
}

/// Stores a field seen for the first time; a repeated key declines (the
/// general decoder reports it).
fn once<T>(slot: &mut Option<T>, value: T) -> Option<()> {
    match slot {
        Some(_) => None,
        None => {
            *slot = Some(value);
            Some(())
        }
    }
}

/// The unread rest of the input.
struct Cursor<'a>(&'a [u8]);

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if n > self.0.len() {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn be(&mut self, n: usize) -> Option<u64> {
        Some(
            self.take(n)?
                .iter()
                .fold(0u64, |acc, b| (acc << 8) | u64::from(*b)),
        )
    }

    /// An item head: (major type, additional info, argument). Declines
    /// the reserved infos 28–30 and indefinite lengths (31).
    fn head(&mut self) -> Option<(u8, u8, u64)> {
        let first = *self.take(1)?.first()?;
        let (major, info) = (first >> 5, first & 0x1f);
        let arg = match info {
            0..=23 => u64::from(info),
            24 => self.be(1)?,
            25 => self.be(2)?,
            26 => self.be(4)?,
            27 => self.be(8)?,
            _ => return None,
        };
        Some((major, info, arg))
    }

    /// The length of a definite array or map, or an unsigned integer.
    fn definite(&mut self, want: u8) -> Option<u64> {
        match self.head()? {
            (major, _, arg) if major == want => Some(arg),
            _ => None,
        }
    }

    fn unsigned(&mut self) -> Option<u64> {
        self.definite(MAJOR_UNSIGNED)
    }

    fn text(&mut self) -> Option<&'a str> {
        let len = usize::try_from(self.definite(MAJOR_TEXT)?).ok()?;
        std::str::from_utf8(self.take(len)?).ok()
    }

    fn texts(&mut self) -> Option<Vec<String>> {
        let n = self.definite(MAJOR_ARRAY)?;
        // Each element takes at least one byte: no allocation beyond the input.
        let mut out = Vec::with_capacity(usize::try_from(n).ok()?.min(self.0.len()));
        for _ in 0..n {
            out.push(self.text()?.to_owned());
        }
        Some(out)
    }

    fn attrs(&mut self) -> Option<Attrs> {
        let n = self.definite(MAJOR_MAP)?;
        let mut out = Attrs::new();
        for _ in 0..n {
            let name = self.text()?.to_owned();
            let value = self.attr_value()?;
            // A repeated attribute name: the last one wins, as in the
            // general decoder's map.
            out.insert(name, value);
        }
        Some(out)
    }

    fn attr_value(&mut self) -> Option<AttrValue> {
        let (major, info, arg) = self.head()?;
        match (major, info) {
            (MAJOR_UNSIGNED, _) => i64::try_from(arg).ok().map(AttrValue::Int),
            // -1 - arg, within i64 when arg is.
            (MAJOR_NEGATIVE, _) => i64::try_from(arg).ok().map(|n| AttrValue::Int(-1 - n)),
            (MAJOR_TEXT, _) => {
                let len = usize::try_from(arg).ok()?;
                let text = std::str::from_utf8(self.take(len)?).ok()?;
                Some(AttrValue::Text(text.to_owned()))
            }
            (MAJOR_SIMPLE, 20) => Some(AttrValue::Bool(false)),
            (MAJOR_SIMPLE, 21) => Some(AttrValue::Bool(true)),
            (MAJOR_SIMPLE, 25) => half_to_f64(arg as u16).map(AttrValue::Float),
            (MAJOR_SIMPLE, 26) => Some(AttrValue::Float(f64::from(f32::from_bits(arg as u32)))),
            (MAJOR_SIMPLE, 27) => Some(AttrValue::Float(f64::from_bits(arg))),
            _ => None,
        }
    }
}

/// An IEEE 754 half float as `f64`, exactly; declines NaN (whose payload
/// the general decoder's conversion keeps its own way). Also used by the
/// tests' CBOR annotator.
pub(super) fn half_to_f64(bits: u16) -> Option<f64> {
    let sign = if bits & 0x8000 == 0 { 1.0 } else { -1.0 };
    let exp = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    match exp {
        0 => Some(sign * mantissa * 2f64.powi(-24)),
        31 if mantissa == 0.0 => Some(sign * f64::INFINITY),
        31 => None,
        _ => Some(sign * (1.0 + mantissa / 1024.0) * 2f64.powi(exp - 15)),
    }
}

#[cfg(test)]
#[path = "fast_tests.rs"]
mod tests;
