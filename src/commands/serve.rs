//! `hawking serve`: the pipeline ([`crate::pipeline`]), the Prometheus endpoint and the
//! PostgreSQL-wire endpoint, until SIGINT or SIGTERM; then every accepted flow is committed.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use hawking_collector::source::flow_file::{FlowFileFormat, FlowFileSourceConfig};
use hawking_collector::source::hubble_grpc::HubbleGrpcSourceConfig;
use hawking_schemas::telemetry::Telemetry;

use crate::config::{Config, Role};
use crate::metrics_http;
use crate::pipeline::Pipeline;

#[derive(clap::Args)]
pub struct ServeArgs {
    /// TOML configuration file; flags below override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// UDP address for NetFlow v5/v9 and IPFIX [default: 0.0.0.0:2055]
    #[arg(long)]
    netflow: Option<SocketAddr>,
    /// Also accept IPFIX over TCP on this address, e.g. 0.0.0.0:4739 (as NetObserv's eBPF
    /// agent exports) [default: off]
    #[arg(long, value_name = "ADDR")]
    listen_tcp: Option<SocketAddr>,
    /// Store directory, or `s3://bucket/prefix` for an S3-compatible object store
    /// [default: ./data]
    #[arg(long)]
    data: Option<String>,
    /// This machine's state and spools when the store is on an object store
    /// [default: ./hawking-local]
    #[arg(long, value_name = "DIR")]
    local_dir: Option<PathBuf>,
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
    /// Also meter the packets of this interface into flows (needs CAP_NET_RAW); see the
    /// [capture] config section for timeouts and the exporter address.
    #[arg(long, value_name = "IFACE")]
    capture: Option<String>,
    /// With --capture: a BPF filter as tcpdump takes it, e.g. "not port 2055".
    #[arg(long, value_name = "BPF", requires = "capture")]
    capture_filter: Option<String>,
    /// Also read Cilium Hubble flows (JSON lines of `hubble observe -o json` or of Hubble's
    /// exporter) from this file, followed as it grows and across rotation; `-` reads stdin.
    /// Repeatable; see [[flow_files]] in the config for the exporter address.
    #[arg(long, value_name = "PATH")]
    hubble_file: Vec<PathBuf>,
    /// Also read NetObserv flow records (flowlogs-pipeline's JSON lines) from this file, as
    /// --hubble-file does.
    #[arg(long, value_name = "PATH")]
    netobserv_file: Vec<PathBuf>,
    /// Also read goflow2's flows (its `-format=json` or `-format=text` lines, as its file
    /// transport writes them) from this file, as --hubble-file does; each flow's exporter
    /// is the device goflow2 names.
    #[arg(long, value_name = "PATH")]
    goflow2_file: Vec<PathBuf>,
    /// Also follow the flows of this Hubble server over its Observer gRPC API, e.g.
    /// http://hubble-relay.kube-system:80 (reconnects after a break and resumes from the
    /// last flow). Repeatable; see [[hubble_grpc]] in the config.
    #[arg(long, value_name = "URL")]
    hubble_grpc: Vec<String>,
    /// What this process does: `all` (default: receive, attribute, store), `collector`
    /// (receive and publish raw flows to [roles] topic) or `enricher` (consume them in
    /// [roles] group_id, attribute, store). See [roles] in the config.
    #[arg(long, value_enum)]
    role: Option<Role>,
}

pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::load(path)?,
        None => Config::default(),
    };
    if let Some(role) = args.role {
        config.roles.role = role;
    }
    if let Some(addr) = args.netflow {
        config.netflow.listen = addr;
    }
    if let Some(addr) = args.listen_tcp {
        config.netflow.tcp_listen = Some(addr);
    }
    if let Some(dir) = args.data {
        config.data_dir = Some(dir);
    }
    if let Some(dir) = args.local_dir {
        config.local_dir = Some(dir);
    }
    if let Some(interface) = args.capture {
        config.capture.interface = Some(interface);
    }
    if let Some(filter) = args.capture_filter {
        config.capture.filter = Some(filter);
    }
    for (format, paths) in [
        (FlowFileFormat::Hubble, args.hubble_file),
        (FlowFileFormat::Netobserv, args.netobserv_file),
        (FlowFileFormat::Goflow2, args.goflow2_file),
    ] {
        config.flow_files.extend(
            paths
                .into_iter()
                .map(|path| FlowFileSourceConfig::new(format, path)),
        );
    }
    config.hubble_grpc.extend(
        args.hubble_grpc
            .into_iter()
            .map(HubbleGrpcSourceConfig::new),
    );
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
        let telemetry = Telemetry::new(prometheus::Registry::new())?;
        let registry = telemetry.registry().clone();
        let pipeline = Pipeline::start(&config, &telemetry).await?;
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
            "hawking serving netflow={} netflow_tcp={} metrics={} pg={} data={}",
            pipeline
                .netflow_addr
                .map_or_else(|| "off".to_string(), |addr| addr.to_string()),
            pipeline
                .netflow_tcp_addr
                .map_or_else(|| "off".to_string(), |addr| addr.to_string()),
            metrics_addr,
            pg.as_ref()
                .map_or_else(|| "off".to_string(), |(addr, _)| addr.to_string()),
            config.data_location()
        );
        wait_for_signal().await?;
        tracing::info!("shutting down: draining and committing accepted flows");
        // No new queries from here; running ones get the grace period while ingest drains.
        let _ = pg_stop_tx.send(());
        let totals = tokio::task::spawn_blocking(move || pipeline.stop()).await??;
        if let Some((_, task)) = pg {
            let _ = task.await;
        }
        let _ = stop_tx.send(());
        let _ = metrics_task.await;
        tracing::info!(
            packets = totals.messages,
            flows = totals.flows,
            rows_committed = totals.stored.flows,
            files = totals.stored.units,
            "stopped"
        );
        println!(
            "hawking stopped packets={} flows={} rows_committed={}",
            totals.messages, totals.flows, totals.stored.flows
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
/// `shutdown`. Every connection gets a fresh session from [`hawking_query::open_session`],
/// the same tables, views and functions `hawking sql` has.
async fn start_pg(
    handle: &tokio::runtime::Handle,
    config: &Config,
    registry: &prometheus::Registry,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let data = config.store_root()?;
    let factory: hawking_query::pg::SessionFactory = std::sync::Arc::new(move |options| {
        let data = data.clone();
        Box::pin(async move {
            hawking_query::open_session(&data, &options)
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
