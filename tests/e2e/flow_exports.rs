//! Flows from inside the cluster: Hubble's and NetObserv's JSON lines, as real clusters wrote
//! them (`../shared/real-exports/hubble`, `netobserv`), stored as the independent extraction
//! in `hubble_expected.tsv` and `netobserv_expected.tsv` says they should be; their endpoint
//! identities kept as `ip_history` evidence and checked against the history.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::recorded_cluster::import;
use crate::support::{Hawking, sql};

fn real_exports() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/real-exports");
    assert!(
        dir.join("hubble_expected.tsv").is_file(),
        "{} is absent: this test ingests the real Hubble and NetObserv exports there (see its \
         SOURCES.md)",
        dir.display()
    );
    dir
}

/// The rows of a TSV with a header, as maps from column name to text.
fn tsv(path: &Path) -> Vec<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    lines
        .map(|l| {
            header
                .iter()
                .zip(l.split('\t').chain(std::iter::repeat("")))
                .map(|(h, v)| (h.to_string(), v.to_string()))
                .collect()
        })
        .collect()
}

/// A stored value as text: null and absent as empty.
pub(crate) fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

fn micros(rfc3339: &str) -> i64 {
    rfc3339.parse::<jiff::Timestamp>().unwrap().as_microsecond()
}

