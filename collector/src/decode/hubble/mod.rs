//! Cilium Hubble flows into flows with their details, from either of the shapes Hubble
//! hands them out in: JSON lines ([`json`]: `hubble observe -o json`, the flow exporter's
//! file) and the Observer gRPC API's protobuf messages ([`proto`]). Both front-ends read
//! their shape into a [`FlowView`]; [`push`] turns a view into a row, so the two cannot
//! disagree on what a field means.

pub mod json;
pub mod proto;

use std::net::{IpAddr, SocketAddr};

use hawking_schemas::flow::{FlowRecord, SourceKind};
use hawking_schemas::flow_details::{DetailRow, Text};
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;

use super::json_lines::{Endpoint, push_flow};

pub use json::HubbleDecoder;
pub use proto::HubbleProtoDecoder;

/// An endpoint as Hubble names it.
pub(crate) struct EndpointView<'a, L> {
    pub identity: Option<i64>,
    pub cluster_name: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub pod_name: Option<&'a str>,
    pub labels: &'a [L],
    /// The first workload: (kind, name).
    pub workload: Option<(Option<&'a str>, Option<&'a str>)>,
}

impl<'a, L: AsRef<str>> EndpointView<'a, L> {
    pub fn empty() -> Self {
        EndpointView {
            identity: None,
            cluster_name: None,
            namespace: None,
            pod_name: None,
            labels: &[],
            workload: None,
        }
    }

    /// The cluster Cilium's policy label names (`k8s:io.cilium.k8s.policy.cluster=NAME`).
    fn policy_cluster(&self) -> Option<&'a str> {
        self.labels
            .iter()
            .find_map(|l| l.as_ref().strip_prefix("k8s:io.cilium.k8s.policy.cluster="))
    }

    /// What the endpoint names: a pod, or the reserved identity Cilium gave the address
    /// (`host` is the observing node itself, `world` outside the cluster).
    fn identity(&self, observer_node: Option<&'a str>) -> Endpoint<'a> {
        let reserved = self
            .labels
            .iter()
            .find_map(|l| l.as_ref().strip_prefix("reserved:"));
        let (kind, name) = match (self.pod_name.filter(|p| !p.is_empty()), reserved) {
            (Some(pod), _) => (Some("pod"), Some(pod)),
            (None, Some("host")) => (Some("host"), observer_node),
            (None, Some(other)) => (Some(other), None),
            (None, None) => (None, None),
        };
        Endpoint {
            kind,
            namespace: self.namespace,
            name,
            workload_kind: self.workload.and_then(|w| w.0),
            workload: self.workload.and_then(|w| w.1),
            identity: self.identity,
        }
    }
}

/// One Hubble flow, read and checked (addresses and time are there).
pub(crate) struct FlowView<'a, L> {
    pub at_us: i64,
    pub src: IpAddr,
    pub dst: IpAddr,
    pub src_xlated: Option<&'a str>,
    /// Protocol number, ports (ICMP type << 8 | code in the destination port) and TCP flags.
    pub l4: (u8, u16, u16, u8),
    pub verdict: Option<&'a str>,
    pub drop_reason: Option<&'a str>,
    pub direction: Option<&'static str>,
    pub is_reply: Option<bool>,
    pub l7_type: Option<&'a str>,
    pub l7_protocol: Option<&'static str>,
    /// `node_name`: `cluster/node`, a node name, or an address.
    pub node: Option<&'a str>,
    pub interface: Option<&'a str>,
    pub source: EndpointView<'a, L>,
    pub destination: EndpointView<'a, L>,
}

/// Hubble's traffic direction as stored.
/// Folds Hubble's TCP flag booleans (FIN first, CWR last) into the
/// tcpControlBits byte NetFlow and IPFIX store.
pub(crate) fn tcp_flag_bits(flags: [bool; 8]) -> u8 {
    flags
        .iter()
        .enumerate()
        .fold(0, |acc, (bit, set)| acc | ((*set as u8) << bit))
}

pub(crate) fn direction(name: &str) -> Option<&'static str> {
    match name {
        "INGRESS" => Some("ingress"),
        "EGRESS" => Some("egress"),
        _ => None,
    }
}

/// Appends the flow and its details to `out`; `labels` is scratch for the label columns.
pub(crate) fn push<L: AsRef<str>>(
    view: &FlowView<'_, L>,
    from: SocketAddr,
    received_at_us: i64,
    labels: &mut [String; 2],
    out: &mut SourceBatch,
) {
    let (protocol, src_port, dst_port, tcp_flags) = view.l4;
    let record = FlowRecord {
        flow_start: view.at_us,
        flow_end: view.at_us,
        src_ip: ip_to_u128(view.src),
        dst_ip: ip_to_u128(view.dst),
        src_port,
        dst_port,
        protocol,
        tcp_flags,
        sampling_rate: 1,
        ..FlowRecord::default()
    };
    let (node_cluster, node_only) = match view.node.and_then(|n| n.split_once('/')) {
        Some((c, n)) => (Some(c), Some(n)),
        None => (None, view.node),
    };
    for (buf, ep) in labels.iter_mut().zip([&view.source, &view.destination]) {
        buf.clear();
        for (i, l) in ep.labels.iter().enumerate() {
            if i > 0 {
                buf.push(',');
            }
            buf.push_str(l.as_ref());
        }
    }
    let mut row = DetailRow {
        is_reply: view.is_reply,
        counted: false,
        ..DetailRow::default()
    };
    let (src_ep, dst_ep) = (&view.source, &view.destination);
    row.set(Text::Observer, view.node);
    row.set(
        Text::ReportedCluster,
        node_cluster
            .or(src_ep.cluster_name)
            .or(dst_ep.cluster_name)
            .or_else(|| src_ep.policy_cluster())
            .or_else(|| dst_ep.policy_cluster()),
    );
    row.set(Text::Verdict, view.verdict);
    row.set(Text::DropReason, view.drop_reason);
    row.set(Text::Direction, view.direction);
    row.set(Text::L7Type, view.l7_type);
    row.set(Text::L7Protocol, view.l7_protocol);
    row.set(Text::SrcXlatedIp, view.src_xlated.filter(|x| !x.is_empty()));
    row.set(Text::Interfaces, view.interface.filter(|i| !i.is_empty()));
    let [src_labels, dst_labels] = &*labels;
    src_ep.identity(node_only).fill(
        &mut row,
        true,
        Some(src_labels.as_str()).filter(|l| !l.is_empty()),
    );
    dst_ep.identity(node_only).fill(
        &mut row,
        false,
        Some(dst_labels.as_str()).filter(|l| !l.is_empty()),
    );
    push_flow(out, from, received_at_us, SourceKind::Hubble, &row, &record);
}
