//! The sink thread: keeps the address history up to date from cluster observations and the
//! NAT translations from NAT session events, holds each flow batch for the grace period,
//! attributes it against both at its flows' own times, and commits flows and history to the
//! store.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use hawking_enricher::nat::{ANY_CLUSTER, NatCounters};
use hawking_enricher::{
    ClusterSelector, HistoryKeeper, NatIndex, Observation, attribute_batch, attribution_columns,
};
use hawking_query::PartitionedWriter;
use hawking_schemas::{Attribution, FlowBatch};
use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

use crate::config::StoreConfig;
use crate::history_state::HistoryState;

/// Store and enrichment counters.
#[derive(Clone)]
pub struct SinkMetrics {
    rows_written: IntCounterVec,
    files_committed: IntCounter,
    commit_errors: IntCounter,
    rows_dropped: IntCounterVec,
    buffered_rows: IntGauge,
    commit_seconds: Histogram,
    endpoints: IntCounterVec,
    early_attributions: IntCounter,
    held_flows: IntGauge,
    history_intervals: IntGauge,
    history_owners: IntGauge,
    cluster_in_gap: IntGaugeVec,
    nat_translations: IntGauge,
    nat_events: IntCounterVec,
}

impl SinkMetrics {
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = SinkMetrics {
            rows_written: IntCounterVec::new(
                Opts::new(
                    "hawking_store_rows_written_total",
                    "Rows committed to the store, by table",
                ),
                &["table"],
            )?,
            files_committed: IntCounter::new(
                "hawking_store_files_committed_total",
                "Parquet files committed",
            )?,
            commit_errors: IntCounter::new(
                "hawking_store_commit_errors_total",
                "Failed commits (rows stay buffered)",
            )?,
            rows_dropped: IntCounterVec::new(
                Opts::new(
                    "hawking_store_rows_dropped_total",
                    "Accepted rows dropped before reaching the store, by reason",
                ),
                &["reason"],
            )?,
            buffered_rows: IntGauge::new(
                "hawking_store_buffered_rows",
                "Flow rows accepted but not yet committed",
            )?,
            commit_seconds: Histogram::with_opts(HistogramOpts::new(
                "hawking_store_commit_seconds",
                "Time to encode and commit buffered rows",
            ))?,
            endpoints: IntCounterVec::new(
                Opts::new(
                    "hawking_endpoints_attributed_total",
                    "Flow endpoints attributed, by attribution",
                ),
                &["attribution"],
            )?,
            early_attributions: IntCounter::new(
                "hawking_enricher_early_attributions_total",
                "Flows attributed before their grace period ended because too many were held",
            )?,
            held_flows: IntGauge::new(
                "hawking_enricher_held_flows",
                "Flows waiting out the grace period",
            )?,
            history_intervals: IntGauge::new(
                "hawking_history_intervals",
                "Address intervals in the history index",
            )?,
            history_owners: IntGauge::new(
                "hawking_history_owners",
                "Pods, nodes and services in the history index",
            )?,
            cluster_in_gap: IntGaugeVec::new(
                Opts::new(
                    "hawking_history_cluster_in_gap",
                    "1 while a cluster's watch is down (its flows are unknown)",
                ),
                &["cluster"],
            )?,
            nat_translations: IntGauge::new(
                "hawking_nat_translations",
                "Source-NAT translations held in memory (open, or closed recently)",
            )?,
            nat_events: IntCounterVec::new(
                Opts::new(
                    "hawking_nat_session_events_total",
                    "NAT session events applied, by effect: opened, closed, superseded (a new \
                     session on a 5-tuple whose translation was open), duplicate, \
                     unmatched_delete (its create was never seen), portless (no ports to map: ignored), \
                     from_the_future (more than a minute ahead of this clock: dropped)",
                ),
                &["effect"],
            )?,
        };
        registry.register(Box::new(m.nat_translations.clone()))?;
        registry.register(Box::new(m.nat_events.clone()))?;
        registry.register(Box::new(m.rows_written.clone()))?;
        registry.register(Box::new(m.files_committed.clone()))?;
        registry.register(Box::new(m.commit_errors.clone()))?;
        registry.register(Box::new(m.rows_dropped.clone()))?;
        registry.register(Box::new(m.buffered_rows.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.endpoints.clone()))?;
        registry.register(Box::new(m.early_attributions.clone()))?;
        registry.register(Box::new(m.held_flows.clone()))?;
        registry.register(Box::new(m.history_intervals.clone()))?;
        registry.register(Box::new(m.history_owners.clone()))?;
        registry.register(Box::new(m.cluster_in_gap.clone()))?;
        Ok(m)
    }
}

