//! Writes a day of realistic attributed flows into a store, through the same writer and
//! column tuning `hawking serve` uses, laid out as a compaction of closed hours would leave
//! them: one time-ordered file per hour partition. `hawking serve` does not write this layout
//! (no compaction yet: one file per hour partition per commit); the query benchmark on what
//! serve writes is `tests/bench/query_served_store.py`. For the query benchmark
//! (`tests/bench/query_top_workloads.sh`).
//!
//! ```sh
//! cargo run --release -p hawking-query --example gen_flows -- DIR ROWS [DAY]
//! ```
//! DIR is the store root (flows land in DIR/flows/date=…/hour=…), ROWS the total spread
//! evenly over 24 hours, DAY the UTC date (default 2026-11-24). The data is deterministic.
//!
//! Shape: 40 namespaces of 10 workloads each, 8 pods per workload on 50 nodes, traffic
//! skewed towards a few busy workloads; sources are pods (78%), nodes (8%), external hosts
//! (8%), unknown (4%), ambiguous (2%); destinations mix pods, services and 20 000 external
//! addresses; bytes follow a heavy tail.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{ArrayRef, StringArray};
use hawking_query::store::layout::HOUR_US;
use hawking_query::{PartitionedWriter, WriterOptions};
use hawking_schemas::flow::{FlowBatch, FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::ip::v4_to_u128;
use hawking_schemas::pipeline::Table;

const NAMESPACES: usize = 40;
const WORKLOADS_PER_NS: usize = 10;
const PODS_PER_WORKLOAD: usize = 8;
const NODES: usize = 50;
const EXTERNALS: u32 = 20_000;
const SERVICES: usize = 200;
const BATCH: usize = 65_536;

/// splitmix64: fast, deterministic, good enough for synthetic traffic.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Pod {
    ip: u128,
    namespace: usize,
    workload: usize,
    name: String,
    node: usize,
}

struct World {
    namespaces: Vec<String>,
    workloads: Vec<String>,
    kinds: Vec<&'static str>,
    pods: Vec<Pod>,
    nodes: Vec<(String, u128)>,
    services: Vec<(String, usize, u128)>,
}

fn world() -> World {
    let names = [
        "shop", "payments", "search", "auth", "media", "ads", "chat", "mail", "maps", "video",
    ];
    let namespaces: Vec<String> = (0..NAMESPACES)
        .map(|i| format!("{}-{}", names[i % names.len()], i / names.len()))
        .collect();
    let parts = [
        "api", "web", "worker", "cache", "db", "queue", "gateway", "indexer", "cron", "proxy",
    ];
    let workloads: Vec<String> = (0..NAMESPACES * WORKLOADS_PER_NS)
        .map(|i| parts[i % WORKLOADS_PER_NS].to_string())
        .collect();
    let kinds = (0..workloads.len())
        .map(|i| match i % WORKLOADS_PER_NS {
            3 | 4 => "StatefulSet",
            8 => "CronJob",
            9 => "DaemonSet",
            _ => "Deployment",
        })
        .collect();
    let nodes: Vec<(String, u128)> = (0..NODES)
        .map(|i| {
            (
                format!("node-{i:03}"),
                v4_to_u128(0xc0a8_0a00 | (i as u32 + 10)),
            )
        })
        .collect();
    let mut rng = Rng(7);
    let mut pods = Vec::new();
    for (w, workload) in workloads.iter().enumerate() {
        for p in 0..PODS_PER_WORKLOAD {
            let n = pods.len() as u32;
            pods.push(Pod {
                ip: v4_to_u128(0x0a04_0000 | n),
                namespace: w / WORKLOADS_PER_NS,
                workload: w,
                name: format!("{workload}-{:x}-{p:05x}", rng.below(0xfffff)),
                node: rng.below(NODES as u64) as usize,
            });
        }
    }
    let services = (0..SERVICES)
        .map(|i| {
            let w = i * workloads.len() / SERVICES;
            (
                workloads[w].clone(),
                w / WORKLOADS_PER_NS,
                v4_to_u128(0x0a60_0000 | i as u32),
            )
        })
        .collect();
    World {
        namespaces,
        workloads,
        kinds,
        pods,
        nodes,
        services,
    }
}

