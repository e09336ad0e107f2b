//! The running pipeline of `hawking serve`, wired from the configuration:
//!
//! ```text
//! sources (a thread each) ──bounded──┐
//!                                    ├─▶ enrichment stage (its thread) ──▶ sinks
//! cluster watches (async tasks) ─────┘
//! ```
//!
//! Flow sources send into a bounded channel, so a slow stage makes them wait and the kernel's
//! socket buffers absorb the burst; the watches, which must never block the async runtime,
//! send into an unbounded one that the stage drains first. Shutdown stops the sources, which
//! drain their input and hand over their last batch; the stage attributes everything it
//! holds, and the sinks commit every accepted row before the stage's thread exits.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::source::{Source, SourceError, SourceStats};
use hawking_enricher::nat::ANY_CLUSTER;
use hawking_enricher::watch::{client_for, spawn_cluster_watch};
use hawking_enricher::{
    Clusters, EnrichmentStage, HistoryKeeper, HistoryState, Mode, NatIndex, StageConfig,
};
use hawking_kafka::KafkaSink;
use hawking_query::history::{load_history, load_translations};
use hawking_query::store::maintenance::Maintenance;
use hawking_query::{StoreRoot, StoreSink};
use hawking_schemas::pipeline::{Committed, Receipt, Sink, SourceBatch};
use hawking_schemas::telemetry::Telemetry;
use hawking_schemas::time::now_micros;

use crate::config::{Config, Role};

/// Batches in flight between the sources and the stage; when full, sources wait.
const CHANNEL_BATCHES: usize = 8;

/// How long the stage waits for a batch before it looks at its clocks again.
const STAGE_POLL: Duration = Duration::from_millis(50);

/// Between the stage's heartbeats (watch sync state persisted, sizes published).
const HEARTBEAT: Duration = Duration::from_secs(5);

/// Totals of one run.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    /// Messages the sources received.
    pub messages: u64,
    /// Flows the sources decoded and handed on.
    pub flows: u64,
    /// What the store committed.
    pub stored: Committed,
}

pub struct Pipeline {
    shutdown: Arc<AtomicBool>,
    sources: Vec<JoinHandle<Result<SourceStats, SourceError>>>,
    /// The enrichment stage's thread (a collector's: its publisher's).
    stage: JoinHandle<anyhow::Result<Committed>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    /// Compaction and retention of the store, when configured.
    upkeep: Option<Maintenance>,
    /// The NetFlow/IPFIX UDP listener's address (none in an enricher).
    pub netflow_addr: Option<SocketAddr>,
    /// The IPFIX/TCP listener's address, when one is configured.
    pub netflow_tcp_addr: Option<SocketAddr>,
}

