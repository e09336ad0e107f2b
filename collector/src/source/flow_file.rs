//! Flow exporters' lines (Hubble, NetObserv, goflow2) from a followed file or
//! standard input: the line transport and the format's decoder.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use hawking_schemas::telemetry::{ComponentKind, Telemetry};
use serde::{Deserialize, Serialize};

use super::{Batching, Source};
use crate::decode::Decoder;
use crate::decode::goflow2::{Goflow2Decoder, Goflow2Format};
use crate::decode::hubble::HubbleDecoder;
use crate::decode::netobserv::NetObservDecoder;
use crate::transport::TransportError;
use crate::transport::lines::{LineInput, ReadFrom};

/// Which exporter wrote the lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowFileFormat {
    /// Cilium Hubble: `hubble observe -o json`/`-o jsonpb`, or Hubble's flow exporter file.
    Hubble,
    /// NetObserv: flowlogs-pipeline's JSON records.
    Netobserv,
    /// goflow2's JSON (`-format=json`) or text (`-format=text`) lines, as its file
    /// transport or standard output writes them; each flow's exporter is the device goflow2
    /// names (`sampler_address`), not `exporter`.
    Goflow2,
}

impl FlowFileFormat {
    pub fn as_str(self) -> &'static str {
        match self {
            FlowFileFormat::Hubble => "hubble",
            FlowFileFormat::Netobserv => "netobserv",
            FlowFileFormat::Goflow2 => "goflow2",
        }
    }
}

/// One `[[flow_files]]` entry: an exporter's JSON lines, read as they are written.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowFileSourceConfig {
    /// `hubble`, `netobserv` or `goflow2`.
    pub format: FlowFileFormat,
    /// The file, followed as it grows and across rotation (Hubble's exporter writes
    /// `/var/run/cilium/hubble/events.log`); `-` reads standard input until it ends.
    pub path: PathBuf,
    /// The address that stands for these flows' exporter: it is stored in `exporter` and
    /// picks their cluster through the clusters' `exporters` rules. Default `127.0.0.1`,
    /// this host, where the file is written.
    #[serde(default = "local_host")]
    pub exporter: IpAddr,
    /// Where a file without a checkpoint is first read from: `beginning` (default) or `end`.
    #[serde(default)]
    pub read_from: ReadFrom,
}

fn local_host() -> IpAddr {
    IpAddr::V4(Ipv4Addr::LOCALHOST)
}

impl FlowFileSourceConfig {
    /// A source for `path` in `format` with the defaults.
    pub fn new(format: FlowFileFormat, path: PathBuf) -> Self {
        FlowFileSourceConfig {
            format,
            path,
            exporter: local_host(),
            read_from: ReadFrom::default(),
        }
    }

    /// Opens the file (a missing one is waited for). The read position persists in
    /// `state_dir`, so a restart goes on where the last run stopped.
    pub fn build(
        &self,
        index: usize,
        state_dir: Option<&Path>,
        telemetry: &Telemetry,
    ) -> Result<Source, TransportError> {
        let name = format!("{}_file_{index}", self.format.as_str());
        // Named by the path, so that reordering the configuration keeps each file's place.
        let path_hash = self
            .path
            .as_os_str()
            .as_encoded_bytes()
            .iter()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ *b as u64).wrapping_mul(0x100_0000_01b3)
            });
        let checkpoint = (self.path != Path::new("-"))
            .then(|| state_dir.map(|d| d.join(format!("flow-file-{path_hash:016x}.json"))))
            .flatten();
        let transport = LineInput::open(
            &self.path,
            SocketAddr::new(self.exporter, 0),
            self.read_from,
            checkpoint,
        )?;
        let component = telemetry.component(ComponentKind::Source, &name);
        let decoder: Box<dyn Decoder> = match self.format {
            FlowFileFormat::Hubble => Box::new(HubbleDecoder::new(component.clone())),
            FlowFileFormat::Netobserv => Box::new(NetObservDecoder::new(component.clone())),
            FlowFileFormat::Goflow2 => {
                Box::new(Goflow2Decoder::new(Goflow2Format::Lines, component.clone()))
            }
        };
        tracing::info!(source = %name, path = %self.path.display(), "reading flow lines");
        Ok(Source::new(
            Box::new(transport),
            decoder,
            Batching::FEW_FLOWS_PER_MESSAGE,
            component,
        ))
    }
}
