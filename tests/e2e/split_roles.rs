//! Split roles: a `hawking serve --role collector` receives IPFIX from three exporters and
//! publishes the flows raw to Kafka, keyed by exporter; two `--role enricher`s in one
//! consumer group attribute them into one store. The store says what an all-in-one
//! `hawking serve` says of the same flows (through tansu, a real broker), and an enricher
//! killed with SIGKILL mid-run loses nothing: its partitions go to the other, which reads
//! from the last commit (through librdkafka's mock cluster: tansu keeps a dead member in its
//! group, so the partitions it held are never given to the living one).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rdkafka::mocking::MockCluster;
use rdkafka::producer::DefaultProducerContext;

use crate::kafka::{flows, free_tcp_port, tansu_with_topics};
use crate::replay::{DAY, import, recording};
use crate::support::{Hawking, StoreArg, send_ipfix, sql, sql_i64};

const EXPORTERS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
const TOPIC: &str = "hawking.raw";
const TOTAL: i64 = 9_000;

/// The config every process of a test runs with: the pod's cluster, `[roles]` meeting on
/// `brokers` (a member that stops heartbeating leaves the group after 6 s).
fn config(tmp: &Path, brokers: &str) -> PathBuf {
    let config = tmp.join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[enricher]\ngrace_secs = 0.5\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
             exporters = [\"127.0.0.0/8\"]\npod_cidrs = [\"10.4.0.0/16\"]\n\n\
             [store.compaction]\nenabled = false\n\n\
             [roles]\nbrokers = \"{brokers}\"\n\
             properties = {{ \"session.timeout.ms\" = \"6000\", \"heartbeat.interval.ms\" = \"500\", \
             \"max.poll.interval.ms\" = \"7000\", \"auto.commit.interval.ms\" = \"200\" }}\n"
        ),
    )
    .unwrap();
    config
}

/// A store at `data` holding the pod's history.
fn store(tmp: &Path, data: &(impl StoreArg + ?Sized)) {
    let pods = tmp.join("pods.json");
    recording(&pods);
    import(data, &pods, DAY + 7 * 86_400);
}

/// What a store says of its flows, one line per group, each flow counted once.
fn summary(data: &(impl StoreArg + ?Sized)) -> Vec<String> {
    sql(
        data,
        "SELECT exporter, src_attribution, src_workload, dst_attribution, count(*) AS n, \
         sum(bytes) AS bytes, min(flow_start) AS first, max(flow_start) AS last \
         FROM (SELECT DISTINCT exporter, bytes, flow_start, flow_end, src_ip, src_port, dst_ip, \
         dst_port, packets, src_attribution, src_pod, src_workload, dst_attribution FROM flows) \
         GROUP BY 1, 2, 3, 4 ORDER BY 1, 2",
    )
    .iter()
    .map(|r| serde_json::Value::Object(r.clone()).to_string())
    .collect()
}

/// Sends flows `range` to `to`, spread over the three exporters, about 1,200 a second.
fn send(to: std::net::SocketAddr, range: std::ops::Range<i64>) {
    let all = flows(range.start, range.end - range.start);
    for chunk in all.chunks(300) {
        for (e, part) in EXPORTERS.iter().zip(chunk.chunks(100)) {
            send_ipfix(to, e, part);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn args(config: &Path, role: &'static str) -> [String; 4] {
    [
        "--config".into(),
        config.to_str().unwrap().into(),
        "--role".into(),
        role.into(),
    ]
}

fn start(data: &(impl StoreArg + ?Sized), args: &[String; 4]) -> Hawking {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Hawking::start(data, &args)
}

/// The all-in-one run of the test's flows, into `tmp/whole`.
fn all_in_one(tmp: &Path, config: &Path) -> PathBuf {
    let whole = tmp.join("whole");
    store(tmp, &whole);
    let one = start(&whole, &args(config, "all"));
    send(one.netflow, 0..TOTAL);
    one.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        TOTAL as f64,
    );
    one.stop();
    whole
}

fn flows_stored(data: &(impl StoreArg + ?Sized)) -> i64 {
    sql_i64(data, "SELECT count(*) FROM flows")
}

fn distinct_flows(data: &(impl StoreArg + ?Sized)) -> i64 {
    sql_i64(data, "SELECT count(DISTINCT bytes) FROM flows")
}

/// Waits until `data` holds every flow of the test once at least (or a minute has passed).
fn wait_for_every_flow(data: &(impl StoreArg + ?Sized)) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while distinct_flows(data) < TOTAL && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn flows_written(h: &Hawking) -> f64 {
    h.metric("hawking_store_rows_written_total", &[("table", "flows")])
}

#[test]
fn a_collector_and_two_enrichers_store_what_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let split = tmp.path().join("split");
    two_enrichers_store_what_one_process_does(tmp.path(), &split, &split);
}

/// The same with the two enrichers writing one bucket of an S3 server, each with its own
/// local directory.
#[test]
fn two_enrichers_writing_one_bucket_store_what_one_process_does() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    let (first, second) = (garage.store("split"), garage.store("split"));
    two_enrichers_store_what_one_process_does(
        tmp.path(),
        &first.with_local_dir(&tmp.path().join("first")),
        &second.with_local_dir(&tmp.path().join("second")),
    );
}

