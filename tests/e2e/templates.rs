//! Template handling a production collector must get right, through real sockets: per-exporter
//! scoping, data that arrives before its template, templates surviving a restart, and
//! sampling announced in options data.

use std::net::UdpSocket;
use std::path::Path;

use hawking_collector::decode::netflow::template::TemplateLayout;
use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, flow_template, sampling_options_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::{u128_to_ip, v4_to_u128};

use crate::support::*;

const CLOCK: ExporterClock = ExporterClock {
    boot_ms: 1_795_100_000_000,
    export_ms: 1_795_168_800_000,
};

fn flows(seed: u32, n: usize, ipv6: bool) -> Vec<FlowRecord> {
    (0..n as u32)
        .map(|i| {
            let ip = |x: u32| {
                if ipv6 {
                    (0xfd00u128 << 112) | x as u128
                } else {
                    v4_to_u128(0x0a00_0000 | x)
                }
            };
            FlowRecord {
                flow_start: (CLOCK.export_ms - 60_000 + i as i64 * 1000) * 1000,
                flow_end: (CLOCK.export_ms - 30_000 + i as i64 * 1000) * 1000,
                src_ip: ip(seed * 1000 + i),
                dst_ip: ip(seed * 1000 + 500 + i),
                src_port: 40_000 + i as u16,
                dst_port: 443,
                protocol: 6,
                tcp_flags: 0x1b,
                bytes: 1000 * (i as u64 + 1),
                packets: i as u64 + 1,
                sampling_rate: 1,
                in_if: 1,
                out_if: 2,
            }
        })
        .collect()
}

/// The stored flows of one exporter, as (src, dst, src_port, bytes, packets, start_us, end_us).
fn stored(data: &Path, exporter: &str) -> Vec<(String, String, i64, i64, i64, i64, i64)> {
    sql(
        data,
        &format!(
            "SELECT src_ip, dst_ip, src_port, bytes, packets, CAST(flow_start AS BIGINT) AS s, CAST(flow_end AS BIGINT) AS e \
             FROM flows WHERE exporter = '{exporter}' ORDER BY src_port, src_ip, dst_ip"
        ),
    )
    .into_iter()
    .map(|r| {
        let n = |k: &str| r[k].as_i64().unwrap();
        (r["src_ip"].as_str().unwrap().into(), r["dst_ip"].as_str().unwrap().into(), n("src_port"), n("bytes"), n("packets"), n("s"), n("e"))
    })
    .collect()
}

fn expected(flows: &[FlowRecord], rate: u64) -> Vec<(String, String, i64, i64, i64, i64, i64)> {
    let mut v: Vec<_> = flows
        .iter()
        .map(|f| {
            (
                u128_to_ip(f.src_ip).to_string(),
                u128_to_ip(f.dst_ip).to_string(),
                f.src_port as i64,
                (f.bytes * rate) as i64,
                (f.packets * rate) as i64,
                f.flow_start,
                f.flow_end,
            )
        })
        .collect();
    v.sort_by(|a, b| (a.2, &a.0, &a.1).cmp(&(b.2, &b.0, &b.1)));
    v
}

fn send(socket: &UdpSocket, to: std::net::SocketAddr, packet: Vec<u8>) {
    socket.send_to(&packet, to).unwrap();
}

#[test]
fn two_exporters_reusing_a_template_id_with_different_layouts_never_mix() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hawking = Hawking::start(&data, &[]);
    let a = exporter_socket("127.0.0.2");
    let b = exporter_socket("127.0.0.3");
    // Same template ID 256: A sends IPv4 with millisecond times; B sends IPv6 with the fields
    // in the opposite order and NTP microsecond times.
    let ta = flow_template(256, false, TimeEncoding::Milliseconds);
    let mut tb = flow_template(256, true, TimeEncoding::Microseconds);
    tb.fields.reverse();
    let (fa, fb) = (flows(1, 20, false), flows(2, 20, true));
    for (sock, t, _f) in [(&a, &ta, &fa), (&b, &tb, &fb)] {
        let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 7);
        p.template(t);
        send(sock, hawking.netflow, p.finish());
    }
    for i in 0..2 {
        for (sock, t, f) in [(&a, &ta, &fa), (&b, &tb, &fb)] {
            let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 1 + i, 7);
            p.flows(t, CLOCK, &f[i as usize * 10..(i as usize + 1) * 10]);
            send(sock, hawking.netflow, p.finish());
        }
    }
    hawking.wait_metric("hawking_flows_total", &[], 40.0);
    hawking.stop();
    assert_eq!(stored(&data, "127.0.0.2"), expected(&fa, 1));
    assert_eq!(stored(&data, "127.0.0.3"), expected(&fb, 1));
}

#[test]
fn data_before_its_template_is_held_and_decoded_with_its_own_header() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hawking = Hawking::start(&data, &[]);
    let exporter = exporter_socket("127.0.0.5");
    let t = flow_template(300, false, TimeEncoding::SysUpTime);
    let f = flows(3, 15, false);
    // v9 FIRST/LAST_SWITCHED are relative to the header's uptime: the data packet and the
    // later template packet carry different clocks, and the data's own must be used.
    let mut p = PacketBuilder::new(Version::V9, CLOCK, 1, 9);
    p.flows(&t, CLOCK, &f);
    send(&exporter, hawking.netflow, p.finish());
    hawking.wait_metric(
        "hawking_netflow_sets_held_total",
        &[("exporter", "127.0.0.5")],
        1.0,
    );
    assert_eq!(
        hawking.metric("hawking_flows_total", &[("exporter", "127.0.0.5")]),
        0.0
    );

    let later = ExporterClock {
        boot_ms: CLOCK.boot_ms,
        export_ms: CLOCK.export_ms + 45_000,
    };
    let mut p = PacketBuilder::new(Version::V9, later, 2, 9);
    p.template(&t);
    send(&exporter, hawking.netflow, p.finish());
    hawking.wait_metric("hawking_flows_total", &[("exporter", "127.0.0.5")], 15.0);
    assert_eq!(
        hawking.metric(
            "hawking_netflow_sets_replayed_total",
            &[("exporter", "127.0.0.5")]
        ),
        1.0
    );
    hawking.stop();
    assert_eq!(stored(&data, "127.0.0.5"), expected(&f, 1));
}

