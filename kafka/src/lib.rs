//! Hawking's Kafka sink: attributed flows to a topic as JSON messages, through an
//! idempotent producer, with a bounded on-disk spool for while the broker is away. The only
//! crate that links librdkafka (built from source by `rdkafka`), so the rest builds without it.

pub mod config;
pub mod encode;
pub mod json_schema;
pub mod proto_schema;
pub mod sink;
pub mod spool;

pub use config::{KafkaSinkConfig, MessageFormat, MessageKey};
pub use sink::{KafkaSink, KafkaSinkError, SCHEMA_HEADER};
