//! Hawking's record types and their Arrow schemas: what flows between the collector, the
//! enricher, the sinks and the store. Nothing here knows about sockets, Kubernetes or SQL.

pub mod flow;
pub mod history;
pub mod ip;
pub mod nat;

pub use flow::{FlowBatch, SourceKind, flow_schema};
pub use history::{Attribution, OwnerKind, history_gaps_schema, ip_history_schema};
pub use nat::{NatEvent, NatEventKind, nat_history_schema};

/// Version of the stored schemas. Bumped when a column changes meaning or type; readers use
/// it to refuse files they would misread.
pub const SCHEMA_VERSION: u32 = 1;

/// Key under which [`SCHEMA_VERSION`] is stored in Arrow/Parquet schema metadata.
pub const SCHEMA_VERSION_KEY: &str = "hawking.schema_version";
