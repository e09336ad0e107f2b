//! The history of who held which address: attribution verdicts, owner kinds, and the Arrow
//! schemas of the persisted `ip_history` and `history_gaps` logs.
//!
//! Both logs are append-only: an interval (or gap) is written when it opens, with its end
//! null, and again under the same ID when it closes. Readers keep, per ID, the closed row if
//! there is one (the `ip_history` and `history_gaps` views do exactly that).

use std::sync::{Arc, OnceLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// How a flow endpoint was attributed, stored in `src_attribution` / `dst_attribution`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Attribution {
    /// A pod held the address (host-network pods too, when port evidence names one).
    Pod,
    /// The address was a NAT's outside address; a translation covering the flow maps it back
    /// to a pod's address, and that pod held it then.
    Snat,
    /// A node's own address.
    Node,
    /// A service's cluster or load-balancer address.
    Service,
    /// Not a cluster address: outside every known pod/service range and never held.
    External,
    /// Two or more owners could have held the address then (event lag, shared node address).
    Ambiguous,
    /// No history covers that time for a cluster address (or the watch was down).
    Unknown,
}

impl Attribution {
    pub fn as_str(self) -> &'static str {
        match self {
            Attribution::Pod => "pod",
            Attribution::Snat => "snat",
            Attribution::Node => "node",
            Attribution::Service => "service",
            Attribution::External => "external",
            Attribution::Ambiguous => "ambiguous",
            Attribution::Unknown => "unknown",
        }
    }
}

/// What kind of object held an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum OwnerKind {
    Pod,
    /// A pod on the host network: it shares its node's address.
    HostNetworkPod,
    Node,
    Service,
}

impl OwnerKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OwnerKind::Pod => "pod",
            OwnerKind::HostNetworkPod => "host_network_pod",
            OwnerKind::Node => "node",
            OwnerKind::Service => "service",
        }
    }

    pub fn parse(s: &str) -> Option<OwnerKind> {
        Some(match s {
            "pod" => OwnerKind::Pod,
            "host_network_pod" => OwnerKind::HostNetworkPod,
            "node" => OwnerKind::Node,
            "service" => OwnerKind::Service,
            _ => return None,
        })
    }
}

pub(crate) fn ts() -> DataType {
    DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
}

pub(crate) fn with_version(fields: Vec<Field>) -> SchemaRef {
    let metadata = [(
        crate::SCHEMA_VERSION_KEY.to_string(),
        crate::SCHEMA_VERSION.to_string(),
    )]
    .into_iter()
    .collect();
    Arc::new(Schema::new_with_metadata(fields, metadata))
}

/// Schema of the `ip_history_log` table (and of the `ip_history` view over it).
pub fn ip_history_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            with_version(vec![
                // Same for the open and the closed row of one interval.
                Field::new("interval_id", DataType::Int64, false),
                // Not `cluster`: DataFusion's SQL parser reads a bare CLUSTER as a keyword.
                Field::new("cluster_name", DataType::Utf8, false),
                Field::new("ip", DataType::Utf8, false),
                Field::new("owner_kind", DataType::Utf8, false),
                Field::new("namespace", DataType::Utf8, true),
                // Pod, node or service name.
                Field::new("name", DataType::Utf8, false),
                // Null for what an exporter reported (its identities carry no UID).
                Field::new("uid", DataType::Utf8, true),
                Field::new("workload_kind", DataType::Utf8, true),
                Field::new("workload", DataType::Utf8, true),
                Field::new("node", DataType::Utf8, true),
                // Host-network pods: declared ports, "tcp/10249 udp/53", the evidence that
                // tells them apart from their node.
                Field::new("ports", DataType::Utf8, true),
                Field::new("valid_from", ts(), false),
                // Null while the address is still held.
                Field::new("valid_to", ts(), true),
                // "watch" (live observation), "import" (a recording's timestamps), or the
                // exporter whose flows named the owner ("hubble", "netobserv"): evidence
                // beside the history, not used to attribute.
                Field::new("source", DataType::Utf8, false),
                Field::new("recorded_at", ts(), false),
            ])
        })
        .clone()
}

/// Schema of the `history_gaps_log` table: stretches when a cluster's watch was down (or
/// Hawking was not running), during which flows are attributed `unknown`.
pub fn history_gaps_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            with_version(vec![
                Field::new("gap_id", DataType::Int64, false),
                Field::new("cluster_name", DataType::Utf8, false),
                Field::new("gap_start", ts(), false),
                // Null while the gap lasts.
                Field::new("gap_end", ts(), true),
                Field::new("reason", DataType::Utf8, false),
                Field::new("recorded_at", ts(), false),
            ])
        })
        .clone()
}
