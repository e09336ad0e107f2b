//! Transports: how exporters' messages reach Hawking (UDP datagrams, IPFIX over TCP, capture
//! files and interfaces; Kafka would share the interface). A transport delivers messages with
//! their sender's address and knows nothing of their format beyond where one ends; a decoder
//! ([`crate::decode`]) reads them.

pub mod capture;
pub mod hubble_grpc;
pub mod lines;
pub mod tcp;
pub mod udp;

use std::net::SocketAddr;

use hawking_schemas::pipeline::Receipt;

/// How long [`Transport::receive`] may wait.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wait {
    /// Up to the transport's poll interval for the first message.
    Briefly,
    /// Not at all: only what has already arrived (draining at shutdown).
    Never,
}

/// What one [`Transport::receive`] call found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Received {
    /// This many messages (with these many bytes) were delivered.
    Messages { count: usize, bytes: usize },
    /// Nothing arrived in time.
    Idle,
    /// The input is over (end of a file); nothing more will come.
    Ended,
}

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("receiving on {addr}: {source}")]
    Receive {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("reading {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("capturing on {interface}: {message}")]
    Capture { interface: String, message: String },
}

/// What a transport hands on, in the order it happened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivery<'a> {
    /// One whole message from this sender.
    Message(SocketAddr, &'a [u8]),
    /// The sender's transport session ended (a TCP connection closed) after its last message:
    /// whatever it announced for the session (IPFIX templates) no longer applies, and a new
    /// session from the same address starts afresh.
    SessionEnded(SocketAddr),
}

/// A way in for exporters' messages.
pub trait Transport: Send {
    /// Where it listens, for the start-up line and logs.
    fn local_addr(&self) -> Option<SocketAddr>;

    /// Delivers what arrived to `on_message` (sender, message), waiting as `wait` says.
    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError>;

    /// As [`Transport::receive`], also telling when a sender's session ended, in order with
    /// its messages. Transports without sessions (datagrams, files) deliver only messages.
    fn receive_events(
        &mut self,
        wait: Wait,
        on_event: &mut dyn FnMut(Delivery<'_>),
    ) -> Result<Received, TransportError> {
        self.receive(wait, &mut |from, message| {
            on_event(Delivery::Message(from, message))
        })
    }

    /// A receipt for every message delivered so far, for a transport that can replay what
    /// was not stored (Kafka commits its offsets when the receipt completes); `None` (the
    /// default) for one that cannot. Called as the source hands a batch over, so a decoder
    /// paired with such a transport must hold nothing back across messages.
    fn seal(&mut self) -> Option<Receipt> {
        None
    }
}
