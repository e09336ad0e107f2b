//! Cost of the ingest path after decoding, per flow: building the Arrow batch (IP text
//! columns) and encoding it as Parquet, for the writer settings Hawking uses and for the
//! alternatives considered. Run: `cargo bench --bench store_encode` (release profile).

use std::time::Instant;

use hawking_query::WriterOptions;
use hawking_query::store::writer::write_parquet;
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

fn main() {
    let n = 1_000_000;
    let batch = synthetic(n);
    let rounds = 5;
    let mut best_build = f64::MAX;
    let mut rb = None;
    for _ in 0..rounds {
        let t = Instant::now();
        rb = Some(batch.to_record_batch_unattributed().unwrap());
        best_build = best_build.min(t.elapsed().as_secs_f64());
    }
    let rb = rb.unwrap();
    println!("| stage | ns/flow | bytes/flow |");
    println!("|---|---|---|");
    println!(
        "| FlowBatch -> Arrow RecordBatch (IP text) | {:.0} | |",
        best_build * 1e9 / n as f64
    );
    let dir = tempfile::tempdir().unwrap();
    use hawking_query::{Codec, ColumnTuning, FLOWS_TUNING};
    let opts = |compression, zstd_level| WriterOptions {
        compression,
        zstd_level,
        ..Default::default()
    };
    let plain = ColumnTuning::default();
    let variants = vec![
        (
            "Parquet zstd 1, flows tuning (Hawking's default)",
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
            write_parquet(
                &path,
                flow_schema(),
                std::slice::from_ref(&rb),
                props.clone(),
            )
            .unwrap();
            best = best.min(t.elapsed().as_secs_f64());
            size = std::fs::metadata(&path).unwrap().len();
        }
        println!(
            "| {name} | {:.0} | {:.1} |",
            best * 1e9 / n as f64,
            size as f64 / n as f64
        );
    }
}
