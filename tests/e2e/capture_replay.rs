//! `hawking replay --capture FILE`: the NetFlow/IPFIX exports inside a packet capture,
//! decoded and attributed offline, without a running server.
//! - Real exporters' captures decode to the records tshark reads in them.
//! - `--send` re-sends a capture's exports to a running `hawking serve`, which stores the
//!   same flows.
//! - A capture of an exporter sending to an odd port, next to a fragment and a frame cut
//!   short by the snap length, attributes its flows with a store's history at the flows' own
//!   time, and counts what it skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{ExporterClock, PacketBuilder, TimeEncoding, flow_template};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use serde_json::Value;

use crate::support::hawking_bin;

fn real_exports() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-exports");
    if dir.join("pcap_expected.tsv").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "SKIPPED: {} is absent: the real exporters' captures are not here to replay",
            dir.display()
        );
        None
    }
}

fn replay(args: &[&str]) -> (Vec<Value>, String) {
    let out = Command::new(hawking_bin())
        .args(["replay", "--format", "json"])
        .args(args)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "replay {args:?}: {stderr}");
    // JSON output is arrays of rows, one per batch written.
    let rows = serde_json::Deserializer::from_slice(&out.stdout)
        .into_iter::<Value>()
        .flat_map(|v| match v.unwrap() {
            Value::Array(rows) => rows,
            other => vec![other],
        })
        .collect();
    (rows, stderr)
}

/// (src, dst, proto, sport, dport) of a record, as text ("" where tshark shows none).
type Tuple = (String, String, String, String, String);

/// The flow records tshark reads in `file`, sorted.
fn tshark_flows(dir: &Path, file: &str) -> Vec<Tuple> {
    let table = std::fs::read_to_string(dir.join("pcap_expected.tsv")).unwrap();
    let mut expected: Vec<Tuple> = table
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        // Records without addresses are options (sampling, interfaces), not flows.
        .filter(|c| c[0] == file && !c[9].is_empty())
        .map(|c| {
            let t = |i: usize| c[i].to_string();
            (t(9), t(10), t(11), t(12), t(13))
        })
        .collect();
    assert!(!expected.is_empty(), "{file} has rows in pcap_expected.tsv");
    expected.sort();
    expected
}

