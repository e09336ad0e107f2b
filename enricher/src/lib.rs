//! Hawking's enricher: the time-indexed history of who held which address in each
//! Kubernetes cluster, how it is kept (live watches, recordings), and the point-in-time
//! attribution of flows against it, through source-NAT translations where a flow was seen
//! outside a NAT. Knows nothing of sockets or SQL.

pub mod attribute;
pub mod cidr;
pub mod config;
pub mod history;
pub mod import;
pub mod keeper;
pub mod nat;
pub mod objects;
pub mod owners;
pub mod watch;

pub use attribute::{
    BatchAttribution, ClusterSelector, attribute_batch, attribution_columns, resolve_through_nat,
};
pub use cidr::Cidr;
pub use config::{ClusterConfig, EnricherConfig, NatConfig};
pub use history::{IpHistory, OPEN, Verdict};
pub use keeper::{Event, HistoryKeeper, Mode, Observation};
pub use nat::{NatIndex, NatMatch};
pub use objects::{ObservedObject, Resource};
pub use owners::{OwnerId, OwnerSpec, OwnerTable};
