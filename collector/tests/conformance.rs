//! Conformance against an independent decoder: every NetFlow v5/v9/IPFIX capture in
//! `../shared/real-exports/` (real exporters' datagrams, see its SOURCES.md) is fed to Hawking's
//! decoder the way `hawking serve` receives it — one decoder, datagrams keyed by the exporter's
//! source address and port, the template capture before the data capture — and every flow and
//! NAT session event is compared with tshark's decode of the same record in
//! `pcap_expected.tsv`. Nothing expected is written here: it all comes from that file (and,
//! where the file has no column for a value, from tshark itself when it is installed).

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;

use hawking_collector::NetflowDecoder;
use hawking_collector::transport::capture::CaptureFile;
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;
use pcap_file::pcap::PcapReader;

/// The shared folder of real exports, beside the repository (it exists in CI).
fn real_exports() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/real-exports");
    dir.join("pcap_expected.tsv").is_file().then_some(dir)
}

/// One row of `pcap_expected.tsv`; empty cells are `None` (tshark had no such field).
#[derive(Clone, Debug)]
struct Expected {
    frame: u32,
    exporter: IpAddr,
    domain: Option<u32>,
    sampling_rate: Option<u32>,
    in_if: Option<u32>,
    out_if: Option<u32>,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    proto: Option<u8>,
    sport: Option<u16>,
    dport: Option<u16>,
    bytes: Option<u64>,
    packets: Option<u64>,
}

fn cell<T: std::str::FromStr>(cols: &[&str], i: usize) -> Option<T> {
    cols.get(i)
        .filter(|c| !c.is_empty())
        .and_then(|c| c.parse().ok())
}

/// Rows by capture group, NetFlow/IPFIX only (sFlow is another decoder's business).
fn expected(dir: &Path) -> BTreeMap<String, Vec<Expected>> {
    let text = std::fs::read_to_string(dir.join("pcap_expected.tsv")).expect("read tsv");
    let mut groups: BTreeMap<String, Vec<Expected>> = BTreeMap::new();
    for line in text.lines().skip(1) {
        let c: Vec<&str> = line.split('\t').collect();
        if !matches!(c[2], "netflow_v5" | "netflow_v9" | "ipfix") {
            continue;
        }
        groups.entry(c[0].to_string()).or_default().push(Expected {
            frame: cell(&c, 1).expect("frame"),
            exporter: cell(&c, 3).expect("exporter"),
            domain: cell(&c, 4),
            sampling_rate: cell(&c, 6),
            in_if: cell(&c, 7),
            out_if: cell(&c, 8),
            src: cell(&c, 9),
            dst: cell(&c, 10),
            proto: cell(&c, 11),
            sport: cell(&c, 12),
            dport: cell(&c, 13),
            bytes: cell(&c, 14),
            packets: cell(&c, 15),
        });
    }
    groups
}

/// The capture files of a group, template capture first: `dir/x-data.pcap (+x-template.pcap)`.
fn group_files(dir: &Path, group: &str) -> Vec<PathBuf> {
    let (data, template) = match group.split_once(" (+") {
        Some((data, rest)) => (data, Some(rest.trim_end_matches(')'))),
        None => (group, None),
    };
    let data = dir.join(data);
    let mut files = Vec::new();
    if let Some(t) = template {
        files.push(data.parent().expect("in a folder").join(t));
    }
    files.push(data);
    files
}

/// The UDP datagrams of a capture: (frame number, sender, payload).
/// Every whole UDP datagram of a capture, as `hawking replay --capture` reads it: (frame
/// number, sender, payload).
fn datagrams(path: &Path) -> Vec<(u64, SocketAddr, Vec<u8>)> {
    let mut capture = CaptureFile::open(path).expect("open pcap");
    let mut out = Vec::new();
    while let Some(d) = capture.next_datagram().expect("pcap record") {
        let (from, payload) = (d.from, d.payload.to_vec());
        out.push((capture.counts().frames, from, payload));
    }
    out
}

