//! `hawking replay`: the forensic replay of stored flows. Re-attributes the flows stored
//! between two times with the history as it is now (after an import, a recovered watch gap);
//! prints them, shows only the endpoints whose answer changed (`--diff`), or replaces the
//! stored attribution of those hours (`--rewrite`) so SQL and Grafana show the corrected
//! answers.
//!
//! Exit codes: 0 done; 1 an error (the message names the flag or file at fault); 2 bad
//! arguments; 130 interrupted (Ctrl-C or SIGTERM): no output file is left behind, and every
//! hour a rewrite had not finished keeps its old files.

mod attribution;
mod capture;
mod diff;
mod hours;
mod parquet_out;
mod progress;
mod rewrite;

use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Context;
use arrow::array::RecordBatch;
use datafusion::common::DFSchema;
use datafusion::prelude::{Expr, SessionContext};
use hawking_schemas::time::{format_time, parse_time};

use crate::config::Config;
use attribution::Reattribution;
use hours::{Columns, OpenHour, Selection};
use parquet_out::ParquetOut;
use progress::Progress;

#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Replay the flows that started at or after this time: RFC 3339 (2026-11-20T10:05:00Z)
    /// or "2026-11-20 10:05:00" (UTC).
    #[arg(long, required_unless_present = "capture")]
    from: Option<String>,
    /// ... and before this time.
    #[arg(long, required_unless_present = "capture")]
    to: Option<String>,
    /// Attribute the flows of this packet capture (pcap or pcapng) instead of stored ones:
    /// the NetFlow/IPFIX exports inside it, on any UDP port, with their exporter's address
    /// and the capture's timestamps.
    #[arg(long, conflicts_with_all = ["from", "to", "predicate", "diff", "rewrite"])]
    capture: Option<PathBuf>,
    /// With --capture: the store whose history (and NAT translations) attribute the
    /// capture's flows [default: none, flows unattributed].
    #[arg(long, requires = "capture")]
    history: Option<PathBuf>,
    /// With --capture: meter the capture's packets into flows (raw traffic from a tap or a
    /// node) instead of decoding the exports inside it. ADDR is where the capture was taken
    /// (the tap's or node's address): it stands as the flows' exporter, which picks their
    /// cluster as `exporters` in --config says.
    #[arg(
        long,
        value_name = "ADDR",
        requires = "capture",
        conflicts_with = "send"
    )]
    meter: Option<std::net::IpAddr>,
    /// With --meter: seconds without a packet that end a flow [default: 15].
    #[arg(long, requires = "meter", default_value_t = 15.0)]
    idle_timeout: f64,
    /// With --meter: seconds after which a long flow is exported and goes on as a new one
    /// [default: 1800].
    #[arg(long, requires = "meter", default_value_t = 1800.0)]
    active_timeout: f64,
    /// With --capture: re-send the capture's UDP datagrams to this collector (HOST:PORT)
    /// instead of decoding them, paced as they were captured (like nfreplay or tcpreplay).
    /// The collector sees this host as their exporter.
    #[arg(long, requires = "capture", conflicts_with_all = ["history", "out"])]
    send: Option<std::net::SocketAddr>,
    /// With --send: play the capture this many times faster than it was captured
    /// (0.5 is half speed) [default: 1].
    #[arg(long, requires = "send", conflicts_with = "rate")]
    speed: Option<f64>,
    /// With --send: this many datagrams per second, whatever the capture's pacing.
    #[arg(long, requires = "send")]
    rate: Option<f64>,
    /// Only the flows matching this SQL condition over the flows table's columns, e.g.
    /// "src_ip = '10.4.3.7'" or "cidr_contains('10.4.0.0/16', dst_ip)".
    #[arg(long = "where")]
    predicate: Option<String>,
    /// Show only the endpoints whose attribution changed: the stored answer beside today's,
    /// and why.
    #[arg(long)]
    diff: bool,
    /// Replace the stored attribution of the replayed flows with today's, one hour partition
    /// at a time, each in one step.
    #[arg(long, conflicts_with_all = ["diff", "out"])]
    rewrite: bool,
    /// Write the result to this file (complete or not at all) instead of standard output.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// `hawking serve`'s configuration: which exporters belong to which cluster, the
    /// clusters' ranges [default: every cluster in the stored history, for every flow].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Store directory.
    #[arg(long, default_value = "./data")]
    data: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
    Parquet,
}