impl Pipeline {
    /// Binds the sources, opens the store, loads the history and connects to the clusters
    /// (so configuration errors surface here), then starts everything.
    pub async fn start(config: &Config, telemetry: &Telemetry) -> anyhow::Result<Pipeline> {
        let role = config.roles.role;
        let store = config.store_root()?;
        // This machine's state and spools (beside the store's files when it is local).
        let local_dir = config.local_dir();
        std::fs::create_dir_all(&local_dir)
            .with_context(|| format!("creating data dir {}", local_dir.display()))?;
        let state_dir = local_dir.join("state");
        let (data_tx, data_rx) = sync_channel::<SourceBatch>(CHANNEL_BATCHES);
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut sources = Vec::new();
        let mut spawn = |source: Source| -> anyhow::Result<()> {
            sources.push(spawn_source(source, data_tx.clone(), shutdown.clone())?);
            Ok(())
        };
        let (mut netflow_addr, mut netflow_tcp_addr) = (None, None);
        // Exporters reach collectors; enrichers read only what collectors published.
        if role != Role::Enricher {
            let netflow = config
                .netflow
                .build(Some(state_dir.join("netflow-templates.json")), telemetry)?;
            netflow_addr = netflow.local_addr();
            let netflow_tcp = config.netflow.build_tcp(telemetry)?;
            netflow_tcp_addr = netflow_tcp.as_ref().and_then(Source::local_addr);
            if let Some(capture) = config.capture.build(telemetry)? {
                tracing::info!(
                    interface = config.capture.interface.as_deref().unwrap_or_default(),
                    "metering captured packets"
                );
                spawn(capture)?;
            }
            for (index, file) in config.flow_files.iter().enumerate() {
                let source = file
                    .build(index, Some(&state_dir), telemetry)
                    .with_context(|| format!("[[flow_files]] {}", file.path.display()))?;
                spawn(source)?;
            }
            for (index, hubble) in config.hubble_grpc.iter().enumerate() {
                let source = hubble
                    .build(index, telemetry)
                    .with_context(|| format!("[[hubble_grpc]] {}", hubble.server))?;
                spawn(source)?;
            }
            if let Some(tcp) = netflow_tcp {
                spawn(tcp)?;
            }
            spawn(netflow)?;
        }
        if role == Role::Collector {
            anyhow::ensure!(
                config.kafka_sources.is_empty(),
                "[[kafka_sources]] are consumed by enrichers (--role enricher or all), not by \
                 a collector"
            );
            let publisher = KafkaSink::open_raw(&config.roles.publisher()?, &local_dir, telemetry)?;
            drop(data_tx);
            let publisher = std::thread::Builder::new()
                .name("hawking-publish".into())
                .spawn(move || run_publisher(publisher, data_rx))?;
            tracing::info!(
                netflow = ?netflow_addr,
                topic = %config.roles.topic,
                "collector started: publishing raw flows"
            );
            return Ok(Pipeline {
                shutdown,
                sources,
                stage: publisher,
                watches: Vec::new(),
                upkeep: None,
                netflow_addr,
                netflow_tcp_addr,
            });
        }
        for (index, kafka) in config.kafka_sources.iter().enumerate() {
            spawn(kafka.build(index, telemetry)?)?;
        }
        if role == Role::Enricher {
            let raw = config.roles.consumer()?;
            spawn(raw.build(config.kafka_sources.len(), telemetry)?)?;
        }
        drop(data_tx);
        let mut sinks: Vec<Box<dyn Sink>> =
            vec![Box::new(StoreSink::open(&store, &config.store, telemetry)?)];
        if config.kafka.brokers.is_some() {
            sinks.push(Box::new(KafkaSink::open(
                &config.kafka,
                &local_dir,
                telemetry,
            )?));
        }

        config
            .store
            .retention
            .validate()
            .map_err(|e| anyhow::anyhow!("[store.retention]: {e}"))?;
        for warning in config.store.retention.warnings() {
            tracing::warn!("[store.retention]: {warning}");
        }
        let upkeep = Maintenance::start(
            &store,
            &config.store.compaction,
            &config.store.retention,
            telemetry,
        )?;
        let (control_tx, control_rx) = channel::<SourceBatch>();
        let (stage, watches) =
            build_stage(config, &store, &state_dir, control_tx, telemetry).await?;
        let stage = std::thread::Builder::new()
            .name("hawking-stage".into())
            .spawn({
                let shutdown = shutdown.clone();
                move || run_stage(stage, data_rx, control_rx, sinks, &shutdown)
            })?;
        tracing::info!(
            netflow = ?netflow_addr,
            netflow_tcp = ?netflow_tcp_addr,
            data = %store,
            role = ?role,
            "pipeline started"
        );
        Ok(Pipeline {
            shutdown,
            sources,
            stage,
            watches,
            upkeep,
            netflow_addr,
            netflow_tcp_addr,
        })
    }

    /// Stops receiving, attributes and commits every accepted flow, and returns the run's
    /// totals.
    pub fn stop(self) -> anyhow::Result<Totals> {
        self.shutdown.store(true, Ordering::Relaxed);
        let mut totals = Totals::default();
        let mut first_error = None;
        for source in self.sources {
            match source.join() {
                Ok(Ok(stats)) => {
                    totals.messages += stats.messages;
                    totals.flows += stats.flows;
                }
                Ok(Err(e)) => {
                    first_error.get_or_insert(anyhow::Error::from(e));
                }
                Err(_) => {
                    first_error.get_or_insert(anyhow::anyhow!("a source thread panicked"));
                }
            }
        }
        // Every source's sender is gone: the stage drains, commits and returns.
        totals.stored = self
            .stage
            .join()
            .map_err(|_| anyhow::anyhow!("the enrichment stage's thread panicked"))??;
        for w in self.watches {
            w.abort();
        }
        if let Some(upkeep) = self.upkeep {
            upkeep.stop();
        }
        match first_error {
            Some(e) => Err(e),
            None => Ok(totals),
        }
    }
}

