//! Wires the running pipeline: the NetFlow listener thread decodes into batches; cluster
//! watches (async tasks) report history; the sink thread attributes and commits. Shutdown
//! stops the listener, which drains the socket and hands over its last batch; the sink
//! attributes and commits everything it received and only then exits.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Context;
use arrow::array::RecordBatch;
use hawking_collector::{CollectorMetrics, ListenerStats, NetflowListener};
use hawking_enricher::watch::{client_for, spawn_cluster_watch};
use hawking_enricher::{HistoryKeeper, Mode, Observation};
use hawking_query::store::layout::table_dir;
use hawking_query::{
    ColumnTuning, FLOWS_TABLE, FLOWS_TUNING, HISTORY_GAPS_LOG_TABLE, IP_HISTORY_LOG_TABLE,
    NAT_HISTORY_LOG_TABLE, PartitionedWriter, open_session,
};
use hawking_schemas::{
    FlowBatch, flow_schema, history_gaps_schema, ip_history_schema, nat_history_schema,
};
use prometheus::Registry;

use crate::config::Config;
use crate::history_state::HistoryState;
use crate::sink::{Enrichment, NatState, Sink, SinkMetrics, SinkStats, Writers, unix_micros};

/// Batches in flight between the listener and the sink; when full, the listener waits and
/// the kernel socket buffer absorbs the burst.
const CHANNEL_BATCHES: usize = 8;

pub struct Pipeline {
    shutdown: Arc<AtomicBool>,
    listener: JoinHandle<anyhow::Result<ListenerStats>>,
    sink: JoinHandle<anyhow::Result<SinkStats>>,
    watches: Vec<tokio::task::JoinHandle<()>>,
    pub netflow_addr: SocketAddr,
}

/// The persisted NAT translations, folded to one row per translation: the open ones and
/// those that closed less than `keep` before the latest one began or ended (the NAT index's
/// own clock, so a store of past events loads as it was kept); and the highest ID stored.
pub async fn load_nat_history(
    data_dir: &Path,
    keep: Duration,
) -> anyhow::Result<(Vec<RecordBatch>, i64)> {
    let ctx = open_session(data_dir, &Default::default()).await?;
    let sql = format!(
        "SELECT * FROM nat_history WHERE valid_to IS NULL \
         OR valid_to >= (SELECT greatest(max(valid_from), max(valid_to)) FROM nat_history) \
                        - INTERVAL '{} microseconds'",
        keep.as_micros()
    );
    let rows = ctx
        .sql(&sql)
        .await?
        .collect()
        .await
        .context("reading nat_history")?;
    let max = ctx
        .sql("SELECT coalesce(max(translation_id), 0) AS id FROM nat_history_log")
        .await?
        .collect()
        .await
        .context("reading nat_history_log")?;
    use arrow::array::AsArray;
    let max_id = max
        .first()
        .filter(|b| b.num_rows() > 0)
        .and_then(|b| {
            b.column(0)
                .as_primitive_opt::<arrow::datatypes::Int64Type>()
                .map(|c| c.value(0))
        })
        .unwrap_or(0);
    Ok((rows, max_id))
}

/// The persisted history, folded to one row per interval and gap.
pub async fn load_history(data_dir: &Path) -> anyhow::Result<(Vec<RecordBatch>, Vec<RecordBatch>)> {
    let ctx = open_session(data_dir, &Default::default()).await?;
    let intervals = ctx
        .sql("SELECT * FROM ip_history")
        .await?
        .collect()
        .await
        .context("reading ip_history")?;
    let gaps = ctx
        .sql("SELECT * FROM history_gaps")
        .await?
        .collect()
        .await
        .context("reading history_gaps")?;
    Ok((intervals, gaps))
}

