//! Flow rows as Kafka messages: each row of a flows batch one JSON object, and its key.

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray};
use arrow::compute::cast;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};
use arrow::error::ArrowError;

use crate::config::MessageKey;

/// A batch of flows encoded as messages: one buffer for the whole batch and where each
/// message ends, so a batch costs two allocations however many flows it holds (the producer
/// copies what it is handed).
#[derive(Default)]
pub struct EncodedBatch {
    buf: Vec<u8>,
    /// End of each message in `buf` (the next starts one byte on, past the newline).
    ends: Vec<usize>,
    keys: Keys,
}

/// `batch` with its `UTC` timestamps labelled `+00:00`: the same instants, which the JSON
/// writer prints as RFC 3339 without a time-zone database.
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

/// The key columns of the batch being encoded.
#[derive(Default)]
enum Keys {
    #[default]
    None,
    Exporter(StringArray),
    SourceWorkload(Box<[StringArray; 3]>),
}

impl EncodedBatch {
    /// Encodes every row of `batch` (the flows table's columns) as one JSON object.
    pub fn encode(&mut self, batch: &RecordBatch, key: MessageKey) -> Result<(), ArrowError> {
        self.buf.clear();
        self.ends.clear();
        let batch = with_offset_times(batch)?;
        let mut writer = arrow::json::LineDelimitedWriter::new(&mut self.buf);
        writer.write(&batch)?;
        writer.finish()?;
        self.ends.extend(memchr::memchr_iter(b'\n', &self.buf));
        if self.ends.len() != batch.num_rows() {
            return Err(ArrowError::JsonError(format!(
                "{} rows encoded as {} lines",
                batch.num_rows(),
                self.ends.len()
            )));
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
            _ => self.ends[i - 1] + 1,
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
