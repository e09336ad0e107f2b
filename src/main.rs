//! `hawking`: flow attribution collector. Subcommands: `serve` runs the pipeline, `sql`
//! queries the store, `flowgen` sends synthetic NetFlow/IPFIX load.

mod config;
mod flowgen;
mod history_cmd;
mod history_state;
mod metrics_http;
mod pipeline;
mod session;
mod sink;
mod sql;
mod timearg;
mod whois;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use hawking_query::OutputFormat;

use crate::config::Config;

#[derive(Parser)]
#[command(
    name = "hawking",
    version,
    about = "Flow attribution for Kubernetes: NetFlow/IPFIX in, workloads attributed, Parquet + SQL out"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Receive flows and store them until SIGINT/SIGTERM (then commit everything accepted).
    Serve(ServeArgs),
    /// Run SQL over the store (tables: flows, ip_history, history_gaps).
    Sql(SqlArgs),
    /// Who held an address at a time, from the stored history.
    Whois(WhoisArgs),
    /// Address history: import kubectl recordings.
    History {
        #[command(subcommand)]
        command: HistoryCommand,
    },
    /// Send synthetic NetFlow v5/v9/IPFIX packets (load generation and benchmarks).
    Flowgen(flowgen::FlowgenArgs),
}

#[derive(Subcommand)]
enum HistoryCommand {
    /// Build history from a recording: `kubectl get pods,nodes,services -A -o json` snapshots
    /// or `kubectl get pods -A -w -o json --output-watch-events` streams.
    Import {
        /// The recording.
        file: PathBuf,
        /// The cluster it records.
        #[arg(long)]
        cluster: String,
        /// Store directory.
        #[arg(long, default_value = "./data")]
        data: PathBuf,
    },
}

#[derive(clap::Args)]
struct WhoisArgs {
    /// The address.
    ip: String,
    /// The time: RFC 3339 (2026-11-20T10:05:00Z), "2026-11-20 10:05:00" (UTC) or "now".
    #[arg(long)]
    at: String,
    /// Only this cluster [default: every cluster in the history].
    #[arg(long)]
    cluster: Option<String>,
    /// Also list every interval of the address, before and after.
    #[arg(long)]
    around: bool,
    /// A port the address used then (tells a host-network pod from its node).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Protocol of that port: tcp, udp or sctp.
    #[arg(long, default_value = "tcp")]
    protocol: String,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Store directory.
    #[arg(long, default_value = "./data")]
    data: PathBuf,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file; flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address for NetFlow v5/v9 and IPFIX [default: 0.0.0.0:2055]
    #[arg(long)]
    netflow: Option<SocketAddr>,
    /// Store directory [default: ./data]
    #[arg(long)]
    data: Option<PathBuf>,
    /// Prometheus endpoint address [default: 127.0.0.1:9464]
    #[arg(long)]
    metrics: Option<SocketAddr>,
    /// Seconds between commits to the store [default: 5]
    #[arg(long)]
    flush_interval: Option<f64>,
}

#[derive(clap::Args)]
struct SqlArgs {
    /// The query; without one, an interactive prompt opens.
    query: Option<String>,
    /// Store directory.
    #[arg(long, default_value = "./data")]
    data: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Format {
    Table,
    Csv,
    Json,
}

impl From<Format> for OutputFormat {
    fn from(f: Format) -> Self {
        match f {
            Format::Table => OutputFormat::Table,
            Format::Csv => OutputFormat::Csv,
            Format::Json => OutputFormat::Json,
        }
    }
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of causes, without a backtrace: these are messages for users. Causes
            // whose text their wrapper already includes are not repeated.
            let mut message = String::new();
            for cause in e.chain().map(|c| c.to_string()) {
                if !message.contains(&cause) {
                    if !message.is_empty() {
                        message.push_str(": ");
                    }
                    message.push_str(&cause);
                }
            }
            eprintln!("error: {message}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HAWKING_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Serve(args) => serve(args),
        Command::Sql(args) => sql::run(
            args.query.as_deref(),
            &args.data,
            args.format.into(),
            &Default::default(),
        ),
        Command::Flowgen(args) => flowgen::run(args),
        Command::History {
            command:
                HistoryCommand::Import {
                    file,
                    cluster,
                    data,
                },
        } => history_cmd::import(&file, &cluster, &data),
        Command::Whois(a) => whois::run(whois::WhoisArgs {
            ip: &a.ip,
            at: &a.at,
            cluster: a.cluster.as_deref(),
            around: a.around,
            port: a.port,
            protocol: match a.protocol.to_ascii_lowercase().as_str() {
                "tcp" => 6,
                "udp" => 17,
                "sctp" => 132,
                other => anyhow::bail!("unknown protocol {other}: use tcp, udp or sctp"),
            },
            json: a.json,
            data: &a.data,
        }),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(addr) = args.netflow {
        config.netflow.listen = addr;
    }
    if let Some(dir) = args.data {
        config.data_dir = Some(dir);
    }
    if let Some(addr) = args.metrics {
        config.metrics.listen = addr;
    }
    if let Some(secs) = args.flush_interval {
        config.store.flush_interval_secs = secs;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let pipeline = pipeline::Pipeline::start(&config, &registry).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (metrics_addr, metrics_task) =
            metrics_http::serve(config.metrics.listen, registry.clone(), async {
                let _ = stop_rx.await;
            })
            .await?;
        // Machine-readable start-up line for scripts and tests (ports may be 0 = any).
        println!(
            "hawking serving netflow={} metrics={} data={}",
            pipeline.netflow_addr,
            metrics_addr,
            config.data_dir().display()
        );
        wait_for_signal().await?;
        tracing::info!("shutting down: draining and committing accepted flows");
        let (listener, sink) = tokio::task::spawn_blocking(move || pipeline.stop()).await??;
        let _ = stop_tx.send(());
        let _ = metrics_task.await;
        tracing::info!(
            packets = listener.packets,
            flows = listener.flows,
            rows_committed = sink.rows,
            files = sink.files,
            "stopped"
        );
        println!(
            "hawking stopped packets={} flows={} rows_committed={}",
            listener.packets, listener.flows, sink.rows
        );
        Ok(())
    })
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
