//! The TCP transport: IPFIX over TCP (RFC 7011 §10.4), as NetObserv's eBPF agent and many
//! routers export it. One thread serves every connection: non-blocking sockets and `poll(2)`,
//! at most `max_connections` open at once, and a buffer per connection bounded by the largest
//! IPFIX message (65535 bytes, the header's 16-bit length).
//!
//! A stream has no datagram boundaries: messages are cut out of it by the RFC 7011 message
//! header alone (version 10, then the message's length in bytes, header included). That is all
//! this transport knows of IPFIX; each whole message is delivered with the connection's peer
//! address, as a UDP datagram would be. A message split across segments is reassembled, several
//! in one segment are delivered one by one. What the transport throws away is counted:
//! - a connection that ends (closed or reset) in the middle of a message: the partial message
//!   is dropped, the whole messages before it were delivered;
//! - a peer whose stream does not frame as IPFIX (version other than 10, or a length below the
//!   16-byte header): there is no way to find the next message boundary, so the connection is
//!   closed and the peer's address logged; the other connections go on;
//! - a connection beyond `max_connections`: accepted and closed at once.
//!
//! A connection is a transport session: when it ends, [`Delivery::SessionEnded`] says so,
//! after its last message, so the decoder can forget what was announced in it (templates).

use std::io::{self, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use prometheus::{IntCounter, IntCounterVec, IntGauge};
use socket2::{Domain, Protocol, Socket, Type};

use super::{Delivery, Received, Transport, TransportError, Wait};

/// A TCP listening socket for IPFIX exporters.
#[derive(Clone, Copy, Debug)]
pub struct TcpConfig {
    /// Address to listen on. `[::]:PORT` accepts both address families.
    pub listen: SocketAddr,
    /// Most exporter connections open at once; further ones are closed on arrival (and
    /// counted). At least 1.
    pub max_connections: usize,
}

/// The counters the transport adds to (registered by whoever owns the metric names).
#[derive(Clone)]
pub struct TcpCounters {
    /// Connections accepted (including those refused at the connection limit).
    pub connections: IntCounter,
    /// Connections open now.
    pub open: IntGauge,
    /// Connections whose input was cut short, by reason: `partial_message`,
    /// `bad_version`, `bad_length`, `read_error`, `connection_limit`, `shutdown`.
    pub dropped: IntCounterVec,
    /// Bytes received and thrown away with them, by the same reasons.
    pub dropped_bytes: IntCounterVec,
}

impl TcpCounters {
    /// Counters registered nowhere, for tests and tools that do not publish metrics.
    pub fn detached() -> TcpCounters {
        let vec = |name: &str| {
            IntCounterVec::new(prometheus::Opts::new(name, "detached"), &["reason"])
                .expect("valid metric")
        };
        TcpCounters {
            connections: IntCounter::new("connections", "detached").expect("valid metric"),
            open: IntGauge::new("open", "detached").expect("valid metric"),
            dropped: vec("dropped"),
            dropped_bytes: vec("dropped_bytes"),
        }
    }

    fn drop_input(&self, reason: &str, bytes: usize) {
        self.dropped.with_label_values(&[reason]).inc();
        self.dropped_bytes
            .with_label_values(&[reason])
            .inc_by(bytes as u64);
    }
}

/// The IPFIX message header's version field (RFC 7011 §3.1).
const IPFIX_VERSION: u16 = 10;
/// The IPFIX message header's size: the least a message's length can say.
const IPFIX_HEADER_LEN: usize = 16;
/// The largest IPFIX message (its length is 16 bits): what a connection's buffer holds at most.
const MAX_MESSAGE: usize = u16::MAX as usize;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Reads from one connection per wake-up before the others get their turn.
const READS_PER_TURN: usize = 8;
/// Connections accepted per wake-up (the listener stays readable for the rest).
const ACCEPTS_PER_TURN: usize = 64;
/// Least time between two log lines about misbehaving peers (the counters count them all).
const WARN_INTERVAL: Duration = Duration::from_secs(5);
/// How long the listener rests after accepting failed for want of resources (descriptors,
/// memory): the pending connection keeps it readable, and polling it would spin.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

/// Why a stream cannot be framed as IPFIX messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Garbage {
    BadVersion(u16),
    BadLength(u16),
}