/// A replay stopped by Ctrl-C or SIGTERM (exit code 130).
#[derive(Debug, thiserror::Error)]
#[error("interrupted")]
pub struct Interrupted;

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

fn interrupted() -> bool {
    STOP.load(Ordering::Relaxed)
}

pub fn run(args: ReplayArgs) -> anyhow::Result<()> {
    if args.format == Format::Parquet && args.out.is_none() {
        anyhow::bail!("--format parquet writes a file: give it with --out");
    }
    let config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    if let (Some(path), Some(to)) = (&args.capture, args.send) {
        return capture::resend(path, to, capture::Pace::of(args.speed, args.rate)?);
    }
    if let Some(path) = &args.capture {
        return runtime.block_on(capture::replay_capture(&args, path, &config));
    }
    // clap requires both when there is no --capture.
    let (from_text, to_text) = (
        args.from.as_deref().unwrap_or_default(),
        args.to.as_deref().unwrap_or_default(),
    );
    let from = parse_time(from_text).context("--from")?;
    let to = parse_time(to_text).context("--to")?;
    anyhow::ensure!(from < to, "--from {from_text} is not before --to {to_text}");
    hawking_query::store::require_store(&args.data).context("--data")?;
    runtime.block_on(replay(&args, from, to, &config))
}

async fn replay(args: &ReplayArgs, from: i64, to: i64, config: &Config) -> anyhow::Result<()> {
    let reattribution = Reattribution::load(&args.data, &config.enricher).await?;
    if args.config.is_none() {
        tracing::warn!(
            "no --config: exporters are not tied to clusters and no pod or service ranges are known; \
             addresses outside the stored history are `external`"
        );
    }
    eprintln!(
        "replay: history of {} clusters ({} intervals, {} NAT translations) over flows from {} to {}",
        reattribution.clusters,
        reattribution.intervals,
        reattribution.translations,
        format_time(from),
        format_time(to)
    );
    let predicate = match &args.predicate {
        None => None,
        Some(p) => Some(parse_predicate(&args.data, p).await?),
    };
    let columns = columns_read(args, predicate.as_ref().map(|(_, expr)| expr));
    let selection = Selection {
        from,
        to,
        predicate: match predicate {
            None => None,
            Some((ctx, expr)) => Some(compile_predicate(&ctx, expr, columns)?),
        },
    };
    let mut stored = 0;
    for hour in selection.hours() {
        stored += OpenHour::open(&args.data, hour)?.rows()?;
    }
    let mut progress = Progress::new(stored, "stored flows read");
    if args.rewrite {
        return rewrite_hours(args, &selection, &reattribution, &mut progress);
    }
    let out = Output::open(args, &config.store.writer)?;
    let changed = stream_replay(
        args,
        &selection,
        columns,
        &reattribution,
        out,
        &mut progress,
    )?;
    if args.diff {
        eprintln!("replay: {changed} endpoints' attribution changed");
    }
    Ok(())
}

/// `--where`, checked where the flag can be named, as an expression over the stored flows'
/// columns (and the session that parsed it).
async fn parse_predicate(
    data: &std::path::Path,
    predicate: &str,
) -> anyhow::Result<(SessionContext, Expr)> {
    let ctx = hawking_query::open_session(data, &Default::default()).await?;
    let at = || format!("--where {predicate:?}");
    // Through the SQL planner first: its errors name the column or function at fault.
    ctx.sql(&format!(
        "SELECT count(*) FROM flows WHERE false AND ({predicate})"
    ))
    .await
    .with_context(at)?;
    let schema = DFSchema::try_from(hawking_schemas::flow_schema().as_ref().clone())?;
    let expr = ctx.parse_sql_expr(predicate, &schema).with_context(at)?;
    Ok((ctx, expr))
}

