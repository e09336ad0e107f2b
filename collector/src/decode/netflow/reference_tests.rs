//! The compiled decoder checked against netflow_parser's own decoding of the same packets:
//! for every version, address family and time encoding, both must produce the same flows,
//! and those flows must be the ones that were exported.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::{ip_to_u128, v4_to_u128};
use hawking_schemas::pipeline::SourceBatch;
use netflow_parser::variable_versions::field_value::DurationValue;
use netflow_parser::variable_versions::ipfix::lookup::{IANAIPFixField, IPFixField};
use netflow_parser::variable_versions::{ipfix, v9};
use netflow_parser::{AutoScopedParser, FieldValue, NetflowPacket};

use super::NetflowDecoder;
use super::wire::Version;
use crate::export::{ExporterClock, PacketBuilder, TimeEncoding, encode_v5, flow_template};

const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

/// Deterministic flows: times on whole milliseconds, counters within 32 bits (v5).
pub(crate) fn random_flows(
    seed: u64,
    n: usize,
    ipv6: bool,
    clock: ExporterClock,
) -> Vec<FlowRecord> {
    let mut s = seed | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let end_ms = clock.export_ms - (next() % 120_000) as i64;
            let start_ms = end_ms - (next() % 300_000) as i64;
            let ip = |r: u64| {
                if ipv6 {
                    (0x2001_0db8u128 << 96) | r as u128
                } else {
                    v4_to_u128(r as u32)
                }
            };
            FlowRecord {
                flow_start: start_ms * 1000,
                flow_end: end_ms * 1000,
                src_ip: ip(next()),
                dst_ip: ip(next()),
                src_port: next() as u16,
                dst_port: next() as u16,
                protocol: [6u8, 17, 1][(next() % 3) as usize],
                tcp_flags: next() as u8,
                bytes: next() % (1 << 31),
                packets: next() % (1 << 20),
                sampling_rate: 1,
                in_if: (next() % 65536) as u32,
                out_if: (next() % 65536) as u32,
            }
        })
        .collect()
}

fn ntp_us(seconds: u32, fraction: u32) -> i64 {
    (seconds as i64 - NTP_UNIX_OFFSET_S) * 1_000_000 + ((fraction as u64 * 1_000_000) >> 32) as i64
}

/// A flow built from netflow_parser's decoded (field, value) pairs, using only its types.
#[derive(Default)]
struct RefFields {
    nums: HashMap<u16, u64>,
    ips: HashMap<u16, IpAddr>,
    ntp: HashMap<u16, i64>,
}

impl RefFields {
    fn put(&mut self, id: u16, v: &FieldValue) {
        match v {
            FieldValue::Ip4Addr(_) | FieldValue::Ip6Addr(_) => {
                self.ips.insert(id, IpAddr::try_from(v).unwrap());
            }
            FieldValue::Duration(DurationValue::MicrosNtp { seconds, fraction })
            | FieldValue::Duration(DurationValue::NanosNtp { seconds, fraction }) => {
                self.ntp.insert(id, ntp_us(*seconds, *fraction));
            }
            FieldValue::Duration(DurationValue::Seconds { value, .. }) => {
                self.nums.insert(id, *value);
            }
            FieldValue::Duration(DurationValue::Millis { value, .. }) => {
                self.nums.insert(id, *value);
            }
            FieldValue::ProtocolType(p) => {
                self.nums.insert(id, u8::from(*p) as u64);
            }
            FieldValue::TcpControlBits(bits, _) => {
                self.nums.insert(id, u16::from(*bits) as u64);
            }
            other => {
                if let Some(n) = other.as_u64() {
                    self.nums.insert(id, n);
                }
            }
        }
    }

    fn time(&self, ids: [u16; 5], export_ms: i64, boot_ms: i64) -> i64 {
        let [sysup, sec, ms, us, delta] = ids;
        if let Some(v) = self.nums.get(&ms) {
            return *v as i64 * 1000;
        }
        if let Some(v) = self.ntp.get(&us).or_else(|| self.ntp.get(&(us + 2))) {
            return *v;
        }
        if let Some(v) = self.nums.get(&sec) {
            return *v as i64 * 1_000_000;
        }
        if let Some(v) = self.nums.get(&sysup) {
            return (boot_ms + *v as i64) * 1000;
        }
        export_ms * 1000 - *self.nums.get(&delta).expect("some time element") as i64
    }

    fn flow(&self, export_ms: i64, boot_ms: i64) -> FlowRecord {
        let ip = |id4: u16, id6: u16| {
            ip_to_u128(*self.ips.get(&id4).or_else(|| self.ips.get(&id6)).unwrap())
        };
        let n = |id: u16| self.nums.get(&id).copied().unwrap_or(0);
        FlowRecord {
            flow_start: self.time([22, 150, 152, 154, 158], export_ms, boot_ms),
            flow_end: self.time([21, 151, 153, 155, 159], export_ms, boot_ms),
            src_ip: ip(8, 27),
            dst_ip: ip(12, 28),
            src_port: n(7) as u16,
            dst_port: n(11) as u16,
            protocol: n(4) as u8,
            tcp_flags: n(6) as u8,
            bytes: n(1),
            packets: n(2),
            sampling_rate: 1,
            in_if: n(10) as u32,
            out_if: n(14) as u32,
        }
    }
}