/// Runs `source` on a thread of its own, sending into `tx` until `shutdown`.
fn spawn_source(
    source: Source,
    tx: std::sync::mpsc::SyncSender<SourceBatch>,
    shutdown: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<Result<SourceStats, SourceError>>> {
    std::thread::Builder::new()
        .name(format!("hawking-{}", source.name()))
        .spawn(move || source.run(&mut |batch| tx.send(batch).is_ok(), &shutdown))
}

/// A collector's publishing thread: every source batch goes out as raw flow messages; the
/// publisher's spool is settled about every second, and when every source is gone what it
/// holds is delivered or spooled for the next start. A collector stores nothing: it returns
/// no committed rows.
fn run_publisher(
    mut publisher: KafkaSink,
    data: Receiver<SourceBatch>,
) -> anyhow::Result<Committed> {
    let mut published = Committed::default();
    loop {
        match data.recv_timeout(STAGE_POLL) {
            Ok(batch) => publisher.publish_raw(&batch),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                published += publisher.shutdown()?;
                tracing::info!(messages = published.units, "raw flows published");
                return Ok(Committed::default());
            }
        }
        if publisher.commit_due(Instant::now()) {
            // A failed settle keeps what it holds (counted and logged): next time.
            published += publisher.commit().unwrap_or_default();
        }
    }
}

/// The enrichment stage as configured, over the history and translations stored in
/// `store` (and the watches' state in `state_dir`), with every watched cluster's watch
/// started (reporting into `control`).
async fn build_stage(
    config: &Config,
    store: &StoreRoot,
    state_dir: &Path,
    control: Sender<SourceBatch>,
    telemetry: &Telemetry,
) -> anyhow::Result<(EnrichmentStage, Vec<tokio::task::JoinHandle<()>>)> {
    let enricher = &config.enricher;
    let mut watches = Vec::new();
    let clusters = if enricher.clusters.is_empty() {
        None
    } else {
        let mut keeper = HistoryKeeper::new(Mode::Live);
        // The grace period is sized for the watch's lag; a broken watch may have lost that much.
        keeper.set_lag_allowance((enricher.grace_secs.max(0.0) * 1e6) as i64);
        let stored = load_history(store)
            .await
            .context("reading the stored history")?;
        let loaded = keeper
            .load(&stored.intervals, &stored.gaps)
            .context("reading the stored history")?;
        let selector = enricher.apply(keeper.history_mut())?;
        let state_path = state_dir.join("history.json");
        let state = HistoryState::load(&state_path)?;
        let mut watched = Vec::new();
        for cluster in enricher.clusters.iter().filter(|c| c.watched()) {
            let client = client_for(cluster).await?;
            let since = state.synced_until.get(&cluster.name).copied();
            let reason = if since.is_some() {
                "collector not running"
            } else {
                "first sync"
            };
            keeper.begin_watching(&cluster.name, since.unwrap_or_else(now_micros), reason);
            watches.extend(spawn_cluster_watch(
                cluster.name.clone(),
                client,
                control.clone(),
            ));
            watched.push(cluster.name.clone());
        }
        tracing::info!(
            intervals = loaded,
            clusters = enricher.clusters.len(),
            watched = watched.len(),
            "history loaded"
        );
        Some(Clusters {
            keeper,
            selector,
            watched,
            state,
            state_path: Some(state_path),
        })
    };
    let nat_config = &enricher.nat;
    let keep_closed = Duration::from_secs(nat_config.keep_closed_secs);
    let mut nat =
        NatIndex::new(nat_config.clock_skew_ms as i64 * 1000).with_trust(nat_config.trust());
    let stored = load_translations(store, keep_closed)
        .await
        .context("reading the stored NAT translations")?;
    nat.continue_ids_after(stored.max_id);
    let translations = nat
        .load(&stored.rows, |name| {
            clusters
                .as_ref()
                .and_then(|c| c.keeper.history().find_cluster(name))
                .unwrap_or(ANY_CLUSTER)
        })
        .context("reading the stored NAT translations")?;
    if translations > 0 {
        tracing::info!(translations, "NAT translations loaded");
    }
    // Without a cluster there is no history to wait for: flows pass straight through.
    let grace = match clusters {
        Some(_) => Duration::from_secs_f64(enricher.grace_secs.max(0.0)),
        None => Duration::ZERO,
    };
    let stage = EnrichmentStage::new(
        clusters,
        nat,
        StageConfig {
            grace,
            max_held_flows: enricher.max_held_flows,
            nat_keep_closed: keep_closed,
        },
        telemetry,
    )?;
    Ok((stage, watches))
}

