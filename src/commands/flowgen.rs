//! `hawking flowgen`: a NetFlow v5/v9/IPFIX load generator. Encodes a pool of packets per
//! exporter (each exporter is its own socket, so its own template scope) and sends them at a
//! target flow rate with `sendmmsg`. Before each send the packet's records are drawn afresh
//! and written over the encoded ones in place (addresses, ports, protocol, counters, times),
//! with the header's export time and sequence number: no record repeats, and the structure
//! (headers, set lengths, template) is encoded once. `--repeat` restores the older load: the
//! pool re-sent unchanged but for sequence numbers.

use std::io::Write;
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use anyhow::Context;
use hawking_collector::decode::netflow::template::TemplateLayout;
use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, encode_v5, flow_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::{as_v4, v4_to_u128};
use hawking_schemas::time::{now_micros, parse_time};

#[derive(clap::Args, Debug)]
pub struct FlowgenArgs {
    /// Collector address.
    #[arg(long)]
    to: SocketAddr,
    /// Export protocol: v5, v9 or ipfix.
    #[arg(long, default_value = "v9")]
    protocol: String,
    /// Exporters to simulate (one socket and observation domain each).
    #[arg(long, default_value_t = 4)]
    exporters: usize,
    /// Flow records per packet (v5: at most 30).
    #[arg(long, default_value_t = 24)]
    records_per_packet: usize,
    /// Flows per second over all exporters; 0 sends as fast as possible.
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Total flows to send.
    #[arg(long, default_value_t = 1_000_000)]
    flows: u64,
    /// Re-send templates every this many packets per exporter (v9/IPFIX).
    #[arg(long, default_value_t = 20)]
    template_every: u64,
    /// With --repeat, the distinct packets encoded per exporter. Without it, one burst (32
    /// packets) per exporter is encoded and its records redrawn before every send.
    #[arg(long, default_value_t = 2048)]
    pool: usize,
    /// Re-send the pool unchanged but for sequence numbers (flowgen's load before
    /// 2026-12-02, which older BENCHMARKS.md figures used): each record repeats
    /// flows / (pool × records per packet × exporters) times and flow times stay those of
    /// the start.
    #[arg(long)]
    repeat: bool,
    /// Exporter clock at the start of the run (RFC 3339 or `now`); flow times follow it.
    #[arg(long, default_value = "now")]
    clock_start: String,
    /// Exporter seconds per real second: 1440 sends a day of flow times in one minute, so a
    /// store written by `hawking serve` covers a day (one file per hour touched per commit).
    #[arg(long, default_value_t = 1.0)]
    clock_speed: f64,
    /// Send IPFIX over TCP (RFC 7011 §10.4), one connection per exporter, templates once at
    /// the start of each; without it, UDP datagrams.
    #[arg(long)]
    tcp: bool,
    /// Seed for the synthetic flows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Packets per `sendmmsg` call.
const BURST: usize = 32;

struct Exporter {
    link: Link,
    template: Vec<u8>,
    pool: Vec<Vec<u8>>,
    sequence: u32,
}

/// How an exporter's messages leave: datagrams, or one TCP stream (IPFIX's length field
/// frames the messages).
enum Link {
    Udp(UdpSocket),
    Tcp(TcpStream),
}

impl Link {
    fn send(&mut self, message: &[u8]) -> anyhow::Result<()> {
        match self {
            Link::Udp(s) => s.send(message).map(|_| ()).context("sending"),
            Link::Tcp(s) => s.write_all(message).context("writing to the TCP stream"),
        }
    }

