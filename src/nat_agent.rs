//! `hawking nat-agent`: runs on a node, follows the kernel's conntrack events and sends every
//! source-NAT translation (pod address:port → node address:port) to a Hawking collector as
//! IPFIX NAT session events (RFC 8158: natEvent 4/5, NAT44 session create/delete) — the same
//! records NAT gateways export, so one decoder and one `nat_history` serve both.

use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::conntrack::{ConntrackEvent, ConntrackEventKind, ConntrackEvents};
use hawking_collector::export::{
    ExporterClock, PacketBuilder, nat_event_record_len, nat_event_template,
};
use hawking_collector::netflow::wire::Version;
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::nat::{NatEvent, NatEventKind};

/// Template IDs of the IPv4 and IPv6 session records.
const TEMPLATE_V4: u16 = 256;
const TEMPLATE_V6: u16 = 257;
/// Payload budget per datagram: fits a 1500-byte MTU with IP and UDP headers to spare.
const MAX_DATAGRAM: usize = 1400;
/// IPFIX header and set header.
const OVERHEAD: usize = 16 + 4;

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
}

/// What one agent run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentStats {
    pub creates: u64,
    pub deletes: u64,
    pub datagrams: u64,
    pub send_errors: u64,
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::Relaxed);
}

pub fn run(args: NatAgentArgs) -> anyhow::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
    let stats = follow(&args, &STOP)?;
    println!(
        "hawking nat-agent stopped creates={} deletes={} datagrams={} send_errors={}",
        stats.creates, stats.deletes, stats.datagrams, stats.send_errors
    );
    Ok(())
}

/// The translation a source-NATed connection's tuples describe: inside = the original
/// source, outside = where replies go (the reply tuple's destination), remote = who replies.
pub fn translation(e: &ConntrackEvent, at: i64) -> NatEvent {
    NatEvent {
        at,
        kind: Some(match e.kind {
            ConntrackEventKind::New => NatEventKind::Create,
            ConntrackEventKind::Destroy => NatEventKind::Delete,
        }),
        exporter: 0,
        observation_domain: 0,
        protocol: e.protocol,
        inside_ip: ip_to_u128(e.orig_src),
        inside_port: e.orig_src_port,
        outside_ip: ip_to_u128(e.reply_dst),
        outside_port: e.reply_dst_port,
        remote_ip: ip_to_u128(e.reply_src),
        remote_port: e.reply_src_port,
    }
}

/// Follows conntrack until `stop`, sending translations as they come.
pub fn follow(args: &NatAgentArgs, stop: &AtomicBool) -> anyhow::Result<AgentStats> {
    let mut events = ConntrackEvents::subscribe(args.netns.as_deref(), args.recv_buffer)
        .context("subscribing to conntrack events (needs CAP_NET_ADMIN)")?;
    let bind: SocketAddr = if args.collector.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).context("binding the export socket")?;
    socket
        .connect(args.collector)
        .with_context(|| format!("collector {}", args.collector))?;
    let mut out = Exporter {
        socket,
        domain: args.observation_domain,
        sequence: 0,
        boot_ms: unix_ms(),
        template_interval: Duration::from_secs(args.template_interval.max(1)),
        templates_sent: None,
        stats: AgentStats::default(),
    };

    // Connections that exist already: their translations are in force now.
    let mut batch = Vec::new();
    events
        .dump_existing(&mut batch)
        .context("listing existing connections")?;
    let mut pending: Vec<NatEvent> = Vec::new();
    let now = unix_micros();
    pending.extend(
        batch
            .iter()
            .filter(|e| e.is_snat())
            .map(|e| translation(e, now)),
    );
    tracing::info!(
        existing = pending.len(),
        collector = %args.collector,
        "following conntrack"
    );
    if args.netns.is_none()
        && std::fs::read_to_string("/proc/sys/net/netfilter/nf_conntrack_events")
            .is_ok_and(|v| v.trim() == "2")
    {
        // Mode 2 reports the end only of connections created while someone listened.
        tracing::info!(
            "nf_conntrack_events = 2: connections older than the agent get no destroy event; \
             their translations end when their 5-tuple is used again (set it to 1 to report them)"
        );
    }
    let max_delay = Duration::from_millis(args.max_delay_ms);
    let mut oldest: Option<Instant> = (!pending.is_empty()).then(Instant::now);
    let (mut overruns, mut malformed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        match events.recv(Duration::from_millis(100), &mut batch) {
            Ok(_) => {}
            Err(e) => return Err(e).context("reading conntrack events"),
        }
        let now = unix_micros();
        let before = pending.len();
        pending.extend(
            batch
                .iter()
                .filter(|e| e.is_snat())
                .map(|e| translation(e, now)),
        );
        if pending.len() > before {
            oldest.get_or_insert_with(Instant::now);
        }
        if oldest.is_some_and(|t| t.elapsed() >= max_delay) {
            out.send(&pending);
            pending.clear();
            oldest = None;
        }
        if events.overruns() != overruns || events.malformed() != malformed {
            let lost = events.overruns() != overruns;
            (overruns, malformed) = (events.overruns(), events.malformed());
            tracing::warn!(
                overruns,
                malformed,
                "conntrack events lost (kernel buffer overruns) or unreadable"
            );
            if lost {
                // Creates may be among the lost events: list what exists and report it again
                // (the collector ignores a create that repeats an open translation).
                batch.clear();
                events
                    .dump_existing(&mut batch)
                    .context("listing connections after an overrun")?;
                let now = unix_micros();
                pending.extend(
                    batch
                        .iter()
                        .filter(|e| e.is_snat())
                        .map(|e| translation(e, now)),
                );
                oldest.get_or_insert_with(Instant::now);
            }
        }
    }
    out.send(&pending);
    Ok(out.stats)
}

