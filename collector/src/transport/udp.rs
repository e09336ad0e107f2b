//! The UDP transport: datagrams received in batches (`recvmmsg`, up to 64 per system call)
//! into buffers reused for the transport's life, with the kernel's count of datagrams it
//! dropped for a full socket buffer.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use prometheus::IntCounter;
use socket2::{Domain, Protocol, Socket, Type};

use super::{Received, Transport, TransportError, Wait};

/// A UDP listening socket (part of each UDP source's configuration).
#[derive(Clone, Copy, Debug)]
pub struct UdpConfig {
    /// Address to listen on. `[::]:PORT` accepts both address families.
    pub listen: SocketAddr,
    /// Socket receive buffer in bytes; bursts beyond it are dropped by the kernel (and counted).
    /// Raised past the system's `rmem_max` when the process may (CAP_NET_ADMIN).
    pub receive_buffer_bytes: usize,
}

const MAX_DATAGRAM: usize = 65536;
const RECV_BATCH: usize = 64;
const POLL_INTERVAL: Duration = Duration::from_millis(100);
/// Pause after a short read so the next `recvmmsg` returns a fuller batch.
const COALESCE_WAIT: Duration = Duration::from_micros(500);

/// A bound UDP socket and its receive buffers.
pub struct UdpTransport {
    socket: UdpSocket,
    addr: SocketAddr,
    rx: BatchReceiver,
    /// The kernel's drop count at the last receive, and where increases are counted.
    kernel_drops: u32,
    drops: IntCounter,
}

impl UdpTransport {
    /// Binds `config.listen`; datagrams the kernel drops are added to `drops`.
    pub fn bind(config: &UdpConfig, drops: IntCounter) -> Result<Self, TransportError> {
        let addr = config.listen;
        let bind_err = |source| TransportError::Bind { addr, source };
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
        let socket: UdpSocket = socket.into();
        let addr = socket.local_addr().map_err(bind_err)?;
        Ok(UdpTransport {
            socket,
            addr,
            rx: BatchReceiver::new(),
            kernel_drops: 0,
            drops,
        })
    }
}

impl Transport for UdpTransport {
    fn local_addr(&self) -> Option<SocketAddr> {
        Some(self.addr)
    }

    fn receive(
        &mut self,
        wait: Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<Received, TransportError> {
        let flags = match wait {
            Wait::Briefly => libc::MSG_WAITFORONE,
            Wait::Never => libc::MSG_DONTWAIT,
        };
        match self.rx.receive(&self.socket, flags) {
            Ok(n) => {
                let mut bytes = 0;
                for i in 0..n {
                    let (from, data) = self.rx.datagram(i);
                    bytes += data.len();
                    on_message(from, data);
                }
                if let Some(drops) = self.rx.kernel_drops() {
                    self.drops
                        .inc_by(drops.wrapping_sub(self.kernel_drops) as u64);
                    self.kernel_drops = drops;
                }
                if n < RECV_BATCH / 4 && wait == Wait::Briefly {
                    // A short read means the socket is nearly empty: let datagrams
                    // accumulate instead of waking per datagram. Costs at most this much
                    // latency; the receive buffer absorbs the arrivals meanwhile.
                    std::thread::sleep(COALESCE_WAIT);
                }
                Ok(Received::Messages { count: n, bytes })
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(Received::Idle)
            }
            Err(source) => Err(TransportError::Receive {
                addr: self.addr,
                source,
            }),
        }
    }
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
