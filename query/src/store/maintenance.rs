//! The store's upkeep while `hawking serve` runs: every `[store.compaction] interval_secs`,
//! closed hours are compacted, then retention is applied, on a thread of its own (one core's
//! worth of work at most, beside ingest). Stopping waits for the hour in hand to be
//! abandoned cleanly; nothing half-done is ever visible.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use hawking_schemas::pipeline::Table;
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use hawking_schemas::time::now_micros;
use prometheus::IntCounterVec;

use super::StoreError;
use super::compact::{CompactionConfig, compact_closed};
use super::retention::{RetentionConfig, prune};

struct MaintenanceMetrics {
    hours_compacted: IntCounterVec,
    files_merged: IntCounterVec,
    hours_pruned: IntCounterVec,
}

impl MaintenanceMetrics {
    fn register(t: &Telemetry) -> prometheus::Result<Self> {
        Ok(MaintenanceMetrics {
            hours_compacted: t.counter_vec(
                "hawking_store_hours_compacted_total",
                "Hour partitions merged into compacted files, by table",
                &["table"],
            )?,
            files_merged: t.counter_vec(
                "hawking_store_files_merged_total",
                "Files replaced by compaction, by table",
                &["table"],
            )?,
            hours_pruned: t.counter_vec(
                "hawking_store_hours_pruned_total",
                "Expired hour partitions changed by retention, by table",
                &["table"],
            )?,
        })
    }
}

/// The background upkeep of one store; see the module documentation.
pub struct Maintenance {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Maintenance {
    /// Starts the upkeep of the store at `root`; `None` when neither compaction nor
    /// retention is configured.
    pub fn start(
        root: &Path,
        compaction: &CompactionConfig,
        retention: &RetentionConfig,
        telemetry: &Telemetry,
    ) -> Result<Option<Maintenance>, StoreError> {
        let retains = Table::ALL.iter().any(|t| retention.days(*t).is_some());
        if !compaction.enabled && !retains {
            return Ok(None);
        }
        let metrics = MaintenanceMetrics::register(telemetry).map_err(StoreError::Metrics)?;
        let component = telemetry.component(ComponentKind::Sink, "store_maintenance");
        let stop = Arc::new(AtomicBool::new(false));
        let worker = Worker {
            root: root.to_path_buf(),
            compaction: compaction.clone(),
            retention: retention.clone(),
            metrics,
            component,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hawking-store-upkeep".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::io(root, e))?;
        Ok(Some(Maintenance {
            stop,
            thread: Some(thread),
        }))
    }

    /// Stops after the step in hand (an unfinished hour is abandoned, unchanged).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

struct Worker {
    root: PathBuf,
    compaction: CompactionConfig,
    retention: RetentionConfig,
    metrics: MaintenanceMetrics,
    component: Component,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(self) {
        let runtime = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "store upkeep could not start");
                return;
            }
        };
        let interval = Duration::from_secs(self.compaction.interval_secs.max(1));
        // The first pass waits one interval: start-up belongs to ingest.
        let mut next = Instant::now() + interval;
        while !self.stop.load(Ordering::Relaxed) {
            if Instant::now() < next {
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
            runtime.block_on(self.pass());
            next = Instant::now() + interval;
        }
    }

    async fn pass(&self) {
        if self.compaction.enabled {
            let mut on_hour = |h: &super::compact::HourCompacted| {
                let table = h.table.map(|t| t.name()).unwrap_or_default();
                self.metrics
                    .hours_compacted
                    .with_label_values(&[table])
                    .inc();
                self.metrics
                    .files_merged
                    .with_label_values(&[table])
                    .inc_by(h.files_in as u64);
                // Rows read and rewritten; a log's superseded rows count as folded.
                self.component.received(h.rows_in, h.bytes_in);
                self.component.sent(h.rows_out);
                self.component
                    .dropped(h.rows_in.saturating_sub(h.rows_out), "folded");
                tracing::info!(
                    table,
                    hour = %hawking_schemas::time::format_time(h.hour_us),
                    files_in = h.files_in,
                    files_out = h.files_out,
                    rows = h.rows_out,
                    "compacted an hour"
                );
            };
            match compact_closed(
                &self.root,
                &self.compaction,
                now_micros(),
                None,
                &self.stop,
                &mut on_hour,
            )
            .await
            {
                Ok(_) => {}
                Err(e) => self.component.error("compaction_failed", &e),
            }
        }
        match prune(&self.root, &self.retention, now_micros(), &self.stop).await {
            Ok(pass) => {
                for h in &pass.hours {
                    let table = h.table.name();
                    self.metrics.hours_pruned.with_label_values(&[table]).inc();
                    self.component
                        .dropped(h.rows_before.saturating_sub(h.rows_kept), "expired");
                }
                if !pass.hours.is_empty() {
                    tracing::info!(hours = pass.hours.len(), "retention applied");
                }
            }
            Err(e) => self.component.error("retention_failed", &e),
        }
    }
}
