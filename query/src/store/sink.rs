//! The Parquet store as a sink: rows of every table buffered per hour partition and
//! committed as complete files when the flush interval or the row bound says so. A failed
//! commit keeps the rows buffered (up to a bound, beyond which the oldest are dropped and
//! counted); at shutdown every accepted row is committed or the loss is reported.

use std::path::Path;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use hawking_schemas::pipeline::{Committed, Sink, SinkError, Table};
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use prometheus::{Histogram, IntCounter, IntCounterVec, IntGauge};
use serde::{Deserialize, Serialize};

use super::StoreError;
use super::compact::CompactionConfig;
use super::retention::RetentionConfig;
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
        }
    }
}

struct StoreMetrics {
    rows_written: IntCounterVec,
    files_committed: IntCounter,
    commit_errors: IntCounter,
    rows_dropped: IntCounterVec,
    buffered_rows: IntGauge,
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
            commit_seconds: t.histogram(
                "hawking_store_commit_seconds",
                "Time to encode and commit buffered rows",
            )?,
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreSinkError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("registering store metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// See the module documentation.
pub struct StoreSink {
    writers: Vec<(Table, PartitionedWriter)>,
    config: StoreConfig,
    /// When the oldest row still buffered arrived.
    oldest_buffered: Option<Instant>,
    /// Rows dropped from the buffer since opening.
    shed: u64,
    metrics: StoreMetrics,
    component: Component,
}

impl StoreSink {
    /// Opens every table of the store at `root` for writing (removing what a crashed writer
    /// left half-written).
    pub fn open(
        root: &Path,
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
        Ok(StoreSink {
            writers,
            config: config.clone(),
            oldest_buffered: None,
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
}

impl Sink for StoreSink {
    fn name(&self) -> &str {
        "store"
    }

    fn write(&mut self, table: Table, rows: RecordBatch) -> Result<(), SinkError> {
        let n = rows.num_rows() as u64;
        if n == 0 {
            return Ok(());
        }
        self.writer(table)
            .write(rows)
            .map_err(|e| SinkError::Rejected {
                sink: "store".into(),
                table,
                source: Box::new(e),
            })?;
        self.component.received(n, 0);
        self.oldest_buffered.get_or_insert_with(Instant::now);
        self.metrics
            .buffered_rows
            .set(self.flow_rows_buffered() as i64);
        Ok(())
    }

    fn commit_due(&self, now: Instant) -> bool {
        let interval = Duration::from_secs_f64(self.config.flush_interval_secs.max(0.05));
        self.oldest_buffered
            .is_some_and(|t| now.saturating_duration_since(t) >= interval)
            || self.flow_rows_buffered() >= self.config.commit_rows
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
                    if dropped > 0 {
                        self.metrics
                            .rows_dropped
                            .with_label_values(&["buffer_full"])
                            .inc_by(dropped);
                        self.component.dropped(dropped, "buffer_full");
                    }
                    failure.get_or_insert(e);
                }
            }
        }
        timer.observe_duration();
        self.oldest_buffered = (self.rows_buffered() > 0).then(Instant::now);
        self.metrics
            .buffered_rows
            .set(self.flow_rows_buffered() as i64);
        match failure {
            None => Ok(committed),
            Some(e) => Err(SinkError::Commit {
                sink: "store".into(),
                source: Box::new(e),
            }),
        }
    }

    fn shed(&self) -> u64 {
        self.shed
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
                .rows_dropped
                .with_label_values(&["commit_failed_at_shutdown"])
                .inc_by(lost);
            self.component.dropped(lost, "commit_failed_at_shutdown");
            return Err(SinkError::Undelivered {
                sink: "store".into(),
                rows: lost,
            });
        }
        Ok(committed)
    }
}
