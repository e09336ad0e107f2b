//! Hostile and broken datagrams: each is counted against its exporter with a reason, none
//! stops the listener, and good data sent after them (and before them) is stored.

use hawking_collector::decode::netflow::template::{FieldSpec, TemplateLayout};
use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, encode_v5, flow_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::v4_to_u128;

use crate::support::*;

const CLOCK: ExporterClock = ExporterClock {
    boot_ms: 1_795_100_000_000,
    export_ms: 1_795_168_800_000,
};

fn flow(i: u32) -> FlowRecord {
    FlowRecord {
        flow_start: (CLOCK.export_ms - 5000) * 1000,
        flow_end: (CLOCK.export_ms - 1000) * 1000,
        src_ip: v4_to_u128(0x0a01_0000 + i),
        dst_ip: v4_to_u128(0x0a02_0000 + i),
        src_port: 1000 + i as u16,
        dst_port: 80,
        protocol: 6,
        tcp_flags: 2,
        bytes: 100,
        packets: 1,
        sampling_rate: 1,
        in_if: 0,
        out_if: 0,
    }
}

/// Malformed datagrams and the `reason` each must be counted under.
fn corpus() -> Vec<(&'static str, Vec<u8>)> {
    let t = flow_template(256, false, TimeEncoding::Milliseconds);
    let good_ipfix = {
        let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 1);
        p.template(&t).flows(&t, CLOCK, &[flow(0), flow(1)]);
        p.finish()
    };
    let good_v9 = {
        let mut p = PacketBuilder::new(Version::V9, CLOCK, 0, 1);
        p.template(&t).flows(&t, CLOCK, &[flow(0)]);
        p.finish()
    };
    let good_v5 = encode_v5(CLOCK, 0, 0, &[flow(0), flow(1)]);
    let mut c = vec![
        ("too_short", vec![]),
        ("too_short", vec![0]),
        ("unsupported_version", vec![0, 7, 0, 0, 1, 2, 3, 4]),
        ("unsupported_version", b"GET / HTTP/1.1\r\n\r\n".to_vec()),
        ("too_short", good_v9[..19].to_vec()),
        ("too_short", good_ipfix[..15].to_vec()),
        ("bad_record_count", good_v5[..good_v5.len() - 1].to_vec()),
        (
            "bad_message_length",
            good_ipfix[..good_ipfix.len() - 3].to_vec(),
        ),
    ];
    // v5 claiming 31 records.
    let mut v5 = good_v5.clone();
    v5[3] = 31;
    c.push(("bad_record_count", v5));
    // IPFIX header lies below its own size.
    let mut ipfix = good_ipfix.clone();
    ipfix[2..4].copy_from_slice(&8u16.to_be_bytes());
    c.push(("bad_message_length", ipfix));
    // A set whose length runs past the message (v9: the datagram).
    let mut v9 = good_v9.clone();
    let data_set = 20 + 4 + 4 + 4 * t.fields.len(); // after the header and the template set
    v9[data_set + 2..data_set + 4].copy_from_slice(&4000u16.to_be_bytes());
    c.push(("bad_set_length", v9));
    // A set length of 2 (shorter than its own header).
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 1);
    p.raw_set(256, &[0; 8]);
    let mut bad = p.finish();
    bad[18..20].copy_from_slice(&2u16.to_be_bytes());
    c.push(("bad_set_length", bad));
    // A template whose field count runs past its set: rejected by the template parser.
    let mut p = PacketBuilder::new(Version::V9, CLOCK, 0, 1);
    p.raw_set(0, &[1, 0, 0, 200, 0, 8, 0, 4]);
    c.push(("bad_template", p.finish()));
    // A variable-length record whose length prefix runs past the set.
    let var = TemplateLayout {
        template_id: 900,
        scope_fields: 0,
        options: false,
        fields: vec![
            FieldSpec {
                id: 8,
                length: 4,
                enterprise: None,
            },
            FieldSpec {
                id: 82,
                length: 65535,
                enterprise: None,
            },
        ],
    };
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 1);
    p.template(&var)
        .raw_set(900, &[10, 0, 0, 1, 250, b'x', b'y', 0]);
    c.push(("truncated_record", p.finish()));
    c
}

#[test]
fn malformed_datagrams_are_counted_and_good_data_still_stored() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hawking = Hawking::start(&data, &[]);
    let bad = exporter_socket("127.0.0.10");
    let good = exporter_socket("127.0.0.11");
    let t = flow_template(256, false, TimeEncoding::Milliseconds);
    let send_good = |seq: u32, f: &[FlowRecord]| {
        let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, seq, 1);
        p.template(&t).flows(&t, CLOCK, f);
        good.send_to(&p.finish(), hawking.netflow).unwrap();
    };
    send_good(0, &[flow(10), flow(11)]);
    let corpus = corpus();
    for (_, datagram) in &corpus {
        bad.send_to(datagram, hawking.netflow).unwrap();
    }
    send_good(1, &[flow(12)]);
    hawking.wait_metric(
        "hawking_netflow_packets_total",
        &[("exporter", "127.0.0.10")],
        corpus.len() as f64,
    );
    hawking.wait_metric("hawking_flows_total", &[("exporter", "127.0.0.11")], 3.0);

    let mut reasons: Vec<&str> = corpus.iter().map(|(r, _)| *r).collect();
    reasons.sort();
    reasons.dedup();
    for reason in reasons {
        let want = corpus.iter().filter(|(r, _)| *r == reason).count() as f64;
        let got = hawking.metric(
            "hawking_decode_errors_total",
            &[("exporter", "127.0.0.10"), ("reason", reason)],
        );
        assert_eq!(got, want, "decode errors with reason {reason}");
    }
    let report = hawking.stop();
    assert_eq!(report.flows, report.rows_committed);
    assert_eq!(
        sql_i64(
            &data,
            "SELECT count(*) FROM flows WHERE exporter = '127.0.0.11'"
        ),
        3
    );
}
