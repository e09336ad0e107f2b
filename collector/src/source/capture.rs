//! The live packet-capture source: frames captured on an interface (a node's, or a tap's
//! port) metered into flows, as a probe such as softflowd does, inside Hawking.

use std::net::IpAddr;
use std::time::Duration;

use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::telemetry::{ComponentKind, Telemetry};
use serde::{Deserialize, Serialize};

use super::{Batching, Source};
use crate::decode::packets::{MeterConfig, MeterDecoder};
use crate::transport::capture::{LiveCapture, LiveCaptureError};

/// The `[capture]` section: meter the packets of an interface into flows. Off unless an
/// interface is named (here or with `hawking serve --capture IFACE`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CaptureSourceConfig {
    /// The interface to capture on (`eth0`, `any`). None: no capture source.
    pub interface: Option<String>,
    /// A BPF filter as tcpdump takes it (`not port 2055`). None: every frame.
    pub filter: Option<String>,
    /// The observation point's address, the flows' exporter (it picks their cluster through
    /// `exporters`). None: the interface's first address.
    pub exporter: Option<IpAddr>,
    /// Seconds without a packet that end a flow. Default 15.
    pub idle_timeout_secs: Option<f64>,
    /// Seconds after which a long flow is handed on and goes on as a new one. Default 1800.
    pub active_timeout_secs: Option<f64>,
}

#[derive(Debug, thiserror::Error)]
pub enum CaptureSourceError {
    #[error(transparent)]
    Capture(#[from] LiveCaptureError),
    #[error(
        "[capture] {interface}: it has no address to stand as the flows' exporter: set exporter"
    )]
    NoAddress { interface: String },
    #[error("[capture] {field} = {value}: give a number of seconds above 0")]
    Timeout { field: &'static str, value: f64 },
}

impl CaptureSourceConfig {
    /// The source, when an interface is named.
    pub fn build(&self, telemetry: &Telemetry) -> Result<Option<Source>, CaptureSourceError> {
        let Some(interface) = &self.interface else {
            return Ok(None);
        };
        let defaults = MeterConfig::default();
        let us = |field, value: Option<f64>, default: i64| match value {
            None => Ok(default),
            Some(v) if v.is_finite() && v > 0.0 => Ok((v * 1e6) as i64),
            Some(v) => Err(CaptureSourceError::Timeout { field, value: v }),
        };
        let config = MeterConfig {
            idle_timeout_us: us(
                "idle_timeout_secs",
                self.idle_timeout_secs,
                defaults.idle_timeout_us,
            )?,
            active_timeout_us: us(
                "active_timeout_secs",
                self.active_timeout_secs,
                defaults.active_timeout_us,
            )?,
        };
        let exporter = match self.exporter {
            Some(a) => a,
            None => interface_address(interface).ok_or_else(|| CaptureSourceError::NoAddress {
                interface: interface.clone(),
            })?,
        };
        let transport = LiveCapture::open(interface, self.filter.as_deref())?;
        let decoder = MeterDecoder::new(config, transport.link(), ip_to_u128(exporter));
        Ok(Some(Source::new(
            Box::new(transport),
            Box::new(decoder),
            Batching {
                flows: 8192,
                max_delay: Duration::from_millis(200),
            },
            telemetry.component(ComponentKind::Source, "capture"),
        )))
    }
}

/// The first address libpcap lists for `interface` (IPv4 first).
fn interface_address(interface: &str) -> Option<IpAddr> {
    let device = pcap::Device::list()
        .ok()?
        .into_iter()
        .find(|d| d.name == interface)?;
    let mut addrs: Vec<IpAddr> = device.addresses.iter().map(|a| a.addr).collect();
    addrs.sort_by_key(|a| a.is_ipv6());
    addrs.into_iter().next()
}
