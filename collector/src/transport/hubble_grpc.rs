//! Hubble's Observer API as a transport: `GetFlows` with `follow` from hubble-relay or a
//! Cilium agent, each `GetFlowsResponse` delivered as one message (still encoded: the
//! decoder reads it). When the stream breaks, the client reconnects with backoff and asks
//! for the flows since the last one it delivered, so an outage loses nothing the server
//! still holds in its ring buffer; each outage is logged and counted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::time::{Duration, Instant};

use bytes::Buf;
use prometheus::IntCounter;
use prost::Message;
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder as GrpcDecoder, EncodeBuf, Encoder};

use super::{Received, Transport, TransportError, Wait};
use crate::decode::hubble::proto::{GetFlowsRequest, Timestamp};

const METHOD: &str = "/observer.Observer/GetFlows";
const POLL: Duration = Duration::from_millis(100);
const BACKOFF_MAX: Duration = Duration::from_secs(10);

/// Only a response's time (tag 1001), to know where to resume; the flow is skipped unread.
#[derive(Clone, PartialEq, Message)]
struct ResponseTime {
    #[prost(message, optional, tag = "1001")]
    time: Option<Timestamp>,
}

/// Encodes requests; hands responses on as their bytes.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = GetFlowsRequest;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = GetFlowsRequest;
    type Error = Status;

    fn encode(&mut self, item: Self::Item, dst: &mut EncodeBuf<'_>) -> Result<(), Self::Error> {
        dst.reserve(item.encoded_len());
        item.encode(dst)
            .map_err(|e| Status::internal(format!("encoding GetFlowsRequest: {e}")))
    }
}

impl GrpcDecoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Self::Item>, Self::Error> {
        let mut out = vec![0u8; src.remaining()];
        src.copy_to_slice(&mut out);
        Ok(Some(out))
    }
}

/// What the stream's thread reports.
enum Event {
    Message(Vec<u8>),
    Failed(String),
}

/// Counters of the stream's health, on the source's component's name.
#[derive(Clone)]
pub struct StreamMetrics {
    pub outages: IntCounter,
    pub outage_seconds: IntCounter,
}

/// See the module documentation.
pub struct HubbleGrpc {
    events: Receiver<Event>,
    sender: SocketAddr,
    stop: Arc<AtomicBool>,
    server: String,
    failures: u64,
}

impl HubbleGrpc {
    /// Starts following `server` (`http://hubble-relay:4245`); `sender` stands for the flows'
    /// exporter.
    pub fn connect(
        server: &str,
        sender: SocketAddr,
        metrics: StreamMetrics,
    ) -> Result<Self, TransportError> {
        let endpoint =
            tonic::transport::Endpoint::from_shared(server.to_string()).map_err(|e| {
                TransportError::Open {
                    path: server.to_string(),
                    source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
                }
            })?;
        let (tx, rx) = sync_channel(1024);
        let stop = Arc::new(AtomicBool::new(false));
        let thread_stop = stop.clone();
        let name = server.to_string();
        std::thread::Builder::new()
            .name("hawking-hubble-grpc".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Event::Failed(format!("starting its runtime: {e}")));
                        return;
                    }
                };
                runtime.block_on(follow(endpoint, name, tx, thread_stop, metrics));
            })
            .map_err(|e| TransportError::Open {
                path: server.to_string(),
                source: e,
            })?;
        Ok(HubbleGrpc {
            events: rx,
            sender,
            stop,
            server: server.to_string(),
            failures: 0,
        })
    }
}

/// Follows the flows until `stop`, reconnecting after every break from where it left off.
async fn follow(
    endpoint: tonic::transport::Endpoint,
    server: String,
    tx: SyncSender<Event>,
    stop: Arc<AtomicBool>,
    metrics: StreamMetrics,
) {
    let mut since: Option<Timestamp> = None;
    let mut backoff = Duration::from_millis(100);
    let mut down_since: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let result = async {
            let channel = endpoint.connect().await.map_err(|e| e.to_string())?;
            let mut client = tonic::client::Grpc::new(channel);
            client.ready().await.map_err(|e| e.to_string())?;
            let request = GetFlowsRequest {
                follow: true,
                // Resume after the last flow delivered (Hubble's `since` is inclusive).
                since: since.map(|t| Timestamp::from_micros(t.as_micros() + 1)),
                ..Default::default()
            };
            let path = tonic::codegen::http::uri::PathAndQuery::from_static(METHOD);
            let mut stream = client
                .server_streaming(tonic::Request::new(request), path, RawCodec)
                .await
                .map_err(|e| e.to_string())?
                .into_inner();
            if let Some(at) = down_since.take() {
                let secs = at.elapsed().as_secs_f64();
                metrics.outage_seconds.inc_by(secs.ceil() as u64);
                tracing::warn!(server = %server, seconds = secs, "Hubble flow stream is back");
            }
            backoff = Duration::from_millis(100);
            loop {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                match stream.message().await {
                    Ok(Some(bytes)) => {
                        if let Ok(t) = ResponseTime::decode(bytes.as_slice())
                            && let Some(time) = t.time
                        {
                            since = Some(time);
                        }
                        if tx.send(Event::Message(bytes)).is_err() {
                            return Ok(());
                        }
                    }
                    Ok(None) => return Err("the server ended the stream".to_string()),
                    Err(status) => return Err(status.to_string()),
                }
            }
        }
        .await;
        if stop.load(Ordering::Relaxed) {
            return;
        }
        if let Err(reason) = result {
            if down_since.is_none() {
                down_since = Some(Instant::now());
                metrics.outages.inc();
            }
            if tx.send(Event::Failed(reason)).is_err() {
                return;
            }
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

impl Drop for HubbleGrpc {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl Transport for HubbleGrpc {
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError> {
        let mut count = 0;
        let mut bytes = 0;
        let first = match wait {
            Wait::Briefly => self.events.recv_timeout(POLL).map_err(|e| match e {
                RecvTimeoutError::Timeout => TryRecvError::Empty,
                RecvTimeoutError::Disconnected => TryRecvError::Disconnected,
            }),
            Wait::Never => self.events.try_recv(),
        };
        let mut next = first;
        loop {
            match next {
                Ok(Event::Message(m)) => {
                    count += 1;
                    bytes += m.len();
                    on_message(self.sender, &m);
                }
                Ok(Event::Failed(reason)) => {
                    self.failures += 1;
                    tracing::warn!(
                        server = %self.server,
                        reason = %reason,
                        failures = self.failures,
                        "Hubble flow stream broken; reconnecting"
                    );
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    return Ok(if count > 0 {
                        Received::Messages { count, bytes }
                    } else {
                        Received::Ended
                    });
                }
            }
            if count >= 4096 {
                break;
            }
            next = self.events.try_recv();
        }
        Ok(if count > 0 {
            Received::Messages { count, bytes }
        } else {
            Received::Idle
        })
    }
}
