//! The SQL surface end to end, on a store filled the real way: history imported from the
//! kubectl recording in `fixtures/k8s/import/`, flows sent over IPFIX from two exporters to
//! `hawking serve`, attributed and committed. On it:
//! - every panel of the shipped Grafana dashboard, its SQL expanded exactly as Grafana's
//!   PostgreSQL datasource expands macros, runs through `hawking sql` and returns rows of
//!   the types Grafana needs (and the traffic that was sent);
//! - the `whois(...)` table function answers as `hawking whois` does;
//! - the network functions filter flows by range;
//! - `hawking sql` reads statements from a pipe and, at a terminal, from a prompt with history.

use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use datafusion::arrow::datatypes::DataType;
use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{ExporterClock, PacketBuilder, TimeEncoding, flow_template};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use serde_json::Value;

use crate::support::*;

/// 2026-11-20T09:00:00Z: the recording in `fixtures/k8s/import/` covers 09:00–10:30.
const T9: i64 = 1_795_165_200;

/// The dashboard's time range in these tests, and the interval Grafana would pick for it.
const FROM: i64 = T9;
const TO: i64 = T9 + 2 * 3600;
const INTERVAL_SECS: i64 = 300;

/// A store with attributed flows, removed when dropped.
struct Store {
    _tmp: tempfile::TempDir,
    data: PathBuf,
    metrics: String,
}

/// Who talks to whom, every 30 s from 09:00 to 10:40 (each flow 10 s long):
/// (exporter, src, dst, dst port, protocol, bytes).
const TALKERS: &[(&str, &str, &str, u16, u8, u64)] = &[
    // shop/web-7d4b9-k8m2p (from 09:02:11) to the outside.
    ("127.0.0.1", "10.4.1.10", "93.184.216.34", 443, 6, 50_000),
    // shop/api-5f6d7-qwert (from 09:20:05) to shop/cache-1 (from 09:31:40) and coredns.
    ("127.0.0.1", "10.4.2.5", "10.4.1.20", 6379, 6, 8_000),
    ("127.0.0.1", "10.4.2.5", "10.4.2.2", 53, 17, 300),
    // 10.4.2.14: web-7d4b9-r5t9w until 10:00:26, nobody until worker-6c8d9-b7n4k at 10:12:30.
    ("127.0.0.2", "10.4.2.14", "198.51.100.7", 443, 6, 20_000),
    // shop/web-7d4b9-v2x8c (from 09:59:58).
    ("127.0.0.2", "10.4.1.31", "93.184.216.34", 443, 6, 30_000),
];

fn attributed_store() -> Store {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let imported = Command::new(hawking_bin())
        .args(["history", "import"])
        .arg(fixtures().join("k8s/import/pods-watch.json"))
        .args(["--cluster", "prod", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "history import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        "[netflow.decoder]\npending_max_age_secs = 0\n\n[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
         exporters = [\"127.0.0.0/8\"]\npod_cidrs = [\"10.4.0.0/16\"]\nservice_cidrs = [\"10.96.0.0/12\"]\n",
    )
    .unwrap();
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    let mut sent = 0;
    for exporter in ["127.0.0.1", "127.0.0.2"] {
        let flows: Vec<FlowRecord> = (0..200)
            .flat_map(|step| {
                let start = (T9 + step * 30) * 1_000_000;
                TALKERS
                    .iter()
                    .filter(move |t| t.0 == exporter)
                    .enumerate()
                    .map(move |(i, t)| FlowRecord {
                        flow_start: start,
                        flow_end: start + 10_000_000,
                        src_ip: parse_ip(t.1).unwrap(),
                        dst_ip: parse_ip(t.2).unwrap(),
                        src_port: 30000 + i as u16,
                        dst_port: t.3,
                        protocol: t.4,
                        tcp_flags: if t.4 == 6 { 0x1b } else { 0 },
                        bytes: t.5,
                        packets: t.5 / 1000 + 1,
                        sampling_rate: 1,
                        in_if: 1,
                        out_if: 2,
                    })
            })
            .collect();
        send_ipfix(hawking.netflow, exporter, &flows);
        sent += flows.len();
    }
    send_what_gets_dropped(hawking.netflow);
    crate::pgwire::pg::send_nat_sessions(hawking.netflow);
    hawking.wait_metric("hawking_flows_total", &[], sent as f64);
    hawking.wait_metric("hawking_flows_dropped_total", &[], 1.0);
    hawking.wait_metric("hawking_decode_errors_total", &[], 1.0);
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        sent as f64,
    );
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "nat_history_log")],
        (crate::pgwire::pg::NAT_SESSIONS * 2) as f64,
    );
    let metrics = hawking.metrics_text();
    hawking.stop();
    Store {
        _tmp: tmp,
        data,
        metrics,
    }
}