/// `files`' datagrams decoded in order by one decoder, each from its exporter's address.
fn decode_files(files: &[PathBuf]) -> (NetflowDecoder, SourceBatch) {
    let mut decoder = NetflowDecoder::new(Default::default()).expect("default config");
    let mut out = SourceBatch::default();
    for f in files {
        for (_, from, payload) in datagrams(f) {
            decoder.decode(from, &payload, 1_800_000_000_000_000, &mut out);
        }
    }
    (decoder, out)
}

/// What Hawking produced for one record, in tshark's terms.
#[derive(Clone, Debug, PartialEq)]
struct Got {
    exporter: u128,
    domain: u32,
    src: u128,
    dst: u128,
    proto: u8,
    sport: u16,
    dport: u16,
    /// Flows only: scaled counters, the rate that scaled them, interfaces.
    flow: Option<(u64, u64, u32, u32, u32)>,
}

/// Why an expected row and a decoded record differ, or `None` when every value tshark gave
/// is Hawking's.
/// The sampling rate a group's flows must show when their own rows state none.
#[derive(Clone, Copy, Debug)]
enum GroupRate {
    /// This rate (1 when nothing is announced).
    Known(Option<u32>),
    /// Announced in options the table has no column for, and tshark is not here to read
    /// them: the rate is not checked (the counters still are, against it).
    Unchecked,
}

fn differs(e: &Expected, g: &Got, group_rate: GroupRate) -> Option<String> {
    let ip = |a: Option<IpAddr>| a.map(ip_to_u128);
    let mut why = Vec::new();
    if ip_to_u128(e.exporter) != g.exporter {
        why.push("exporter");
    }
    if e.domain.is_some_and(|d| d != g.domain) {
        why.push("domain");
    }
    if ip(e.src) != Some(g.src) || ip(e.dst) != Some(g.dst) {
        why.push("addresses");
    }
    if e.proto.is_some_and(|p| p != g.proto) {
        why.push("proto");
    }
    if e.sport.is_some_and(|p| p != g.sport) || e.dport.is_some_and(|p| p != g.dport) {
        why.push("ports");
    }
    match g.flow {
        Some((bytes, packets, rate, in_if, out_if)) => {
            // tshark shows the exporter's (sampled) counters; Hawking stores estimates scaled
            // by the rate in force, so the stored value is tshark's times that rate.
            if e.bytes
                .is_some_and(|b| b.checked_mul(rate as u64) != Some(bytes))
                || e.packets
                    .is_some_and(|p| p.checked_mul(rate as u64) != Some(packets))
            {
                why.push("counters");
            }
            let want = match (e.sampling_rate, group_rate) {
                (Some(r), _) => Some(r),
                (None, GroupRate::Known(r)) => Some(r.unwrap_or(1)),
                (None, GroupRate::Unchecked) => None,
            };
            if want.is_some_and(|w| w != rate) {
                why.push("sampling_rate");
            }
            if e.in_if.is_some_and(|i| i != in_if) || e.out_if.is_some_and(|o| o != out_if) {
                why.push("interfaces");
            }
        }
        None => {
            if e.bytes.is_some() || e.packets.is_some() {
                why.push("a NAT event where tshark saw a flow");
            }
        }
    }
    (!why.is_empty()).then(|| format!("{} differ: tshark {e:?}, Hawking {g:?}", why.join(", ")))
}

