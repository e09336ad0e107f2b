//! What the PostgreSQL-wire tests share: the real clients (`psql`, Python's psycopg and
//! asyncpg through `tests/pg/client.py`) and a store of attributed flows served by
//! `hawking serve` (started by [`crate::support::Hawking`]) with its endpoint on.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{ExporterClock, PacketBuilder, nat_event_template};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use hawking_schemas::nat::{NatEvent, NatEventKind};
use serde_json::Value;

use crate::support::{Hawking, StoreArg, exporter_socket, fixtures, hawking_over, send_ipfix};

pub const USER: &str = "grafana";
pub const PASSWORD: &str = "correct horse battery staple";

/// `hawking serve --config <config> --pg 127.0.0.1:0`.
pub fn start_with_pg(data: &(impl StoreArg + ?Sized), config: &Path) -> Hawking {
    try_start_with_pg(data, config, &[]).unwrap_or_else(|e| panic!("{e}"))
}

/// As [`start_with_pg`], with `env` set; a server that does not come up gives its log.
pub fn try_start_with_pg(
    data: &(impl StoreArg + ?Sized),
    config: &Path,
    env: &[(&str, &str)],
) -> Result<Hawking, String> {
    let config = config.to_str().expect("config path is text");
    Hawking::try_start(data, &["--pg", "127.0.0.1:0", "--config", config], env)
}

/// A `[pg]` section with the test user, plus `extra` lines inside it.
pub fn pg_section(extra: &str) -> String {
    format!("[pg]\nusers = [{{ name = \"{USER}\", password = \"{PASSWORD}\" }}]\n{extra}\n")
}

