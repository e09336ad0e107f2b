//! Hubble's Observer API messages (`observer.GetFlowsRequest`/`GetFlowsResponse` and the
//! `flow.Flow` fields Hawking reads), written from Cilium's public `observer.proto` and
//! `flow.proto` field numbers; fields not declared here are skipped by prost, so newer
//! servers decode. The decoder reads one encoded `GetFlowsResponse` per message.

use std::net::SocketAddr;

use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use prost::Message;

use super::{EndpointView, FlowView, direction, push};
use crate::decode::Decoder;
use crate::decode::json_lines::LineDrops;

/// `google.protobuf.Timestamp`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Timestamp {
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    pub fn from_micros(us: i64) -> Self {
        Timestamp {
            seconds: us.div_euclid(1_000_000),
            nanos: (us.rem_euclid(1_000_000) * 1000) as i32,
        }
    }

    pub fn as_micros(&self) -> i64 {
        self.seconds * 1_000_000 + (self.nanos as i64) / 1000
    }
}

/// `google.protobuf.BoolValue`.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct BoolValue {
    #[prost(bool, tag = "1")]
    pub value: bool,
}

/// A message whose content is not read (which of a oneof's members is set is what counts).
#[derive(Clone, Copy, PartialEq, Eq, Message)]
pub struct Present {}

#[derive(Clone, PartialEq, Message)]
pub struct GetFlowsRequest {
    #[prost(uint64, tag = "1")]
    pub number: u64,
    #[prost(bool, tag = "3")]
    pub follow: bool,
    #[prost(message, optional, tag = "7")]
    pub since: Option<Timestamp>,
    #[prost(message, optional, tag = "8")]
    pub until: Option<Timestamp>,
    #[prost(bool, tag = "9")]
    pub first: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct GetFlowsResponse {
    #[prost(oneof = "Response", tags = "1, 3")]
    pub response: Option<Response>,
    #[prost(string, tag = "1000")]
    pub node_name: String,
    #[prost(message, optional, tag = "1001")]
    pub time: Option<Timestamp>,
}

/// What a `GetFlowsResponse` carries (`node_status`, tag 2, is skipped: not a flow).
// One response is decoded at a time: the size difference costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Response {
    #[prost(message, tag = "1")]
    Flow(Flow),
    #[prost(message, tag = "3")]
    LostEvents(LostEvent),
}