/// Totals of one sink run.
#[derive(Clone, Copy, Debug, Default)]
pub struct SinkStats {
    pub rows: u64,
    pub files: u64,
}

/// Attribution state: the history and which clusters apply to which exporter.
pub struct Enrichment {
    pub keeper: HistoryKeeper,
    pub selector: ClusterSelector,
    /// Clusters watched live (they get a gap when Hawking stops).
    pub watched: Vec<String>,
    pub state: HistoryState,
    pub state_path: PathBuf,
    pub grace: Duration,
    pub max_held_flows: usize,
}

pub struct Writers {
    pub flows: PartitionedWriter,
    pub intervals: PartitionedWriter,
    pub gaps: PartitionedWriter,
    pub nat: PartitionedWriter,
}

/// The NAT translations and how long closed ones stay in memory.
pub struct NatState {
    pub index: NatIndex,
    pub keep_closed: Duration,
    /// What the index had counted when last published.
    pub published: NatCounters,
}

pub struct Sink {
    pub writers: Writers,
    pub enrichment: Option<Enrichment>,
    pub nat: NatState,
    pub config: StoreConfig,
    pub metrics: SinkMetrics,
}

const HEARTBEAT: Duration = Duration::from_secs(5);

impl Sink {
    /// Runs until the flow channel closes (the listener stopped), then attributes what is
    /// held, commits everything and returns.
    pub fn run(
        mut self,
        flows: Receiver<FlowBatch>,
        history: Receiver<Observation>,
    ) -> anyhow::Result<SinkStats> {
        let flush_interval = Duration::from_secs_f64(self.config.flush_interval_secs.max(0.05));
        let mut stats = SinkStats::default();
        let mut held: VecDeque<(Instant, FlowBatch)> = VecDeque::new();
        let mut held_flows = 0usize;
        let mut oldest_buffered: Option<Instant> = None;
        let mut heartbeat = Instant::now();
        loop {
            self.apply_history(&history);
            let closed = match flows.recv_timeout(Duration::from_millis(50)) {
                Ok(mut batch) => {
                    // Translations apply at once: flows they explain may be in this very batch.
                    if self.apply_nat(&mut batch) {
                        // Translations are committed with the next flush, flows or not.
                        oldest_buffered.get_or_insert_with(Instant::now);
                    }
                    held_flows += batch.len();
                    held.push_back((Instant::now(), batch));
                    false
                }
                Err(RecvTimeoutError::Timeout) => false,
                Err(RecvTimeoutError::Disconnected) => true,
            };
            if closed {
                // Whatever the watches said last applies to what is still held.
                self.apply_history(&history);
            }
            let (grace, max_held) = self
                .enrichment
                .as_ref()
                .map(|e| (e.grace, e.max_held_flows))
                .unwrap_or((Duration::ZERO, 0));
            while let Some((received, _)) = held.front() {
                let due = closed || received.elapsed() >= grace;
                let over = held_flows > max_held && max_held > 0;
                if !due && !over {
                    break;
                }
                let (_, batch) = held.pop_front().expect("front exists");
                held_flows -= batch.len();
                if !due {
                    self.metrics.early_attributions.inc_by(batch.len() as u64);
                }
                let rows = self.attribute(&batch)?;
                self.writers.flows.write(rows)?;
                oldest_buffered.get_or_insert_with(Instant::now);
            }
            self.metrics.held_flows.set(held_flows as i64);
            self.metrics
                .buffered_rows
                .set(self.writers.flows.buffered_rows() as i64);

            if heartbeat.elapsed() >= HEARTBEAT || closed {
                heartbeat = Instant::now();
                self.heartbeat(closed);
            }
            let due = oldest_buffered.is_some_and(|t| t.elapsed() >= flush_interval)
                || self.writers.flows.buffered_rows() >= self.config.commit_rows;
            if due || closed {
                self.commit(&mut stats);
                oldest_buffered = (self.writers.flows.buffered_rows() > 0).then(Instant::now);
            }
            if closed {
                if self.writers.flows.buffered_rows() > 0 {
                    // One more attempt for what a failed final commit left behind.
                    self.commit(&mut stats);
                }
                let lost = self.writers.flows.shed_to(0);
                if lost > 0 {
                    self.metrics
                        .rows_dropped
                        .with_label_values(&["commit_failed_at_shutdown"])
                        .inc_by(lost as u64);
                    anyhow::bail!("{lost} accepted rows could not be committed before shutdown");
                }
                return Ok(stats);
            }
        }
    }

