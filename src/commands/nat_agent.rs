//! `hawking nat-agent`: the node agent's command line ([`hawking_collector::nat_agent`] does
//! the work), running until SIGINT or SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use hawking_collector::nat_agent::{NatAgentConfig, follow};

#[derive(clap::Args, Debug)]
pub struct NatAgentArgs {
    /// Collector address (`hawking serve`'s NetFlow/IPFIX port).
    #[arg(long)]
    pub collector: SocketAddr,
    /// Network namespace to follow (/run/netns/NAME or /proc/PID/ns/net) [default: the
    /// agent's own, i.e. the node's when it runs on the host network].
    #[arg(long)]
    pub netns: Option<PathBuf>,
    /// IPFIX observation domain of the records.
    #[arg(long, default_value_t = 0)]
    pub observation_domain: u32,
    /// Seconds between template re-sends (UDP loses packets; collectors restart).
    #[arg(long, default_value_t = 30)]
    pub template_interval: u64,
    /// Longest a translation waits before it is sent, in milliseconds.
    #[arg(long, default_value_t = 200)]
    pub max_delay_ms: u64,
    /// Kernel receive buffer for conntrack events, bytes (overruns are counted and logged).
    #[arg(long, default_value_t = 8 << 20)]
    pub recv_buffer: usize,
    /// Seconds between comparisons of the conntrack table with the translations reported
    /// open: those gone without a destroy event (connections older than the agent under
    /// nf_conntrack_events=2, or events lost to overruns) are reported closed. 0: never.
    #[arg(long, default_value_t = 60)]
    pub resync_secs: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: NatAgentArgs) -> anyhow::Result<()> {
    let config = NatAgentConfig {
        collector: args.collector,
        netns: args.netns,
        observation_domain: args.observation_domain,
        template_interval: Duration::from_secs(args.template_interval),
        max_delay: Duration::from_millis(args.max_delay_ms),
        recv_buffer: args.recv_buffer,
        resync: (args.resync_secs > 0).then(|| Duration::from_secs(args.resync_secs)),
    };
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let stats = follow(&config, &STOP)?;
    println!(
        "hawking nat-agent stopped creates={} deletes={} datagrams={} send_errors={}",
        stats.creates, stats.deletes, stats.datagrams, stats.send_errors
    );
    Ok(())
}