impl Garbage {
    fn reason(self) -> &'static str {
        match self {
            Garbage::BadVersion(_) => "bad_version",
            Garbage::BadLength(_) => "bad_length",
        }
    }
}

/// Cuts the whole IPFIX messages at the start of `data`, handing each to `deliver`; returns
/// how many bytes they took (the rest is the start of a message still to come), or, when the
/// framing is broken, also why (after delivering the whole messages before the fault).
fn frame(data: &[u8], mut deliver: impl FnMut(&[u8])) -> (usize, Option<Garbage>) {
    let mut at = 0;
    loop {
        let rest = &data[at..];
        if rest.len() >= 2 {
            let version = u16::from_be_bytes([rest[0], rest[1]]);
            if version != IPFIX_VERSION {
                return (at, Some(Garbage::BadVersion(version)));
            }
        }
        if rest.len() < 4 {
            return (at, None);
        }
        let length = u16::from_be_bytes([rest[2], rest[3]]);
        if (length as usize) < IPFIX_HEADER_LEN {
            return (at, Some(Garbage::BadLength(length)));
        }
        if rest.len() < length as usize {
            return (at, None);
        }
        deliver(&rest[..length as usize]);
        at += length as usize;
    }
}

/// One exporter's connection: its socket and the start of a message not yet whole.
struct Connection {
    stream: TcpStream,
    peer: SocketAddr,
    /// Bytes of an incomplete message; never more than [`MAX_MESSAGE`].
    partial: Vec<u8>,
}

/// How a connection's turn ended.
enum Turn {
    /// Still open (nothing more to read right now, or its turn is over).
    Open,
    /// Closed by the peer (or reset); `partial` holds what was left of a message.
    Ended { error: Option<io::Error> },
    /// Its stream is not IPFIX: to be closed.
    Garbage(Garbage),
}

/// A listening socket and its exporter connections.
pub struct TcpTransport {
    listener: TcpListener,
    addr: SocketAddr,
    max_connections: usize,
    connections: Vec<Connection>,
    /// Reused for every read: one whole message fits.
    scratch: Vec<u8>,
    pollfds: Vec<libc::pollfd>,
    counters: TcpCounters,
    /// Until when the listener is left out of `poll` (see [`ACCEPT_BACKOFF`]).
    accept_resumes_at: Option<Instant>,
    /// Accepting failed last time (logged once per streak).
    accept_failing: bool,
    last_warning: Option<Instant>,
    warnings_suppressed: u64,
}

