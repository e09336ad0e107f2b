//! NetObserv over IPFIX: flowlogs-pipeline's IPFIX writer (its `write.ipfix` stage, with an
//! `enterpriseId` for the Kubernetes names) sends the real NetObserv records of
//! `../shared/real-exports/netobserv` over TCP, in the template shape it announces (IANA
//! elements, then its elements 7733–7742 under the configured enterprise number). The same
//! records as JSON lines go through `--netobserv-file` beside them: both paths must store the
//! same flows with the same names, direction, interfaces and RTT. A server not told the
//! enterprise number still stores every flow, with the enterprise elements skipped.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::flow_exports::{stored, text};
use crate::support::{Hawking, sql};

/// The enterprise number the writer is configured with in this test (NetObserv has none of
/// its own; its docs leave the choice to the operator).
const PEN: u32 = 2;

fn records() -> (Vec<PathBuf>, Vec<Value>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real-exports/netobserv/console-plugin-mocks/derived");
    assert!(
        dir.is_dir(),
        "{} is absent: this test sends the real NetObserv records there (see SOURCES.md)",
        dir.display()
    );
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut records = Vec::new();
    for f in &files {
        for line in std::fs::read_to_string(f).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            // The writer sends flows with counters; drop-only records have none to send.
            if r.get("Bytes").is_some() && r.get("Packets").is_some() {
                records.push(r);
            }
        }
    }
    assert!(records.len() >= 200, "{} records", records.len());
    (files, records)
}

/// One template field: (element id, length, enterprise).
type Field = (u16, u16, Option<u32>);

const VAR: u16 = 65535;

/// flowlogs-pipeline's IPv4 template: its IANA list, then the Kubernetes names, RTT,
/// interfaces and directions under its enterprise number.
const TEMPLATE_V4: &[Field] = &[
    (8, 4, None),    // sourceIPv4Address
    (12, 4, None),   // destinationIPv4Address
    (176, 1, None),  // icmpTypeIPv4
    (177, 1, None),  // icmpCodeIPv4
    (256, 2, None),  // ethernetType
    (61, 1, None),   // flowDirection
    (56, 6, None),   // sourceMacAddress
    (80, 6, None),   // destinationMacAddress
    (4, 1, None),    // protocolIdentifier
    (7, 2, None),    // sourceTransportPort
    (11, 2, None),   // destinationTransportPort
    (1, 8, None),    // octetDeltaCount
    (152, 8, None),  // flowStartMilliseconds
    (153, 8, None),  // flowEndMilliseconds
    (2, 8, None),    // packetDeltaCount
    (82, VAR, None), // interfaceName
    (6, 2, None),    // tcpControlBits
    (7733, VAR, Some(PEN)),
    (7734, VAR, Some(PEN)),
    (7735, VAR, Some(PEN)),
    (7736, VAR, Some(PEN)),
    (7737, VAR, Some(PEN)),
    (7738, VAR, Some(PEN)),
    (7740, 8, Some(PEN)),
    (7741, VAR, Some(PEN)),
    (7742, VAR, Some(PEN)),
];

fn str_of<'a>(r: &'a Value, k: &str) -> &'a str {
    r.get(k).and_then(Value::as_str).unwrap_or_default()
}

