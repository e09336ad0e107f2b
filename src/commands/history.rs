//! `hawking history import FILE`: builds history from kubectl recordings and commits it to
//! the store's `ip_history` and `history_gaps` tables.

use std::path::{Path, PathBuf};

use anyhow::Context;
use hawking_enricher::import::import_recording;
use hawking_enricher::{HistoryKeeper, Mode};
use hawking_query::{PartitionedWriter, WriterOptions};
use hawking_schemas::pipeline::Table;
use hawking_schemas::time::{format_time, parse_time};

#[derive(clap::Subcommand)]
pub enum HistoryCommand {
    /// Build history from a recording: `kubectl get pods,nodes,services -A -o json` snapshots
    /// or `kubectl get pods -A -w -o json --output-watch-events` streams.
    Import {
        /// The recording.
        file: PathBuf,
        /// The cluster it records.
        #[arg(long)]
        cluster: String,
        /// When the recording began, if before its opening list's latest timestamp (an
        /// earlier recording's open gap then ends here, not later) [default: the latest
        /// timestamp of its opening list]. RFC 3339 or "2026-11-20 10:05:00" (UTC).
        #[arg(long)]
        from: Option<String>,
        /// When the recording stopped, if later than its last event: what it held then was
        /// still held until this time [default: its last timestamp; after it, nothing is
        /// known].
        #[arg(long)]
        until: Option<String>,
        /// Store directory, or `s3://bucket/prefix` (reached as the `AWS_*` environment
        /// variables say).
        #[arg(long, default_value = "./data")]
        data: String,
    },
}

pub fn run(command: HistoryCommand) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Import {
            file,
            cluster,
            from,
            until,
            data,
        } => {
            let time = |flag: &str, t: Option<String>| -> anyhow::Result<Option<i64>> {
                t.map(|t| parse_time(&t).with_context(|| format!("--{flag}")))
                    .transpose()
            };
            let bounds = Bounds {
                from: time("from", from)?,
                until: time("until", until)?,
            };
            let store =
                hawking_query::StoreRoot::open(&data, &Default::default()).context("--data")?;
            import(&file, &cluster, bounds, &store)
        }
    }
}

/// The reason of the gap after a recording of a cluster that is not watched live.
const RECORDING_ENDS: &str = hawking_enricher::keeper::RECORDING_ENDS;

/// What the user says of a recording's extent, beyond its own timestamps.
struct Bounds {
    from: Option<i64>,
    until: Option<i64>,
}

fn import(
    file: &Path,
    cluster: &str,
    bounds: Bounds,
    data: &hawking_query::StoreRoot,
) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut keeper = HistoryKeeper::new(Mode::Import);
    let report = import_recording(&text, cluster, &mut keeper)
        .with_context(|| format!("importing {}", file.display()))?;
    let Some(last) = report.recording_end else {
        anyhow::bail!(
            "{} holds no Pods, Nodes or Services with timestamps",
            file.display()
        );
    };
    let end = match bounds.until {
        Some(until) if until < last => anyhow::bail!(
            "--until {}: the recording {} has events until {}",
            format_time(until),
            file.display(),
            format_time(last)
        ),
        Some(until) => until,
        None => last,
    };
    if let Some(from) = bounds.from
        && from > end
    {
        anyhow::bail!(
            "--from {}: after the recording's end, {}",
            format_time(from),
            format_time(end)
        );
    }
    // A cluster Hawking also watches live keeps its own account of what it saw; one known
    // only from recordings has nothing after the recording's end.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let quoted = cluster.replace('\'', "''");
    let (watched_live, open_gaps) = runtime.block_on(async {
        let ctx = hawking_query::open_session(data, &Default::default()).await?;
        let sql = format!(
            "SELECT count(*) FROM ip_history_log WHERE cluster_name = '{quoted}' AND source = 'watch'"
        );
        let batches = ctx.sql(&sql).await?.collect().await?;
        let n = batches
            .first()
            .and_then(|b| {
                b.column(0)
                    .as_any()
                    .downcast_ref::<arrow::array::Int64Array>()
                    .map(|a| a.value(0))
            })
            .unwrap_or(0);
        let sql = format!(
            "SELECT CAST(gap_start AS BIGINT) AS start FROM history_gaps \
             WHERE cluster_name = '{quoted}' AND gap_end IS NULL AND reason = '{RECORDING_ENDS}'"
        );
        let mut starts = Vec::new();
        for b in ctx.sql(&sql).await?.collect().await? {
            if let Some(a) = b.column(0).as_any().downcast_ref::<arrow::array::Int64Array>() {
                starts.extend(a.iter().flatten());
            }
        }
        anyhow::Ok((n > 0, starts))
    })?;
    // An earlier recording ended where this one may go on: what this one covers is no longer
    // unknown. It tells every change from its opening list on, so the gap ends there.
    let start = bounds
        .from
        .or(report.recording_start)
        .unwrap_or(end)
        .min(end);
    for gap_start in open_gaps.into_iter().filter(|g| *g <= end) {
        keeper.end_gap(
            cluster,
            gap_start,
            start.clamp(gap_start, end),
            RECORDING_ENDS,
        );
    }
    keeper.finish_recording(cluster, end, !watched_live);
    let (intervals, gaps) = keeper.take_rows();
    let options = WriterOptions::default();
    let mut written = 0;
    for (table, rows) in [
        (Table::IpHistoryLog, intervals),
        (Table::HistoryGapsLog, gaps),
    ] {
        let Some(rows) = rows else { continue };
        let mut w = PartitionedWriter::for_table(data, table, &options)?;
        if table == Table::IpHistoryLog {
            written = rows.num_rows();
        }
        w.write(rows)?;
        w.commit()?;
    }
    println!(
        "imported {} objects ({} watch events, {} other documents skipped) into cluster {cluster}: {written} interval rows; recording ends {}",
        report.objects,
        report.events,
        report.skipped,
        format_time(end)
    );
    Ok(())
}
