//! Decoders: what turns one message of an exporter (a datagram, or one framed message of a
//! stream) into flows, NAT events and observations. A decoder knows nothing of where its
//! messages come from; a transport ([`crate::transport`]) delivers them.

pub mod goflow2;
pub mod hawking_raw;
pub mod hubble;
mod json_lines;
pub mod netflow;
pub mod netobserv;
pub mod packets;

use std::net::SocketAddr;

use hawking_schemas::pipeline::SourceBatch;

/// Why a decoder could not finish cleanly (its input was decoded; what it keeps between runs
/// could not be saved).
#[derive(Debug, thiserror::Error)]
pub enum DecoderError {
    #[error(transparent)]
    TemplateState(#[from] netflow::state::StateError),
}

/// One kind of export format.
pub trait Decoder: Send {
    /// The format's name in logs and metrics (`netflow`).
    fn name(&self) -> &'static str;

    /// Decodes one message from `from`, received at `received_at_us` (µs since the epoch),
    /// appending what it carries to `out`. Malformed input is counted and dropped (what was
    /// decoded before the fault is kept); it never fails the source.
    fn decode(
        &mut self,
        from: SocketAddr,
        message: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    );

    /// The transport session of `from` ended (its TCP connection closed), after its last
    /// message: forget what is scoped to that session.
    fn session_ended(&mut self, _from: SocketAddr) {}

    /// Called about once a second: publish counters, persist state that changed.
    fn housekeeping(&mut self) {}

    /// Called about once a second with the time: appends to `out` what the decoder holds
    /// that is now due (a packet meter's flows gone idle).
    fn expire(&mut self, _now_us: i64, _out: &mut SourceBatch) {}

    /// The input is over: appends to `out` everything the decoder still holds.
    fn flush(&mut self, _out: &mut SourceBatch) {}

    /// The input ended: publish and persist everything.
    fn finish(&mut self) -> Result<(), DecoderError> {
        Ok(())
    }
}