/// What the dashboard's drop panel counts: from a third exporter, data whose template never
/// comes (held, then expired by the next datagram: the age limit is 0 s) and a datagram
/// that is not NetFlow at all.
fn send_what_gets_dropped(to: SocketAddr) {
    let socket = exporter_socket("127.0.0.3");
    let template = flow_template(401, false, TimeEncoding::Milliseconds);
    let clock = ExporterClock {
        boot_ms: 0,
        export_ms: T9 * 1000,
    };
    let record = FlowRecord {
        flow_start: T9 * 1_000_000,
        flow_end: T9 * 1_000_000,
        ..Default::default()
    };
    for seq in 0..2 {
        let mut p = PacketBuilder::new(Version::Ipfix, clock, seq, 1);
        p.flows(&template, clock, &[record]);
        socket.send_to(&p.finish(), to).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    socket.send_to(b"\x00\x0anot a flow export", to).unwrap();
}

// ---- Grafana ----------------------------------------------------------------------------

/// Expands a panel's SQL as Grafana's PostgreSQL datasource does before sending it:
/// first `sqleng.Interpolate` (`$__interval_ms`, `$__interval`, `$__unixEpochFrom()`,
/// `$__unixEpochTo()`), then the macro engine of pkg/tsdb/grafana-postgresql-datasource
/// (macros.go), which rewrites each match of `\$([_a-zA-Z0-9]+)\(([^\)]*)\)` with the
/// arguments split at commas and trimmed; TimescaleDB off.
fn grafana_expand(sql: &str, from: i64, to: i64, interval_secs: i64) -> String {
    let sql = sql
        .replace("$__interval_ms", &(interval_secs * 1000).to_string())
        .replace("$__interval", &format_interval(interval_secs))
        .replace("$__unixEpochFrom()", &from.to_string())
        .replace("$__unixEpochTo()", &to.to_string());
    let mut out = String::new();
    let mut rest = sql.as_str();
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let tail = &rest[at + 1..];
        let name_len = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        let (name, after) = tail.split_at(name_len);
        let call = after
            .strip_prefix('(')
            .and_then(|a| a.find(')').map(|close| (&a[..close], &a[close + 1..])));
        match (name_len > 0, call) {
            (true, Some((args, remaining))) => {
                let args: Vec<&str> = args.split(',').map(|a| a.trim_matches(' ')).collect();
                // Pre-5.3 compatibility: `$__timeGroup(...)` directly followed by a comma
                // gets the alias.
                let name = if name == "__timeGroup" && remaining.starts_with(',') {
                    "__timeGroupAlias"
                } else {
                    name
                };
                out.push_str(&grafana_macro(name, &args, from, to));
                rest = remaining;
            }
            _ => {
                out.push('$');
                rest = tail;
            }
        }
    }
    out.push_str(rest);
    out
}

fn grafana_macro(name: &str, args: &[&str], from: i64, to: i64) -> String {
    let group = |args: &[&str]| {
        let secs = parse_interval(args[1].trim_matches('\''));
        format!("floor(extract(epoch from {})/{secs})*{secs}", args[0])
    };
    match name {
        "__time" => format!("{} AS \"time\"", args[0]),
        "__timeEpoch" => format!("extract(epoch from {}) as \"time\"", args[0]),
        "__timeFilter" => format!(
            "{} BETWEEN '{}' AND '{}'",
            args[0],
            rfc3339(from),
            rfc3339(to)
        ),
        "__timeFrom" => format!("'{}'", rfc3339(from)),
        "__timeTo" => format!("'{}'", rfc3339(to)),
        "__timeGroup" => group(args),
        "__timeGroupAlias" => format!("{} AS \"time\"", group(args)),
        "__unixEpochFilter" => format!("{0} >= {from} AND {0} <= {to}", args[0]),
        other => panic!("the dashboard uses a macro this test does not expand: {other}"),
    }
}