    fn apply_history(&mut self, history: &Receiver<Observation>) {
        let Some(e) = &mut self.enrichment else {
            // Nothing to keep: drain so senders never block.
            while history.try_recv().is_ok() {}
            return;
        };
        let mut applied = false;
        while let Ok(obs) = history.try_recv() {
            e.keeper.apply(obs);
            applied = true;
        }
        if applied {
            for cluster in &e.watched {
                self.metrics
                    .cluster_in_gap
                    .with_label_values(&[cluster])
                    .set(e.keeper.is_down(cluster) as i64);
            }
        }
    }

    /// Applies the batch's NAT session events (each in its NAT's cluster) and leaves the
    /// batch holding only flows.
    fn apply_nat(&mut self, batch: &mut FlowBatch) -> bool {
        if batch.nat_events.is_empty() {
            return false;
        }
        let mut clusters = Vec::new();
        // The index's clock is its latest event: one NAT whose clock runs ahead would make
        // it forget every other NAT's closed translations. Events from the future are dropped.
        let horizon = unix_micros() + 60_000_000;
        for event in batch.nat_events.drain(..) {
            if event.at > horizon {
                self.metrics
                    .nat_events
                    .with_label_values(&["from_the_future"])
                    .inc();
                continue;
            }
            let cluster = match &self.enrichment {
                Some(e) => {
                    e.selector.clusters_for(
                        event.exporter,
                        event.observation_domain,
                        &mut clusters,
                    );
                    match clusters.as_slice() {
                        [one] => *one,
                        _ => ANY_CLUSTER,
                    }
                }
                None => ANY_CLUSTER,
            };
            self.nat.index.apply(&event, cluster);
        }
        true
    }

    fn attribute(&mut self, batch: &FlowBatch) -> anyhow::Result<arrow::array::RecordBatch> {
        let Some(e) = &self.enrichment else {
            return Ok(batch.to_record_batch_unattributed()?);
        };
        let history = e.keeper.history();
        let attribution = attribute_batch(history, &self.nat.index, &e.selector, batch);
        let mut counts = [0u64; 7];
        for r in attribution.src.iter().chain(&attribution.dst) {
            counts[r.attribution as usize] += 1;
        }
        for (kind, n) in [
            Attribution::Pod,
            Attribution::Snat,
            Attribution::Node,
            Attribution::Service,
            Attribution::External,
            Attribution::Ambiguous,
            Attribution::Unknown,
        ]
        .into_iter()
        .zip(counts)
        {
            if n > 0 {
                self.metrics
                    .endpoints
                    .with_label_values(&[kind.as_str()])
                    .inc_by(n);
            }
        }
        Ok(batch.to_record_batch(Some(attribution_columns(history, &attribution)))?)
    }

