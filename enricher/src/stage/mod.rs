//! The enrichment stage: takes what sources report ([`SourceBatch`]es), keeps the address
//! history and the NAT translations up to date from their observations and NAT events, holds
//! flows for the grace period, attributes them at their own times, and hands out the rows of
//! every table (attributed flows, new history and translations) for the sinks.
//!
//! It runs without sockets: `hawking serve` drives it from its sources' channel, replay from
//! stored flows.

mod metrics;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use hawking_schemas::flow::FlowBatch;
use hawking_schemas::nat::NatEvent;
use hawking_schemas::pipeline::{Receipt, SourceBatch, Table};
use hawking_schemas::telemetry::{Component, ComponentKind, Telemetry};
use hawking_schemas::time::now_micros;

use crate::attribute::{ClusterSelector, attribute_batch, attribution_columns};
use crate::keeper::HistoryKeeper;
use crate::nat::{ANY_CLUSTER, NatCounters, NatIndex};
use crate::reported;
use crate::sightings::Sightings;
use crate::watch_state::HistoryState;
use hawking_schemas::flow_details::{CONFLICT_COLUMNS, bool_column};

use metrics::StageMetrics;

/// NAT events whose clock runs further ahead of this one are dropped: the index's clock is
/// its latest event, and one NAT in the future would make it forget every other NAT's
/// closed translations.
const NAT_FUTURE_LIMIT_US: i64 = 60_000_000;

/// How the stage holds and keeps things.
#[derive(Clone, Copy, Debug)]
pub struct StageConfig {
    /// How long a flow waits before it is attributed, so that late history is there.
    pub grace: Duration,
    /// Most flows held; beyond it the oldest are attributed early (counted). 0: no bound.
    pub max_held_flows: usize,
    /// How long a closed NAT translation stays in memory for late flows.
    pub nat_keep_closed: Duration,
}

