//! The unix-millisecond timestamps rae carries (the envelope's `ts_ms`,
//! log lines): [`now_ms`] reads the system clock; the rest renders them as
//! UTC text, without a date-time dependency, and is pure.

/// Milliseconds since the unix epoch (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// (year, month, day, hour, minute, second) in UTC for unix milliseconds.
pub fn civil(ms: u64) -> (i64, u32, u32, u32, u32, u32) {
    let secs = i64::try_from(ms / 1000).unwrap_or(i64::MAX);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    let (h, mi, s) = (rem / 3600, (rem % 3600) / 60, rem % 60);
    (y, m, d, h as u32, mi as u32, s as u32)
}

/// `2026-11-26T15:39:04Z`
pub fn rfc3339(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(ms);
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}Z")
}

/// `2026-11-26T15:39:04.123Z`: with milliseconds.
pub fn rfc3339_millis(ms: u64) -> String {
    let (y, mo, d, h, mi, s) = civil(ms);
    let milli = ms % 1000;
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_707_544_000), "2026-11-26T15:39:04Z");
        assert_eq!(civil(951_782_400_000), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn milliseconds_are_zero_padded() {
        assert_eq!(
            rfc3339_millis(1_795_707_544_007),
            "2026-11-26T15:39:04.007Z"
        );
        assert_eq!(
            rfc3339_millis(1_795_707_544_999),
            "2026-11-26T15:39:04.999Z"
        );
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
    }
}
