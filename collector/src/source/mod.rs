//! A source: one transport and one decoder running on a thread of their own, handing
//! [`SourceBatch`]es downstream when they are full or have waited long enough. Each kind of
//! source has its own module here with its typed configuration and how it is built.

pub mod capture;
pub mod flow_file;
pub mod hubble_grpc;
pub mod netflow;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use hawking_schemas::time::now_micros;

use crate::decode::{Decoder, DecoderError};
use crate::transport::{Delivery, Received, Transport, TransportError, Wait};

/// How a source cuts its output into batches.
#[derive(Clone, Copy, Debug)]
pub struct Batching {
    /// Flows per batch handed downstream.
    pub flows: usize,
    /// Longest anything decoded waits in a partial batch.
    pub max_delay: Duration,
}

impl Batching {
    /// For sources whose messages carry one or a few flows each (lines, gRPC events, Kafka
    /// messages): batches of 8,192 flows, none waiting more than half a second.
    pub const FEW_FLOWS_PER_MESSAGE: Batching = Batching {
        flows: 8192,
        max_delay: Duration::from_millis(500),
    };
}

/// Totals of one source run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceStats {
    /// Messages received (datagrams, framed messages, lines).
    pub messages: u64,
    /// Flows handed downstream.
    pub flows: u64,
    pub batches: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("source {source_name}: {error}")]
    Transport {
        source_name: String,
        #[source]
        error: TransportError,
    },
    #[error("source {source_name}: {error}")]
    Decoder {
        source_name: String,
        #[source]
        error: DecoderError,
    },
}

/// Upper bound on draining the input at shutdown when exporters keep sending.
const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(2);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);

/// A transport and a decoder, ready to run.
pub struct Source {
    transport: Box<dyn Transport>,
    decoder: Box<dyn Decoder>,
    batching: Batching,
    component: Component,
}

impl Source {
    pub fn new(
        transport: Box<dyn Transport>,
        decoder: Box<dyn Decoder>,
        batching: Batching,
        component: Component,
    ) -> Self {
        Source {
            transport,
            decoder,
            batching,
            component,
        }
    }

    pub fn name(&self) -> &str {
        self.component.name()
    }

    pub fn local_addr(&self) -> Option<std::net::SocketAddr> {
        self.transport.local_addr()
    }

    /// Receives and decodes until `shutdown` is set or the input ends, then drains what has
    /// already arrived, hands over the last batch and lets the decoder persist its state.
    /// `outlet` takes every batch and returns false when downstream is gone (the source then
    /// stops).
    pub fn run(
        mut self,
        outlet: &mut dyn FnMut(SourceBatch) -> bool,
        shutdown: &AtomicBool,
    ) -> Result<SourceStats, SourceError> {
        let name = self.component.name().to_string();
        let batch_flows = self.batching.flows.max(1);
        let mut stats = SourceStats::default();
        let mut batch = SourceBatch::with_capacity(batch_flows);
        let mut batch_since = Instant::now();
        let mut housekeeping_at = Instant::now();
        let mut drain_deadline: Option<Instant> = None;
        let mut downstream_alive = true;
        while downstream_alive {
            let stopping = shutdown.load(Ordering::Relaxed);
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + SHUTDOWN_DRAIN_LIMIT);
            }
            let wait = if stopping { Wait::Never } else { Wait::Briefly };
            let now_us = now_micros();
            let before = batch.flows.len();
            let decoder = &mut self.decoder;
            let received = self
                .transport
                .receive_events(wait, &mut |delivery| match delivery {
                    Delivery::Message(from, message) => {
                        if !batch.has_content() {
                            batch_since = Instant::now();
                        }
                        decoder.decode(from, message, now_us, &mut batch);
                    }
                    Delivery::SessionEnded(from) => decoder.session_ended(from),
                })
                .map_err(|error| SourceError::Transport {
                    source_name: name.clone(),
                    error,
                })?;
            match received {
                Received::Messages { count, bytes } => {
                    stats.messages += count as u64;
                    self.component
                        .received((batch.flows.len() - before) as u64, bytes as u64);
                }
                Received::Idle if stopping => break,
                Received::Idle => {}
                Received::Ended => break,
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if batch.flows.len() >= batch_flows
                || (batch.has_content() && batch_since.elapsed() >= self.batching.max_delay)
            {
                let full = std::mem::replace(&mut batch, SourceBatch::with_capacity(batch_flows));
                downstream_alive = self.hand_over(full, outlet, &mut stats);
            }
            if housekeeping_at.elapsed() >= HOUSEKEEPING_INTERVAL {
                housekeeping_at = Instant::now();
                self.decoder.housekeeping();
                let had_content = batch.has_content();
                self.decoder.expire(now_micros(), &mut batch);
                if !had_content && batch.has_content() {
                    batch_since = Instant::now();
                }
            }
        }
        if downstream_alive {
            self.decoder.flush(&mut batch);
        }
        if batch.has_content() && downstream_alive {
            self.hand_over(batch, outlet, &mut stats);
        }
        self.decoder
            .finish()
            .map_err(|error| SourceError::Decoder {
                source_name: name,
                error,
            })?;
        Ok(stats)
    }

    fn hand_over(
        &mut self,
        mut batch: SourceBatch,
        outlet: &mut dyn FnMut(SourceBatch) -> bool,
        stats: &mut SourceStats,
    ) -> bool {
        let flows = batch.flows.len() as u64;
        batch.receipts.extend(self.transport.seal());
        stats.flows += flows;
        stats.batches += 1;
        let alive = outlet(batch);
        if alive {
            self.component.sent(flows);
        } else {
            self.component.dropped(flows, "downstream_gone");
        }
        alive
    }
}