/// Go's gtime.FormatInterval for whole seconds.
fn format_interval(secs: i64) -> String {
    match secs {
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// gtime.ParseInterval for the units panels use, in seconds.
fn parse_interval(text: &str) -> i64 {
    let (n, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap());
    let n: i64 = n.parse().unwrap();
    n * match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => panic!("interval unit {other}"),
    }
}

#[test]
fn grafana_macros_expand_as_the_postgresql_datasource_does() {
    // The examples of Grafana's macros_test.go and the PostgreSQL datasource docs.
    let from = T9 + 5 * 86_400 + 3600; // 2026-11-25T10:00:00Z
    assert_eq!(
        grafana_expand("WHERE $__timeFilter(time_column)", from, from + 3600, 300),
        "WHERE time_column BETWEEN '2026-11-25T10:00:00Z' AND '2026-11-25T11:00:00Z'"
    );
    assert_eq!(
        grafana_expand(
            "SELECT $__timeGroupAlias(col, $__interval)",
            from,
            from,
            300
        ),
        "SELECT floor(extract(epoch from col)/300)*300 AS \"time\""
    );
    assert_eq!(
        grafana_expand("SELECT $__timeGroup(col,'1h'), x", from, from, 300),
        "SELECT floor(extract(epoch from col)/3600)*3600 AS \"time\", x",
        "the pre-5.3 form gets its alias"
    );
    assert_eq!(
        grafana_expand("$__interval_ms / $__unixEpochFrom() $x", from, from, 60),
        "60000 / 1795600800 $x"
    );
}

fn dashboard() -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/grafana/dashboards/hawking-flows.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
}

/// (panel title, format, rawSql) of every SQL target.
fn panel_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            if let Some(sql) = target["rawSql"].as_str() {
                assert_eq!(
                    panel["datasource"]["uid"], "hawking",
                    "{}: SQL panels use the Hawking datasource",
                    panel["title"]
                );
                out.push((
                    panel["title"].as_str().unwrap().to_string(),
                    target["format"].as_str().unwrap().to_string(),
                    sql.to_string(),
                ));
            }
        }
    }
    out
}

/// Runs statements through `hawking sql` reading them from stdin (as a script would) and
/// returns one JSON result array per statement.
fn sql_script(data: &Path, statements: &[String], format: &str) -> (Vec<Value>, String, bool) {
    let mut child = Command::new(hawking_bin())
        .args(["sql", "--format", format, "--data"])
        .arg(data)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for s in statements {
        writeln!(stdin, "{s};").unwrap();
    }
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    let results = if format == "json" {
        serde_json::Deserializer::from_str(&text)
            .into_iter::<Value>()
            .map(|v| v.unwrap())
            .collect()
    } else {
        vec![Value::String(text)]
    };
    (
        results,
        String::from_utf8_lossy(&out.stderr).into_owned(),
        out.status.success(),
    )
}

fn is_numeric(t: &DataType) -> bool {
    t.is_numeric()
}

