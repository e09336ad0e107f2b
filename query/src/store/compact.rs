//! Compaction: the many small files ingest writes into an hour (one per flush) merged, once
//! the hour is closed, into few large files sorted by the table's time column and encoded
//! for reading; in the history logs, rows superseded within the hour (an interval's open row
//! beside its closed one) are folded away as the views would. Each hour is replaced in one
//! step ([`super::hour`]): a query sees the small files or their merge, never both or
//! neither, and a crash at any step leaves one complete set.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use futures::StreamExt;
use hawking_schemas::pipeline::Table;
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::layout::{HOUR_US, TimeRange, partition_dir};
use super::root::{Replacement, StoreRoot, TableLocation};
use super::writer::{ParquetFile, WriterOptions};

/// Name prefix of files compaction writes (ingest writes `part-…`).
pub const COMPACTED_PREFIX: &str = "compacted-";

/// The `[store.compaction]` section.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CompactionConfig {
    /// Whether `hawking serve` compacts closed hours in the background. Default true.
    pub enabled: bool,
    /// An hour is compacted once it ended this many seconds ago: flows arrive after their
    /// start by up to the exporters' active timeout (30 minutes is common) plus the enricher's
    /// grace period. Rows that arrive later still are kept beside the merge and merged by a
    /// later pass. Default 3600.
    pub settle_secs: u64,
    /// Seconds between background passes (compaction, then retention). Default 60.
    pub interval_secs: u64,
    /// Rows per compacted file; a larger hour gets several. Default 16777216.
    pub file_rows: usize,
    /// Memory the merge's sort may hold before it spills to disk. Default 268435456 (256 MiB).
    pub memory_limit_bytes: usize,
    /// Encoding of compacted files (they are read for as long as they are kept).
    /// Default zstd level 3, row groups of 1,048,576 rows.
    pub writer: WriterOptions,
}

impl Default for CompactionConfig {
    fn default() -> Self {
        CompactionConfig {
            enabled: true,
            settle_secs: 3600,
            interval_secs: 60,
            file_rows: 16 << 20,
            memory_limit_bytes: 256 << 20,
            writer: WriterOptions {
                zstd_level: 3,
                ..WriterOptions::default()
            },
        }
    }
}

/// What compacting one hour did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HourCompacted {
    pub table: Option<Table>,
    pub hour_us: i64,
    pub files_in: usize,
    pub files_out: usize,
    pub rows_in: u64,
    /// Rows written: equal to `rows_in` for `flows`; fewer for a log whose superseded rows
    /// were folded away.
    pub rows_out: u64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    /// Files that arrived while the hour was merged, kept beside the merge.
    pub kept_arrivals: usize,
}

/// Totals of one pass over the store.
#[derive(Clone, Debug, Default)]
pub struct CompactionPass {
    pub hours: Vec<HourCompacted>,
    /// Hours another compaction replaced first (their files are already merged).
    pub lost_races: usize,
}

/// Whether an hour holding `files` gains from compaction: several files, or one that ingest
/// wrote (unsorted, encoded for writing).
pub fn needs_compaction(files: &[PathBuf]) -> bool {
    match files {
        [] => false,
        [one] => !is_compacted(one),
        _ => true,
    }
}

/// Whether compaction wrote `file`.
pub fn is_compacted(file: &Path) -> bool {
    file.file_name()
        .is_some_and(|n| n.to_string_lossy().starts_with(COMPACTED_PREFIX))
}

/// A DataFusion session for the store's own maintenance of the table at `table`: one
/// partition (ingest has the other core), the sort spilling past `memory_limit_bytes`, text
/// read as stored (`Utf8`).
pub(crate) fn maintenance_session(
    table: &TableLocation,
    memory_limit_bytes: usize,
) -> Result<SessionContext, StoreError> {
    let mut config = SessionConfig::new().with_target_partitions(1);
    config
        .options_mut()
        .execution
        .parquet
        .schema_force_view_types = false;
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(memory_limit_bytes.max(16 << 20), 1.0)
        .build_arc()
        .map_err(StoreError::from_datafusion)?;
    let ctx = SessionContext::new_with_config_rt(config, runtime);
    // Locally a rewrite may swap the hour while it is read: the read finishes from the
    // retired set, and the commit then finds the race (`ConcurrentReplace`) instead of a
    // missing file.
    table.register(&ctx);
    Ok(ctx)
}

