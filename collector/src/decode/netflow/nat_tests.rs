//! NAT logging (RFC 8158): session events decode into `nat_events`, never into flows.

use std::net::SocketAddr;

use hawking_schemas::ip::v4_to_u128;
use hawking_schemas::nat::{NatEvent, NatEventKind};
use hawking_schemas::pipeline::SourceBatch;

use super::NetflowDecoder;
use super::wire::Version;
use crate::export::{ExporterClock, PacketBuilder, nat_event_template};

const AGENT: &str = "192.0.2.7:4739";
const CLOCK: ExporterClock = ExporterClock {
    boot_ms: 1_795_000_000_000,
    export_ms: 1_795_168_800_000,
};

fn event(kind: NatEventKind, at_ms: i64, inside_port: u16, outside_port: u16) -> NatEvent {
    NatEvent {
        at: at_ms * 1000,
        kind: Some(kind),
        exporter: v4_to_u128(0xc000_0207),
        observation_domain: 3,
        protocol: 6,
        inside_ip: v4_to_u128(0x0a04_0307),
        inside_port,
        outside_ip: v4_to_u128(0xc633_6401),
        outside_port,
        remote_ip: v4_to_u128(0x5db8_d822),
        remote_port: 443,
    }
}

fn packet(with_template: bool, ipv6: bool, events: &[NatEvent]) -> Vec<u8> {
    let t = nat_event_template(300, ipv6);
    let mut b = PacketBuilder::new(Version::Ipfix, CLOCK, 1, 3);
    if with_template {
        b.template(&t);
    }
    b.nat_events(&t, events);
    b.finish()
}

fn decode(packets: &[Vec<u8>]) -> (SourceBatch, NetflowDecoder) {
    let mut decoder = NetflowDecoder::new(Default::default()).unwrap();
    let mut out = SourceBatch::default();
    for p in packets {
        decoder.decode(AGENT.parse::<SocketAddr>().unwrap(), p, 7, &mut out);
    }
    (out, decoder)
}

#[test]
fn session_create_and_delete_become_nat_events_not_flows() {
    let events = [
        event(NatEventKind::Create, 1_795_168_790_123, 40_000, 61_000),
        event(NatEventKind::Delete, 1_795_168_799_456, 40_000, 61_000),
    ];
    let (out, mut decoder) = decode(&[packet(true, false, &events)]);
    assert_eq!(out.flows.len(), 0, "NAT events are not flows");
    assert_eq!(out.nat_events, events);
    let agent = AGENT.parse::<SocketAddr>().unwrap();
    assert_eq!(
        out.nat_alive.iter().map(|a| a.exporter).collect::<Vec<_>>(),
        [hawking_schemas::ip::ip_to_u128(agent.ip())],
        "announcing NAT templates shows the NAT is alive"
    );
    let counters: Vec<_> = decoder.drain_counters().collect();
    assert_eq!(counters[0].1.nat_events, 2);
    assert_eq!(counters[0].1.flows, 0);
}

#[test]
fn ipv6_sessions_keep_their_addresses() {
    let mut e = event(NatEventKind::Create, 1_795_168_790_000, 5353, 5353);
    e.inside_ip = 0xfd00_0000_0000_0000_0000_0000_0000_0007;
    e.outside_ip = 0x2001_0db8_0000_0000_0000_0000_0000_0001;
    e.remote_ip = 0x2001_0db8_ffff_0000_0000_0000_0000_0053;
    let (out, _) = decode(&[packet(true, true, &[e])]);
    assert_eq!(out.nat_events, [e]);
}

#[test]
fn events_before_their_template_are_held_and_decoded_when_it_arrives() {
    let early = event(NatEventKind::Create, 1_795_168_790_000, 40_001, 61_001);
    let later = event(NatEventKind::Delete, 1_795_168_791_000, 40_001, 61_001);
    let (out, _) = decode(&[
        packet(false, false, &[early]),
        packet(true, false, &[later]),
    ]);
    let mut got = out.nat_events.clone();
    got.sort_by_key(|e| e.at);
    assert_eq!(got, [early, later]);
}

