//! Unix time, which the registry and the wire messages use, and how it is
//! shown to people.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Unix milliseconds (for rates finer than a second).
pub fn now_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// `2026-11-29T07:00:00Z`.
pub fn show(unix: i64) -> String {
    OffsetDateTime::from_unix_timestamp(unix)
        .ok()
        .and_then(|t| t.format(&Rfc3339).ok())
        .unwrap_or_else(|| unix.to_string())
}

/// Parses `30s`, `10m`, `24h`, `7d` into seconds.
pub fn parse_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("{s:?} is not a duration like 30s, 10m, 24h or 7d");
    let s = s.trim();
    let unit = s.chars().last().ok_or_else(bad)?;
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86400,
        _ => return Err(bad()),
    };
    let n: i64 = s[..s.len() - 1].parse().map_err(|_| bad())?;
    if n <= 0 {
        return Err(bad());
    }
    n.checked_mul(scale).ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30s"), Ok(30));
        assert_eq!(parse_duration("24h"), Ok(86400));
        assert_eq!(parse_duration("7d"), Ok(604800));
        for bad in ["", "h", "0s", "-1m", "5x", "é", "99999999999999999d"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn shows_rfc3339() {
        assert_eq!(show(0), "1970-01-01T00:00:00Z");
    }
}
