//! The node agent (`hawking nat-agent`): follows the kernel's conntrack events on a node and
//! sends every source-NAT translation (pod address:port → node address:port) to a Hawking
//! collector as IPFIX NAT session events (RFC 8158: natEvent 4/5, NAT44 session
//! create/delete) — the same records NAT gateways export, so one decoder and one
//! `nat_history` serve both.

use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::nat::{NatEvent, NatEventKind};
use hawking_schemas::protocol::has_ports;
use hawking_schemas::time::now_micros;

use crate::conntrack::{ConntrackError, ConntrackEvent, ConntrackEventKind, ConntrackEvents};
use crate::decode::netflow::wire::Version;
use crate::export::{ExporterClock, PacketBuilder, nat_event_record_len, nat_event_template};

/// Template IDs of the IPv4 and IPv6 session records.
const TEMPLATE_V4: u16 = 256;
const TEMPLATE_V6: u16 = 257;
/// Payload budget per datagram: fits a 1500-byte MTU with IP and UDP headers to spare.
const MAX_DATAGRAM: usize = 1400;
/// IPFIX header and set header.
const OVERHEAD: usize = 16 + 4;

/// What the agent follows and where it reports.
#[derive(Clone, Debug)]
pub struct NatAgentConfig {
    /// Collector address (`hawking serve`'s NetFlow/IPFIX port).
    pub collector: SocketAddr,
    /// Network namespace to follow (/run/netns/NAME or /proc/PID/ns/net); `None`: the
    /// agent's own, i.e. the node's when it runs on the host network.
    pub netns: Option<PathBuf>,
    /// IPFIX observation domain of the records.
    pub observation_domain: u32,
    /// Between template re-sends (UDP loses packets; collectors restart).
    pub template_interval: Duration,
    /// Longest a translation waits before it is sent.
    pub max_delay: Duration,
    /// Kernel receive buffer for conntrack events, bytes (overruns are counted and logged).
    pub recv_buffer: usize,
    /// Between comparisons of the conntrack table with the translations reported open:
    /// those gone without a destroy event (connections older than the agent under
    /// nf_conntrack_events=2, or events lost to overruns) are reported closed. `None`: never.
    pub resync: Option<Duration>,
}

