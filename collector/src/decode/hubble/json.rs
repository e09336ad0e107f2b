//! Hubble flows as JSON lines: `hubble observe -o json`/`-o jsonpb` and Hubble's
//! flow exporter, in both shapes they come in (the `GetFlowsResponse` wrapper
//! `{"flow":{…},"node_name":…,"time":…}` and the older bare `Flow` object), with the
//! deprecated `reply` or the newer `is_reply`. Written from Hubble's public `flow.proto` as
//! protojson renders it; fields it does not use are skipped, so new Hubble versions decode.

use std::borrow::Cow;
use std::net::SocketAddr;

use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use serde::Deserialize;

use super::{EndpointView, FlowView, direction, push};
use crate::decode::Decoder;
use crate::decode::json_lines::{LineDrops, parse_rfc3339_us};

/// One line: a `GetFlowsResponse` (which may carry a non-flow event instead) or a bare Flow.
#[derive(Deserialize)]
struct Line<'a> {
    #[serde(borrow)]
    flow: Option<Flow<'a>>,
    #[serde(borrow)]
    node_name: Option<Cow<'a, str>>,
    // The other events a GetFlowsResponse carries: not flows, skipped (counted).
    agent_event: Option<serde::de::IgnoredAny>,
    lost_events: Option<serde::de::IgnoredAny>,
    debug_event: Option<serde::de::IgnoredAny>,
    node_status: Option<serde::de::IgnoredAny>,
    /// The bare Flow shape: the flow's own fields at the top level.
    #[serde(flatten, borrow)]
    bare: Flow<'a>,
}

#[derive(Deserialize, Default)]
struct Flow<'a> {
    #[serde(borrow)]
    time: Option<Cow<'a, str>>,
    #[serde(borrow)]
    verdict: Option<Cow<'a, str>>,
    #[serde(rename = "IP")]
    ip: Option<Ip<'a>>,
    l4: Option<Layer4>,
    #[serde(borrow)]
    source: Option<HubbleEndpoint<'a>>,
    #[serde(borrow)]
    destination: Option<HubbleEndpoint<'a>>,
    #[serde(borrow)]
    node_name: Option<Cow<'a, str>>,
    reply: Option<bool>,
    is_reply: Option<bool>,
    #[serde(borrow)]
    traffic_direction: Option<Cow<'a, str>>,
    #[serde(borrow)]
    drop_reason_desc: Option<Cow<'a, str>>,
    #[serde(borrow)]
    l7: Option<Layer7<'a>>,
    #[serde(borrow)]
    interface: Option<Interface<'a>>,
}

#[derive(Deserialize)]
struct Ip<'a> {
    #[serde(borrow)]
    source: Option<Cow<'a, str>>,
    #[serde(borrow)]
    destination: Option<Cow<'a, str>>,
    #[serde(borrow)]
    source_xlated: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Layer4 {
    #[serde(rename = "TCP")]
    tcp: Option<Ports>,
    #[serde(rename = "UDP")]
    udp: Option<Ports>,
    #[serde(rename = "SCTP")]
    sctp: Option<Ports>,
    #[serde(rename = "ICMPv4")]
    icmp4: Option<Icmp>,
    #[serde(rename = "ICMPv6")]
    icmp6: Option<Icmp>,
}

#[derive(Deserialize)]
struct Ports {
    #[serde(default)]
    source_port: u16,
    #[serde(default)]
    destination_port: u16,
    flags: Option<TcpFlags>,
}

/// Hubble names the flags a packet had; each is present only when set.
#[derive(Deserialize)]
#[allow(clippy::upper_case_acronyms)]
struct TcpFlags {
    #[serde(default, rename = "FIN")]
    fin: bool,
    #[serde(default, rename = "SYN")]
    syn: bool,
    #[serde(default, rename = "RST")]
    rst: bool,
    #[serde(default, rename = "PSH")]
    psh: bool,
    #[serde(default, rename = "ACK")]
    ack: bool,
    #[serde(default, rename = "URG")]
    urg: bool,
    #[serde(default, rename = "ECE")]
    ece: bool,
    #[serde(default, rename = "CWR")]
    cwr: bool,
}

impl TcpFlags {
    fn bits(&self) -> u8 {
        super::tcp_flag_bits([
            self.fin, self.syn, self.rst, self.psh, self.ack, self.urg, self.ece, self.cwr,
        ])
    }
}

#[derive(Deserialize)]
struct Icmp {
    #[serde(rename = "type", default)]
    kind: u8,
    #[serde(default)]
    code: u8,
}

