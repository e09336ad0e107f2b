//! Hawking's enricher: the time-indexed history of who held which address in each
//! Kubernetes cluster, how it is kept (live watches, recordings), the source-NAT
//! translations, the point-in-time attribution of flows against both, and the enrichment
//! stage that runs it all on what sources report ([`stage::EnrichmentStage`]). Knows nothing
//! of sockets or SQL.

pub mod attribute;
pub mod config;
pub mod history;
pub mod import;
mod interval_rows;
pub mod keeper;
pub mod nat;
pub mod objects;
pub mod owners;
pub mod reported;
pub mod sightings;
pub mod stage;
#[cfg(test)]
mod stage_tests;
pub mod watch;
pub mod watch_state;
pub mod whois;

pub use attribute::{
    BatchAttribution, ClusterSelector, attribute_batch, attribution_columns, resolve_through_nat,
};
pub use config::{ClusterConfig, EnricherConfig, ExporterMatch, NatConfig};
pub use hawking_schemas::cidr::Cidr;
pub use history::{IpHistory, OPEN, Verdict};
pub use keeper::{Event, HistoryKeeper, Mode, Observation};
pub use nat::{NatIndex, NatMatch};
pub use objects::{ObservedObject, Resource};
pub use owners::{OwnerId, OwnerSpec, OwnerTable};
pub use stage::{Clusters, EnrichmentStage, StageConfig};
pub use watch_state::HistoryState;
pub use whois::{WhoisAnswer, WhoisQuery};
