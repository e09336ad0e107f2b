//! Kafka out: `hawking serve` with `[kafka]` publishes every attributed flow it stores to a
//! real Kafka-compatible broker (tansu), read back by an outside consumer (Python's
//! confluent-kafka, librdkafka 2.x) one message per stored flow, attribution included; and
//! when the broker is unreachable for 30 s in the middle of a sustained send, the flows wait
//! in the spool (the metrics show it) and all arrive once it is back.

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hawking_schemas::flow::FlowRecord;
use serde_json::Value;

use crate::replay::{DAY, flow_to_the_web, import, recording};
use crate::support::{Hawking, metric_sum, require_tool, send_ipfix, sql};

const TOPIC: &str = "hawking.flows";

pub(crate) fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub(crate) fn wait_listening(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).is_err() {
        assert!(Instant::now() < deadline, "{what} did not listen on {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A child process killed when the test is done with it.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tansu listening on `port`, telling clients to connect to `advertised` (a proxy's port,
/// or the same), with the flows topic created (3 partitions).
fn tansu(port: u16, advertised: u16, log: &Path) -> Running {
    tansu_with_topics(port, advertised, log, &[TOPIC])
}

/// As `tansu`, with `topics` created (3 partitions each).
pub(crate) fn tansu_with_topics(
    port: u16,
    advertised: u16,
    log: &Path,
    topics: &[&str],
) -> Running {
    require_tool("tansu");
    let child = Command::new("tansu")
        .args([
            "broker",
            "--listener-url",
            &format!("tcp://127.0.0.1:{port}"),
            "--advertised-listener-url",
            &format!("tcp://127.0.0.1:{advertised}"),
            "--storage-engine",
            "memory://tansu/",
        ])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap())
        .spawn()
        .expect("start tansu");
    let broker = Running(child);
    wait_listening(port, "tansu");
    for topic in topics {
        let out = Command::new("tansu")
            .args(["topic", "create", topic, "--partitions", "3", "--broker"])
            .arg(format!("tcp://127.0.0.1:{port}"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "creating topic {topic}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    broker
}

/// The loopback TCP forwarder of `tcp_proxy.py`: `listen` to `target`.
fn proxy(listen: u16, target: u16) -> Running {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/tcp_proxy.py");
    let mut child = Command::new("python3")
        .arg(script)
        .args([listen.to_string(), target.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "ready");
    Running(child)
}

/// Every message on the topic, read by confluent-kafka: (key, payload), JSON messages.
fn consume(bootstrap: &str, count: usize) -> Vec<(Option<String>, Value)> {
    consume_as(bootstrap, count, None)
}

/// As `consume`; with `proto`, the messages are protobuf decoded by code protoc generates
/// from that file, and must say so in their header.
fn consume_as(bootstrap: &str, count: usize, proto: Option<&Path>) -> Vec<(Option<String>, Value)> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/e2e/kafka_consume.py");
    let out = Command::new("python3")
        .arg(script)
        .args([bootstrap, TOPIC, &count.to_string(), "90"])
        .args(proto)
        .output()
        .unwrap();
    let header = match proto {
        Some(_) => "hawking.flows.v1+protobuf",
        None => "hawking.flows.v1+json",
    };
    assert!(
        out.status.success(),
        "consumer: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let m: Value = serde_json::from_str(l).unwrap();
            assert_eq!(m["headers"]["hawking-schema"], header, "{m}");
            (m["key"].as_str().map(str::to_string), m["value"].clone())
        })
        .collect()
}

/// A store with the pod's history and a config tying 127.0.0.0/8's exporters to it, with
/// `[kafka]` pointing at `brokers` (and `kafka_extra` lines).
fn set_up(tmp: &Path, brokers: &str, kafka_extra: &str) -> (PathBuf, PathBuf) {
    let data = tmp.join("data");
    let pods = tmp.join("pods.json");
    recording(&pods);
    import(&data, &pods, DAY + 7 * 86_400);
    let config = tmp.join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
             exporters = [\"127.0.0.0/8\"]\npod_cidrs = [\"10.4.0.0/16\"]\n\n\
             [kafka]\nbrokers = \"{brokers}\"\n{kafka_extra}\n"
        ),
    )
    .unwrap();
    (data, config)
}

/// Flow `i` (from `first`): the pod's (every fifth from an address no one held) to a remote
/// end, starting `i` seconds into the day, `1000 + i` bytes (its identity in the checks).
pub(crate) fn flows(first: i64, n: i64) -> Vec<FlowRecord> {
    (first..first + n)
        .map(|i| {
            let src = if i % 5 == 0 { "10.4.9.9" } else { "10.4.1.10" };
            flow_to_the_web(i, DAY * 1_000_000 + i * 1_000_000, 500_000, src)
        })
        .collect()
}

fn text(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

/// What a flow says, by its bytes: (start µs, source, its attribution, pod, workload, the
/// destination's attribution).
type Said = (
    i64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
);

fn said_by_messages(messages: &[(Option<String>, Value)]) -> BTreeMap<u64, Vec<Said>> {
    let mut by_bytes: BTreeMap<u64, Vec<Said>> = BTreeMap::new();
    for (_, m) in messages {
        // JSON says RFC 3339, protobuf µs.
        let start = match &m["flow_start"] {
            Value::String(t) => t.parse::<jiff::Timestamp>().unwrap().as_microsecond(),
            v => v.as_i64().unwrap(),
        };
        by_bytes
            .entry(m["bytes"].as_u64().unwrap())
            .or_default()
            .push((
                start,
                text(&m["src_ip"]),
                text(&m["src_attribution"]),
                text(&m["src_pod"]),
                text(&m["src_workload"]),
                text(&m["dst_attribution"]),
            ));
    }
    by_bytes
}

fn said_by_store(data: &Path) -> BTreeMap<u64, Vec<Said>> {
    let mut by_bytes: BTreeMap<u64, Vec<Said>> = BTreeMap::new();
    for row in sql(
        data,
        "SELECT bytes, CAST(flow_start AS BIGINT) AS start_us, src_ip, src_attribution, src_pod, \
         src_workload, dst_attribution FROM flows",
    ) {
        by_bytes
            .entry(row["bytes"].as_u64().unwrap())
            .or_default()
            .push((
                row["start_us"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("{row:?}")),
                text(row.get("src_ip").unwrap_or(&Value::Null)),
                text(row.get("src_attribution").unwrap_or(&Value::Null)),
                text(row.get("src_pod").unwrap_or(&Value::Null)),
                text(row.get("src_workload").unwrap_or(&Value::Null)),
                text(row.get("dst_attribution").unwrap_or(&Value::Null)),
            ));
    }
    by_bytes
}

/// Every message has the fields `schemas/kafka/flow.v1.schema.json` requires, no others,
/// each of the type it states.
fn follow_the_published_schema(messages: &[(Option<String>, Value)]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/kafka/flow.v1.schema.json");
    let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let properties = schema["properties"].as_object().unwrap();
    for (_, m) in messages {
        let m = m.as_object().unwrap();
        for required in schema["required"].as_array().unwrap() {
            assert!(
                m.contains_key(required.as_str().unwrap()),
                "{required} in {m:?}"
            );
        }
        for (name, value) in m {
            let stated = properties
                .get(name)
                .unwrap_or_else(|| panic!("{name} is not in the published schema"));
            let fits = match stated["type"].as_str() {
                Some("string") => value.is_string(),
                Some("integer") => value.is_i64() || value.is_u64(),
                Some("boolean") => value.is_boolean(),
                other => panic!("{name}: type {other:?}"),
            };
            assert!(fits, "{name} = {value} is not {}", stated["type"]);
        }
    }
}

fn kafka_sent(hawking: &Hawking) -> f64 {
    metric_sum(
        &hawking.metrics_text(),
        "hawking_component_sent_events_total",
        &[("component", "kafka")],
    )
}

pub(crate) fn wait_until(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A `hawking serve` publishing to a tansu broker (with `kafka_extra` in `[kafka]`), after
/// `n` flows were sent and both stored and acknowledged by the broker.
struct Published {
    hawking: Hawking,
    data: PathBuf,
    brokers: String,
    sent: Vec<FlowRecord>,
    _broker: Running,
    _tmp: tempfile::TempDir,
}

impl Published {
    fn run(n: i64, kafka_extra: &str) -> Published {
        let tmp = tempfile::tempdir().unwrap();
        let port = free_tcp_port();
        let broker = tansu(port, port, &tmp.path().join("tansu.log"));
        let brokers = format!("127.0.0.1:{port}");
        let (data, config) = set_up(tmp.path(), &brokers, kafka_extra);
        let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
        let sent = flows(0, n);
        send_ipfix(hawking.netflow, "127.0.0.1", &sent);
        let total = sent.len() as f64;
        hawking.wait_metric(
            "hawking_store_rows_written_total",
            &[("table", "flows")],
            total,
        );
        wait_until(
            "every flow delivered to Kafka",
            Duration::from_secs(30),
            || kafka_sent(&hawking) >= total,
        );
        Published {
            hawking,
            data,
            brokers,
            sent,
            _broker: broker,
            _tmp: tmp,
        }
    }
}

#[test]
fn every_stored_flow_reaches_an_outside_consumer_with_its_attribution() {
    let run = Published::run(2000, "");
    let (sent, data) = (&run.sent, &run.data);
    let messages = consume(&run.brokers, sent.len());
    assert_eq!(messages.len(), sent.len(), "one message per flow, no more");
    // Keyed by the exporter (the default): one exporter's flows keep their order.
    assert!(
        messages
            .iter()
            .all(|(k, _)| k.as_deref() == Some("127.0.0.1"))
    );
    follow_the_published_schema(&messages);
    let (kafka, store) = (said_by_messages(&messages), said_by_store(data));
    assert_eq!(kafka.len(), sent.len());
    assert_eq!(
        kafka, store,
        "the topic says what the store says, flow for flow"
    );
    let pods = messages
        .iter()
        .filter(|(_, m)| m["src_pod"] == "web-5f6d7c8b9-k8m2p" && m["src_namespace"] == "shop")
        .count();
    assert_eq!(pods, 1600, "four flows in five are the pod's");
    let unknown = messages
        .iter()
        .filter(|(_, m)| m["src_attribution"] == "unknown" && m.get("src_pod").is_none())
        .count();
    assert_eq!(
        unknown, 400,
        "an address no one held is unknown, with no pod made up"
    );
    let report = run.hawking.stop();
    assert_eq!(report.flows, sent.len() as u64);
}

#[test]
fn protobuf_messages_decoded_from_the_published_proto_say_what_the_store_says() {
    let run = Published::run(1000, "format = \"protobuf\"\nkey = \"source_workload\"");
    let (sent, data) = (&run.sent, &run.data);
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas/kafka/flow_v1.proto");
    let messages = consume_as(&run.brokers, sent.len(), Some(&proto));
    assert_eq!(messages.len(), sent.len());
    assert_eq!(said_by_messages(&messages), said_by_store(data));
    // Keyed by the source workload where there is one; an unknown source has no key.
    for (key, m) in &messages {
        match m["src_attribution"].as_str() {
            Some("pod") => assert_eq!(key.as_deref(), Some("prod/shop/web"), "{m}"),
            _ => assert_eq!(key, &None, "{m}"),
        }
    }
    let unknown = messages
        .iter()
        .filter(|(_, m)| m["src_attribution"] == "unknown" && m.get("src_pod").is_none())
        .count();
    assert_eq!(
        unknown, 200,
        "an absent value is an absent field, not an empty string"
    );
    run.hawking.stop();
}

#[test]
fn a_broker_out_of_reach_for_30_s_mid_send_loses_no_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let (broker_port, proxy_port) = (free_tcp_port(), free_tcp_port());
    // Hawking reaches the broker only through the proxy (it is what the broker advertises):
    // killing the proxy cuts it off while the broker keeps what it has.
    let _broker = tansu(broker_port, proxy_port, &tmp.path().join("tansu.log"));
    let mut cut = Some(proxy(proxy_port, broker_port));
    let brokers = format!("127.0.0.1:{proxy_port}");
    let (data, config) = set_up(
        tmp.path(),
        &brokers,
        "delivery_timeout_secs = 3.0\nretry_interval_secs = 1.0",
    );
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    let spooled = |h: &Hawking| metric_sum(&h.metrics_text(), "hawking_kafka_spool_messages", &[]);
    // A sustained send: 500 flows a second for 45 s; the broker is out of reach from 5 s
    // to 35 s.
    let (per_second, seconds) = (500, 45);
    let started = Instant::now();
    let mut most_spooled: f64 = 0.0;
    for s in 0..seconds {
        send_ipfix(
            hawking.netflow,
            "127.0.0.1",
            &flows(s * per_second, per_second),
        );
        if s == 5 {
            drop(cut.take());
        }
        if s == 35 {
            cut = Some(proxy(proxy_port, broker_port));
        }
        most_spooled = most_spooled.max(spooled(&hawking));
        let next = Duration::from_secs(s as u64 + 1);
        if let Some(wait) = next.checked_sub(started.elapsed()) {
            std::thread::sleep(wait);
        }
    }
    let total = (per_second * seconds) as usize;
    assert!(
        most_spooled > 0.0,
        "while the broker was out of reach flows waited in the spool"
    );
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        total as f64,
    );
    let drained = Instant::now() + Duration::from_secs(60);
    while spooled(&hawking) != 0.0 || kafka_sent(&hawking) < total as f64 {
        let kafka: Vec<String> = hawking
            .metrics_text()
            .lines()
            .filter(|l| l.contains("kafka") && !l.starts_with('#'))
            .map(str::to_string)
            .collect();
        assert!(
            Instant::now() < drained,
            "the spool did not drain in 60 s: {kafka:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let messages = consume(&brokers, total);
    let by_bytes = said_by_messages(&messages);
    let duplicates = messages.len() - by_bytes.len();
    eprintln!(
        "{} messages for {total} flows ({duplicates} duplicates); at most {most_spooled} spooled",
        messages.len()
    );
    assert_eq!(by_bytes.len(), total, "no flow lost");
    assert_eq!(by_bytes, {
        let mut store = said_by_store(&data);
        // Duplicates (a delivery whose acknowledgement was cut off) say the same again.
        for (bytes, said) in store.iter_mut() {
            let n = by_bytes.get(bytes).map_or(1, Vec::len);
            *said = vec![said[0].clone(); n];
        }
        store
    });
    hawking.stop();
}