#[derive(Deserialize)]
struct HubbleEndpoint<'a> {
    identity: Option<i64>,
    #[serde(borrow)]
    cluster_name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    namespace: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    labels: Vec<Cow<'a, str>>,
    #[serde(borrow)]
    pod_name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    workloads: Vec<Workload<'a>>,
}

#[derive(Deserialize)]
struct Workload<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
}

#[derive(Deserialize)]
struct Layer7<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    dns: Option<serde::de::IgnoredAny>,
    http: Option<serde::de::IgnoredAny>,
    kafka: Option<serde::de::IgnoredAny>,
}

#[derive(Deserialize)]
struct Interface<'a> {
    #[serde(borrow)]
    name: Option<Cow<'a, str>>,
}

impl<'a> HubbleEndpoint<'a> {
    fn view(&self) -> EndpointView<'_, Cow<'a, str>> {
        EndpointView {
            identity: self.identity,
            cluster_name: self.cluster_name.as_deref(),
            namespace: self.namespace.as_deref(),
            pod_name: self.pod_name.as_deref(),
            labels: &self.labels,
            workload: self
                .workloads
                .first()
                .map(|w| (w.kind.as_deref(), w.name.as_deref())),
        }
    }
}

/// Decodes Hubble flow lines into flows with their details.
pub struct HubbleDecoder {
    drops: LineDrops,
    labels: [String; 2],
}

impl HubbleDecoder {
    /// Drops and skipped lines are counted on `component` (the source's).
    pub fn new(component: Component) -> Self {
        HubbleDecoder {
            drops: LineDrops::new(component),
            labels: Default::default(),
        }
    }
}