/// One endpoint's attribution columns for a batch, as references into the world.
#[derive(Default)]
struct Side<'a> {
    cluster: Vec<Option<&'a str>>,
    namespace: Vec<Option<&'a str>>,
    pod: Vec<Option<&'a str>>,
    workload_kind: Vec<Option<&'a str>>,
    workload: Vec<Option<&'a str>>,
    node: Vec<Option<&'a str>>,
    service: Vec<Option<&'a str>>,
    attribution: Vec<Option<&'a str>>,
    candidates: Vec<Option<&'a str>>,
}

impl<'a> Side<'a> {
    #[allow(clippy::too_many_arguments)]
    fn push(
        &mut self,
        attribution: &'a str,
        namespace: Option<&'a str>,
        pod: Option<&'a str>,
        kind: Option<&'a str>,
        workload: Option<&'a str>,
        node: Option<&'a str>,
        service: Option<&'a str>,
        candidates: Option<&'a str>,
    ) {
        let in_cluster = !matches!(attribution, "external" | "ambiguous");
        self.cluster.push(in_cluster.then_some("prod"));
        self.namespace.push(namespace);
        self.pod.push(pod);
        self.workload_kind.push(kind);
        self.workload.push(workload);
        self.node.push(node);
        self.service.push(service);
        self.attribution.push(Some(attribution));
        self.candidates.push(candidates);
    }

    fn columns(self) -> Vec<ArrayRef> {
        [
            self.cluster,
            self.namespace,
            self.pod,
            self.workload_kind,
            self.workload,
            self.node,
            self.service,
            self.attribution,
            self.candidates,
        ]
        .into_iter()
        .map(|c| Arc::new(StringArray::from(c)) as ArrayRef)
        .collect()
    }
}

