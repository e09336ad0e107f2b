//! Rows for the store's own tests: flows at given times, and history log rows.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use hawking_schemas::flow::{FlowBatch, FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::pipeline::Table;

use super::writer::{PartitionedWriter, WriterOptions};

/// 2026-11-20T10:00:00Z.
pub const H: i64 = 1_795_168_800_000_000;

/// Flows starting at `starts`, `bytes` = the start's µs within its second plus one.
pub fn flows(starts: &[i64]) -> RecordBatch {
    let mut b = FlowBatch::default();
    let origin = FlowOrigin {
        received_at: H,
        exporter: 1,
        observation_domain: 0,
        source_kind: SourceKind::Ipfix,
    };
    for s in starts {
        b.push(
            &origin,
            &FlowRecord {
                flow_start: *s,
                flow_end: *s + 1,
                bytes: (s.rem_euclid(1_000_000) + 1) as u64,
                packets: 1,
                ..Default::default()
            },
        );
    }
    b.to_record_batch_unattributed().unwrap()
}

/// An `ip_history_log` row: (interval id, recorded_at, valid_from, valid_to).
pub type LogRow = (i64, i64, i64, Option<i64>);

pub fn ip_log(rows: &[LogRow]) -> RecordBatch {
    let ts = |v: Vec<Option<i64>>| -> ArrayRef {
        Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
    };
    let text = |v: &str| -> ArrayRef { Arc::new(StringArray::from(vec![v; rows.len()])) };
    let none = || -> ArrayRef { Arc::new(StringArray::from(vec![None::<&str>; rows.len()])) };
    let columns: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
        text("prod"),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("10.4.0.{}", r.0)),
        )),
        text("pod"),
        text("shop"),
        Arc::new(StringArray::from_iter_values(
            rows.iter().map(|r| format!("web-{}", r.0)),
        )),
        text("uid"),
        none(),
        none(),
        none(),
        none(),
        ts(rows.iter().map(|r| Some(r.2)).collect()),
        ts(rows.iter().map(|r| r.3).collect()),
        text("watch"),
        ts(rows.iter().map(|r| Some(r.1)).collect()),
    ];
    RecordBatch::try_new(Table::IpHistoryLog.schema(), columns).unwrap()
}

/// Commits `batch` to `table` in the store at `root` as one file per hour it touches.
pub fn commit(root: impl Into<crate::store::root::StoreRoot>, table: Table, batch: RecordBatch) {
    let mut w = PartitionedWriter::for_table(root, table, &WriterOptions::default()).unwrap();
    w.write(batch).unwrap();
    w.commit().unwrap();
}