/// Registers `files` (of `table`, at `location`) as the SQL table `name` in `ctx`.
pub(crate) async fn register_files(
    ctx: &SessionContext,
    name: &str,
    table: Table,
    location: &TableLocation,
    files: &[PathBuf],
) -> Result<(), StoreError> {
    let schema = table.schema();
    let paths: Vec<String> = files.iter().map(|p| location.file_url(p)).collect();
    let frame = ctx
        .read_parquet(paths, ParquetReadOptions::default().schema(&schema))
        .await
        .map_err(StoreError::from_datafusion)?;
    ctx.register_table(name, frame.into_view())
        .map_err(StoreError::from_datafusion)?;
    Ok(())
}

/// The quoted column list of `table`.
pub(crate) fn column_list(table: Table) -> String {
    table
        .schema()
        .fields()
        .iter()
        .map(|f| format!("\"{}\"", f.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The rows an hour's merge keeps, time-sorted: every flow; per log ID, the row the views
/// would pick among the hour's rows (the closed one, else the latest). Dropping the others
/// changes no view: the row a view picks over the whole log is the best of each hour's best.
fn merge_sql(table: Table) -> String {
    let time = table.time_column();
    match table.log_key() {
        None => format!("SELECT * FROM hour_rows ORDER BY \"{time}\""),
        Some((id, end)) => format!(
            "SELECT {cols} FROM (SELECT *, row_number() OVER (PARTITION BY \"{id}\" \
             ORDER BY \"{end}\" IS NULL, recorded_at DESC) AS hawking_version FROM hour_rows) \
             WHERE hawking_version = 1 ORDER BY \"{time}\"",
            cols = column_list(table)
        ),
    }
}

/// Compacts the hour starting at `hour_us` of `table` in the store at `root`, when it gains
/// from it. `stop` is polled between batches: a stopped compaction leaves the hour as it was.
pub async fn compact_hour(
    root: impl Into<StoreRoot>,
    table: Table,
    hour_us: i64,
    config: &CompactionConfig,
    stop: &AtomicBool,
) -> Result<Option<HourCompacted>, StoreError> {
    let dir = root.into().table(table);
    let files = dir.hour_files(hour_us).await?;
    if !needs_compaction(&files) {
        return Ok(None);
    }
    let (rows_in, bytes_in) = dir.footprint(&files).await?;
    let ctx = maintenance_session(&dir, config.memory_limit_bytes)?;
    register_files(&ctx, "hour_rows", table, &dir, &files).await?;
    let stream = ctx
        .sql(&merge_sql(table))
        .await
        .map_err(StoreError::from_datafusion)?
        .execute_stream()
        .await
        .map_err(StoreError::from_datafusion)?;
    let files_in = files.len();
    let replacement = dir.begin_replacement(hour_us, files)?;
    let written = write_stream(table, &replacement, stream, config, stop).await?;
    if table.log_key().is_none() && written.rows != rows_in {
        return Err(StoreError::CompactionLostRows {
            hour: format!("{dir}/{}", partition_dir(Path::new(""), hour_us).display()),
            read: rows_in,
            written: written.rows,
        });
    }
    let replaced = replacement.commit().await?;
    // What earlier replacements left; failing here leaves it for the next pass.
    if let Err(e) = dir.clean_up().await {
        tracing::warn!(table = %dir, error = %e, "could not delete what replacements left");
    }
    Ok(Some(HourCompacted {
        table: Some(table),
        hour_us,
        files_in,
        files_out: written.files,
        rows_in,
        rows_out: written.rows,
        bytes_in,
        bytes_out: written.bytes,
        kept_arrivals: replaced.kept_arrivals,
    }))
}

/// Compacts every closed hour of every table: hours that ended `settle_secs` before `now_us`
/// (or, with `before_us`, hours that end by then). One hour at a time, oldest first;
/// `on_hour` hears of each as it is done.
pub async fn compact_closed(
    root: impl Into<StoreRoot>,
    config: &CompactionConfig,
    now_us: i64,
    before_us: Option<i64>,
    stop: &AtomicBool,
    on_hour: &mut (dyn FnMut(&HourCompacted) + Send),
) -> Result<CompactionPass, StoreError> {
    let root = root.into();
    let cutoff = before_us.unwrap_or(now_us - config.settle_secs as i64 * 1_000_000);
    let mut pass = CompactionPass::default();
    for table in Table::ALL {
        for hour in hours_of(&root.table(table)).await? {
            if stop.load(Ordering::Relaxed) {
                return Ok(pass);
            }
            if hour + HOUR_US > cutoff {
                continue;
            }
            match compact_hour(&root, table, hour, config, stop).await {
                Ok(Some(done)) => {
                    on_hour(&done);
                    pass.hours.push(done);
                }
                Ok(None) => {}
                Err(StoreError::ConcurrentReplace { .. }) => pass.lost_races += 1,
                Err(StoreError::Stopped) => return Ok(pass),
                Err(e) => return Err(e),
            }
        }
    }
    Ok(pass)
}

/// The hour partitions of `table` that hold files, oldest first.
pub async fn hours_of(table: &TableLocation) -> Result<Vec<i64>, StoreError> {
    let mut hours: Vec<i64> = table
        .list(TimeRange::ALL)
        .await?
        .iter()
        .map(|f| f.partition_start_us)
        .collect();
    hours.dedup();
    Ok(hours)
}

/// What [`write_stream`] wrote.
pub(crate) struct Written {
    pub files: usize,
    pub rows: u64,
    pub bytes: u64,
}

/// Writes `stream`'s rows into `replacement` as files of at most `file_rows` rows, encoded
/// as `config.writer` says.
pub(crate) async fn write_stream(
    table: Table,
    replacement: &Replacement,
    mut stream: impl futures::Stream<Item = datafusion::error::Result<RecordBatch>> + Unpin,
    config: &CompactionConfig,
    stop: &AtomicBool,
) -> Result<Written, StoreError> {
    let schema = table.schema();
    let properties = config.writer.properties(super::tuning_of(table))?;
    let mut written = Written {
        files: 0,
        rows: 0,
        bytes: 0,
    };
    let mut current: Option<(PathBuf, ParquetFile)> = None;
    let stamp = hawking_schemas::time::now_micros();
    while let Some(batch) = stream.next().await {
        if stop.load(Ordering::Relaxed) {
            return Err(StoreError::Stopped);
        }
        let batch = batch.map_err(StoreError::from_datafusion)?;
        // The session's columns are the table's; the batch takes the table's own schema
        // (with its version metadata) so every file states what it holds.
        let batch = RecordBatch::try_new(schema.clone(), batch.columns().to_vec())?;
        let mut offset = 0;
        while offset < batch.num_rows() {
            if current.is_none() {
                let path = replacement.dir().join(format!(
                    "{COMPACTED_PREFIX}{stamp}-{}-{:08x}-{:04}.parquet",
                    std::process::id(),
                    super::writer::writer_token(),
                    written.files
                ));
                let file = ParquetFile::create(&path, schema.clone(), properties.clone())?;
                current = Some((path, file));
                written.files += 1;
            }
            let (_, file) = current.as_mut().expect("opened above");
            let room = config.file_rows.max(1) - file.rows();
            let take = room.min(batch.num_rows() - offset);
            file.write(&batch.slice(offset, take))?;
            offset += take;
            written.rows += take as u64;
            if file.rows() >= config.file_rows.max(1) {
                let (path, file) = current.take().expect("open");
                file.finish()?;
                written.bytes += size_of(&path);
            }
        }
    }
    if let Some((path, file)) = current.take() {
        file.finish()?;
        written.bytes += size_of(&path);
    }
    Ok(written)
}

fn size_of(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::hour::visible_files;
    use crate::store::layout::table_dir;
    use crate::store::test_rows::{H, commit, flows, ip_log};
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{Int64Type, TimestampMicrosecondType};
    use datafusion::physical_plan::collect;

    /// Compacts the 10:00 hour of `table` with the default settings.
    async fn compact_ten(
        root: &Path,
        table: Table,
        stop: bool,
    ) -> Result<Option<HourCompacted>, StoreError> {
        let stop = AtomicBool::new(stop);
        compact_hour(root, table, H, &CompactionConfig::default(), &stop).await
    }

    fn flows_hour(root: &Path) -> PathBuf {
        partition_dir(&table_dir(root, Table::Flows), H)
    }

    /// Five flushes into one hour, each out of time order.
    fn five_flushes(root: &Path) -> Vec<i64> {
        let mut all = Vec::new();
        for f in 0..5i64 {
            let starts: Vec<i64> = (0..100i64)
                .map(|i| H + ((i * 37 + f * 11) % 3600) * 1_000_000 + f)
                .collect();
            all.extend(&starts);
            commit(root, Table::Flows, flows(&starts));
        }
        all
    }

    async fn count_and_bytes(ctx: &SessionContext) -> (i64, i64) {
        let b = ctx
            .sql("SELECT count(*), CAST(sum(bytes) AS BIGINT) FROM flows")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        (
            b[0].column(0).as_primitive::<Int64Type>().value(0),
            b[0].column(1).as_primitive::<Int64Type>().value(0),
        )
    }

    #[tokio::test]
    async fn an_hours_flushes_become_one_time_sorted_file_with_every_row() {
        let tmp = tempfile::tempdir().unwrap();
        let starts = five_flushes(tmp.path());
        assert_eq!(visible_files(&flows_hour(tmp.path())).unwrap().len(), 5);
        let ctx = crate::open_session(tmp.path(), &Default::default())
            .await
            .unwrap();
        let before = count_and_bytes(&ctx).await;
        let done = compact_ten(tmp.path(), Table::Flows, false)
            .await
            .unwrap()
            .expect("five files gain from compaction");
        assert_eq!((done.files_in, done.files_out), (5, 1));
        assert_eq!((done.rows_in, done.rows_out), (500, 500));
        let files = visible_files(&flows_hour(tmp.path())).unwrap();
        assert_eq!(files.len(), 1);
        assert!(is_compacted(&files[0]));
        assert_eq!(count_and_bytes(&ctx).await, before);
        // Time-sorted, as stored.
        let b = ctx
            .sql("SELECT flow_start FROM flows")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let read: Vec<i64> = b
            .iter()
            .flat_map(|b| {
                b.column(0)
                    .as_primitive::<TimestampMicrosecondType>()
                    .values()
                    .to_vec()
            })
            .collect();
        let mut sorted = starts.clone();
        sorted.sort();
        assert_eq!(read, sorted);
        // A compacted hour is left alone.
        let again = compact_ten(tmp.path(), Table::Flows, false).await.unwrap();
        assert_eq!(again, None);
    }

    #[tokio::test]
    async fn a_query_planned_before_the_merge_reads_the_files_it_listed() {
        let tmp = tempfile::tempdir().unwrap();
        five_flushes(tmp.path());
        let ctx = crate::open_session(tmp.path(), &Default::default())
            .await
            .unwrap();
        let expected = count_and_bytes(&ctx).await;
        // Planned (the hour's five files listed), not yet read.
        let plan = ctx
            .sql("SELECT count(*), CAST(sum(bytes) AS BIGINT) FROM flows")
            .await
            .unwrap()
            .create_physical_plan()
            .await
            .unwrap();
        compact_ten(tmp.path(), Table::Flows, false)
            .await
            .unwrap()
            .unwrap();
        let b = collect(plan, ctx.task_ctx()).await.unwrap();
        let got = (
            b[0].column(0).as_primitive::<Int64Type>().value(0),
            b[0].column(1).as_primitive::<Int64Type>().value(0),
        );
        assert_eq!(
            got, expected,
            "the listed set, whole: not both, not neither"
        );
    }

    #[tokio::test]
    async fn a_stopped_compaction_leaves_the_hour_as_it_was() {
        let tmp = tempfile::tempdir().unwrap();
        five_flushes(tmp.path());
        let before = visible_files(&flows_hour(tmp.path())).unwrap();
        let err = compact_ten(tmp.path(), Table::Flows, true)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Stopped), "{err}");
        assert_eq!(visible_files(&flows_hour(tmp.path())).unwrap(), before);
        let replaced = crate::store::hour::replaced_dir(&table_dir(tmp.path(), Table::Flows))
            .join("date=2026-11-20");
        let staged: Vec<String> = std::fs::read_dir(&replaced)
            .unwrap()
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        assert!(staged.is_empty(), "no staging left: {staged:?}");
    }

    #[tokio::test]
    async fn a_logs_superseded_rows_fold_away_and_its_view_is_unchanged() {
        let tmp = tempfile::tempdir().unwrap();
        let s = 1_000_000;
        // Interval 1 opens and closes within the hour; interval 2 stays open.
        commit(
            tmp.path(),
            Table::IpHistoryLog,
            ip_log(&[(1, H + s, H, None)]),
        );
        commit(
            tmp.path(),
            Table::IpHistoryLog,
            ip_log(&[(2, H + 2 * s, H, None)]),
        );
        commit(
            tmp.path(),
            Table::IpHistoryLog,
            ip_log(&[(1, H + 9 * s, H, Some(H + 9 * s))]),
        );
        let ctx = crate::open_session(tmp.path(), &Default::default())
            .await
            .unwrap();
        let view = "SELECT interval_id, valid_to IS NULL FROM ip_history ORDER BY interval_id";
        let before = ctx.sql(view).await.unwrap().collect().await.unwrap();
        let done = compact_ten(tmp.path(), Table::IpHistoryLog, false)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((done.rows_in, done.rows_out), (3, 2), "1's open row folded");
        let after = ctx.sql(view).await.unwrap().collect().await.unwrap();
        assert_eq!(
            arrow::util::pretty::pretty_format_batches(&after)
                .unwrap()
                .to_string(),
            arrow::util::pretty::pretty_format_batches(&before)
                .unwrap()
                .to_string()
        );
        let ids = ctx
            .sql("SELECT interval_id FROM ip_history_log ORDER BY interval_id")
            .await
            .unwrap()
            .collect()
            .await
            .unwrap();
        let ids: &Int64Array = ids[0].column(0).as_primitive();
        assert_eq!(ids.values().to_vec(), vec![1, 2]);
    }

    #[tokio::test]
    async fn only_hours_past_their_settling_time_are_compacted() {
        let tmp = tempfile::tempdir().unwrap();
        five_flushes(tmp.path());
        commit(
            tmp.path(),
            Table::Flows,
            flows(&[H + HOUR_US, H + HOUR_US + 5]),
        );
        commit(tmp.path(), Table::Flows, flows(&[H + HOUR_US + 9]));
        let config = CompactionConfig {
            settle_secs: 600,
            ..Default::default()
        };
        let stop = AtomicBool::new(false);
        // 10:00 ended 11 minutes ago; 11:00 is still open.
        let now = H + HOUR_US + 660 * 1_000_000;
        let pass = compact_closed(tmp.path(), &config, now, None, &stop, &mut |_| {})
            .await
            .unwrap();
        let hours: Vec<i64> = pass.hours.iter().map(|h| h.hour_us).collect();
        assert_eq!(hours, [H]);
        let eleven = partition_dir(&table_dir(tmp.path(), Table::Flows), H + HOUR_US);
        assert_eq!(visible_files(&eleven).unwrap().len(), 2);
    }
}