fn is_text(t: &DataType) -> bool {
    matches!(t, DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
}

#[test]
fn every_dashboard_panel_runs_on_attributed_flows_with_grafana_macros_expanded() {
    let store = attributed_store();
    let dashboard = dashboard();
    let queries = panel_queries(&dashboard);
    assert!(queries.len() >= 8, "{} SQL panels", queries.len());
    let expanded: Vec<String> = queries
        .iter()
        .map(|(_, _, sql)| grafana_expand(sql, FROM, TO, INTERVAL_SECS))
        .collect();
    for sql in &expanded {
        assert!(!sql.contains("$__"), "a macro was left: {sql}");
    }

    // What Grafana needs of each result: for time series, a numeric "time" (epoch seconds
    // from $__timeGroupAlias) in order, numeric values, an optional text "metric"; for tables,
    // rows. Checked on the Arrow schema the pg-wire server would encode.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let ctx = runtime
        .block_on(hawking_query::open_session(
            &store.data,
            &Default::default(),
        ))
        .unwrap();
    for ((title, format, _), sql) in queries.iter().zip(&expanded) {
        let (schema, batches) = runtime.block_on(async {
            let df = ctx
                .sql(sql)
                .await
                .unwrap_or_else(|e| panic!("{title}: {e}\n{sql}"));
            let schema = df.schema().as_arrow().clone();
            (schema, df.collect().await.unwrap())
        });
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        assert!(rows > 0, "{title}: no rows\n{sql}");
        if format == "time_series" {
            let time = schema.field(0);
            assert_eq!(time.name(), "time", "{title}");
            assert!(is_numeric(time.data_type()), "{title}: time is {time}");
            for f in schema.fields().iter().skip(1) {
                if f.name() == "metric" {
                    assert!(is_text(f.data_type()), "{title}: {f}");
                } else {
                    assert!(is_numeric(f.data_type()), "{title}: value {f}");
                }
            }
            let times: Vec<f64> = batches
                .iter()
                .flat_map(|b| {
                    let c =
                        datafusion::arrow::compute::cast(b.column(0), &DataType::Float64).unwrap();
                    c.as_any()
                        .downcast_ref::<datafusion::arrow::array::Float64Array>()
                        .unwrap()
                        .values()
                        .to_vec()
                })
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{title}: long-format series must come sorted by time"
            );
            assert!(
                times
                    .iter()
                    .all(|t| *t >= (FROM - INTERVAL_SECS) as f64 && *t <= TO as f64),
                "{title}: buckets inside the range"
            );
        } else {
            assert!(
                schema.fields().iter().any(|f| is_numeric(f.data_type())),
                "{title}: a table panel shows some number"
            );
        }
    }

    // The same SQL through `hawking sql` (statements piped in), checked against the traffic.
    let (results, stderr, ok) = sql_script(&store.data, &expanded, "json");
    assert!(ok, "hawking sql failed: {stderr}");
    assert_eq!(
        results.len(),
        queries.len(),
        "one result per panel: {stderr}"
    );
    let by_title = |t: &str| -> &Vec<Value> {
        let i = queries
            .iter()
            .position(|(title, _, _)| title.contains(t))
            .unwrap_or_else(|| panic!("no panel {t}"));
        results[i].as_array().unwrap()
    };
    let metrics_of = |rows: &Vec<Value>| -> Vec<String> {
        let mut m: Vec<String> = rows
            .iter()
            .filter_map(|r| r["metric"].as_str().map(str::to_string))
            .collect();
        m.sort();
        m.dedup();
        m
    };
    assert_eq!(
        metrics_of(by_title("Traffic by source workload")),
        vec!["shop/api", "shop/web", "shop/worker"],
        "pods named by their workloads"
    );
    let namespaces = metrics_of(by_title("Traffic by source namespace"));
    assert!(
        namespaces.contains(&"shop".to_string()) && namespaces.contains(&"(unknown)".to_string()),
        "{namespaces:?}"
    );
    let matrix = by_title("Namespace to namespace");
    assert!(
        matrix.iter().any(|r| r["source"] == "shop"
            && r["destination"] == "kube-system"
            && r["bytes"].as_i64().is_some_and(|b| b > 0)),
        "api -> coredns: {matrix:?}"
    );
    let top = by_title("Top external destinations");
    assert!(
        top.iter()
            .any(|r| r["workload"] == "shop/web" && r["destination"] == "93.184.216.34"),
        "{top:?}"
    );
    assert!(
        top.iter().all(|r| r["destination"] != "10.4.1.20"),
        "cluster destinations are not external"
    );
    assert_eq!(
        metrics_of(by_title("Egress to external")),
        vec!["shop/web", "shop/worker"]
    );
    let shares = by_title("Unknown and ambiguous");
    assert!(
        shares
            .iter()
            .any(|r| r["unknown"].as_f64().is_some_and(|u| u > 0.0)),
        "10.4.2.14 in its hand-over gap is unknown: {shares:?}"
    );
    assert!(
        shares.iter().all(|r| r["unknown"]
            .as_f64()
            .is_some_and(|u| (0.0..=1.0).contains(&u))),
        "{shares:?}"
    );
    assert_eq!(
        metrics_of(by_title("Flows per exporter")),
        vec!["127.0.0.1", "127.0.0.2"]
    );
    let bytes_per_second: f64 = by_title("Bytes per exporter")
        .iter()
        .map(|r| r["bytes_per_second"].as_f64().unwrap())
        .sum();
    let sent_bytes: u64 = TALKERS.iter().map(|t| t.5 * 200).sum();
    assert!(
        (bytes_per_second * INTERVAL_SECS as f64 - sent_bytes as f64).abs() < 1.0,
        "every byte sent is in the per-exporter series once"
    );

    // The Prometheus panel asks for metrics hawking serve exports.
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let Some(expr) = target["expr"].as_str() else {
                continue;
            };
            for name in expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("hawking_"))
                // A labelled counter appears once something is counted; the store drops
                // rows only while commits fail (a full disk), which this run does not cause.
                .filter(|w| *w != "hawking_store_rows_dropped_total")
            {
                assert!(
                    store.metrics.contains(&format!("# TYPE {name} ")),
                    "{name} in panel {} is not exported",
                    panel["title"]
                );
            }
        }
    }
}

