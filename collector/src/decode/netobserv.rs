//! NetObserv flow records as JSON lines, as flowlogs-pipeline writes them (its stdout and
//! file writers, and the records behind its Loki streams): the three generations seen in
//! real clusters (`Interface` → `Interfaces[]`, `TcpDrop*` → `PktDrop*`, DNS request and
//! response times → `DnsLatencyMs`) and the legacy goflow-kube records (`SrcPod`,
//! seconds-based times). Fields not used here are skipped.

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};

use hawking_schemas::flow::{FlowRecord, SourceKind};
use hawking_schemas::flow_details::{DetailRow, Int, Text};
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use serde::Deserialize;

use super::Decoder;
use super::json_lines::{Endpoint, LineDrops, lenient_i64, push_flow};

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Record<'a> {
    #[serde(borrow)]
    src_addr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst_addr: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    src_port: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    dst_port: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    proto: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    bytes: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    packets: Option<i64>,
    /// TCP flags, with NetObserv's own bits above the eighth (SYN+ACK, FIN+ACK, RST+ACK).
    #[serde(default, deserialize_with = "lenient_i64")]
    flags: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    icmp_type: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    icmp_code: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_start_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_end_ms: Option<i64>,
    /// Legacy records: seconds (0 when unset).
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_start: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_end: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_received: Option<i64>,
    /// 0 ingress, 1 egress, 2 inner (between two interfaces of the node).
    #[serde(default, deserialize_with = "lenient_i64")]
    flow_direction: Option<i64>,
    #[serde(borrow)]
    interface: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    interfaces: Vec<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64", rename = "InIf")]
    in_if: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64", rename = "OutIf")]
    out_if: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    sampling: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    sampling_rate: Option<i64>,
    #[serde(borrow, rename = "AgentIP")]
    agent_ip: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "K8S_ClusterName")]
    cluster_name: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    dns_latency_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    dns_request_time_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    dns_response_time_ms: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_rtt_ns: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pkt_drop_packets: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    pkt_drop_bytes: Option<i64>,
    #[serde(borrow)]
    pkt_drop_latest_drop_cause: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    tcp_drop_packets: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    tcp_drop_bytes: Option<i64>,
    #[serde(borrow)]
    tcp_drop_latest_drop_cause: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "SrcK8S_Namespace")]
    src_namespace: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "SrcK8S_Name")]
    src_name: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "SrcK8S_Type")]
    src_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "SrcK8S_OwnerName")]
    src_owner: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "SrcK8S_OwnerType")]
    src_owner_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "DstK8S_Namespace")]
    dst_namespace: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "DstK8S_Name")]
    dst_name: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "DstK8S_Type")]
    dst_type: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "DstK8S_OwnerName")]
    dst_owner: Option<Cow<'a, str>>,
    #[serde(borrow, rename = "DstK8S_OwnerType")]
    dst_owner_type: Option<Cow<'a, str>>,
    /// Legacy goflow-kube: the pod and its workload's kind.
    #[serde(borrow)]
    src_pod: Option<Cow<'a, str>>,
    #[serde(borrow)]
    src_workload_kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst_pod: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst_workload_kind: Option<Cow<'a, str>>,
    /// Legacy goflow-kube: TCP flags.
    #[serde(default, deserialize_with = "lenient_i64", rename = "TCPFlags")]
    tcp_flags_legacy: Option<i64>,
}

/// `Pod` → `pod`, as the other exporters and the history name kinds.
fn kind_of(k8s_type: Option<&str>) -> Option<&'static str> {
    match k8s_type? {
        "Pod" => Some("pod"),
        "Node" => Some("node"),
        "Service" => Some("service"),
        _ => None,
    }
}

fn non_empty<'s>(v: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    v.as_deref().filter(|s| !s.is_empty())
}

/// Decodes NetObserv flow records into flows with their details.
pub struct NetObservDecoder {
    drops: LineDrops,
    interfaces: String,
}

impl NetObservDecoder {
    /// Drops are counted on `component` (the source's).
    pub fn new(component: Component) -> Self {
        NetObservDecoder {
            drops: LineDrops::new(component),
            interfaces: String::new(),
        }
    }
}

