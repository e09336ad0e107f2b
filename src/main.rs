//! `hawking`: flow attribution collector. One subcommand per module of [`commands`]: `serve`
//! runs the pipeline ([`pipeline`]), `sql` queries the store, `whois` answers who held an
//! address, `store` shows, compacts and prunes the store, `history import` reads kubectl recordings, `nat-agent` reports a node's
//! source-NAT translations, `flowgen` sends synthetic NetFlow/IPFIX load.

mod commands;
mod config;
mod metrics_http;
mod pipeline;

use clap::{Parser, Subcommand};

use crate::commands::{flowgen, history, nat_agent, replay, serve, sql, store, whois};

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
    Serve(serve::ServeArgs),
    /// Run SQL over the store (tables: flows, flows_by_workload, ip_history, history_gaps,
    /// nat_history).
    Sql(sql::SqlArgs),
    /// Who held an address at a time, from the stored history.
    Whois(whois::WhoisArgs),
    /// Re-attribute stored flows with the history as it is now: print them, show what
    /// changed (--diff), or rewrite the stored attribution (--rewrite).
    Replay(replay::ReplayArgs),
    /// The store's upkeep: stats per hour, compaction, retention.
    Store {
        #[command(subcommand)]
        command: store::StoreCommand,
    },
    /// Address history: import kubectl recordings.
    History {
        #[command(subcommand)]
        command: history::HistoryCommand,
    },
    /// Send synthetic NetFlow v5/v9/IPFIX packets (load generation and benchmarks).
    ///
    /// The traffic: each exporter (its own socket and observation domain) announces one
    /// IPv4 flow template (v9: FIRST/LAST_SWITCHED uptimes; IPFIX: flowStart/EndMilliseconds)
    /// every --template-every packets and sends data packets of --records-per-packet records.
    /// Every record is drawn afresh before each send: the source one of 4,096 cluster hosts
    /// in 10.0.0.0/12 (10.0.0.0 | i × 251 mod 0xfffff), the destination another cluster host
    /// (half the flows) or one of 20,000 remote addresses; source port 32768–60767;
    /// destination port one of 443, 80, 53, 8080, 5432, 6443, 9090, 3306, 6379, 123; TCP
    /// three times in four, else UDP; 40–100,039 bytes and 1–100 packets; ending up to 30 s
    /// before the exporter clock and lasting up to 60 s. The exporter clock follows the wall
    /// clock (--clock-start, --clock-speed) and stamps every header. Records are rewritten
    /// in place in pre-encoded packets, so nothing repeats and encoding costs little;
    /// --repeat re-sends the encoded pool unchanged instead (the older load).
    Flowgen(flowgen::FlowgenArgs),
    /// On a node: follow conntrack and send every source-NAT translation to a collector as
    /// IPFIX NAT session events (RFC 8158), so flows seen outside the node map back to pods.
    NatAgent(nat_agent::NatAgentArgs),
}

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) if e.is::<replay::Interrupted>() => {
            eprintln!("interrupted");
            std::process::ExitCode::from(130)
        }
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
    match Cli::parse().command {
        Command::Serve(args) => serve::run(args),
        Command::Sql(args) => sql::command(args),
        Command::Whois(args) => whois::run(args),
        Command::Replay(args) => replay::run(args),
        Command::Store { command } => store::run(command),
        Command::History { command } => history::run(command),
        Command::Flowgen(args) => flowgen::run(args),
        Command::NatAgent(args) => nat_agent::run(args),
    }
}
