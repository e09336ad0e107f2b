//! The UDP listener for NetFlow v5/v9 and IPFIX: receives datagrams in batches (`recvmmsg`),
//! decodes them on its own thread, and hands full or aged [`FlowBatch`]es downstream.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hawking_schemas::flow::FlowBatch;
use serde::{Deserialize, Serialize};
use socket2::{Domain, Protocol, Socket, Type};

use crate::metrics::CollectorMetrics;
use crate::netflow::state::{StateError, TemplateState};
use crate::netflow::{DecoderConfig, NetflowDecoder};

/// Configuration of the NetFlow/IPFIX listener.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetflowListenerConfig {
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
    /// Decoder limits (scopes, templates, held data).
    pub decoder: DecoderConfig,
}

impl Default for NetflowListenerConfig {
    fn default() -> Self {
        NetflowListenerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 2055)),
            receive_buffer_bytes: 32 << 20,
            batch_flows: 65536,
            batch_max_delay_ms: 1000,
            decoder: DecoderConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("binding NetFlow listener on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error("receiving on {addr}: {source}")]
    Receive { addr: SocketAddr, source: io::Error },
    #[error("invalid decoder configuration: {0}")]
    Config(String),
    #[error(transparent)]
    State(#[from] StateError),
}

/// Totals of one listener run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenerStats {
    pub packets: u64,
    pub flows: u64,
    pub batches: u64,
    pub templates_restored: usize,
}

/// A bound listener, ready to run on its own thread.
pub struct NetflowListener {
    socket: UdpSocket,
    config: NetflowListenerConfig,
    state_path: Option<PathBuf>,
    decoder: NetflowDecoder,
    templates_restored: usize,
}

const MAX_DATAGRAM: usize = 65536;
const RECV_BATCH: usize = 64;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Pause after a short read so the next `recvmmsg` returns a fuller batch.
const COALESCE_WAIT: Duration = Duration::from_micros(500);
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(1);
/// Upper bound on draining the socket at shutdown when exporters keep sending.
const SHUTDOWN_DRAIN_LIMIT: Duration = Duration::from_secs(2);

impl NetflowListener {
    /// Binds the socket and restores persisted template state from `state_path`, so bind and
    /// state errors surface at start-up, not on the listener thread.
    pub fn bind(
        config: NetflowListenerConfig,
        state_path: Option<PathBuf>,
    ) -> Result<Self, ListenerError> {
        let addr = config.listen;
        let bind_err = |source| ListenerError::Bind { addr, source };
        let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
            .map_err(bind_err)?;
        if addr.is_ipv6() {
            socket.set_only_v6(false).map_err(bind_err)?;
        }
        socket.set_reuse_address(true).map_err(bind_err)?;
        set_receive_buffer(&socket, config.receive_buffer_bytes);
        enable_drop_counter(&socket);
        socket.bind(&addr.into()).map_err(bind_err)?;
        socket
            .set_read_timeout(Some(POLL_INTERVAL))
            .map_err(bind_err)?;
        let mut decoder = NetflowDecoder::new(config.decoder.clone())
            .map_err(|e| ListenerError::Config(e.to_string()))?;
        let mut templates_restored = 0;
        if let Some(path) = &state_path
            && let Some(state) = TemplateState::load(path)?
        {
            templates_restored = decoder.restore(state);
            tracing::info!(templates = templates_restored, path = %path.display(), "restored NetFlow template state");
        }
        Ok(NetflowListener {
            socket: socket.into(),
            config,
            state_path,
            decoder,
            templates_restored,
        })
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.socket.local_addr()
    }

