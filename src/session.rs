//! The SQL session every query surface shares (`hawking sql`, the PostgreSQL-wire server):
//! the store's tables from `hawking_query`, plus the functions that need the enricher.

use std::path::Path;

use datafusion::prelude::SessionContext;
use hawking_query::QueryOptions;

/// Opens a session over the store at `data` with every table, view and function registered.
pub async fn open_session(data: &Path, options: &QueryOptions) -> anyhow::Result<SessionContext> {
    let ctx = hawking_query::open_session(data, options).await?;
    Ok(ctx)
}