    fn send_burst(&mut self, messages: &[&[u8]]) -> anyhow::Result<()> {
        match self {
            Link::Udp(s) => send_burst(s, messages),
            Link::Tcp(s) => {
                for m in messages {
                    s.write_all(m).context("writing to the TCP stream")?;
                }
                Ok(())
            }
        }
    }
}

/// The exporter clock: `start_ms` at the first send, then `speed` exporter ms per real ms.
#[derive(Clone, Copy)]
struct Clock {
    start_ms: i64,
    boot_ms: i64,
    speed: f64,
}

impl Clock {
    /// The clock `elapsed` into the run, export time in whole seconds (v9 and IPFIX headers
    /// carry seconds: flow times relative to it then round-trip exactly).
    fn at(&self, elapsed: Duration) -> ExporterClock {
        let ms = self.start_ms + (elapsed.as_secs_f64() * 1000.0 * self.speed) as i64;
        ExporterClock {
            boot_ms: self.boot_ms,
            export_ms: ms / 1000 * 1000,
        }
    }
}

pub fn run(args: FlowgenArgs) -> anyhow::Result<()> {
    let version = match args.protocol.as_str() {
        "v5" => Version::V5,
        "v9" => Version::V9,
        "ipfix" | "v10" => Version::Ipfix,
        other => anyhow::bail!("unknown protocol {other}: use v5, v9 or ipfix"),
    };
    anyhow::ensure!(
        !args.tcp || version == Version::Ipfix,
        "--tcp sends IPFIX only (NetFlow v5 and v9 have no TCP framing): add --protocol ipfix"
    );
    let per_packet = args
        .records_per_packet
        .clamp(1, if version == Version::V5 { 30 } else { 60 });
    anyhow::ensure!(
        args.clock_speed.is_finite() && args.clock_speed > 0.0,
        "--clock-speed must be positive"
    );
    let start_ms = parse_time(&args.clock_start)?.div_euclid(1000);
    let now_ms = now_micros() / 1000;
    let clock = Clock {
        start_ms,
        // A day before the earlier of now and the clock's start: uptimes stay positive.
        boot_ms: start_ms.min(now_ms) / 1000 * 1000 - 86_400_000,
        speed: args.clock_speed,
    };
    let first = clock.at(Duration::ZERO);
    let bind = if args.to.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let times = if version == Version::Ipfix {
        TimeEncoding::Milliseconds
    } else {
        TimeEncoding::SysUpTime
    };
    let mut rng = args.seed.max(1);
    let mut layout = None;
    let mut exporters: Vec<Exporter> = (0..args.exporters.max(1))
        .map(|e| -> anyhow::Result<Exporter> {
            let link = if args.tcp {
                let stream = TcpStream::connect(args.to)
                    .with_context(|| format!("connecting to {} over TCP", args.to))?;
                stream.set_nodelay(true)?;
                Link::Tcp(stream)
            } else {
                let socket = UdpSocket::bind(bind).context("binding sender socket")?;
                socket
                    .connect(args.to)
                    .with_context(|| format!("connecting to {}", args.to))?;
                Link::Udp(socket)
            };
            let t = flow_template(256 + e as u16, false, times);
            layout.get_or_insert_with(|| RecordLayout::new(version, &t));
            let template = if version == Version::V5 {
                Vec::new()
            } else {
                let mut b = PacketBuilder::new(version, first, 0, e as u32);
                b.template(&t);
                b.finish()
            };
            // Buffers are free again once `sendmmsg` returns (UDP copies them): rewriting
            // one burst's worth keeps what is written in cache.
            let pool_len = if args.repeat {
                args.pool.max(BURST)
            } else {
                BURST
            };
            let pool = (0..pool_len)
                .map(|i| {
                    let flows: Vec<FlowRecord> = (0..per_packet)
                        .map(|_| synthetic_flow(&mut rng, first))
                        .collect();
                    encode(version, &t, first, i as u32, e as u32, &flows)
                })
                .collect();
            Ok(Exporter {
                link,
                template,
                pool,
                sequence: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;
    let layout = layout.expect("at least one exporter");

    let packets_total = args.flows.div_ceil(per_packet as u64);
    let packet_rate = if args.rate == 0 {
        0.0
    } else {
        args.rate as f64 / per_packet as f64
    };
    let started = Instant::now();
    let mut sent_packets = 0u64;
    let mut sent_templates = 0u64;
    let mut burst: Vec<usize> = Vec::with_capacity(BURST);
    let mut round = 0u64;
    while sent_packets < packets_total {
        for exp in exporters.iter_mut() {
            if sent_packets >= packets_total {
                break;
            }
            burst.clear();
            // Over TCP a template holds for the whole connection: sent once.
            let template_due = if args.tcp {
                round == 0
            } else {
                round.is_multiple_of(args.template_every.max(1))
            };
            if version != Version::V5 && template_due {
                exp.link.send(&exp.template).context("sending template")?;
                sent_templates += 1;
            }
            let n = BURST.min((packets_total - sent_packets) as usize);
            // Sequence numbers count packets (v9) or records (v5, IPFIX).
            let step = match version {
                Version::V9 => 1,
                _ => per_packet as u32,
            };
            // One clock reading per burst: flow times move with the (scaled) wall clock.
            let now = clock.at(started.elapsed());
            for k in 0..n {
                let idx = ((round as usize) * BURST + k) % exp.pool.len();
                let packet = &mut exp.pool[idx];
                layout.set_sequence(packet, exp.sequence);
                if !args.repeat {
                    layout.set_clock(packet, now);
                    for r in 0..per_packet {
                        layout.write_record(packet, r, &synthetic_flow(&mut rng, now), now);
                    }
                }
                exp.sequence = exp.sequence.wrapping_add(step);
                burst.push(idx);
            }
            let packets: Vec<&[u8]> = burst.iter().map(|i| exp.pool[*i].as_slice()).collect();
            exp.link.send_burst(&packets)?;
            sent_packets += n as u64;
        }
        round += 1;
        if packet_rate > 0.0 {
            let due = Duration::from_secs_f64(sent_packets as f64 / packet_rate);
            let elapsed = started.elapsed();
            if due > elapsed {
                std::thread::sleep(due - elapsed);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let flows = sent_packets * per_packet as u64;
    println!(
        "flowgen sent packets={sent_packets} templates={sent_templates} flows={flows} seconds={secs:.3} flows_per_sec={:.0}",
        flows as f64 / secs
    );
    Ok(())
}

/// One packet of `flows` as the exporter encodes it (v5, or v9/IPFIX data with template `t`).
fn encode(
    version: Version,
    t: &TemplateLayout,
    clock: ExporterClock,
    sequence: u32,
    domain: u32,
    flows: &[FlowRecord],
) -> Vec<u8> {
    match version {
        Version::V5 => encode_v5(clock, sequence, 0, flows),
        _ => {
            let mut b = PacketBuilder::new(version, clock, sequence, domain);
            b.flows(t, clock, flows);
            b.finish()
        }
    }
}

/// Where the fields flowgen varies sit in an encoded packet of one template, so a record
/// can be rewritten in place (the encoder's output for the same record, byte for byte: the
/// tests check it against `PacketBuilder`/`encode_v5`).
#[derive(Clone, Copy, Debug)]
struct RecordLayout {
    version: Version,
    /// Offset of the first record and the length of one.
    first: usize,
    stride: usize,
    src: usize,
    dst: usize,
    src_port: usize,
    dst_port: usize,
    protocol: usize,
    /// (offset, length) of the counters: 8 bytes each in the template, 4 in v5.
    bytes: (usize, usize),
    packets: (usize, usize),
    /// Flow start and end: ms since boot in 4 bytes (v5, v9), or ms since the epoch in 8.
    start: usize,
    end: usize,
    epoch_ms: bool,
}

impl RecordLayout {
    fn new(version: Version, t: &TemplateLayout) -> Self {
        if version == Version::V5 {
            // RFC-less but fixed: the 24-byte header, then 48-byte records.
            return RecordLayout {
                version,
                first: 24,
                stride: 48,
                src: 0,
                dst: 4,
                src_port: 32,
                dst_port: 34,
                protocol: 38,
                bytes: (20, 4),
                packets: (16, 4),
                start: 24,
                end: 28,
                epoch_ms: false,
            };
        }
        let header = if version == Version::V9 { 20 } else { 16 };
        let mut l = RecordLayout {
            version,
            first: header + 4, // the data set's header
            stride: 0,
            src: 0,
            dst: 0,
            src_port: 0,
            dst_port: 0,
            protocol: 0,
            bytes: (0, 0),
            packets: (0, 0),
            start: 0,
            end: 0,
            epoch_ms: false,
        };
        for f in &t.fields {
            let at = l.stride;
            match f.id {
                8 => l.src = at,
                12 => l.dst = at,
                7 => l.src_port = at,
                11 => l.dst_port = at,
                4 => l.protocol = at,
                1 => l.bytes = (at, f.length as usize),
                2 => l.packets = (at, f.length as usize),
                22 => l.start = at,
                21 => l.end = at,
                152 => (l.start, l.epoch_ms) = (at, true),
                153 => l.end = at,
                _ => {}
            }
            l.stride += f.length as usize;
        }
        l
    }

    fn set_sequence(&self, packet: &mut [u8], sequence: u32) {
        let at = match self.version {
            Version::V5 => 16,
            Version::V9 => 12,
            Version::Ipfix => 8,
        };
        packet[at..at + 4].copy_from_slice(&sequence.to_be_bytes());
    }

    /// The header's uptime and export time (v5's nanoseconds are 0: whole seconds).
    fn set_clock(&self, packet: &mut [u8], clock: ExporterClock) {
        let uptime = ((clock.export_ms - clock.boot_ms) as u32).to_be_bytes();
        let secs = ((clock.export_ms / 1000) as u32).to_be_bytes();
        match self.version {
            Version::V5 | Version::V9 => {
                packet[4..8].copy_from_slice(&uptime);
                packet[8..12].copy_from_slice(&secs);
            }
            Version::Ipfix => packet[4..8].copy_from_slice(&secs),
        }
        if self.version == Version::V5 {
            let nanos = (((clock.export_ms % 1000) * 1_000_000) as u32).to_be_bytes();
            packet[12..16].copy_from_slice(&nanos);
        }
    }

    /// Writes `r` over record `index` of `packet`.
    fn write_record(&self, packet: &mut [u8], index: usize, r: &FlowRecord, clock: ExporterClock) {
        let rec = &mut packet[self.first + index * self.stride..][..self.stride];
        let put = |rec: &mut [u8], at: usize, len: usize, v: u64| {
            rec[at..at + len].copy_from_slice(&v.to_be_bytes()[8 - len..]);
        };
        put(rec, self.src, 4, as_v4(r.src_ip).unwrap_or(0) as u64);
        put(rec, self.dst, 4, as_v4(r.dst_ip).unwrap_or(0) as u64);
        put(rec, self.src_port, 2, r.src_port as u64);
        put(rec, self.dst_port, 2, r.dst_port as u64);
        put(rec, self.protocol, 1, r.protocol as u64);
        put(rec, self.bytes.0, self.bytes.1, r.bytes);
        put(rec, self.packets.0, self.packets.1, r.packets);
        let (start, end) = (r.flow_start.div_euclid(1000), r.flow_end.div_euclid(1000));
        if self.epoch_ms {
            put(rec, self.start, 8, start as u64);
            put(rec, self.end, 8, end as u64);
        } else {
            put(rec, self.start, 4, (start - clock.boot_ms) as u32 as u64);
            put(rec, self.end, 4, (end - clock.boot_ms) as u32 as u64);
        }
    }
}

/// A flow between addresses drawn from realistic pools: 4096 cluster hosts in 10.0.0.0/12 and
/// 20000 remote addresses, half the flows internal; well-known destination ports. (Uniformly
/// random 32-bit addresses would make every address unique, which real traffic never is.)
fn synthetic_flow(rng: &mut u64, clock: ExporterClock) -> FlowRecord {
    let mut next = || {
        *rng ^= *rng << 13;
        *rng ^= *rng >> 7;
        *rng ^= *rng << 17;
        *rng
    };
    let end_ms = clock.export_ms - (next() % 30_000) as i64;
    let start_ms = end_ms - (next() % 60_000) as i64;
    let host = |r: u64| 0x0a00_0000 | ((r % 4096) as u32 * 251 % 0x000f_ffff);
    let remote = |r: u64| ((r % 20_000) as u32).wrapping_mul(0x9e37_79b1) | 0x0100_0000;
    let src = host(next());
    let dst = if next() % 2 == 0 {
        host(next())
    } else {
        remote(next())
    };
    FlowRecord {
        flow_start: start_ms * 1000,
        flow_end: end_ms * 1000,
        src_ip: v4_to_u128(src),
        dst_ip: v4_to_u128(dst),
        src_port: 32768 + (next() % 28_000) as u16,
        dst_port: [443u16, 80, 53, 8080, 5432, 6443, 9090, 3306, 6379, 123][(next() % 10) as usize],
        protocol: [6u8, 6, 6, 17][(next() % 4) as usize],
        tcp_flags: 0x1b,
        bytes: 40 + next() % 100_000,
        packets: 1 + next() % 100,
        sampling_rate: 1,
        in_if: 1,
        out_if: 2,
    }
}

/// Sends datagrams on a connected socket with one `sendmmsg` call (looping on partial sends).
fn send_burst(socket: &UdpSocket, packets: &[&[u8]]) -> anyhow::Result<()> {
    use std::os::fd::AsRawFd;
    let mut iovecs: Vec<libc::iovec> = packets
        .iter()
        .map(|p| libc::iovec {
            iov_base: p.as_ptr() as *mut libc::c_void,
            iov_len: p.len(),
        })
        .collect();
    let mut headers: Vec<libc::mmsghdr> = iovecs
        .iter_mut()
        .map(|iov| {
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = iov;
            h.msg_hdr.msg_iovlen = 1;
            h
        })
        .collect();
    let mut done = 0;
    while done < headers.len() {
        let n = unsafe {
            libc::sendmmsg(
                socket.as_raw_fd(),
                headers[done..].as_mut_ptr(),
                (headers.len() - done) as libc::c_uint,
                0,
            )
        };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            // ECONNREFUSED from a previous ICMP port unreachable: the collector is not up.
            return Err(err).context("sendmmsg");
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLOCK: ExporterClock = ExporterClock {
        boot_ms: 1_795_000_000_000,
        export_ms: 1_795_168_800_000,
    };

    /// A packet rewritten in place is, byte for byte, what the encoder makes of the new
    /// records with the new clock and sequence number.
    #[test]
    fn a_record_rewritten_in_place_is_the_encoders_record() {
        for version in [Version::V5, Version::V9, Version::Ipfix] {
            let times = if version == Version::Ipfix {
                TimeEncoding::Milliseconds
            } else {
                TimeEncoding::SysUpTime
            };
            let t = flow_template(256, false, times);
            let layout = RecordLayout::new(version, &t);
            let mut rng = 7;
            let old: Vec<FlowRecord> = (0..24).map(|_| synthetic_flow(&mut rng, CLOCK)).collect();
            let mut packet = encode(version, &t, CLOCK, 0, 3, &old);
            let later = ExporterClock {
                boot_ms: CLOCK.boot_ms,
                export_ms: CLOCK.export_ms + 3_600_000,
            };
            let new: Vec<FlowRecord> = (0..24).map(|_| synthetic_flow(&mut rng, later)).collect();
            layout.set_sequence(&mut packet, 4242);
            layout.set_clock(&mut packet, later);
            for (i, r) in new.iter().enumerate() {
                layout.write_record(&mut packet, i, r, later);
            }
            assert_eq!(
                packet,
                encode(version, &t, later, 4242, 3, &new),
                "{version:?}"
            );
        }
    }

    /// The default load does not repeat: 500,000 draws are all different records (the pool
    /// alone, re-sent, repeated each of its 4 × 2,048 × 24 records ~80 times in 16M flows).
    #[test]
    fn drawn_flows_do_not_repeat() {
        let mut rng = 1;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..500_000 {
            let r = synthetic_flow(&mut rng, CLOCK);
            let key = (
                r.src_ip,
                r.dst_ip,
                r.src_port,
                r.dst_port,
                r.protocol,
                r.bytes,
                r.packets,
                r.flow_start,
                r.flow_end,
            );
            assert!(seen.insert(key), "repeated: {r:?}");
        }
    }
}