/// The clusters flows are attributed in: their history, which exporters belong to which,
/// and the clusters watched live (whose last moment in sync is persisted, so a crash's
/// downtime becomes a gap on restart).
pub struct Clusters {
    pub keeper: HistoryKeeper,
    pub selector: ClusterSelector,
    /// Clusters watched live (they get a gap when Hawking stops).
    pub watched: Vec<String>,
    pub state: HistoryState,
    /// Where `state` persists; `None` keeps it in memory only.
    pub state_path: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StageError {
    #[error("building attributed rows: {0}")]
    Rows(#[from] arrow::error::ArrowError),
}

/// Flows waiting out the grace period, with the receipts of the batch they came in.
struct Held {
    received: Instant,
    flows: FlowBatch,
    receipts: Vec<Receipt>,
}

/// See the module documentation.
pub struct EnrichmentStage {
    clusters: Option<Clusters>,
    nat: NatIndex,
    /// What the NAT index had counted when last published.
    nat_published: NatCounters,
    config: StageConfig,
    held: VecDeque<Held>,
    held_flows: usize,
    /// Flows that ended a grace period before they arrived: attributed at the next release,
    /// without waiting (their history is already in).
    settled: Vec<FlowBatch>,
    /// Receipts of batches without flows that came when nothing was held, handed out with
    /// the next release's rows.
    receipts_waiting: Vec<Receipt>,
    /// Receipts of batches whose rows have been handed out.
    receipts_released: Vec<Receipt>,
    metrics: StageMetrics,
    component: Component,
    /// Scratch for the clusters of one NAT event's exporter.
    scratch_clusters: Vec<u16>,
    /// What exporters' identities said of addresses.
    sightings: Sightings,
}

impl EnrichmentStage {
    /// A stage attributing in `clusters` (none: flows pass through unattributed) through
    /// the translations of `nat`.
    pub fn new(
        clusters: Option<Clusters>,
        nat: NatIndex,
        config: StageConfig,
        telemetry: &Telemetry,
    ) -> prometheus::Result<Self> {
        Ok(EnrichmentStage {
            clusters,
            nat,
            nat_published: NatCounters::default(),
            config,
            held: VecDeque::new(),
            held_flows: 0,
            settled: Vec::new(),
            receipts_waiting: Vec::new(),
            receipts_released: Vec::new(),
            metrics: StageMetrics::register(telemetry)?,
            component: telemetry.component(ComponentKind::Stage, "enrich"),
            scratch_clusters: Vec::new(),
            sightings: Sightings::default(),
        })
    }

    /// Whether flows are attributed at all (some cluster is configured).
    pub fn attributes(&self) -> bool {
        self.clusters.is_some()
    }

    /// Flows waiting out the grace period.
    pub fn held_flows(&self) -> usize {
        self.held_flows
    }

    pub fn clusters(&self) -> Option<&Clusters> {
        self.clusters.as_ref()
    }

    /// Takes a source's batch: its observations and NAT events apply at once (flows they
    /// explain may be in this very batch); its flows that ended more than a grace period ago
    /// are attributed at the next release, the others wait out the grace period.
    pub fn accept(&mut self, batch: SourceBatch, now: Instant) {
        let SourceBatch {
            flows,
            nat_events,
            nat_alive,
            observations,
            receipts,
        } = batch;
        if !observations.is_empty() {
            match &mut self.clusters {
                Some(c) => {
                    for obs in observations {
                        c.keeper.apply(obs);
                    }
                    self.metrics.publish_gaps(c);
                }
                None => self
                    .component
                    .dropped(observations.len() as u64, "observation_without_cluster"),
            }
        }
        for alive in &nat_alive {
            if self
                .nat_cluster(alive.exporter, alive.observation_domain)
                .is_some()
            {
                self.nat.heard_from(alive.exporter, alive.at);
            }
        }
        self.apply_nat(&nat_events);
        if !flows.is_empty() {
            self.component.received(flows.len() as u64, 0);
        }
        let (settled, recent) = self.split_settled(flows);
        if let Some(settled) = settled {
            self.metrics.settled_flows.inc_by(settled.len() as u64);
            self.settled.push(settled);
        }
        match recent {
            Some(flows) => {
                self.held_flows += flows.len();
                self.held.push_back(Held {
                    received: now,
                    flows,
                    receipts,
                });
            }
            // A receipt says everything before it is stored too: it waits for the flows
            // held ahead of it.
            None => match self.held.back_mut() {
                Some(newest) => newest.receipts.extend(receipts),
                None => self.receipts_waiting.extend(receipts),
            },
        }
        self.metrics.held_flows.set(self.held_flows as i64);
    }

    /// Splits `flows` into those that ended at least a grace period ago, whose history is
    /// in by now (watch lag is what the grace period covers), and the recent ones, which
    /// must wait for it. While a watched cluster is out of sync every flow waits: what
    /// arrives when it is back may concern any time.
    fn split_settled(&self, flows: FlowBatch) -> (Option<FlowBatch>, Option<FlowBatch>) {
        if flows.is_empty() {
            return (None, None);
        }
        if self.config.grace.is_zero() {
            return (Some(flows), None);
        }
        let waiting_for_sync = self
            .clusters
            .as_ref()
            .is_some_and(|c| c.watched.iter().any(|w| c.keeper.is_down(w)));
        if waiting_for_sync {
            return (None, Some(flows));
        }
        let settled_until = now_micros() - self.config.grace.as_micros() as i64;
        let is_settled = |i: usize| flows.flow_end[i].max(flows.flow_start[i]) <= settled_until;
        let settled = (0..flows.len()).filter(|&i| is_settled(i)).count();
        if settled == flows.len() {
            return (Some(flows), None);
        }
        if settled == 0 {
            return (None, Some(flows));
        }
        let (mut old, mut recent) = (Vec::with_capacity(settled), Vec::new());
        for i in 0..flows.len() {
            match is_settled(i) {
                true => old.push(i as u32),
                false => recent.push(i as u32),
            }
        }
        (Some(flows.select(&old)), Some(flows.select(&recent)))
    }

    fn apply_nat(&mut self, events: &[NatEvent]) {
        if events.is_empty() {
            return;
        }
        let horizon = now_micros() + NAT_FUTURE_LIMIT_US;
        for event in events {
            if event.at > horizon {
                self.metrics.nat_event("from_the_future", 1);
                continue;
            }
            let Some(cluster) = self.nat_cluster(event.exporter, event.observation_domain) else {
                // A translation explains flows only when it comes from a NAT a cluster
                // trusts: anyone who can send a datagram could otherwise re-attribute them.
                self.component
                    .dropped(1, "nat_event_from_unlisted_exporter");
                continue;
            };
            self.nat.apply(event, cluster);
        }
    }

    /// The cluster whose translations a NAT's events are (or [`ANY_CLUSTER`] when several
    /// clusters list it); `None` when no cluster lists the NAT's exporter.
    fn nat_cluster(&mut self, exporter: u128, domain: u32) -> Option<u16> {
        let c = self.clusters.as_ref()?;
        c.selector
            .listing(exporter, domain, &mut self.scratch_clusters);
        match self.scratch_clusters.as_slice() {
            [] => None,
            [one] => Some(*one),
            _ => Some(ANY_CLUSTER),
        }
    }

    /// Attributes the held flows whose grace period has passed at `now` (all of them when
    /// `closing`, and the oldest beyond the bound on held flows), and appends their rows
    /// and every history and translation row not yet handed out to `out`.
    pub fn release(
        &mut self,
        now: Instant,
        closing: bool,
        out: &mut Vec<(Table, RecordBatch)>,
    ) -> Result<(), StageError> {
        let mut settled = std::mem::take(&mut self.settled);
        for batch in settled.drain(..) {
            out.push((Table::Flows, self.attribute(&batch)?));
            self.component.sent(batch.len() as u64);
        }
        self.settled = settled;
        let max_held = self.config.max_held_flows;
        while let Some(Held { received, .. }) = self.held.front() {
            let due = closing || now.saturating_duration_since(*received) >= self.config.grace;
            let over = max_held > 0 && self.held_flows > max_held;
            if !due && !over {
                break;
            }
            let held = self.held.pop_front().expect("front exists");
            let batch = &held.flows;
            self.held_flows -= batch.len();
            if !due {
                self.metrics.early_attributions.inc_by(batch.len() as u64);
            }
            out.push((Table::Flows, self.attribute(batch)?));
            self.component.sent(batch.len() as u64);
            self.receipts_released.extend(held.receipts);
        }
        self.metrics.held_flows.set(self.held_flows as i64);
        self.take_history_rows(out, closing);
        self.receipts_released.append(&mut self.receipts_waiting);
        Ok(())
    }

    /// Moves to `out` the receipts of every batch whose rows [`Self::release`] has handed
    /// out, oldest first: they may complete once a store commit after that succeeds.
    pub fn take_receipts(&mut self, out: &mut Vec<Receipt>) {
        out.append(&mut self.receipts_released);
    }

    fn attribute(&mut self, batch: &FlowBatch) -> Result<RecordBatch, StageError> {
        self.record_sightings(batch);
        let Some(c) = &self.clusters else {
            return Ok(batch.to_record_batch_unattributed()?);
        };
        let history = c.keeper.history();
        let attribution = attribute_batch(history, &self.nat, &c.selector, batch);
        self.metrics.count_endpoints(&attribution);
        let rows = batch.to_record_batch(Some(attribution_columns(history, &attribution)))?;
        let Some(details) = &batch.details else {
            return Ok(rows);
        };
        // Where the exporter named the endpoints itself, say whether it agrees.
        let (schema, mut columns, _) = rows.into_parts();
        for (side, (name, resolved)) in CONFLICT_COLUMNS
            .iter()
            .zip([&attribution.src, &attribution.dst])
            .enumerate()
        {
            let found = reported::conflicts(history, resolved, details, side == 0);
            self.metrics.count_reported(side == 0, &found);
            let index = schema.index_of(name)?;
            columns[index] = bool_column(&found);
        }
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// Keeps the identities an exporter's flows carry, in the flows' cluster.
    fn record_sightings(&mut self, batch: &FlowBatch) {
        if batch.details.is_none() {
            return;
        }
        let clusters = self.clusters.as_ref();
        let mut scratch = Vec::new();
        let mut cluster_of = |i: usize, reported: Option<&str>, out: &mut String| -> bool {
            let (exporter, domain) = (batch.exporter[i], batch.observation_domain[i]);
            let only = |c: &Clusters, scratch: &[u16], out: &mut String| match scratch {
                [one] => {
                    out.push_str(c.keeper.history().cluster_name(*one));
                    true
                }
                _ => false,
            };
            // A cluster that lists the exporter, else the one the export names, else the
            // only cluster there is.
            if let Some(c) = clusters {
                c.selector.listing(exporter, domain, &mut scratch);
                if only(c, &scratch, out) {
                    return true;
                }
            }
            if let Some(r) = reported {
                out.push_str(r);
                return true;
            }
            match clusters {
                Some(c) => {
                    c.selector.clusters_for(exporter, domain, &mut scratch);
                    only(c, &scratch, out)
                }
                None => false,
            }
        };
        let sighted = self.sightings.record(batch, &mut cluster_of, now_micros());
        self.metrics.identities_sighted.inc_by(sighted);
    }

    fn take_history_rows(&mut self, out: &mut Vec<(Table, RecordBatch)>, closing: bool) {
        self.sightings.close_idle(now_micros(), closing);
        out.extend(
            self.sightings
                .take_rows()
                .map(|rows| (Table::IpHistoryLog, rows)),
        );
        if let Some(c) = &mut self.clusters {
            let names = c.keeper.history().clusters().iter();
            self.nat
                .set_cluster_names(names.map(|c| c.name.to_string()).collect());
            let (intervals, gaps) = c.keeper.take_rows();
            out.extend(intervals.map(|rows| (Table::IpHistoryLog, rows)));
            out.extend(gaps.map(|rows| (Table::HistoryGapsLog, rows)));
        }
        if let Some(rows) = self.nat.take_rows(now_micros()) {
            out.push((Table::NatHistoryLog, rows));
        }
    }

    /// Every few seconds: records which watched clusters are in sync (persisted, so a crash's
    /// downtime becomes a gap on restart), publishes the history's and translations' sizes,
    /// and forgets translations closed long enough ago. With `stopping`, opens the gap that
    /// lasts until the next start is in sync.
    pub fn heartbeat(&mut self, stopping: bool) {
        self.nat.close_idle();
        self.nat
            .prune_closed(self.config.nat_keep_closed.as_micros() as i64);
        let counters = self.nat.counters();
        self.metrics
            .publish_nat(&counters, &self.nat_published, &self.nat);
        self.nat_published = counters;
        let now = now_micros();
        let Some(c) = &mut self.clusters else {
            return;
        };
        for cluster in &c.watched {
            if !c.keeper.is_down(cluster) {
                c.state.synced_until.insert(cluster.clone(), now);
            }
            if stopping {
                c.keeper.stop_watching(cluster, now);
            }
        }
        self.metrics.publish_gaps(c);
        self.metrics.publish_history(c);
        if let Some(path) = &c.state_path
            && let Err(err) = c.state.save(path)
        {
            self.component.error("save_watch_state", &err);
        }
    }
}
