//! `hawking store stats|compact|prune`: the operator's view of the store and the upkeep
//! `hawking serve` also runs in the background ([`hawking_query::store::maintenance`]).

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use anyhow::Context;
use hawking_query::store::compact::compact_closed;
use hawking_query::store::layout::TimeRange;
use hawking_query::store::maintenance::CommandLease;
use hawking_query::store::retention::prune;
use hawking_query::store::stats::hour_stats;
use hawking_query::{StoreConfig, StoreRoot};
use hawking_schemas::pipeline::Table;
use hawking_schemas::time::{format_time, now_micros, parse_time};
use serde_json::json;

#[derive(clap::Subcommand)]
pub enum StoreCommand {
    /// Files, rows and bytes per table and hour partition (rows from the files' footers).
    Stats(StatsArgs),
    /// Merge closed hours into few large time-sorted files now (what serve does in the
    /// background). Safe beside a running serve and its queries.
    Compact(CompactArgs),
    /// Apply retention now: delete what is older than each table keeps (history that still
    /// explains an address stays). Safe beside a running serve and its queries.
    Prune(PruneArgs),
}

#[derive(clap::Args)]
pub struct StatsArgs {
    /// Store directory, or `s3://bucket/prefix` (reached as `[store.s3]` in --config and the
    /// `AWS_*` environment variables say).
    #[arg(long, default_value = "./data")]
    data: String,
    /// Only this table: flows, ip_history_log, history_gaps_log, nat_history_log.
    #[arg(long, value_parser = parse_table)]
    table: Option<Table>,
    /// Only hours from this time (RFC 3339 or "YYYY-MM-DD HH:MM:SS" UTC).
    #[arg(long)]
    from: Option<String>,
    /// Only hours up to this time.
    #[arg(long)]
    to: Option<String>,
    /// One line per table instead of per hour.
    #[arg(long)]
    summary: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct CompactArgs {
    /// Store directory, or `s3://bucket/prefix` (reached as `[store.s3]` in --config and the
    /// `AWS_*` environment variables say).
    #[arg(long, default_value = "./data")]
    data: String,
    /// The serve configuration whose [store.compaction] settings apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Compact hours that end by this time, instead of those past [store.compaction]
    /// settle_secs ("now" compacts every hour that has ended).
    #[arg(long)]
    before: Option<String>,
}

#[derive(clap::Args)]
pub struct PruneArgs {
    /// Store directory, or `s3://bucket/prefix` (reached as `[store.s3]` in --config and the
    /// `AWS_*` environment variables say).
    #[arg(long, default_value = "./data")]
    data: String,
    /// The serve configuration whose [store.retention] settings apply; flags override it.
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    flows_days: Option<u32>,
    #[arg(long)]
    ip_history_days: Option<u32>,
    #[arg(long)]
    history_gaps_days: Option<u32>,
    #[arg(long)]
    nat_history_days: Option<u32>,
    /// Evaluate the days as of this time instead of now.
    #[arg(long)]
    now: Option<String>,
}

fn parse_table(text: &str) -> Result<Table, String> {
    Table::ALL
        .into_iter()
        .find(|t| t.name() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = Table::ALL.iter().map(|t| t.name()).collect();
            format!("unknown table {text}: one of {}", names.join(", "))
        })
}