    /// Receives and decodes until `shutdown` is set, then drains what the kernel already
    /// accepted, hands over the last batch and saves template state. `sink` receives every
    /// batch and returns false when downstream is gone (the listener then stops).
    pub fn run(
        mut self,
        mut sink: impl FnMut(FlowBatch) -> bool,
        metrics: &CollectorMetrics,
        shutdown: &AtomicBool,
    ) -> Result<ListenerStats, ListenerError> {
        let addr = self.config.listen;
        let mut rx = BatchReceiver::new();
        let mut stats = ListenerStats {
            templates_restored: self.templates_restored,
            ..Default::default()
        };
        let batch_flows = self.config.batch_flows.max(1);
        let max_delay = Duration::from_millis(self.config.batch_max_delay_ms);
        let mut batch = FlowBatch::with_capacity(batch_flows);
        let mut batch_since = Instant::now();
        let mut housekeeping_at = Instant::now();
        let mut last_drop_count = 0u32;
        let mut drain_deadline: Option<Instant> = None;
        let mut downstream_alive = true;

        while downstream_alive {
            let stopping = shutdown.load(Ordering::Relaxed);
            if stopping && drain_deadline.is_none() {
                drain_deadline = Some(Instant::now() + SHUTDOWN_DRAIN_LIMIT);
            }
            let flags = if stopping {
                libc::MSG_DONTWAIT
            } else {
                libc::MSG_WAITFORONE
            };
            match rx.receive(&self.socket, flags) {
                Ok(n) => {
                    let now_us = unix_micros();
                    for i in 0..n {
                        let (from, data) = rx.datagram(i);
                        if !batch.has_content() {
                            batch_since = Instant::now();
                        }
                        self.decoder.decode(from, data, now_us, &mut batch);
                    }
                    stats.packets += n as u64;
                    if let Some(drops) = rx.kernel_drops() {
                        metrics
                            .socket_drops
                            .inc_by(drops.wrapping_sub(last_drop_count) as u64);
                        last_drop_count = drops;
                    }
                    if n < RECV_BATCH / 4 && !stopping {
                        // A short read means the socket is nearly empty: let datagrams
                        // accumulate instead of waking per datagram. Costs at most this much
                        // latency; the receive buffer absorbs the arrivals meanwhile.
                        std::thread::sleep(COALESCE_WAIT);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    if stopping {
                        break;
                    }
                }
                Err(source) => return Err(ListenerError::Receive { addr, source }),
            }
            if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                break;
            }
            if batch.len() >= batch_flows
                || (batch.has_content() && batch_since.elapsed() >= max_delay)
            {
                stats.flows += batch.len() as u64;
                stats.batches += 1;
                let full = std::mem::replace(&mut batch, FlowBatch::with_capacity(batch_flows));
                downstream_alive = sink(full);
            }
            if housekeeping_at.elapsed() >= HOUSEKEEPING_INTERVAL {
                housekeeping_at = Instant::now();
                self.publish(metrics);
                self.save_state_if_changed();
            }
        }
        if batch.has_content() && downstream_alive {
            stats.flows += batch.len() as u64;
            stats.batches += 1;
            sink(batch);
        }
        self.publish(metrics);
        if let Some(path) = &self.state_path {
            self.decoder.state().save(path)?;
        }
        Ok(stats)
    }

    fn publish(&mut self, metrics: &CollectorMetrics) {
        for (exporter, counters) in self.decoder.drain_counters() {
            metrics.add(exporter, &counters);
        }
        metrics.pending_sets.set(self.decoder.pending().0 as i64);
        metrics.scopes.set(self.decoder.scope_count() as i64);
    }

    fn save_state_if_changed(&mut self) {
        let Some(path) = &self.state_path else { return };
        if let Some(state) = self.decoder.take_changed_state()
            && let Err(e) = state.save(path)
        {
            tracing::warn!(error = %e, "could not persist NetFlow template state; will retry on the next change");
        }
    }
}

fn unix_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

fn set_receive_buffer(socket: &Socket, bytes: usize) {
    // SO_RCVBUFFORCE exceeds net.core.rmem_max when privileged; otherwise the kernel caps
    // SO_RCVBUF at rmem_max, which is still the best we can do.
    let value = bytes.min(i32::MAX as usize) as libc::c_int;
    let forced = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            &value as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if forced != 0
        && let Err(e) = socket.set_recv_buffer_size(bytes)
    {
        tracing::warn!(error = %e, bytes, "could not set the NetFlow socket receive buffer");
    }
}

