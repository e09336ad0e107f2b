//! Hawking's own raw flows (`hawking.raw.v1`, see [`hawking_schemas::raw`]), as a collector
//! publishes them for enrichers: each message is decoded whole or refused and counted.

use std::net::SocketAddr;

use hawking_schemas::flow::FlowBatch;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::raw::{self, RawError};
use hawking_schemas::telemetry::Component;

use super::Decoder;

/// Decodes raw flow messages; the sender's address plays no part (the flows name their
/// exporters).
pub struct RawFlowDecoder {
    scratch: FlowBatch,
    component: Component,
}

impl RawFlowDecoder {
    /// Refused messages are counted on `component` (the source's).
    pub fn new(component: Component) -> Self {
        RawFlowDecoder {
            scratch: FlowBatch::default(),
            component,
        }
    }
}

impl Decoder for RawFlowDecoder {
    fn name(&self) -> &'static str {
        "hawking_raw"
    }

    fn decode(&mut self, _: SocketAddr, message: &[u8], _: i64, out: &mut SourceBatch) {
        if let Err(e) = raw::decode(message, &mut self.scratch, out) {
            let reason = match e {
                RawError::NotRaw => "not_raw_flows",
                RawError::Version(_) => "raw_version_unknown",
                RawError::Truncated | RawError::Trailing(_) | RawError::Invalid(_) => {
                    "malformed_raw_flows"
                }
            };
            self.component.dropped(1, reason);
        }
    }
}
