//! The `[kafka]` section of `hawking serve`'s configuration.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Attributed flows to a Kafka topic, one message per flow. Off unless `brokers` is set.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaSinkConfig {
    /// Bootstrap brokers, `host:port[,host:port...]`. Unset (the default): no Kafka sink.
    pub brokers: Option<String>,
    /// The topic flows go to. Default `hawking.flows`.
    pub topic: String,
    /// How a flow is written: `json` (default; one JSON object per message, the fields of
    /// `schemas/kafka/flow.v1.schema.json`) or `protobuf` (one `hawking.flows.v1.Flow` of
    /// `schemas/kafka/flow_v1.proto` per message).
    pub format: MessageFormat,
    /// The message key, which decides the partition: `exporter` (default: one exporter's
    /// flows stay in order on one partition), `source_workload` (`cluster/namespace/workload`
    /// of the source, no key when the source is not a workload), or `none`.
    pub key: MessageKey,
    /// Where flows wait while the broker cannot take them. Default `<data_dir>/spool/kafka`.
    pub spool_dir: Option<PathBuf>,
    /// Bytes the spool may hold; flows beyond it are dropped and counted
    /// (`hawking_component_dropped_events_total{component="kafka",reason="spool_full"}`) and
    /// logged. Default 1073741824 (1 GiB).
    pub spool_max_bytes: u64,
    /// Seconds the producer keeps trying to deliver a message before it goes to the spool
    /// (librdkafka's `message.timeout.ms`). Default 30.
    pub delivery_timeout_secs: f64,
    /// Seconds between attempts to send the spool while the broker is failing. Default 5.
    pub retry_interval_secs: f64,
    /// Further librdkafka properties, passed as given (`security.protocol`, `sasl.*`,
    /// `compression.type`, ...). Idempotence and `acks=all` are always on.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaSinkConfig {
    fn default() -> Self {
        KafkaSinkConfig {
            brokers: None,
            topic: "hawking.flows".into(),
            format: MessageFormat::Json,
            key: MessageKey::Exporter,
            spool_dir: None,
            spool_max_bytes: 1 << 30,
            delivery_timeout_secs: 30.0,
            retry_interval_secs: 5.0,
            properties: BTreeMap::new(),
        }
    }
}

/// How one flow is encoded in a message.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageFormat {
    /// One JSON object, the flows table's columns by name; absent values are left out.
    Json,
    /// One protobuf `Flow`; absent values are absent fields.
    Protobuf,
}

impl MessageFormat {
    /// The `hawking-schema` header of its messages.
    pub fn schema_header(self) -> &'static str {
        match self {
            MessageFormat::Json => "hawking.flows.v1+json",
            MessageFormat::Protobuf => "hawking.flows.v1+protobuf",
        }
    }
}

/// What a message is keyed by.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum MessageKey {
    /// The exporter's address.
    Exporter,
    /// `cluster/namespace/workload` of the source endpoint, when it is a workload's.
    SourceWorkload,
    /// No key (the producer spreads messages over partitions).
    None,
}
