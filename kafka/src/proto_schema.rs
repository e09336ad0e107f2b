//! The `.proto` of the sink's `protobuf` messages, derived from the flows table's Arrow
//! schema like the JSON Schema, so the published file (`schemas/kafka/flow_v1.proto`) cannot
//! drift from what is sent. A column's field number is its position in the table plus one:
//! columns are only ever added at the end, so numbers stay what consumers compiled.

use arrow::datatypes::DataType;

/// How a column is written in protobuf.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtoType {
    /// Microseconds since the Unix epoch, UTC.
    TimestampMicros,
    Int64,
    String,
    Bool,
}

impl ProtoType {
    /// The protobuf type of a column of `t`, if the sink can write it.
    pub fn of(t: &DataType) -> Option<ProtoType> {
        Some(match t {
            DataType::Timestamp(..) => ProtoType::TimestampMicros,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => ProtoType::String,
            DataType::Boolean => ProtoType::Bool,
            t if t.is_integer() => ProtoType::Int64,
            _ => return None,
        })
    }

    fn keyword(self) -> &'static str {
        match self {
            ProtoType::TimestampMicros | ProtoType::Int64 => "int64",
            ProtoType::String => "string",
            ProtoType::Bool => "bool",
        }
    }
}

/// The `.proto` every message of format `protobuf` is one `Flow` of.
pub fn flow_proto() -> String {
    let schema = hawking_schemas::flow_schema();
    let mut out = String::from(
        "// One attributed flow per Kafka message (header hawking-schema: \
         hawking.flows.v1+protobuf), the\n\
         // columns of Hawking's flows table. Derived from the table by kafka/src/proto_schema.rs;\n\
         // a field's number is its column's position plus one, and columns are only added at the\n\
         // end. `optional` fields are absent when the flow has no such value (not reported, not\n\
         // attributed): never a made-up zero or empty string. Times are microseconds since the\n\
         // Unix epoch, UTC; addresses are text (\"10.4.3.7\", \"2001:db8::1\").\n\
         syntax = \"proto3\";\n\npackage hawking.flows.v1;\n\nmessage Flow {\n",
    );
    for (i, field) in schema.fields().iter().enumerate() {
        let Some(t) = ProtoType::of(field.data_type()) else {
            continue;
        };
        let optional = if field.is_nullable() { "optional " } else { "" };
        let unit = if t == ProtoType::TimestampMicros {
            "  // µs since the epoch, UTC"
        } else {
            ""
        };
        out.push_str(&format!(
            "  {optional}{} {} = {};{unit}\n",
            t.keyword(),
            field.name(),
            i + 1
        ));
    }
    out.push_str("}\n");
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The published `.proto` is the one messages are written by; `UPDATE_SCHEMAS=1 cargo
    /// test -p hawking-kafka` rewrites it after a change to the flows table.
    #[test]
    fn the_published_proto_is_the_one_messages_follow() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/kafka/flow_v1.proto");
        let now = flow_proto();
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &now).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == now,
            "{} differs from the flows table: run UPDATE_SCHEMAS=1 cargo test -p hawking-kafka",
            path.display()
        );
    }

    #[test]
    fn every_column_of_the_flows_table_has_a_field() {
        let schema = hawking_schemas::flow_schema();
        for f in schema.fields() {
            assert!(
                ProtoType::of(f.data_type()).is_some(),
                "{}: {}",
                f.name(),
                f.data_type()
            );
        }
    }
}
