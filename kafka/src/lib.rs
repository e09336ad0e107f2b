//! Hawking and Kafka: the sink (attributed flows to a topic as JSON or protobuf messages,
//! through an idempotent producer, with a bounded on-disk spool for while the broker is away)
//! and the source (flows consumed from topics in a consumer group, offsets committed only
//! once the flows are stored). The only crate that links librdkafka (built from source by
//! `rdkafka`), so the rest builds without it.

pub mod config;
pub mod encode;
pub mod json_schema;
pub mod proto_schema;
pub mod sink;
pub mod source;
pub mod spool;

pub use config::{KafkaSinkConfig, MessageFormat, MessageKey};
pub use sink::{KafkaSink, KafkaSinkError, SCHEMA_HEADER};
pub use source::{KafkaInputFormat, KafkaSourceConfig, KafkaSourceError};

/// librdkafka's log lines in Hawking's log, at their own level.
fn log_librdkafka(level: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
    use rdkafka::config::RDKafkaLogLevel as Level;
    match level {
        Level::Emerg | Level::Alert | Level::Critical | Level::Error => {
            tracing::error!(target: "kafka", "{facility}: {message}")
        }
        Level::Warning => tracing::warn!(target: "kafka", "{facility}: {message}"),
        _ => tracing::debug!(target: "kafka", "{facility}: {message}"),
    }
}