    /// Records which watched clusters are in sync (so a crash's downtime becomes a gap on
    /// restart) and, at shutdown, opens the gap that lasts until the next start is in sync.
    fn heartbeat(&mut self, stopping: bool) {
        self.publish_nat();
        let now = unix_micros();
        let Some(e) = &mut self.enrichment else {
            return;
        };
        for cluster in &e.watched {
            let down = e.keeper.is_down(cluster);
            self.metrics
                .cluster_in_gap
                .with_label_values(&[cluster])
                .set(down as i64);
            if !down {
                e.state.synced_until.insert(cluster.clone(), now);
            }
            if stopping {
                e.keeper.stop_watching(cluster, now);
            }
        }
        self.metrics
            .history_intervals
            .set(e.keeper.history().interval_count() as i64);
        self.metrics
            .history_owners
            .set(e.keeper.history().owners.len() as i64);
        if let Err(err) = e.state.save(&e.state_path) {
            tracing::warn!(error = %err, "could not save history state");
        }
    }

    /// Publishes the NAT counters and forgets translations closed long enough ago.
    fn publish_nat(&mut self) {
        let nat = &mut self.nat;
        nat.index.prune_closed(nat.keep_closed.as_micros() as i64);
        let c = nat.index.counters();
        let p = nat.published;
        for (effect, n) in [
            ("opened", c.opened - p.opened),
            ("closed", c.closed - p.closed),
            ("superseded", c.superseded - p.superseded),
            ("duplicate", c.duplicates - p.duplicates),
            (
                "unmatched_delete",
                c.unmatched_deletes - p.unmatched_deletes,
            ),
            ("portless", c.portless - p.portless),
        ] {
            if n > 0 {
                self.metrics
                    .nat_events
                    .with_label_values(&[effect])
                    .inc_by(n);
            }
        }
        nat.published = c;
        self.metrics
            .nat_translations
            .set(nat.index.translation_count() as i64);
    }

    fn commit(&mut self, stats: &mut SinkStats) {
        if let Some(e) = &self.enrichment {
            let names = e.keeper.history().clusters().iter();
            self.nat
                .index
                .set_cluster_names(names.map(|c| c.name.to_string()).collect());
        }
        if let Some(rows) = self.nat.index.take_rows(unix_micros())
            && let Err(err) = self.writers.nat.write(rows)
        {
            tracing::error!(error = %err, "NAT history rows do not fit their table");
        }
        if let Some(e) = &mut self.enrichment {
            let (intervals, gaps) = e.keeper.take_rows();
            for (writer, rows) in [
                (&mut self.writers.intervals, intervals),
                (&mut self.writers.gaps, gaps),
            ] {
                if let Some(rows) = rows
                    && let Err(err) = writer.write(rows)
                {
                    tracing::error!(error = %err, "history rows do not fit their table");
                }
            }
        }
        let timer = self.metrics.commit_seconds.start_timer();
        let tables = [
            ("flows", &mut self.writers.flows),
            ("ip_history_log", &mut self.writers.intervals),
            ("history_gaps_log", &mut self.writers.gaps),
            ("nat_history_log", &mut self.writers.nat),
        ];
        for (table, writer) in tables {
            if writer.buffered_rows() == 0 {
                continue;
            }
            match writer.commit() {
                Ok(files) => {
                    let rows: usize = files.iter().map(|f| f.rows).sum();
                    self.metrics
                        .rows_written
                        .with_label_values(&[table])
                        .inc_by(rows as u64);
                    self.metrics.files_committed.inc_by(files.len() as u64);
                    if table == "flows" {
                        stats.rows += rows as u64;
                        stats.files += files.len() as u64;
                    }
                }
                Err(e) => {
                    self.metrics.commit_errors.inc();
                    tracing::error!(error = %e, table, buffered = writer.buffered_rows(), "commit failed; rows stay buffered");
                    let dropped = writer.shed_to(self.config.max_buffered_rows);
                    if dropped > 0 {
                        self.metrics
                            .rows_dropped
                            .with_label_values(&["buffer_full"])
                            .inc_by(dropped as u64);
                    }
                }
            }
        }
        timer.observe_duration();
        self.metrics
            .buffered_rows
            .set(self.writers.flows.buffered_rows() as i64);
    }
}

pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}