/// Which stored columns a replay reads: `--rewrite` keeps every column of the rows it does
/// not select, `--diff` compares the stored attribution; otherwise it is replaced, and read
/// only when `--where` selects by it.
fn columns_read(args: &ReplayArgs, predicate: Option<&Expr>) -> Columns {
    if args.rewrite {
        return Columns::All;
    }
    if args.diff {
        return Columns::ToCompare;
    }
    let replaced = attribution::attribution_column_names();
    let selects_by_attribution =
        predicate.is_some_and(|p| p.column_refs().iter().any(|c| replaced.contains(&c.name)));
    match selects_by_attribution {
        true => Columns::All,
        false => Columns::WithoutAttribution,
    }
}

/// `--where` as an expression over the `columns` a replay reads (columns are found by
/// position in a batch, so it is compiled for the very batches it will see).
fn compile_predicate(
    ctx: &SessionContext,
    expr: Expr,
    columns: Columns,
) -> anyhow::Result<std::sync::Arc<dyn datafusion::physical_expr::PhysicalExpr>> {
    let schema = DFSchema::try_from(columns.schema().as_ref().clone())?;
    ctx.create_physical_expr(expr, &schema)
        .context("--where over the stored flows' columns")
}

/// What the reading thread hands on: selected stored rows, and how many stored rows it read
/// since the last message (for progress).
struct Read {
    rows: Option<RecordBatch>,
    examined: u64,
}

/// The next stage of the replay stopped (its own error says why).
#[derive(Debug, thiserror::Error)]
#[error("the next stage of the replay stopped")]
struct Downstream;

/// What the writing thread is handed: rows to write, then `Done`. A channel that closes
/// without `Done` (an error, an interruption upstream) leaves no output file.
enum ToWrite {
    Rows(RecordBatch),
    Done,
}

/// Threads re-attributing batches side by side (attribution is the costly stage of a
/// replay that writes little, `--diff`'s).
const ATTRIBUTING_THREADS: usize = 2;

/// Replays the selection to `out` as a pipeline: one thread reads the hours' files, a few
/// re-attribute (batches dealt round-robin and gathered back in the same order, so the
/// output keeps the read order), one writes; short queues between them, so reading,
/// attribution and encoding overlap. Returns the rows written (`--diff`: endpoints changed).
fn stream_replay(
    args: &ReplayArgs,
    selection: &Selection,
    columns: Columns,
    reattribution: &Reattribution,
    out: Output,
    progress: &mut Progress,
) -> anyhow::Result<u64> {
    use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
    let (to_workers, worker_inputs): (Vec<SyncSender<Read>>, Vec<Receiver<Read>>) =
        (0..ATTRIBUTING_THREADS).map(|_| sync_channel(2)).unzip();
    let (worker_outputs, results): (Vec<SyncSender<anyhow::Result<Read>>>, Vec<_>) =
        (0..ATTRIBUTING_THREADS).map(|_| sync_channel(2)).unzip();
    let (to_write, written) = sync_channel::<ToWrite>(2);
    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> anyhow::Result<()> {
            let mut next = (0..ATTRIBUTING_THREADS).cycle();
            let mut send = |read: Read| {
                let worker = next.next().expect("a cycle");
                to_workers[worker]
                    .send(read)
                    .map_err(|_| anyhow::Error::new(Downstream))
            };
            for hour in selection.hours() {
                if interrupted() {
                    anyhow::bail!(Interrupted);
                }
                let examined = std::cell::Cell::new(0);
                OpenHour::open(&args.data, hour)?.selected(
                    selection,
                    columns,
                    &mut |rows| {
                        let (rows, examined) = (Some(rows), examined.take());
                        send(Read { rows, examined })
                    },
                    &mut |n| examined.set(examined.get() + n),
                )?;
                let (rows, examined) = (None, examined.take());
                send(Read { rows, examined })?;
            }
            Ok(())
        });
        for (input, output) in worker_inputs.into_iter().zip(worker_outputs) {
            scope.spawn(move || {
                for Read { rows, examined } in input {
                    let result = match rows {
                        None => Ok(Read { rows, examined }),
                        Some(rows) => attribute_rows(args, reattribution, &rows)
                            .map(|rows| Read { rows, examined }),
                    };
                    let failed = result.is_err();
                    if output.send(result).is_err() || failed {
                        return;
                    }
                }
            });
        }
        let writer = scope.spawn(move || -> anyhow::Result<()> {
            let mut out = out;
            for message in written {
                match message {
                    ToWrite::Rows(rows) => out.write(&rows)?,
                    ToWrite::Done => return out.finish(),
                }
            }
            // Dropped unfinished: no output file.
            Ok(())
        });
        let gathered = (|| -> anyhow::Result<u64> {
            let mut rows_out = 0u64;
            // In the order the reader dealt them; the first queue found closed and empty
            // is the end (or a worker's failure, already received).
            for worker in (0..ATTRIBUTING_THREADS).cycle() {
                let Ok(result) = results[worker].recv() else {
                    break;
                };
                if interrupted() {
                    anyhow::bail!(Interrupted);
                }
                let Read { rows, examined } = result?;
                progress.advance(examined);
                let Some(batch) = rows else { continue };
                rows_out += batch.num_rows() as u64;
                if to_write.send(ToWrite::Rows(batch)).is_err() {
                    // The writer stopped: its error says why.
                    return Ok(rows_out);
                }
            }
            Ok(rows_out)
        })();
        let finished = match &gathered {
            Ok(_) => to_write.send(ToWrite::Done).is_ok(),
            Err(_) => false,
        };
        drop(to_write);
        // Unblocks a reader or worker still sending when this stage stopped early.
        drop(results);
        let written = writer.join().expect("the writing thread does not panic");
        let read = reader.join().expect("the reading thread does not panic");
        // A stage that stopped because the next one had failed is not the cause.
        match read {
            Err(e) if e.is::<Downstream>() => {}
            other => other?,
        }
        let rows_out = gathered?;
        written?;
        anyhow::ensure!(finished, "the output was not finished");
        progress.finish();
        Ok(rows_out)
    })
}