#[test]
fn other_nat_events_are_counted_and_dropped() {
    // natEvent 3 is "NAT addresses exhausted": no session to map flows through.
    let mut e = event(NatEventKind::Create, 1_795_168_790_000, 1, 1);
    e.kind = None;
    let (out, mut decoder) = decode(&[packet(true, false, &[e])]);
    assert!(out.nat_events.is_empty());
    let counters: Vec<_> = decoder.drain_counters().collect();
    assert_eq!(counters[0].1.nat_events_dropped, 1);
}

/// An NSEL-style flow template: the 5-tuple, counters and times, and the post-NAT tuple.
fn firewall_flow_packet(post_src: [u8; 4], post_sport: u16) -> Vec<u8> {
    use super::template::{FieldSpec, TemplateLayout};
    let f = |id, length| FieldSpec {
        id,
        length,
        enterprise: None,
    };
    let t = TemplateLayout {
        template_id: 263,
        scope_fields: 0,
        options: false,
        fields: vec![
            f(8, 4),
            f(12, 4),
            f(7, 2),
            f(11, 2),
            f(4, 1),
            f(1, 8),
            f(2, 8),
            f(152, 8),
            f(153, 8),
            f(225, 4),
            f(226, 4),
            f(227, 2),
            f(228, 2),
        ],
    };
    let mut rec = Vec::new();
    rec.extend_from_slice(&[10, 4, 3, 7, 93, 184, 216, 34]);
    rec.extend_from_slice(&40_000u16.to_be_bytes());
    rec.extend_from_slice(&443u16.to_be_bytes());
    rec.push(6);
    rec.extend_from_slice(&1_500u64.to_be_bytes());
    rec.extend_from_slice(&3u64.to_be_bytes());
    rec.extend_from_slice(&1_795_168_790_123u64.to_be_bytes());
    rec.extend_from_slice(&1_795_168_799_000u64.to_be_bytes());
    rec.extend_from_slice(&post_src);
    rec.extend_from_slice(&[93, 184, 216, 34]);
    rec.extend_from_slice(&post_sport.to_be_bytes());
    rec.extend_from_slice(&443u16.to_be_bytes());
    let mut b = PacketBuilder::new(Version::Ipfix, CLOCK, 1, 3);
    b.template(&t).raw_set(263, &rec);
    b.finish()
}

#[test]
fn a_firewall_flow_with_both_tuples_also_yields_its_translation() {
    let (out, mut decoder) = decode(&[firewall_flow_packet([198, 51, 100, 1], 61_000)]);
    assert_eq!(out.flows.len(), 1, "the record stays a flow");
    let flow = out.flows.record(0);
    assert_eq!(
        (flow.src_ip, flow.src_port, flow.bytes),
        (v4_to_u128(0x0a04_0307), 40_000, 1_500)
    );
    let mut want = event(NatEventKind::Create, 1_795_168_790_123, 40_000, 61_000);
    want.outside_ip = v4_to_u128(0xc633_6401);
    assert_eq!(
        out.nat_events,
        [want],
        "the translation in force from the flow's start"
    );
    let counters: Vec<_> = decoder.drain_counters().collect();
    assert_eq!((counters[0].1.flows, counters[0].1.nat_events), (1, 1));
}

#[test]
fn flows_whose_source_was_not_translated_yield_no_translation() {
    // Post-NAT source equal to the pre-NAT one (only the destination could be translated),
    // and a post-NAT source left zero by the exporter.
    for (post, port) in [([10, 4, 3, 7], 40_000), ([0, 0, 0, 0], 0)] {
        let (out, _) = decode(&[firewall_flow_packet(post, port)]);
        assert_eq!(out.flows.len(), 1);
        assert!(out.nat_events.is_empty(), "{post:?}: {:?}", out.nat_events);
    }
}
