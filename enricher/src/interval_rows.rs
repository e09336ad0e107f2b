//! Pending `ip_history_log` rows, as the history keeper and the exporters' sightings write
//! them, and the stable IDs that tie an interval's open and closed rows together.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use hawking_schemas::ip_history_schema;

/// Pending `ip_history_log` rows, column by column.
#[derive(Debug, Default)]
pub(crate) struct IntervalRows {
    pub id: Vec<i64>,
    pub cluster: Vec<String>,
    pub ip: Vec<String>,
    pub kind: Vec<&'static str>,
    pub namespace: Vec<Option<String>>,
    pub name: Vec<String>,
    /// Null where the evidence names no object UID (an exporter's sightings).
    pub uid: Vec<Option<String>>,
    pub workload_kind: Vec<Option<String>>,
    pub workload: Vec<Option<String>>,
    pub node: Vec<Option<String>>,
    pub ports: Vec<Option<String>>,
    pub from: Vec<i64>,
    pub to: Vec<Option<i64>>,
    pub source: Vec<&'static str>,
    pub recorded_at: Vec<i64>,
}

impl IntervalRows {
    /// The rows as one `ip_history_log` batch (`None` when there are none).
    pub fn into_batch(self) -> Option<RecordBatch> {
        if self.id.is_empty() {
            return None;
        }
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let ts_opt = |v: Vec<Option<i64>>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        Some(
            RecordBatch::try_new(
                ip_history_schema(),
                vec![
                    Arc::new(Int64Array::from(self.id)),
                    Arc::new(StringArray::from(self.cluster)),
                    Arc::new(StringArray::from(self.ip)),
                    Arc::new(StringArray::from(self.kind)),
                    Arc::new(StringArray::from(self.namespace)),
                    Arc::new(StringArray::from(self.name)),
                    Arc::new(StringArray::from(self.uid)),
                    Arc::new(StringArray::from(self.workload_kind)),
                    Arc::new(StringArray::from(self.workload)),
                    Arc::new(StringArray::from(self.node)),
                    Arc::new(StringArray::from(self.ports)),
                    ts(self.from),
                    ts_opt(self.to),
                    Arc::new(StringArray::from(self.source)),
                    ts(self.recorded_at),
                ],
            )
            .expect("columns match ip_history_schema"),
        )
    }
}

/// Stable 64-bit FNV-1a: IDs must be the same across runs and builds.
pub(crate) fn fnv(parts: &[&[u8]]) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in *p {
            h ^= *b as u64;
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        h ^= 0xff;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}
