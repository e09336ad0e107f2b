//! Retention: each table keeps a configured number of days. Expired `flows` hours are
//! removed whole. In the history logs an hour's age is not its rows' relevance: an address
//! held for months has its open row in an old hour, and dropping it would turn its flows
//! `unknown` (or, with a later row left alone, change what the views say). So a log's
//! expired hour keeps the rows its views still need — per ID the row they pick, unless that
//! interval ended before the retention horizon and all its rows are that old — and loses the
//! rest. Each hour changes in one step ([`super::hour`]).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{AsArray, BooleanArray, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::TimestampMicrosecondType;
use hawking_schemas::pipeline::Table;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::compact::{
    CompactionConfig, column_list, maintenance_session, register_files, write_stream,
};
use super::layout::{HOUR_US, TimeRange, hour_of, partition_dir};
use super::root::{Replacement, StoreRoot, TableLocation};

const DAY_US: i64 = 24 * HOUR_US;

/// The `[store.retention]` section: days each table keeps. Unset keeps everything (the
/// default: deleting data is the operator's decision). Keep the history at least as long as
/// the flows, or `replay` can no longer re-attribute the oldest flows.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Days of `flows` kept, by `flow_start`; older hours are deleted.
    pub flows_days: Option<u32>,
    /// Days of `ip_history` kept; an address still held, or released within the window,
    /// stays whatever its age.
    pub ip_history_days: Option<u32>,
    /// Days of `history_gaps` kept; a gap still open or ended within the window stays.
    pub history_gaps_days: Option<u32>,
    /// Days of `nat_history` kept; a translation still open or ended within the window stays.
    pub nat_history_days: Option<u32>,
}

impl RetentionConfig {
    /// Days `table` keeps, if limited.
    pub fn days(&self, table: Table) -> Option<u32> {
        match table {
            Table::Flows => self.flows_days,
            Table::IpHistoryLog => self.ip_history_days,
            Table::HistoryGapsLog => self.history_gaps_days,
            Table::NatHistoryLog => self.nat_history_days,
        }
    }

    /// Refuses a zero (which would delete all but the current hour: surely a mistake).
    pub fn validate(&self) -> Result<(), String> {
        for table in Table::ALL {
            if self.days(table) == Some(0) {
                return Err(format!(
                    "retention of {table}: 0 days would delete everything; give at least 1 or leave it unset"
                ));
            }
        }
        Ok(())
    }

    /// Why this configuration may surprise: history kept shorter than the flows it explains.
    pub fn warnings(&self) -> Vec<String> {
        let Some(flows) = self.flows_days else {
            return Vec::new();
        };
        [Table::IpHistoryLog, Table::NatHistoryLog]
            .into_iter()
            .filter_map(|t| {
                let days = self.days(t)?;
                (days < flows).then(|| {
                    format!(
                        "{t} keeps {days} days but flows keep {flows}: replay cannot re-attribute flows older than {days} days"
                    )
                })
            })
            .collect()
    }
}

/// The start of the oldest hour `days` of retention keep at `now_us`: hours that end by
/// then are expired.
pub fn horizon(now_us: i64, days: u32) -> i64 {
    hour_of(now_us - days as i64 * DAY_US)
}

/// What retention did to one hour.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HourPruned {
    pub table: Table,
    pub hour_us: i64,
    pub rows_before: u64,
    /// Rows kept (history the views still need); 0 when the hour was removed.
    pub rows_kept: u64,
}

/// Totals of one retention pass.
#[derive(Clone, Debug, Default)]
pub struct PrunePass {
    pub hours: Vec<HourPruned>,
    /// Hours another replacement changed first (retried on the next pass).
    pub lost_races: usize,
}

/// Applies `config` to every table of the store at `root` as of `now_us`.
pub async fn prune(
    root: impl Into<StoreRoot>,
    config: &RetentionConfig,
    now_us: i64,
    stop: &AtomicBool,
) -> Result<PrunePass, StoreError> {
    let root = root.into();
    let mut pass = PrunePass::default();
    for table in Table::ALL {
        let Some(days) = config.days(table) else {
            continue;
        };
        if days == 0 {
            continue;
        }
        let cutoff = horizon(now_us, days);
        let dir = root.table(table);
        let result = match table.log_key() {
            None => prune_whole_hours(&dir, table, cutoff, stop, &mut pass).await,
            Some(_) => prune_log(&dir, table, cutoff, stop, &mut pass).await,
        };
        match result {
            Ok(()) | Err(StoreError::Stopped) => {}
            Err(e) => return Err(e),
        }
        // What earlier replacements left; failing here leaves it for the next pass.
        if let Err(e) = dir.clean_up().await {
            tracing::warn!(table = %dir, error = %e, "could not delete what replacements left");
        }
    }
    Ok(pass)
}