fn enable_drop_counter(socket: &Socket) {
    let one: libc::c_int = 1;
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(socket),
            libc::SOL_SOCKET,
            libc::SO_RXQ_OVFL,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

const CONTROL_LEN: usize = 64;

/// Buffers for one `recvmmsg` call: datagrams, source addresses and control messages (the
/// kernel's cumulative drop counter). Lives on the listener thread; its raw pointers point
/// into its own heap buffers, which never move.
struct BatchReceiver {
    data: Vec<u8>,
    addrs: Vec<libc::sockaddr_storage>,
    // Owned only so that the pointers in `headers` stay valid.
    #[allow(dead_code)]
    control: Vec<[u8; CONTROL_LEN]>,
    #[allow(dead_code)]
    iovecs: Vec<libc::iovec>,
    headers: Vec<libc::mmsghdr>,
    received: usize,
}

impl BatchReceiver {
    fn new() -> Self {
        let mut data = vec![0u8; RECV_BATCH * MAX_DATAGRAM];
        let mut addrs: Vec<libc::sockaddr_storage> =
            vec![unsafe { std::mem::zeroed() }; RECV_BATCH];
        let mut control = vec![[0u8; CONTROL_LEN]; RECV_BATCH];
        let mut iovecs: Vec<libc::iovec> = (0..RECV_BATCH)
            .map(|i| libc::iovec {
                iov_base: data[i * MAX_DATAGRAM..].as_mut_ptr() as *mut libc::c_void,
                iov_len: MAX_DATAGRAM,
            })
            .collect();
        let headers = (0..RECV_BATCH)
            .map(|i| {
                let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
                h.msg_hdr.msg_name = &mut addrs[i] as *mut _ as *mut libc::c_void;
                h.msg_hdr.msg_iov = &mut iovecs[i];
                h.msg_hdr.msg_iovlen = 1;
                h.msg_hdr.msg_control = control[i].as_mut_ptr() as *mut libc::c_void;
                h
            })
            .collect();
        BatchReceiver {
            data,
            addrs,
            control,
            iovecs,
            headers,
            received: 0,
        }
    }

    fn receive(&mut self, socket: &UdpSocket, flags: libc::c_int) -> io::Result<usize> {
        for h in &mut self.headers {
            h.msg_hdr.msg_namelen =
                std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
            h.msg_hdr.msg_controllen = CONTROL_LEN as _;
            h.msg_len = 0;
        }
        let n = unsafe {
            libc::recvmmsg(
                std::os::fd::AsRawFd::as_raw_fd(socket),
                self.headers.as_mut_ptr(),
                RECV_BATCH as libc::c_uint,
                flags,
                std::ptr::null_mut(),
            )
        };
        if n < 0 {
            self.received = 0;
            return Err(io::Error::last_os_error());
        }
        self.received = n as usize;
        Ok(self.received)
    }

    fn datagram(&self, i: usize) -> (SocketAddr, &[u8]) {
        let len = (self.headers[i].msg_len as usize).min(MAX_DATAGRAM);
        let from =
            sockaddr_to_std(&self.addrs[i]).unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        (from, &self.data[i * MAX_DATAGRAM..i * MAX_DATAGRAM + len])
    }

    /// The kernel's cumulative count of datagrams dropped on this socket, from the last
    /// datagram's control message.
    fn kernel_drops(&self) -> Option<u32> {
        let last = self.received.checked_sub(1)?;
        let hdr = &self.headers[last].msg_hdr;
        unsafe {
            let mut cmsg = libc::CMSG_FIRSTHDR(hdr);
            while !cmsg.is_null() {
                if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SO_RXQ_OVFL
                {
                    return Some(std::ptr::read_unaligned(libc::CMSG_DATA(cmsg) as *const u32));
                }
                cmsg = libc::CMSG_NXTHDR(hdr, cmsg);
            }
        }
        None
    }
}

fn sockaddr_to_std(ss: &libc::sockaddr_storage) -> Option<SocketAddr> {
    match ss.ss_family as libc::c_int {
        libc::AF_INET => {
            let sin = unsafe { &*(ss as *const _ as *const libc::sockaddr_in) };
            let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(sin.sin_port))))
        }
        libc::AF_INET6 => {
            let sin6 = unsafe { &*(ss as *const _ as *const libc::sockaddr_in6) };
            let ip = std::net::Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            // A dual-stack socket reports IPv4 exporters as IPv4-mapped: name them as IPv4.
            Some(SocketAddr::new(
                ip.to_canonical(),
                u16::from_be(sin6.sin6_port),
            ))
        }
        _ => None,
    }
}

// The raw pointers are only dereferenced by the kernel during `recvmmsg` on the owning thread.
unsafe impl Send for BatchReceiver {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_receiver_reports_sources_and_lengths() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        server
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..3u8 {
            client
                .send_to(&vec![i; 10 + i as usize], server.local_addr().unwrap())
                .unwrap();
        }
        let mut rx = BatchReceiver::new();
        let mut got = vec![];
        while got.len() < 3 {
            let n = rx.receive(&server, libc::MSG_WAITFORONE).unwrap();
            for i in 0..n {
                let (from, data) = rx.datagram(i);
                assert_eq!(from, client.local_addr().unwrap());
                got.push(data.to_vec());
            }
        }
        assert_eq!(got, vec![vec![0; 10], vec![1; 11], vec![2; 12]]);
    }
}
