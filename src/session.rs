//! The SQL session every query surface shares (`hawking sql`, the PostgreSQL-wire server):
//! the store's tables and network functions from `hawking_query`, plus the functions that
//! need the enricher (the `whois(...)` table function).

use std::path::Path;
use std::sync::Arc;

use datafusion::prelude::SessionContext;
use hawking_query::QueryOptions;

use crate::whois_table::{NAME as WHOIS, WhoisFunction};

/// Opens a session over the store at `data` with every table, view and function registered.
pub async fn open_session(data: &Path, options: &QueryOptions) -> anyhow::Result<SessionContext> {
    let ctx = hawking_query::open_session(data, options).await?;
    ctx.register_udtf(WHOIS, Arc::new(WhoisFunction));
    Ok(ctx)
}
