//! Time as every part of Hawking counts it: microseconds since the Unix epoch, UTC. The
//! current time, and times as people type them (command line, SQL arguments): RFC 3339
//! (`2026-11-20T10:05:00Z`, offsets allowed), `2026-11-20 10:05[:00]` read as UTC, or `now`.

use jiff::Timestamp;
use jiff::civil::DateTime;
use jiff::tz::TimeZone;

/// The current time, µs since the epoch (0 if the clock is before 1970).
pub fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Text that is not a time Hawking reads.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot read {text:?} as a time: use RFC 3339 (2026-11-20T10:05:00Z) or 2026-11-20 10:05:00 (UTC)"
)]
pub struct BadTime {
    pub text: String,
}

/// Parses a time into µs since the epoch.
pub fn parse_time(s: &str) -> Result<i64, BadTime> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("now") {
        return Ok(Timestamp::now().as_microsecond());
    }
    if let Ok(ts) = s.parse::<Timestamp>() {
        return Ok(ts.as_microsecond());
    }
    let bad = || BadTime {
        text: s.to_string(),
    };
    let civil = s.parse::<DateTime>().map_err(|_| bad())?;
    Ok(civil
        .to_zoned(TimeZone::UTC)
        .map_err(|_| bad())?
        .timestamp()
        .as_microsecond())
}

/// µs since the epoch as RFC 3339 UTC, with fractional seconds only when present.
pub fn format_time(us: i64) -> String {
    match Timestamp::from_microsecond(us) {
        Ok(ts) => ts.to_string(),
        Err(_) => format!("{us}µs"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_forms_people_type() {
        let want = 1_795_168_800_000_000;
        assert_eq!(parse_time("2026-11-20T10:00:00Z").unwrap(), want);
        assert_eq!(parse_time("2026-11-20T11:00:00+01:00").unwrap(), want);
        assert_eq!(parse_time("2026-11-20 10:00:00").unwrap(), want);
        assert_eq!(parse_time("2026-11-20 10:00").unwrap(), want);
        assert!(parse_time("last tuesday").is_err());
        assert_eq!(format_time(want), "2026-11-20T10:00:00Z");
        assert_eq!(format_time(want + 500_000), "2026-11-20T10:00:00.5Z");
    }
}
