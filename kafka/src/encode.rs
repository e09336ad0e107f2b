//! Flow rows as Kafka messages: each row of a flows batch one JSON object or one protobuf
//! `Flow` (`schemas/kafka/flow_v1.proto`), and its key.

use arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Int64Array, RecordBatch, StringArray};
use arrow::compute::cast;
use std::sync::Arc;

use arrow::datatypes::{DataType, Int64Type, Schema};
use arrow::error::ArrowError;

use crate::config::{MessageFormat, MessageKey};
use crate::proto_schema::ProtoType;

/// A batch of flows encoded as messages: one buffer for the whole batch and where each
/// message ends, so a batch costs two allocations however many flows it holds (the producer
/// copies what it is handed).
#[derive(Default)]
pub struct EncodedBatch {
    buf: Vec<u8>,
    /// End of each message in `buf`; the next starts `gap` bytes on (JSON's newline).
    ends: Vec<usize>,
    gap: usize,
    keys: Keys,
}

/// `batch` with its `UTC` timestamps labelled `+00:00`: the same instants, which the JSON
/// writer prints as RFC 3339 (`...Z`) without a time-zone database.
fn with_offset_times(batch: &RecordBatch) -> Result<RecordBatch, ArrowError> {
    let schema = batch.schema();
    let mut fields = Vec::with_capacity(schema.fields().len());
    let mut columns = Vec::with_capacity(schema.fields().len());
    for (field, column) in schema.fields().iter().zip(batch.columns()) {
        match field.data_type() {
            DataType::Timestamp(unit, Some(tz)) if tz.as_ref() == "UTC" => {
                let t = DataType::Timestamp(*unit, Some("+00:00".into()));
                columns.push(cast(column, &t)?);
                fields.push(field.as_ref().clone().with_data_type(t));
            }
            _ => {
                columns.push(column.clone());
                fields.push(field.as_ref().clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A column as the protobuf encoder reads it.
enum ProtoColumn {
    Int(Int64Array),
    Text(StringArray),
    Bool(BooleanArray),
}

impl ProtoColumn {
    fn is_null(&self, row: usize) -> bool {
        match self {
            ProtoColumn::Int(c) => c.is_null(row),
            ProtoColumn::Text(c) => c.is_null(row),
            ProtoColumn::Bool(c) => c.is_null(row),
        }
    }
}

/// Appends `v` as a protobuf varint.
fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

/// The key columns of the batch being encoded.
#[derive(Default)]
enum Keys {
    #[default]
    None,
    Exporter(StringArray),
    SourceWorkload(Box<[StringArray; 3]>),
}

impl EncodedBatch {
    /// Encodes every row of `batch` (the flows table's columns) as one message of `format`.
    pub fn encode(
        &mut self,
        batch: &RecordBatch,
        key: MessageKey,
        format: MessageFormat,
    ) -> Result<(), ArrowError> {
        self.buf.clear();
        self.ends.clear();
        match format {
            MessageFormat::Json => self.json(batch)?,
            MessageFormat::Protobuf => self.protobuf(batch)?,
        }
        let text = |name: &str| -> Result<StringArray, ArrowError> {
            let column: &ArrayRef = batch
                .column_by_name(name)
                .ok_or_else(|| ArrowError::SchemaError(format!("flows have no {name}")))?;
            Ok(cast(column, &DataType::Utf8)?.as_string::<i32>().clone())
        };
        self.keys = match key {
            MessageKey::None => Keys::None,
            MessageKey::Exporter => Keys::Exporter(text("exporter")?),
            MessageKey::SourceWorkload => Keys::SourceWorkload(Box::new([
                text("src_cluster")?,
                text("src_namespace")?,
                text("src_workload")?,
            ])),
        };
        Ok(())
    }

    /// Each row one JSON object, the lines of arrow's JSON writer.
    fn json(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let batch = with_offset_times(batch)?;
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut self.buf);
        writer.write(&batch)?;
        writer.finish()?;
        self.ends.extend(memchr::memchr_iter(b'\n', &self.buf));
        self.gap = 1;
        if self.ends.len() != batch.num_rows() {
            return Err(ArrowError::JsonError(format!(
                "{} rows encoded as {} lines",
                batch.num_rows(),
                self.ends.len()
            )));
        }
        Ok(())
    }

    /// Each row one protobuf `Flow`: a column's field number is its position in the flows
    /// table plus one; a null is an absent field, a non-nullable zero is left to proto3's
    /// default.
    fn protobuf(&mut self, batch: &RecordBatch) -> Result<(), ArrowError> {
        let schema = hawking_schemas::flow_schema();
        let mut columns = Vec::with_capacity(schema.fields().len());
        for (i, field) in schema.fields().iter().enumerate() {
            let Some(column) = batch.column_by_name(field.name()) else {
                continue;
            };
            let t = ProtoType::of(field.data_type()).ok_or_else(|| {
                ArrowError::SchemaError(format!("{} has no protobuf type", field.name()))
            })?;
            let column = match t {
                ProtoType::TimestampMicros | ProtoType::Int64 => ProtoColumn::Int(
                    cast(column, &DataType::Int64)?
                        .as_primitive::<Int64Type>()
                        .clone(),
                ),
                ProtoType::String => {
                    ProtoColumn::Text(cast(column, &DataType::Utf8)?.as_string::<i32>().clone())
                }
                ProtoType::Bool => {
                    ProtoColumn::Bool(column.as_boolean_opt().cloned().ok_or_else(|| {
                        ArrowError::SchemaError(format!("{} is not boolean", field.name()))
                    })?)
                }
            };
            columns.push(((i as u64 + 1) << 3, field.is_nullable(), column));
        }
        for row in 0..batch.num_rows() {
            for (tag, optional, column) in &columns {
                if column.is_null(row) {
                    continue;
                }
                match column {
                    ProtoColumn::Int(c) => {
                        let v = c.value(row);
                        if v != 0 || *optional {
                            varint(&mut self.buf, *tag);
                            varint(&mut self.buf, v as u64);
                        }
                    }
                    ProtoColumn::Bool(c) => {
                        let v = c.value(row);
                        if v || *optional {
                            varint(&mut self.buf, *tag);
                            self.buf.push(v as u8);
                        }
                    }
                    ProtoColumn::Text(c) => {
                        let v = c.value(row).as_bytes();
                        if !v.is_empty() || *optional {
                            varint(&mut self.buf, *tag | 2);
                            varint(&mut self.buf, v.len() as u64);
                            self.buf.extend_from_slice(v);
                        }
                    }
                }
            }
            self.ends.push(self.buf.len());
        }
        self.gap = 0;
        Ok(())
    }

    /// Messages encoded.
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// The payload of message `i`.
    pub fn payload(&self, i: usize) -> &[u8] {
        let start = match i {
            0 => 0,
            _ => self.ends[i - 1] + self.gap,
        };
        &self.buf[start..self.ends[i]]
    }

    /// The key of message `i`, written into `scratch` where it must be composed.
    pub fn key<'a>(&'a self, i: usize, scratch: &'a mut String) -> Option<&'a [u8]> {
        match &self.keys {
            Keys::None => None,
            Keys::Exporter(exporter) => exporter.is_valid(i).then(|| exporter.value(i).as_bytes()),
            Keys::SourceWorkload(columns) => {
                let [cluster, namespace, workload] = columns.as_ref();
                if !workload.is_valid(i) {
                    return None;
                }
                scratch.clear();
                for (n, part) in [cluster, namespace, workload].into_iter().enumerate() {
                    if n > 0 {
                        scratch.push('/');
                    }
                    if part.is_valid(i) {
                        scratch.push_str(part.value(i));
                    }
                }
                Some(scratch.as_bytes())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use hawking_schemas::FlowBatch;
    use hawking_schemas::flow::{ENDPOINT_COLUMNS, FlowOrigin, FlowRecord, SourceKind};
    use hawking_schemas::ip::v4_to_u128;

    /// Two flows from 192.0.2.1: the first a workload's (prod/shop/web), the second from an
    /// address no workload held.
    fn flows() -> RecordBatch {
        let mut b = FlowBatch::default();
        let origin = FlowOrigin {
            received_at: 1_796_083_200_000_000,
            exporter: v4_to_u128(0xc000_0201),
            observation_domain: 0,
            source_kind: SourceKind::Ipfix,
        };
        for i in 0..2u32 {
            let record = FlowRecord {
                flow_start: 1_796_083_200_000_000,
                flow_end: 1_796_083_200_500_000,
                src_ip: v4_to_u128(0x0a00_0001 + i),
                dst_ip: v4_to_u128(0x0808_0808),
                protocol: 17,
                bytes: 100,
                packets: 1,
                ..Default::default()
            };
            b.push(&origin, &record);
        }
        let side = |values: [[Option<&str>; 2]; 9]| -> Vec<ArrayRef> {
            values
                .iter()
                .map(|v| Arc::new(StringArray::from(v.to_vec())) as ArrayRef)
                .collect()
        };
        let mut src = [[None, None]; 9];
        let at = |c: &str| ENDPOINT_COLUMNS.iter().position(|n| *n == c).unwrap();
        src[at("cluster")] = [Some("prod"), Some("prod")];
        src[at("namespace")] = [Some("shop"), None];
        src[at("workload")] = [Some("web"), None];
        src[at("attribution")] = [Some("pod"), Some("unknown")];
        let mut columns = side(src);
        columns.extend(side([[None, None]; 9]));
        b.to_record_batch(Some(columns)).unwrap()
    }

    fn keys(key: MessageKey) -> Vec<Option<String>> {
        let mut e = EncodedBatch::default();
        e.encode(&flows(), key, MessageFormat::Json).unwrap();
        let mut scratch = String::new();
        (0..e.len())
            .map(|i| {
                e.key(i, &mut scratch)
                    .map(|k| String::from_utf8(k.to_vec()).unwrap())
            })
            .collect()
    }

    #[test]
    fn messages_are_keyed_as_configured() {
        assert_eq!(
            keys(MessageKey::Exporter),
            [Some("192.0.2.1".into()), Some("192.0.2.1".into())]
        );
        assert_eq!(
            keys(MessageKey::SourceWorkload),
            [Some("prod/shop/web".into()), None],
            "no workload, no key: a made-up key would gather unrelated flows"
        );
        assert_eq!(keys(MessageKey::None), [None, None]);
    }

    #[test]
    fn each_row_is_one_json_object_with_what_it_holds() {
        let mut e = EncodedBatch::default();
        e.encode(&flows(), MessageKey::None, MessageFormat::Json)
            .unwrap();
        assert_eq!(e.len(), 2);
        let first: serde_json::Value = serde_json::from_slice(e.payload(0)).unwrap();
        let second: serde_json::Value = serde_json::from_slice(e.payload(1)).unwrap();
        assert_eq!(first["src_ip"], "10.0.0.1");
        assert_eq!(second["src_ip"], "10.0.0.2");
        assert_eq!(first["src_workload"], "web");
        assert_eq!(first["flow_start"], "2026-12-01T00:00:00Z");
        assert_eq!(first["flow_end"], "2026-12-01T00:00:00.500Z");
        assert!(second.get("src_workload").is_none());
        assert!(
            second.get("dst_attribution").is_none(),
            "not attributed: left out"
        );
    }

    /// A protobuf message read field by field (numbers to values), by the wire format's
    /// rules alone.
    fn fields(mut b: &[u8]) -> std::collections::BTreeMap<u64, serde_json::Value> {
        fn varint(b: &mut &[u8]) -> u64 {
            let mut v = 0;
            for shift in (0..64).step_by(7) {
                let byte = b[0];
                *b = &b[1..];
                v |= u64::from(byte & 0x7f) << shift;
                if byte & 0x80 == 0 {
                    break;
                }
            }
            v
        }
        let mut out = std::collections::BTreeMap::new();
        while !b.is_empty() {
            let key = varint(&mut b);
            let value = match key & 7 {
                0 => serde_json::json!(varint(&mut b)),
                2 => {
                    let n = varint(&mut b) as usize;
                    let s = String::from_utf8(b[..n].to_vec()).unwrap();
                    b = &b[n..];
                    serde_json::json!(s)
                }
                t => panic!("wire type {t}"),
            };
            out.insert(key >> 3, value);
        }
        out
    }

    #[test]
    fn protobuf_messages_say_what_the_json_says_by_column_number() {
        let batch = flows();
        let (mut json, mut proto) = (EncodedBatch::default(), EncodedBatch::default());
        json.encode(&batch, MessageKey::None, MessageFormat::Json)
            .unwrap();
        proto
            .encode(&batch, MessageKey::None, MessageFormat::Protobuf)
            .unwrap();
        assert_eq!(proto.len(), 2);
        let schema = hawking_schemas::flow_schema();
        for row in 0..2 {
            let j: serde_json::Value = serde_json::from_slice(json.payload(row)).unwrap();
            let p = fields(proto.payload(row));
            for (i, field) in schema.fields().iter().enumerate() {
                let number = i as u64 + 1;
                let name = field.name();
                match (j.get(name), p.get(&number)) {
                    (None, None) => {}
                    // proto3 leaves a non-nullable zero to its default.
                    (Some(v), None) => assert!(
                        !field.is_nullable() && (v == 0 || v == ""),
                        "{name} = {v} missing from protobuf"
                    ),
                    (None, Some(v)) => panic!("{name} = {v} only in protobuf"),
                    (Some(serde_json::Value::String(t)), Some(v))
                        if name.starts_with("flow_") || name == "received_at" =>
                    {
                        let t: jiff::Timestamp = t.parse().unwrap();
                        assert_eq!(v.as_i64(), Some(t.as_microsecond()), "{name}");
                    }
                    (Some(a), Some(b)) => assert_eq!(a, b, "{name}"),
                }
            }
            assert_eq!(
                p.get(&1).and_then(|v| v.as_i64()),
                Some(1_796_083_200_000_000)
            );
        }
    }
}
