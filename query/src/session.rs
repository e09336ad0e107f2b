//! The DataFusion session over a store: the tables users query and the settings that make
//! scans of hour-partitioned Parquet fast.

use std::path::Path;
use std::sync::Arc;

use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use hawking_schemas::flow_schema;
use serde::{Deserialize, Serialize};

use crate::store::FLOWS_TABLE;
use crate::store::layout::table_dir;
use crate::table::StoreTable;

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
}

/// Opens a session with the store's tables registered.
pub fn open_session(root: &Path, options: &QueryOptions) -> Result<SessionContext, QueryError> {
    let root = std::path::absolute(root).map_err(|source| QueryError::Store {
        path: root.display().to_string(),
        source,
    })?;
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
    ctx.register_table(
        FLOWS_TABLE,
        Arc::new(StoreTable::new(
            table_dir(&root, FLOWS_TABLE),
            flow_schema(),
            "flow_start",
        )),
    )?;
    Ok(ctx)
}