/// Runs `tests/pg/client.py` (psycopg, asyncpg or concurrent) with `input` on stdin.
pub fn python_client(
    mode: &str,
    pg: SocketAddr,
    user: &str,
    password: &str,
    input: &Value,
) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/pg/client.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([
            mode,
            &pg.ip().to_string(),
            &pg.port().to_string(),
            user,
            password,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 (run `make test`: tests/setup/install-deps.sh installs psycopg, asyncpg)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{mode} client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "{mode} client output: {e}: {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// Runs each statement on one connection and returns one result per statement.
pub fn run_sql(mode: &str, pg: SocketAddr, statements: &[Value]) -> Vec<Value> {
    let out = python_client(mode, pg, USER, PASSWORD, &Value::Array(statements.to_vec()));
    match out {
        Value::Array(results) => results,
        other => panic!("{mode} could not connect: {other}"),
    }
}

/// Debian's psql, non-interactive, unaligned output with `|` between columns.
pub fn psql(pg: SocketAddr, user: &str, password: &str, args: &[&str]) -> Output {
    crate::support::require_tool("psql");
    Command::new("psql")
        .arg(format!(
            "host={} port={} user={user} dbname=hawking sslmode=disable connect_timeout=10",
            pg.ip(),
            pg.port()
        ))
        .args(["-X", "-A", "-t", "-F", "|", "-v", "ON_ERROR_STOP=1"])
        .args(args)
        .env("PGPASSWORD", password)
        .output()
        .expect("run psql")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// 2026-11-20T09:00:00Z: the recording in `fixtures/k8s/import/` covers 09:00–10:30.
pub const T9: i64 = 1_795_165_200;

/// Who talks to whom, every 30 s from 09:00 for 100 minutes (each flow 10 s long):
/// (src, dst, dst port, protocol, bytes).
pub const TALKERS: &[(&str, &str, u16, u8, u64)] = &[
    // shop/web-7d4b9-k8m2p (from 09:02:11) to the outside.
    ("10.4.1.10", "93.184.216.34", 443, 6, 50_000),
    // shop/api-5f6d7-qwert (from 09:20:05) to shop/cache-1 (from 09:31:40) and coredns.
    ("10.4.2.5", "10.4.1.20", 6379, 6, 8_000),
    ("10.4.2.5", "10.4.2.2", 53, 17, 300),
    // shop/web-7d4b9-v2x8c (from 09:59:58) to the outside.
    ("10.4.1.31", "93.184.216.34", 443, 6, 30_000),
];

pub const STEPS: i64 = 200;

/// Node-1 (192.168.10.11) masquerades one connection of shop/web-7d4b9-k8m2p every
/// 5 minutes from 09:00, each for a minute: the NAT session events its agent reports.
pub const NAT_SESSIONS: i64 = 20;

/// Writes the config (`[pg]` with `pg_extra`, and cluster `prod` fed by the imported
/// history), imports the kubectl recording, starts `hawking serve` and sends the talkers'
/// flows and node-1's NAT sessions over IPFIX; returns once they are committed. The server
/// keeps running.
pub fn attributed_store(dir: &Path, pg_extra: &str) -> Hawking {
    attributed_store_at(&dir.join("data"), dir, pg_extra)
}

/// As [`attributed_store`], with the store at `data` (a directory, or a bucket).
pub fn attributed_store_at(data: &(impl StoreArg + ?Sized), dir: &Path, pg_extra: &str) -> Hawking {
    let imported = hawking_over(data, &["history", "import"])
        .arg(fixtures().join("k8s/import/pods-watch.json"))
        .args(["--cluster", "prod"])
        .output()
        .unwrap();
    assert!(
        imported.status.success(),
        "history import: {}",
        String::from_utf8_lossy(&imported.stderr)
    );
    let config = dir.join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
             exporters = [\"127.0.0.0/8\"]\npod_cidrs = [\"10.4.0.0/16\"]\n\
             service_cidrs = [\"10.96.0.0/12\"]\n\n{}",
            pg_section(pg_extra)
        ),
    )
    .unwrap();
    let hawking = start_with_pg(data, &config);
    let flows: Vec<FlowRecord> = (0..STEPS)
        .flat_map(|step| {
            let start = (T9 + step * 30) * 1_000_000;
            TALKERS.iter().enumerate().map(move |(i, t)| FlowRecord {
                flow_start: start,
                flow_end: start + 10_000_000,
                src_ip: parse_ip(t.0).unwrap(),
                dst_ip: parse_ip(t.1).unwrap(),
                src_port: 30000 + i as u16,
                dst_port: t.2,
                protocol: t.3,
                tcp_flags: if t.3 == 6 { 0x1b } else { 0 },
                bytes: t.4,
                packets: t.4 / 1000 + 1,
                sampling_rate: 1,
                in_if: 1,
                out_if: 2,
            })
        })
        .collect();
    send_ipfix(hawking.netflow, "127.0.0.1", &flows);
    send_nat_sessions(hawking.netflow);
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        flows.len() as f64,
    );
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "nat_history_log")],
        (NAT_SESSIONS * 2) as f64,
    );
    hawking
}

/// Sends node-1's [`NAT_SESSIONS`] as its NAT agent would.
pub fn send_nat_sessions(to: SocketAddr) {
    let events: Vec<NatEvent> = (0..NAT_SESSIONS)
        .flat_map(|k| {
            let session = move |kind, at: i64| NatEvent {
                at: at * 1_000_000,
                kind: Some(kind),
                protocol: 6,
                inside_ip: parse_ip("10.4.1.10").unwrap(),
                inside_port: 40000 + k as u16,
                outside_ip: parse_ip("192.168.10.11").unwrap(),
                outside_port: 61000 + k as u16,
                remote_ip: parse_ip("93.184.216.34").unwrap(),
                remote_port: 443,
                ..Default::default()
            };
            let start = T9 + k * 300;
            [
                session(NatEventKind::Create, start),
                session(NatEventKind::Delete, start + 60),
            ]
        })
        .collect();
    let clock = ExporterClock {
        boot_ms: (T9 - 3600) * 1000,
        export_ms: (T9 + 7200) * 1000,
    };
    let template = nat_event_template(500, false);
    let mut p = PacketBuilder::new(Version::Ipfix, clock, 0, 1);
    p.template(&template).nat_events(&template, &events);
    exporter_socket("127.0.0.1")
        .send_to(&p.finish(), to)
        .unwrap();
}
