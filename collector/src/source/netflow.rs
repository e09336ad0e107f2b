//! The NetFlow v5/v9 and IPFIX sources: the UDP transport and the NetFlow decoder, with
//! template state kept across restarts; and, when configured, IPFIX over TCP, a source of its
//! own beside it (the TCP transport and another NetFlow decoder, whose templates live and die
//! with their connections).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use hawking_schemas::telemetry::{ComponentKind, Telemetry};
use serde::{Deserialize, Serialize};

use super::{Batching, Source};
use crate::decode::netflow::metrics::{NetflowMetrics, socket_drops, tcp_counters};
use crate::decode::netflow::state::StateError;
use crate::decode::netflow::{DecoderConfig, NetflowDecoder};
use crate::transport::TransportError;
use crate::transport::tcp::{TcpConfig, TcpTransport};
use crate::transport::udp::{UdpConfig, UdpTransport};

/// The `[netflow]` section: NetFlow v5, v9 and IPFIX over UDP, and IPFIX over TCP.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetflowSourceConfig {
    /// UDP address for NetFlow v5, v9 and IPFIX (the version is detected per datagram).
    /// Default `0.0.0.0:2055`; `[::]:2055` accepts both address families.
    pub listen: SocketAddr,
    /// Socket receive buffer in bytes; bursts beyond it are dropped by the kernel (and counted
    /// in `hawking_netflow_socket_drops_total`). Default 32 MiB; raised past the system's
    /// `rmem_max` when the process may (CAP_NET_ADMIN).
    pub receive_buffer_bytes: usize,
    /// Flows per batch handed to the enricher. Default 65536.
    pub batch_flows: usize,
    /// Longest a decoded flow waits in a partial batch, in milliseconds. Default 1000.
    pub batch_max_delay_ms: u64,
    /// TCP address for IPFIX over TCP (RFC 7011 §10.4; NetObserv's eBPF agent and many
    /// routers export this way), e.g. `0.0.0.0:4739`, IPFIX's registered port. Default none:
    /// no TCP listener. Each connection is a session with templates of its own, forgotten
    /// when it closes (exporters re-send them on every connection); the batching and decoder
    /// settings here apply to it too.
    pub tcp_listen: Option<SocketAddr>,
    /// Most IPFIX/TCP connections open at once; further ones are closed on arrival and counted
    /// in `hawking_netflow_tcp_dropped_total{reason="connection_limit"}`. Each holds at most
    /// one incomplete message (64 KiB). Default 256.
    pub max_tcp_connections: usize,
    /// Decoder limits (scopes, templates, held data).
    pub decoder: DecoderConfig,
}

impl Default for NetflowSourceConfig {
    fn default() -> Self {
        NetflowSourceConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 2055)),
            receive_buffer_bytes: 32 << 20,
            batch_flows: 65536,
            batch_max_delay_ms: 1000,
            tcp_listen: None,
            max_tcp_connections: 256,
            decoder: DecoderConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum NetflowSourceError {
    #[error("NetFlow listener: {0}")]
    Transport(#[from] TransportError),
    #[error("netflow.max_tcp_connections is 0: the IPFIX/TCP listener would refuse everyone")]
    NoTcpConnections,
    #[error("NetFlow decoder limits: {0}")]
    Limits(#[from] netflow_parser::ConfigError),
    #[error(transparent)]
    TemplateState(#[from] StateError),
    #[error("registering NetFlow metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl NetflowSourceConfig {
    /// Binds the socket and restores the template state kept at `state_path`, so that bind
    /// and state errors surface at start-up, not on the source's thread.
    pub fn build(
        &self,
        state_path: Option<PathBuf>,
        telemetry: &Telemetry,
    ) -> Result<Source, NetflowSourceError> {
        let transport = UdpTransport::bind(
            &UdpConfig {
                listen: self.listen,
                receive_buffer_bytes: self.receive_buffer_bytes,
            },
            socket_drops(telemetry)?,
        )?;
        let component = telemetry.component(ComponentKind::Source, "netflow");
        let mut decoder = NetflowDecoder::new(self.decoder.clone())?;
        decoder.publish_to(NetflowMetrics::register(telemetry)?, component.clone());
        if let Some(path) = state_path {
            decoder.persist_at(path)?;
        }
        Ok(Source::new(
            Box::new(transport),
            Box::new(decoder),
            self.batching(),
            component,
        ))
    }

    /// The IPFIX/TCP source, when `tcp_listen` is set: binds its socket now. Its decoder keeps
    /// no template state across restarts: templates belong to a connection, and a restart
    /// ends them all (exporters re-send templates first on every new connection).
    pub fn build_tcp(&self, telemetry: &Telemetry) -> Result<Option<Source>, NetflowSourceError> {
        let Some(listen) = self.tcp_listen else {
            return Ok(None);
        };
        if self.max_tcp_connections == 0 {
            return Err(NetflowSourceError::NoTcpConnections);
        }
        let transport = TcpTransport::bind(
            &TcpConfig {
                listen,
                max_connections: self.max_tcp_connections,
            },
            tcp_counters(telemetry)?,
        )?;
        let component = telemetry.component(ComponentKind::Source, "netflow_tcp");
        let mut decoder = NetflowDecoder::new(self.decoder.clone())?;
        decoder.publish_to(NetflowMetrics::register(telemetry)?, component.clone());
        Ok(Some(Source::new(
            Box::new(transport),
            Box::new(decoder),
            self.batching(),
            component,
        )))
    }

    fn batching(&self) -> Batching {
        Batching {
            flows: self.batch_flows,
            max_delay: Duration::from_millis(self.batch_max_delay_ms),
        }
    }
}