/// A busy few and a long tail: index in `0..n` with density falling like 1/x.
fn skewed(rng: &mut Rng, n: usize) -> usize {
    let x = (n as f64).powf(rng.unit());
    (x as usize).saturating_sub(1).min(n - 1)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: gen_flows DIR ROWS [YYYY-MM-DD]");
        std::process::exit(2);
    }
    let root = PathBuf::from(&args[1]);
    let rows: usize = match args[2].replace('_', "").parse() {
        Ok(n) => n,
        Err(e) => {
            eprintln!("ROWS {:?}: {e}", args[2]);
            std::process::exit(2);
        }
    };
    let day = args.get(3).map(String::as_str).unwrap_or("2026-11-24");
    let Some(day_start) = hawking_query::store::layout::parse_date_dir(&format!("date={day}"))
    else {
        eprintln!("DAY {day:?}: use YYYY-MM-DD");
        std::process::exit(2);
    };
    let w = world();
    let mut writer =
        match PartitionedWriter::for_table(&root, Table::Flows, &WriterOptions::default()) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("{}: {e}", root.display());
                std::process::exit(1);
            }
        };
    let exporters: Vec<u128> = (0..4).map(|i| v4_to_u128(0xc0a8_0101 + i)).collect();
    let candidates: Vec<String> = (0..64)
        .map(|i| {
            let a = &w.pods[i * 7 % w.pods.len()];
            let b = &w.pods[(i * 7 + 1) % w.pods.len()];
            format!(
                "{}/{}, {}/{}",
                w.namespaces[a.namespace], a.name, w.namespaces[b.namespace], b.name
            )
        })
        .collect();
    let mut rng = Rng(42);
    let started = Instant::now();
    let per_hour = rows / 24;
    let mut written = 0usize;
    for hour in 0..24 {
        let hour_start = day_start + hour as i64 * HOUR_US;
        let n_hour = if hour == 23 {
            rows - per_hour * 23
        } else {
            per_hour
        };
        let step = HOUR_US as f64 / n_hour.max(1) as f64;
        let mut done = 0;
        while done < n_hour {
            let n = BATCH.min(n_hour - done);
            let mut batch = FlowBatch::with_capacity(n);
            let (mut src, mut dst) = (Side::default(), Side::default());
            for i in 0..n {
                // Time-ordered within the hour, as compaction writes a closed hour.
                let start = hour_start + ((done + i) as f64 * step) as i64;
                let duration = rng.below(60_000_000) as i64;
                let exporter = exporters[rng.below(exporters.len() as u64) as usize];
                let origin = FlowOrigin {
                    received_at: start + duration + 1_000_000 + rng.below(30_000_000) as i64,
                    exporter,
                    observation_domain: 0,
                    source_kind: SourceKind::Ipfix,
                };
                let heavy = rng.unit();
                let bytes = (64.0 / (1.0 - heavy * 0.999_99).powf(1.2)) as u64;
                let mut record = FlowRecord {
                    flow_start: start,
                    flow_end: start + duration,
                    src_port: 1024 + rng.below(60_000) as u16,
                    protocol: if rng.below(10) < 8 { 6 } else { 17 },
                    bytes,
                    packets: bytes / 900 + 1,
                    sampling_rate: 1,
                    in_if: rng.below(8) as u32,
                    out_if: rng.below(8) as u32,
                    ..Default::default()
                };
                record.tcp_flags = if record.protocol == 6 { 0x1b } else { 0 };
                // Source.
                let r = rng.below(100);
                if r < 78 {
                    let wl = skewed(&mut rng, w.workloads.len());
                    let pod = &w.pods
                        [wl * PODS_PER_WORKLOAD + rng.below(PODS_PER_WORKLOAD as u64) as usize];
                    record.src_ip = pod.ip;
                    src.push(
                        "pod",
                        Some(&w.namespaces[pod.namespace]),
                        Some(&pod.name),
                        Some(w.kinds[pod.workload]),
                        Some(&w.workloads[pod.workload]),
                        Some(&w.nodes[pod.node].0),
                        None,
                        None,
                    );
                } else if r < 86 {
                    let node = &w.nodes[rng.below(NODES as u64) as usize];
                    record.src_ip = node.1;
                    src.push("node", None, None, None, None, Some(&node.0), None, None);
                } else if r < 94 {
                    record.src_ip = v4_to_u128(0x5db8_0000 + rng.below(EXTERNALS as u64) as u32);
                    src.push("external", None, None, None, None, None, None, None);
                } else if r < 98 {
                    record.src_ip = v4_to_u128(0x0a04_8000 + rng.below(4096) as u32);
                    src.push("unknown", None, None, None, None, None, None, None);
                } else {
                    let c = rng.below(candidates.len() as u64) as usize;
                    record.src_ip = w.pods[c * 7 % w.pods.len()].ip;
                    src.push(
                        "ambiguous",
                        None,
                        None,
                        None,
                        None,
                        None,
                        None,
                        Some(&candidates[c]),
                    );
                }
                // Destination.
                let r = rng.below(100);
                if r < 45 {
                    let pod = &w.pods[rng.below(w.pods.len() as u64) as usize];
                    record.dst_ip = pod.ip;
                    record.dst_port = [8080, 6379, 5432, 9090][rng.below(4) as usize];
                    dst.push(
                        "pod",
                        Some(&w.namespaces[pod.namespace]),
                        Some(&pod.name),
                        Some(w.kinds[pod.workload]),
                        Some(&w.workloads[pod.workload]),
                        Some(&w.nodes[pod.node].0),
                        None,
                        None,
                    );
                } else if r < 65 {
                    let s = &w.services[rng.below(SERVICES as u64) as usize];
                    record.dst_ip = s.2;
                    record.dst_port = 80;
                    dst.push(
                        "service",
                        Some(&w.namespaces[s.1]),
                        None,
                        None,
                        None,
                        None,
                        Some(&s.0),
                        None,
                    );
                } else {
                    record.dst_ip = v4_to_u128(0x5db8_0000 + rng.below(EXTERNALS as u64) as u32);
                    record.dst_port = [443, 80, 53][rng.below(3) as usize];
                    dst.push("external", None, None, None, None, None, None, None);
                }
                batch.push(&origin, &record);
            }
            let mut endpoint = src.columns();
            endpoint.extend(dst.columns());
            let rb = match batch.to_record_batch(Some(endpoint)) {
                Ok(rb) => rb,
                Err(e) => {
                    eprintln!("building a batch: {e}");
                    std::process::exit(1);
                }
            };
            if let Err(e) = writer.write(rb) {
                eprintln!("writing: {e}");
                std::process::exit(1);
            }
            done += n;
        }
        match writer.commit() {
            Ok(files) => {
                for f in files {
                    written += f.rows;
                    eprintln!(
                        "{} rows, {:.0} MB: {}",
                        f.rows,
                        f.bytes as f64 / 1e6,
                        f.path.display()
                    );
                }
            }
            Err(e) => {
                eprintln!("committing: {e}");
                std::process::exit(1);
            }
        }
    }
    eprintln!(
        "{written} flows in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
