//! Hubble's Observer gRPC API: a server this test starts serves real recorded flows (the
//! Hubble corpus in `../shared/real-exports`, encoded as Observer protobuf), breaks the stream
//! part-way as a restarting relay does, and serves again from where the client asks. What
//! `hawking serve --hubble-grpc` stores equals what it stores from the same lines as JSON,
//! every flow once, and the outage is counted.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use hawking_collector::decode::hubble::proto::{
    BoolValue, DIRECTIONS, Endpoint, Flow, GetFlowsRequest, GetFlowsResponse, Icmp, Ip, L7_TYPES,
    Layer4, Layer7, NetworkInterface, Ports, Present, Protocol, Record, Response, Tcp, TcpFlags,
    Timestamp, VERDICTS, Workload, drop_reason_number,
};
use serde_json::Value;
use tonic::codegen::http;

use crate::support::{Hawking, sql};

/// A JSON line of the corpus as the Observer API sends it.
fn encode(line: &str) -> GetFlowsResponse {
    let v: Value = serde_json::from_str(line).unwrap();
    let f = &v["flow"];
    let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let u = |v: &Value| v.as_u64().unwrap_or(0) as u32;
    let index = |table: &[&str], v: &Value| {
        v.as_str()
            .and_then(|n| table.iter().position(|t| *t == n))
            .unwrap_or(0) as i32
    };
    let time: jiff::Timestamp = f["time"].as_str().unwrap().parse().unwrap();
    let endpoint = |e: &Value| Endpoint {
        id: u(&e["ID"]),
        identity: u(&e["identity"]),
        namespace: s(&e["namespace"]),
        labels: e["labels"]
            .as_array()
            .map(|l| l.iter().map(s).collect())
            .unwrap_or_default(),
        pod_name: s(&e["pod_name"]),
        workloads: e["workloads"]
            .as_array()
            .map(|w| {
                w.iter()
                    .map(|w| Workload {
                        name: s(&w["name"]),
                        kind: s(&w["kind"]),
                    })
                    .collect()
            })
            .unwrap_or_default(),
        cluster_name: s(&e["cluster_name"]),
    };
    let l4 = &f["l4"];
    let ports = |p: &Value| Ports {
        source_port: u(&p["source_port"]),
        destination_port: u(&p["destination_port"]),
    };
    let icmp = |i: &Value| Icmp {
        r#type: u(&i["type"]),
        code: u(&i["code"]),
    };
    let flag = |name: &str| l4["TCP"]["flags"][name].as_bool().unwrap_or(false);
    let protocol = if l4.get("TCP").is_some() {
        Some(Protocol::Tcp(Tcp {
            source_port: u(&l4["TCP"]["source_port"]),
            destination_port: u(&l4["TCP"]["destination_port"]),
            flags: l4["TCP"].get("flags").map(|_| TcpFlags {
                fin: flag("FIN"),
                syn: flag("SYN"),
                rst: flag("RST"),
                psh: flag("PSH"),
                ack: flag("ACK"),
                urg: flag("URG"),
                ece: flag("ECE"),
                cwr: flag("CWR"),
            }),
        }))
    } else if let Some(p) = l4.get("UDP") {
        Some(Protocol::Udp(ports(p)))
    } else if let Some(p) = l4.get("SCTP") {
        Some(Protocol::Sctp(ports(p)))
    } else if let Some(i) = l4.get("ICMPv4") {
        Some(Protocol::Icmpv4(icmp(i)))
    } else {
        l4.get("ICMPv6").map(|i| Protocol::Icmpv6(icmp(i)))
    };
    let l7 = f.get("l7").map(|l| Layer7 {
        r#type: index(&L7_TYPES, &l["type"]),
        record: if l.get("dns").is_some() {
            Some(Record::Dns(Present {}))
        } else if l.get("http").is_some() {
            Some(Record::Http(Present {}))
        } else {
            l.get("kafka").map(|_| Record::Kafka(Present {}))
        },
    });
    GetFlowsResponse {
        response: Some(Response::Flow(Flow {
            time: Some(Timestamp::from_micros(time.as_microsecond())),
            verdict: index(&VERDICTS, &f["verdict"]),
            ip: Some(Ip {
                source: s(&f["IP"]["source"]),
                destination: s(&f["IP"]["destination"]),
                ip_version: 0,
                source_xlated: s(&f["IP"]["source_xlated"]),
            }),
            l4: Some(Layer4 { protocol }),
            source: Some(endpoint(&f["source"])),
            destination: Some(endpoint(&f["destination"])),
            node_name: s(&f["node_name"]),
            l7,
            reply: f["reply"].as_bool().unwrap_or(false),
            traffic_direction: index(&DIRECTIONS, &f["traffic_direction"]),
            drop_reason_desc: f["drop_reason_desc"]
                .as_str()
                .and_then(drop_reason_number)
                .unwrap_or(0),
            is_reply: f["is_reply"].as_bool().map(|value| BoolValue { value }),
            interface: f.get("interface").map(|i| NetworkInterface {
                index: u(&i["index"]),
                name: s(&i["name"]),
            }),
        })),
        node_name: s(&v["node_name"]),
        time: Some(Timestamp::from_micros(time.as_microsecond())),
    }
}

type FlowStream = Pin<Box<dyn Stream<Item = Result<GetFlowsResponse, tonic::Status>> + Send>>;

