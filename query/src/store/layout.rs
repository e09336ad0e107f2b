//! Where a table's files live: `ROOT/<table>/date=YYYY-MM-DD/hour=HH/<file>.parquet`, hive
//! style so DuckDB, Spark or Trino read the same tree. A file is visible only under its final
//! `.parquet` name; files being written carry a hidden `.inprogress` name.

use std::path::{Path, PathBuf};

use hawking_schemas::pipeline::Table;

pub const HOUR_US: i64 = 3_600_000_000;
const DAY_US: i64 = 24 * HOUR_US;

/// Suffix of files still being written (never read by queries).
pub const IN_PROGRESS_SUFFIX: &str = ".inprogress";

/// An inclusive range of timestamps in µs since the epoch; `None` is unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TimeRange {
    pub start_us: Option<i64>,
    pub end_us: Option<i64>,
}

impl TimeRange {
    pub const ALL: TimeRange = TimeRange {
        start_us: None,
        end_us: None,
    };

    /// Whether `[from, to)` overlaps this range.
    pub fn overlaps(&self, from_us: i64, to_us: i64) -> bool {
        self.start_us.is_none_or(|s| s < to_us) && self.end_us.is_none_or(|e| e >= from_us)
    }

    /// Narrows to the intersection with `other`.
    pub fn intersect(self, other: TimeRange) -> TimeRange {
        TimeRange {
            start_us: match (self.start_us, other.start_us) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            end_us: match (self.end_us, other.end_us) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            },
        }
    }
}

/// Start of the hour containing `ts_us`.
pub fn hour_of(ts_us: i64) -> i64 {
    ts_us.div_euclid(HOUR_US) * HOUR_US
}

/// Days since the epoch to (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + (m <= 2) as i64, m, d)
}

fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The `date=…` directory name of the day containing `ts_us`.
pub fn date_dir(ts_us: i64) -> String {
    let (y, m, d) = civil_from_days(ts_us.div_euclid(DAY_US));
    format!("date={y:04}-{m:02}-{d:02}")
}

/// The `hour=…` directory name of the hour containing `ts_us`.
pub fn hour_dir(ts_us: i64) -> String {
    format!("hour={:02}", ts_us.rem_euclid(DAY_US) / HOUR_US)
}

/// Parses a `date=YYYY-MM-DD` directory name into the day's start (µs).
pub fn parse_date_dir(name: &str) -> Option<i64> {
    let s = name.strip_prefix("date=")?;
    let mut parts = s.splitn(3, '-');
    let y: i64 = parts.next()?.parse().ok()?;
    let m: u32 = parts.next()?.parse().ok()?;
    let d: u32 = parts.next()?.parse().ok()?;
    if !(1..=12).contains(&m) || !(1..=31).contains(&d) {
        return None;
    }
    Some(days_from_civil(y, m, d) * DAY_US)
}

/// Parses an `hour=HH` directory name into the offset within its day (µs).
pub fn parse_hour_dir(name: &str) -> Option<i64> {
    let h: i64 = name.strip_prefix("hour=")?.parse().ok()?;
    (0..24).contains(&h).then_some(h * HOUR_US)
}

/// A table's directory inside the store root.
pub fn table_dir(root: &Path, table: Table) -> PathBuf {
    root.join(table.name())
}

/// The partition directory holding rows whose partition time is `ts_us`.
pub fn partition_dir(table_dir: &Path, ts_us: i64) -> PathBuf {
    table_dir.join(date_dir(ts_us)).join(hour_dir(ts_us))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names_round_trip() {
        for ts in [
            0i64,
            1_795_168_800_123_456,
            -1,
            951_782_400_000_000, /* 2000-02-29 */
        ] {
            let date = date_dir(ts);
            let hour = hour_dir(ts);
            let start = parse_date_dir(&date).unwrap() + parse_hour_dir(&hour).unwrap();
            assert_eq!(start, hour_of(ts), "{date}/{hour}");
        }
        assert_eq!(date_dir(1_795_168_800_000_000), "date=2026-11-20");
        assert_eq!(hour_dir(1_795_168_800_000_000), "hour=10");
        assert_eq!(parse_date_dir("date=2026-13-01"), None);
        assert_eq!(parse_hour_dir("hour=24"), None);
    }

    #[test]
    fn ranges_overlap_half_open_partitions() {
        let r = TimeRange {
            start_us: Some(HOUR_US),
            end_us: Some(2 * HOUR_US),
        };
        assert!(
            !r.overlaps(0, HOUR_US),
            "the hour before ends where the range starts"
        );
        assert!(r.overlaps(HOUR_US, 2 * HOUR_US));
        assert!(
            r.overlaps(2 * HOUR_US, 3 * HOUR_US),
            "an inclusive end touches the next hour"
        );
        assert!(TimeRange::ALL.overlaps(i64::MIN, i64::MAX));
    }
}