/// The tuples of flow rows (JSON objects from replay or `hawking sql`), sorted.
fn tuples(rows: &[Value]) -> Vec<Tuple> {
    let mut got: Vec<Tuple> = rows
        .iter()
        .map(|r| {
            let text = |k: &str| match &r[k] {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            (
                text("src_ip"),
                text("dst_ip"),
                text("protocol"),
                text("src_port"),
                text("dst_port"),
            )
        })
        .collect();
    got.sort();
    got
}

#[test]
fn exports_inside_real_captures_come_out_as_tshark_reads_them() {
    let Some(dir) = real_exports() else { return };
    for file in [
        "akvorado/netflow/data+templates.pcap",
        "akvorado/netflow/nfv5.pcap",
    ] {
        let (rows, stderr) = replay(&["--capture", dir.join(file).to_str().unwrap()]);
        assert_eq!(tuples(&rows), tshark_flows(&dir, file), "{file}");
        // Nothing was attributed: no history was given.
        assert!(
            rows.iter().all(|r| r["src_attribution"].is_null()),
            "{file}"
        );
        assert!(stderr.contains("unattributed"), "{stderr}");
    }
}

/// A classic pcap of Ethernet frames: (capture time µs, frame, length on the wire).
fn write_pcap(path: &Path, frames: &[(i64, Vec<u8>, usize)]) {
    let mut out = Vec::new();
    out.extend_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    out.extend_from_slice(&2u16.to_le_bytes());
    out.extend_from_slice(&4u16.to_le_bytes());
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(&65535u32.to_le_bytes());
    out.extend_from_slice(&1u32.to_le_bytes()); // Ethernet
    for (at, frame, wire_len) in frames {
        out.extend_from_slice(&((at / 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&((at % 1_000_000) as u32).to_le_bytes());
        out.extend_from_slice(&(frame.len() as u32).to_le_bytes());
        out.extend_from_slice(&(*wire_len as u32).to_le_bytes());
        out.extend_from_slice(frame);
    }
    std::fs::write(path, out).unwrap();
}

/// An Ethernet frame with an IPv4 UDP datagram from `src:sport` to `dst:dport`;
/// `fragment_offset` in 8-byte units (with more-fragments set when non-zero).
fn udp_frame(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    payload: &[u8],
    fragment: bool,
) -> Vec<u8> {
    let mut f = vec![0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00];
    let total = 20 + 8 + payload.len();
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&(total as u16).to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    // More fragments follow this first fragment.
    f.extend_from_slice(if fragment {
        &[0x20, 0x00]
    } else {
        &[0x40, 0x00]
    });
    f.extend_from_slice(&[64, 17, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(&sport.to_be_bytes());
    f.extend_from_slice(&dport.to_be_bytes());
    f.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[test]
fn a_capture_is_attributed_with_a_stores_history_at_the_flows_own_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // shop/web-7d4b9-k8m2p holds 10.4.1.10 from 09:00 to 10:30 on 2026-11-20.
    crate::recorded_cluster::import(&data, "pods-watch.json");
    let t9 = 1_795_165_200i64;
    let flow = |at: i64, sport: u16| FlowRecord {
        flow_start: at * 1_000_000,
        flow_end: (at + 10) * 1_000_000,
        src_ip: parse_ip("10.4.1.10").unwrap(),
        dst_ip: parse_ip("93.184.216.34").unwrap(),
        src_port: sport,
        dst_port: 443,
        protocol: 6,
        tcp_flags: 0x1b,
        bytes: 5000,
        packets: 5,
        sampling_rate: 1,
        in_if: 1,
        out_if: 2,
    };
    // At 09:10, while the pod held the address, and at 11:00, after it let it go.
    let (inside, after) = (t9 + 600, t9 + 7200);
    let clock = ExporterClock {
        boot_ms: (t9 - 3600) * 1000,
        export_ms: (after + 60) * 1000,
    };
    let template = flow_template(300, false, TimeEncoding::Milliseconds);
    let mut p = PacketBuilder::new(Version::Ipfix, clock, 0, 0);
    p.template(&template)
        .flows(&template, clock, &[flow(inside, 40000), flow(after, 40001)]);
    let export = p.finish();
    let at = (after + 60) * 1_000_000;
    let exporter = [192, 0, 2, 7];
    let collector = [192, 0, 2, 200];
    let whole = udp_frame(exporter, 50123, collector, 9995, &export, false);
    let mut cut = whole.clone();
    cut.truncate(60);
    write_pcap(
        &tmp.path().join("incident.pcap"),
        &[
            (at, whole.clone(), whole.len()),
            // The same export again, cut short by a 60-byte snap length: never half-decoded.
            (at + 1, cut, whole.len()),
            // The first fragment of a larger datagram: skipped and counted.
            (
                at + 2,
                udp_frame(exporter, 50123, collector, 9995, &export[..64], true),
                106,
            ),
        ],
    );
    let capture = tmp.path().join("incident.pcap");
    let (rows, stderr) = replay(&[
        "--capture",
        capture.to_str().unwrap(),
        "--history",
        data.to_str().unwrap(),
    ]);
    assert_eq!(rows.len(), 2, "{rows:#?}");
    let by_port = |p: i64| rows.iter().find(|r| r["src_port"] == p).unwrap();
    let held = by_port(40000);
    assert_eq!(held["src_attribution"], "pod", "{held:#}");
    assert_eq!(held["src_workload"], "web");
    assert_eq!(held["src_namespace"], "shop");
    assert_eq!(held["exporter"], "192.0.2.7");
    assert_ne!(
        by_port(40001)["src_attribution"],
        "pod",
        "after the pod let the address go"
    );
    assert!(
        stderr.contains(
            "3 frames, 1 UDP datagrams (1 fragments and 1 truncated frames skipped), 2 flows"
        ),
        "{stderr}"
    );

    // Errors name the flag at fault.
    let out = Command::new(hawking_bin())
        .args(["replay", "--capture"])
        .arg(tmp.path().join("missing.pcap"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--capture"));
    let out = Command::new(hawking_bin())
        .args([
            "replay",
            "--capture",
            capture.to_str().unwrap(),
            "--history",
        ])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--history") && stderr.contains("no Hawking store"),
        "{stderr}"
    );
}

#[test]
fn a_capture_resent_to_a_running_collector_is_stored_as_tshark_reads_it() {
    let Some(dir) = real_exports() else { return };
    let file = "akvorado/netflow/data+templates.pcap";
    let expected = tshark_flows(&dir, file);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let hawking = crate::support::Hawking::start(&data, &[]);
    let out = Command::new(hawking_bin())
        .args(["replay", "--capture"])
        .arg(dir.join(file))
        .args(["--send", &hawking.netflow.to_string(), "--rate", "200"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains(", 0 failed"), "{stderr}");
    hawking.wait_metric("hawking_flows_total", &[], expected.len() as f64);
    hawking.stop();
    let stored = crate::support::sql(
        &data,
        "SELECT src_ip, dst_ip, protocol, src_port, dst_port FROM flows",
    );
    let stored: Vec<Value> = stored.into_iter().map(Value::Object).collect();
    assert_eq!(tuples(&stored), expected);
    // --speed and --rate take positive numbers, and name themselves when they do not.
    let out = Command::new(hawking_bin())
        .args(["replay", "--capture"])
        .arg(dir.join(file))
        .args(["--send", "127.0.0.1:9", "--speed", "0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--speed"));
}

/// Per direction of a TCP/UDP 5-tuple: (packets, bytes), summed over its flows.
type Totals = std::collections::BTreeMap<(String, String, i64, i64, i64), (i64, i64)>;

fn totals(rows: &[Value]) -> Totals {
    let mut out = Totals::new();
    for r in rows {
        let proto = r["protocol"].as_i64().unwrap();
        if !matches!(proto, 6 | 17) {
            continue;
        }
        let key = (
            r["src_ip"].as_str().unwrap().to_string(),
            r["dst_ip"].as_str().unwrap().to_string(),
            r["src_port"].as_i64().unwrap(),
            r["dst_port"].as_i64().unwrap(),
            proto,
        );
        let e = out.entry(key).or_default();
        e.0 += r["packets"].as_i64().unwrap();
        e.1 += r["bytes"].as_i64().unwrap();
    }
    out
}

#[test]
fn raw_packets_are_metered_into_the_flows_softflowd_exports_for_them() {
    let tmp = tempfile::tempdir().unwrap();
    let pcap = crate::support::fixtures().join("traffic.pcap");
    // softflowd reads the capture and exports it to hawking serve: the second opinion.
    let data = tmp.path().join("data");
    let hawking = crate::support::Hawking::start(&data, &[]);
    crate::support::softflowd_export(&pcap, 10, hawking.netflow, &[], tmp.path());
    std::thread::sleep(std::time::Duration::from_millis(500));
    hawking.stop();
    let theirs: Vec<Value> = crate::support::sql(
        &data,
        "SELECT src_ip, dst_ip, src_port, dst_port, protocol, packets, bytes FROM flows",
    )
    .into_iter()
    .map(Value::Object)
    .collect();
    let (ours, stderr) = replay(&["--capture", pcap.to_str().unwrap(), "--meter", "192.0.2.1"]);
    assert!(stderr.contains("packets metered into"), "{stderr}");
    let (ours_t, theirs_t) = (totals(&ours), totals(&theirs));
    assert!(ours_t.len() > 1000, "{} TCP/UDP directions", ours_t.len());
    assert_eq!(
        ours_t, theirs_t,
        "packets and bytes per direction, Hawking vs softflowd"
    );
    // Times are the packets' own: each direction's flows span exactly its first to last
    // packet in the capture.
    let truth = crate::support::pcap_flow_times(&pcap);
    let mut spans: std::collections::HashMap<crate::support::FiveTuple, (i64, i64)> =
        Default::default();
    for r in &ours {
        let key = (
            r["src_ip"].as_str().unwrap().to_string(),
            r["dst_ip"].as_str().unwrap().to_string(),
            r["src_port"].as_i64().unwrap() as u16,
            r["dst_port"].as_i64().unwrap() as u16,
            r["protocol"].as_i64().unwrap() as u8,
        );
        let at = |k: &str| hawking_schemas::time::parse_time(r[k].as_str().unwrap()).unwrap();
        let e = spans.entry(key).or_insert((i64::MAX, i64::MIN));
        e.0 = e.0.min(at("flow_start"));
        e.1 = e.1.max(at("flow_end"));
    }
    for (key, span) in &truth {
        assert_eq!(spans.get(key), Some(span), "{key:?}");
    }
    assert!(ours.iter().all(|r| r["exporter"] == "192.0.2.1"));
}

#[test]
fn serve_meters_the_packets_of_a_live_interface_into_flows() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("SKIPPED: capturing on an interface needs root (CAP_NET_RAW)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("hawking.toml");
    std::fs::write(&config, "[capture]\nidle_timeout_secs = 1.0\n").unwrap();
    // A port nothing listens on, used by this test alone.
    let port = 30000 + (std::process::id() % 20000) as u16;
    let hawking = crate::support::Hawking::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--capture",
            "lo",
            "--capture-filter",
            &format!("udp and dst port {port}"),
        ],
    );
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let sport = socket.local_addr().unwrap().port();
    for _ in 0..5 {
        socket.send_to(&[7u8; 100], ("127.0.0.1", port)).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The flow ends a second after its last packet, without waiting for shutdown.
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("component", "capture")],
        1.0,
    );
    hawking.stop();
    let rows = crate::support::sql(
        &data,
        "SELECT src_ip, dst_ip, src_port, dst_port, protocol, packets, bytes, exporter, source_kind \
         FROM flows",
    );
    assert_eq!(rows.len(), 1, "{rows:#?}");
    let r = &rows[0];
    assert_eq!(
        (
            r["src_ip"].as_str(),
            r["dst_ip"].as_str(),
            r["src_port"].as_i64(),
            r["dst_port"].as_i64(),
            r["protocol"].as_i64()
        ),
        (
            Some("127.0.0.1"),
            Some("127.0.0.1"),
            Some(sport as i64),
            Some(port as i64),
            Some(17)
        )
    );
    // Five datagrams of 20 (IPv4) + 8 (UDP) + 100 bytes.
    assert_eq!(
        (r["packets"].as_i64(), r["bytes"].as_i64()),
        (Some(5), Some(640))
    );
    // lo's own address is the observation point.
    assert_eq!(r["exporter"], "127.0.0.1");
    assert_eq!(r["source_kind"], "pcap");
}