// ---- whois(...) ----------------------------------------------------------------------------

fn whois_cli(data: &Path, ip: &str, at: &str) -> Value {
    whois_json(data, ip, at)
}

#[test]
fn the_whois_table_function_answers_as_hawking_whois_does() {
    let store = attributed_store();
    let cases = [
        // The Job pod, then nobody, then cache-1 on the same address.
        ("10.4.1.20", "2026-11-20T09:02:00Z"),
        ("10.4.1.20", "2026-11-20T09:10:00Z"),
        ("10.4.1.20", "2026-11-20T10:00:00Z"),
        // Dual stack.
        ("fd00:10:4:2::5", "2026-11-20T09:30:00Z"),
        // Handed over: r5t9w, then the gap, then the worker.
        ("10.4.2.14", "2026-11-20T09:30:00Z"),
        ("10.4.2.14", "2026-11-20T10:05:00Z"),
        ("10.4.2.14", "2026-11-20T10:20:00Z"),
        ("93.184.216.34", "2026-11-20T10:00:00Z"),
    ];
    let queries: Vec<String> = cases
        .iter()
        .map(|(ip, at)| format!("SELECT * FROM whois('{ip}', TIMESTAMP '{at}')"))
        .collect();
    let (results, stderr, ok) = sql_script(&store.data, &queries, "json");
    assert!(ok, "{stderr}");
    for ((ip, at), rows) in cases.iter().zip(&results) {
        let rows = rows.as_array().unwrap();
        assert_eq!(rows.len(), 1, "one row for {ip} at {at}");
        let row = &rows[0];
        let cli = whois_cli(&store.data, ip, at);
        let what = format!("{ip} at {at}: sql {row} cli {cli}");
        assert_eq!(row["ip"], *ip, "{what}");
        assert_eq!(row["at_time"], *at, "{what}");
        assert_eq!(row["attribution"], cli["attribution"], "{what}");
        assert_eq!(
            row.get("cluster_name"),
            cli.get("cluster").filter(|c| !c.is_null()),
            "{what}"
        );
        let owner = &cli["owner"];
        let field = |k: &str| owner.get(k).filter(|v| !v.is_null());
        assert_eq!(row.get("namespace"), field("namespace"), "{what}");
        assert_eq!(row.get("workload"), field("workload"), "{what}");
        assert_eq!(row.get("workload_kind"), field("workload_kind"), "{what}");
        if owner["kind"] == "pod" {
            assert_eq!(row.get("pod"), field("name"), "{what}");
            assert_eq!(row.get("node"), field("node"), "{what}");
        }
        assert_eq!(row.get("valid_from"), cli.get("held_from"), "{what}");
        assert_eq!(
            row.get("valid_to"),
            cli.get("held_until").filter(|v| !v.is_null()),
            "{what}"
        );
    }
    // The cases are not all alike: the answers differ where the history says they do.
    let pods: Vec<Option<&str>> = results.iter().map(|r| r[0]["pod"].as_str()).collect();
    assert_eq!(
        pods,
        vec![
            Some("backup-29919420-h7x4q"),
            None,
            Some("cache-1"),
            Some("api-5f6d7-qwert"),
            Some("web-7d4b9-r5t9w"),
            None,
            Some("worker-6c8d9-b7n4k"),
            None
        ]
    );

    // Arguments: cluster, port and protocol; time as text; mistakes are errors, not rows.
    let (results, stderr, ok) = sql_script(
        &store.data,
        &[
            "SELECT pod FROM whois('10.4.1.20', '2026-11-20 10:00:00', 'prod', 6379, 'tcp')".into(),
            "SELECT count(*) AS n FROM whois('10.4.1.20', '2026-11-20 10:00:00', 'elsewhere')"
                .into(),
            "SELECT f.src_ip, w.pod FROM flows f CROSS JOIN whois('10.4.2.5', TIMESTAMP '2026-11-20T10:00:00Z') w LIMIT 1"
                .into(),
        ],
        "json",
    );
    assert!(ok, "{stderr}");
    assert_eq!(results[0][0]["pod"], "cache-1");
    assert_eq!(
        results[1][0]["n"], 1,
        "an unknown cluster still answers, with no owner"
    );
    assert_eq!(
        results[2][0]["pod"], "api-5f6d7-qwert",
        "joins like any table"
    );
    for (bad, message) in [
        (
            "SELECT * FROM whois('10.4.1.999', now())",
            "is not an IP address",
        ),
        ("SELECT * FROM whois('10.4.1.20')", "whois(ip, at"),
        (
            "SELECT * FROM whois('10.4.1.20', 'yesterday-ish')",
            "cannot read",
        ),
        (
            "SELECT * FROM whois('10.4.1.20', now(), 'prod', 70000, 'tcp')",
            "port",
        ),
    ] {
        let (_, stderr, ok) = sql_script(&store.data, &[bad.to_string()], "json");
        assert!(!ok && stderr.contains(message), "{bad}: {stderr}");
    }
}