fn int_of(r: &Value, k: &str) -> u64 {
    r.get(k).and_then(Value::as_u64).unwrap_or(0)
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    assert!(s.len() < 255);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

/// The data record the writer sends for `r`. Names it lacks go as flowlogs-pipeline's older
/// writers sent them (`none`) for every other record and as the newer ones (empty) for the rest.
fn data_record(r: &Value, i: usize) -> Vec<u8> {
    let ip = |k: &str| str_of(r, k).parse::<Ipv4Addr>().unwrap().octets();
    let mac = |k: &str| -> [u8; 6] {
        let mut m = [0; 6];
        for (b, h) in m.iter_mut().zip(str_of(r, k).split(':')) {
            *b = u8::from_str_radix(h, 16).unwrap_or(0);
        }
        m
    };
    let absent = if i.is_multiple_of(2) { "none" } else { "" };
    let name = |k: &str| match str_of(r, k) {
        "" => absent,
        v => v,
    };
    let mut out = Vec::new();
    out.extend_from_slice(&ip("SrcAddr"));
    out.extend_from_slice(&ip("DstAddr"));
    out.push(int_of(r, "IcmpType") as u8);
    out.push(int_of(r, "IcmpCode") as u8);
    out.extend_from_slice(&(int_of(r, "Etype") as u16).to_be_bytes());
    out.push(int_of(r, "FlowDirection") as u8);
    out.extend_from_slice(&mac("SrcMac"));
    out.extend_from_slice(&mac("DstMac"));
    out.push(int_of(r, "Proto") as u8);
    out.extend_from_slice(&(int_of(r, "SrcPort") as u16).to_be_bytes());
    out.extend_from_slice(&(int_of(r, "DstPort") as u16).to_be_bytes());
    out.extend_from_slice(&int_of(r, "Bytes").to_be_bytes());
    out.extend_from_slice(&int_of(r, "TimeFlowStartMs").to_be_bytes());
    out.extend_from_slice(&int_of(r, "TimeFlowEndMs").to_be_bytes());
    out.extend_from_slice(&int_of(r, "Packets").to_be_bytes());
    put_str(&mut out, str_of(r, "Interface"));
    out.extend_from_slice(&(int_of(r, "Flags") as u16).to_be_bytes());
    for k in [
        "SrcK8S_Namespace",
        "SrcK8S_Name",
        "DstK8S_Namespace",
        "DstK8S_Name",
        "SrcK8S_HostName",
        "DstK8S_HostName",
    ] {
        put_str(&mut out, name(k));
    }
    out.extend_from_slice(&int_of(r, "TimeFlowRttNs").to_be_bytes());
    put_str(&mut out, str_of(r, "Interface"));
    put_str(&mut out, &int_of(r, "IfDirection").to_string());
    out
}

/// An IPFIX message of one set.
fn message(seq: u32, set_id: u16, body: &[u8]) -> Vec<u8> {
    let mut set = set_id.to_be_bytes().to_vec();
    set.extend_from_slice(&((body.len() + 4) as u16).to_be_bytes());
    set.extend_from_slice(body);
    let mut m = vec![0, 10];
    m.extend_from_slice(&((set.len() + 16) as u16).to_be_bytes());
    m.extend_from_slice(&1_708_011_900u32.to_be_bytes()); // export time
    m.extend_from_slice(&seq.to_be_bytes());
    m.extend_from_slice(&1u32.to_be_bytes()); // observation domain, as the writer sets it
    m.extend_from_slice(&set);
    m
}

/// The whole stream the writer sends: its template, then data sets of up to 10 records.
fn stream(records: &[Value]) -> Vec<u8> {
    let mut template = 256u16.to_be_bytes().to_vec();
    template.extend_from_slice(&(TEMPLATE_V4.len() as u16).to_be_bytes());
    for (id, len, pen) in TEMPLATE_V4 {
        match pen {
            Some(pen) => {
                template.extend_from_slice(&(id | 0x8000).to_be_bytes());
                template.extend_from_slice(&len.to_be_bytes());
                template.extend_from_slice(&pen.to_be_bytes());
            }
            None => {
                template.extend_from_slice(&id.to_be_bytes());
                template.extend_from_slice(&len.to_be_bytes());
            }
        }
    }
    let mut out = message(0, 2, &template);
    let mut seq = 0;
    for (chunk_no, chunk) in records.chunks(10).enumerate() {
        let body: Vec<u8> = chunk
            .iter()
            .enumerate()
            .flat_map(|(j, r)| data_record(r, chunk_no * 10 + j))
            .collect();
        out.extend_from_slice(&message(seq, 256, &body));
        seq += chunk.len() as u32;
    }
    out
}

fn send(to: SocketAddr, bytes: &[u8]) {
    let mut s = TcpStream::connect(to).unwrap();
    // In odd pieces, so messages straddle segments as they do on a busy agent.
    for piece in bytes.chunks(1499) {
        s.write_all(piece).unwrap();
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
}

/// What both paths say, in this order in the rows compared.
const COLUMNS: [&str; 17] = [
    "flow_start",
    "flow_end",
    "src_ip",
    "dst_ip",
    "src_port",
    "dst_port",
    "protocol",
    "tcp_flags",
    "bytes",
    "packets",
    "src_reported_namespace",
    "src_reported_name",
    "dst_reported_namespace",
    "dst_reported_name",
    "direction",
    "interfaces",
    "rtt_ns",
];

fn rows(data: &Path, kind: &str) -> Vec<String> {
    stored(data, kind, &COLUMNS)
}

#[test]
fn netobserv_ipfix_over_tcp_stores_what_its_json_records_store() {
    let (files, records) = records();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut config = format!("[netflow.decoder]\nnetobserv_enterprise_id = {PEN}\n");
    for f in &files {
        config.push_str(&format!(
            "\n[[flow_files]]\nformat = \"netobserv\"\npath = \"{}\"\n",
            f.display()
        ));
    }
    let config_path = tmp.path().join("hawking.toml");
    std::fs::write(&config_path, config).unwrap();
    let config_arg = config_path.display().to_string();
    let hawking = Hawking::start(
        &data,
        &["--listen-tcp", "127.0.0.1:0", "--config", &config_arg],
    );
    let bytes = stream(&records);
    send(hawking.netflow_tcp.unwrap(), &bytes);
    let all_lines: usize = files
        .iter()
        .map(|f| std::fs::read_to_string(f).unwrap().lines().count())
        .sum();
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("kind", "source")],
        (all_lines + records.len()) as f64,
    );
    let report = hawking.stop();
    assert_eq!(report.flows, (all_lines + records.len()) as u64);

    let ipfix = rows(&data, "ipfix");
    assert_eq!(ipfix.len(), records.len(), "every record sent is one flow");
    let mut json = rows(&data, "netobserv");
    // The JSON path also keeps the drop-only records, which the writer never sends.
    json.retain(|r| !r.split('|').nth(8).unwrap().is_empty());
    assert_eq!(
        ipfix, json,
        "the same flows, names, direction, interfaces and RTT"
    );
    // And they say something: names on most flows, RTT on some, `inner` kept.
    let named = ipfix
        .iter()
        .filter(|r| r.split('|').nth(11) != Some(""))
        .count();
    let with_rtt = ipfix.iter().filter(|r| !r.ends_with('|')).count();
    assert!(
        named > ipfix.len() / 2 && with_rtt > 10,
        "{named} named, {with_rtt} with RTT"
    );
    assert!(ipfix.iter().any(|r| r.contains("|inner|")));
    assert!(
        !ipfix.iter().any(|r| r.contains("|none|")),
        "`none` is the writer's word for no name"
    );

    // Without the enterprise number: the same flows, the enterprise elements skipped.
    let data = tmp.path().join("plain");
    let hawking = Hawking::start(&data, &["--listen-tcp", "127.0.0.1:0"]);
    send(hawking.netflow_tcp.unwrap(), &bytes);
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("kind", "source")],
        records.len() as f64,
    );
    hawking.stop();
    let plain = sql(
        &data,
        "SELECT count(*) AS n, count(src_reported_name) AS names, count(rtt_ns) AS rtts, \
         count(interfaces) AS interfaces, sum(bytes) AS bytes FROM flows",
    );
    let totals = sql(
        &tmp.path().join("data"),
        "SELECT sum(bytes) AS bytes FROM flows WHERE source_kind = 'ipfix'",
    );
    assert_eq!(plain[0]["n"], records.len());
    assert_eq!(plain[0]["names"], 0);
    assert_eq!(plain[0]["rtts"], 0);
    assert_eq!(
        plain[0]["interfaces"],
        records.len(),
        "interfaceName is IANA's"
    );
    assert_eq!(plain[0]["bytes"], totals[0]["bytes"]);
}

