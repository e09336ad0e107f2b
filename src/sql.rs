//! `hawking sql`: one query over the store, printed as a table, CSV or JSON.

use std::path::Path;

use anyhow::Context;
use hawking_query::{OutputFormat, QueryOptions, write_batches};

use crate::session::open_session;

pub fn run(
    query: Option<&str>,
    data: &Path,
    format: OutputFormat,
    options: &QueryOptions,
) -> anyhow::Result<()> {
    let Some(query) = query else {
        anyhow::bail!("give a query: the interactive prompt is not built yet");
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let batches = runtime.block_on(async {
        let ctx = open_session(data, options).await?;
        let df = ctx.sql(query).await?;
        anyhow::Ok(df.collect().await?)
    })?;
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    write_batches(&mut out, &batches, format).context("writing results")?;
    Ok(())
}