impl Decoder for NetObservDecoder {
    fn name(&self) -> &'static str {
        "netobserv"
    }

    fn decode(
        &mut self,
        from: SocketAddr,
        message: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) {
        let Some(text) = self.drops.line_text(message) else {
            return;
        };
        let r: Record<'_> = match serde_json::from_str(text) {
            Ok(r) => r,
            Err(e) => return self.drops.malformed(&e),
        };
        let parse = |a: &Option<Cow<'_, str>>| a.as_deref().and_then(|a| a.parse::<IpAddr>().ok());
        let (Some(src), Some(dst)) = (parse(&r.src_addr), parse(&r.dst_addr)) else {
            return self.drops.drop("bad_address");
        };
        let positive = |v: Option<i64>| v.filter(|v| *v > 0);
        // The flow's own times, else (legacy records leave them 0) when it was received.
        let start = positive(r.time_flow_start_ms)
            .map(|ms| ms * 1000)
            .or(positive(r.time_flow_start).map(|s| s * 1_000_000))
            .or(positive(r.time_received).map(|s| s * 1_000_000));
        let end = positive(r.time_flow_end_ms)
            .map(|ms| ms * 1000)
            .or(positive(r.time_flow_end).map(|s| s * 1_000_000));
        let Some(start) = start else {
            return self.drops.drop("bad_time");
        };
        let end = end.unwrap_or(start).max(start);
        // Records of drops alone carry no forwarded counts: those stay null, not 0.
        let counted = r.bytes.is_some() && r.packets.is_some();
        let (bytes, packets) = (r.bytes.unwrap_or(0), r.packets.unwrap_or(0));
        let sampling = positive(r.sampling)
            .or(positive(r.sampling_rate))
            .unwrap_or(1)
            .min(u32::MAX as i64) as u64;
        let protocol = r.proto.unwrap_or(0).clamp(0, 255) as u8;
        let port = |v: Option<i64>| v.unwrap_or(0).clamp(0, 65535) as u16;
        let mut record = FlowRecord {
            flow_start: start,
            flow_end: end,
            src_ip: ip_to_u128(src),
            dst_ip: ip_to_u128(dst),
            src_port: port(r.src_port),
            dst_port: port(r.dst_port),
            protocol,
            tcp_flags: (r.flags.or(r.tcp_flags_legacy).unwrap_or(0) & 0xff) as u8,
            bytes: (bytes.max(0) as u64).saturating_mul(sampling),
            packets: (packets.max(0) as u64).saturating_mul(sampling),
            sampling_rate: sampling as u32,
            in_if: r.in_if.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
            out_if: r.out_if.unwrap_or(0).clamp(0, u32::MAX as i64) as u32,
        };
        if matches!(protocol, 1 | 58) {
            record.src_port = 0;
            record.dst_port = ((port(r.icmp_type) & 0xff) << 8) | (port(r.icmp_code) & 0xff);
        }
        self.interfaces.clear();
        for (i, name) in r
            .interfaces
            .iter()
            .map(|c| c.as_ref())
            .chain(r.interface.as_deref())
            .enumerate()
        {
            if i > 0 {
                self.interfaces.push(',');
            }
            self.interfaces.push_str(name);
        }
        let mut row = DetailRow {
            counted,
            ..DetailRow::default()
        };
        row.set(Text::Observer, non_empty(&r.agent_ip));
        row.set(Text::ReportedCluster, non_empty(&r.cluster_name));
        row.set(
            Text::Direction,
            match r.flow_direction {
                Some(0) => Some("ingress"),
                Some(1) => Some("egress"),
                Some(2) => Some("inner"),
                _ => None,
            },
        );
        row.set(
            Text::Interfaces,
            Some(self.interfaces.as_str()).filter(|i| !i.is_empty()),
        );
        let (drop_packets, drop_bytes, drop_cause) = if r.pkt_drop_packets.is_some() {
            (
                r.pkt_drop_packets,
                r.pkt_drop_bytes,
                &r.pkt_drop_latest_drop_cause,
            )
        } else {
            (
                r.tcp_drop_packets,
                r.tcp_drop_bytes,
                &r.tcp_drop_latest_drop_cause,
            )
        };
        row.set_int(Int::DroppedPackets, drop_packets);
        row.set_int(Int::DroppedBytes, drop_bytes);
        // A cause is news only when something was dropped (records carry the last one seen).
        if drop_packets.is_some_and(|p| p > 0) {
            row.set(Text::DropReason, non_empty(drop_cause));
        }
        row.set_int(
            Int::DnsLatencyMs,
            r.dns_latency_ms.or(
                match (
                    positive(r.dns_request_time_ms),
                    positive(r.dns_response_time_ms),
                ) {
                    (Some(q), Some(a)) if a >= q => Some(a - q),
                    _ => None,
                },
            ),
        );
        row.set_int(Int::RttNs, positive(r.time_flow_rtt_ns));
        let src = Endpoint {
            kind: kind_of(r.src_type.as_deref()).or(non_empty(&r.src_pod).map(|_| "pod")),
            namespace: non_empty(&r.src_namespace),
            name: non_empty(&r.src_name).or(non_empty(&r.src_pod)),
            workload_kind: non_empty(&r.src_owner_type).or(non_empty(&r.src_workload_kind)),
            workload: non_empty(&r.src_owner),
            identity: None,
        };
        let dst = Endpoint {
            kind: kind_of(r.dst_type.as_deref()).or(non_empty(&r.dst_pod).map(|_| "pod")),
            namespace: non_empty(&r.dst_namespace),
            name: non_empty(&r.dst_name).or(non_empty(&r.dst_pod)),
            workload_kind: non_empty(&r.dst_owner_type).or(non_empty(&r.dst_workload_kind)),
            workload: non_empty(&r.dst_owner),
            identity: None,
        };
        src.fill(&mut row, true, None);
        dst.fill(&mut row, false, None);
        push_flow(
            out,
            from,
            received_at_us,
            SourceKind::NetObserv,
            &row,
            &record,
        );
    }

    fn housekeeping(&mut self) {
        self.drops.publish();
    }

    fn finish(&mut self) -> Result<(), super::DecoderError> {
        self.drops.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::telemetry::{ComponentKind, Telemetry};

    fn decode(lines: &[&str]) -> SourceBatch {
        let t = Telemetry::detached();
        crate::decode::json_lines::decode_lines(
            &mut NetObservDecoder::new(t.component(ComponentKind::Source, "netobserv")),
            lines,
        )
    }

    #[test]
    fn each_generation_maps_drops_dns_and_interfaces() {
        let v2024 = r#"{"SrcAddr":"10.128.0.7","DstAddr":"172.20.0.1","SrcPort":48974,"DstPort":6443,"Proto":6,"Bytes":132,"Packets":2,"Flags":528,"TimeFlowStartMs":1708011866459,"TimeFlowEndMs":1708011867121,"Interfaces":["ovn-k8s-mp0","eth0"],"PktDropPackets":1,"PktDropBytes":32,"PktDropLatestDropCause":"SKB_DROP_REASON_TCP_INVALID_SEQUENCE","DnsLatencyMs":3,"TimeFlowRttNs":4047000,"AgentIP":"10.0.1.7","FlowDirection":"1","SrcK8S_Namespace":"openshift-service-ca-operator","SrcK8S_Name":"service-ca-operator-575d5cf89-s8pjm","SrcK8S_Type":"Pod","SrcK8S_OwnerName":"service-ca-operator","SrcK8S_OwnerType":"Deployment"}"#;
        let v2023 = r#"{"SrcAddr":"10.128.2.8","DstAddr":"10.130.0.80","SrcPort":1,"DstPort":2,"Proto":6,"Bytes":66,"Packets":1,"TimeFlowStartMs":1687335843115,"TimeFlowEndMs":1687335843115,"Interface":"genev_sys_6081","TcpDropPackets":0,"TcpDropLatestDropCause":"SKB_DROP_UNKNOWN_CAUSE","DnsRequestTimeMs":100,"DnsResponseTimeMs":104}"#;
        let legacy = r#"{"SrcAddr":"10.130.2.13","DstAddr":"10.130.2.2","SrcPort":3100,"DstPort":36936,"Proto":6,"Bytes":20800,"Packets":400,"TimeFlowStart":0,"TimeFlowEnd":0,"TimeReceived":1637501832,"SamplingRate":0,"InIf":18,"SrcPod":"observatorium-loki-ingester-0","SrcWorkloadKind":"StatefulSet"}"#;
        let out = decode(&[v2024, v2023, legacy, r#"{"SrcAddr":"x"}"#]);
        let f = &out.flows;
        assert_eq!(f.len(), 3);
        let d = f.details.as_ref().unwrap();
        let r = f.record(0);
        assert_eq!(
            (r.flow_start, r.flow_end),
            (1_708_011_866_459_000, 1_708_011_867_121_000)
        );
        assert_eq!((r.bytes, r.packets, r.tcp_flags), (132, 2, 16));
        assert_eq!(d.get_text(Text::Interfaces, 0), Some("ovn-k8s-mp0,eth0"));
        assert_eq!(d.get_text(Text::Direction, 0), Some("egress"));
        assert_eq!(
            d.get_text(Text::DropReason, 0),
            Some("SKB_DROP_REASON_TCP_INVALID_SEQUENCE")
        );
        assert_eq!(d.get_int(Int::DroppedBytes, 0), Some(32));
        assert_eq!(d.get_int(Int::DnsLatencyMs, 0), Some(3));
        assert_eq!(d.get_int(Int::RttNs, 0), Some(4_047_000));
        assert_eq!(d.get_text(Text::SrcReportedKind, 0), Some("pod"));
        assert_eq!(
            d.get_text(Text::SrcReportedWorkload, 0),
            Some("service-ca-operator")
        );
        assert_eq!(d.get_text(Text::DstReportedKind, 0), None);
        // 2023: one interface, TcpDrop* with nothing dropped names no cause, DNS times.
        assert_eq!(d.get_text(Text::Interfaces, 1), Some("genev_sys_6081"));
        assert_eq!(d.get_text(Text::DropReason, 1), None);
        assert_eq!(d.get_int(Int::DroppedPackets, 1), Some(0));
        assert_eq!(d.get_int(Int::DnsLatencyMs, 1), Some(4));
        // Legacy: no flow times, so the time received; the pod and its workload kind.
        let r = f.record(2);
        assert_eq!(
            (r.flow_start, r.flow_end),
            (1_637_501_832_000_000, 1_637_501_832_000_000)
        );
        assert_eq!((r.sampling_rate, r.in_if), (1, 18));
        assert_eq!(
            d.get_text(Text::SrcReportedName, 2),
            Some("observatorium-loki-ingester-0")
        );
        assert_eq!(
            d.get_text(Text::SrcReportedWorkloadKind, 2),
            Some("StatefulSet")
        );
        assert!(d.counted.iter().all(|c| *c));
    }
}
