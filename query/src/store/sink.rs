//! The Parquet store as a sink: rows of every table encoded as they come into a file per
//! hour partition, on a thread of the store's own (so encoding runs beside attribution
//! instead of after it), committed as complete files when the flush interval or the row
//! bound says so. A failed
//! commit keeps the rows buffered (up to a bound, beyond which the oldest are dropped and
//! counted); at shutdown every accepted row is committed or the loss is reported.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use hawking_schemas::pipeline::{Committed, Sink, SinkError, Table};
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::compact::CompactionConfig;
use super::retention::RetentionConfig;
use super::root::{S3Options, StoreRoot};
use super::writer::{PartitionedWriter, WriterOptions};

/// The `[store]` section: how accepted rows become files.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// Seconds between commits: accepted flows become visible to queries at most this late.
    /// Default 5.
    pub flush_interval_secs: f64,
    /// Rows that trigger a commit before the interval ends. Default 1048576 (one row group).
    pub commit_rows: usize,
    /// Rows kept buffered while commits fail (disk full, permissions); beyond it the oldest
    /// are dropped and counted in `hawking_store_rows_dropped_total`. Default 8388608.
    pub max_buffered_rows: usize,
    /// Parquet encoding of ingested files.
    pub writer: WriterOptions,
    /// Merging closed hours into few large sorted files (`[store.compaction]`).
    pub compaction: CompactionConfig,
    /// Days each table keeps (`[store.retention]`); unset keeps everything.
    pub retention: RetentionConfig,
    /// How to reach the S3-compatible service when the store is on one (`s3://…`).
    pub s3: S3Options,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            flush_interval_secs: 5.0,
            commit_rows: 1 << 20,
            max_buffered_rows: 8 << 20,
            writer: WriterOptions::default(),
            compaction: CompactionConfig::default(),
            retention: RetentionConfig::default(),
            s3: S3Options::default(),
        }
    }
}

struct StoreMetrics {
    rows_written: IntCounterVec,
    files_committed: IntCounter,
    commit_errors: IntCounter,
    rows_dropped: IntCounterVec,
    buffered_rows: IntGauge,
    buffered_bytes: IntGauge,
    commit_seconds: Histogram,
}

impl StoreMetrics {
    fn register(t: &Telemetry) -> prometheus::Result<Self> {
        Ok(StoreMetrics {
            rows_written: t.counter_vec(
                "hawking_store_rows_written_total",
                "Rows committed to the store, by table",
                &["table"],
            )?,
            files_committed: t.counter(
                "hawking_store_files_committed_total",
                "Parquet files committed",
            )?,
            commit_errors: t.counter(
                "hawking_store_commit_errors_total",
                "Failed commits (rows stay buffered)",
            )?,
            rows_dropped: t.counter_vec(
                "hawking_store_rows_dropped_total",
                "Accepted rows dropped before reaching the store, by reason",
                &["reason"],
            )?,
            buffered_rows: t.gauge(
                "hawking_store_buffered_rows",
                "Flow rows accepted but not yet committed",
            )?,
            buffered_bytes: t.gauge(
                "hawking_store_buffered_bytes",
                "Memory the rows not yet committed take, encoded, over every table",
            )?,
            commit_seconds: t.histogram(
                "hawking_store_commit_seconds",
                "Time to encode and commit buffered rows",
            )?,
        })
    }
}

