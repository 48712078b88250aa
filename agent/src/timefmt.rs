//! Wall-clock helpers: unix milliseconds now and RFC 3339 (both from
//! `rae_protocol::time`), compact UTC names and short ages.

use rae_protocol::time::civil;
pub use rae_protocol::time::{now_ms, rfc3339};

/// `20261126T153904Z`, for file names.
pub fn compact(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(ms);
    format!("{y:04}{mo:02}{d:02}T{h:02}{mi:02}{s:02}Z")
}

/// A short human age such as `3s`, `4m`, `2h`, `5d`.
pub fn age(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m", s / 60),
        3600..=86_399 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_names_sort_by_time() {
        assert_eq!(compact(951_782_400_000), "20000229T000000Z");
        assert_eq!(compact(1_795_707_544_000), "20261126T153904Z");
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(59_999), "59s");
        assert_eq!(age(120_000), "2m");
        assert_eq!(age(7_200_000), "2h");
    }
}