#[test]
fn data_whose_template_never_comes_is_dropped_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hawking.toml");
    std::fs::write(&config, "[netflow.decoder]\npending_max_age_secs = 0\n").unwrap();
    let data = tmp.path().join("data");
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    // Another exporter sends the same template ID with its data: its flows are stored, so
    // the store is there to be read and an empty answer for 127.0.0.6 means nothing of it
    // (and its template, being another exporter's, must not decode 127.0.0.6's data).
    let control = exporter_socket("127.0.0.4");
    let tc = flow_template(301, false, TimeEncoding::Milliseconds);
    let fc = flows(9, 5, false);
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 1);
    p.template(&tc).flows(&tc, CLOCK, &fc);
    send(&control, hawking.netflow, p.finish());
    let exporter = exporter_socket("127.0.0.6");
    let t = flow_template(301, false, TimeEncoding::Milliseconds);
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 1, 1);
    p.flows(&t, CLOCK, &flows(4, 5, false));
    send(&exporter, hawking.netflow, p.finish());
    // The next datagram expires the held set (its age limit is 0 s).
    std::thread::sleep(std::time::Duration::from_millis(20));
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 2, 1);
    p.flows(&t, CLOCK, &flows(5, 5, false));
    send(&exporter, hawking.netflow, p.finish());
    hawking.wait_metric(
        "hawking_flows_dropped_total",
        &[("exporter", "127.0.0.6"), ("reason", "missing_template")],
        1.0,
    );
    hawking.wait_metric("hawking_flows_total", &[("exporter", "127.0.0.4")], 5.0);
    assert_eq!(
        hawking.metric("hawking_flows_total", &[("exporter", "127.0.0.6")]),
        0.0
    );
    hawking.stop();
    assert_eq!(stored(&data, "127.0.0.4"), expected(&fc, 1));
    assert_eq!(
        stored(&data, "127.0.0.6"),
        vec![],
        "nothing of the exporter whose template never came was stored"
    );
}

#[test]
fn templates_persist_across_a_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let exporter = exporter_socket("127.0.0.7");
    let t = flow_template(400, false, TimeEncoding::Milliseconds);
    let (before, after) = (flows(6, 10, false), flows(7, 10, false));

    let first = Hawking::start(&data, &[]);
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 0, 3);
    p.template(&t).flows(&t, CLOCK, &before);
    send(&exporter, first.netflow, p.finish());
    first.wait_metric("hawking_flows_total", &[], 10.0);
    first.stop();

    // Same exporter (address, port, domain) after the restart sends data only.
    let second = Hawking::start(&data, &[]);
    let mut p = PacketBuilder::new(Version::Ipfix, CLOCK, 1, 3);
    p.flows(&t, CLOCK, &after);
    send(&exporter, second.netflow, p.finish());
    second.wait_metric("hawking_flows_total", &[("exporter", "127.0.0.7")], 10.0);
    assert_eq!(
        second.metric("hawking_netflow_sets_held_total", &[]),
        0.0,
        "decoded without waiting for a template"
    );
    second.stop();
    let mut all = before.clone();
    all.extend(after);
    assert_eq!(stored(&data, "127.0.0.7"), expected(&all, 1));
}

#[test]
fn sampling_announced_in_options_scales_counters() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hawking = Hawking::start(&data, &[]);
    for (ip, version, rate) in [
        ("127.0.0.8", Version::Ipfix, 10u32),
        ("127.0.0.9", Version::V9, 100),
    ] {
        let exporter = exporter_socket(ip);
        let t = flow_template(
            260,
            false,
            if version == Version::V9 {
                TimeEncoding::SysUpTime
            } else {
                TimeEncoding::Milliseconds
            },
        );
        let o: TemplateLayout = sampling_options_template(261, version);
        let mut p = PacketBuilder::new(version, CLOCK, 0, 1);
        p.template(&t)
            .template(&o)
            .sampling_options(&o, CLOCK, rate)
            .flows(&t, CLOCK, &flows(8, 12, false));
        send(&exporter, hawking.netflow, p.finish());
    }
    hawking.wait_metric("hawking_flows_total", &[], 24.0);
    hawking.stop();
    assert_eq!(
        stored(&data, "127.0.0.8"),
        expected(&flows(8, 12, false), 10)
    );
    assert_eq!(
        stored(&data, "127.0.0.9"),
        expected(&flows(8, 12, false), 100)
    );
    let rates = sql(
        &data,
        "SELECT exporter, min(sampling_rate) AS lo, max(sampling_rate) AS hi FROM flows GROUP BY exporter ORDER BY exporter",
    );
    let got: Vec<(String, i64, i64)> = rates
        .iter()
        .map(|r| {
            (
                r["exporter"].as_str().unwrap().into(),
                r["lo"].as_i64().unwrap(),
                r["hi"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![("127.0.0.8".into(), 10, 10), ("127.0.0.9".into(), 100, 100)]
    );
}