/// Serves `flows` to GetFlows: the first call breaks after `break_after` flows; later calls
/// serve the flows from the request's `since` on and then follow (stay open).
#[derive(Clone)]
struct Observer {
    flows: Arc<Vec<GetFlowsResponse>>,
    break_after: usize,
    calls: Arc<AtomicUsize>,
    since: Arc<Mutex<Vec<Option<i64>>>>,
}

impl tonic::server::ServerStreamingService<GetFlowsRequest> for Observer {
    type Response = GetFlowsResponse;
    type ResponseStream = FlowStream;
    type Future =
        Pin<Box<dyn Future<Output = Result<tonic::Response<FlowStream>, tonic::Status>> + Send>>;

    fn call(&mut self, request: tonic::Request<GetFlowsRequest>) -> Self::Future {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let since = request.into_inner().since.map(|t| t.as_micros());
        self.since.lock().unwrap().push(since);
        let time = |r: &GetFlowsResponse| r.time.unwrap().as_micros();
        let flows: Vec<GetFlowsResponse> = self
            .flows
            .iter()
            .filter(|r| since.is_none_or(|s| time(r) >= s))
            .cloned()
            .collect();
        let stream: FlowStream = if call == 0 {
            let head: Vec<_> = flows.into_iter().take(self.break_after).map(Ok).collect();
            Box::pin(
                futures::stream::iter(head).chain(futures::stream::once(async {
                    Err(tonic::Status::unavailable("hubble-relay is restarting"))
                })),
            )
        } else {
            Box::pin(
                futures::stream::iter(flows.into_iter().map(Ok)).chain(futures::stream::pending()),
            )
        };
        Box::pin(async move { Ok(tonic::Response::new(stream)) })
    }
}

impl<B> tonic::codegen::Service<http::Request<B>> for Observer
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = tonic::codegen::BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        if request.uri().path() != "/observer.Observer/GetFlows" {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("only GetFlows").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.server_streaming(service, request).await)
        })
    }
}

impl tonic::server::NamedService for Observer {
    const NAME: &'static str = "observer.Observer";
}

fn rows(data: &Path) -> Vec<String> {
    let mut rows: Vec<String> = sql(
        data,
        "SELECT CAST(flow_start AS BIGINT) AS t, src_ip, dst_ip, src_port, dst_port, protocol, \
         tcp_flags, verdict, direction, is_reply, l7_type, l7_protocol, observer, \
         src_reported_kind, src_reported_name, dst_reported_namespace, dst_reported_name, \
         dst_reported_workload, src_reported_labels, src_reported_identity, drop_reason \
         FROM flows",
    )
    .iter()
    .map(|r| serde_json::to_string(r).unwrap())
    .collect();
    rows.sort();
    rows
}

#[test]
fn a_relay_that_breaks_mid_stream_loses_nothing_and_the_outage_is_counted() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../shared/real-exports/hubble/cilium-hubble-otel/basic-sample-400-tcp-flows.jsonl");
    assert!(
        corpus.is_file(),
        "{} is absent: the recorded Hubble flows this test serves (see SOURCES.md there)",
        corpus.display()
    );
    let lines: Vec<String> = std::fs::read_to_string(&corpus)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect();
    let mut flows: Vec<GetFlowsResponse> = lines.iter().map(|l| encode(l)).collect();
    // A relay serves in time order.
    flows.sort_by_key(|r| r.time.unwrap().as_micros());
    let observer = Observer {
        flows: Arc::new(flows),
        break_after: 150,
        calls: Arc::new(AtomicUsize::new(0)),
        since: Arc::new(Mutex::new(Vec::new())),
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = futures::stream::unfold(listener, |l| async move {
        Some((l.accept().await.map(|(s, _)| s), l))
    });
    runtime.spawn(
        tonic::transport::Server::builder()
            .add_service(observer.clone())
            .serve_with_incoming(incoming),
    );

    let tmp = tempfile::tempdir().unwrap();
    let grpc_data = tmp.path().join("grpc");
    let url = format!("http://{addr}");
    let hawking = Hawking::start(&grpc_data, &["--hubble-grpc", &url]);
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("component", "hubble_grpc_0")],
        lines.len() as f64,
    );
    let outages = hawking.metric("hawking_hubble_stream_outages_total", &[]);
    let report = hawking.stop();
    assert_eq!(
        report.flows,
        lines.len() as u64,
        "every flow once, none twice"
    );
    assert_eq!(outages, 1.0, "the break is counted");
    let since = observer.since.lock().unwrap().clone();
    assert_eq!(since.len(), 2, "one reconnect: {since:?}");
    assert_eq!(since[0], None, "the first call follows from now");
    assert!(
        since[1].is_some(),
        "the reconnect resumes after the last flow it had"
    );

    // The same lines as JSON from a file: the same rows.
    let file_data = tmp.path().join("file");
    let hawking = Hawking::start(&file_data, &["--hubble-file", corpus.to_str().unwrap()]);
    hawking.wait_metric(
        "hawking_component_sent_events_total",
        &[("component", "hubble_file_0")],
        lines.len() as f64,
    );
    hawking.stop();
    let (from_grpc, from_file) = (rows(&grpc_data), rows(&file_data));
    assert_eq!(from_grpc.len(), lines.len());
    if from_grpc != from_file {
        let diff: Vec<_> = from_grpc
            .iter()
            .zip(&from_file)
            .filter(|(a, b)| a != b)
            .take(3)
            .collect();
        panic!("gRPC and file rows differ: {diff:#?}");
    }
}