/// Sorted rows of `columns`, one string per row, from the store.
pub(crate) fn stored(data: &Path, kind: &str, columns: &[&str]) -> Vec<String> {
    let select = columns
        .iter()
        .map(|c| match *c {
            "flow_start" | "flow_end" => format!("CAST({c} AS BIGINT) AS {c}"),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ");
    let mut rows: Vec<String> = sql(
        data,
        &format!("SELECT {select} FROM flows WHERE source_kind = '{kind}'"),
    )
    .iter()
    .map(|r| {
        columns
            .iter()
            .map(|c| text(r.get(*c)))
            .collect::<Vec<_>>()
            .join("|")
    })
    .collect();
    rows.sort();
    rows
}

fn assert_same(what: &str, mut expected: Vec<String>, got: Vec<String>) {
    expected.sort();
    if expected != got {
        let missing: Vec<_> = expected
            .iter()
            .filter(|e| !got.contains(e))
            .take(5)
            .collect();
        let extra: Vec<_> = got
            .iter()
            .filter(|g| !expected.contains(g))
            .take(5)
            .collect();
        panic!(
            "{what}: {} expected, {} stored\nexpected but not stored: {missing:#?}\nstored but not \
             expected: {extra:#?}",
            expected.len(),
            got.len()
        );
    }
}

fn hubble_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = tsv(&dir.join("hubble_expected.tsv"))
        .iter()
        .map(|r| dir.join(&r["file"]))
        .collect();
    files.dedup();
    files
}

#[test]
fn every_real_hubble_and_netobserv_line_is_stored_as_the_extraction_says() {
    let dir = real_exports();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut args: Vec<String> = Vec::new();
    let hubble = hubble_files(&dir);
    for f in &hubble {
        args.extend(["--hubble-file".into(), f.display().to_string()]);
    }
    // NetObserv: flowlogs-pipeline's records; the Loki dumps' records with their stream
    // labels merged back (the `derived/` files), and the legacy goflow-kube lines.
    let mut netobserv: Vec<PathBuf> =
        std::fs::read_dir(dir.join("netobserv/console-plugin-mocks/derived"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
    netobserv.sort();
    netobserv
        .push(dir.join("netobserv/flowlogs-pipeline/contrib-benchmarks-baseline-log-lines.jsonl"));
    // NetObserv's records do not name their cluster: these come from 127.0.0.2, which the
    // configuration says is the OpenShift cluster's.
    let mut config = String::from(
        "[[enricher.clusters]]\nname = \"openshift\"\nwatch = false\nexporters = [\"127.0.0.2\"]\n",
    );
    for f in &netobserv {
        config.push_str(&format!(
            "\n[[flow_files]]\nformat = \"netobserv\"\npath = \"{}\"\nexporter = \"127.0.0.2\"\n",
            f.display()
        ));
    }
    let config_path = tmp.path().join("hawking.toml");
    std::fs::write(&config_path, config).unwrap();
    args.extend(["--config".into(), config_path.display().to_string()]);
    let hubble_rows = tsv(&dir.join("hubble_expected.tsv"));
    let netobserv_rows = tsv(&dir.join("netobserv_expected.tsv"));
    let total = (hubble_rows.len() + netobserv_rows.len()) as f64;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let hawking = Hawking::start(&data, &args);
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("kind", "source")],
        total,
    );
    let metrics = hawking.metrics_text();
    let report = hawking.stop();
    assert_eq!(report.flows, total as u64, "every line is one flow");
    assert!(
        !metrics.contains("hawking_component_dropped_events_total{component=\"hubble_file"),
        "no real line is dropped:\n{metrics}"
    );

    // Hubble: time, addresses, ports (ICMP type and code where NetFlow keeps them), verdict,
    // drop reason, direction, reply, L7, the observing node, and the pods on both ends.
    let columns = [
        "flow_start",
        "src_ip",
        "dst_ip",
        "protocol",
        "src_port",
        "dst_port",
        "verdict",
        "drop_reason",
        "direction",
        "is_reply",
        "l7_type",
        "l7_protocol",
        "src_xlated_ip",
        "observer",
        "src_reported_kind",
        "src_reported_namespace",
        "src_reported_name",
        "dst_reported_kind",
        "dst_reported_namespace",
        "dst_reported_name",
        "src_reported_identity",
        "dst_reported_identity",
        "bytes",
        "packets",
    ];
    let mut sources: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let expected: Vec<String> = hubble_rows
        .iter()
        .map(|r| {
            let lines = sources.entry(r["file"].clone()).or_insert_with(|| {
                let text = std::fs::read_to_string(dir.join(&r["file"])).unwrap();
                text.lines().map(str::to_string).collect()
            });
            let line = &lines[r["line"].parse::<usize>().unwrap() - 1];
            // The extraction reads `is_reply`; 2021's flows say it with the deprecated
            // `reply`, present only when true.
            let is_reply = match r["is_reply"].as_str() {
                "" if line.contains(r#""reply":true"#) => "true".to_string(),
                v => v.to_string(),
            };
            // A pod, else Cilium's reserved identity; `host` is the observing node itself.
            let node = r["node_name"].rsplit('/').next().unwrap().to_string();
            let endpoint = |side: &str| -> [String; 3] {
                let pod = &r[&format!("{side}_pod")];
                let reserved = r[&format!("{side}_labels_reserved")]
                    .split(',')
                    .next()
                    .and_then(|l| l.strip_prefix("reserved:"))
                    .unwrap_or_default()
                    .to_string();
                let (kind, name) = if !pod.is_empty() {
                    ("pod".to_string(), pod.clone())
                } else if reserved == "host" {
                    (reserved, node.clone())
                } else {
                    (reserved, String::new())
                };
                [kind, r[&format!("{side}_namespace")].clone(), name]
            };
            let [src_kind, src_ns, src_name] = endpoint("src");
            let [dst_kind, dst_ns, dst_name] = endpoint("dst");
            // proto3 leaves out zeros: `"ICMPv4":{}` is an echo reply, type 0 code 0.
            let icmp = r["l4"].starts_with("ICMP");
            let (sport, dport) = if icmp {
                let t: u16 = r["icmp_type"].parse().unwrap_or(0);
                let c: u16 = r["icmp_code"].parse().unwrap_or(0);
                ("0".to_string(), ((t << 8) | c).to_string())
            } else {
                (r["src_port"].clone(), r["dst_port"].clone())
            };
            let (l7_type, l7_protocol) = r["l7"].split_once(':').unwrap_or(("", ""));
            [
                micros(&r["time"]).to_string(),
                r["src_ip"].clone(),
                r["dst_ip"].clone(),
                r["proto_num"].clone(),
                sport,
                dport,
                r["verdict"].clone(),
                r["drop_reason_desc"].clone(),
                r["traffic_direction"].to_lowercase(),
                is_reply,
                l7_type.to_string(),
                l7_protocol.to_string(),
                r["src_ip_xlated"].clone(),
                r["node_name"].clone(),
                src_kind,
                src_ns,
                src_name,
                dst_kind,
                dst_ns,
                dst_name,
                r["src_identity"].clone(),
                r["dst_identity"].clone(),
                // Hubble's events carry no byte or packet counts: null, not a made-up 0 or 1.
                String::new(),
                String::new(),
            ]
            .join("|")
        })
        .collect();
    assert_same("hubble", expected, stored(&data, "hubble", &columns));

    // NetObserv: times (legacy records have only the time received), counters, the pods,
    // nodes and owners on both ends, direction, interfaces, drops, DNS latency, RTT, agent.
    let columns = [
        "flow_start",
        "flow_end",
        "src_ip",
        "dst_ip",
        "src_port",
        "dst_port",
        "protocol",
        "bytes",
        "packets",
        "src_reported_namespace",
        "src_reported_name",
        "src_reported_workload",
        "dst_reported_namespace",
        "dst_reported_name",
        "dst_reported_workload",
        "direction",
        "interfaces",
        "dropped_packets",
        "dropped_bytes",
        "drop_reason",
        "dns_latency_ms",
        "rtt_ns",
        "observer",
    ];
    let expected: Vec<String> = netobserv_rows
        .iter()
        .map(|r| {
            let ms = |k: &str| r[k].parse::<i64>().ok().filter(|v| *v > 0);
            let start = ms("time_flow_start_ms")
                .map(|v| v * 1000)
                .unwrap_or_else(|| r["time_received_s"].parse::<i64>().unwrap() * 1_000_000);
            let end = ms("time_flow_end_ms").map(|v| v * 1000).unwrap_or(start);
            let drop: BTreeMap<&str, &str> = r["pkt_drop"]
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let dropped = drop.get("Packets").copied().unwrap_or_default();
            let dns: BTreeMap<&str, &str> = r["dns"]
                .split(';')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let direction = match r["flow_direction"].as_str() {
                "0" => "ingress",
                "1" => "egress",
                "2" => "inner",
                _ => "",
            };
            [
                start.to_string(),
                end.to_string(),
                r["src_ip"].clone(),
                r["dst_ip"].clone(),
                r["src_port"].clone(),
                r["dst_port"].clone(),
                r["proto"].clone(),
                r["bytes"].clone(),
                r["packets"].clone(),
                r["src_namespace"].clone(),
                r["src_name"].clone(),
                r["src_owner"].clone(),
                r["dst_namespace"].clone(),
                r["dst_name"].clone(),
                r["dst_owner"].clone(),
                direction.to_string(),
                r["interfaces"].clone(),
                dropped.to_string(),
                drop.get("Bytes").copied().unwrap_or_default().to_string(),
                // A record names the last drop cause it saw; it is news when something dropped.
                if dropped.parse::<i64>().unwrap_or(0) > 0 {
                    drop["LatestDropCause"].to_string()
                } else {
                    String::new()
                },
                dns.get("latency_ms")
                    .copied()
                    .unwrap_or_default()
                    .to_string(),
                // 0 is NetObserv's "not measured".
                if r["rtt_ns"] == "0" {
                    String::new()
                } else {
                    r["rtt_ns"].clone()
                },
                r["agent_ip"].clone(),
            ]
            .join("|")
        })
        .collect();
    assert_same("netobserv", expected, stored(&data, "netobserv", &columns));

    // The pods both exporters named are evidence in ip_history, apart from the history proper.
    let sighted = sql(
        &data,
        "SELECT source, count(*) AS n FROM ip_history WHERE source IN ('hubble', 'netobserv') \
         GROUP BY source ORDER BY source",
    );
    assert_eq!(sighted.len(), 2, "{sighted:?}");
    let openshift = sql(
        &data,
        "SELECT DISTINCT cluster_name FROM ip_history WHERE source = 'netobserv'",
    );
    assert_eq!(
        text(openshift[0].get("cluster_name")),
        "openshift",
        "{openshift:?}"
    );
    let console = sql(
        &data,
        "SELECT namespace, workload_kind, workload FROM ip_history \
         WHERE source = 'netobserv' AND name = 'console-c5d7c5bc9-5768d'",
    );
    assert!(!console.is_empty());
    assert_eq!(text(console[0].get("namespace")), "openshift-console");
    assert_eq!(text(console[0].get("workload")), "console");
    let deathstar = sql(
        &data,
        "SELECT cluster_name, namespace, name, uid IS NULL AS no_uid FROM ip_history \
         WHERE source = 'hubble' AND ip = '10.244.1.5'",
    );
    assert_eq!(deathstar.len(), 1, "{deathstar:?}");
    assert_eq!(text(deathstar[0].get("cluster_name")), "kind-kind");
    assert_eq!(text(deathstar[0].get("name")), "deathstar-7848d6c4d5-th9v2");
    assert_eq!(
        deathstar[0].get("no_uid"),
        Some(&Value::Bool(true)),
        "no UID was reported"
    );
}

/// A Hubble line for `src` at `time`, naming `pod` in `shop` as its source.
fn hubble_line(time: &str, src: &str, pod: &str) -> String {
    format!(
        r#"{{"flow":{{"time":"{time}","verdict":"FORWARDED","IP":{{"source":"{src}","destination":"8.8.8.8","ipVersion":"IPv4"}},"l4":{{"UDP":{{"source_port":40000,"destination_port":53}}}},"source":{{"namespace":"shop","pod_name":"{pod}"}},"destination":{{"identity":2,"labels":["reserved:world"]}},"node_name":"worker-1","traffic_direction":"EGRESS"}},"node_name":"worker-1","time":"{time}"}}"#
    )
}

#[test]
fn a_hubble_identity_that_contradicts_the_history_is_counted_and_shown_on_the_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    // The recorded cluster: 10.4.2.14 was web-7d4b9-r5t9w until 10:00:26, nobody's
    // until 10:12:30 (the recording does not cover it).
    import(&data, "pods-snapshot.json");
    import(&data, "pods-watch.json");
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        "[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"demo\"\nwatch = false\n\
         pod_cidrs = [\"10.4.0.0/16\"]\n",
    )
    .unwrap();
    let events = tmp.path().join("events.log");
    let mut f = std::fs::File::create(&events).unwrap();
    for line in [
        hubble_line("2026-11-20T10:00:00Z", "10.4.2.14", "web-7d4b9-r5t9w"),
        hubble_line("2026-11-20T10:00:01Z", "10.4.2.14", "impostor-1"),
        hubble_line("2026-11-20T10:06:00Z", "10.4.2.14", "web-7d4b9-r5t9w"),
        "{\"flow\": {broken".to_string(),
    ] {
        writeln!(f, "{line}").unwrap();
    }
    drop(f);
    let hawking = Hawking::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--hubble-file",
            events.to_str().unwrap(),
        ],
    );
    let checks = "hawking_reported_identity_checks_total";
    hawking.wait_metric(checks, &[("side", "src"), ("result", "conflict")], 1.0);
    hawking.wait_metric(checks, &[("side", "src"), ("result", "agree")], 1.0);
    hawking.wait_metric(
        "hawking_component_dropped_events_total",
        &[("component", "hubble_file_0"), ("reason", "malformed_json")],
        1.0,
    );
    let metrics = hawking.metrics_text();
    hawking.stop();
    // The 10:06 flow falls where no history is: nothing to compare, not a conflict.
    assert_eq!(
        crate::support::metric_sum(&metrics, checks, &[("result", "conflict")]),
        1.0,
        "{metrics}"
    );
    let rows = sql(
        &data,
        "SELECT src_reported_name, src_pod, src_attribution, src_reported_conflict, \
         dst_reported_kind, dst_reported_conflict FROM flows ORDER BY flow_start",
    );
    let got: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                "src_reported_name",
                "src_pod",
                "src_attribution",
                "src_reported_conflict",
                "dst_reported_kind",
                "dst_reported_conflict",
            ]
            .map(|c| text(r.get(c)))
        })
        .collect();
    let row = |a: &str, b: &str, c: &str, d: &str| [a, b, c, d, "world", ""].map(str::to_string);
    assert_eq!(
        got,
        [
            row("web-7d4b9-r5t9w", "web-7d4b9-r5t9w", "pod", "false"),
            row("impostor-1", "web-7d4b9-r5t9w", "pod", "true"),
            row("web-7d4b9-r5t9w", "", "unknown", ""),
        ]
    );
    // What Hubble said is kept beside the history: three runs on 10.4.2.14, none of them
    // changing what the history says.
    let sighted = sql(
        &data,
        "SELECT name, CAST(valid_from AS BIGINT) AS f, CAST(valid_to AS BIGINT) AS t \
         FROM ip_history WHERE source = 'hubble' AND ip = '10.4.2.14' ORDER BY valid_from",
    );
    let names: Vec<String> = sighted.iter().map(|r| text(r.get("name"))).collect();
    assert_eq!(names, ["web-7d4b9-r5t9w", "impostor-1", "web-7d4b9-r5t9w"]);
    let watched = sql(
        &data,
        "SELECT DISTINCT name FROM ip_history WHERE source <> 'hubble' AND ip = '10.4.2.14' \
         ORDER BY name",
    );
    assert!(
        watched.iter().all(|r| text(r.get("name")) != "impostor-1"),
        "{watched:?}"
    );
}
