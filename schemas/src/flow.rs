//! The flow record: what every collector produces, columnar from the start.

use std::sync::{Arc, OnceLock};

use arrow::array::{
    ArrayRef, Int16Array, Int32Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray, new_null_array,
};
use arrow::buffer::{Buffer, OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use arrow::error::ArrowError;

use crate::flow_details::FlowDetails;
use crate::ip::push_ip_text;

/// Which kind of source produced a flow record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum SourceKind {
    NetflowV5 = 0,
    NetflowV9 = 1,
    Ipfix = 2,
    Pcap = 3,
    Ebpf = 4,
    Hubble = 5,
    NetObserv = 6,
    /// sFlow v5 samples (as goflow2 decoded them).
    Sflow = 7,
    /// goflow2 messages that do not say which protocol the device exported.
    Goflow2 = 8,
}

impl SourceKind {
    /// The kind a stored `source_kind` value names.
    pub fn parse(text: &str) -> Option<SourceKind> {
        Some(match text {
            "netflow_v5" => SourceKind::NetflowV5,
            "netflow_v9" => SourceKind::NetflowV9,
            "ipfix" => SourceKind::Ipfix,
            "pcap" => SourceKind::Pcap,
            "ebpf" => SourceKind::Ebpf,
            "hubble" => SourceKind::Hubble,
            "netobserv" => SourceKind::NetObserv,
            "sflow" => SourceKind::Sflow,
            "goflow2" => SourceKind::Goflow2,
            _ => return None,
        })
    }

    /// The value stored in the `source_kind` column.
    pub fn as_str(self) -> &'static str {
        match self {
            SourceKind::NetflowV5 => "netflow_v5",
            SourceKind::NetflowV9 => "netflow_v9",
            SourceKind::Ipfix => "ipfix",
            SourceKind::Pcap => "pcap",
            SourceKind::Ebpf => "ebpf",
            SourceKind::Hubble => "hubble",
            SourceKind::NetObserv => "netobserv",
            SourceKind::Sflow => "sflow",
            SourceKind::Goflow2 => "goflow2",
        }
    }
}

/// One decoded flow, built on the stack by a decoder and appended to a [`FlowBatch`].
///
/// Times are microseconds since the Unix epoch, UTC. Addresses are in the `u128` form of
/// [`crate::ip`]. `bytes` and `packets` are already scaled by `sampling_rate` (1 = unsampled),
/// so sums over stored flows estimate real traffic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRecord {
    pub flow_start: i64,
    pub flow_end: i64,
    pub src_ip: u128,
    pub dst_ip: u128,
    pub src_port: u16,
    pub dst_port: u16,
    pub protocol: u8,
    pub tcp_flags: u8,
    pub bytes: u64,
    pub packets: u64,
    pub sampling_rate: u32,
    pub in_if: u32,
    pub out_if: u32,
}

/// The values of `column` at `rows`.
pub(crate) fn select_rows<T: Copy>(column: &[T], rows: &[u32]) -> Vec<T> {
    rows.iter().map(|&i| column[i as usize]).collect()
}

/// Where a batch's flows came from: the same for every flow of one exporter packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowOrigin {
    pub received_at: i64,
    pub exporter: u128,
    pub observation_domain: u32,
    pub source_kind: SourceKind,
}

/// A batch of flows in columns. Appending never allocates per flow (the vectors grow
/// geometrically and are reused across batches via [`FlowBatch::clear`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct FlowBatch {
    pub flow_start: Vec<i64>,
    pub flow_end: Vec<i64>,
    pub received_at: Vec<i64>,
    pub exporter: Vec<u128>,
    pub observation_domain: Vec<u32>,
    pub src_ip: Vec<u128>,
    pub dst_ip: Vec<u128>,
    pub src_port: Vec<u16>,
    pub dst_port: Vec<u16>,
    pub protocol: Vec<u8>,
    pub tcp_flags: Vec<u8>,
    pub bytes: Vec<u64>,
    pub packets: Vec<u64>,
    pub sampling_rate: Vec<u32>,
    pub in_if: Vec<u32>,
    pub out_if: Vec<u32>,
    pub source_kind: Vec<SourceKind>,
    /// What in-cluster exporters add (one row per flow), `None` when no flow has any.
    pub details: Option<Box<FlowDetails>>,
}

