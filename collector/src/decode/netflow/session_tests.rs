//! Template scope over TCP: each connection (peer address and port) is a transport session
//! with templates of its own, and a session's end forgets them (RFC 7011 §8).

use std::net::SocketAddr;

use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::v4_to_u128;
use hawking_schemas::pipeline::SourceBatch;

use super::NetflowDecoder;
use super::wire::Version;
use crate::export::{ExporterClock, PacketBuilder, TimeEncoding, flow_template};

const CLOCK: ExporterClock = ExporterClock {
    boot_ms: 1_795_000_000_000,
    export_ms: 1_795_168_800_000,
};

fn flow(src: u32, bytes: u64) -> FlowRecord {
    FlowRecord {
        flow_start: (CLOCK.export_ms - 4000) * 1000,
        flow_end: (CLOCK.export_ms - 1000) * 1000,
        src_ip: v4_to_u128(src),
        dst_ip: v4_to_u128(0x0a00_0001),
        src_port: 1234,
        dst_port: 443,
        protocol: 6,
        tcp_flags: 0x18,
        bytes,
        packets: 3,
        sampling_rate: 1,
        in_if: 1,
        out_if: 2,
    }
}

fn packet(with_template: bool, times: TimeEncoding, flows: &[FlowRecord]) -> Vec<u8> {
    // One template ID, two layouts: the two connections below disagree on what 256 means.
    let t = flow_template(256, false, times);
    let mut b = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 1);
    if with_template {
        b.template(&t);
    }
    b.flows(&t, CLOCK, flows);
    b.finish()
}

fn decode(d: &mut NetflowDecoder, from: SocketAddr, p: &[u8]) -> SourceBatch {
    let mut out = SourceBatch::default();
    d.decode(from, p, 7, &mut out);
    out
}

#[test]
fn two_connections_from_one_exporter_keep_their_own_templates() {
    let mut d = NetflowDecoder::new(Default::default()).unwrap();
    let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
    let b: SocketAddr = "192.0.2.7:40002".parse().unwrap();
    // Both announce template 256; a with millisecond times, b with seconds (a record of
    // different length): each connection's data must decode by its own.
    decode(&mut d, a, &packet(true, TimeEncoding::Milliseconds, &[]));
    decode(&mut d, b, &packet(true, TimeEncoding::Seconds, &[]));
    let out_a = decode(
        &mut d,
        a,
        &packet(false, TimeEncoding::Milliseconds, &[flow(0x0a01_0001, 100)]),
    );
    let out_b = decode(
        &mut d,
        b,
        &packet(false, TimeEncoding::Seconds, &[flow(0x0a01_0002, 200)]),
    );
    assert_eq!(out_a.flows.src_ip, vec![v4_to_u128(0x0a01_0001)]);
    assert_eq!(out_a.flows.bytes, vec![100]);
    assert_eq!(out_b.flows.src_ip, vec![v4_to_u128(0x0a01_0002)]);
    assert_eq!(out_b.flows.bytes, vec![200]);
    assert_eq!(
        out_b.flows.flow_start,
        vec![(CLOCK.export_ms - 4000) * 1000]
    );
    assert_eq!(d.scope_count(), 2);
}

#[test]
fn a_session_that_ended_is_forgotten_and_a_reconnect_relearns() {
    let mut d = NetflowDecoder::new(Default::default()).unwrap();
    let a: SocketAddr = "192.0.2.7:40001".parse().unwrap();
    let other: SocketAddr = "192.0.2.7:40002".parse().unwrap();
    let ms = TimeEncoding::Milliseconds;
    decode(&mut d, a, &packet(true, ms, &[flow(0x0a01_0001, 1)]));
    decode(&mut d, other, &packet(true, ms, &[flow(0x0a01_0002, 2)]));
    // Data the ended session held for a template it never sent is dropped with it.
    let mut held = PacketBuilder::new(Version::Ipfix, CLOCK, 1, 1);
    held.flows(&flow_template(999, false, ms), CLOCK, &[flow(1, 1)]);
    assert!(decode(&mut d, a, &held.finish()).flows.is_empty());
    assert_eq!(d.pending().0, 1);
    d.end_session(a);
    assert_eq!(d.scope_count(), 1);
    assert_eq!(d.pending().0, 0);
    let dropped: u64 = d
        .drain_counters()
        .map(|(_, c)| c.sets_dropped_missing_template)
        .sum();
    assert_eq!(dropped, 1);

    // A new connection from the same address and port: its data is not decoded by the old
    // session's template, but held until it sends its own — here with another layout.
    let secs = TimeEncoding::Seconds;
    let early = decode(&mut d, a, &packet(false, secs, &[flow(0x0a01_0003, 3)]));
    assert!(early.flows.is_empty());
    assert_eq!(d.pending().0, 1);
    let late = decode(&mut d, a, &packet(true, secs, &[flow(0x0a01_0004, 4)]));
    let mut src = late.flows.src_ip.clone();
    src.sort();
    assert_eq!(src, vec![v4_to_u128(0x0a01_0003), v4_to_u128(0x0a01_0004)]);
    // The other connection was never touched.
    let still = decode(&mut d, other, &packet(false, ms, &[flow(0x0a01_0005, 5)]));
    assert_eq!(still.flows.bytes, vec![5]);
}
