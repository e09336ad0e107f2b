//! What is observed of a cluster's addresses: an object (pod, node, service) claiming
//! addresses, releasing them, a complete list, a watch going down or coming back. Cluster
//! watches, recordings and in-cluster flow exporters all report in these terms; the
//! enricher's history keeper turns them into intervals and gaps.

use crate::OwnerKind;
use crate::cidr::Cidr;

/// Which watched resource an object came from (relists are per resource).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Resource {
    Pods,
    Nodes,
    Services,
}

impl Resource {
    pub fn as_str(self) -> &'static str {
        match self {
            Resource::Pods => "pods",
            Resource::Nodes => "nodes",
            Resource::Services => "services",
        }
    }
}

/// An object's claim on addresses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedObject {
    pub resource: Resource,
    pub kind: OwnerKind,
    pub uid: String,
    pub namespace: Option<String>,
    pub name: String,
    pub workload_kind: Option<String>,
    pub workload: Option<String>,
    pub node: Option<String>,
    /// Host-network pods: "tcp/10249 udp/53".
    pub ports: Option<String>,
    /// Addresses it holds (for a pod that has finished: the ones it held).
    pub addrs: Vec<u128>,
    /// Pod ranges a node announces.
    pub ranges: Vec<Cidr>,
    /// Earliest time its addresses can have been its own, by its timestamps (µs).
    pub since: Option<i64>,
    /// Whether it no longer holds its addresses (a pod that reached Succeeded or Failed:
    /// the object lingers, the address is free for the next pod).
    pub released: bool,
    /// When it released them at the latest, by its own timestamps (container termination,
    /// or the deletion deadline: `deletionTimestamp` already includes the grace period).
    pub released_by: Option<i64>,
    /// The latest timestamp anywhere in the object: a lower bound on when it was recorded.
    pub latest_timestamp: Option<i64>,
    /// Pods with their own network: the earliest container start. A container runs in the
    /// pod's sandbox, so the pod held its address from then on (no later than this).
    pub alive_from: Option<i64>,
    /// Pods with their own network: the latest container start or finish. The sandbox, and
    /// so the address, was still the pod's then: no other pod can have got it before.
    pub alive_until: Option<i64>,
}

/// One thing observed of a cluster at time `at` (µs).
#[derive(Clone, Debug)]
pub struct Observation {
    pub cluster: String,
    pub at: i64,
    pub event: Event,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// An object was added or changed.
    Upsert(ObservedObject),
    /// An object was deleted.
    Delete(ObservedObject),
    /// A complete list of a resource: whatever is not in it is gone.
    Relisted {
        resource: Resource,
        objects: Vec<ObservedObject>,
    },
    /// The watch of a resource failed: until it is back, the cluster is in a gap.
    Down { resource: Resource, reason: String },
    /// The watch of a resource is established again.
    Up { resource: Resource },
}