/// The stage's thread: takes what the sources and watches send, hands what the stage
/// releases to every sink, commits when a sink's policy says so, and when every source is
/// gone attributes what is held and shuts the sinks down. Returns what the store committed.
fn run_stage(
    mut stage: EnrichmentStage,
    data: Receiver<SourceBatch>,
    control: Receiver<SourceBatch>,
    mut sinks: Vec<Box<dyn Sink>>,
    shutdown: &AtomicBool,
) -> anyhow::Result<Committed> {
    let mut rows = Vec::new();
    // Receipts of rows handed to the sinks that the store has not committed yet.
    let mut unstored: Vec<Receipt> = Vec::new();
    let mut stored = Committed::default();
    let mut heartbeat = Instant::now();
    let mut store_failing = false;
    // Once the store has shed rows, no receipt may complete: each says everything before it
    // is stored. The sources then replay from their last commit when Hawking starts again.
    let mut receipts_void = false;
    loop {
        while let Ok(batch) = control.try_recv() {
            stage.accept(batch, Instant::now());
        }
        // While the store cannot commit, sources that can replay (Kafka) are not read: their
        // flows wait in the topic, not in a buffer the store would shed from, and the
        // receipts already held must not complete past rows it shed. At shutdown reading
        // goes on, so the sources can finish.
        let hold_back = store_failing && !unstored.is_empty() && !shutdown.load(Ordering::Relaxed);
        let received = match hold_back {
            true => {
                std::thread::sleep(STAGE_POLL);
                Err(RecvTimeoutError::Timeout)
            }
            false => data.recv_timeout(STAGE_POLL),
        };
        let closed = match received {
            Ok(batch) => {
                stage.accept(batch, Instant::now());
                false
            }
            Err(RecvTimeoutError::Timeout) => false,
            Err(RecvTimeoutError::Disconnected) => true,
        };
        if closed {
            // Whatever the watches said last applies to what is still held.
            while let Ok(batch) = control.try_recv() {
                stage.accept(batch, Instant::now());
            }
        }
        let now = Instant::now();
        stage.release(now, closed, &mut rows)?;
        if closed {
            // After the last flows are attributed: the gap until the next start opens now.
            stage.heartbeat(true);
            stage.release(now, true, &mut rows)?;
        } else if heartbeat.elapsed() >= HEARTBEAT {
            heartbeat = now;
            stage.heartbeat(false);
        }
        for (table, batch) in rows.drain(..) {
            for sink in &mut sinks {
                sink.write(table, batch.clone())?;
            }
        }
        stage.take_receipts(&mut unstored);
        for sink in &mut sinks {
            let committed = if closed {
                sink.shutdown()?
            } else if sink.commit_due(now) {
                // A failed commit keeps its rows (the sink counted and logged it): next time.
                match sink.commit() {
                    Ok(committed) => committed,
                    Err(_) => {
                        store_failing |= sink.name() == "store";
                        continue;
                    }
                }
            } else {
                continue;
            };
            if sink.name() == "store" {
                store_failing = false;
                stored += committed;
                if !receipts_void && sink.shed() > 0 {
                    receipts_void = true;
                    tracing::error!(
                        shed = sink.shed(),
                        "the store dropped rows while it could not commit: Kafka offsets are \
                         not committed from now on, so the next start reads those flows again"
                    );
                }
                if receipts_void {
                    unstored.clear();
                } else {
                    // Every row written before this commit is in the store now.
                    unstored.drain(..).for_each(Receipt::stored);
                }
            }
        }
        if closed {
            return Ok(stored);
        }
    }
}