fn two_enrichers_store_what_one_process_does(
    tmp: &Path,
    split: &(impl StoreArg + ?Sized),
    second_split: &(impl StoreArg + ?Sized),
) {
    let port = free_tcp_port();
    let _broker = tansu_with_topics(port, port, &tmp.join("tansu.log"), &[TOPIC]);
    let config = config(tmp, &format!("127.0.0.1:{port}"));
    let whole = all_in_one(tmp, &config);
    store(tmp, split);
    let collector = start(&tmp.join("collector"), &args(&config, "collector"));
    let first = start(split, &args(&config, "enricher"));
    let second = start(second_split, &args(&config, "enricher"));
    // Both enrichers in the group before the flows come, so both take partitions.
    std::thread::sleep(Duration::from_secs(4));
    send(collector.netflow, 0..TOTAL);
    wait_for_every_flow(split);
    collector.stop();
    let (a, b) = (flows_written(&first), flows_written(&second));
    first.stop();
    second.stop();
    assert!(
        a > 0.0 && b > 0.0,
        "both enrichers took partitions ({a}, {b})"
    );
    assert_eq!(flows_stored(split), TOTAL, "every flow once");
    assert_eq!(
        summary(split),
        summary(&whole),
        "the same flows, attributed the same"
    );
}

#[test]
fn an_enricher_killed_mid_run_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let mock = MockCluster::<DefaultProducerContext>::new(1).unwrap();
    mock.create_topic(TOPIC, 3, 1).unwrap();
    let config = config(tmp.path(), &mock.bootstrap_servers());
    let whole = all_in_one(tmp.path(), &config);
    let split = tmp.path().join("split");
    store(tmp.path(), &split);
    let collector = start(&tmp.path().join("collector"), &args(&config, "collector"));
    let first = start(&split, &args(&config, "enricher"));
    let second = start(&split, &args(&config, "enricher"));
    std::thread::sleep(Duration::from_secs(4));
    send(collector.netflow, 0..TOTAL / 2);
    let deadline = Instant::now() + Duration::from_secs(30);
    while flows_written(&second) < 100.0 {
        assert!(
            Instant::now() < deadline,
            "the second enricher stored nothing"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Frozen, then killed: what it stored is what the store holds beyond what the other
    // had written before the count (an upper bound: the other goes on writing).
    second.pause();
    let first_before = flows_written(&first) as i64;
    let stored_by_second = flows_stored(&split) - first_before;
    second.kill();
    send(collector.netflow, TOTAL / 2..TOTAL);
    wait_for_every_flow(&split);
    collector.stop();
    first.stop();
    assert_eq!(distinct_flows(&split), TOTAL, "no flow lost");
    assert_eq!(
        summary(&split),
        summary(&whole),
        "the same flows, attributed the same"
    );
    let most = sql_i64(
        &split,
        "SELECT max(n) FROM (SELECT count(*) AS n FROM flows GROUP BY bytes)",
    );
    assert!(most <= 2, "a flow stored {most} times");
    let twice = flows_stored(&split) - TOTAL;
    assert!(
        twice <= stored_by_second,
        "{twice} stored twice: more than the killed enricher stored ({stored_by_second})"
    );
    eprintln!(
        "split roles: {TOTAL} flows; the killed enricher had stored at most {stored_by_second}, \
         {twice} of them after its last offset commit (stored twice)"
    );
}