impl StoreMetrics {
    /// Counts `rows` accepted and then dropped, for `reason`, in the store's and the
    /// component's counters.
    fn dropped(&self, component: &Component, rows: u64, reason: &str) {
        if rows > 0 {
            self.rows_dropped.with_label_values(&[reason]).inc_by(rows);
            component.dropped(rows, reason);
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreSinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registering store metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// The store's writers and their metrics: the work [`StoreSink`] hands to its thread.
struct StoreWriter {
    writers: Vec<(Table, PartitionedWriter)>,
    config: StoreConfig,
    /// Rows dropped from the buffer since opening.
    shed: u64,
    metrics: StoreMetrics,
    component: Component,
}

impl StoreWriter {
    fn open(
        root: &StoreRoot,
        config: &StoreConfig,
        telemetry: &Telemetry,
    ) -> Result<Self, StoreSinkError> {
        let writers = Table::ALL
            .into_iter()
            .map(|table| {
                Ok((
                    table,
                    PartitionedWriter::for_table(root, table, &config.writer)?,
                ))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(StoreWriter {
            writers,
            config: config.clone(),
            shed: 0,
            metrics: StoreMetrics::register(telemetry)?,
            component: telemetry.component(ComponentKind::Sink, "store"),
        })
    }

    fn writer(&mut self, table: Table) -> &mut PartitionedWriter {
        let (_, w) = self
            .writers
            .iter_mut()
            .find(|(t, _)| *t == table)
            .expect("a writer for every table");
        w
    }

    fn flow_rows_buffered(&self) -> usize {
        self.writers
            .iter()
            .find(|(t, _)| *t == Table::Flows)
            .map_or(0, |(_, w)| w.buffered_rows())
    }

    fn rows_buffered(&self) -> usize {
        self.writers.iter().map(|(_, w)| w.buffered_rows()).sum()
    }

    fn publish_buffered(&self) {
        self.metrics
            .buffered_rows
            .set(self.flow_rows_buffered() as i64);
        let bytes: usize = self.writers.iter().map(|(_, w)| w.buffered_bytes()).sum();
        self.metrics.buffered_bytes.set(bytes as i64);
    }
}

impl StoreWriter {
    fn write(&mut self, table: Table, rows: RecordBatch) -> Result<(), SinkError> {
        let n = rows.num_rows() as u64;
        if n == 0 {
            return Ok(());
        }
        let writer = self.writer(table);
        let before = writer.buffered_rows();
        if let Err(e) = writer.write(rows) {
            // The batch, and what its partition had buffered if encoding broke the file.
            let lost = (before as i64 - writer.buffered_rows() as i64 + n as i64).max(0) as u64;
            self.shed += lost;
            self.metrics.dropped(&self.component, lost, "encode_failed");
            return Err(SinkError::Rejected {
                sink: "store".into(),
                table,
                source: Box::new(e),
            });
        }
        self.component.received(n, 0);
        self.publish_buffered();
        Ok(())
    }

    fn commit(&mut self) -> Result<Committed, SinkError> {
        let timer = self.metrics.commit_seconds.start_timer();
        let mut committed = Committed::default();
        let mut failure = None;
        let max_buffered = self.config.max_buffered_rows;
        for (table, writer) in &mut self.writers {
            if writer.buffered_rows() == 0 {
                continue;
            }
            match writer.commit() {
                Ok(files) => {
                    let rows: u64 = files.iter().map(|f| f.rows as u64).sum();
                    self.metrics
                        .rows_written
                        .with_label_values(&[table.name()])
                        .inc_by(rows);
                    self.metrics.files_committed.inc_by(files.len() as u64);
                    self.component.sent(rows);
                    committed.rows += rows;
                    committed.units += files.len() as u64;
                    if *table == Table::Flows {
                        committed.flows += rows;
                    }
                }
                Err(e) => {
                    self.metrics.commit_errors.inc();
                    self.component.error(
                        "commit_failed",
                        &format_args!(
                            "{table}: {e}; {} rows stay buffered",
                            writer.buffered_rows()
                        ),
                    );
                    let dropped = writer.shed_to(max_buffered) as u64;
                    self.shed += dropped;
                    self.metrics
                        .dropped(&self.component, dropped, "buffer_full");
                    failure.get_or_insert(e);
                }
            }
        }
        timer.observe_duration();
        self.publish_buffered();
        match failure {
            None => Ok(committed),
            Some(e) => Err(SinkError::Commit {
                sink: "store".into(),
                source: Box::new(e),
            }),
        }
    }

    fn shutdown(&mut self) -> Result<Committed, SinkError> {
        let mut committed = Committed::default();
        // One more attempt for what a failed final commit left behind.
        for _ in 0..2 {
            if self.rows_buffered() == 0 {
                break;
            }
            if let Ok(c) = self.commit() {
                committed += c;
            }
        }
        let mut lost = 0;
        for (_, writer) in &mut self.writers {
            lost += writer.shed_to(0) as u64;
        }
        if lost > 0 {
            self.metrics
                .dropped(&self.component, lost, "commit_failed_at_shutdown");
            return Err(SinkError::Undelivered {
                sink: "store".into(),
                rows: lost,
            });
        }
        Ok(committed)
    }
}

/// What the store's thread is asked to do, in order.
enum Job {
    Write(Table, RecordBatch),
    Commit(SyncSender<CommitReply>),
    Shutdown(SyncSender<CommitReply>),
}

/// What a commit did, and what it left buffered.
struct CommitReply {
    result: Result<Committed, SinkError>,
    rows_buffered: usize,
    flow_rows_buffered: usize,
    shed: u64,
}

/// Batches that may wait for the store's thread: beyond them the stage waits (and with it
/// the sources), as it did when it encoded itself.
const QUEUED_BATCHES: usize = 16;

/// See the module documentation. Commits wait for every row written before them.
pub struct StoreSink {
    jobs: Option<SyncSender<Job>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// A batch the store's thread could not take (a schema mismatch: a bug upstream),
    /// returned by the next write.
    rejected: Arc<Mutex<Option<SinkError>>>,
    flush_interval: Duration,
    commit_rows: usize,
    /// Rows handed over and not committed (as of the last commit, plus those since).
    rows_buffered: usize,
    flow_rows_buffered: usize,
    /// When the oldest row still buffered was handed over.
    oldest_buffered: Option<Instant>,
    shed: u64,
}

impl StoreSink {
    /// Opens every table of the store at `root` for writing (removing what a crashed writer
    /// left half-written) and starts the store's thread.
    pub fn open(
        root: impl Into<StoreRoot>,
        config: &StoreConfig,
        telemetry: &Telemetry,
    ) -> Result<Self, StoreSinkError> {
        let mut writer = StoreWriter::open(&root.into(), config, telemetry)?;
        let (jobs, queue) = sync_channel::<Job>(QUEUED_BATCHES);
        let rejected = Arc::new(Mutex::new(None));
        let thread = std::thread::Builder::new()
            .name("store".into())
            .spawn({
                let rejected = rejected.clone();
                move || {
                    let reply =
                        |writer: &StoreWriter, result: Result<Committed, SinkError>| CommitReply {
                            result,
                            rows_buffered: writer.rows_buffered(),
                            flow_rows_buffered: writer.flow_rows_buffered(),
                            shed: writer.shed,
                        };
                    // Ends when the sink is dropped without a shutdown: what is buffered is
                    // lost then, as it was when the stage dropped its writers.
                    while let Ok(job) = queue.recv() {
                        match job {
                            Job::Write(table, rows) => {
                                if let Err(e) = writer.write(table, rows) {
                                    writer.component.error("write_rejected", &e);
                                    let mut slot = rejected.lock().expect("not poisoned");
                                    slot.get_or_insert(e);
                                }
                            }
                            Job::Commit(to) => {
                                let result = writer.commit();
                                let _ = to.send(reply(&writer, result));
                            }
                            Job::Shutdown(to) => {
                                let result = writer.shutdown();
                                let _ = to.send(reply(&writer, result));
                                return;
                            }
                        }
                    }
                }
            })
            .map_err(|e| StoreError::Io {
                path: "the store's thread".into(),
                source: e,
            })?;
        Ok(StoreSink {
            jobs: Some(jobs),
            thread: Some(thread),
            rejected,
            flush_interval: Duration::from_secs_f64(config.flush_interval_secs.max(0.05)),
            commit_rows: config.commit_rows,
            rows_buffered: 0,
            flow_rows_buffered: 0,
            oldest_buffered: None,
            shed: 0,
        })
    }

    fn gone() -> SinkError {
        SinkError::Commit {
            sink: "store".into(),
            source: "the store's thread has stopped".into(),
        }
    }

    /// Hands `job` to the store's thread and waits for its reply.
    fn ask(
        &mut self,
        job: impl FnOnce(SyncSender<CommitReply>) -> Job,
    ) -> Result<Committed, SinkError> {
        let (to, reply) = sync_channel(1);
        let jobs = self.jobs.as_ref().ok_or_else(Self::gone)?;
        jobs.send(job(to)).map_err(|_| Self::gone())?;
        let reply = reply.recv().map_err(|_| Self::gone())?;
        self.rows_buffered = reply.rows_buffered;
        self.flow_rows_buffered = reply.flow_rows_buffered;
        self.shed = reply.shed;
        self.oldest_buffered = (self.rows_buffered > 0).then(Instant::now);
        reply.result
    }
}

impl Sink for StoreSink {
    fn name(&self) -> &str {
        "store"
    }

    fn write(&mut self, table: Table, rows: RecordBatch) -> Result<(), SinkError> {
        if let Some(e) = self.rejected.lock().expect("not poisoned").take() {
            return Err(e);
        }
        let n = rows.num_rows();
        if n == 0 {
            return Ok(());
        }
        let jobs = self.jobs.as_ref().ok_or_else(Self::gone)?;
        jobs.send(Job::Write(table, rows))
            .map_err(|_| Self::gone())?;
        self.rows_buffered += n;
        if table == Table::Flows {
            self.flow_rows_buffered += n;
        }
        self.oldest_buffered.get_or_insert_with(Instant::now);
        Ok(())
    }

    fn commit_due(&self, now: Instant) -> bool {
        self.oldest_buffered
            .is_some_and(|t| now.saturating_duration_since(t) >= self.flush_interval)
            || self.flow_rows_buffered >= self.commit_rows
    }

    fn commit(&mut self) -> Result<Committed, SinkError> {
        self.ask(Job::Commit)
    }

    fn shed(&self) -> u64 {
        self.shed
    }

    fn shutdown(&mut self) -> Result<Committed, SinkError> {
        let result = self.ask(Job::Shutdown);
        self.jobs = None;
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            return Err(SinkError::Commit {
                sink: "store".into(),
                source: "the store's thread panicked".into(),
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::layout::{HOUR_US, TimeRange};
    use crate::store::test_rows::{H, flows};

    fn stored_rows(root: &std::path::Path) -> usize {
        crate::store::list_files(&root.join("flows"), TimeRange::ALL)
            .unwrap()
            .iter()
            .map(|f| {
                use parquet::file::reader::{FileReader, SerializedFileReader};
                let file = std::fs::File::open(&f.path).unwrap();
                let reader = SerializedFileReader::new(file).unwrap();
                reader.metadata().file_metadata().num_rows() as usize
            })
            .sum()
    }

    #[test]
    fn a_commit_stores_every_row_written_before_it_and_shutdown_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::detached();
        let mut sink = StoreSink::open(tmp.path(), &StoreConfig::default(), &telemetry).unwrap();
        for i in 0..100 {
            sink.write(Table::Flows, flows(&[H + i])).unwrap();
        }
        assert_eq!(sink.commit().unwrap().flows, 100);
        assert_eq!(stored_rows(tmp.path()), 100);
        assert!(!sink.commit_due(Instant::now()), "nothing is buffered");
        sink.write(Table::Flows, flows(&[H + HOUR_US])).unwrap();
        assert_eq!(sink.shutdown().unwrap().flows, 1);
        assert_eq!(stored_rows(tmp.path()), 101);
    }

    #[test]
    fn while_commits_fail_rows_stay_up_to_the_bound_and_the_oldest_are_shed() {
        let tmp = tempfile::tempdir().unwrap();
        let telemetry = Telemetry::detached();
        let config = StoreConfig {
            max_buffered_rows: 10,
            ..StoreConfig::default()
        };
        let mut sink = StoreSink::open(tmp.path(), &config, &telemetry).unwrap();
        for hour in 0..3 {
            let starts: Vec<i64> = (0..10).map(|i| H + hour * HOUR_US + i).collect();
            sink.write(Table::Flows, flows(&starts)).unwrap();
        }
        // The table's directory becomes a file: nothing can be written.
        let table = tmp.path().join("flows");
        std::fs::rename(&table, tmp.path().join("flows.away")).unwrap();
        std::fs::write(&table, b"not a directory").unwrap();
        assert!(sink.commit().is_err());
        assert_eq!(sink.shed(), 20, "the two oldest hours are dropped");
        assert!(
            telemetry
                .exposition()
                .contains("hawking_store_rows_dropped_total{reason=\"buffer_full\"} 20")
        );
        std::fs::remove_file(&table).unwrap();
        std::fs::rename(tmp.path().join("flows.away"), &table).unwrap();
        assert_eq!(sink.commit().unwrap().flows, 10, "the newest hour is kept");
        assert_eq!(sink.shutdown().unwrap().flows, 0);
        assert_eq!(stored_rows(tmp.path()), 10);
    }
}
