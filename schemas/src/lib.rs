//! Hawking's shared vocabulary: the record types and their Arrow schemas (flows, address
//! history, NAT translations, observations), and the contracts between the pipeline's stages
//! (the message a source emits, the tables, the sink interface, component telemetry). Nothing
//! here knows about sockets, Kubernetes or SQL.

pub mod cidr;
pub mod columns;
pub mod flow;
pub mod flow_details;
pub mod history;
pub mod ip;
pub mod nat;
pub mod observation;
pub mod pipeline;
pub mod protocol;
pub mod raw;
pub mod state_file;
pub mod telemetry;
pub mod time;

pub use cidr::{BadCidr, Cidr};
pub use columns::{ColumnError, Columns};
pub use flow::{FlowBatch, SourceKind, flow_schema};
pub use history::{Attribution, OwnerKind, history_gaps_schema, ip_history_schema};
pub use nat::{NatEvent, NatEventKind, nat_history_schema};
pub use observation::{Event, Observation, ObservedObject, Resource};
pub use pipeline::{Committed, Sink, SinkError, SourceBatch, Table};
pub use telemetry::{Component, ComponentKind, Telemetry};

/// Version of the stored schemas. Bumped when a column changes meaning or type; readers use
/// it to refuse files they would misread.
pub const SCHEMA_VERSION: u32 = 1;

/// Key under which [`SCHEMA_VERSION`] is stored in Arrow/Parquet schema metadata.
pub const SCHEMA_VERSION_KEY: &str = "hawking.schema_version";