impl FlowBatch {
    pub fn with_capacity(n: usize) -> Self {
        FlowBatch {
            flow_start: Vec::with_capacity(n),
            flow_end: Vec::with_capacity(n),
            received_at: Vec::with_capacity(n),
            exporter: Vec::with_capacity(n),
            observation_domain: Vec::with_capacity(n),
            src_ip: Vec::with_capacity(n),
            dst_ip: Vec::with_capacity(n),
            src_port: Vec::with_capacity(n),
            dst_port: Vec::with_capacity(n),
            protocol: Vec::with_capacity(n),
            tcp_flags: Vec::with_capacity(n),
            bytes: Vec::with_capacity(n),
            packets: Vec::with_capacity(n),
            sampling_rate: Vec::with_capacity(n),
            in_if: Vec::with_capacity(n),
            out_if: Vec::with_capacity(n),
            source_kind: Vec::with_capacity(n),
            details: None,
        }
    }

    /// The batch's details, started (null for the flows already in it) on first use. A
    /// decoder pushes a flow's details just before the flow.
    pub fn details_mut(&mut self) -> &mut FlowDetails {
        let len = self.len();
        self.details.get_or_insert_with(|| {
            let mut d = Box::<FlowDetails>::default();
            d.extend_nulls(len);
            d
        })
    }

    /// Pads the details (if any) with null rows up to the flows pushed without them.
    fn pad_details(&mut self) {
        let len = self.len();
        if let Some(d) = &mut self.details
            && d.len() < len
        {
            d.extend_nulls(len - d.len());
        }
    }

    pub fn len(&self) -> usize {
        self.flow_start.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flow_start.is_empty()
    }

    #[inline]
    pub fn push(&mut self, origin: &FlowOrigin, r: &FlowRecord) {
        if let Some(d) = &mut self.details
            && d.len() == self.flow_start.len()
        {
            // A flow without details in a batch that has some.
            d.extend_nulls(1);
        }
        self.flow_start.push(r.flow_start);
        self.flow_end.push(r.flow_end);
        self.received_at.push(origin.received_at);
        self.exporter.push(origin.exporter);
        self.observation_domain.push(origin.observation_domain);
        self.src_ip.push(r.src_ip);
        self.dst_ip.push(r.dst_ip);
        self.src_port.push(r.src_port);
        self.dst_port.push(r.dst_port);
        self.protocol.push(r.protocol);
        self.tcp_flags.push(r.tcp_flags);
        self.bytes.push(r.bytes);
        self.packets.push(r.packets);
        self.sampling_rate.push(r.sampling_rate);
        self.in_if.push(r.in_if);
        self.out_if.push(r.out_if);
        self.source_kind.push(origin.source_kind);
    }

    /// The flow at `i` as a record (for tests and slow paths).
    pub fn record(&self, i: usize) -> FlowRecord {
        FlowRecord {
            flow_start: self.flow_start[i],
            flow_end: self.flow_end[i],
            src_ip: self.src_ip[i],
            dst_ip: self.dst_ip[i],
            src_port: self.src_port[i],
            dst_port: self.dst_port[i],
            protocol: self.protocol[i],
            tcp_flags: self.tcp_flags[i],
            bytes: self.bytes[i],
            packets: self.packets[i],
            sampling_rate: self.sampling_rate[i],
            in_if: self.in_if[i],
            out_if: self.out_if[i],
        }
    }

    /// Appends every flow of `other`.
    pub fn extend_from(&mut self, other: &FlowBatch) {
        match &other.details {
            Some(theirs) => {
                self.details_mut();
                self.pad_details();
                self.details.as_mut().expect("started").extend_from(theirs);
            }
            None => {
                if let Some(d) = &mut self.details {
                    d.extend_nulls(other.len());
                }
            }
        }
        self.flow_start.extend_from_slice(&other.flow_start);
        self.flow_end.extend_from_slice(&other.flow_end);
        self.received_at.extend_from_slice(&other.received_at);
        self.exporter.extend_from_slice(&other.exporter);
        self.observation_domain
            .extend_from_slice(&other.observation_domain);
        self.src_ip.extend_from_slice(&other.src_ip);
        self.dst_ip.extend_from_slice(&other.dst_ip);
        self.src_port.extend_from_slice(&other.src_port);
        self.dst_port.extend_from_slice(&other.dst_port);
        self.protocol.extend_from_slice(&other.protocol);
        self.tcp_flags.extend_from_slice(&other.tcp_flags);
        self.bytes.extend_from_slice(&other.bytes);
        self.packets.extend_from_slice(&other.packets);
        self.sampling_rate.extend_from_slice(&other.sampling_rate);
        self.in_if.extend_from_slice(&other.in_if);
        self.out_if.extend_from_slice(&other.out_if);
        self.source_kind.extend_from_slice(&other.source_kind);
    }