impl TcpTransport {
    /// Binds and listens on `config.listen`.
    pub fn bind(config: &TcpConfig, counters: TcpCounters) -> Result<Self, TransportError> {
        let addr = config.listen;
        let bind_err = |source| TransportError::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))
            .map_err(bind_err)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).map_err(bind_err)?;
        }
        socket.set_reuse_address(true).map_err(bind_err)?;
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket
            .listen(config.max_connections.clamp(16, 1024) as i32)
            .map_err(bind_err)?;
        socket.set_nonblocking(true).map_err(bind_err)?;
        let listener: TcpListener = socket.into();
        let addr = listener.local_addr().map_err(bind_err)?;
        Ok(TcpTransport {
            listener,
            addr,
            max_connections: config.max_connections.max(1),
            connections: Vec::new(),
            scratch: vec![0; MAX_MESSAGE],
            pollfds: Vec::new(),
            counters,
            accept_resumes_at: None,
            accept_failing: false,
            last_warning: None,
            warnings_suppressed: 0,
        })
    }

    /// Connections open now.
    pub fn open_connections(&self) -> usize {
        self.connections.len()
    }

    /// Logs a misbehaving peer, at most every few seconds (the counters count every one).
    fn warn(&mut self, peer: SocketAddr, reason: &str, detail: &dyn std::fmt::Display) {
        if self
            .last_warning
            .is_some_and(|at| at.elapsed() < WARN_INTERVAL)
        {
            self.warnings_suppressed += 1;
            return;
        }
        self.last_warning = Some(Instant::now());
        let suppressed = std::mem::take(&mut self.warnings_suppressed);
        tracing::warn!(
            listener = %self.addr,
            peer = %peer,
            reason,
            detail = %detail,
            suppressed,
            "IPFIX/TCP: dropping a connection's input"
        );
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPTS_PER_TURN {
            let (stream, peer) = match self.listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                Err(e) => {
                    // Out of descriptors or memory: the listener itself is fine. Rest it a
                    // moment; the connections already open go on meanwhile.
                    self.accept_resumes_at = Some(Instant::now() + ACCEPT_BACKOFF);
                    if !std::mem::replace(&mut self.accept_failing, true) {
                        tracing::warn!(listener = %self.addr, error = %e, "IPFIX/TCP: cannot accept connections; retrying every 100 ms");
                    }
                    return;
                }
            };
            if std::mem::take(&mut self.accept_failing) {
                tracing::info!(listener = %self.addr, "IPFIX/TCP: accepting connections again");
            }
            let peer = SocketAddr::new(peer.ip().to_canonical(), peer.port());
            self.counters.connections.inc();
            if self.connections.len() >= self.max_connections {
                self.counters.drop_input("connection_limit", 0);
                let limit = self.max_connections;
                self.warn(
                    peer,
                    "connection_limit",
                    &format_args!("{limit} connections already open"),
                );
                continue; // dropping the stream closes it
            }
            if let Err(e) = stream.set_nonblocking(true) {
                tracing::warn!(peer = %peer, error = %e, "IPFIX/TCP: could not make a connection non-blocking");
                continue;
            }
            tracing::debug!(peer = %peer, "IPFIX/TCP: exporter connected");
            self.counters.open.inc();
            self.connections.push(Connection {
                stream,
                peer,
                partial: Vec::new(),
            });
        }
    }
}

/// Reads what `conn` has (up to its turn's worth), delivering every whole message.
fn read_turn(
    conn: &mut Connection,
    scratch: &mut [u8],
    on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    count: &mut usize,
    bytes: &mut usize,
) -> Turn {
    let peer = conn.peer;
    let mut deliver = |m: &[u8]| {
        *count += 1;
        *bytes += m.len();
        on_message(peer, m);
    };
    for _ in 0..READS_PER_TURN {
        // Whatever is held is less than one message, so there is always room for a byte more.
        let room = MAX_MESSAGE - conn.partial.len();
        let n = match conn.stream.read(&mut scratch[..room]) {
            Ok(0) => return Turn::Ended { error: None },
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Turn::Open,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Turn::Ended { error: Some(e) },
        };
        let garbage = if conn.partial.is_empty() {
            // The usual case: frame straight from the read, keep only an incomplete tail.
            // After garbage, the rest is kept only to count what was thrown away.
            let (used, garbage) = frame(&scratch[..n], &mut deliver);
            conn.partial.extend_from_slice(&scratch[used..n]);
            garbage
        } else {
            conn.partial.extend_from_slice(&scratch[..n]);
            let (used, garbage) = frame(&conn.partial, &mut deliver);
            conn.partial.drain(..used);
            garbage
        };
        if let Some(g) = garbage {
            return Turn::Garbage(g);
        }
        if conn.partial.is_empty() && conn.partial.capacity() > 4096 {
            // A large message passed; an idle exporter should not keep its buffer.
            conn.partial = Vec::new();
        }
    }
    Turn::Open
}

impl Transport for TcpTransport {
    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError> {
        self.receive_events(wait, &mut |d| {
            if let Delivery::Message(from, m) = d {
                on_message(from, m)
            }
        })
    }

