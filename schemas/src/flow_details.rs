//! What in-cluster flow exporters (Hubble, NetObserv) say about a flow beyond NetFlow's
//! fields: the verdict, drops, direction, L7 type, latencies, the address after SNAT, and the
//! endpoint identities the exporter named at capture time. Stored as nullable columns after
//! the attribution columns; rows from NetFlow, IPFIX and captures leave them null.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, BooleanBufferBuilder, Int64Array, StringArray,
    new_null_array,
};
use arrow::buffer::{Buffer, NullBuffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Int64Type};

/// The text columns, in stored order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Text {
    /// The node (or agent) that observed the flow: Hubble's `node_name`, NetObserv's agent.
    Observer,
    /// The cluster the exporter says the flow is in (Hubble's `cluster_name`, the cluster
    /// part of a `cluster/node` node name).
    ReportedCluster,
    /// `FORWARDED`, `DROPPED`, `REDIRECTED`, … as Hubble names them.
    Verdict,
    /// Why the flow's packets were dropped (Hubble's `drop_reason_desc`, NetObserv's latest
    /// drop cause).
    DropReason,
    /// `ingress`, `egress` (or NetObserv's `inner`), as seen from the observing node.
    Direction,
    /// `dns`, `http`, `kafka` for flows an L7 proxy parsed.
    L7Protocol,
    /// `REQUEST`, `RESPONSE`, `SAMPLE`.
    L7Type,
    /// The source address after SNAT, when the exporter saw it (Hubble `IP.source_xlated`).
    SrcXlatedIp,
    /// The interfaces the flow was seen on, comma-separated.
    Interfaces,
    SrcReportedKind,
    SrcReportedNamespace,
    SrcReportedName,
    SrcReportedWorkloadKind,
    SrcReportedWorkload,
    /// The endpoint's labels as the exporter lists them, comma-separated.
    SrcReportedLabels,
    DstReportedKind,
    DstReportedNamespace,
    DstReportedName,
    DstReportedWorkloadKind,
    DstReportedWorkload,
    DstReportedLabels,
}

/// The integer columns, in stored order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(usize)]
pub enum Int {
    DroppedPackets,
    DroppedBytes,
    DnsLatencyMs,
    RttNs,
    /// Cilium's security identity of the endpoint.
    SrcReportedIdentity,
    DstReportedIdentity,
}

const TEXT_NAMES: [&str; 21] = [
    "observer",
    "reported_cluster",
    "verdict",
    "drop_reason",
    "direction",
    "l7_protocol",
    "l7_type",
    "src_xlated_ip",
    "interfaces",
    "src_reported_kind",
    "src_reported_namespace",
    "src_reported_name",
    "src_reported_workload_kind",
    "src_reported_workload",
    "src_reported_labels",
    "dst_reported_kind",
    "dst_reported_namespace",
    "dst_reported_name",
    "dst_reported_workload_kind",
    "dst_reported_workload",
    "dst_reported_labels",
];

const INT_NAMES: [&str; 6] = [
    "dropped_packets",
    "dropped_bytes",
    "dns_latency_ms",
    "rtt_ns",
    "src_reported_identity",
    "dst_reported_identity",
];

/// Whether the exporter said the flow is a reply.
pub const IS_REPLY: &str = "is_reply";

/// Whether the exporter's identity of an endpoint and Hawking's attribution name different
/// owners (null where either names none): either the history or the export is wrong.
pub const CONFLICT_COLUMNS: [&str; 2] = ["src_reported_conflict", "dst_reported_conflict"];

/// The detail columns' fields, in stored order (all nullable).
pub fn detail_fields() -> Vec<Field> {
    let mut fields: Vec<Field> = TEXT_NAMES
        .iter()
        .map(|n| Field::new(*n, DataType::Utf8, true))
        .collect();
    fields.extend(
        INT_NAMES
            .iter()
            .map(|n| Field::new(*n, DataType::Int64, true)),
    );
    fields.push(Field::new(IS_REPLY, DataType::Boolean, true));
    for n in CONFLICT_COLUMNS {
        fields.push(Field::new(n, DataType::Boolean, true));
    }
    fields
}

/// A nullable text column built in one buffer (no `String` per row).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TextColumn {
    data: Vec<u8>,
    /// End offset of each row.
    ends: Vec<i32>,
    valid: Vec<bool>,
}

impl TextColumn {
    pub fn push(&mut self, value: Option<&str>) {
        if let Some(v) = value {
            self.data.extend_from_slice(v.as_bytes());
        }
        self.ends.push(self.data.len() as i32);
        self.valid.push(value.is_some());
    }

    pub fn get(&self, i: usize) -> Option<&str> {
        if !self.valid[i] {
            return None;
        }
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        std::str::from_utf8(&self.data[start..self.ends[i] as usize]).ok()
    }

    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    fn extend_nulls(&mut self, n: usize) {
        for _ in 0..n {
            self.push(None);
        }
    }