#[derive(Clone, PartialEq, Message)]
pub struct LostEvent {
    #[prost(int32, tag = "1")]
    pub source: i32,
    #[prost(uint64, tag = "2")]
    pub num_events_lost: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Flow {
    #[prost(message, optional, tag = "1")]
    pub time: Option<Timestamp>,
    #[prost(int32, tag = "2")]
    pub verdict: i32,
    #[prost(message, optional, tag = "5")]
    pub ip: Option<Ip>,
    #[prost(message, optional, tag = "6")]
    pub l4: Option<Layer4>,
    #[prost(message, optional, tag = "8")]
    pub source: Option<Endpoint>,
    #[prost(message, optional, tag = "9")]
    pub destination: Option<Endpoint>,
    #[prost(string, tag = "11")]
    pub node_name: String,
    #[prost(message, optional, tag = "15")]
    pub l7: Option<Layer7>,
    /// Deprecated for `is_reply`.
    #[prost(bool, tag = "16")]
    pub reply: bool,
    #[prost(int32, tag = "22")]
    pub traffic_direction: i32,
    #[prost(int32, tag = "25")]
    pub drop_reason_desc: i32,
    #[prost(message, optional, tag = "26")]
    pub is_reply: Option<BoolValue>,
    #[prost(message, optional, tag = "28")]
    pub interface: Option<NetworkInterface>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Ip {
    #[prost(string, tag = "1")]
    pub source: String,
    #[prost(string, tag = "2")]
    pub destination: String,
    #[prost(int32, tag = "3")]
    pub ip_version: i32,
    #[prost(string, tag = "5")]
    pub source_xlated: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Layer4 {
    #[prost(oneof = "Protocol", tags = "1, 2, 3, 4, 5")]
    pub protocol: Option<Protocol>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Protocol {
    #[prost(message, tag = "1")]
    Tcp(Tcp),
    #[prost(message, tag = "2")]
    Udp(Ports),
    #[prost(message, tag = "3")]
    Icmpv4(Icmp),
    #[prost(message, tag = "4")]
    Icmpv6(Icmp),
    #[prost(message, tag = "5")]
    Sctp(Ports),
}

#[derive(Clone, PartialEq, Message)]
pub struct Tcp {
    #[prost(uint32, tag = "1")]
    pub source_port: u32,
    #[prost(uint32, tag = "2")]
    pub destination_port: u32,
    #[prost(message, optional, tag = "3")]
    pub flags: Option<TcpFlags>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Ports {
    #[prost(uint32, tag = "1")]
    pub source_port: u32,
    #[prost(uint32, tag = "2")]
    pub destination_port: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct Icmp {
    #[prost(uint32, tag = "1")]
    pub r#type: u32,
    #[prost(uint32, tag = "2")]
    pub code: u32,
}

/// FIN..CWR at tags 1..8 (NS, 9, has no place in NetFlow's eight bits).
#[derive(Clone, PartialEq, Message)]
pub struct TcpFlags {
    #[prost(bool, tag = "1")]
    pub fin: bool,
    #[prost(bool, tag = "2")]
    pub syn: bool,
    #[prost(bool, tag = "3")]
    pub rst: bool,
    #[prost(bool, tag = "4")]
    pub psh: bool,
    #[prost(bool, tag = "5")]
    pub ack: bool,
    #[prost(bool, tag = "6")]
    pub urg: bool,
    #[prost(bool, tag = "7")]
    pub ece: bool,
    #[prost(bool, tag = "8")]
    pub cwr: bool,
}

impl TcpFlags {
    pub fn bits(&self) -> u8 {
        super::tcp_flag_bits([
            self.fin, self.syn, self.rst, self.psh, self.ack, self.urg, self.ece, self.cwr,
        ])
    }
}

#[derive(Clone, PartialEq, Message)]
pub struct Endpoint {
    #[prost(uint32, tag = "1")]
    pub id: u32,
    #[prost(uint32, tag = "2")]
    pub identity: u32,
    #[prost(string, tag = "3")]
    pub namespace: String,
    #[prost(string, repeated, tag = "4")]
    pub labels: Vec<String>,
    #[prost(string, tag = "5")]
    pub pod_name: String,
    #[prost(message, repeated, tag = "6")]
    pub workloads: Vec<Workload>,
    #[prost(string, tag = "7")]
    pub cluster_name: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Workload {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(string, tag = "2")]
    pub kind: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Layer7 {
    #[prost(int32, tag = "1")]
    pub r#type: i32,
    #[prost(oneof = "Record", tags = "100, 101, 102")]
    pub record: Option<Record>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Record {
    #[prost(message, tag = "100")]
    Dns(Present),
    #[prost(message, tag = "101")]
    Http(Present),
    #[prost(message, tag = "102")]
    Kafka(Present),
}

#[derive(Clone, PartialEq, Message)]
pub struct NetworkInterface {
    #[prost(uint32, tag = "1")]
    pub index: u32,
    #[prost(string, tag = "2")]
    pub name: String,
}

/// `flow.Verdict` by number.
pub const VERDICTS: [&str; 8] = [
    "VERDICT_UNKNOWN",
    "FORWARDED",
    "DROPPED",
    "ERROR",
    "AUDIT",
    "REDIRECTED",
    "TRACED",
    "TRANSLATED",
];

/// `flow.L7FlowType` by number.
pub const L7_TYPES: [&str; 4] = ["UNKNOWN_L7_TYPE", "REQUEST", "RESPONSE", "SAMPLE"];

/// `flow.TrafficDirection` by number.
pub const DIRECTIONS: [&str; 3] = ["TRAFFIC_DIRECTION_UNKNOWN", "INGRESS", "EGRESS"];

/// `flow.DropReason` names from 130 on (the numbers Cilium's datapath uses; 159 unused).
const DROP_REASONS: [&str; 76] = [
    "INVALID_SOURCE_MAC",
    "INVALID_DESTINATION_MAC",
    "INVALID_SOURCE_IP",
    "POLICY_DENIED",
    "INVALID_PACKET_DROPPED",
    "CT_TRUNCATED_OR_INVALID_HEADER",
    "CT_MISSING_TCP_ACK_FLAG",
    "CT_UNKNOWN_L4_PROTOCOL",
    "CT_CANNOT_CREATE_ENTRY_FROM_PACKET",
    "UNSUPPORTED_L3_PROTOCOL",
    "MISSED_TAIL_CALL",
    "ERROR_WRITING_TO_PACKET",
    "UNKNOWN_L4_PROTOCOL",
    "UNKNOWN_ICMPV4_CODE",
    "UNKNOWN_ICMPV4_TYPE",
    "UNKNOWN_ICMPV6_CODE",
    "UNKNOWN_ICMPV6_TYPE",
    "ERROR_RETRIEVING_TUNNEL_KEY",
    "ERROR_RETRIEVING_TUNNEL_OPTIONS",
    "INVALID_GENEVE_OPTION",
    "UNKNOWN_L3_TARGET_ADDRESS",
    "STALE_OR_UNROUTABLE_IP",
    "NO_MATCHING_LOCAL_CONTAINER_FOUND",
    "ERROR_WHILE_CORRECTING_L3_CHECKSUM",
    "ERROR_WHILE_CORRECTING_L4_CHECKSUM",
    "CT_MAP_INSERTION_FAILED",
    "INVALID_IPV6_EXTENSION_HEADER",
    "IP_FRAGMENTATION_NOT_SUPPORTED",
    "SERVICE_BACKEND_NOT_FOUND",
    "",
    "NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT",
    "FAILED_TO_INSERT_INTO_PROXYMAP",
    "REACHED_EDT_RATE_LIMITING_DROP_HORIZON",
    "UNKNOWN_CONNECTION_TRACKING_STATE",
    "LOCAL_HOST_IS_UNREACHABLE",
    "NO_CONFIGURATION_AVAILABLE_TO_PERFORM_POLICY_DECISION",
    "UNSUPPORTED_L2_PROTOCOL",
    "NO_MAPPING_FOR_NAT_MASQUERADE",
    "UNSUPPORTED_PROTOCOL_FOR_NAT_MASQUERADE",
    "FIB_LOOKUP_FAILED",
    "ENCAPSULATION_TRAFFIC_IS_PROHIBITED",
    "INVALID_IDENTITY",
    "UNKNOWN_SENDER",
    "NAT_NOT_NEEDED",
    "IS_A_CLUSTERIP",
    "FIRST_LOGICAL_DATAGRAM_FRAGMENT_NOT_FOUND",
    "FORBIDDEN_ICMPV6_MESSAGE",
    "DENIED_BY_LB_SRC_RANGE_CHECK",
    "SOCKET_LOOKUP_FAILED",
    "SOCKET_ASSIGN_FAILED",
    "PROXY_REDIRECTION_NOT_SUPPORTED_FOR_PROTOCOL",
    "POLICY_DENY",
    "VLAN_FILTERED",
    "INVALID_VNI",
    "INVALID_TC_BUFFER",
    "NO_SID",
    "MISSING_SRV6_STATE",
    "NAT46",
    "NAT64",
    "AUTH_REQUIRED",
    "CT_NO_MAP_FOUND",
    "SNAT_NO_MAP_FOUND",
    "INVALID_CLUSTER_ID",
    "UNSUPPORTED_PROTOCOL_FOR_DSR_ENCAP",
    "NO_EGRESS_GATEWAY",
    "UNENCRYPTED_TRAFFIC",
    "TTL_EXCEEDED",
    "NO_NODE_ID",
    "DROP_RATE_LIMITED",
    "IGMP_HANDLED",
    "IGMP_SUBSCRIBED",
    "MULTICAST_HANDLED",
    "DROP_HOST_NOT_READY",
    "DROP_EP_NOT_READY",
    "DROP_NO_EGRESS_IP",
    "DROP_PUNT_PROXY",
];

/// The name protojson gives a drop reason (and the JSON lines carry): unknown numbers (a
/// newer Cilium) stay null rather than a guess.
pub fn drop_reason_name(number: i32) -> Option<&'static str> {
    let i = usize::try_from(number.checked_sub(130)?).ok()?;
    DROP_REASONS.get(i).copied().filter(|n| !n.is_empty())
}

/// The number of a drop reason's name (for exporters and tests).
pub fn drop_reason_number(name: &str) -> Option<i32> {
    DROP_REASONS
        .iter()
        .position(|n| *n == name)
        .map(|i| i as i32 + 130)
}

fn named(table: &[&'static str], number: i32) -> Option<&'static str> {
    // 0 is each enum's "unknown": not something the exporter said.
    table
        .get(usize::try_from(number).ok()?)
        .copied()
        .filter(|_| number != 0)
}

fn some(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl Endpoint {
    fn view(&self) -> EndpointView<'_, String> {
        EndpointView {
            identity: (self.identity != 0).then_some(self.identity as i64),
            cluster_name: some(&self.cluster_name),
            namespace: some(&self.namespace),
            pod_name: some(&self.pod_name),
            labels: &self.labels,
            workload: self
                .workloads
                .first()
                .map(|w| (some(&w.kind), some(&w.name))),
        }
    }
}

/// Decodes encoded `GetFlowsResponse` messages into flows with their details.
pub struct HubbleProtoDecoder {
    drops: LineDrops,
    labels: [String; 2],
    lost: u64,
}

impl HubbleProtoDecoder {
    /// Drops, and the events Hubble itself reports lost, are counted on `component`.
    pub fn new(component: Component) -> Self {
        HubbleProtoDecoder {
            drops: LineDrops::new(component),
            labels: Default::default(),
            lost: 0,
        }
    }

    fn publish(&mut self) {
        self.drops.publish();
        if self.lost > 0 {
            self.drops.component().dropped(self.lost, "lost_by_hubble");
            self.lost = 0;
        }
    }
}

impl Decoder for HubbleProtoDecoder {
    fn name(&self) -> &'static str {
        "hubble_grpc"
    }

    fn decode(
        &mut self,
        from: SocketAddr,
        message: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) {
        let response = match GetFlowsResponse::decode(message) {
            Ok(r) => r,
            Err(_) => return self.drops.drop("malformed_protobuf"),
        };
        let flow = match response.response {
            Some(Response::Flow(f)) => f,
            Some(Response::LostEvents(l)) => {
                // Hubble's own loss (its ring buffer overran): flows that will never come.
                self.lost += l.num_events_lost;
                return;
            }
            None => return self.drops.drop("not_a_flow"),
        };
        let Some(ip) = &flow.ip else {
            return self.drops.drop("no_ip_layer");
        };
        let (Ok(src), Ok(dst)) = (ip.source.parse(), ip.destination.parse()) else {
            return self.drops.drop("bad_address");
        };
        let Some(at) = flow.time.or(response.time).map(|t| t.as_micros()) else {
            return self.drops.drop("bad_time");
        };
        let port = |p: u32| p.min(u16::MAX as u32) as u16;
        let icmp = |i: &Icmp| (((i.r#type & 0xff) << 8) | (i.code & 0xff)) as u16;
        let l4 = match flow.l4.as_ref().and_then(|l| l.protocol.as_ref()) {
            Some(Protocol::Tcp(t)) => (
                6,
                port(t.source_port),
                port(t.destination_port),
                t.flags.as_ref().map_or(0, TcpFlags::bits),
            ),
            Some(Protocol::Udp(p)) => (17, port(p.source_port), port(p.destination_port), 0),
            Some(Protocol::Sctp(p)) => (132, port(p.source_port), port(p.destination_port), 0),
            Some(Protocol::Icmpv4(i)) => (1, 0, icmp(i), 0),
            Some(Protocol::Icmpv6(i)) => (58, 0, icmp(i), 0),
            None => (0, 0, 0, 0),
        };
        let node = some(&flow.node_name).or(some(&response.node_name));
        let l7 = flow.l7.as_ref();
        let view = FlowView {
            at_us: at,
            src,
            dst,
            src_xlated: some(&ip.source_xlated),
            l4,
            verdict: named(&VERDICTS, flow.verdict),
            drop_reason: drop_reason_name(flow.drop_reason_desc),
            direction: named(&DIRECTIONS, flow.traffic_direction).and_then(direction),
            // proto3 cannot tell a false `reply` from an absent one: only true is news.
            is_reply: flow
                .is_reply
                .map(|b| b.value)
                .or(flow.reply.then_some(true)),
            l7_type: l7.and_then(|l| named(&L7_TYPES, l.r#type)),
            l7_protocol: l7.and_then(|l| l.record.as_ref()).map(|r| match r {
                Record::Dns(_) => "dns",
                Record::Http(_) => "http",
                Record::Kafka(_) => "kafka",
            }),
            node,
            interface: flow.interface.as_ref().and_then(|i| some(&i.name)),
            source: flow
                .source
                .as_ref()
                .map_or_else(EndpointView::empty, Endpoint::view),
            destination: flow
                .destination
                .as_ref()
                .map_or_else(EndpointView::empty, Endpoint::view),
        };
        push(&view, from, received_at_us, &mut self.labels, out);
    }

    fn housekeeping(&mut self) {
        self.publish();
    }

    fn finish(&mut self) -> Result<(), crate::decode::DecoderError> {
        self.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::flow_details::Text;
    use hawking_schemas::telemetry::{ComponentKind, Telemetry};

    #[test]
    fn drop_reasons_read_by_the_numbers_cilium_uses() {
        assert_eq!(drop_reason_name(133), Some("POLICY_DENIED"));
        assert_eq!(drop_reason_name(132), Some("INVALID_SOURCE_IP"));
        assert_eq!(
            drop_reason_name(160),
            Some("NO_TUNNEL_OR_ENCAPSULATION_ENDPOINT")
        );
        assert_eq!(drop_reason_name(205), Some("DROP_PUNT_PROXY"));
        assert_eq!(drop_reason_name(159), None);
        assert_eq!(drop_reason_name(0), None);
        assert_eq!(drop_reason_name(999), None);
        assert_eq!(drop_reason_number("POLICY_DENIED"), Some(133));
    }

    #[test]
    fn an_encoded_response_decodes_like_its_json_line() {
        let response = GetFlowsResponse {
            response: Some(Response::Flow(Flow {
                time: Some(Timestamp::from_micros(1_692_619_938_510_175)),
                verdict: 2,
                ip: Some(Ip {
                    source: "10.244.1.60".into(),
                    destination: "10.244.1.5".into(),
                    ip_version: 1,
                    source_xlated: String::new(),
                }),
                l4: Some(Layer4 {
                    protocol: Some(Protocol::Tcp(Tcp {
                        source_port: 44916,
                        destination_port: 80,
                        flags: Some(TcpFlags {
                            syn: true,
                            ..Default::default()
                        }),
                    })),
                }),
                destination: Some(Endpoint {
                    namespace: "default".into(),
                    pod_name: "deathstar-1".into(),
                    ..Default::default()
                }),
                node_name: "kind-kind/kind-worker".into(),
                drop_reason_desc: 133,
                traffic_direction: 1,
                ..Default::default()
            })),
            node_name: "kind-kind/kind-worker".into(),
            time: None,
        };
        let t = Telemetry::detached();
        let mut d = HubbleProtoDecoder::new(t.component(ComponentKind::Source, "grpc"));
        let mut out = SourceBatch::default();
        let from: SocketAddr = "127.0.0.1:0".parse().unwrap();
        d.decode(from, &response.encode_to_vec(), 1, &mut out);
        d.decode(from, b"\xff\xff garbage", 1, &mut out);
        assert_eq!(out.flows.len(), 1);
        let r = out.flows.record(0);
        assert_eq!(
            (r.flow_start, r.protocol, r.tcp_flags),
            (1_692_619_938_510_175, 6, 2)
        );
        let details = out.flows.details.as_ref().unwrap();
        assert_eq!(details.get_text(Text::Verdict, 0), Some("DROPPED"));
        assert_eq!(details.get_text(Text::DropReason, 0), Some("POLICY_DENIED"));
        assert_eq!(details.get_text(Text::Direction, 0), Some("ingress"));
        assert_eq!(
            details.get_text(Text::DstReportedName, 0),
            Some("deathstar-1")
        );
        assert_eq!(details.get_text(Text::SrcReportedKind, 0), None);
        assert_eq!(details.is_reply[0], None);
    }
}