    /// The flows at `rows` (ascending or not), as a batch of their own.
    pub fn select(&self, rows: &[u32]) -> FlowBatch {
        FlowBatch {
            flow_start: select_rows(&self.flow_start, rows),
            flow_end: select_rows(&self.flow_end, rows),
            received_at: select_rows(&self.received_at, rows),
            exporter: select_rows(&self.exporter, rows),
            observation_domain: select_rows(&self.observation_domain, rows),
            src_ip: select_rows(&self.src_ip, rows),
            dst_ip: select_rows(&self.dst_ip, rows),
            src_port: select_rows(&self.src_port, rows),
            dst_port: select_rows(&self.dst_port, rows),
            protocol: select_rows(&self.protocol, rows),
            tcp_flags: select_rows(&self.tcp_flags, rows),
            bytes: select_rows(&self.bytes, rows),
            packets: select_rows(&self.packets, rows),
            sampling_rate: select_rows(&self.sampling_rate, rows),
            in_if: select_rows(&self.in_if, rows),
            out_if: select_rows(&self.out_if, rows),
            source_kind: select_rows(&self.source_kind, rows),
            details: self.details.as_ref().map(|d| Box::new(d.select(rows))),
        }
    }

    pub fn clear(&mut self) {
        *self = std::mem::take(self).cleared();
    }

    fn cleared(mut self) -> Self {
        self.flow_start.clear();
        self.flow_end.clear();
        self.received_at.clear();
        self.exporter.clear();
        self.observation_domain.clear();
        self.src_ip.clear();
        self.dst_ip.clear();
        self.src_port.clear();
        self.dst_port.clear();
        self.protocol.clear();
        self.tcp_flags.clear();
        self.bytes.clear();
        self.packets.clear();
        self.sampling_rate.clear();
        self.in_if.clear();
        self.out_if.clear();
        self.source_kind.clear();
        if let Some(d) = &mut self.details {
            d.clear();
        }
        self
    }

