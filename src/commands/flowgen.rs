//! `hawking flowgen`: a NetFlow v5/v9/IPFIX load generator. Pre-encodes a pool of packets
//! per exporter (each exporter is its own socket, so its own template scope), then replays
//! them at a target flow rate with `sendmmsg`, patching sequence numbers as it goes.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, encode_v5, flow_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::v4_to_u128;

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
    /// Distinct packets pre-encoded per exporter.
    #[arg(long, default_value_t = 2048)]
    pool: usize,
    /// Seed for the synthetic flows.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// Packets per `sendmmsg` call.
const BURST: usize = 32;

struct Exporter {
    socket: UdpSocket,
    template: Vec<u8>,
    pool: Vec<Vec<u8>>,
    sequence: u32,
}

pub fn run(args: FlowgenArgs) -> anyhow::Result<()> {
    let version = match args.protocol.as_str() {
        "v5" => Version::V5,
        "v9" => Version::V9,
        "ipfix" | "v10" => Version::Ipfix,
        other => anyhow::bail!("unknown protocol {other}: use v5, v9 or ipfix"),
    };
    let per_packet = args
        .records_per_packet
        .clamp(1, if version == Version::V5 { 30 } else { 60 });
    let now_ms = SystemTime::now().duration_since(UNIX_EPOCH)?.as_millis() as i64;
    let clock = ExporterClock {
        boot_ms: now_ms / 1000 * 1000 - 86_400_000,
        export_ms: now_ms / 1000 * 1000,
    };
    let bind = if args.to.is_ipv6() {
        "[::]:0"
    } else {
        "0.0.0.0:0"
    };
    let mut rng = args.seed.max(1);
    let mut exporters: Vec<Exporter> = (0..args.exporters.max(1))
        .map(|e| -> anyhow::Result<Exporter> {
            let socket = UdpSocket::bind(bind).context("binding sender socket")?;
            socket
                .connect(args.to)
                .with_context(|| format!("connecting to {}", args.to))?;
            let times = if version == Version::Ipfix {
                TimeEncoding::Milliseconds
            } else {
                TimeEncoding::SysUpTime
            };
            let t = flow_template(256 + e as u16, false, times);
            let template = if version == Version::V5 {
                Vec::new()
            } else {
                let mut b = PacketBuilder::new(version, clock, 0, e as u32);
                b.template(&t);
                b.finish()
            };
            let pool = (0..args.pool.max(BURST))
                .map(|i| {
                    let flows: Vec<FlowRecord> = (0..per_packet)
                        .map(|_| synthetic_flow(&mut rng, clock))
                        .collect();
                    match version {
                        Version::V5 => encode_v5(clock, i as u32, 0, &flows),
                        _ => {
                            let mut b = PacketBuilder::new(version, clock, i as u32, e as u32);
                            b.flows(&t, clock, &flows);
                            b.finish()
                        }
                    }
                })
                .collect();
            Ok(Exporter {
                socket,
                template,
                pool,
                sequence: 0,
            })
        })
        .collect::<anyhow::Result<_>>()?;

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
            if version != Version::V5 && round.is_multiple_of(args.template_every.max(1)) {
                exp.socket.send(&exp.template).context("sending template")?;
                sent_templates += 1;
            }
            let n = BURST.min((packets_total - sent_packets) as usize);
            // Sequence numbers count packets (v9) or records (v5, IPFIX).
            let (offset, step) = match version {
                Version::V5 => (16, per_packet as u32),
                Version::V9 => (12, 1),
                Version::Ipfix => (8, per_packet as u32),
            };
            for k in 0..n {
                let idx = ((round as usize) * BURST + k) % exp.pool.len();
                exp.pool[idx][offset..offset + 4].copy_from_slice(&exp.sequence.to_be_bytes());
                exp.sequence = exp.sequence.wrapping_add(step);
                burst.push(idx);
            }
            let packets: Vec<&[u8]> = burst.iter().map(|i| exp.pool[*i].as_slice()).collect();
            send_burst(&exp.socket, &packets)?;
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