    fn extend_from(&mut self, other: &TextColumn) {
        let base = self.data.len() as i32;
        self.data.extend_from_slice(&other.data);
        self.ends.extend(other.ends.iter().map(|e| e + base));
        self.valid.extend_from_slice(&other.valid);
    }

    fn select(&self, rows: &[u32]) -> TextColumn {
        let mut out = TextColumn::default();
        for &i in rows {
            out.push(self.get(i as usize));
        }
        out
    }

    fn to_array(&self) -> ArrayRef {
        let mut offsets = Vec::with_capacity(self.ends.len() + 1);
        offsets.push(0i32);
        offsets.extend_from_slice(&self.ends);
        let nulls = NullBuffer::from(self.valid.clone());
        Arc::new(StringArray::new(
            OffsetBuffer::new(ScalarBuffer::from(offsets)),
            Buffer::from_vec(self.data.clone()),
            (nulls.null_count() > 0).then_some(nulls),
        ))
    }

    fn clear(&mut self) {
        self.data.clear();
        self.ends.clear();
        self.valid.clear();
    }
}

/// One flow's details, as a decoder fills them in (indexed by [`Text`] and [`Int`]).
#[derive(Clone, Copy, Debug, Default)]
pub struct DetailRow<'a> {
    pub text: [Option<&'a str>; 21],
    pub ints: [Option<i64>; 6],
    pub is_reply: Option<bool>,
    /// Whether the flow's byte and packet counts were read.
    pub counted: bool,
}

impl<'a> DetailRow<'a> {
    pub fn set(&mut self, column: Text, value: Option<&'a str>) {
        self.text[column as usize] = value;
    }

    pub fn set_int(&mut self, column: Int, value: Option<i64>) {
        self.ints[column as usize] = value;
    }
}

/// The details of a batch's flows, one row per flow of the [`crate::FlowBatch`] they belong
/// to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FlowDetails {
    pub text: [TextColumn; 21],
    pub ints: [Vec<Option<i64>>; 6],
    pub is_reply: Vec<Option<bool>>,
    /// Whether the exporter reported byte and packet counts (Hubble's events carry none:
    /// their `bytes` and `packets` are stored null rather than as a made-up count).
    pub counted: Vec<bool>,
}

impl FlowDetails {
    pub fn len(&self) -> usize {
        self.counted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counted.is_empty()
    }

    pub fn text(&mut self, column: Text) -> &mut TextColumn {
        &mut self.text[column as usize]
    }

    pub fn get_text(&self, column: Text, row: usize) -> Option<&str> {
        self.text[column as usize].get(row)
    }

    pub fn int(&mut self, column: Int) -> &mut Vec<Option<i64>> {
        &mut self.ints[column as usize]
    }

    pub fn get_int(&self, column: Int, row: usize) -> Option<i64> {
        self.ints[column as usize][row]
    }

    /// Appends one flow's details.
    pub fn push(&mut self, row: &DetailRow<'_>) {
        for (t, v) in self.text.iter_mut().zip(row.text) {
            t.push(v);
        }
        for (i, v) in self.ints.iter_mut().zip(row.ints) {
            i.push(v);
        }
        self.is_reply.push(row.is_reply);
        self.counted.push(row.counted);
    }

    /// Appends `n` rows that say nothing (flows from a source without details).
    pub fn extend_nulls(&mut self, n: usize) {
        for t in &mut self.text {
            t.extend_nulls(n);
        }
        for i in &mut self.ints {
            i.extend(std::iter::repeat_n(None, n));
        }
        self.is_reply.extend(std::iter::repeat_n(None, n));
        self.counted.extend(std::iter::repeat_n(true, n));
    }

    pub fn extend_from(&mut self, other: &FlowDetails) {
        for (t, o) in self.text.iter_mut().zip(&other.text) {
            t.extend_from(o);
        }
        for (i, o) in self.ints.iter_mut().zip(&other.ints) {
            i.extend_from_slice(o);
        }
        self.is_reply.extend_from_slice(&other.is_reply);
        self.counted.extend_from_slice(&other.counted);
    }

    /// The details of the flows at `rows`.
    pub fn select(&self, rows: &[u32]) -> FlowDetails {
        FlowDetails {
            text: std::array::from_fn(|c| self.text[c].select(rows)),
            ints: std::array::from_fn(|c| crate::flow::select_rows(&self.ints[c], rows)),
            is_reply: crate::flow::select_rows(&self.is_reply, rows),
            counted: crate::flow::select_rows(&self.counted, rows),
        }
    }

    pub fn clear(&mut self) {
        self.text.iter_mut().for_each(TextColumn::clear);
        self.ints.iter_mut().for_each(Vec::clear);
        self.is_reply.clear();
        self.counted.clear();
    }

    /// Whether each row is a complete one (every column has a value for it): a decoder
    /// appends a flow's details before the flow itself.
    pub fn rows_consistent(&self) -> bool {
        let n = self.len();
        self.text.iter().all(|t| t.len() == n)
            && self.ints.iter().all(|i| i.len() == n)
            && self.is_reply.len() == n
    }

