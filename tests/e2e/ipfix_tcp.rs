//! IPFIX over TCP (`hawking serve --listen-tcp`): real exporters' IPFIX messages, taken from
//! the captures in `../shared/real-exports/`, are sent once as UDP datagrams to one server and
//! once over TCP to another — cut into segments at odd offsets, several connections at once,
//! and for every exporter a second connection that closes in the middle of a message. Both
//! servers must store exactly the same flows: the stream is reassembled into the same
//! messages, the partial message is dropped and counted, and each connection's templates are
//! its own (as each UDP socket's are).

use std::collections::BTreeSet;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hawking_collector::transport::capture::CaptureFile;

use crate::support::{Hawking, exporter_socket, sql};

/// The captures (a template capture before its data capture) whose IPFIX messages are sent,
/// and their group's name in `pcap_expected.tsv`.
const CAPTURES: &[(&str, &[&str])] = &[
    (
        "pmacct-test-automation/100-IPFIXv10-CISCO/traffic-00.pcap",
        &["pmacct-test-automation/100-IPFIXv10-CISCO/traffic-00.pcap"],
    ),
    (
        "pmacct-test-automation/104-IPFIXv10-IPv6-CISCO-sampling_option/traffic-00.pcap",
        &["pmacct-test-automation/104-IPFIXv10-IPv6-CISCO-sampling_option/traffic-00.pcap"],
    ),
    (
        "akvorado/netflow/physicalinterfaces.pcap",
        &["akvorado/netflow/physicalinterfaces.pcap"],
    ),
    (
        "akvorado/netflow/ipfixprobe-data.pcap (+ipfixprobe-templates.pcap)",
        &[
            "akvorado/netflow/ipfixprobe-templates.pcap",
            "akvorado/netflow/ipfixprobe-data.pcap",
        ],
    ),
    (
        "akvorado/netflow/mpls.pcap",
        &["akvorado/netflow/mpls.pcap"],
    ),
];

/// The shared folder of real exports, beside the repository. Its absence fails the test: it
/// is the test's input.
fn real_exports() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-exports");
    assert!(
        dir.join("pcap_expected.tsv").is_file(),
        "{} is absent: this test sends the IPFIX messages of the real captures there (see its \
         SOURCES.md); without them there is nothing to compare UDP and TCP on",
        dir.display()
    );
    dir
}

/// One original exporter (a capture group's sender address and port): its IPFIX messages in
/// capture order.
struct Exporter {
    name: String,
    messages: Vec<Vec<u8>>,
}