    /// The flow columns of the stored schema, in [`flow_schema`] order, without the
    /// per-endpoint attribution columns.
    pub fn flow_columns(&self) -> Vec<ArrayRef> {
        let counter_nulls = self.details.as_ref().and_then(|d| {
            debug_assert_eq!(d.len(), self.len(), "details pushed for every flow");
            d.counter_nulls()
        });
        let ts = |v: &[i64]| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v.to_vec()).with_timezone("UTC"))
        };
        fn i64s<T: Copy + Into<i64>>(v: &[T]) -> ArrayRef {
            Arc::new(Int64Array::from_iter_values(v.iter().map(|x| (*x).into())))
        }
        let bytes_i64 = |v: &[u64]| -> ArrayRef {
            // Counters above i64::MAX are not real traffic; saturate rather than wrap negative.
            let values: ScalarBuffer<i64> =
                v.iter().map(|x| (*x).min(i64::MAX as u64) as i64).collect();
            Arc::new(Int64Array::new(values, counter_nulls.clone()))
        };
        let ports = |v: &[u16]| -> ArrayRef {
            Arc::new(Int32Array::from_iter_values(v.iter().map(|x| *x as i32)))
        };
        let small = |v: &[u8]| -> ArrayRef {
            Arc::new(Int16Array::from_iter_values(v.iter().map(|x| *x as i16)))
        };
        vec![
            ts(&self.flow_start),
            ts(&self.flow_end),
            ts(&self.received_at),
            ip_text_column(&self.exporter),
            i64s(&self.observation_domain),
            ip_text_column(&self.src_ip),
            ip_text_column(&self.dst_ip),
            ports(&self.src_port),
            ports(&self.dst_port),
            small(&self.protocol),
            small(&self.tcp_flags),
            bytes_i64(&self.bytes),
            bytes_i64(&self.packets),
            i64s(&self.sampling_rate),
            i64s(&self.in_if),
            i64s(&self.out_if),
            Arc::new(StringArray::from_iter_values(
                self.source_kind.iter().map(|k| k.as_str()),
            )),
        ]
    }

    /// Reads stored `flows` rows back (as a query returns them: text as Utf8 or Utf8View),
    /// so they can be attributed again. Rows whose addresses do not parse are an error: the
    /// store only ever holds addresses Hawking wrote.
    pub fn from_stored(rows: &RecordBatch) -> Result<FlowBatch, StoredFlowError> {
        use arrow::array::AsArray;
        use arrow::datatypes::{Int16Type, Int32Type, Int64Type, TimestampMicrosecondType};
        let column = |name: &'static str| {
            rows.column_by_name(name)
                .ok_or(StoredFlowError::Missing { column: name })
        };
        let wrong = |column: &'static str| StoredFlowError::WrongType { column };
        let times = |name| -> Result<Vec<i64>, StoredFlowError> {
            let c = column(name)?
                .as_primitive_opt::<TimestampMicrosecondType>()
                .ok_or(wrong(name))?;
            Ok(c.values().to_vec())
        };
        let ints = |name| -> Result<Vec<i64>, StoredFlowError> {
            let c = column(name)?;
            if let Some(c) = c.as_primitive_opt::<Int64Type>() {
                Ok(c.values().to_vec())
            } else if let Some(c) = c.as_primitive_opt::<Int32Type>() {
                Ok(c.values().iter().map(|v| *v as i64).collect())
            } else if let Some(c) = c.as_primitive_opt::<Int16Type>() {
                Ok(c.values().iter().map(|v| *v as i64).collect())
            } else {
                Err(wrong(name))
            }
        };
        let texts =
            |name: &'static str, f: &mut dyn FnMut(usize, &str) -> Result<(), StoredFlowError>| {
                let c = column(name)?;
                if let Some(c) = c.as_string_opt::<i32>() {
                    for (i, v) in c.iter().enumerate() {
                        f(i, v.unwrap_or_default())?;
                    }
                } else if let Some(c) = c.as_string_view_opt() {
                    for (i, v) in c.iter().enumerate() {
                        f(i, v.unwrap_or_default())?;
                    }
                } else {
                    return Err(wrong(name));
                }
                Ok(())
            };
        let mut b = FlowBatch::with_capacity(rows.num_rows());
        b.flow_start = times("flow_start")?;
        b.flow_end = times("flow_end")?;
        b.received_at = times("received_at")?;
        for (name, out) in [
            ("exporter", &mut b.exporter),
            ("src_ip", &mut b.src_ip),
            ("dst_ip", &mut b.dst_ip),
        ] {
            // An exporter's address repeats row after row: parsed once per run.
            let mut last: Option<(String, u128)> = None;
            texts(name, &mut |row, text| {
                let ip = match &last {
                    Some((t, ip)) if t == text => *ip,
                    _ => {
                        let ip = crate::ip::parse_ip(text).ok_or_else(|| {
                            StoredFlowError::BadAddress {
                                column: name,
                                row,
                                text: text.to_string(),
                            }
                        })?;
                        if name == "exporter" {
                            last = Some((text.to_string(), ip));
                        }
                        ip
                    }
                };
                out.push(ip);
                Ok(())
            })?;
        }
        texts("source_kind", &mut |row, text| {
            b.source_kind.push(SourceKind::parse(text).ok_or_else(|| {
                StoredFlowError::BadSourceKind {
                    row,
                    text: text.to_string(),
                }
            })?);
            Ok(())
        })?;
        b.observation_domain = ints("observation_domain")?
            .into_iter()
            .map(|v| v as u32)
            .collect();
        b.src_port = ints("src_port")?.into_iter().map(|v| v as u16).collect();
        b.dst_port = ints("dst_port")?.into_iter().map(|v| v as u16).collect();
        b.protocol = ints("protocol")?.into_iter().map(|v| v as u8).collect();
        b.tcp_flags = ints("tcp_flags")?.into_iter().map(|v| v as u8).collect();
        b.bytes = ints("bytes")?
            .into_iter()
            .map(|v| v.max(0) as u64)
            .collect();
        b.packets = ints("packets")?
            .into_iter()
            .map(|v| v.max(0) as u64)
            .collect();
        b.sampling_rate = ints("sampling_rate")?
            .into_iter()
            .map(|v| v as u32)
            .collect();
        b.in_if = ints("in_if")?.into_iter().map(|v| v as u32).collect();
        b.out_if = ints("out_if")?.into_iter().map(|v| v as u32).collect();
        let counted: Vec<bool> = match column("bytes")?.logical_nulls() {
            Some(nulls) => nulls.iter().collect(),
            None => vec![true; rows.num_rows()],
        };
        b.details = FlowDetails::from_stored(rows, counted).map(Box::new);
        Ok(b)
    }

    /// The whole stored row set for this batch with every attribution column null (flows that
    /// no enricher has seen).
    pub fn to_record_batch_unattributed(&self) -> Result<RecordBatch, ArrowError> {
        self.to_record_batch(None)
    }

    /// The stored row set: the flow columns plus `endpoint_columns`, the `src_*` then `dst_*`
    /// attribution columns in [`ENDPOINT_COLUMNS`] order (all null when `None`).
    pub fn to_record_batch(
        &self,
        endpoint_columns: Option<Vec<ArrayRef>>,
    ) -> Result<RecordBatch, ArrowError> {
        let mut cols = self.flow_columns();
        let schema = flow_schema();
        match endpoint_columns {
            Some(endpoint) => cols.extend(endpoint),
            None => {
                let endpoint = schema.fields().iter().skip(cols.len());
                for field in endpoint.take(2 * ENDPOINT_COLUMNS.len()) {
                    cols.push(new_null_array(field.data_type(), self.len()));
                }
            }
        }
        match &self.details {
            Some(d) => cols.extend(d.to_columns()),
            None => {
                for field in schema.fields().iter().skip(cols.len()) {
                    cols.push(new_null_array(field.data_type(), self.len()));
                }
            }
        }
        RecordBatch::try_new(schema, cols)
    }
}

