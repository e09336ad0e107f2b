//! The DataFusion session over a store: the tables users query and the settings that make
//! scans of hour-partitioned Parquet fast.

use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use hawking_schemas::pipeline::Table;
use serde::{Deserialize, Serialize};

use crate::store::root::StoreRoot;
use crate::table::StoreTable;
use crate::whois::WhoisFunction;

/// Query engine settings.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueryOptions {
    /// Parallel scan partitions. Default: the number of CPUs.
    pub target_partitions: usize,
    /// Memory a session's queries may use for sorts, joins and aggregations, in bytes;
    /// beyond it they spill or fail with an error. Default: no limit.
    pub memory_limit_bytes: Option<usize>,
}

impl Default for QueryOptions {
    fn default() -> Self {
        QueryOptions {
            target_partitions: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(2),
            memory_limit_bytes: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error("store at {path}: {source}")]
    Store {
        path: String,
        source: std::io::Error,
    },
    #[error("stored rows: {0}")]
    Rows(#[from] hawking_schemas::columns::ColumnError),
}

/// Per interval (or gap), the closed row if there is one, else the latest: what the logs
/// mean once their open-then-closed rows are folded.
const IP_HISTORY_VIEW: &str = "CREATE VIEW ip_history AS \
    SELECT interval_id, cluster_name, ip, owner_kind, namespace, name, uid, workload_kind, workload, node, ports, \
           valid_from, valid_to, source, recorded_at \
    FROM (SELECT *, row_number() OVER (PARTITION BY interval_id ORDER BY valid_to IS NULL, recorded_at DESC) AS version \
          FROM ip_history_log) \
    WHERE version = 1";

const HISTORY_GAPS_VIEW: &str = "CREATE VIEW history_gaps AS \
    SELECT gap_id, cluster_name, gap_start, gap_end, reason, recorded_at \
    FROM (SELECT *, row_number() OVER (PARTITION BY gap_id ORDER BY gap_end IS NULL, recorded_at DESC) AS version \
          FROM history_gaps_log) \
    WHERE version = 1";

const NAT_HISTORY_VIEW: &str = "CREATE VIEW nat_history AS \
    SELECT translation_id, cluster_name, protocol, inside_ip, inside_port, outside_ip, outside_port, \
           remote_ip, remote_port, valid_from, valid_to, exporter, recorded_at \
    FROM (SELECT *, row_number() OVER (PARTITION BY translation_id ORDER BY valid_to IS NULL, recorded_at DESC) AS version \
          FROM nat_history_log) \
    WHERE version = 1";

/// One row per flow and attributed workload end: a flow from workload A to workload B is
/// A's `egress` and B's `ingress`, so "traffic by workload" is one GROUP BY.
const FLOWS_BY_WORKLOAD_VIEW: &str = "CREATE VIEW flows_by_workload AS \
    SELECT flow_start, flow_end, 'egress' AS direction, \
           src_cluster AS cluster_name, src_namespace AS namespace, src_workload_kind AS workload_kind, \
           src_workload AS workload, src_pod AS pod, src_attribution AS attribution, src_ip AS ip, src_port AS port, \
           dst_ip AS peer_ip, dst_port AS peer_port, dst_namespace AS peer_namespace, dst_workload AS peer_workload, \
           dst_attribution AS peer_attribution, protocol, bytes, packets, exporter \
    FROM flows WHERE src_workload IS NOT NULL \
    UNION ALL \
    SELECT flow_start, flow_end, 'ingress' AS direction, \
           dst_cluster, dst_namespace, dst_workload_kind, dst_workload, dst_pod, dst_attribution, dst_ip, dst_port, \
           src_ip, src_port, src_namespace, src_workload, src_attribution, protocol, bytes, packets, exporter \
    FROM flows WHERE dst_workload IS NOT NULL";

/// Opens a session with the store's tables and views registered: `flows`, `ip_history`,
/// `history_gaps`, `nat_history` (and the logs behind the last three), `flows_by_workload`,
/// Hawking's SQL functions ([`crate::functions`]) and the `whois(...)` table function.
pub async fn open_session(
    root: impl Into<StoreRoot>,
    options: &QueryOptions,
) -> Result<SessionContext, QueryError> {
    let root =
        match root.into() {
            StoreRoot::Local(dir) => StoreRoot::Local(std::path::absolute(&dir).map_err(
                |source| QueryError::Store {
                    path: dir.display().to_string(),
                    source,
                },
            )?),
            object => object,
        };
    let mut config = SessionConfig::new()
        .with_information_schema(true)
        .with_target_partitions(options.target_partitions.max(1));
    let parquet = &mut config.options_mut().execution.parquet;
    parquet.pushdown_filters = true;
    parquet.reorder_filters = true;
    parquet.enable_page_index = true;
    let mut runtime = RuntimeEnvBuilder::new();
    if let Some(limit) = options.memory_limit_bytes {
        runtime = runtime.with_memory_limit(limit, 1.0);
    }
    let ctx = SessionContext::new_with_config_rt(config, runtime.build_arc()?);
    root.register(&ctx);
    for table in Table::ALL {
        let provider = StoreTable::new(root.table(table), table.schema(), table.time_column());
        // History tables keep plain Utf8: the enricher reads them back as `StringArray`.
        let provider = if table == Table::Flows {
            provider.with_view_strings()
        } else {
            provider
        };
        ctx.register_table(table.name(), Arc::new(provider))?;
    }
    crate::functions::register(&ctx);
    ctx.register_udtf(crate::whois::NAME, Arc::new(WhoisFunction));
    ctx.sql(IP_HISTORY_VIEW).await?;
    ctx.sql(HISTORY_GAPS_VIEW).await?;
    ctx.sql(NAT_HISTORY_VIEW).await?;
    ctx.sql(FLOWS_BY_WORKLOAD_VIEW).await?;
    Ok(ctx)
}
