//! Hawking's collectors: listeners and decoders that turn what exporters send into columnar
//! [`hawking_schemas::FlowBatch`]es, and the conntrack source of the node agent. Nothing here
//! knows about Kubernetes or storage.

pub mod conntrack;
pub mod export;
pub mod listener;
pub mod metrics;
pub mod netflow;

pub use listener::{ListenerError, ListenerStats, NetflowListener, NetflowListenerConfig};
pub use metrics::CollectorMetrics;
pub use netflow::{DecoderConfig, NetflowDecoder};
