//! `hawking`: flow attribution collector. Subcommands: `serve` runs the pipeline, `sql`
//! queries the store, `whois` answers who held an address, `nat-agent` reports a node's
//! source-NAT translations, `flowgen` sends synthetic NetFlow/IPFIX load.

mod config;
mod flowgen;
mod history_cmd;
mod history_state;
mod metrics_http;
mod nat_agent;
mod pipeline;
mod session;
mod sink;
mod sql;
mod timearg;
mod whois;
mod whois_table;

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
    /// Run SQL over the store (tables: flows, flows_by_workload, ip_history, history_gaps,
    /// nat_history).
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
    /// On a node: follow conntrack and send every source-NAT translation to a collector as
    /// IPFIX NAT session events (RFC 8158), so flows seen outside the node map back to pods.
    NatAgent(nat_agent::NatAgentArgs),
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
    /// A port the address used then: tells a host-network pod from its node, and makes a NAT's
    /// outside address:port answer with the pod behind the translation then.
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
    /// PostgreSQL-wire endpoint address (needs users in the [pg] config section)
    /// [default: 127.0.0.1:5433]
    #[arg(long)]
    pg: Option<SocketAddr>,
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
            // The chain of causes, without a backtrace: these are messages for users.
            eprintln!("error: {}", sql::error_text(&e));
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
        Command::NatAgent(args) => nat_agent::run(args),
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
    if let Some(addr) = args.pg {
        anyhow::ensure!(
            config.pg.enabled(),
            "--pg {addr}: the PostgreSQL endpoint needs at least one user in the [pg] section \
             of --config (there are no anonymous logins)"
        );
        config.pg.listen = addr;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    // Queries get their own threads: a heavy one then competes for CPU with the rest like
    // any process would, but cannot hold up the cluster watches and the metrics endpoint on
    // the main runtime. Deep plans recurse, hence the larger stacks.
    let pg_runtime = if config.pg.enabled() {
        Some(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("hawking-pg")
                .thread_stack_size(16 << 20)
                .enable_all()
                .build()
                .context("starting the query runtime")?,
        )
    } else {
        None
    };
    let pg_handle = pg_runtime.as_ref().map(|r| r.handle().clone());
    let result = runtime.block_on(async move {
        let registry = prometheus::Registry::new();
        let pipeline = pipeline::Pipeline::start(&config, &registry).await?;
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (metrics_addr, metrics_task) =
            metrics_http::serve(config.metrics.listen, registry.clone(), async {
                let _ = stop_rx.await;
            })
            .await?;
        let (pg_stop_tx, pg_stop_rx) = tokio::sync::oneshot::channel::<()>();
        let pg = match pg_handle {
            Some(handle) => {
                let (addr, task) = start_pg(&handle, &config, &registry, async {
                    let _ = pg_stop_rx.await;
                })
                .await?;
                Some((addr, task))
            }
            None => None,
        };
        // Machine-readable start-up line for scripts and tests (ports may be 0 = any).
        println!(
            "hawking serving netflow={} metrics={} pg={} data={}",
            pipeline.netflow_addr,
            metrics_addr,
            pg.as_ref()
                .map_or_else(|| "off".to_string(), |(addr, _)| addr.to_string()),
            config.data_dir().display()
        );
        wait_for_signal().await?;
        tracing::info!("shutting down: draining and committing accepted flows");
        // No new queries from here; running ones get the grace period while ingest drains.
        let _ = pg_stop_tx.send(());
        let (listener, sink) = tokio::task::spawn_blocking(move || pipeline.stop()).await??;
        if let Some((_, task)) = pg {
            let _ = task.await;
        }
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
    });
    if let Some(pg_runtime) = pg_runtime {
        // Connections were closed by the endpoint's shutdown; nothing left to wait for.
        pg_runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    }
    result
}

/// Binds the PostgreSQL-wire endpoint on the query runtime and serves it there until
/// `shutdown`. Every connection gets a fresh session from [`session::open_session`], the
/// same tables, views and functions `hawking sql` has.
async fn start_pg(
    handle: &tokio::runtime::Handle,
    config: &Config,
    registry: &prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let data = config.data_dir();
    let factory: hawking_query::pg::SessionFactory = std::sync::Arc::new(move |options| {
        let data = data.clone();
        Box::pin(async move {
            session::open_session(&data, &options)
                .await
                .map_err(Into::into)
        })
    });
    let (pg_config, options, registry) =
        (config.pg.clone(), config.query.clone(), registry.clone());
    let server = handle
        .spawn(async move {
            hawking_query::pg::PgServer::bind(&pg_config, options, factory, &registry).await
        })
        .await??;
    let addr = server.local_addr();
    Ok((addr, handle.spawn(server.run(shutdown))))
}

async fn wait_for_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r?,
        _ = term.recv() => {}
    }
    Ok(())
}