fn store_config(config: Option<&Path>) -> anyhow::Result<StoreConfig> {
    Ok(match config {
        Some(path) => crate::config::Config::load(path)?.store,
        None => StoreConfig::default(),
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

pub fn run(command: StoreCommand) -> anyhow::Result<()> {
    match command {
        StoreCommand::Stats(args) => stats(args),
        StoreCommand::Compact(args) => compact(args),
        StoreCommand::Prune(args) => prune_now(args),
    }
}

/// The store `--data` names, reached as `config` says; an error when no store is there.
fn open_store(data: &str, config: &StoreConfig) -> anyhow::Result<StoreRoot> {
    let store = StoreRoot::open(data, &config.s3).context("--data")?;
    store.require_store().context("--data")?;
    Ok(store)
}

fn stats(args: StatsArgs) -> anyhow::Result<()> {
    let store = open_store(&args.data, &StoreConfig::default())?;
    let range = TimeRange {
        start_us: args
            .from
            .as_deref()
            .map(parse_time)
            .transpose()
            .context("--from")?,
        end_us: args
            .to
            .as_deref()
            .map(parse_time)
            .transpose()
            .context("--to")?,
    };
    let tables: Vec<Table> = match args.table {
        Some(t) => vec![t],
        None => Table::ALL.to_vec(),
    };
    let mut rows = runtime()?.block_on(hour_stats(&store, &tables, range))?;
    if args.summary {
        let mut totals: Vec<hawking_query::store::stats::HourStats> = Vec::new();
        for h in rows {
            match totals.last_mut() {
                Some(t) if t.table == h.table => {
                    t.files += h.files;
                    t.rows += h.rows;
                    t.bytes += h.bytes;
                    t.compacted_files += h.compacted_files;
                }
                _ => totals.push(h),
            }
        }
        rows = totals;
    }
    if args.json {
        let out: Vec<_> = rows
            .iter()
            .map(|h| {
                json!({
                    "table": h.table.name(),
                    "hour": (!args.summary).then(|| format_time(h.hour_us)),
                    "files": h.files,
                    "compacted_files": h.compacted_files,
                    "rows": h.rows,
                    "bytes": h.bytes,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!(
        "{:<18} {:<22} {:>7} {:>9} {:>12} {:>14}",
        "table", "hour", "files", "compacted", "rows", "bytes"
    );
    for h in &rows {
        let hour = if args.summary {
            "(all)".to_string()
        } else {
            format_time(h.hour_us)
        };
        println!(
            "{:<18} {:<22} {:>7} {:>9} {:>12} {:>14}",
            h.table.name(),
            hour,
            h.files,
            h.compacted_files,
            h.rows,
            h.bytes
        );
    }
    Ok(())
}

fn compact(args: CompactArgs) -> anyhow::Result<()> {
    let config = store_config(args.config.as_deref())?;
    let store = open_store(&args.data, &config)?;
    let config = config.compaction;
    let before = args
        .before
        .as_deref()
        .map(parse_time)
        .transpose()
        .context("--before")?;
    let stop = AtomicBool::new(false);
    let mut on_hour = |h: &hawking_query::store::compact::HourCompacted| {
        eprintln!(
            "compacted hour {} of {}: {} files -> {}, {} rows -> {}, {} -> {} bytes",
            format_time(h.hour_us),
            h.table.map(|t| t.name()).unwrap_or_default(),
            h.files_in,
            h.files_out,
            h.rows_in,
            h.rows_out,
            h.bytes_in,
            h.bytes_out
        );
    };
    let pass = runtime()?.block_on(async {
        let lease = CommandLease::take(&store).await?;
        let pass = compact_closed(&store, &config, now_micros(), before, &stop, &mut on_hour).await;
        lease.release().await?;
        pass
    })?;
    eprintln!(
        "{} hours compacted{}",
        pass.hours.len(),
        if pass.lost_races > 0 {
            format!(
                ", {} already being compacted by another process",
                pass.lost_races
            )
        } else {
            String::new()
        }
    );
    Ok(())
}

fn prune_now(args: PruneArgs) -> anyhow::Result<()> {
    let config = store_config(args.config.as_deref())?;
    let store = open_store(&args.data, &config)?;
    let mut retention = config.retention;
    for (flag, days) in [
        (&mut retention.flows_days, args.flows_days),
        (&mut retention.ip_history_days, args.ip_history_days),
        (&mut retention.history_gaps_days, args.history_gaps_days),
        (&mut retention.nat_history_days, args.nat_history_days),
    ] {
        if days.is_some() {
            *flag = days;
        }
    }
    retention.validate().map_err(anyhow::Error::msg)?;
    if Table::ALL.iter().all(|t| retention.days(*t).is_none()) {
        anyhow::bail!(
            "no retention given: set [store.retention] in --config or --flows-days and the like"
        );
    }
    for warning in retention.warnings() {
        eprintln!("warning: {warning}");
    }
    let now = match args.now.as_deref() {
        Some(t) => parse_time(t).context("--now")?,
        None => now_micros(),
    };
    let stop = AtomicBool::new(false);
    let pass = runtime()?.block_on(async {
        let lease = CommandLease::take(&store).await?;
        let pass = prune(&store, &retention, now, &stop).await;
        lease.release().await?;
        pass
    })?;
    for h in &pass.hours {
        eprintln!(
            "pruned hour {} of {}: {} rows, {} kept",
            format_time(h.hour_us),
            h.table.name(),
            h.rows_before,
            h.rows_kept
        );
    }
    eprintln!("{} hours pruned", pass.hours.len());
    Ok(())
}