/// One batch of stored rows re-attributed: the rows with today's attribution, or with
/// `--diff` the endpoints whose attribution changed (none: `None`).
fn attribute_rows(
    args: &ReplayArgs,
    reattribution: &Reattribution,
    rows: &RecordBatch,
) -> anyhow::Result<Option<RecordBatch>> {
    if args.diff {
        let after = reattribution.attribute(rows)?;
        diff::diff(rows, reattribution.history(), &after)
    } else {
        Ok(Some(reattribution.reattribute(rows)?))
    }
}

fn rewrite_hours(
    args: &ReplayArgs,
    selection: &Selection,
    reattribution: &Reattribution,
    progress: &mut Progress,
) -> anyhow::Result<()> {
    let (mut hours, mut replaced, mut changed) = (0u64, 0u64, 0u64);
    for hour in selection.hours() {
        let done = rewrite::rewrite_hour(&args.data, hour, selection, reattribution, &interrupted)?;
        progress.advance(done.flows);
        hours += 1;
        changed += done.changed;
        if done.replaced {
            replaced += 1;
            progress.note(&format!(
                "replay: rewrote hour {}: {} of {} flows re-attributed, {} changed",
                format_time(hour),
                done.selected,
                done.flows,
                done.changed
            ));
        }
    }
    progress.finish();
    eprintln!(
        "replay: {changed} flows' attribution changed; {replaced} of {hours} hour partitions rewritten"
    );
    Ok(())
}

/// Where results go: standard output, or a file that appears only when complete.
struct Output {
    file: Option<(PathBuf, PathBuf)>,
    sink: Sink,
    /// How `--format parquet` encodes: as the store encodes the files it ingests.
    parquet: parquet::file::properties::WriterProperties,
}

enum Sink {
    Table(Vec<RecordBatch>, Box<dyn Write + Send>),
    Csv(Box<arrow::csv::Writer<Box<dyn Write + Send>>>),
    Json(arrow::json::ArrayWriter<Box<dyn Write + Send>>),
    Parquet(Option<ParquetOut>),
    Nothing,
}