/// netflow_parser's reading of the packets, as flows.
fn reference_decode(packets: &[Vec<u8>], exporter: SocketAddr, boot_ms: i64) -> Vec<FlowRecord> {
    let mut parser = AutoScopedParser::new();
    let ipfix_ids: HashMap<IANAIPFixField, u16> = (1..=400u16)
        .map(|id| (IANAIPFixField::from(id), id))
        .collect();
    let mut flows = Vec::new();
    for pkt in packets {
        let result = parser.parse_from_source(exporter, pkt);
        assert!(
            result.error.is_none(),
            "netflow_parser rejected a packet: {:?}",
            result.error
        );
        for p in &result.packets {
            match p {
                NetflowPacket::V5(p) => {
                    let export_ms =
                        p.header.unix_secs as i64 * 1000 + p.header.unix_nsecs as i64 / 1_000_000;
                    let boot = export_ms - p.header.sys_up_time as i64;
                    for r in &p.flowsets {
                        flows.push(FlowRecord {
                            flow_start: (boot + r.first as i64) * 1000,
                            flow_end: (boot + r.last as i64) * 1000,
                            src_ip: ip_to_u128(IpAddr::V4(r.src_addr)),
                            dst_ip: ip_to_u128(IpAddr::V4(r.dst_addr)),
                            src_port: r.src_port,
                            dst_port: r.dst_port,
                            protocol: r.protocol_number,
                            tcp_flags: r.tcp_flags,
                            bytes: r.d_octets as u64,
                            packets: r.d_pkts as u64,
                            sampling_rate: 1,
                            in_if: r.input as u32,
                            out_if: r.output as u32,
                        });
                    }
                }
                NetflowPacket::V9(p) => {
                    let export_ms = p.header.unix_secs as i64 * 1000;
                    let boot = export_ms - p.header.sys_up_time as i64;
                    for fs in &p.flowsets {
                        if let v9::FlowSetBody::Data(d) = &fs.body {
                            for rec in &d.fields {
                                let mut f = RefFields::default();
                                for (field, value) in rec {
                                    f.put(u16::from(*field), value);
                                }
                                flows.push(f.flow(export_ms, boot));
                            }
                        }
                    }
                }
                NetflowPacket::IPFix(p) => {
                    let export_ms = p.header.export_time as i64 * 1000;
                    for fs in &p.flowsets {
                        if let ipfix::FlowSetBody::Data(d) = &fs.body {
                            for rec in &d.fields {
                                let mut f = RefFields::default();
                                for (field, value) in rec {
                                    if let IPFixField::IANA(iana) = field {
                                        f.put(ipfix_ids[iana], value);
                                    }
                                }
                                flows.push(f.flow(export_ms, boot_ms));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    flows
}

fn hawking_decode(
    packets: &[Vec<u8>],
    exporter: SocketAddr,
    preload_ipfix_boot: Option<i64>,
) -> (Vec<FlowRecord>, NetflowDecoder) {
    let mut decoder = NetflowDecoder::new(Default::default()).unwrap();
    if let Some(boot) = preload_ipfix_boot {
        // IPFIX sysUpTime times need the boot time an options record announces.
        let clock = ExporterClock {
            boot_ms: boot,
            export_ms: boot + 1000,
        };
        let t = crate::export::sampling_options_template(400, Version::Ipfix);
        let mut b = PacketBuilder::new(Version::Ipfix, clock, 0, 1);
        b.template(&t).sampling_options(&t, clock, 1);
        let mut sink = SourceBatch::default();
        decoder.decode(exporter, &b.finish(), 0, &mut sink);
    }
    let mut batch = SourceBatch::default();
    for pkt in packets {
        decoder.decode(exporter, pkt, 1, &mut batch);
    }
    let flows = (0..batch.flows.len())
        .map(|i| batch.flows.record(i))
        .collect();
    (flows, decoder)
}

/// The exported flows as the encoding can carry them.
fn at_resolution(flows: &[FlowRecord], times: TimeEncoding) -> Vec<FlowRecord> {
    flows
        .iter()
        .map(|r| {
            let mut r = *r;
            if times == TimeEncoding::Seconds {
                r.flow_start = r.flow_start.div_euclid(1_000_000) * 1_000_000;
                r.flow_end = r.flow_end.div_euclid(1_000_000) * 1_000_000;
            }
            r
        })
        .collect()
}

fn check(version: Version, ipv6: bool, times: TimeEncoding) {
    let exporter: SocketAddr = "192.0.2.10:40000".parse().unwrap();
    let clock = ExporterClock {
        boot_ms: 1_795_100_000_000,
        export_ms: 1_795_168_800_000,
    };
    let flows = random_flows(7 + ipv6 as u64, 300, ipv6, clock);
    let t = flow_template(300, ipv6, times);
    let packets: Vec<Vec<u8>> = flows
        .chunks(25)
        .enumerate()
        .map(|(i, chunk)| {
            let mut b = PacketBuilder::new(version, clock, i as u32, 1);
            if i % 4 == 0 {
                b.template(&t);
            }
            b.flows(&t, clock, chunk);
            b.finish()
        })
        .collect();
    let boot =
        (version == Version::Ipfix && times == TimeEncoding::SysUpTime).then_some(clock.boot_ms);
    let (ours, _) = hawking_decode(&packets, exporter, boot);
    let reference = reference_decode(&packets, exporter, clock.boot_ms);
    assert_eq!(ours.len(), flows.len(), "{version:?} v6={ipv6} {times:?}");
    assert_eq!(
        ours, reference,
        "{version:?} v6={ipv6} {times:?}: decoder disagrees with netflow_parser"
    );
    assert_eq!(
        ours,
        at_resolution(&flows, times),
        "{version:?} v6={ipv6} {times:?}: not what was exported"
    );
}

#[test]
fn v9_matches_netflow_parser() {
    for ipv6 in [false, true] {
        for times in [TimeEncoding::SysUpTime, TimeEncoding::Milliseconds] {
            check(Version::V9, ipv6, times);
        }
    }
}

#[test]
fn ipfix_matches_netflow_parser_for_every_time_encoding() {
    for ipv6 in [false, true] {
        for times in [
            TimeEncoding::SysUpTime,
            TimeEncoding::Seconds,
            TimeEncoding::Milliseconds,
            TimeEncoding::Microseconds,
            TimeEncoding::Nanoseconds,
            TimeEncoding::DeltaMicroseconds,
        ] {
            check(Version::Ipfix, ipv6, times);
        }
    }
}

#[test]
fn v5_matches_netflow_parser() {
    let exporter: SocketAddr = "192.0.2.5:2055".parse().unwrap();
    let clock = ExporterClock {
        boot_ms: 1_795_100_000_000,
        export_ms: 1_795_168_800_123,
    };
    let flows = random_flows(3, 90, false, clock);
    let packets: Vec<Vec<u8>> = flows
        .chunks(30)
        .enumerate()
        .map(|(i, c)| encode_v5(clock, i as u32 * 30, 0, c))
        .collect();
    let (ours, _) = hawking_decode(&packets, exporter, None);
    assert_eq!(ours, reference_decode(&packets, exporter, clock.boot_ms));
    assert_eq!(ours, flows);
}

/// Mutated and truncated packets (bit flips, cut-offs, lying lengths) never panic the
/// decoder, and whatever it decodes still leaves it able to decode a good packet.
#[test]
fn mutated_packets_never_panic_the_decoder() {
    let exporter: SocketAddr = "192.0.2.20:9000".parse().unwrap();
    let clock = ExporterClock {
        boot_ms: 1_795_100_000_000,
        export_ms: 1_795_168_800_000,
    };
    let flows = random_flows(11, 20, false, clock);
    let mut seeds = Vec::new();
    for version in [Version::V9, Version::Ipfix] {
        for times in [TimeEncoding::SysUpTime, TimeEncoding::Milliseconds] {
            let t = flow_template(256, false, times);
            let o = crate::export::sampling_options_template(257, version);
            let mut b = PacketBuilder::new(version, clock, 0, 1);
            b.template(&t)
                .template(&o)
                .sampling_options(&o, clock, 4)
                .flows(&t, clock, &flows);
            seeds.push(b.finish());
        }
    }
    seeds.push(encode_v5(clock, 0, 0, &flows));
    let mut decoder = NetflowDecoder::new(Default::default()).unwrap();
    let mut batch = SourceBatch::default();
    let mut s = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    for i in 0..60_000 {
        let mut pkt = seeds[i % seeds.len()].clone();
        match next() % 4 {
            0 => pkt.truncate((next() as usize) % (pkt.len() + 1)),
            1 => {
                for _ in 0..1 + next() % 8 {
                    let at = (next() as usize) % pkt.len();
                    pkt[at] ^= 1 << (next() % 8);
                }
            }
            2 => {
                // Overwrite a 16-bit field with an extreme value (lengths, counts, IDs).
                let at = (next() as usize) % (pkt.len() - 1);
                let v = [0u16, 1, 3, 4, 255, 256, 0x7fff, 0xffff][(next() % 8) as usize];
                pkt[at..at + 2].copy_from_slice(&v.to_be_bytes());
            }
            _ => pkt.extend((0..next() % 64).map(|_| next() as u8)),
        }
        decoder.decode(exporter, &pkt, i as i64, &mut batch);
        if batch.flows.len() > 100_000 {
            batch.clear();
        }
    }
    batch.clear();
    decoder.decode("192.0.2.21:9000".parse().unwrap(), &seeds[0], 0, &mut batch);
    assert_eq!(
        batch.flows.len(),
        flows.len(),
        "a clean exporter still decodes after the barrage"
    );
}