#[derive(Debug, thiserror::Error)]
pub enum NatAgentError {
    #[error("subscribing to conntrack events (needs CAP_NET_ADMIN): {0}")]
    Subscribe(#[source] ConntrackError),
    #[error("reading conntrack events: {0}")]
    Read(#[source] ConntrackError),
    #[error("listing the conntrack table: {0}")]
    List(#[source] ConntrackError),
    #[error("binding the export socket: {0}")]
    Bind(#[source] std::io::Error),
    #[error("collector {collector}: {source}")]
    Connect {
        collector: SocketAddr,
        source: std::io::Error,
    },
}

/// A translation as the agent reported it: everything but its time and kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Session {
    protocol: u8,
    inside: (u128, u16),
    outside: (u128, u16),
    remote: (u128, u16),
}

impl Session {
    fn of(e: &NatEvent) -> Session {
        Session {
            protocol: e.protocol,
            inside: (e.inside_ip, e.inside_port),
            outside: (e.outside_ip, e.outside_port),
            remote: (e.remote_ip, e.remote_port),
        }
    }
}

/// The translations reported open, so that the conntrack table can be compared with them.
#[derive(Debug, Default)]
struct OpenSessions(HashSet<Session>);

impl OpenSessions {
    /// Records what an event reports.
    fn note(&mut self, e: &NatEvent) {
        match e.kind {
            Some(NatEventKind::Create) => {
                self.0.insert(Session::of(e));
            }
            _ => {
                self.0.remove(&Session::of(e));
            }
        }
    }

    /// Given the translations in the table now (as creates at `now`), the events that make
    /// the reported state match it: creates for those never reported, deletes (at `now`, the
    /// latest they can have ended) for those gone.
    fn reconcile(&mut self, present: &[NatEvent], now: i64) -> Vec<NatEvent> {
        let now_open: HashSet<Session> = present.iter().map(Session::of).collect();
        let mut out: Vec<NatEvent> = present
            .iter()
            .filter(|e| !self.0.contains(&Session::of(e)))
            .copied()
            .collect();
        for gone in self.0.difference(&now_open) {
            out.push(NatEvent {
                at: now,
                kind: Some(NatEventKind::Delete),
                protocol: gone.protocol,
                inside_ip: gone.inside.0,
                inside_port: gone.inside.1,
                outside_ip: gone.outside.0,
                outside_port: gone.outside.1,
                remote_ip: gone.remote.0,
                remote_port: gone.remote.1,
                ..Default::default()
            });
        }
        for e in &out {
            self.note(e);
        }
        out
    }
}

/// What one agent run did.
#[derive(Clone, Copy, Debug, Default)]
pub struct AgentStats {
    pub creates: u64,
    pub deletes: u64,
    pub datagrams: u64,
    pub send_errors: u64,
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
pub fn follow(args: &NatAgentConfig, stop: &AtomicBool) -> Result<AgentStats, NatAgentError> {
    let mut events = ConntrackEvents::subscribe(args.netns.as_deref(), args.recv_buffer)
        .map_err(NatAgentError::Subscribe)?;
    let bind = if args.collector.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let socket = UdpSocket::bind(bind).map_err(NatAgentError::Bind)?;
    socket
        .connect(args.collector)
        .map_err(|source| NatAgentError::Connect {
            collector: args.collector,
            source,
        })?;
    let mut out = Exporter {
        socket,
        domain: args.observation_domain,
        sequence: 0,
        boot_ms: unix_ms(),
        template_interval: args.template_interval.max(Duration::from_secs(1)),
        templates_sent: None,
        stats: AgentStats::default(),
    };

    // Connections that exist already: their translations are in force now.
    let mut batch = Vec::new();
    let mut open = OpenSessions::default();
    let mut pending: Vec<NatEvent> = table_now(&events, &mut batch)?;
    for e in &pending {
        open.note(e);
    }
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
    let max_delay = args.max_delay;
    let resync = args.resync;
    let mut synced = Instant::now();
    let mut oldest: Option<Instant> = (!pending.is_empty()).then(Instant::now);
    let (mut overruns, mut malformed) = (0, 0);
    while !stop.load(Ordering::Relaxed) {
        batch.clear();
        match events.recv(Duration::from_millis(100), &mut batch) {
            Ok(_) => {}
            Err(e) => return Err(NatAgentError::Read(e)),
        }
        let now = now_micros();
        let before = pending.len();
        pending.extend(
            batch
                .iter()
                .filter(|e| reportable(e))
                .map(|e| translation(e, now)),
        );
        for e in &pending[before..] {
            open.note(e);
        }
        let mut resync_now = resync.is_some_and(|every| synced.elapsed() >= every);
        if events.overruns() != overruns || events.malformed() != malformed {
            let lost = events.overruns() != overruns;
            (overruns, malformed) = (events.overruns(), events.malformed());
            tracing::warn!(
                overruns,
                malformed,
                "conntrack events lost (kernel buffer overruns) or unreadable"
            );
            // Creates and destroys may be among the lost events.
            resync_now |= lost;
        }
        if resync_now {
            let present = table_now(&events, &mut batch)?;
            pending.extend(open.reconcile(&present, now_micros()));
            synced = Instant::now();
        }
        if pending.len() > before {
            oldest.get_or_insert_with(Instant::now);
        }
        if oldest.is_some_and(|t| t.elapsed() >= max_delay) {
            out.send(&pending);
            pending.clear();
            oldest = None;
        }
        // A quiet node still says it is alive: the collector tells a NAT with nothing to
        // report from one whose reports are lost, and stops trusting the second.
        out.send_templates_if_due();
    }
    out.send(&pending);
    Ok(out.stats)
}

/// A source-NATed connection of a protocol with ports: only those map an outside port back
/// to one inside address (the collector ignores the rest anyway).
fn reportable(e: &ConntrackEvent) -> bool {
    e.is_snat() && has_ports(e.protocol)
}

/// The source-NAT translations in the conntrack table now, as creates.
fn table_now(
    events: &ConntrackEvents,
    scratch: &mut Vec<ConntrackEvent>,
) -> Result<Vec<NatEvent>, NatAgentError> {
    scratch.clear();
    events.dump_existing(scratch).map_err(NatAgentError::List)?;
    let now = now_micros();
    Ok(scratch
        .iter()
        .filter(|e| reportable(e))
        .map(|e| translation(e, now))
        .collect())
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
            // Room for both templates in front (4 + 2 * (4 + 11 * 4) bytes).
            let per_datagram = (MAX_DATAGRAM - OVERHEAD - 100) / nat_event_record_len(ipv6);
            for chunk in family.chunks(per_datagram.max(1)) {
                self.send_chunk(chunk, ipv6);
            }
        }
    }

    /// The templates alone, when none went out for a template interval (the agent's
    /// heartbeat while conntrack is quiet).
    fn send_templates_if_due(&mut self) {
        if self
            .templates_sent
            .is_some_and(|t| t.elapsed() < self.template_interval)
        {
            return;
        }
        let clock = ExporterClock {
            boot_ms: self.boot_ms,
            export_ms: unix_ms(),
        };
        let mut b = PacketBuilder::new(Version::Ipfix, clock, self.sequence, self.domain);
        b.template(&nat_event_template(TEMPLATE_V4, false))
            .template(&nat_event_template(TEMPLATE_V6, true));
        self.templates_sent = Some(Instant::now());
        match self.socket.send(&b.finish()) {
            Ok(_) => self.stats.datagrams += 1,
            Err(e) => {
                self.stats.send_errors += 1;
                tracing::debug!(error = %e, "sending NAT templates failed");
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

fn unix_ms() -> i64 {
    now_micros() / 1000
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

    #[test]
    fn comparing_with_the_table_closes_what_vanished_and_reports_what_was_missed() {
        let session = |inside_port, outside_port| NatEvent {
            at: 1,
            kind: Some(NatEventKind::Create),
            protocol: 17,
            inside_ip: 7,
            inside_port,
            outside_ip: 9,
            outside_port,
            remote_ip: 11,
            remote_port: 53,
            ..Default::default()
        };
        let mut open = OpenSessions::default();
        for e in [session(1000, 20000), session(1001, 20001)] {
            open.note(&e);
        }
        // 1000 ended without a destroy event; 1002 began while events were lost.
        let events = open.reconcile(&[session(1001, 20001), session(1002, 20002)], 50);
        let summary: Vec<_> = events
            .iter()
            .map(|e| (e.kind, e.inside_port, e.at))
            .collect();
        assert_eq!(
            summary,
            [
                (Some(NatEventKind::Create), 1002, 1),
                (Some(NatEventKind::Delete), 1000, 50)
            ]
        );
        assert!(
            open.reconcile(&[session(1001, 20001), session(1002, 20002)], 60)
                .is_empty()
        );
    }
}