/// The hours of `table` that end by `cutoff`, with their files.
async fn expired_hours(
    table: &TableLocation,
    cutoff: i64,
) -> Result<BTreeMap<i64, Vec<PathBuf>>, StoreError> {
    let range = TimeRange {
        start_us: None,
        end_us: Some(cutoff - 1),
    };
    let mut hours: BTreeMap<i64, Vec<PathBuf>> = BTreeMap::new();
    for f in table.list(range).await? {
        if f.partition_start_us + HOUR_US <= cutoff {
            hours.entry(f.partition_start_us).or_default().push(f.path);
        }
    }
    Ok(hours)
}

async fn prune_whole_hours(
    dir: &TableLocation,
    table: Table,
    cutoff: i64,
    stop: &AtomicBool,
    pass: &mut PrunePass,
) -> Result<(), StoreError> {
    for (hour, files) in expired_hours(dir, cutoff).await? {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::Stopped);
        }
        let (rows_before, _) = dir.footprint(&files).await?;
        let replacement = dir.begin_replacement(hour, files)?;
        finish(replacement, dir, table, hour, rows_before, pass).await?;
    }
    Ok(())
}

/// Commits a replacement, removes the hour's directory when nothing is left in it, and
/// records the hour in `pass` (files that arrived meanwhile count as kept). Another
/// replacement that got there first is a lost race, retried on the next pass.
async fn finish(
    replacement: Replacement,
    dir: &TableLocation,
    table: Table,
    hour: i64,
    rows_before: u64,
    pass: &mut PrunePass,
) -> Result<(), StoreError> {
    match replacement.commit().await {
        Ok(_) => {}
        Err(StoreError::ConcurrentReplace { .. }) => {
            pass.lost_races += 1;
            return Ok(());
        }
        Err(e) => return Err(e),
    }
    let rows_kept = match dir {
        TableLocation::Local(table_dir) => {
            // Under the hour's lock, so that no writer is adding a file to the directory
            // while it is removed.
            let _lock = super::hour::lock_hour(table_dir, hour)?;
            let hour_dir = partition_dir(table_dir, hour);
            let left = super::hour::visible_files(&hour_dir)?;
            if left.is_empty() {
                let _ = std::fs::remove_dir(&hour_dir);
            }
            dir.footprint(&left).await?.0
        }
        // An object store has no directories to remove.
        TableLocation::Object { .. } => {
            let left = dir.hour_files(hour).await?;
            dir.footprint(&left).await?.0
        }
    };
    pass.hours.push(HourPruned {
        table,
        hour_us: hour,
        rows_before,
        rows_kept,
    });
    Ok(())
}

/// The rows of a log's expired hours (`recorded_at` before `cutoff`) its views still need.
fn survivors_sql(table: Table, cutoff: i64) -> String {
    let (id, end) = table.log_key().expect("a log table");
    let at = format!("arrow_cast({cutoff}, 'Timestamp(Microsecond, Some(\"UTC\"))')");
    format!(
        "SELECT {cols} FROM (SELECT *, \
           row_number() OVER (PARTITION BY \"{id}\" ORDER BY \"{end}\" IS NULL, recorded_at DESC) AS hawking_version, \
           max(recorded_at) OVER (PARTITION BY \"{id}\") AS hawking_last \
         FROM log_rows) \
         WHERE recorded_at < {at} AND hawking_version = 1 \
           AND NOT (\"{end}\" IS NOT NULL AND \"{end}\" < {at} AND hawking_last < {at}) \
         ORDER BY recorded_at",
        cols = column_list(table)
    )
}

async fn prune_log(
    dir: &TableLocation,
    table: Table,
    cutoff: i64,
    stop: &AtomicBool,
    pass: &mut PrunePass,
) -> Result<(), StoreError> {
    let expired = expired_hours(dir, cutoff).await?;
    if expired.is_empty() {
        return Ok(());
    }
    let all: Vec<PathBuf> = dir
        .list(TimeRange::ALL)
        .await?
        .into_iter()
        .map(|f| f.path)
        .collect();
    let settings = CompactionConfig::default();
    let ctx = maintenance_session(dir, settings.memory_limit_bytes)?;
    register_files(&ctx, "log_rows", table, dir, &all).await?;
    let survivors = ctx
        .sql(&survivors_sql(table, cutoff))
        .await
        .map_err(StoreError::from_datafusion)?
        .collect()
        .await
        .map_err(StoreError::from_datafusion)?;
    for (hour, files) in expired {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::Stopped);
        }
        let (rows_before, _) = dir.footprint(&files).await?;
        let kept = rows_of_hour(&survivors, table, hour)?;
        let kept_rows: u64 = kept.iter().map(|b| b.num_rows() as u64).sum();
        if kept_rows == rows_before {
            continue;
        }
        let replacement = dir.begin_replacement(hour, files)?;
        let stream = futures::stream::iter(kept.into_iter().map(Ok));
        write_stream(table, &replacement, stream, &settings, stop).await?;
        finish(replacement, dir, table, hour, rows_before, pass).await?;
    }
    Ok(())
}