    /// Null mask for `bytes` and `packets`: `None` when every row was counted.
    pub fn counter_nulls(&self) -> Option<NullBuffer> {
        let nulls = NullBuffer::from(self.counted.clone());
        (nulls.null_count() > 0).then_some(nulls)
    }

    /// The detail columns in [`detail_fields`] order (the conflict columns null: the
    /// enricher fills them).
    pub fn to_columns(&self) -> Vec<ArrayRef> {
        let mut cols: Vec<ArrayRef> = self.text.iter().map(TextColumn::to_array).collect();
        for i in &self.ints {
            cols.push(Arc::new(Int64Array::from(i.clone())));
        }
        cols.push(Arc::new(BooleanArray::from(self.is_reply.clone())));
        for _ in CONFLICT_COLUMNS {
            cols.push(new_null_array(&DataType::Boolean, self.len()));
        }
        cols
    }

    /// The details of stored rows, when their detail columns say anything (`None` for rows
    /// from NetFlow, or for files written before the columns existed).
    pub fn from_stored(rows: &arrow::array::RecordBatch, counted: Vec<bool>) -> Option<Self> {
        let n = rows.num_rows();
        let text_cols: Vec<Option<&ArrayRef>> =
            TEXT_NAMES.iter().map(|c| rows.column_by_name(c)).collect();
        let int_cols: Vec<Option<&ArrayRef>> =
            INT_NAMES.iter().map(|c| rows.column_by_name(c)).collect();
        let reply = rows.column_by_name(IS_REPLY);
        let says_something = text_cols
            .iter()
            .chain(int_cols.iter())
            .chain(std::iter::once(&reply))
            .any(|c| c.is_some_and(|c| c.null_count() < c.len()))
            || counted.iter().any(|c| !c);
        if !says_something {
            return None;
        }
        let mut d = FlowDetails::default();
        for (out, col) in d.text.iter_mut().zip(&text_cols) {
            match col {
                Some(c) if c.as_string_opt::<i32>().is_some() => {
                    c.as_string::<i32>().iter().for_each(|v| out.push(v))
                }
                Some(c) if c.as_string_view_opt().is_some() => {
                    c.as_string_view().iter().for_each(|v| out.push(v))
                }
                _ => out.extend_nulls(n),
            }
        }
        for (out, col) in d.ints.iter_mut().zip(&int_cols) {
            match col.and_then(|c| c.as_primitive_opt::<Int64Type>()) {
                Some(c) => out.extend(c.iter()),
                None => out.extend(std::iter::repeat_n(None, n)),
            }
        }
        match reply.and_then(|c| c.as_boolean_opt()) {
            Some(c) => d.is_reply.extend(c.iter()),
            None => d.is_reply.extend(std::iter::repeat_n(None, n)),
        }
        d.counted = counted;
        Some(d)
    }
}

/// A boolean column with nulls, for the enricher's conflict columns.
pub fn bool_column(values: &[Option<bool>]) -> ArrayRef {
    let mut valid = BooleanBufferBuilder::new(values.len());
    let mut bits = BooleanBufferBuilder::new(values.len());
    for v in values {
        valid.append(v.is_some());
        bits.append(v.unwrap_or(false));
    }
    let nulls = NullBuffer::new(valid.finish());
    Arc::new(BooleanArray::new(
        bits.finish(),
        (nulls.null_count() > 0).then_some(nulls),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_columns_keep_nulls_apart_from_empty_text() {
        let mut t = TextColumn::default();
        t.push(Some("DROPPED"));
        t.push(None);
        t.push(Some(""));
        let a = t.to_array();
        let a = a.as_string::<i32>();
        assert_eq!(a.value(0), "DROPPED");
        assert!(a.is_null(1));
        assert!(a.is_valid(2) && a.value(2).is_empty());
        assert_eq!(t.get(0), Some("DROPPED"));
        assert_eq!(t.get(1), None);
    }

    #[test]
    fn rows_without_details_extend_as_nulls() {
        let mut d = FlowDetails::default();
        let mut row = DetailRow::default();
        row.set(Text::Verdict, Some("FORWARDED"));
        row.set_int(Int::RttNs, Some(4_047_000));
        row.is_reply = Some(true);
        d.push(&row);
        d.extend_nulls(2);
        assert!(d.rows_consistent());
        assert_eq!(d.len(), 3);
        assert_eq!(d.get_text(Text::Verdict, 0), Some("FORWARDED"));
        assert_eq!(d.get_text(Text::Verdict, 2), None);
        assert_eq!(d.get_int(Int::RttNs, 0), Some(4_047_000));
        let nulls = d.counter_nulls().unwrap();
        assert!(nulls.is_null(0) && nulls.is_valid(1));
        assert_eq!(d.to_columns().len(), detail_fields().len());
    }
}