    fn receive_events(
        &mut self,
        wait: Wait,
        on_event: &mut dyn FnMut(Delivery<'_>),
    ) -> Result<Received, TransportError> {
        self.pollfds.clear();
        let accepting = self.accept_resumes_at.is_none_or(|at| Instant::now() >= at);
        self.pollfds.push(libc::pollfd {
            // A negative descriptor is skipped by poll(2).
            fd: if accepting {
                self.listener.as_raw_fd()
            } else {
                -1
            },
            events: libc::POLLIN,
            revents: 0,
        });
        for c in &self.connections {
            self.pollfds.push(libc::pollfd {
                fd: c.stream.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let timeout = match wait {
            Wait::Briefly => POLL_INTERVAL.as_millis() as libc::c_int,
            Wait::Never => 0,
        };
        let ready = unsafe {
            libc::poll(
                self.pollfds.as_mut_ptr(),
                self.pollfds.len() as libc::nfds_t,
                timeout,
            )
        };
        if ready < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                return Ok(Received::Idle);
            }
            return Err(TransportError::Receive {
                addr: self.addr,
                source: e,
            });
        }
        let (mut count, mut bytes) = (0usize, 0usize);
        if ready > 0 {
            // Connections first (their indices match `pollfds` until the listener adds more).
            let mut i = 0;
            let mut fd_index = 1;
            while i < self.connections.len() {
                let revents = self.pollfds[fd_index].revents;
                fd_index += 1;
                if revents == 0 {
                    i += 1;
                    continue;
                }
                let conn = &mut self.connections[i];
                let turn = read_turn(
                    conn,
                    &mut self.scratch,
                    &mut |from, m| on_event(Delivery::Message(from, m)),
                    &mut count,
                    &mut bytes,
                );
                let (reason, detail): (&str, String) = match turn {
                    Turn::Open => {
                        i += 1;
                        continue;
                    }
                    Turn::Ended { error: None } if conn.partial.is_empty() => ("", String::new()),
                    Turn::Ended { error: None } => (
                        "partial_message",
                        format!("closed {} bytes into a message", conn.partial.len()),
                    ),
                    Turn::Ended { error: Some(e) } => (
                        if conn.partial.is_empty() {
                            ""
                        } else {
                            "read_error"
                        },
                        e.to_string(),
                    ),
                    Turn::Garbage(g) => (
                        g.reason(),
                        match g {
                            Garbage::BadVersion(v) => format!("version {v}, not IPFIX's 10"),
                            Garbage::BadLength(l) => {
                                format!("message length {l}, below the 16-byte header")
                            }
                        },
                    ),
                };
                // The connection is over: its order in the list does not matter, only that
                // the pollfd indices of those after it stay right, so keep the order.
                let conn = self.connections.remove(i);
                let peer = conn.peer;
                if !reason.is_empty() {
                    self.counters.drop_input(reason, conn.partial.len());
                    self.warn(peer, reason, &detail);
                } else {
                    tracing::debug!(peer = %peer, detail, "IPFIX/TCP: exporter disconnected");
                }
                self.counters.open.dec();
                drop(conn);
                on_event(Delivery::SessionEnded(peer));
            }
            if accepting && self.pollfds[0].revents != 0 {
                self.accept_resumes_at = None;
                self.accept();
            }
        }
        if count > 0 {
            Ok(Received::Messages { count, bytes })
        } else {
            Ok(Received::Idle)
        }
    }
}

impl Drop for TcpTransport {
    /// The listener stops: connections close, and messages they were in the middle of are lost.
    fn drop(&mut self) {
        for c in self.connections.drain(..) {
            if !c.partial.is_empty() {
                self.counters.drop_input("shutdown", c.partial.len());
            }
            self.counters.open.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::Shutdown;

    use super::*;

    /// An IPFIX message of `len` bytes (header included) whose payload bytes are `fill`.
    fn message(len: u16, fill: u8) -> Vec<u8> {
        let mut m = vec![fill; len as usize];
        m[0..2].copy_from_slice(&IPFIX_VERSION.to_be_bytes());
        m[2..4].copy_from_slice(&len.to_be_bytes());
        m
    }

    fn transport(max_connections: usize) -> (TcpTransport, TcpCounters) {
        let counters = TcpCounters::detached();
        let t = TcpTransport::bind(
            &TcpConfig {
                listen: "127.0.0.1:0".parse().unwrap(),
                max_connections,
            },
            counters.clone(),
        )
        .unwrap();
        (t, counters)
    }

    fn connect(t: &TcpTransport) -> TcpStream {
        let s = TcpStream::connect(t.local_addr().unwrap()).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// What one or more `receive` calls delivered, in order.
    #[derive(Debug, Default)]
    struct Got {
        messages: Vec<(SocketAddr, Vec<u8>)>,
        ended: Vec<SocketAddr>,
        /// Every event in order: `Some(message)` or `None` for a session's end.
        order: Vec<(SocketAddr, Option<Vec<u8>>)>,
    }

    /// One `receive_events` call, recording what it delivered.
    fn receive_all(t: &mut TcpTransport, got: &mut Got) {
        let before = got.messages.len();
        let received = t
            .receive_events(Wait::Briefly, &mut |d| match d {
                Delivery::Message(from, m) => {
                    got.messages.push((from, m.to_vec()));
                    got.order.push((from, Some(m.to_vec())));
                }
                Delivery::SessionEnded(from) => {
                    got.ended.push(from);
                    got.order.push((from, None));
                }
            })
            .unwrap();
        let delivered = &got.messages[before..];
        match received {
            Received::Messages { count, bytes } => {
                assert_eq!(count, delivered.len());
                assert_eq!(bytes, delivered.iter().map(|(_, m)| m.len()).sum::<usize>());
            }
            Received::Idle => assert!(delivered.is_empty()),
            Received::Ended => panic!("a listener does not end"),
        }
    }

    /// Receives until `done` says so (or fails the test after 5 s).
    fn receive_until(t: &mut TcpTransport, got: &mut Got, done: impl Fn(&Got) -> bool) {
        let start = Instant::now();
        while !done(got) {
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "gave up waiting; got {got:?}"
            );
            receive_all(t, got);
        }
    }

    fn reason_count(c: &TcpCounters, reason: &str) -> u64 {
        c.dropped.with_label_values(&[reason]).get()
    }

    #[test]
    fn framing_cuts_whole_messages_and_stops_at_garbage() {
        let mut stream = message(20, 1);
        stream.extend(message(16, 2));
        stream.extend(&message(30, 3)[..7]);
        let mut out = Vec::new();
        assert_eq!(frame(&stream, |m| out.push(m.to_vec())), (36, None));
        assert_eq!(out, vec![message(20, 1), message(16, 2)]);
        // A version other than 10 is seen from its first two bytes.
        let mut bad = message(20, 1);
        bad.extend([0, 9]);
        out.clear();
        assert_eq!(
            frame(&bad, |m| out.push(m.to_vec())),
            (20, Some(Garbage::BadVersion(9)))
        );
        assert_eq!(out.len(), 1);
        // A length below the header could never end.
        let mut short = message(16, 0);
        short[2..4].copy_from_slice(&15u16.to_be_bytes());
        assert_eq!(frame(&short, |_| {}), (0, Some(Garbage::BadLength(15))));
        // Too little to tell: wait for more.
        assert_eq!(frame(&[0], |_| {}), (0, None));
        assert_eq!(frame(&[0, 10, 0], |_| {}), (0, None));
        assert_eq!(frame(&[], |_| {}), (0, None));
    }

    #[test]
    fn a_message_split_across_writes_is_delivered_whole() {
        let (mut t, counters) = transport(4);
        let mut s = connect(&t);
        let m = message(1000, 7);
        let mut got = Got::default();
        // Header split too: 1 byte, then 2, then the rest in odd pieces, each its own segment
        // (received before the next is sent).
        let cuts = [0, 1, 3, 17, 400, 999, 1000];
        for w in cuts.windows(2) {
            s.write_all(&m[w[0]..w[1]]).unwrap();
            if w[1] < m.len() {
                // The transport holds each piece, and delivers nothing, before the next comes.
                let start = Instant::now();
                while t.connections.first().is_none_or(|c| c.partial.len() < w[1]) {
                    assert!(start.elapsed() < Duration::from_secs(5), "piece not read");
                    receive_all(&mut t, &mut got);
                }
                assert!(got.messages.is_empty(), "delivered before whole: {got:?}");
                assert_eq!(t.connections[0].partial, m[..w[1]]);
            }
        }
        receive_until(&mut t, &mut got, |g| !g.messages.is_empty());
        assert_eq!(got.messages, vec![(s.local_addr().unwrap(), m)]);
        assert_eq!(counters.connections.get(), 1);
        assert_eq!(counters.open.get(), 1);
    }

    #[test]
    fn two_messages_in_one_write_are_delivered_separately() {
        let (mut t, _) = transport(4);
        let mut s = connect(&t);
        let (a, b) = (message(100, 1), message(16, 2));
        let c = message(300, 3);
        let mut one_write = a.clone();
        one_write.extend(&b);
        one_write.extend(&c[..50]);
        s.write_all(&one_write).unwrap();
        let mut got = Got::default();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 2);
        s.write_all(&c[50..]).unwrap();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 3);
        let from = s.local_addr().unwrap();
        assert_eq!(got.messages, vec![(from, a), (from, b), (from, c)]);
    }

    #[test]
    fn close_mid_message_drops_and_counts_it_after_delivering_whole_ones() {
        let (mut t, counters) = transport(4);
        let mut s = connect(&t);
        let from = s.local_addr().unwrap();
        let (a, b) = (message(64, 1), message(200, 2));
        s.write_all(&a).unwrap();
        s.write_all(&b[..150]).unwrap();
        s.shutdown(Shutdown::Both).unwrap();
        drop(s);
        let mut got = Got::default();
        receive_until(&mut t, &mut got, |g| !g.ended.is_empty());
        assert_eq!(got.order, vec![(from, Some(a)), (from, None)]);
        assert_eq!(reason_count(&counters, "partial_message"), 1);
        assert_eq!(
            counters
                .dropped_bytes
                .with_label_values(&["partial_message"])
                .get(),
            150
        );
        assert_eq!(counters.open.get(), 0);
        assert_eq!(t.open_connections(), 0);

        // A clean close between messages loses nothing.
        let mut s = connect(&t);
        let from = s.local_addr().unwrap();
        s.write_all(&message(20, 9)).unwrap();
        drop(s);
        let mut got = Got::default();
        receive_until(&mut t, &mut got, |g| !g.ended.is_empty());
        assert_eq!(got.order, vec![(from, Some(message(20, 9))), (from, None)]);
        assert_eq!(reason_count(&counters, "partial_message"), 1);
        assert_eq!(counters.connections.get(), 2);
    }

    #[test]
    fn garbage_peer_is_disconnected_while_another_keeps_delivering() {
        let (mut t, counters) = transport(4);
        let mut good = connect(&t);
        let mut bad = connect(&t);
        let mut bad_length = connect(&t);
        let good_from = good.local_addr().unwrap();
        let mut got = Got::default();
        good.write_all(&message(40, 1)).unwrap();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 1);
        // One whole message, then HTTP: the message is delivered, the peer cut off.
        let mut stream = message(24, 5);
        stream.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n");
        bad.write_all(&stream).unwrap();
        let mut zero = message(16, 0);
        zero[2..4].copy_from_slice(&0u16.to_be_bytes());
        bad_length.write_all(&zero).unwrap();
        receive_until(&mut t, &mut got, |g| g.ended.len() == 2);
        assert_eq!(reason_count(&counters, "bad_version"), 1);
        assert_eq!(reason_count(&counters, "bad_length"), 1);
        assert_eq!(t.open_connections(), 1);
        assert_eq!(counters.open.get(), 1);
        // The peers really were disconnected: their reads see the end of the stream.
        for peer in [&mut bad, &mut bad_length] {
            peer.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut buf = [0u8; 8];
            match peer.read(&mut buf) {
                Ok(0) => {}
                Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
                other => panic!("garbage peer still connected: {other:?}"),
            }
        }
        // The good connection goes on, a message split over the garbage's aftermath.
        let m = message(500, 8);
        good.write_all(&m[..3]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
        good.write_all(&m[3..]).unwrap();
        receive_until(&mut t, &mut got, |g| {
            g.messages.iter().filter(|(f, _)| *f == good_from).count() == 2
        });
        let from_good: Vec<_> = got
            .messages
            .iter()
            .filter(|(f, _)| *f == good_from)
            .map(|(_, m)| m.clone())
            .collect();
        assert_eq!(from_good, vec![message(40, 1), m]);
        let bad_from = bad.local_addr().unwrap();
        assert!(got.messages.contains(&(bad_from, message(24, 5))));
        assert!(got.ended.contains(&bad_from));
        assert!(!got.ended.contains(&good_from));
    }

    #[test]
    fn connections_beyond_the_limit_are_refused_and_counted() {
        let (mut t, counters) = transport(2);
        let mut a = connect(&t);
        let mut b = connect(&t);
        let mut got = Got::default();
        a.write_all(&message(16, 1)).unwrap();
        b.write_all(&message(16, 2)).unwrap();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 2);
        let mut c = connect(&t);
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let start = Instant::now();
        while reason_count(&counters, "connection_limit") == 0 {
            assert!(start.elapsed() < Duration::from_secs(5));
            t.receive(Wait::Briefly, &mut |_, _| {}).unwrap();
        }
        let mut buf = [0u8; 1];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
        assert_eq!(t.open_connections(), 2);
        assert_eq!(counters.connections.get(), 3);
        // The two admitted go on.
        a.write_all(&message(17, 3)).unwrap();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 3);
        // When one leaves, a newcomer is admitted.
        drop(b);
        receive_until(&mut t, &mut got, |g| g.ended.len() == 1);
        let mut d = connect(&t);
        d.write_all(&message(18, 4)).unwrap();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 4);
        assert_eq!(got.messages[3], (d.local_addr().unwrap(), message(18, 4)));
    }

    #[test]
    fn a_stopped_listener_counts_the_partial_messages_it_held() {
        let (mut t, counters) = transport(2);
        let mut a = connect(&t);
        a.write_all(&message(100, 1)[..40]).unwrap();
        let start = Instant::now();
        while t.connections.first().is_none_or(|c| c.partial.is_empty()) {
            assert!(start.elapsed() < Duration::from_secs(5));
            t.receive(Wait::Briefly, &mut |_, _| panic!("nothing whole was sent"))
                .unwrap();
        }
        drop(t);
        assert_eq!(reason_count(&counters, "shutdown"), 1);
        assert_eq!(counters.open.get(), 0);
    }

    #[test]
    fn messages_of_the_largest_size_pass() {
        let (mut t, _) = transport(2);
        let mut s = connect(&t);
        let big = message(u16::MAX, 0xab);
        let mut stream = big.clone();
        stream.extend(&big);
        stream.extend(message(16, 1));
        let writer = std::thread::spawn(move || {
            s.write_all(&stream).unwrap();
            s
        });
        let mut got = Got::default();
        receive_until(&mut t, &mut got, |g| g.messages.len() == 3);
        let _s = writer.join().unwrap();
        assert_eq!(got.messages[0].1, big);
        assert_eq!(got.messages[1].1, big);
        assert_eq!(got.messages[2].1, message(16, 1));
        assert!(t.connections[0].partial.capacity() <= 4096);
    }
}