/// The rows of `batches` whose partition time falls in the hour starting at `hour`.
fn rows_of_hour(
    batches: &[RecordBatch],
    table: Table,
    hour: i64,
) -> Result<Vec<RecordBatch>, StoreError> {
    let mut out = Vec::new();
    for b in batches {
        let Some(times) = b
            .column_by_name(table.time_column())
            .and_then(|c| c.as_primitive_opt::<TimestampMicrosecondType>())
        else {
            return Err(StoreError::PartitionColumnType {
                column: table.time_column().to_string(),
            });
        };
        let mask: BooleanArray = times
            .iter()
            .map(|t| Some(t.is_some_and(|t| hour_of(t) == hour)))
            .collect();
        let part = filter_record_batch(b, &mask)?;
        if part.num_rows() > 0 {
            out.push(part);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::table_dir;
    use crate::store::test_rows::{H, commit, flows, ip_log};
    use arrow::array::{AsArray, Int64Array};
    use std::path::Path;

    const S: i64 = 1_000_000;

    async fn hours_with_files(root: &Path, table: Table) -> Vec<i64> {
        crate::store::compact::hours_of(&StoreRoot::from(root).table(table))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn flows_lose_exactly_the_hours_that_ended_before_the_horizon() {
        let tmp = tempfile::tempdir().unwrap();
        for h in 0..6 {
            commit(tmp.path(), Table::Flows, flows(&[H + h * HOUR_US + S]));
        }
        // One day kept, evaluated at 14:30 the next day: the horizon is 14:00 the day
        // before, so 10:00..13:00 go and 14:00, 15:00 stay.
        let now = H + DAY_US + 4 * HOUR_US + 1800 * S;
        let config = RetentionConfig {
            flows_days: Some(1),
            ..Default::default()
        };
        let pass = prune(tmp.path(), &config, now, &AtomicBool::new(false))
            .await
            .unwrap();
        let pruned: Vec<i64> = pass.hours.iter().map(|h| h.hour_us).collect();
        assert_eq!(pruned, (0..4).map(|h| H + h * HOUR_US).collect::<Vec<_>>());
        assert!(
            pass.hours
                .iter()
                .all(|h| h.rows_before == 1 && h.rows_kept == 0)
        );
        assert_eq!(
            hours_with_files(tmp.path(), Table::Flows).await,
            [H + 4 * HOUR_US, H + 5 * HOUR_US]
        );
        // The removed hours' directories are gone too; a second pass has nothing to do.
        assert!(!partition_dir(&table_dir(tmp.path(), Table::Flows), H).exists());
        let again = prune(tmp.path(), &config, now, &AtomicBool::new(false))
            .await
            .unwrap();
        assert!(again.hours.is_empty());
    }

    #[tokio::test]
    async fn old_history_that_still_explains_addresses_is_kept() {
        let tmp = tempfile::tempdir().unwrap();
        let old = H;
        let recent = H + 3 * DAY_US;
        commit(
            tmp.path(),
            Table::IpHistoryLog,
            ip_log(&[
                // 1: opened long ago, still held (a node, a long-lived pod).
                (1, old + S, old, None),
                // 2: opened and released long ago.
                (2, old + 2 * S, old, None),
                (2, old + 60 * S, old, Some(old + 60 * S)),
                // 3: opened long ago, released recently: the open row is superseded.
                (3, old + 3 * S, old, None),
            ]),
        );
        commit(
            tmp.path(),
            Table::IpHistoryLog,
            ip_log(&[(3, recent, old, Some(recent))]),
        );
        let config = RetentionConfig {
            ip_history_days: Some(1),
            ..Default::default()
        };
        let pass = prune(
            tmp.path(),
            &config,
            recent + HOUR_US,
            &AtomicBool::new(false),
        )
        .await
        .unwrap();
        assert_eq!(pass.hours.len(), 1);
        assert_eq!((pass.hours[0].rows_before, pass.hours[0].rows_kept), (4, 1));
        let ctx = crate::open_session(tmp.path(), &Default::default())
            .await
            .unwrap();
        let b = ctx
            .sql(
                "SELECT interval_id, valid_to IS NULL AS open FROM ip_history ORDER BY interval_id",
            )
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ids: &Int64Array = b[0].column(0).as_primitive();
        assert_eq!(
            ids.values().to_vec(),
            vec![1, 3],
            "2 ended before the horizon"
        );
        let open = b[0].column(1).as_boolean();
        assert!(open.value(0), "1 is still held");
        assert!(!open.value(1), "3 keeps its release");
    }

    #[test]
    fn zero_days_is_refused_and_short_history_is_warned_about() {
        let zero = RetentionConfig {
            flows_days: Some(0),
            ..Default::default()
        };
        assert!(zero.validate().unwrap_err().contains("flows"));
        let short = RetentionConfig {
            flows_days: Some(30),
            ip_history_days: Some(7),
            ..Default::default()
        };
        let w = short.warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("ip_history_log keeps 7 days"), "{w:?}");
    }
}