impl Decoder for HubbleDecoder {
    fn name(&self) -> &'static str {
        "hubble"
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
        let line: Line<'_> = match serde_json::from_str(text) {
            Ok(l) => l,
            Err(e) => return self.drops.malformed(&e),
        };
        let wrapper_node = line.node_name;
        let is_event = line.agent_event.is_some()
            || line.lost_events.is_some()
            || line.debug_event.is_some()
            || line.node_status.is_some();
        let flow = match line.flow {
            Some(f) => f,
            None if is_event => return self.drops.drop("not_a_flow"),
            None => line.bare,
        };
        let Some(ip) = &flow.ip else {
            // Hubble also reports L2 (ARP) events and L7 records without an IP layer.
            return self.drops.drop("no_ip_layer");
        };
        let (Some(src), Some(dst)) = (
            ip.source.as_deref().and_then(|s| s.parse().ok()),
            ip.destination.as_deref().and_then(|s| s.parse().ok()),
        ) else {
            return self.drops.drop("bad_address");
        };
        let Some(at) = flow.time.as_deref().and_then(parse_rfc3339_us) else {
            return self.drops.drop("bad_time");
        };
        let mut l4 = (0, 0, 0, 0);
        if let Some(layer) = &flow.l4 {
            let ports = [(6, &layer.tcp), (17, &layer.udp), (132, &layer.sctp)]
                .into_iter()
                .find_map(|(proto, p)| p.as_ref().map(|p| (proto, p)));
            let icmp = [(1, &layer.icmp4), (58, &layer.icmp6)]
                .into_iter()
                .find_map(|(proto, i)| i.as_ref().map(|i| (proto, i)));
            if let Some((proto, p)) = ports {
                let flags = p.flags.as_ref().map_or(0, TcpFlags::bits);
                l4 = (proto, p.source_port, p.destination_port, flags);
            } else if let Some((proto, i)) = icmp {
                l4 = (proto, 0, ((i.kind as u16) << 8) | i.code as u16, 0);
            }
        }
        let l7 = flow.l7.as_ref();
        let view = FlowView {
            at_us: at,
            src,
            dst,
            src_xlated: ip.source_xlated.as_deref(),
            l4,
            verdict: flow.verdict.as_deref(),
            drop_reason: flow.drop_reason_desc.as_deref(),
            direction: flow.traffic_direction.as_deref().and_then(direction),
            is_reply: flow.is_reply.or(flow.reply),
            l7_type: l7.and_then(|l| l.kind.as_deref()),
            l7_protocol: l7.and_then(|l| {
                [
                    (l.dns.is_some(), "dns"),
                    (l.http.is_some(), "http"),
                    (l.kafka.is_some(), "kafka"),
                ]
                .into_iter()
                .find_map(|(present, name)| present.then_some(name))
            }),
            node: flow.node_name.as_deref().or(wrapper_node.as_deref()),
            interface: flow.interface.as_ref().and_then(|i| i.name.as_deref()),
            source: flow
                .source
                .as_ref()
                .map_or_else(EndpointView::empty, HubbleEndpoint::view),
            destination: flow
                .destination
                .as_ref()
                .map_or_else(EndpointView::empty, HubbleEndpoint::view),
        };
        push(&view, from, received_at_us, &mut self.labels, out);
    }

    fn housekeeping(&mut self) {
        self.drops.publish();
    }

    fn finish(&mut self) -> Result<(), crate::decode::DecoderError> {
        self.drops.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::flow::SourceKind;
    use hawking_schemas::flow_details::{Int, Text};
    use hawking_schemas::telemetry::{ComponentKind, Telemetry};

    fn decode(lines: &[&str]) -> SourceBatch {
        let t = Telemetry::detached();
        crate::decode::json_lines::decode_lines(
            &mut HubbleDecoder::new(t.component(ComponentKind::Source, "hubble")),
            lines,
        )
    }

    #[test]
    fn both_shapes_and_both_reply_fields_decode_to_the_same_flow() {
        let inner = r#"{"time":"2023-08-21T12:12:18.510175Z","verdict":"DROPPED","IP":{"source":"10.244.1.60","destination":"10.244.1.5","ipVersion":"IPv4"},"l4":{"TCP":{"source_port":44916,"destination_port":80,"flags":{"SYN":true}}},"source":{"namespace":"default","pod_name":"xwing"},"destination":{"ID":7,"identity":4242,"namespace":"default","labels":["k8s:app=deathstar"],"pod_name":"deathstar-1","workloads":[{"name":"deathstar","kind":"Deployment"}]},"node_name":"kind-kind/kind-worker","drop_reason_desc":"POLICY_DENIED","traffic_direction":"INGRESS","REPLYFIELD"}"#;
        let wrapped = format!(
            r#"{{"flow":{},"node_name":"kind-kind/kind-worker","time":"2023-08-21T12:12:18.510175Z"}}"#,
            inner.replace(r#","REPLYFIELD""#, r#","is_reply":true"#)
        );
        let bare = inner.replace(r#","REPLYFIELD""#, r#","reply":true"#);
        let out = decode(&[&wrapped, &bare, r#"{"lost_events":{"num_events_lost":3}}"#]);
        let f = &out.flows;
        assert_eq!(f.len(), 2);
        for i in 0..2 {
            let r = f.record(i);
            assert_eq!(r.flow_start, 1_692_619_938_510_175);
            assert_eq!(
                (r.src_port, r.dst_port, r.protocol, r.tcp_flags),
                (44916, 80, 6, 2)
            );
            let d = f.details.as_ref().unwrap();
            assert_eq!(d.get_text(Text::Verdict, i), Some("DROPPED"));
            assert_eq!(d.get_text(Text::DropReason, i), Some("POLICY_DENIED"));
            assert_eq!(d.get_text(Text::Direction, i), Some("ingress"));
            assert_eq!(d.get_text(Text::ReportedCluster, i), Some("kind-kind"));
            assert_eq!(d.get_text(Text::SrcReportedName, i), Some("xwing"));
            assert_eq!(d.get_text(Text::DstReportedWorkload, i), Some("deathstar"));
            assert_eq!(
                d.get_text(Text::DstReportedLabels, i),
                Some("k8s:app=deathstar")
            );
            assert_eq!(d.get_text(Text::SrcReportedLabels, i), None);
            assert_eq!(d.get_int(Int::DstReportedIdentity, i), Some(4242));
            assert_eq!(d.is_reply[i], Some(true));
            assert!(!d.counted[i], "Hubble events carry no byte counts");
        }
        assert_eq!(f.source_kind[0], SourceKind::Hubble);
    }

    #[test]
    fn broken_lines_are_dropped_and_the_next_line_still_decodes() {
        let good = r#"{"flow":{"time":"2021-06-16T16:52:13.136834446Z","IP":{"source":"fe80::1","destination":"ff02::2"},"l4":{"ICMPv6":{"type":133}},"source":{},"destination":{}}}"#;
        let out = decode(&["{\"flow\":", "not json", "\u{0}\u{ff}", good]);
        assert_eq!(out.flows.len(), 1);
        let r = out.flows.record(0);
        assert_eq!((r.protocol, r.dst_port), (58, 133 << 8));
    }
}