/// Rate of the group's sampling options that tshark's table has no column for (RFC 5476
/// packet interval/space, RFC 7014 population/size), read by tshark itself. `None` when
/// tshark is absent or the group announces none.
fn tshark_packet_sampling(files: &[PathBuf]) -> Option<u32> {
    let mut rates = Vec::new();
    for f in files {
        let out = Command::new("tshark")
            .arg("-r")
            .arg(f)
            .args(["-d", "udp.port==9991,cflow", "-d", "udp.port==9992,cflow"])
            .args([
                "-d",
                "udp.port==9990,cflow",
                "-T",
                "fields",
                "-E",
                "occurrence=f",
            ])
            .args(["-e", "cflow.sampling_packet_interval"])
            .args(["-e", "cflow.sampling_packet_space"])
            .args([
                "-e",
                "cflow.sampling_size",
                "-e",
                "cflow.sampling_population",
            ])
            .output()
            .ok()?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let v: Vec<Option<u64>> = line.split('\t').map(|c| c.parse().ok()).collect();
            let get = |i: usize| v.get(i).copied().flatten();
            let rate = match (get(0), get(1), get(2), get(3)) {
                (_, _, Some(size), Some(population)) if size > 0 => population / size,
                (Some(interval), space, _, _) if interval > 0 => {
                    (interval + space.unwrap_or(0)) / interval
                }
                _ => continue,
            };
            rates.push(rate as u32);
        }
    }
    rates.dedup();
    (rates.len() == 1).then(|| rates[0])
}