struct Exporter {
    socket: UdpSocket,
    domain: u32,
    /// IPFIX sequence number: data records sent so far.
    sequence: u32,
    boot_ms: i64,
    template_interval: Duration,
    templates_sent: Option<Instant>,
    stats: AgentStats,
}

impl Exporter {
    /// Sends `events` in as few datagrams as fit, IPv4 and IPv6 in their own sets, with the
    /// templates in front when they are due.
    fn send(&mut self, events: &[NatEvent]) {
        for ipv6 in [false, true] {
            let family: Vec<NatEvent> = events
                .iter()
                .filter(|e| is_v6(e) == ipv6)
                .copied()
                .collect();
            let per_datagram = (MAX_DATAGRAM - OVERHEAD - 64) / nat_event_record_len(ipv6);
            for chunk in family.chunks(per_datagram.max(1)) {
                self.send_chunk(chunk, ipv6);
            }
        }
    }

    fn send_chunk(&mut self, events: &[NatEvent], ipv6: bool) {
        let clock = ExporterClock {
            boot_ms: self.boot_ms,
            export_ms: unix_ms(),
        };
        let mut b = PacketBuilder::new(Version::Ipfix, clock, self.sequence, self.domain);
        if self
            .templates_sent
            .is_none_or(|t| t.elapsed() >= self.template_interval)
        {
            b.template(&nat_event_template(TEMPLATE_V4, false))
                .template(&nat_event_template(TEMPLATE_V6, true));
            self.templates_sent = Some(Instant::now());
        }
        let t = nat_event_template(if ipv6 { TEMPLATE_V6 } else { TEMPLATE_V4 }, ipv6);
        b.nat_events(&t, events);
        match self.socket.send(&b.finish()) {
            Ok(_) => self.stats.datagrams += 1,
            Err(e) => {
                // The collector may be restarting: count it and go on (UDP has no backlog).
                self.stats.send_errors += 1;
                tracing::warn!(error = %e, lost = events.len(), "sending NAT events failed");
            }
        }
        self.sequence = self.sequence.wrapping_add(events.len() as u32);
        for e in events {
            match e.kind {
                Some(NatEventKind::Create) => self.stats.creates += 1,
                _ => self.stats.deletes += 1,
            }
        }
    }
}

fn is_v6(e: &NatEvent) -> bool {
    hawking_schemas::ip::as_v4(e.inside_ip).is_none()
        || hawking_schemas::ip::as_v4(e.outside_ip).is_none()
}

fn unix_micros() -> i64 {
    crate::sink::unix_micros()
}

fn unix_ms() -> i64 {
    unix_micros() / 1000
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    #[test]
    fn a_masqueraded_connection_maps_the_node_port_back_to_the_pod() {
        // Pod 10.244.1.7:40000 → 93.184.216.34:443, masqueraded to node 192.168.5.10:61000.
        let v4 = |a, b, c, d| IpAddr::V4(Ipv4Addr::new(a, b, c, d));
        let e = ConntrackEvent {
            kind: ConntrackEventKind::New,
            protocol: 6,
            orig_src: v4(10, 244, 1, 7),
            orig_dst: v4(93, 184, 216, 34),
            orig_src_port: 40000,
            orig_dst_port: 443,
            reply_src: v4(93, 184, 216, 34),
            reply_dst: v4(192, 168, 5, 10),
            reply_src_port: 443,
            reply_dst_port: 61000,
            status: 1 << 4,
            id: Some(7),
            zone: None,
        };
        let t = translation(&e, 5);
        assert_eq!(t.kind, Some(NatEventKind::Create));
        assert_eq!(
            (t.inside_ip, t.inside_port),
            (ip_to_u128(v4(10, 244, 1, 7)), 40000)
        );
        assert_eq!(
            (t.outside_ip, t.outside_port),
            (ip_to_u128(v4(192, 168, 5, 10)), 61000)
        );
        assert_eq!(
            (t.remote_ip, t.remote_port),
            (ip_to_u128(v4(93, 184, 216, 34)), 443)
        );
        assert!(!is_v6(&t));
    }
}