/// A name NetObserv's writer sends without a kind is checked against the history all the
/// same: the owner that held the address must have that name in that namespace.
#[test]
fn a_netobserv_ipfix_name_that_contradicts_the_history_is_counted_and_shown() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The recorded cluster: 10.4.2.14 was shop/web-7d4b9-r5t9w until 10:00:26, then nobody's
    // that the recording knows of.
    crate::recorded_cluster::import(&data, "pods-snapshot.json");
    crate::recorded_cluster::import(&data, "pods-watch.json");
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[netflow.decoder]\nnetobserv_enterprise_id = {PEN}\n\n[enricher]\ngrace_secs = 0.2\n\n\
             [[enricher.clusters]]\nname = \"demo\"\nwatch = false\npod_cidrs = [\"10.4.0.0/16\"]\n"
        ),
    )
    .unwrap();
    let at = |hms: &str| {
        format!("2026-11-20T{hms}Z")
            .parse::<jiff::Timestamp>()
            .unwrap()
            .as_millisecond()
    };
    let record = |ms: i64, namespace: &str, name: &str| {
        serde_json::json!({
            "SrcAddr": "10.4.2.14", "DstAddr": "8.8.8.8", "Proto": 17, "SrcPort": 40000,
            "DstPort": 53, "Bytes": 80, "Packets": 1, "TimeFlowStartMs": ms,
            "TimeFlowEndMs": ms, "FlowDirection": 1, "Interface": "eth0", "Etype": 2048,
            "SrcK8S_Namespace": namespace, "SrcK8S_Name": name,
        })
    };
    let records = [
        record(at("10:00:00"), "shop", "web-7d4b9-r5t9w"),
        record(at("10:00:01"), "shop", "impostor-1"),
        record(at("10:00:02"), "other", "web-7d4b9-r5t9w"),
        record(at("10:06:00"), "shop", "web-7d4b9-r5t9w"),
    ];
    let hawking = Hawking::start(
        &data,
        &[
            "--listen-tcp",
            "127.0.0.1:0",
            "--config",
            config.to_str().unwrap(),
        ],
    );
    send(hawking.netflow_tcp.unwrap(), &stream(&records));
    let checks = "hawking_reported_identity_checks_total";
    hawking.wait_metric(checks, &[("side", "src"), ("result", "conflict")], 2.0);
    hawking.wait_metric(checks, &[("side", "src"), ("result", "agree")], 1.0);
    let metrics = hawking.metrics_text();
    hawking.stop();
    assert_eq!(
        crate::support::metric_sum(&metrics, checks, &[]),
        3.0,
        "the 10:06 flow falls where no history is: nothing to compare\n{metrics}"
    );
    let rows = sql(
        &data,
        "SELECT src_reported_namespace, src_reported_name, src_reported_kind, src_pod, \
         src_reported_conflict FROM flows ORDER BY flow_start",
    );
    let got: Vec<String> = rows
        .iter()
        .map(|r| {
            [
                "src_reported_namespace",
                "src_reported_name",
                "src_reported_kind",
                "src_pod",
                "src_reported_conflict",
            ]
            .map(|c| text(r.get(c)))
            .join("|")
        })
        .collect();
    assert_eq!(
        got,
        [
            "shop|web-7d4b9-r5t9w||web-7d4b9-r5t9w|false",
            "shop|impostor-1||web-7d4b9-r5t9w|true",
            "other|web-7d4b9-r5t9w||web-7d4b9-r5t9w|true",
            "shop|web-7d4b9-r5t9w|||",
        ]
    );
}