/// Hawking's records that tshark reads too once told the MPLS payload is an Ethernet
/// pseudowire with a control word (`-d mpls.label==L,pwethcw` for every label of the
/// capture): the records its heuristic left without addresses. Without tshark the claim is
/// narrowed to records with the interfaces of an addressless row, and said so.
fn pseudowire_reads(files: &[PathBuf], rows: &[Expected], got: &[Got], tshark: bool) -> Vec<Got> {
    let addressless: Vec<&Expected> = rows
        .iter()
        .filter(|r| r.src.is_none() && r.in_if.is_some())
        .collect();
    if addressless.is_empty() {
        return Vec::new();
    }
    let fits_a_row = |g: &Got| {
        g.flow.is_some_and(|(.., in_if, out_if)| {
            addressless
                .iter()
                .any(|r| r.in_if == Some(in_if) && r.out_if.is_none_or(|o| o == out_if))
        })
    };
    // Records tshark's table has (with addresses) are not candidates.
    let in_table = |g: &Got| {
        rows.iter()
            .any(|r| r.src.map(ip_to_u128) == Some(g.src) && r.dst.map(ip_to_u128) == Some(g.dst))
    };
    let candidates = got.iter().filter(|g| fits_a_row(g) && !in_table(g));
    if !tshark {
        eprintln!(
            "tshark is not installed: records read behind an MPLS control word are accepted by their interfaces only"
        );
        return candidates.cloned().collect();
    }
    let fields = |f: &Path, extra: &[String], names: &[&str]| -> Vec<Vec<String>> {
        let mut cmd = Command::new("tshark");
        // Two passes: the template comes before the data in the file, but -2 is what reads
        // data+templates orders too.
        cmd.arg("-2")
            .arg("-r")
            .arg(f)
            .args(extra)
            .args(["-T", "fields"]);
        for n in names {
            cmd.args(["-e", n]);
        }
        let out = cmd.output().map(|o| o.stdout).unwrap_or_default();
        String::from_utf8_lossy(&out)
            .lines()
            .map(|l| l.split('\t').map(str::to_string).collect())
            .collect()
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let merged = merge(files, dir.path());
    let mut confirmed = Vec::new();
    for f in [merged.as_path()] {
        let mut labels: Vec<String> = fields(f, &[], &["mpls.label"])
            .into_iter()
            .flatten()
            .flat_map(|c| c.split(',').map(str::to_string).collect::<Vec<_>>())
            .filter(|l| !l.is_empty())
            .collect();
        labels.sort();
        labels.dedup();
        if labels.is_empty() {
            continue;
        }
        let decode_as: Vec<String> = labels
            .iter()
            .flat_map(|l| ["-d".to_string(), format!("mpls.label=={l},pwethcw")])
            .collect();
        let names = [
            "ip.src",
            "ip.dst",
            "tcp.srcport",
            "tcp.dstport",
            "udp.srcport",
            "udp.dstport",
        ];
        for line in fields(f, &decode_as, &names) {
            let list = |i: usize| -> Vec<&str> {
                line.get(i).map_or(Vec::new(), |c| c.split(',').collect())
            };
            let pairs = |a: Vec<&str>, b: Vec<&str>| -> Vec<(String, String)> {
                a.iter()
                    .zip(b.iter())
                    .map(|(x, y)| (x.to_string(), y.to_string()))
                    .collect()
            };
            let addrs = pairs(list(0), list(1));
            let mut ports = pairs(list(2), list(3));
            ports.extend(pairs(list(4), list(5)));
            for g in candidates.clone() {
                let ip = |v: u128| hawking_schemas::ip::u128_to_ip(v).to_string();
                if addrs.contains(&(ip(g.src), ip(g.dst)))
                    && ports.contains(&(g.sport.to_string(), g.dport.to_string()))
                {
                    confirmed.push(g.clone());
                }
            }
        }
    }
    confirmed
}

/// tshark reads one file, and data needs its template: the group's captures as one, in order.
fn merge(files: &[PathBuf], dir: &Path) -> PathBuf {
    let merged = dir.join("group.pcap");
    let first = PcapReader::new(File::open(&files[0]).expect("open")).expect("pcap");
    let mut w = pcap_file::pcap::PcapWriter::with_header(
        File::create(&merged).expect("create"),
        first.header(),
    )
    .expect("pcap writer");
    for f in files {
        let mut r = PcapReader::new(File::open(f).expect("open")).expect("pcap");
        while let Some(pkt) = r.next_packet() {
            w.write_packet(&pkt.expect("pcap record")).expect("write");
        }
    }
    merged
}

fn tshark_installed() -> bool {
    Command::new("tshark").arg("-v").output().is_ok()
}

#[test]
fn every_netflow_and_ipfix_capture_decodes_as_tshark_does() {
    let Some(dir) = real_exports() else {
        eprintln!("../shared/real-exports is absent: no conformance check against real captures");
        return;
    };
    let tshark = tshark_installed();
    if !tshark {
        eprintln!(
            "tshark is not installed: sampling rates announced by packet interval are not checked"
        );
    }
    let groups = expected(&dir);
    assert!(
        groups.len() >= 20,
        "the table lists the NetFlow/IPFIX groups"
    );
    let mut failures = Vec::new();
    let mut compared = 0;
    for (group, rows) in &groups {
        let files = group_files(&dir, group);
        let (mut decoder, out) = decode_files(&files);
        let counters: HashMap<IpAddr, _> = decoder.drain_counters().collect();
        let mut got: Vec<Got> = (0..out.flows.len())
            .map(|i| {
                let r = out.flows.record(i);
                Got {
                    exporter: out.flows.exporter[i],
                    domain: out.flows.observation_domain[i],
                    src: r.src_ip,
                    dst: r.dst_ip,
                    proto: r.protocol,
                    sport: r.src_port,
                    dport: r.dst_port,
                    flow: Some((r.bytes, r.packets, r.sampling_rate, r.in_if, r.out_if)),
                }
            })
            .collect();
        got.extend(out.nat_events.iter().map(|n| Got {
            exporter: n.exporter,
            domain: n.observation_domain,
            src: n.inside_ip,
            dst: n.remote_ip,
            proto: n.protocol,
            sport: n.inside_port,
            dport: n.remote_port,
            flow: None,
        }));
        // The rate a group's flows are scaled by when their own rows carry none: the one rate
        // its options records announce in tshark's table, else (packet-interval sampling,
        // which the table has no column for) what tshark reads from the options.
        let mut announced: Vec<u32> = rows
            .iter()
            .filter(|r| r.src.is_none() && r.in_if.is_none())
            .filter_map(|r| r.sampling_rate)
            .collect();
        announced.dedup();
        let options_without_rate = rows
            .iter()
            .any(|r| r.src.is_none() && r.in_if.is_none() && r.sampling_rate.is_none());
        let group_rate = match announced[..] {
            [rate] => GroupRate::Known(Some(rate)),
            _ if tshark => GroupRate::Known(tshark_packet_sampling(&files)),
            _ if options_without_rate => {
                eprintln!(
                    "{group}: sampling options the table has no column for, and no tshark: rate not checked"
                );
                GroupRate::Unchecked
            }
            _ => GroupRate::Known(None),
        };
        // Rows without addresses: an options record (no interfaces either), or a flow whose
        // sampled frame tshark could not read an IP header from. Hawking stores neither: the
        // latter must be counted as dropped for having no address.
        let addressless_flows = rows
            .iter()
            .filter(|r| r.src.is_none() && r.in_if.is_some())
            .count() as u64;
        let dropped: u64 = counters.values().map(|c| c.flows_dropped_no_address).sum();
        let mut explained = 0;
        for g in pseudowire_reads(&files, rows, &got, tshark) {
            // Allowance, one record per addressless row: Hawking read the frame behind an
            // MPLS pseudowire control word (RFC 4448) that tshark's heuristic took for the
            // inner Ethernet header (destination 00:00:00:00:02:00, type 0x0000).
            if explained < addressless_flows {
                explained += 1;
                got.retain(|x| x != &g);
            }
        }
        if dropped + explained != addressless_flows {
            failures.push(format!(
                "{group}: tshark read no address in {addressless_flows} flow records; Hawking dropped {dropped} for it and read {explained} behind a pseudowire control word"
            ));
        }
        let mut unmatched = Vec::new();
        for row in rows.iter().filter(|r| r.src.is_some()) {
            compared += 1;
            match got
                .iter()
                .position(|g| differs(row, g, group_rate).is_none())
            {
                Some(i) => {
                    got.swap_remove(i);
                }
                None => unmatched.push(row),
            }
        }
        // Report each unmatched row against the closest remaining record (same addresses
        // when there is one), so the difference is named.
        for row in unmatched {
            let near = got
                .iter()
                .find(|g| {
                    row.src.map(ip_to_u128) == Some(g.src) && row.dst.map(ip_to_u128) == Some(g.dst)
                })
                .or(got.first());
            failures.push(match near {
                Some(g) => format!(
                    "{group} frame {}: {}",
                    row.frame,
                    differs(row, g, group_rate).unwrap_or_default()
                ),
                None => format!(
                    "{group} frame {}: Hawking has no record for {row:?}",
                    row.frame
                ),
            });
        }
        for g in got {
            failures.push(format!(
                "{group}: Hawking decoded a record tshark did not: {g:?}"
            ));
        }
    }
    assert!(compared > 200, "records compared: {compared}");
    assert!(
        failures.is_empty(),
        "{} differences from tshark:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// NAT session events (RFC 8158) as tshark reads them: every record of the capture that
/// carries natEvent, with its pre- and post-NAT tuple, event type and observation time.
fn tshark_nat_records(merged: &Path) -> Vec<serde_json::Value> {
    fn walk(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
        match v {
            serde_json::Value::Object(m) if m.contains_key("cflow.nat_event") => {
                out.push(v.clone())
            }
            serde_json::Value::Object(m) => m.values().for_each(|v| walk(v, out)),
            serde_json::Value::Array(a) => a.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let out = Command::new("tshark")
        .arg("-2")
        .arg("-r")
        .arg(merged)
        .args(["-T", "json"])
        .output()
        .expect("run tshark");
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("tshark json");
    let mut records = Vec::new();
    walk(&json, &mut records);
    records
}

#[test]
fn nat_session_events_carry_tshark_post_nat_tuple_type_and_time() {
    let Some(dir) = real_exports() else {
        eprintln!("../shared/real-exports is absent: no NAT conformance check");
        return;
    };
    if !tshark_installed() {
        eprintln!(
            "tshark is not installed: post-NAT fields are checked only through pcap_expected.tsv's pre-NAT tuple"
        );
        return;
    }
    let mut checked = 0;
    for group in expected(&dir).keys() {
        let files = group_files(&dir, group);
        let (_, out) = decode_files(&files);
        let tmp = tempfile::tempdir().expect("tempdir");
        let merged = merge(&files, tmp.path());
        let records = tshark_nat_records(&merged);
        if records.is_empty() && out.nat_events.is_empty() {
            continue;
        }
        let text =
            |r: &serde_json::Value, k: &str| r.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let num = |r: &serde_json::Value, k: &str| text(r, k).and_then(|v| v.parse::<u64>().ok());
        let addr = |r: &serde_json::Value, k: &str| {
            text(r, k)
                .and_then(|v| v.parse::<IpAddr>().ok())
                .map(ip_to_u128)
        };
        let mut got = out.nat_events.clone();
        for r in &records {
            checked += 1;
            // RFC 8158 table 1: session create and delete events (NAT44, NAT64, NAT44 BIB,
            // NAT64 BIB, ...); the other events name no session.
            let kind = match num(r, "cflow.nat_event") {
                Some(1 | 4 | 6 | 8 | 10) => Some(hawking_schemas::nat::NatEventKind::Create),
                Some(2 | 5 | 7 | 9 | 11) => Some(hawking_schemas::nat::NatEventKind::Delete),
                _ => None,
            };
            let at = text(r, "cflow.observation_time_milliseconds").map(|t| {
                jiff::fmt::strtime::parse("%b %e, %Y %H:%M:%S%.f UTC", t.trim())
                    .and_then(|tm| tm.to_datetime())
                    .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
                    .map(|z| z.timestamp().as_microsecond())
                    .expect("tshark's time format")
            });
            let inside_port = num(r, "cflow.srcport").unwrap_or(0) as u16;
            let want = (
                kind,
                at,
                num(r, "cflow.protocol").unwrap_or(0) as u8,
                addr(r, "cflow.srcaddr").or_else(|| addr(r, "cflow.srcaddrv6")),
                inside_port,
                addr(r, "cflow.post_natsource_ipv4_address")
                    .or_else(|| addr(r, "cflow.post_nat_source_ipv6_address")),
                num(r, "cflow.post_naptsource_transport_port").map_or(inside_port, |p| p as u16),
                addr(r, "cflow.post_natdestination_ipv4_address")
                    .or_else(|| addr(r, "cflow.dstaddr"))
                    .unwrap_or(0),
                num(r, "cflow.post_naptdestination_transport_port")
                    .or_else(|| num(r, "cflow.dstport"))
                    .unwrap_or(0) as u16,
            );
            let found = got.iter().position(|e| {
                (
                    e.kind,
                    Some(e.at),
                    e.protocol,
                    Some(e.inside_ip),
                    e.inside_port,
                    Some(e.outside_ip),
                    e.outside_port,
                    e.remote_ip,
                    e.remote_port,
                ) == (
                    want.0, want.1, want.2, want.3, want.4, want.5, want.6, want.7, want.8,
                )
            });
            match found {
                Some(i) => {
                    got.swap_remove(i);
                }
                None => panic!(
                    "{group}: no NAT event for tshark's {r}, want {want:?}; Hawking has {got:?}"
                ),
            }
        }
        assert!(
            got.is_empty(),
            "{group}: NAT events tshark did not see: {got:?}"
        );
    }
    eprintln!("{checked} NAT session events compared with tshark");
    assert!(checked > 0, "the captures hold NAT session events");
}

/// Sampling announced in one capture applies to the flows of the next from the same exporter
/// (akvorado keeps a router's options and data apart: `X-options-*.pcap`, `X-*.pcap`). Each
/// flow must be scaled by the rate its sampler ID was announced with, as tshark reads both.
#[test]
fn sampler_rates_announced_before_the_data_scale_each_flow_as_tshark_reads_them() {
    let Some(dir) = real_exports() else {
        eprintln!("../shared/real-exports is absent: no sampling conformance check");
        return;
    };
    if !tshark_installed() {
        eprintln!("tshark is not installed: per-sampler rates across captures are not checked");
        return;
    }
    let groups = expected(&dir);
    let mut checked = 0;
    let mut pairs = 0;
    for options_group in groups.keys().filter(|g| g.contains("options-data")) {
        // "…/X-options-data.pcap (+X-options-template.pcap)" pairs with "…/X-data.pcap
        // (+X-template.pcap)", or "…/options-data…" with "…/data.pcap (+template.pcap)".
        let data_group = options_group
            .replace("-options-", "-")
            .replace("/options-", "/")
            .replace("(+options-", "(+");
        let Some(rows) = groups.get(&data_group) else {
            continue;
        };
        pairs += 1;
        let mut files = group_files(&dir, options_group);
        files.extend(group_files(&dir, &data_group));
        let (_, out) = decode_files(&files);
        let tmp = tempfile::tempdir().expect("tempdir");
        let merged = merge(&files, tmp.path());
        let cmd = Command::new("tshark")
            .arg("-2")
            .arg("-r")
            .arg(&merged)
            .args(["-T", "json"])
            .output()
            .expect("run tshark");
        let json: serde_json::Value = serde_json::from_slice(&cmd.stdout).expect("tshark json");
        fn records(v: &serde_json::Value, out: &mut Vec<serde_json::Value>) {
            match v {
                serde_json::Value::Object(m) => {
                    for (k, v) in m {
                        if k.starts_with("Flow ") {
                            out.push(v.clone());
                        } else {
                            records(v, out);
                        }
                    }
                }
                serde_json::Value::Array(a) => a.iter().for_each(|v| records(v, out)),
                _ => {}
            }
        }
        let mut all = Vec::new();
        records(&json, &mut all);
        let num = |r: &serde_json::Value, k: &str| {
            r.get(k)
                .and_then(|v| v.as_str())
                .and_then(|v| v.parse::<u64>().ok())
        };
        let rates: HashMap<u64, u64> = all
            .iter()
            .filter(|r| r.get("cflow.octets").is_none())
            .filter_map(|r| {
                let rate = num(r, "cflow.sampling_interval")
                    .or_else(|| num(r, "cflow.sampler_random_interval"))?;
                Some((num(r, "cflow.sampler_id")?, rate))
            })
            .collect();
        assert!(
            !rates.is_empty(),
            "{options_group}: tshark reads sampler rates"
        );
        // tshark's flows with the rate of their sampler, against Hawking's (scaled) ones.
        let mut got: Vec<(u128, u128, u64, u64, u32)> = (0..out.flows.len())
            .map(|i| {
                let r = out.flows.record(i);
                (r.src_ip, r.dst_ip, r.bytes, r.packets, r.sampling_rate)
            })
            .collect();
        let flows: Vec<_> = all
            .iter()
            .filter(|r| r.get("cflow.octets").is_some())
            .collect();
        assert_eq!(
            flows.len(),
            rows.iter().filter(|r| r.src.is_some()).count(),
            "{data_group}: tshark's JSON and table agree on the flows"
        );
        for r in flows {
            let addr = |v4: &str, v6: &str| {
                r.get(v4)
                    .or_else(|| r.get(v6))
                    .and_then(|v| v.as_str())
                    .and_then(|v| v.parse::<IpAddr>().ok())
                    .map(ip_to_u128)
            };
            let rate = num(r, "cflow.sampler_id")
                .and_then(|id| rates.get(&id).copied())
                .unwrap_or(1);
            let want = (
                addr("cflow.srcaddr", "cflow.srcaddrv6").expect("source"),
                addr("cflow.dstaddr", "cflow.dstaddrv6").expect("destination"),
                num(r, "cflow.octets").expect("octets") * rate,
                num(r, "cflow.packets").expect("packets") * rate,
                rate as u32,
            );
            match got.iter().position(|g| *g == want) {
                Some(i) => {
                    got.swap_remove(i);
                    checked += 1;
                }
                None => panic!(
                    "{data_group}: no flow {want:?} (sampler rates {rates:?}); Hawking has {got:?}"
                ),
            }
        }
        assert!(
            got.is_empty(),
            "{data_group}: flows tshark did not see: {got:?}"
        );
    }
    eprintln!("{checked} flows checked against the rate of their sampler");
    assert!(
        pairs >= 2,
        "both option captures pair with their data: {pairs}"
    );
    assert!(
        checked > 0,
        "the captures hold sampled flows with announced rates"
    );
}
