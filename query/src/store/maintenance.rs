//! The store's upkeep while `hawking serve` runs: every `[store.compaction] interval_secs`,
//! closed hours are compacted, then retention is applied, on a thread of its own (one core's
//! worth of work at most, beside ingest). Stopping waits for the hour in hand to be
//! abandoned cleanly; nothing half-done is ever visible.
//!
//! On an object store several processes may write one store (the enrichers of a consumer
//! group), and two compactions of one hour would both be kept. S3 offers no lock Hawking can
//! count on (Garage, for one, ignores conditional writes), so the upkeep runs only in the
//! process holding a lease object (`.maintenance-lease.json` at the store's root): a process
//! takes a lease that is missing or stale by writing its token, waiting
//! [`LEASE_SETTLE`], and reading it back; only the last writer finds its own token. Its
//! holder renews it every pass; after [`LEASE_SECS`] without renewal another may take it.

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
use super::root::{ObjectRoot, StoreRoot};

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
        root: impl Into<StoreRoot>,
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
        let root = root.into();
        let lease = match &root {
            StoreRoot::Local(_) => None,
            StoreRoot::Object(object) => Some(Lease::new(object.clone())),
        };
        let worker = Worker {
            root: root.clone(),
            lease,
            compaction: compaction.clone(),
            retention: retention.clone(),
            metrics,
            component,
            stop: stop.clone(),
        };
        let thread = std::thread::Builder::new()
            .name("hawking-store-upkeep".into())
            .spawn(move || worker.run())
            .map_err(|e| StoreError::io(std::path::Path::new("hawking-store-upkeep"), e))?;
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
    root: StoreRoot,
    /// On an object store: the lease that makes this process the store's one maintainer.
    lease: Option<Lease>,
    compaction: CompactionConfig,
    retention: RetentionConfig,
    metrics: MaintenanceMetrics,
    component: Component,
    stop: Arc<AtomicBool>,
}

impl Worker {
    fn run(mut self) {
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
        // Given back, so that another process (or `hawking store compact`) may maintain the
        // store at once rather than after the lease goes stale.
        if let Some(lease) = self.lease.take().filter(|l| l.held)
            && let Err(e) = runtime.block_on(lease.root.delete_small(LEASE_NAME))
        {
            tracing::warn!(error = %e, "could not give the store's maintenance lease back");
        }
    }

    /// One pass; on an object store only while this process holds the lease, renewed
    /// every [`LEASE_RENEW`] during the pass, which is abandoned (safely: nothing is
    /// visible before a marker's PUT) as soon as the lease is lost.
    async fn pass(&mut self) {
        let Some(mut lease) = self.lease.take() else {
            self.upkeep().await;
            return;
        };
        match lease.hold().await {
            Ok(true) => {
                let renewals = async {
                    loop {
                        tokio::time::sleep(LEASE_RENEW).await;
                        match lease.hold().await {
                            Ok(true) => {}
                            Ok(false) => break,
                            Err(e) => {
                                self.component.error("lease_failed", &e);
                                break;
                            }
                        }
                    }
                };
                let upkeep = self.upkeep();
                futures::pin_mut!(renewals, upkeep);
                futures::future::select(upkeep, renewals).await;
            }
            Ok(false) => {}
            Err(e) => self.component.error("lease_failed", &e),
        }
        self.lease = Some(lease);
    }

    async fn upkeep(&self) {
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

/// How long a lease stays the holder's without renewal: longer than a pass takes.
const LEASE_SECS: i64 = 1800;

/// How often the holder renews the lease during a pass.
const LEASE_RENEW: Duration = Duration::from_secs(60);

/// How long a process waits after writing the lease before reading it back: longer than a
/// competitor's read-then-write can take, so that of two writers both see the last one.
const LEASE_SETTLE: Duration = Duration::from_secs(5);

const LEASE_NAME: &str = ".maintenance-lease.json";

#[derive(serde::Serialize, serde::Deserialize)]
struct LeaseBody {
    holder: String,
}

/// The lease a command (`hawking store compact|prune`) holds while it maintains a store:
/// on an object store, taken as `hawking serve` takes it, and refused while another process
/// holds it; nothing on a local store, whose hours are locked one by one.
pub struct CommandLease(Option<Lease>);

impl CommandLease {
    /// Takes the store's lease, or says who holds it.
    pub async fn take(root: &StoreRoot) -> Result<CommandLease, StoreError> {
        let StoreRoot::Object(object) = root else {
            return Ok(CommandLease(None));
        };
        let mut lease = Lease::new(object.clone());
        if lease.hold().await? {
            Ok(CommandLease(Some(lease)))
        } else {
            Err(StoreError::Maintained {
                location: root.to_string(),
            })
        }
    }

    /// Gives the lease back, so that a `serve` may take it at once.
    pub async fn release(self) -> Result<(), StoreError> {
        match self.0 {
            Some(lease) => lease.root.delete_small(LEASE_NAME).await,
            None => Ok(()),
        }
    }
}

/// This process's claim to maintain an object store; see the module documentation.
struct Lease {
    root: Arc<ObjectRoot>,
    token: String,
    held: bool,
}

impl Lease {
    fn new(root: Arc<ObjectRoot>) -> Lease {
        let mut bytes = [0u8; 8];
        let _ = getrandom::fill(&mut bytes);
        Lease {
            root,
            token: format!("{}-{:016x}", std::process::id(), u64::from_ne_bytes(bytes)),
            held: false,
        }
    }

    /// Whether this process maintains the store for the coming pass: renews a lease it
    /// holds, takes one that is missing or stale, leaves one another holds.
    async fn hold(&mut self) -> Result<bool, StoreError> {
        let holder = self.root.read_small(LEASE_NAME).await?;
        let now = now_micros();
        let ours = holder
            .as_ref()
            .is_some_and(|(body, _)| self.read(body) == Some(true));
        let stale = holder
            .as_ref()
            .is_none_or(|(_, modified_us)| now - modified_us > LEASE_SECS * 1_000_000);
        if !ours && !stale {
            if self.held {
                tracing::warn!("another process took over the store's upkeep");
            }
            self.held = false;
            return Ok(false);
        }
        let body = serde_json::to_vec(&LeaseBody {
            holder: self.token.clone(),
        })
        .expect("a lease serializes");
        self.root.write_small(LEASE_NAME, body).await?;
        if !ours {
            tokio::time::sleep(LEASE_SETTLE).await;
            let back = self.root.read_small(LEASE_NAME).await?;
            if back.as_ref().and_then(|(b, _)| self.read(b)) != Some(true) {
                return Ok(false);
            }
            tracing::info!(store = %StoreRoot::Object(self.root.clone()), "this process maintains the store");
        }
        self.held = true;
        Ok(true)
    }

    /// Whether `body` is this process's lease (`None`: not a lease).
    fn read(&self, body: &[u8]) -> Option<bool> {
        let lease: LeaseBody = serde_json::from_slice(body).ok()?;
        Some(lease.holder == self.token)
    }
}
