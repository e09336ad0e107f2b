//! Wires the running pipeline: the NetFlow listener thread decodes into batches, the sink
//! thread turns them into rows and commits them to the store. Shutdown stops the listener,
//! which drains the socket and hands over its last batch; the sink commits everything it
//! received and only then exits.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::{CollectorMetrics, ListenerStats, NetflowListener};
use hawking_query::store::layout::table_dir;
use hawking_query::{FLOWS_TABLE, FLOWS_TUNING, PartitionedWriter};
use hawking_schemas::{FlowBatch, flow_schema};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

use crate::config::{Config, StoreConfig};

/// Batches in flight between the listener and the sink; when full, the listener waits and
/// the kernel socket buffer absorbs the burst.
const CHANNEL_BATCHES: usize = 8;

/// Store counters.
#[derive(Clone)]
pub struct SinkMetrics {
    rows_written: IntCounter,
    files_committed: IntCounter,
    commit_errors: IntCounter,
    rows_dropped: IntCounterVec,
    buffered_rows: IntGauge,
    commit_seconds: Histogram,
}

impl SinkMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let rows_written = IntCounter::new(
            "hawking_store_rows_written_total",
            "Flow rows committed to the store",
        )?;
        let files_committed = IntCounter::new(
            "hawking_store_files_committed_total",
            "Parquet files committed",
        )?;
        let commit_errors = IntCounter::new(
            "hawking_store_commit_errors_total",
            "Failed commits (rows stay buffered)",
        )?;
        let rows_dropped = IntCounterVec::new(
            Opts::new(
                "hawking_store_rows_dropped_total",
                "Accepted rows dropped before reaching the store, by reason",
            ),
            &["reason"],
        )?;
        let buffered_rows = IntGauge::new(
            "hawking_store_buffered_rows",
            "Rows accepted but not yet committed",
        )?;
        let commit_seconds = Histogram::with_opts(HistogramOpts::new(
            "hawking_store_commit_seconds",
            "Time to encode and commit buffered rows",
        ))?;
        for c in [&rows_written, &files_committed, &commit_errors] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(rows_dropped.clone()))?;
        registry.register(Box::new(buffered_rows.clone()))?;
        registry.register(Box::new(commit_seconds.clone()))?;
        Ok(SinkMetrics {
            rows_written,
            files_committed,
            commit_errors,
            rows_dropped,
            buffered_rows,
            commit_seconds,
        })
    }
}

/// Totals of one sink run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkStats {
    pub rows: u64,
    pub files: u64,
}

pub struct Pipeline {
    shutdown: Arc<AtomicBool>,
    listener: JoinHandle<anyhow::Result<ListenerStats>>,
    sink: JoinHandle<anyhow::Result<SinkStats>>,
    pub netflow_addr: SocketAddr,
}

impl Pipeline {
    /// Binds the listener and opens the store (so configuration errors surface here), then
    /// starts the listener and sink threads.
    pub fn start(config: &Config, registry: &Registry) -> anyhow::Result<Pipeline> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let state_path: PathBuf = data_dir.join("state").join("netflow-templates.json");
        let listener = NetflowListener::bind(config.netflow.clone(), Some(state_path))?;
        let netflow_addr = listener.local_addr()?;
        let writer = PartitionedWriter::new(
            &table_dir(&data_dir, FLOWS_TABLE),
            flow_schema(),
            "flow_start",
            &config.store.writer,
            &FLOWS_TUNING,
        )?;
        let collector_metrics = CollectorMetrics::register(registry)?;
        let sink_metrics = SinkMetrics::register(registry)?;

        let shutdown = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<FlowBatch>(CHANNEL_BATCHES);
        let store_config = config.store.clone();
        let sink = std::thread::Builder::new()
            .name("hawking-sink".into())
            .spawn(move || run_sink(rx, writer, &store_config, &sink_metrics))?;
        let stop = shutdown.clone();
        let listener = std::thread::Builder::new()
            .name("hawking-netflow".into())
            .spawn(move || {
                let stats =
                    listener.run(|batch| tx.send(batch).is_ok(), &collector_metrics, &stop)?;
                Ok(stats)
            })?;
        tracing::info!(netflow = %netflow_addr, data = %data_dir.display(), "pipeline started");
        Ok(Pipeline {
            shutdown,
            listener,
            sink,
            netflow_addr,
        })
    }

    /// Stops receiving, commits every accepted flow, and returns the run's totals.
    pub fn stop(self) -> anyhow::Result<(ListenerStats, SinkStats)> {
        self.shutdown.store(true, Ordering::Relaxed);
        let listener = self
            .listener
            .join()
            .map_err(|_| anyhow::anyhow!("listener thread panicked"))?;
        let sink = self
            .sink
            .join()
            .map_err(|_| anyhow::anyhow!("sink thread panicked"))?;
        Ok((listener?, sink?))
    }
}

fn run_sink(
    rx: Receiver<FlowBatch>,
    mut writer: PartitionedWriter,
    config: &StoreConfig,
    metrics: &SinkMetrics,
) -> anyhow::Result<SinkStats> {
    let flush_interval = Duration::from_secs_f64(config.flush_interval_secs.max(0.05));
    let mut stats = SinkStats::default();
    // Commits are due when the oldest buffered row has waited a flush interval.
    let mut oldest_buffered: Option<Instant> = None;
    loop {
        let closed = match rx.recv_timeout(Duration::from_millis(100)) {
            Ok(batch) => {
                let rows = batch.to_record_batch_unattributed()?;
                writer.write(rows)?;
                oldest_buffered.get_or_insert_with(Instant::now);
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        metrics.buffered_rows.set(writer.buffered_rows() as i64);
        let due = oldest_buffered.is_some_and(|t| t.elapsed() >= flush_interval)
            || writer.buffered_rows() >= config.commit_rows;
        if (due || closed) && writer.buffered_rows() > 0 {
            commit(&mut writer, config, metrics, &mut stats);
            oldest_buffered = (writer.buffered_rows() > 0).then(Instant::now);
        }
        if closed {
            if writer.buffered_rows() > 0 {
                // One more attempt for what a failed final commit left behind.
                commit(&mut writer, config, metrics, &mut stats);
            }
            let lost = writer.shed_to(0);
            if lost > 0 {
                metrics
                    .rows_dropped
                    .with_label_values(&["commit_failed_at_shutdown"])
                    .inc_by(lost as u64);
                anyhow::bail!("{lost} accepted rows could not be committed before shutdown");
            }
            return Ok(stats);
        }
    }
}

fn commit(
    writer: &mut PartitionedWriter,
    config: &StoreConfig,
    metrics: &SinkMetrics,
    stats: &mut SinkStats,
) {
    let timer = metrics.commit_seconds.start_timer();
    match writer.commit() {
        Ok(files) => {
            for f in &files {
                metrics.rows_written.inc_by(f.rows as u64);
                stats.rows += f.rows as u64;
            }
            metrics.files_committed.inc_by(files.len() as u64);
            stats.files += files.len() as u64;
        }
        Err(e) => {
            metrics.commit_errors.inc();
            tracing::error!(error = %e, buffered = writer.buffered_rows(), "commit failed; rows stay buffered");
            let dropped = writer.shed_to(config.max_buffered_rows);
            if dropped > 0 {
                metrics
                    .rows_dropped
                    .with_label_values(&["buffer_full"])
                    .inc_by(dropped as u64);
            }
        }
    }
    timer.observe_duration();
    metrics.buffered_rows.set(writer.buffered_rows() as i64);
}