// ---- network functions -----------------------------------------------------------------------

#[test]
fn network_functions_select_flows_by_range() {
    let store = attributed_store();
    let count = |q: &str| sql_i64(&store.data, q);
    let per_talker = 200;
    assert_eq!(
        count("SELECT count(*) FROM flows WHERE cidr_contains('10.4.2.0/24', src_ip)"),
        3 * per_talker
    );
    assert_eq!(
        count(
            "SELECT count(*) FROM flows WHERE ip_in_cidrs(dst_ip, '198.51.100.0/24, 93.184.216.0/24')"
        ),
        3 * per_talker
    );
    assert_eq!(
        count("SELECT count(DISTINCT cidr_network(src_ip, 24)) FROM flows"),
        2,
        "10.4.1.0/24 and 10.4.2.0/24"
    );
    assert_eq!(
        count("SELECT count(*) FROM flows WHERE ip_family(src_ip) = 6"),
        0
    );
    let out = Command::new(hawking_bin())
        .args(["sql", "--data"])
        .arg(&store.data)
        .arg("SELECT count(*) FROM flows WHERE cidr_contains('10.4.0.0/99', src_ip)")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("\"10.4.0.0/99\" is not a CIDR range"),
        "rejected while planning, before any file is read: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---- hawking sql without a query -------------------------------------------------------------

#[test]
fn piped_statements_run_in_order_and_errors_do_not_stop_the_script() {
    let tmp = tempfile::tempdir().unwrap();
    let script = [
        "SELECT 1 AS a".to_string(),
        "SELECT no_such_column FROM flows".to_string(),
        "SELECT 'semi;colon' AS b, -- a comment; still the same statement\n 2 AS c".to_string(),
        "CREATE VIEW v AS SELECT 3 AS d".to_string(),
        "SELECT d FROM v".to_string(),
    ];
    // Any store will do (these statements read no table that matters): an imported history.
    let data = tmp.path().join("data");
    crate::recorded_cluster::import(&data, "pods-watch.json");
    let (out, stderr, ok) = sql_script(&data, &script, "csv");
    assert!(!ok, "a failed statement makes the exit status fail");
    assert!(stderr.contains("no_such_column"), "{stderr}");
    assert!(stderr.contains("1 of 5 statements failed"), "{stderr}");
    assert_eq!(
        out[0].as_str().unwrap(),
        "a\n1\nb,c\nsemi;colon,2\nd\n3\n",
        "results in order; the view made by one statement is seen by the next"
    );
    // A last statement without ';' runs too, and \q ends the input.
    let mut child = Command::new(hawking_bin())
        .args(["sql", "--format", "csv", "--data"])
        .arg(tmp.path().join("data"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"SELECT 5 AS e\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    assert_eq!(String::from_utf8_lossy(&out.stdout), "e\n5\n");
    let (out, _, ok) = sql_script(
        &tmp.path().join("data"),
        &["SELECT 6 AS f".into(), "\\q".into(), "SELECT 7 AS g".into()],
        "csv",
    );
    assert!(ok);
    assert_eq!(out[0].as_str().unwrap(), "f\n6\n");
}

#[test]
fn at_a_terminal_the_prompt_keeps_history_and_survives_errors_and_ctrl_c() {
    require_tool("script");
    let tmp = tempfile::tempdir().unwrap();
    let history = tmp.path().join("history");
    crate::recorded_cluster::import(&tmp.path().join("data"), "pods-watch.json");
    // `script` gives hawking sql a pseudo-terminal and feeds it what we type.
    let mut child = Command::new("script")
        .args(["-qec"])
        .arg(format!(
            "{} sql --data {}",
            hawking_bin().display(),
            tmp.path().join("data").display()
        ))
        .arg("/dev/null")
        .env("HAWKING_HISTORY", &history)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let typed: &[&[u8]] = &[
        b"SELECT 40 +\r",
        b"  2 AS answer;\r",
        b"SELECT nonsense;\r",
        // Ctrl-C drops the half-typed statement.
        b"SELECT 'dropped' AS x\x03",
        b"SELECT 'kept' AS y;\r",
        b"\\q\r",
    ];
    for keys in typed {
        stdin.write_all(keys).unwrap();
        stdin.flush().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(700));
    }
    let out = child.wait_with_output().unwrap();
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("hawking> "), "{screen}");
    assert!(
        screen.contains("      -> "),
        "continuation prompt: {screen}"
    );
    assert!(screen.contains("| 42     |"), "{screen}");
    assert!(screen.contains("nonsense"), "the error is shown: {screen}");
    assert!(screen.contains("| kept |"), "{screen}");
    assert!(!screen.contains("| dropped |"), "{screen}");
    let saved = std::fs::read_to_string(&history).unwrap();
    assert!(saved.contains("SELECT 40 +"), "{saved}");
    assert!(saved.contains("SELECT 'kept' AS y;"), "{saved}");
    assert!(!saved.contains("dropped"), "{saved}");
}

/// A `--data` that holds no store is a mistake (a typo, the wrong mount), not an empty
/// store: `sql`, `whois` and `replay` refuse it, name the directory and exit non-zero
/// instead of printing an empty answer.
#[test]
fn commands_that_read_a_store_refuse_a_directory_without_one() {
    let tmp = tempfile::tempdir().unwrap();
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let missing = tmp.path().join("no-such-dir");
    for dir in [&empty, &missing] {
        let runs: [&[&str]; 3] = [
            &["sql", "SELECT count(*) FROM flows"],
            &["whois", "10.0.0.1", "--at", "2026-11-20T09:00:00Z"],
            &[
                "replay",
                "--from",
                "2026-11-20T09:00:00Z",
                "--to",
                "2026-11-20T10:00:00Z",
            ],
        ];
        for args in runs {
            let out = Command::new(hawking_bin())
                .args(args)
                .arg("--data")
                .arg(dir)
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(!out.status.success(), "{args:?} on {dir:?} succeeded");
            assert!(
                stderr.contains("no Hawking store there")
                    && stderr.contains(&*dir.to_string_lossy()),
                "{args:?}: {stderr}"
            );
            assert!(
                out.stdout.is_empty(),
                "{args:?} printed an answer: {:?}",
                out.stdout
            );
        }
    }
}