/// Every original exporter of the captures, with its IPFIX messages as the product's own
/// capture reader finds them.
fn exporters(dir: &Path) -> Vec<Exporter> {
    let mut out: Vec<(String, SocketAddr, Exporter)> = Vec::new();
    for (group, files) in CAPTURES {
        for file in *files {
            let mut capture =
                CaptureFile::open(&dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            while let Some(d) = capture.next_datagram().unwrap() {
                if d.payload.get(..2) != Some(&[0, 10][..]) {
                    continue; // not IPFIX
                }
                let i = match out.iter().position(|(g, f, _)| g == group && *f == d.from) {
                    Some(i) => i,
                    None => {
                        out.push((
                            group.to_string(),
                            d.from,
                            Exporter {
                                name: format!("{group} from {}", d.from),
                                messages: Vec::new(),
                            },
                        ));
                        out.len() - 1
                    }
                };
                out[i].2.messages.push(d.payload.to_vec());
            }
        }
    }
    let exporters: Vec<Exporter> = out.into_iter().map(|(_, _, e)| e).collect();
    assert!(
        exporters.len() >= CAPTURES.len(),
        "every capture has an IPFIX exporter"
    );
    for e in &exporters {
        eprintln!(
            "{}: {} IPFIX messages, {} bytes",
            e.name,
            e.messages.len(),
            e.messages.iter().map(Vec::len).sum::<usize>()
        );
    }
    exporters
}

/// (src, dst, protocol) of every flow tshark reads in the captures.
fn tshark_endpoints(dir: &Path) -> BTreeSet<(String, String, String)> {
    let table = std::fs::read_to_string(dir.join("pcap_expected.tsv")).unwrap();
    let endpoints: BTreeSet<_> = table
        .lines()
        .map(|l| l.split('\t').collect::<Vec<_>>())
        // Records without addresses are options (sampling, interfaces), not flows.
        .filter(|c| CAPTURES.iter().any(|(g, _)| c[0] == *g) && !c[9].is_empty())
        .map(|c| (c[9].to_string(), c[10].to_string(), c[11].to_string()))
        .collect();
    assert!(endpoints.len() >= 10, "tshark's rows for the captures");
    endpoints
}

/// How many whole messages the second connection (and the second UDP socket) of an exporter
/// sends before the one it cuts short.
fn whole_before_cut(e: &Exporter) -> usize {
    e.messages.len() / 2
}

/// Writes `bytes` in pieces of odd sizes, each its own segment (no Nagle, a pause between),
/// so messages are split at odd offsets and some pieces carry several messages.
fn write_in_pieces(stream: &mut TcpStream, bytes: &[u8]) {
    const PIECES: [usize; 10] = [1, 2, 5, 11, 3, 250, 7, 1499, 13, 4001];
    let mut at = 0;
    for size in PIECES.iter().cycle() {
        if at >= bytes.len() {
            break;
        }
        let end = (at + size).min(bytes.len());
        stream
            .write_all(&bytes[at..end])
            .unwrap_or_else(|e| panic!("writing bytes {at}..{end} of {}: {e}", bytes.len()));
        at = end;
        std::thread::sleep(Duration::from_millis(3));
    }
}

fn send_udp(to: SocketAddr, exporters: &[Exporter]) -> usize {
    let mut sent = 0;
    for e in exporters {
        // Each socket is an exporter scope of its own, as each TCP connection is.
        for (socket, messages) in [
            (exporter_socket("127.0.0.1"), &e.messages[..]),
            (
                exporter_socket("127.0.0.1"),
                &e.messages[..whole_before_cut(e)],
            ),
        ] {
            for m in messages {
                socket.send_to(m, to).unwrap();
                sent += 1;
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    sent
}

/// Sends every exporter's messages over TCP, all connections at once: one connection with
/// all of them, and one with the first whole messages and then half of the next, closed there.
fn send_tcp(to: SocketAddr, exporters: &[Exporter]) -> usize {
    let mut sent = 0;
    std::thread::scope(|s| {
        for e in exporters {
            let all: Vec<u8> = e.messages.concat();
            let k = whole_before_cut(e);
            let mut cut: Vec<u8> = e.messages[..k].concat();
            let next = &e.messages[k];
            cut.extend_from_slice(&next[..next.len() / 2 + 1]);
            sent += e.messages.len() + k;
            for bytes in [all, cut] {
                s.spawn(move || {
                    let mut stream = TcpStream::connect(to).unwrap();
                    stream.set_nodelay(true).unwrap();
                    write_in_pieces(&mut stream, &bytes);
                    stream.shutdown(Shutdown::Write).unwrap();
                });
            }
        }
    });
    sent
}

const FLOWS: &str = "SELECT exporter, observation_domain, source_kind, src_ip, dst_ip, src_port, \
     dst_port, protocol, tcp_flags, bytes, packets, sampling_rate, in_if, out_if, \
     CAST(flow_start AS VARCHAR) AS flow_start, CAST(flow_end AS VARCHAR) AS flow_end \
     FROM flows ORDER BY 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16";

const TOTALS: &str = "SELECT count(*) AS flows, sum(bytes) AS bytes, sum(packets) AS packets, \
     count(DISTINCT src_ip) AS sources, count(DISTINCT dst_ip) AS destinations FROM flows";

#[test]
fn ipfix_tcp_stores_what_the_same_messages_over_udp_store() {
    let dir = real_exports();
    let exporters = exporters(&dir);
    let tmp = tempfile::tempdir().unwrap();
    let (udp_data, tcp_data) = (tmp.path().join("udp"), tmp.path().join("tcp"));
    let udp = Hawking::start(&udp_data, &[]);
    let tcp = Hawking::start(&tcp_data, &["--listen-tcp", "127.0.0.1:0"]);
    let tcp_addr = tcp.netflow_tcp.expect("--listen-tcp gives a TCP address");
    assert!(udp.netflow_tcp.is_none(), "TCP is off unless asked for");

    let udp_messages = send_udp(udp.netflow, &exporters);
    let tcp_messages = send_tcp(tcp_addr, &exporters);
    assert_eq!(udp_messages, tcp_messages);
    udp.wait_metric_eq("hawking_netflow_packets_total", &[], udp_messages as f64);
    tcp.wait_metric_eq("hawking_netflow_packets_total", &[], tcp_messages as f64);
    let n = exporters.len() as f64;
    tcp.wait_metric_eq("hawking_netflow_tcp_connections_open", &[], 0.0);
    assert_eq!(
        tcp.metric("hawking_netflow_tcp_connections_total", &[]),
        2.0 * n
    );
    // One partial message per exporter, and nothing else thrown away.
    assert_eq!(
        tcp.metric(
            "hawking_netflow_tcp_dropped_total",
            &[("reason", "partial_message")]
        ),
        n
    );
    assert_eq!(tcp.metric("hawking_netflow_tcp_dropped_total", &[]), n);
    let cut_bytes: usize = exporters
        .iter()
        .map(|e| e.messages[whole_before_cut(e)].len() / 2 + 1)
        .sum();
    assert_eq!(
        tcp.metric("hawking_netflow_tcp_dropped_bytes_total", &[]),
        cut_bytes as f64
    );
    // Every message the TCP server took was whole: no more failed to decode than over UDP.
    assert_eq!(
        tcp.metric("hawking_decode_errors_total", &[]),
        udp.metric("hawking_decode_errors_total", &[])
    );
    let udp_report = udp.stop();
    let tcp_report = tcp.stop();
    assert_eq!(udp_report.rows_committed, tcp_report.rows_committed);

    let udp_flows = sql(&udp_data, FLOWS);
    let tcp_flows = sql(&tcp_data, FLOWS);
    assert_eq!(udp_flows.len() as u64, udp_report.rows_committed);
    // The UDP side is right to begin with: the flows tshark reads in the captures.
    let stored: BTreeSet<_> = udp_flows
        .iter()
        .map(|r| {
            let text = |k: &str| match &r[k] {
                serde_json::Value::String(s) => s.clone(),
                v => v.to_string(),
            };
            (text("src_ip"), text("dst_ip"), text("protocol"))
        })
        .collect();
    assert_eq!(stored, tshark_endpoints(&dir));
    assert!(udp_flows.iter().all(|r| r["exporter"] == "127.0.0.1"));
    let totals = sql(&tcp_data, TOTALS);
    assert_eq!(sql(&udp_data, TOTALS), totals);
    assert!(totals[0]["bytes"].as_i64().unwrap() > 0, "{totals:?}");
    assert_eq!(udp_flows, tcp_flows);
    eprintln!("both servers stored {totals:?}");
}

/// A peer that speaks something else than IPFIX is cut off and counted; an exporter connected
/// beside it goes on being stored.
#[test]
fn ipfix_tcp_garbage_peer_is_cut_off_while_an_exporter_goes_on() {
    let dir = real_exports();
    let exporters = exporters(&dir);
    let e = &exporters[0];
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let server = Hawking::start(&data, &["--listen-tcp", "127.0.0.1:0"]);
    let to = server.netflow_tcp.unwrap();
    let mut good = TcpStream::connect(to).unwrap();
    good.set_nodelay(true).unwrap();
    let (first, rest) = e.messages.split_at(1);
    write_in_pieces(&mut good, &first[0]);
    let mut garbage = TcpStream::connect(to).unwrap();
    garbage
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: hawking\r\n\r\n")
        .unwrap();
    server.wait_metric_eq(
        "hawking_netflow_tcp_dropped_total",
        &[("reason", "bad_version")],
        1.0,
    );
    garbage
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 16];
    assert!(
        matches!(std::io::Read::read(&mut garbage, &mut buf), Ok(0) | Err(_)),
        "the garbage peer was disconnected"
    );
    write_in_pieces(&mut good, &rest.concat());
    server.wait_metric_eq(
        "hawking_netflow_packets_total",
        &[],
        e.messages.len() as f64,
    );
    assert_eq!(
        server.metric("hawking_netflow_tcp_connections_open", &[]),
        1.0
    );
    drop(good);
    let report = server.stop();
    assert!(report.rows_committed > 0);
    // The same messages over UDP store the same number of flows.
    let udp_data = tmp.path().join("udp");
    let udp = Hawking::start(&udp_data, &[]);
    let socket: UdpSocket = exporter_socket("127.0.0.1");
    for m in &e.messages {
        socket.send_to(m, udp.netflow).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    udp.wait_metric_eq(
        "hawking_netflow_packets_total",
        &[],
        e.messages.len() as f64,
    );
    assert_eq!(udp.stop().rows_committed, report.rows_committed);
    assert_eq!(sql(&udp_data, FLOWS), sql(&data, FLOWS));
}