/// Stored flow rows that cannot be read back as flows.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum StoredFlowError {
    #[error("stored flows have no column {column}")]
    Missing { column: &'static str },
    #[error("stored flows' column {column} has an unexpected type")]
    WrongType { column: &'static str },
    #[error("stored flow row {row}: {column} {text:?} is not an address")]
    BadAddress {
        column: &'static str,
        row: usize,
        text: String,
    },
    #[error("stored flow row {row}: unknown source_kind {text:?}")]
    BadSourceKind { row: usize, text: String },
}

/// Builds a Utf8 column of address text in one buffer, without a `String` per row; a run
/// of equal addresses (the exporter column) is formatted once.
pub fn ip_text_column(ips: &[u128]) -> ArrayRef {
    let mut text: Vec<u8> = Vec::with_capacity(ips.len() * 13);
    let mut offsets = Vec::with_capacity(ips.len() + 1);
    offsets.push(0i32);
    let mut previous: Option<(u128, usize, usize)> = None;
    for ip in ips {
        match previous {
            Some((p, start, end)) if p == *ip => text.extend_from_within(start..end),
            _ => {
                let start = text.len();
                push_ip_text(&mut text, *ip);
                previous = Some((*ip, start, text.len()));
            }
        }
        offsets.push(text.len() as i32);
    }
    let offsets = OffsetBuffer::new(ScalarBuffer::from(offsets));
    Arc::new(StringArray::new(offsets, Buffer::from_vec(text), None))
}

/// Names of the per-endpoint attribution columns, after the `src_`/`dst_` prefix.
/// `candidates` names every possible owner when the attribution is `ambiguous`.
pub const ENDPOINT_COLUMNS: [&str; 9] = [
    "cluster",
    "namespace",
    "pod",
    "workload_kind",
    "workload",
    "node",
    "service",
    "attribution",
    "candidates",
];

/// Arrow schema of the `flows` table as stored (partition columns excluded).
pub fn flow_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
            let mut fields = vec![
                Field::new("flow_start", ts(), false),
                Field::new("flow_end", ts(), false),
                Field::new("received_at", ts(), false),
                Field::new("exporter", DataType::Utf8, false),
                Field::new("observation_domain", DataType::Int64, false),
                Field::new("src_ip", DataType::Utf8, false),
                Field::new("dst_ip", DataType::Utf8, false),
                Field::new("src_port", DataType::Int32, false),
                Field::new("dst_port", DataType::Int32, false),
                Field::new("protocol", DataType::Int16, false),
                Field::new("tcp_flags", DataType::Int16, false),
                // Null where the exporter reports no counts (Hubble's events).
                Field::new("bytes", DataType::Int64, true),
                Field::new("packets", DataType::Int64, true),
                Field::new("sampling_rate", DataType::Int64, false),
                Field::new("in_if", DataType::Int64, false),
                Field::new("out_if", DataType::Int64, false),
                Field::new("source_kind", DataType::Utf8, false),
            ];
            for side in ["src", "dst"] {
                for col in ENDPOINT_COLUMNS {
                    fields.push(Field::new(format!("{side}_{col}"), DataType::Utf8, true));
                }
            }
            fields.extend(crate::flow_details::detail_fields());
            let metadata = [(
                crate::SCHEMA_VERSION_KEY.to_string(),
                crate::SCHEMA_VERSION.to_string(),
            )]
            .into_iter()
            .collect();
            Arc::new(Schema::new_with_metadata(fields, metadata))
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ip::v4_to_u128;
    use arrow::array::{Array, AsArray};

    fn sample() -> FlowBatch {
        let mut b = FlowBatch::default();
        let origin = FlowOrigin {
            received_at: 1_700_000_000_000_000,
            exporter: v4_to_u128(0x7f00_0001),
            observation_domain: 7,
            source_kind: SourceKind::Ipfix,
        };
        let r = FlowRecord {
            flow_start: 1_699_999_999_000_000,
            flow_end: 1_700_000_000_000_000,
            src_ip: v4_to_u128(0x0a04_0307),
            dst_ip: v4_to_u128(0x0808_0808),
            src_port: 40000,
            dst_port: 53,
            protocol: 17,
            tcp_flags: 0,
            bytes: 120,
            packets: 2,
            sampling_rate: 1,
            in_if: 3,
            out_if: 4,
        };
        b.push(&origin, &r);
        b
    }

    #[test]
    fn record_batch_has_text_ips_and_null_attribution() {
        let batch = sample().to_record_batch_unattributed().unwrap();
        assert_eq!(batch.schema(), flow_schema());
        let src = batch.column_by_name("src_ip").unwrap().as_string::<i32>();
        assert_eq!(src.value(0), "10.4.3.7");
        let exporter = batch.column_by_name("exporter").unwrap().as_string::<i32>();
        assert_eq!(exporter.value(0), "127.0.0.1");
        assert!(batch.column_by_name("dst_pod").unwrap().is_null(0));
        let kind = batch
            .column_by_name("source_kind")
            .unwrap()
            .as_string::<i32>();
        assert_eq!(kind.value(0), "ipfix");
    }

    #[test]
    fn stored_rows_read_back_as_the_flows_they_were() {
        let mut b = sample();
        let mut r = b.record(0);
        r.src_ip = crate::ip::parse_ip("fd00:10:4::7").unwrap();
        r.bytes = 9_000;
        let origin = FlowOrigin {
            received_at: 1,
            exporter: v4_to_u128(0x0a00_0001),
            observation_domain: 9,
            source_kind: SourceKind::NetflowV9,
        };
        b.push(&origin, &r);
        let stored = b.to_record_batch_unattributed().unwrap();
        assert_eq!(FlowBatch::from_stored(&stored).unwrap(), b);
        // As a query returns them: text as Utf8View.
        let view: Vec<ArrayRef> = stored
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Utf8 => arrow::compute::cast(c, &DataType::Utf8View).unwrap(),
                _ => c.clone(),
            })
            .collect();
        let fields: Vec<Field> = stored
            .schema()
            .fields()
            .iter()
            .zip(&view)
            .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect();
        let view = RecordBatch::try_new(Arc::new(Schema::new(fields)), view).unwrap();
        assert_eq!(FlowBatch::from_stored(&view).unwrap(), b);
    }

    #[test]
    fn clear_keeps_capacity_and_empties() {
        let mut b = sample();
        b.clear();
        assert!(b.is_empty());
        assert!(b.src_ip.capacity() >= 1);
    }
}
