//! Hawking's own exporter side (`hawking flowgen`, `hawking nat-agent`: collector's `export`
//! module) checked by an independent decoder: the packets it writes are put in a pcap and
//! tshark must read back every flow and NAT session event with the values that were encoded.

use std::fs::File;
use std::net::IpAddr;
use std::path::Path;
use std::process::Command;

use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, encode_v5, flow_template, nat_event_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::{ip_to_u128, u128_to_ip};
use hawking_schemas::nat::{NatEvent, NatEventKind};
use pcap_file::DataLink;
use pcap_file::pcap::{PcapHeader, PcapPacket, PcapWriter};

const CLOCK: ExporterClock = ExporterClock {
    boot_ms: 1_795_000_000_000,
    export_ms: 1_795_168_800_000,
};

fn ip(s: &str) -> u128 {
    ip_to_u128(s.parse().expect("address"))
}

/// Flows that exercise every field of the template: both address families, ports at the
/// top of their range, 64-bit counters, interfaces.
fn flows(ipv6: bool) -> Vec<FlowRecord> {
    let (a, b) = if ipv6 {
        ("2001:db8::7", "fd00:10:244::1b")
    } else {
        ("10.244.1.7", "93.184.216.34")
    };
    (0..5u64)
        .map(|i| FlowRecord {
            flow_start: (CLOCK.export_ms - 9_000 + i as i64 * 1000) * 1000,
            flow_end: (CLOCK.export_ms - 500) * 1000,
            src_ip: ip(a) + i as u128,
            dst_ip: ip(b),
            src_port: 65_535 - i as u16,
            dst_port: 443,
            protocol: if i % 2 == 0 { 6 } else { 17 },
            tcp_flags: if i % 2 == 0 { 0x1b } else { 0 },
            bytes: 1_500 * (i + 1) + (1 << 33),
            packets: i + 1,
            sampling_rate: 1,
            in_if: 3 + i as u32,
            out_if: 70_000,
        })
        .collect()
}

fn nat_events(ipv6: bool) -> Vec<NatEvent> {
    let (inside, outside, remote) = if ipv6 {
        ("fd00:10:244::7", "2001:db8::1", "2001:db8:ffff::53")
    } else {
        ("10.244.1.7", "192.0.2.10", "93.184.216.34")
    };
    [NatEventKind::Create, NatEventKind::Delete]
        .into_iter()
        .enumerate()
        .map(|(i, kind)| NatEvent {
            at: (CLOCK.export_ms - 2_000 + i as i64 * 1_500) * 1000,
            kind: Some(kind),
            exporter: 0,
            observation_domain: 0,
            protocol: 6,
            inside_ip: ip(inside),
            inside_port: 40_000 + i as u16,
            outside_ip: ip(outside),
            outside_port: 61_000 + i as u16,
            remote_ip: ip(remote),
            remote_port: 443,
        })
        .collect()
}

/// Writes each payload as a UDP datagram from 192.0.2.7:4739 to the collector port.
fn write_pcap(path: &Path, payloads: &[Vec<u8>]) {
    let header = PcapHeader {
        datalink: DataLink::ETHERNET,
        ..Default::default()
    };
    let mut w = PcapWriter::with_header(File::create(path).expect("create"), header).expect("pcap");
    for (i, p) in payloads.iter().enumerate() {
        let mut frame = Vec::new();
        etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
            .ipv4([192, 0, 2, 7], [192, 0, 2, 9], 64)
            .udp(4739, 4739)
            .write(&mut frame, p)
            .expect("frame");
        let ts = std::time::Duration::from_millis(CLOCK.export_ms as u64 + i as u64);
        w.write_packet(&PcapPacket::new(ts, frame.len() as u32, &frame))
            .expect("write");
    }
}

