//! Hawking's sources: transports ([`transport`]: how exporters' messages arrive) and
//! decoders ([`decode`]: what the messages say), joined into [`source::Source`]s that hand
//! [`hawking_schemas::SourceBatch`]es downstream; the IPFIX encoder exporters and tests use
//! ([`export`]); and the node agent that reports conntrack's source-NAT translations
//! ([`nat_agent`], over [`conntrack`]). Nothing here knows about Kubernetes or storage.

pub mod conntrack;
pub mod decode;
pub mod export;
pub mod nat_agent;
pub mod source;
pub mod transport;

pub use decode::Decoder;
pub use decode::netflow::{DecoderConfig, NetflowDecoder};
pub use source::netflow::NetflowSourceConfig;
pub use source::{Source, SourceStats};
pub use transport::Transport;
