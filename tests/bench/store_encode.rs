//! Cost of the ingest path after decoding, per flow: building the Arrow batch (IP text
//! columns) and encoding it as Parquet, for the writer settings Hawking uses and for the
//! alternatives considered; then the same for attributed flows (the product's job: every
//! endpoint looked up in a 4,096-pod history, the attribution columns built, and the rows
//! encoded by the store's writer as `hawking serve` does). Run:
//! `cargo bench --bench store_encode` (release profile).
//!
//! Under `cargo test --all-targets` (cargo passes `--bench` only under `cargo bench`) it runs
//! on 10,000 flows, one round. Either way every file written is read back and must hold
//! exactly the rows written, value for value: a writer setting that loses or changes data
//! cannot show up as a fast row.

use std::time::Instant;

use arrow::record_batch::RecordBatch;

use hawking_enricher::{
    ClusterConfig, ClusterSelector, EnricherConfig, Event, HistoryKeeper, Mode, NatIndex,
    Observation, ObservedObject, Resource, attribute_batch, attribution_columns,
};
use hawking_query::WriterOptions;
use hawking_query::store::writer::write_parquet;
use hawking_schemas::OwnerKind;
use hawking_schemas::flow::{FlowBatch, FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::flow_schema;
use hawking_schemas::ip::v4_to_u128;

fn synthetic(n: usize) -> FlowBatch {
    let mut b = FlowBatch::with_capacity(n);
    let mut s = 0x2545_f491_4f6c_dd1du64;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    let now = 1_795_168_800_000_000i64;
    for i in 0..n {
        // Realistic cardinality: a few thousand pods, tens of thousands of remote addresses.
        let origin = FlowOrigin {
            received_at: now + i as i64,
            exporter: v4_to_u128(0xc0a8_0a00 | (i as u32 % 4)),
            observation_domain: (i % 4) as u32,
            source_kind: SourceKind::NetflowV9,
        };
        let r = FlowRecord {
            flow_start: now - (next() % 60_000_000) as i64,
            flow_end: now - (next() % 1_000_000) as i64,
            src_ip: v4_to_u128(0x0a04_0000 | (next() as u32 % 5000)),
            dst_ip: v4_to_u128(0x5db8_0000 | (next() as u32 % 50_000)),
            src_port: 32768 + (next() % 28000) as u16,
            dst_port: [443u16, 80, 53, 8080, 5432][(next() % 5) as usize],
            protocol: [6u8, 17][(next() % 2) as usize],
            tcp_flags: 0x1b,
            bytes: 40 + next() % 100_000,
            packets: 1 + next() % 100,
            sampling_rate: 1,
            in_if: 1,
            out_if: 2,
        };
        b.push(&origin, &r);
    }
    b
}

/// Whether this run is `cargo test` exercising the benchmark rather than `cargo bench`.
fn smoke_test() -> bool {
    !std::env::args().any(|a| a == "--bench")
}

/// Reads `path` back and checks it holds `written`'s rows, column by column.
fn assert_round_trip(path: &std::path::Path, written: &RecordBatch, what: &str) {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    let file = std::fs::File::open(path).unwrap();
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let batches: Vec<RecordBatch> = reader.map(|b| b.unwrap()).collect();
    let read = arrow::compute::concat_batches(&written.schema(), &batches).unwrap();
    assert_eq!(
        read.num_rows(),
        written.num_rows(),
        "{what}: rows read back"
    );
    for (i, field) in written.schema().fields().iter().enumerate() {
        assert_eq!(
            read.column(i).as_ref(),
            written.column(i).as_ref(),
            "{what}: column {} read back",
            field.name()
        );
    }
}

/// A history of 4,096 running pods at the addresses [`synthetic`] draws sources from (and a
/// thousand of the destinations), in 40 namespaces, 400 deployments and 64 nodes, and the
/// selector that puts every exporter in its cluster.
fn pod_history() -> (HistoryKeeper, ClusterSelector) {
    let config = EnricherConfig {
        clusters: vec![ClusterConfig {
            name: "bench".into(),
            watch: Some(false),
            exporters: vec!["192.168.10.0/24".parse().unwrap()],
            pod_cidrs: vec!["10.4.0.0/16".parse().unwrap()],
            ..Default::default()
        }],
        ..Default::default()
    };
    let mut keeper = HistoryKeeper::new(Mode::Live);
    let selector = config.apply(keeper.history_mut()).unwrap();
    let since = 1_795_000_000_000_000;
    for i in 0..4096u32 {
        let (ns, deploy, node) = (i % 40, i % 400, i % 64);
        keeper.apply(Observation {
            cluster: "bench".into(),
            at: since,
            event: Event::Upsert(ObservedObject {
                resource: Resource::Pods,
                kind: OwnerKind::Pod,
                uid: format!("00000000-0000-4000-8000-{i:012}"),
                namespace: Some(format!("ns-{ns}")),
                name: format!("app-{deploy}-5f6d7c8b9-{i:05}"),
                workload_kind: Some("Deployment".into()),
                workload: Some(format!("app-{deploy}")),
                node: Some(format!("node-{node}")),
                ports: None,
                addrs: vec![v4_to_u128(0x0a04_0000 | i)],
                ranges: vec![],
                since: Some(since),
                released: false,
                released_by: None,
                latest_timestamp: Some(since),
                alive_from: None,
                alive_until: None,
            }),
        });
    }
    (keeper, selector)
}

/// Attributed rows of `batch`, built as the enrichment stage builds them.
fn attributed(
    keeper: &HistoryKeeper,
    selector: &ClusterSelector,
    batch: &FlowBatch,
) -> RecordBatch {
    let history = keeper.history();
    let attribution = attribute_batch(history, &NatIndex::default(), selector, batch);
    batch
        .to_record_batch(Some(attribution_columns(history, &attribution)))
        .unwrap()
}

/// Integer columns with few distinct values, which the `flows` tunings dictionary-encode.
const FEW_VALUED_INTS: [&str; 7] = [
    "observation_domain",
    "dst_port",
    "protocol",
    "tcp_flags",
    "sampling_rate",
    "in_if",
    "out_if",
];

/// The attributed job: build the rows, then encode them through the store's writer
/// (`PartitionedWriter`, as `hawking serve` opens it) and commit; and the same rows through
/// the alternatives considered.
fn attributed_rows(n: usize, rounds: usize) {
    use hawking_query::store::writer::PartitionedWriter;
    use hawking_query::{Codec, ColumnTuning, FLOWS_INGEST_TUNING, FLOWS_TUNING};
    let (keeper, selector) = pod_history();
    let mut batch = synthetic(n);
    // Every source is one of the pods, and half the destinations, as in `hawking flowgen`'s
    // load.
    for src in batch.src_ip.iter_mut() {
        *src = v4_to_u128(0x0a04_0000 | (*src as u32 & 0xfff));
    }
    for (i, dst) in batch.dst_ip.iter_mut().enumerate() {
        if i % 2 == 0 {
            *dst = v4_to_u128(0x0a04_0000 | ((i as u32 * 7919) % 4096));
        }
    }
    let chunk = 4096;
    let chunks: Vec<FlowBatch> = (0..n.div_ceil(chunk))
        .map(|c| {
            let rows: Vec<u32> = ((c * chunk) as u32..((c + 1) * chunk).min(n) as u32).collect();
            batch.select(&rows)
        })
        .collect();
    let mut best_build = f64::MAX;
    let mut rows = Vec::new();
    for _ in 0..rounds {
        let t = Instant::now();
        rows = chunks
            .iter()
            .map(|c| attributed(&keeper, &selector, c))
            .collect();
        best_build = best_build.min(t.elapsed().as_secs_f64());
    }
    let pods: usize = rows
        .iter()
        .map(|r| {
            use arrow::array::AsArray;
            let c = r
                .column_by_name("src_attribution")
                .unwrap()
                .as_string::<i32>();
            c.iter().filter(|v| *v == Some("pod")).count()
        })
        .sum();
    assert_eq!(pods, n, "every source is a pod of the history");
    println!();
    println!("| attributed flows (4,096-pod history) | ns/flow | bytes/flow |");
    println!("|---|---|---|");
    println!(
        "| attribute + build the Arrow rows | {:.0} | |",
        best_build * 1e9 / n as f64
    );
    let leak =
        |v: Vec<&'static str>| -> &'static [&'static str] { Box::leak(v.into_boxed_slice()) };
    let ints_plain = ColumnTuning {
        no_dictionary: leak(
            FLOWS_INGEST_TUNING
                .no_dictionary
                .iter()
                .copied()
                .chain(FEW_VALUED_INTS)
                .collect(),
        ),
        ..FLOWS_INGEST_TUNING
    };
    let addresses_plain = ColumnTuning {
        no_dictionary: leak(
            ints_plain
                .no_dictionary
                .iter()
                .copied()
                .chain(["src_ip", "dst_ip"])
                .collect(),
        ),
        ..ints_plain
    };
    let codec = |compression| WriterOptions {
        compression,
        ..Default::default()
    };
    let variants = [
        (
            "encode + commit through the store's writer (what `hawking serve` does)",
            FLOWS_INGEST_TUNING,
            WriterOptions::default(),
        ),
        (
            "the same, statistics on every column (the flows tuning compaction writes)",
            FLOWS_TUNING,
            WriterOptions::default(),
        ),
        (
            "the same, few-valued integers without dictionary",
            ints_plain,
            WriterOptions::default(),
        ),
        (
            "the same, addresses without dictionary too",
            addresses_plain,
            WriterOptions::default(),
        ),
        ("the same rows, lz4", FLOWS_INGEST_TUNING, codec(Codec::Lz4)),
    ];
    for (name, tuning, options) in variants {
        let (mut best, mut size) = (f64::MAX, 0u64);
        for _ in 0..rounds {
            let dir = tempfile::tempdir().unwrap();
            let mut writer =
                PartitionedWriter::new(dir.path(), flow_schema(), "flow_start", &options, &tuning)
                    .unwrap();
            let t = Instant::now();
            for r in &rows {
                writer.write(r.clone()).unwrap();
            }
            let files = writer.commit().unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(files.iter().map(|f| f.rows).sum::<usize>(), n, "{name}");
            size = files.iter().map(|f| f.bytes).sum();
        }
        println!(
            "| {name} | {:.0} | {:.1} |",
            best * 1e9 / n as f64,
            size as f64 / n as f64
        );
    }
}

fn main() {
    let small = smoke_test();
    let n = if small { 10_000 } else { 1_000_000 };
    let batch = synthetic(n);
    let rounds = if small { 1 } else { 5 };
    let mut best_build = f64::MAX;
    let mut rb = None;
    for _ in 0..rounds {
        let t = Instant::now();
        rb = Some(batch.to_record_batch_unattributed().unwrap());
        best_build = best_build.min(t.elapsed().as_secs_f64());
    }
    let rb = rb.unwrap();
    assert_eq!(rb.num_rows(), n);
    println!("| stage | ns/flow | bytes/flow |");
    println!("|---|---|---|");
    println!(
        "| FlowBatch -> Arrow RecordBatch (IP text) | {:.0} | |",
        best_build * 1e9 / n as f64
    );
    let dir = tempfile::tempdir().unwrap();
    use hawking_query::{Codec, ColumnTuning, FLOWS_INGEST_TUNING, FLOWS_TUNING};
    let opts = |compression, zstd_level| WriterOptions {
        compression,
        zstd_level,
        ..Default::default()
    };
    let plain = ColumnTuning::default();
    let variants = vec![
        (
            "Parquet zstd 1, ingest tuning (what `hawking serve` writes)",
            opts(Codec::Zstd, 1)
                .properties(&FLOWS_INGEST_TUNING)
                .unwrap(),
        ),
        (
            "Parquet zstd 1, flows tuning (compaction's, which writes zstd 3)",
            opts(Codec::Zstd, 1).properties(&FLOWS_TUNING).unwrap(),
        ),
        (
            "Parquet zstd 1, every column chunk stats + dictionary",
            opts(Codec::Zstd, 1).properties(&plain).unwrap(),
        ),
        (
            "Parquet zstd 3, flows tuning",
            opts(Codec::Zstd, 3).properties(&FLOWS_TUNING).unwrap(),
        ),
        (
            "Parquet lz4, flows tuning",
            opts(Codec::Lz4, 1).properties(&FLOWS_TUNING).unwrap(),
        ),
        (
            "Parquet uncompressed, flows tuning",
            opts(Codec::None, 1).properties(&FLOWS_TUNING).unwrap(),
        ),
    ];
    for (name, props) in variants {
        let mut best = f64::MAX;
        let mut size = 0;
        for r in 0..rounds {
            let path = dir.path().join(format!("{r}.parquet"));
            let t = Instant::now();
            let written = write_parquet(
                &path,
                flow_schema(),
                std::slice::from_ref(&rb),
                props.clone(),
            )
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            assert_eq!(written, n, "{name}: rows the writer reports");
            size = std::fs::metadata(&path).unwrap().len();
            if r == 0 {
                // Once per variant, outside the timing: the rounds write the same bytes.
                assert_round_trip(&path, &rb, name);
            }
        }
        println!(
            "| {name} | {:.0} | {:.1} |",
            best * 1e9 / n as f64,
            size as f64 / n as f64
        );
    }
    attributed_rows(n, rounds);
}