/// Every record tshark decodes (its "Flow N" objects), as field name -> text.
fn tshark_records(pcap: &Path) -> Vec<serde_json::Map<String, serde_json::Value>> {
    fn walk(v: &serde_json::Value, out: &mut Vec<serde_json::Map<String, serde_json::Value>>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match v {
                        // IPFIX/v9 records are "Flow N", v5's "pdu i/n"; nested trees
                        // (times under timedelta_tree) are flattened into the record.
                        serde_json::Value::Object(r)
                            if k.starts_with("Flow ") || k.starts_with("pdu ") =>
                        {
                            let mut flat = serde_json::Map::new();
                            flatten(r, &mut flat);
                            out.push(flat)
                        }
                        v => walk(v, out),
                    }
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    fn flatten(
        m: &serde_json::Map<String, serde_json::Value>,
        out: &mut serde_json::Map<String, serde_json::Value>,
    ) {
        for (k, v) in m {
            match v {
                serde_json::Value::Object(inner) => flatten(inner, out),
                v => {
                    out.insert(k.clone(), v.clone());
                }
            }
        }
    }
    let out = Command::new("tshark")
        .arg("-r")
        .arg(pcap)
        .args(["-d", "udp.port==4739,cflow", "-T", "json"])
        .output()
        .expect("run tshark");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tshark json");
    let mut records = Vec::new();
    walk(&json, &mut records);
    records
}

fn field(r: &serde_json::Map<String, serde_json::Value>, names: &[&str]) -> Option<String> {
    names
        .iter()
        .find_map(|n| r.get(*n).and_then(|v| v.as_str()).map(str::to_string))
}

/// tshark's absolute times ("Nov 20, 2026 10:00:00.123000000 UTC") in µs.
fn tshark_time(text: &str) -> i64 {
    jiff::fmt::strtime::parse("%b %e, %Y %H:%M:%S%.f UTC", text.trim())
        .and_then(|tm| tm.to_datetime())
        .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
        .map(|z| z.timestamp().as_microsecond())
        .unwrap_or_else(|e| panic!("tshark's time {text:?}: {e}"))
}

fn tshark_installed() -> bool {
    Command::new("tshark").arg("-v").output().is_ok()
}

#[test]
fn tshark_reads_hawkings_flows_and_nat_events_as_encoded() {
    if !tshark_installed() {
        eprintln!(
            "tshark is not installed: Hawking's encoder is not checked by an independent decoder"
        );
        return;
    }
    let mut packets = Vec::new();
    let mut sent_flows = Vec::new();
    // What flowgen sends: IPFIX with millisecond times, v9 with uptime times, and v5.
    for (version, times, id) in [
        (Version::Ipfix, TimeEncoding::Milliseconds, 256),
        (Version::V9, TimeEncoding::SysUpTime, 257),
    ] {
        for ipv6 in [false, true] {
            let t = flow_template(id + 2 * ipv6 as u16, ipv6, times);
            let f = flows(ipv6);
            let mut b = PacketBuilder::new(version, CLOCK, packets.len() as u32, 1);
            b.template(&t).flows(&t, CLOCK, &f);
            packets.push(b.finish());
            sent_flows.extend(f.into_iter().map(|r| (version, times, r)));
        }
    }
    let v5 = flows(false);
    packets.push(encode_v5(CLOCK, 9, 0, &v5));
    sent_flows.extend(
        v5.into_iter()
            .map(|r| (Version::V5, TimeEncoding::SysUpTime, r)),
    );
    // What nat-agent sends.
    let mut sent_nat = Vec::new();
    for ipv6 in [false, true] {
        let t = nat_event_template(300 + ipv6 as u16, ipv6);
        let e = nat_events(ipv6);
        let mut b = PacketBuilder::new(Version::Ipfix, CLOCK, 100, 2);
        b.template(&t).nat_events(&t, &e);
        packets.push(b.finish());
        sent_nat.extend(e);
    }

    let dir = tempfile::tempdir().expect("tempdir");
    let pcap = dir.path().join("hawking-export.pcap");
    write_pcap(&pcap, &packets);
    let records = tshark_records(&pcap);

    let addr = |r: &serde_json::Map<String, serde_json::Value>, v4: &str, v6: &str| {
        field(r, &[v4, v6])
            .and_then(|a| a.parse::<IpAddr>().ok())
            .map(ip_to_u128)
    };
    let num = |r: &serde_json::Map<String, serde_json::Value>, names: &[&str]| {
        field(r, names).and_then(|v| {
            v.strip_prefix("0x")
                .map_or_else(|| v.parse().ok(), |h| u64::from_str_radix(h, 16).ok())
        })
    };
    let (nat_records, flow_records): (Vec<_>, Vec<_>) = records
        .iter()
        .partition(|r| r.contains_key("cflow.nat_event"));
    assert_eq!(
        flow_records.len(),
        sent_flows.len(),
        "tshark reads every flow record: {flow_records:?}"
    );
    for (r, (version, times, f)) in flow_records.iter().zip(&sent_flows) {
        let got = (
            addr(r, "cflow.srcaddr", "cflow.srcaddrv6"),
            addr(r, "cflow.dstaddr", "cflow.dstaddrv6"),
            num(r, &["cflow.srcport"]),
            num(r, &["cflow.dstport"]),
            num(r, &["cflow.protocol"]),
            num(r, &["cflow.tcpflags"]),
            num(r, &["cflow.octets", "cflow.octets64"]),
            num(r, &["cflow.packets", "cflow.packets64"]),
            num(r, &["cflow.inputint"]),
            num(r, &["cflow.outputint"]),
        );
        // v5 has 32-bit counters and 16-bit interfaces: what it can carry is encoded.
        let (bytes, out_if) = if *version == Version::V5 {
            (f.bytes as u32 as u64, f.out_if as u16 as u64)
        } else {
            (f.bytes, f.out_if as u64)
        };
        let want = (
            Some(f.src_ip),
            Some(f.dst_ip),
            Some(f.src_port as u64),
            Some(f.dst_port as u64),
            Some(f.protocol as u64),
            Some(f.tcp_flags as u64),
            Some(bytes),
            Some(f.packets),
            Some(f.in_if as u64),
            Some(out_if),
        );
        assert_eq!(got, want, "{version:?} flow {r:?}");
        if *times == TimeEncoding::Milliseconds {
            let start = field(r, &["cflow.abstimestart"]).map(|t| tshark_time(&t));
            let end = field(r, &["cflow.abstimeend"]).map(|t| tshark_time(&t));
            assert_eq!(
                (start, end),
                (Some(f.flow_start), Some(f.flow_end)),
                "{r:?}"
            );
        }
    }
    assert_eq!(nat_records.len(), sent_nat.len(), "{nat_records:?}");
    for (r, e) in nat_records.iter().zip(&sent_nat) {
        let kind = match num(r, &["cflow.nat_event"]) {
            // RFC 8158: 4/5 are NAT44 session create/delete; 1/2 the historic create/delete.
            Some(1 | 4) => Some(NatEventKind::Create),
            Some(2 | 5) => Some(NatEventKind::Delete),
            _ => None,
        };
        let got = (
            kind,
            field(r, &["cflow.observation_time_milliseconds"]).map(|t| tshark_time(&t)),
            num(r, &["cflow.protocol"]),
            addr(r, "cflow.srcaddr", "cflow.srcaddrv6"),
            num(r, &["cflow.srcport"]),
            addr(
                r,
                "cflow.post_natsource_ipv4_address",
                "cflow.post_nat_source_ipv6_address",
            ),
            num(r, &["cflow.post_naptsource_transport_port"]),
            addr(r, "cflow.dstaddr", "cflow.dstaddrv6"),
            num(r, &["cflow.dstport"]),
        );
        let want = (
            e.kind,
            Some(e.at),
            Some(e.protocol as u64),
            Some(e.inside_ip),
            Some(e.inside_port as u64),
            Some(e.outside_ip),
            Some(e.outside_port as u64),
            Some(e.remote_ip),
            Some(e.remote_port as u64),
        );
        assert_eq!(
            got,
            want,
            "NAT event {r:?} (inside {})",
            u128_to_ip(e.inside_ip)
        );
    }
}
