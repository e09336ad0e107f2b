//! The enrichment stage driven without sockets, as replay drives it: what one source batch
//! carries (an address observation, a NAT translation and the flows they explain) is applied
//! in order, flows wait out the grace period, and the rows of every table come out.

use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray, RecordBatch};
use hawking_schemas::OwnerKind;
use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::ip::parse_ip;
use hawking_schemas::nat::{NatAlive, NatEvent, NatEventKind};
use hawking_schemas::observation::{Event, Observation, ObservedObject, Resource};
use hawking_schemas::pipeline::{SourceBatch, Table};
use hawking_schemas::telemetry::Telemetry;

use crate::config::{ClusterConfig, EnricherConfig};
use crate::keeper::{HistoryKeeper, Mode};
use crate::nat::{NatIndex, NatTrust};
use crate::stage::{Clusters, EnrichmentStage, StageConfig};
use crate::watch_state::HistoryState;

const T0: i64 = 1_795_165_200_000_000; // 2026-11-20T09:00:00Z

fn ip(s: &str) -> u128 {
    parse_ip(s).unwrap()
}

fn web_pod() -> ObservedObject {
    ObservedObject {
        resource: Resource::Pods,
        kind: OwnerKind::Pod,
        uid: "3b5c7e9a-0000-4000-8000-000000000001".into(),
        namespace: Some("shop".into()),
        name: "web-7d4b9-k8m2p".into(),
        workload_kind: Some("Deployment".into()),
        workload: Some("web".into()),
        node: Some("node-1".into()),
        ports: None,
        addrs: vec![ip("10.4.1.10")],
        ranges: vec![],
        since: Some(T0),
        released: false,
        released_by: None,
        latest_timestamp: Some(T0),
        alive_from: None,
        alive_until: None,
    }
}

fn stage(grace: Duration) -> EnrichmentStage {
    stage_with(grace, NatIndex::default(), &Telemetry::detached())
}

fn stage_with(grace: Duration, nat: NatIndex, telemetry: &Telemetry) -> EnrichmentStage {
    stage_of(prod_config(), grace, nat, telemetry)
}

