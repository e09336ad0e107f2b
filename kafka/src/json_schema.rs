//! The JSON Schema of the sink's messages, derived from the flows table's Arrow schema, so
//! the published file (`schemas/kafka/flow.v1.schema.json`) cannot drift from what is sent.

use arrow::datatypes::DataType;
use serde_json::{Map, Value, json};

use crate::config::MessageFormat;
use crate::sink::SCHEMA_HEADER;

/// The JSON Schema (draft 2020-12) every message of format `json` satisfies.
pub fn flow_message_schema() -> Value {
    let schema = hawking_schemas::flow_schema();
    let mut properties = Map::new();
    let mut required = Vec::new();
    for field in schema.fields() {
        let mut property = match field.data_type() {
            DataType::Timestamp(..) => json!({
                "type": "string",
                "format": "date-time",
                "description": "RFC 3339 in UTC (`Z`), with the fraction of a second when there is one"
            }),
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => json!({"type": "string"}),
            DataType::Boolean => json!({"type": "boolean"}),
            t if t.is_integer() => json!({"type": "integer"}),
            t => json!({"description": format!("arrow type {t}")}),
        };
        if field.name().ends_with("_ip") || field.name() == "exporter" {
            property["description"] = json!("an IPv4 or IPv6 address as text");
        }
        if !field.is_nullable() {
            required.push(json!(field.name()));
        }
        properties.insert(field.name().clone(), property);
    }
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://github.com/hawking-flow/hawking/schemas/kafka/flow.v1.schema.json",
        "title": "hawking.flows.v1",
        "description": format!(
            "One attributed flow per Kafka message (header {}: {}). The fields are the columns \
             of Hawking's flows table; a field whose value is absent (not reported, or not \
             attributed) is left out, never written as a made-up value.",
            SCHEMA_HEADER,
            MessageFormat::Json.schema_header()
        ),
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false
    })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    /// The published schema is the one messages are written by; `UPDATE_SCHEMAS=1 cargo test
    /// -p hawking-kafka` rewrites it after a change to the flows table.
    #[test]
    fn the_published_schema_is_the_one_messages_follow() {
        let path =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas/kafka/flow.v1.schema.json");
        let now = serde_json::to_string_pretty(&flow_message_schema()).unwrap() + "\n";
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &now).unwrap();
        }
        let published = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            published == now,
            "{} differs from the flows table: run UPDATE_SCHEMAS=1 cargo test -p hawking-kafka",
            path.display()
        );
    }
}