impl Pipeline {
    /// Binds the listener, opens the store, loads the history and connects to the clusters
    /// (so configuration errors surface here), then starts the listener, watches and sink.
    pub async fn start(config: &Config, registry: &Registry) -> anyhow::Result<Pipeline> {
        let data_dir = config.data_dir();
        std::fs::create_dir_all(&data_dir)
            .with_context(|| format!("creating data dir {}", data_dir.display()))?;
        let state_dir = data_dir.join("state");
        let listener = NetflowListener::bind(
            config.netflow.clone(),
            Some(state_dir.join("netflow-templates.json")),
        )?;
        let netflow_addr = listener.local_addr()?;
        let w = &config.store.writer;
        let history_tuning = ColumnTuning::default();
        let writers = Writers {
            flows: PartitionedWriter::new(
                &table_dir(&data_dir, FLOWS_TABLE),
                flow_schema(),
                "flow_start",
                w,
                &FLOWS_TUNING,
            )?,
            intervals: PartitionedWriter::new(
                &table_dir(&data_dir, IP_HISTORY_LOG_TABLE),
                ip_history_schema(),
                "recorded_at",
                w,
                &history_tuning,
            )?,
            gaps: PartitionedWriter::new(
                &table_dir(&data_dir, HISTORY_GAPS_LOG_TABLE),
                history_gaps_schema(),
                "recorded_at",
                w,
                &history_tuning,
            )?,
            nat: PartitionedWriter::new(
                &table_dir(&data_dir, NAT_HISTORY_LOG_TABLE),
                nat_history_schema(),
                "recorded_at",
                w,
                &history_tuning,
            )?,
        };

        let (history_tx, history_rx) = channel::<Observation>();
        let mut watches = Vec::new();
        let enrichment = if config.enricher.clusters.is_empty() {
            None
        } else {
            let mut keeper = HistoryKeeper::new(Mode::Live);
            // The grace period is sized for the watch's lag; a broken watch may have lost that much.
            keeper.set_lag_allowance((config.enricher.grace_secs.max(0.0) * 1e6) as i64);
            let (intervals, gaps) = load_history(&data_dir).await?;
            let loaded = keeper.load(&intervals, &gaps)?;
            let selector = config.enricher.apply(keeper.history_mut())?;
            let state_path = state_dir.join("history.json");
            let state = HistoryState::load(&state_path)?;
            let mut watched = Vec::new();
            for cluster in config.enricher.clusters.iter().filter(|c| c.watched()) {
                let client = client_for(cluster).await?;
                let since = state.synced_until.get(&cluster.name).copied();
                let reason = if since.is_some() {
                    "collector not running"
                } else {
                    "first sync"
                };
                keeper.begin_watching(&cluster.name, since.unwrap_or_else(unix_micros), reason);
                watches.extend(spawn_cluster_watch(
                    cluster.name.clone(),
                    client,
                    history_tx.clone(),
                ));
                watched.push(cluster.name.clone());
            }
            tracing::info!(
                intervals = loaded,
                clusters = config.enricher.clusters.len(),
                watched = watched.len(),
                "history loaded"
            );
            Some(Enrichment {
                keeper,
                selector,
                watched,
                state,
                state_path,
                grace: Duration::from_secs_f64(config.enricher.grace_secs.max(0.0)),
                max_held_flows: config.enricher.max_held_flows,
            })
        };
        drop(history_tx);

        let nat_config = &config.enricher.nat;
        let keep_closed = Duration::from_secs(nat_config.keep_closed_secs);
        let mut nat_index = hawking_enricher::NatIndex::new(nat_config.clock_skew_ms as i64 * 1000);
        let (nat_rows, max_id) = load_nat_history(&data_dir, keep_closed).await?;
        nat_index.continue_ids_after(max_id);
        let translations = nat_index.load(&nat_rows, |name| {
            enrichment
                .as_ref()
                .and_then(|e| e.keeper.history().find_cluster(name))
                .unwrap_or(hawking_enricher::nat::ANY_CLUSTER)
        })?;
        if translations > 0 {
            tracing::info!(translations, "NAT translations loaded");
        }

        let collector_metrics = CollectorMetrics::register(registry)?;
        let sink = Sink {
            writers,
            enrichment,
            nat: NatState {
                index: nat_index,
                keep_closed,
                published: Default::default(),
            },
            config: config.store.clone(),
            metrics: SinkMetrics::register(registry)?,
        };
        let shutdown = Arc::new(AtomicBool::new(false));
        let (tx, rx) = sync_channel::<FlowBatch>(CHANNEL_BATCHES);
        let sink = std::thread::Builder::new()
            .name("hawking-sink".into())
            .spawn(move || sink.run(rx, history_rx))?;
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
            watches,
            netflow_addr,
        })
    }

    /// Stops receiving, attributes and commits every accepted flow, and returns the run's
    /// totals.
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
        for w in self.watches {
            w.abort();
        }
        Ok((listener?, sink?))
    }
}
