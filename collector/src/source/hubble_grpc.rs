//! Hubble flows followed live over its Observer gRPC API (hubble-relay, or one Cilium
//! agent's Hubble server): the gRPC transport and the protobuf decoder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hawking_schemas::telemetry::{ComponentKind, Telemetry};
use serde::{Deserialize, Serialize};

use super::{Batching, Source};
use crate::decode::hubble::HubbleProtoDecoder;
use crate::transport::TransportError;
use crate::transport::hubble_grpc::{HubbleGrpc, StreamMetrics};

/// One `[[hubble_grpc]]` entry: a Hubble server whose flows are followed.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubbleGrpcSourceConfig {
    /// The server's URL: `http://hubble-relay.kube-system:80`, or a Cilium agent's Hubble
    /// port (`http://NODE:4244`).
    pub server: String,
    /// The address that stands for these flows' exporter (stored in `exporter`; picks their
    /// cluster through the clusters' `exporters` rules). Default `127.0.0.1`.
    #[serde(default = "local_host")]
    pub exporter: IpAddr,
}

fn local_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

#[derive(Debug, thiserror::Error)]
pub enum HubbleGrpcSourceError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("registering the Hubble stream's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl HubbleGrpcSourceConfig {
    pub fn new(server: String) -> Self {
        HubbleGrpcSourceConfig {
            server,
            exporter: local_host(),
        }
    }

    /// Starts following the server (connection failures are retried, not fatal).
    pub fn build(
        &self,
        index: usize,
        telemetry: &Telemetry,
    ) -> Result<Source, HubbleGrpcSourceError> {
        let name = format!("hubble_grpc_{index}");
        let outages = telemetry.counter_vec(
            "hawking_hubble_stream_outages_total",
            "Times a Hubble gRPC flow stream broke (it is resumed from its last flow)",
            &["source"],
        )?;
        let outage_seconds = telemetry.counter_vec(
            "hawking_hubble_stream_outage_seconds_total",
            "Seconds Hubble gRPC flow streams were down, counted when each came back",
            &["source"],
        )?;
        let metrics = StreamMetrics {
            outages: outages.with_label_values(&[&name]),
            outage_seconds: outage_seconds.with_label_values(&[&name]),
        };
        let transport =
            HubbleGrpc::connect(&self.server, SocketAddr::new(self.exporter, 0), metrics)?;
        let component = telemetry.component(ComponentKind::Source, &name);
        tracing::info!(source = %name, server = %self.server, "following Hubble flows");
        Ok(Source::new(
            Box::new(transport),
            Box::new(HubbleProtoDecoder::new(component.clone())),
            Batching::FEW_FLOWS_PER_MESSAGE,
            component,
        ))
    }
}