impl Output {
    fn open(args: &ReplayArgs, encoding: &hawking_query::WriterOptions) -> anyhow::Result<Output> {
        let file = match &args.out {
            Some(path) => {
                let name = path
                    .file_name()
                    .with_context(|| format!("--out {}: not a file name", path.display()))?;
                let tmp = path.with_file_name(format!(".{}.partial", name.to_string_lossy()));
                Some((path.clone(), tmp))
            }
            None => None,
        };
        let writer = || -> anyhow::Result<Box<dyn Write + Send>> {
            Ok(match &file {
                Some((path, tmp)) => Box::new(std::io::BufWriter::new(
                    std::fs::File::create(tmp)
                        .with_context(|| format!("--out {}", path.display()))?,
                )),
                None => Box::new(std::io::BufWriter::new(std::io::stdout())),
            })
        };
        let sink = match args.format {
            Format::Table => Sink::Table(Vec::new(), writer()?),
            Format::Csv => Sink::Csv(Box::new(
                arrow::csv::WriterBuilder::new()
                    .with_header(true)
                    .build(writer()?),
            )),
            Format::Json => Sink::Json(arrow::json::ArrayWriter::new(writer()?)),
            Format::Parquet => Sink::Parquet(None),
        };
        let parquet = encoding.properties(hawking_query::store::tuning_of(
            hawking_schemas::pipeline::Table::Flows,
        ))?;
        Ok(Output {
            file,
            sink,
            parquet,
        })
    }

    fn write(&mut self, batch: &RecordBatch) -> anyhow::Result<()> {
        let batch = plain_text(batch)?;
        match &mut self.sink {
            Sink::Table(batches, _) => batches.push(batch),
            Sink::Csv(w) => w.write(&batch)?,
            Sink::Json(w) => w.write(&batch)?,
            Sink::Parquet(w) => {
                if w.is_none() {
                    let (path, tmp) = self.file.as_ref().expect("parquet has --out");
                    let f = std::fs::File::create(tmp)
                        .with_context(|| format!("--out {}", path.display()))?;
                    *w = Some(ParquetOut::create(f, batch.schema(), self.parquet.clone())?);
                }
                w.as_mut().expect("opened").write(&batch)?;
            }
            Sink::Nothing => {}
        }
        Ok(())
    }

    fn finish(mut self) -> anyhow::Result<()> {
        match std::mem::replace(&mut self.sink, Sink::Nothing) {
            Sink::Table(batches, mut w) => {
                hawking_query::write_batches(&mut w, &batches, hawking_query::OutputFormat::Table)?;
                w.flush()?;
            }
            Sink::Csv(w) => (*w).into_inner().flush()?,
            Sink::Json(mut w) => {
                w.finish()?;
                w.into_inner().flush()?;
            }
            Sink::Parquet(w) => match w {
                Some(w) => {
                    w.close()?;
                }
                None => {
                    // No rows: still a valid, empty file of the flows schema.
                    let (_, tmp) = self.file.as_ref().expect("parquet has --out");
                    let f = std::fs::File::create(tmp)?;
                    ParquetOut::create(f, hawking_schemas::flow_schema(), self.parquet.clone())?
                        .close()?;
                }
            },
            Sink::Nothing => {}
        }
        if let Some((path, tmp)) = self.file.take() {
            std::fs::rename(&tmp, &path).with_context(|| format!("--out {}", path.display()))?;
        }
        Ok(())
    }

    /// Leaves no output file behind.
    fn abandon(&mut self) {
        self.sink = Sink::Nothing;
        if let Some((_, tmp)) = self.file.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        // An error before finish: no half-written file under the name asked for.
        self.abandon();
    }
}

/// Text columns as plain Utf8 (queries read them as Utf8View), so every format writes them
/// as the store does.
fn plain_text(batch: &RecordBatch) -> anyhow::Result<RecordBatch> {
    use arrow::datatypes::{DataType, Field, Schema};
    if !batch
        .schema()
        .fields()
        .iter()
        .any(|f| f.data_type() == &DataType::Utf8View)
    {
        return Ok(batch.clone());
    }
    let mut fields = Vec::new();
    let mut columns = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        if f.data_type() == &DataType::Utf8View {
            fields.push(Field::new(f.name(), DataType::Utf8, f.is_nullable()));
            columns.push(arrow::compute::cast(c, &DataType::Utf8)?);
        } else {
            fields.push(f.as_ref().clone());
            columns.push(c.clone());
        }
    }
    Ok(RecordBatch::try_new(
        std::sync::Arc::new(Schema::new_with_metadata(
            fields,
            batch.schema().metadata().clone(),
        )),
        columns,
    )?)
}