/// One cluster `prod`: pods in 10.4.0.0/16, flows exported from loopback.
fn prod_config() -> EnricherConfig {
    EnricherConfig {
        clusters: vec![ClusterConfig {
            name: "prod".into(),
            watch: Some(false),
            exporters: vec!["127.0.0.0/8".parse().unwrap()],
            pod_cidrs: vec!["10.4.0.0/16".parse().unwrap()],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn stage_of(
    config: EnricherConfig,
    grace: Duration,
    nat: NatIndex,
    telemetry: &Telemetry,
) -> EnrichmentStage {
    stage_from(clusters_of(config, &[]), grace, nat, telemetry)
}

/// The clusters of `config`, those named in `watched` watched live (and out of sync until
/// their watches start).
fn clusters_of(config: EnricherConfig, watched: &[&str]) -> Clusters {
    let mut keeper = HistoryKeeper::new(Mode::Live);
    let selector = config.apply(keeper.history_mut()).unwrap();
    for cluster in watched {
        keeper.begin_watching(cluster, T0, "starting");
    }
    Clusters {
        keeper,
        selector,
        watched: watched.iter().map(|c| c.to_string()).collect(),
        state: HistoryState::default(),
        state_path: None,
    }
}

fn stage_from(
    clusters: Clusters,
    grace: Duration,
    nat: NatIndex,
    telemetry: &Telemetry,
) -> EnrichmentStage {
    EnrichmentStage::new(
        Some(clusters),
        nat,
        StageConfig {
            grace,
            max_held_flows: 0,
            nat_keep_closed: Duration::from_secs(7200),
        },
        telemetry,
    )
    .unwrap()
}

fn flow(src: &str, sport: u16, dst: &str, dport: u16, at: i64) -> FlowRecord {
    FlowRecord {
        flow_start: at,
        flow_end: at + 1_000_000,
        src_ip: ip(src),
        dst_ip: ip(dst),
        src_port: sport,
        dst_port: dport,
        protocol: 6,
        tcp_flags: 0x1b,
        bytes: 1500,
        packets: 3,
        sampling_rate: 1,
        in_if: 1,
        out_if: 2,
    }
}

/// One batch as a NAT-aware source would send it: the pod appears, node-1 masquerades its
/// connection, and the firewall outside sees node-1's address and port; plus the pod's own
/// flow inside the cluster.
fn batch() -> SourceBatch {
    batch_at(T0)
}

/// [`batch`] with its events from `t0` on (the pod was there from [`T0`]): its flows start
/// at `t0 + 61 s`.
fn batch_at(t0: i64) -> SourceBatch {
    let mut b = SourceBatch::default();
    b.observations.push(Observation {
        cluster: "prod".into(),
        at: T0,
        event: Event::Upsert(web_pod()),
    });
    b.nat_events.push(NatEvent {
        at: t0 + 60_000_000,
        kind: Some(NatEventKind::Create),
        exporter: ip("127.0.0.1"),
        observation_domain: 0,
        protocol: 6,
        inside_ip: ip("10.4.1.10"),
        inside_port: 40000,
        outside_ip: ip("192.168.10.11"),
        outside_port: 61000,
        remote_ip: ip("93.184.216.34"),
        remote_port: 443,
    });
    let origin = FlowOrigin {
        received_at: t0 + 70_000_000,
        exporter: ip("127.0.0.1"),
        observation_domain: 0,
        source_kind: SourceKind::Ipfix,
    };
    let at = t0 + 61_000_000;
    b.flows.push(
        &origin,
        &flow("192.168.10.11", 61000, "93.184.216.34", 443, at),
    );
    b.flows
        .push(&origin, &flow("10.4.1.10", 40001, "10.4.9.9", 8080, at));
    b
}

/// A `t0` for [`batch_at`] whose flows are happening now (they end a second from now).
fn just_now() -> i64 {
    hawking_schemas::time::now_micros() - 61_000_000
}

fn text(rows: &RecordBatch, column: &str, i: usize) -> Option<String> {
    let c = rows.column_by_name(column).unwrap().as_string::<i32>();
    (!c.is_null(i)).then(|| c.value(i).to_string())
}

#[test]
fn a_batch_is_applied_in_order_held_for_the_grace_period_then_attributed() {
    let mut stage = stage(Duration::from_secs(5));
    let start = Instant::now();
    stage.accept(batch_at(just_now()), start);
    assert_eq!(stage.held_flows(), 2);

    // Within the grace period only the history and the translation come out.
    let mut out = Vec::new();
    stage
        .release(start + Duration::from_secs(1), false, &mut out)
        .unwrap();
    let tables: Vec<Table> = out.iter().map(|(t, _)| *t).collect();
    assert_eq!(tables, [Table::IpHistoryLog, Table::NatHistoryLog]);
    assert_eq!(stage.held_flows(), 2);

    out.clear();
    stage
        .release(start + Duration::from_secs(5), false, &mut out)
        .unwrap();
    let [(Table::Flows, rows)] = &out[..] else {
        panic!("{:?}", out.iter().map(|(t, _)| t).collect::<Vec<_>>());
    };
    assert_eq!(rows.num_rows(), 2);
    // Seen outside node-1: through the translation to the pod.
    assert_eq!(text(rows, "src_attribution", 0).as_deref(), Some("snat"));
    assert_eq!(text(rows, "src_pod", 0).as_deref(), Some("web-7d4b9-k8m2p"));
    assert_eq!(
        text(rows, "dst_attribution", 0).as_deref(),
        Some("external")
    );
    // Inside: the pod itself; the peer is in the pod range but nobody held it: unknown.
    assert_eq!(text(rows, "src_attribution", 1).as_deref(), Some("pod"));
    assert_eq!(text(rows, "src_workload", 1).as_deref(), Some("web"));
    assert_eq!(text(rows, "dst_attribution", 1).as_deref(), Some("unknown"));
    assert_eq!(text(rows, "dst_pod", 1), None);
    assert_eq!(stage.held_flows(), 0);
}

#[test]
fn closing_releases_everything_held_at_once() {
    let mut stage = stage(Duration::from_secs(3600));
    let now = Instant::now();
    stage.accept(batch(), now);
    let mut out = Vec::new();
    stage.release(now, true, &mut out).unwrap();
    let flows: usize = out
        .iter()
        .filter(|(t, _)| *t == Table::Flows)
        .map(|(_, r)| r.num_rows())
        .sum();
    assert_eq!(flows, 2);
}

/// Asserts that `telemetry`'s Prometheus text has the line `line`.
fn assert_exposes(telemetry: &Telemetry, line: &str) {
    let exposition = telemetry.exposition();
    assert!(
        exposition.lines().any(|l| l == line),
        "{line} in {exposition}"
    );
}

/// How many flow rows `out` holds.
fn flow_rows(out: &[(Table, RecordBatch)]) -> usize {
    out.iter()
        .filter(|(t, _)| *t == Table::Flows)
        .map(|(_, r)| r.num_rows())
        .sum()
}

#[test]
fn flows_that_ended_a_grace_period_before_they_came_are_attributed_at_once() {
    use hawking_schemas::pipeline::Receipt;
    let ledger = std::sync::Arc::new(Ledger::default());
    let telemetry = Telemetry::detached();
    let mut stage = stage_with(Duration::from_secs(5), NatIndex::default(), &telemetry);
    let start = Instant::now();
    // Exporters send flows when they time out, long after they ended: their history is in.
    let mut b = batch();
    // And one that is still going on: its history may still be on its way.
    let recent = batch_at(just_now());
    b.flows.extend_from(&recent.flows.select(&[1]));
    b.receipts.push(Receipt::new(ledger.clone(), 1));
    stage.accept(b, start);
    assert_eq!(stage.held_flows(), 1, "only the recent flow waits");
    let mut out = Vec::new();
    stage.release(start, false, &mut out).unwrap();
    assert_eq!(flow_rows(&out), 2, "the two settled flows, at once");
    let rows = &out.iter().find(|(t, _)| *t == Table::Flows).unwrap().1;
    assert_eq!(text(rows, "src_attribution", 0).as_deref(), Some("snat"));
    assert_eq!(text(rows, "src_workload", 1).as_deref(), Some("web"));
    let mut receipts = Vec::new();
    stage.take_receipts(&mut receipts);
    assert!(
        receipts.is_empty(),
        "the batch's receipt waits for its recent flow"
    );

    out.clear();
    stage
        .release(start + Duration::from_secs(5), false, &mut out)
        .unwrap();
    assert_eq!(flow_rows(&out), 1);
    stage.take_receipts(&mut receipts);
    receipts.drain(..).for_each(Receipt::stored);
    assert_eq!(*ledger.0.lock().unwrap(), [1]);
    assert_exposes(&telemetry, "hawking_enricher_settled_flows_total 2");
}

#[test]
fn while_a_watched_cluster_is_out_of_sync_every_flow_waits() {
    let clusters = clusters_of(prod_config(), &["prod"]);
    let telemetry = Telemetry::detached();
    let mut stage = stage_from(
        clusters,
        Duration::from_secs(5),
        NatIndex::default(),
        &telemetry,
    );
    let start = Instant::now();
    stage.accept(batch(), start);
    assert_eq!(stage.held_flows(), 2, "old flows wait for the watch too");
    let mut out = Vec::new();
    stage.release(start, false, &mut out).unwrap();
    assert_eq!(flow_rows(&out), 0);
    stage
        .release(start + Duration::from_secs(5), false, &mut out)
        .unwrap();
    assert_eq!(flow_rows(&out), 2);
}

#[test]
fn beyond_the_bound_on_held_flows_the_oldest_are_attributed_early_and_counted() {
    let telemetry = Telemetry::detached();
    let config = StageConfig {
        grace: Duration::from_secs(5),
        max_held_flows: 2,
        nat_keep_closed: Duration::from_secs(7200),
    };
    let clusters = clusters_of(prod_config(), &[]);
    let mut stage =
        EnrichmentStage::new(Some(clusters), NatIndex::default(), config, &telemetry).unwrap();
    let start = Instant::now();
    stage.accept(batch_at(just_now()), start);
    stage.accept(batch_at(just_now()), start);
    assert_eq!(stage.held_flows(), 4);
    let mut out = Vec::new();
    stage.release(start, false, &mut out).unwrap();
    assert_eq!(flow_rows(&out), 2, "the oldest batch goes before its time");
    assert_eq!(stage.held_flows(), 2, "memory stays within the bound");
    assert_exposes(&telemetry, "hawking_enricher_early_attributions_total 2");
}

/// Receipts a test source issued, and the highest one the stage let complete.
#[derive(Default)]
struct Ledger(std::sync::Mutex<Vec<u64>>);

impl hawking_schemas::pipeline::ReceiptLedger for Ledger {
    fn stored(&self, seq: u64) {
        self.0.lock().unwrap().push(seq);
    }
}

#[test]
fn a_receipt_is_handed_out_only_with_the_rows_of_its_batch_and_of_every_batch_before_it() {
    use hawking_schemas::pipeline::Receipt;
    let ledger = std::sync::Arc::new(Ledger::default());
    let receipt = |seq| Receipt::new(ledger.clone(), seq);
    let mut stage = stage(Duration::from_secs(5));
    let start = Instant::now();
    let mut first = batch_at(just_now());
    first.receipts.push(receipt(1));
    stage.accept(first, start);
    // A batch with no flows (the rest of the input was malformed) comes a second later: its
    // receipt says the first batch is stored too, so it waits behind its flows.
    let mut empty = SourceBatch::default();
    empty.receipts.push(receipt(2));
    stage.accept(empty, start + Duration::from_secs(1));
    let mut later = batch_at(just_now());
    later.receipts.push(receipt(3));
    stage.accept(later, start + Duration::from_secs(2));

    let (mut out, mut receipts) = (Vec::new(), Vec::new());
    let completed = |receipts: &mut Vec<Receipt>| {
        receipts.drain(..).for_each(Receipt::stored);
        ledger.0.lock().unwrap().clone()
    };
    stage
        .release(start + Duration::from_secs(4), false, &mut out)
        .unwrap();
    stage.take_receipts(&mut receipts);
    assert_eq!(
        completed(&mut receipts),
        Vec::<u64>::new(),
        "all still held"
    );
    stage
        .release(start + Duration::from_secs(5), false, &mut out)
        .unwrap();
    stage.take_receipts(&mut receipts);
    assert_eq!(
        completed(&mut receipts),
        [1, 2],
        "the first batch's rows are out"
    );
    stage
        .release(start + Duration::from_secs(7), false, &mut out)
        .unwrap();
    stage.take_receipts(&mut receipts);
    assert_eq!(completed(&mut receipts), [1, 2, 3]);
    // With nothing held, a batch without flows is handed out with the next release.
    let mut empty = SourceBatch::default();
    empty.receipts.push(receipt(4));
    stage.accept(empty, start + Duration::from_secs(8));
    stage.take_receipts(&mut receipts);
    assert!(receipts.is_empty(), "not before a release");
    stage
        .release(start + Duration::from_secs(8), false, &mut out)
        .unwrap();
    stage.take_receipts(&mut receipts);
    assert_eq!(completed(&mut receipts), [1, 2, 3, 4]);
}

/// The attributions of the flows a stage releases when closing.
fn attributions(stage: &mut EnrichmentStage, column: &str) -> Vec<Option<String>> {
    let mut out = Vec::new();
    stage.release(Instant::now(), true, &mut out).unwrap();
    out.iter()
        .filter(|(t, _)| *t == Table::Flows)
        .flat_map(|(_, rows)| (0..rows.num_rows()).map(|i| text(rows, column, i)))
        .collect()
}

fn dropped(telemetry: &Telemetry, reason: &str) -> u64 {
    use prometheus::Encoder;
    let mut text = Vec::new();
    prometheus::TextEncoder::new()
        .encode(&telemetry.registry().gather(), &mut text)
        .unwrap();
    String::from_utf8(text)
        .unwrap()
        .lines()
        .filter(|l| {
            l.starts_with("hawking_component_dropped_events_total{")
                && l.contains(&format!("reason=\"{reason}\""))
        })
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum()
}

#[test]
fn translations_from_a_nat_no_cluster_lists_are_dropped_and_counted() {
    let telemetry = Telemetry::detached();
    let mut stage = stage_with(Duration::ZERO, NatIndex::default(), &telemetry);
    let mut b = batch();
    // The same translation, from an address outside the cluster's `exporters`.
    b.nat_events[0].exporter = ip("203.0.113.9");
    stage.accept(b, Instant::now());
    let src = attributions(&mut stage, "src_attribution");
    // node-1's address then speaks for itself (no cluster holds it): never the pod.
    assert_eq!(src[0].as_deref(), Some("external"));
    assert_eq!(dropped(&telemetry, "nat_event_from_unlisted_exporter"), 1);
}

#[test]
fn a_flow_through_a_nat_that_went_silent_is_unknown_not_the_node() {
    let trust = NatTrust {
        silent_after: 120_000_000,
        ..NatTrust::default()
    };
    let mut stage = stage_with(
        Duration::ZERO,
        NatIndex::new(1_000_000).with_trust(trust),
        &Telemetry::detached(),
    );
    let mut b = batch();
    let origin = FlowOrigin {
        received_at: T0 + 70_000_000,
        exporter: ip("127.0.0.1"),
        observation_domain: 0,
        source_kind: SourceKind::Ipfix,
    };
    // Another connection through node-1 with no translation: while the NAT talks (its
    // templates at T0 + 100 s), the node's own traffic; 10 minutes later, with nothing
    // heard since, it may be a pod's whose translation was lost.
    b.nat_alive.push(NatAlive {
        exporter: ip("127.0.0.1"),
        observation_domain: 0,
        at: T0 + 100_000_000,
    });
    b.flows.push(
        &origin,
        &flow(
            "192.168.10.11",
            62000,
            "93.184.216.34",
            443,
            T0 + 150_000_000,
        ),
    );
    b.flows.push(
        &origin,
        &flow(
            "192.168.10.11",
            62001,
            "93.184.216.34",
            443,
            T0 + 700_000_000,
        ),
    );
    // A sign of life from a NAT no cluster lists vouches for nothing.
    b.nat_alive.push(NatAlive {
        exporter: ip("203.0.113.9"),
        observation_domain: 0,
        at: T0 + 700_000_000,
    });
    stage.accept(b, Instant::now());
    let src = attributions(&mut stage, "src_attribution");
    assert_eq!(src[0].as_deref(), Some("snat"), "the translated connection");
    assert_eq!(
        src[2].as_deref(),
        Some("external"),
        "node-1's own, while its NAT talked"
    );
    assert_eq!(
        src[3].as_deref(),
        Some("unknown"),
        "while its NAT was silent"
    );
}

#[test]
fn clusters_whose_nodes_share_an_address_attribute_through_their_own_translations() {
    // Two clusters built from one template: the same pod range and node addresses; each
    // cluster's node agent and firewall export from its own addresses.
    let cluster = |name: &str, exporters: &str| ClusterConfig {
        name: name.into(),
        watch: Some(false),
        exporters: vec![exporters.parse().unwrap()],
        pod_cidrs: vec!["10.4.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    let config = EnricherConfig {
        clusters: vec![
            cluster("prod", "127.0.1.0/24"),
            cluster("staging", "127.0.2.0/24"),
        ],
        ..Default::default()
    };
    let mut stage = stage_of(
        config,
        Duration::ZERO,
        NatIndex::default(),
        &Telemetry::detached(),
    );
    let mut b = SourceBatch::default();
    let pod = |name: &str, uid: &str, addr: &str| ObservedObject {
        name: name.into(),
        uid: uid.into(),
        addrs: vec![ip(addr)],
        ..web_pod()
    };
    for (c, p) in [
        (
            "prod",
            pod(
                "web-prod",
                "00000000-0000-4000-8000-00000000000a",
                "10.4.1.10",
            ),
        ),
        (
            "staging",
            pod(
                "web-staging",
                "00000000-0000-4000-8000-00000000000b",
                "10.4.1.20",
            ),
        ),
    ] {
        b.observations.push(Observation {
            cluster: c.into(),
            at: T0,
            event: Event::Upsert(p),
        });
    }
    let translation = |nat: &str, inside: &str| NatEvent {
        exporter: ip(nat),
        inside_ip: ip(inside),
        ..batch().nat_events[0]
    };
    b.nat_events.push(translation("127.0.1.1", "10.4.1.10"));
    b.nat_events.push(translation("127.0.2.1", "10.4.1.20"));
    let at = T0 + 61_000_000;
    for firewall in ["127.0.1.2", "127.0.2.2"] {
        let origin = FlowOrigin {
            received_at: T0 + 70_000_000,
            exporter: ip(firewall),
            observation_domain: 0,
            source_kind: SourceKind::Ipfix,
        };
        b.flows.push(
            &origin,
            &flow("192.168.10.11", 61000, "93.184.216.34", 443, at),
        );
    }
    stage.accept(b, Instant::now());
    assert_eq!(
        attributions(&mut stage, "src_pod"),
        [
            Some("web-prod".to_string()),
            Some("web-staging".to_string())
        ]
    );
}
