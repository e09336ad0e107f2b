//! Linux conntrack events over netlink (ctnetlink): the source of the node agent's SNAT
//! translations. On a Kubernetes node every pod connection that leaves through a masquerade
//! rule gets a conntrack entry whose original tuple carries the pod's address and port and
//! whose reply tuple carries the node address and port the outside world sees. Subscribing to
//! the NEW and DESTROY multicast groups of `NETLINK_NETFILTER` tells us when such a
//! translation starts and ends; a dump (`IPCTNL_MSG_CT_GET` + `NLM_F_DUMP`) lists the ones that
//! already exist when the agent starts.
//!
//! Wire format (include/uapi/linux/netfilter/nfnetlink_conntrack.h): after the `nlmsghdr`
//! comes `struct nfgenmsg { u8 family; u8 version; be16 res_id }` and then netlink attributes,
//! nested for tuples. Header fields are in host byte order, attribute payloads in network byte
//! order.
//!
//! Kernel behaviour worth knowing:
//! - `net.netfilter.nf_conntrack_events` defaults to 2 on current kernels: the event extension
//!   is only attached to connections created while some ctnetlink listener exists in that
//!   namespace. Connections created before the first subscriber therefore never produce a
//!   DESTROY event; [`ConntrackEvents::dump_existing`] still lists them, and the caller must
//!   age them out itself (or the node must run with `nf_conntrack_events=1`).
//! - When the receive buffer overflows the kernel drops events and the next `recv` fails with
//!   `ENOBUFS`; that is counted in [`ConntrackEvents::overruns`], not returned as an error. After
//!   an overrun the caller's view may miss translations, so a fresh dump is the way to resync.

use std::fs::File;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

// netlink (include/uapi/linux/netlink.h)
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
const NLM_F_CREATE: u16 = 0x400;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_F_NET_BYTEORDER: u16 = 0x4000;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | NLA_F_NET_BYTEORDER);

// nfnetlink (include/uapi/linux/netfilter/nfnetlink.h, nfnetlink_compat.h)
const NFGENMSG_LEN: usize = 4;
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const NFNLGRP_CONNTRACK_NEW: u32 = 1;
const NFNLGRP_CONNTRACK_DESTROY: u32 = 3;

// ctnetlink (include/uapi/linux/netfilter/nfnetlink_conntrack.h)
const IPCTNL_MSG_CT_NEW: u16 = 0;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_STATUS: u16 = 3;
const CTA_ID: u16 = 12;
const CTA_ZONE: u16 = 18;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;

/// `IPS_SRC_NAT` of `enum ip_conntrack_status` (include/uapi/linux/netfilter/nf_conntrack_common.h).
pub const IPS_SRC_NAT: u32 = 1 << 4;
/// `IPS_DST_NAT` of `enum ip_conntrack_status`.
pub const IPS_DST_NAT: u32 = 1 << 5;

/// Largest datagram read at once. Event datagrams are at most a page; dump datagrams at most
/// 32 KiB on current kernels. A longer one is read truncated and its cut message counted
/// malformed.
const RECV_BUFFER: usize = 64 * 1024;
/// Datagrams read by one [`ConntrackEvents::recv`] call at most, so that a flood of events cannot
/// keep a caller from its other duties (the rest stays queued for the next call).
const MAX_DATAGRAMS_PER_RECV: usize = 4096;
/// Longest a table dump may take before it is given up.
const DUMP_TIMEOUT: Duration = Duration::from_secs(10);

/// What happened to a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ConntrackEventKind {
    /// A new connection was confirmed (or, from [`ConntrackEvents::dump_existing`], exists now).
    New,
    /// The connection was removed (timed out, closed, or deleted).
    Destroy,
}

/// One conntrack event (IPv4 or IPv6), as tuples of the original and reply direction.
///
/// For a source-NATed pod connection the original tuple is `pod ip:port → remote ip:port` and
/// the reply tuple `remote ip:port → node ip:port`: the outside world sees
/// `reply_dst:reply_dst_port`. Ports are 0 for protocols without ports (ICMP ids are not
/// reported).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConntrackEvent {
    pub kind: ConntrackEventKind,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, ...).
    pub protocol: u8,
    pub orig_src: IpAddr,
    pub orig_dst: IpAddr,
    pub orig_src_port: u16,
    pub orig_dst_port: u16,
    pub reply_src: IpAddr,
    pub reply_dst: IpAddr,
    pub reply_src_port: u16,
    pub reply_dst_port: u16,
    /// `CTA_STATUS` bits (`IPS_*`), 0 when the message carried none.
    pub status: u32,
    /// `CTA_ID`: the kernel's identifier of the entry, equal in its NEW and DESTROY events.
    pub id: Option<u32>,
    /// `CTA_ZONE`, when the entry is in a non-default conntrack zone.
    pub zone: Option<u16>,
}

impl ConntrackEvent {
    /// The connection was source-NATed (IPS_SRC_NAT status bit set, or the reply tuple's
    /// destination differs from the original source).
    pub fn is_snat(&self) -> bool {
        self.status & IPS_SRC_NAT != 0 || self.reply_dst != self.orig_src
    }
}

/// Why subscribing, receiving or dumping failed.
#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening network namespace {path}: {source}")]
    OpenNamespace { path: PathBuf, source: io::Error },
    #[error("entering network namespace {path} (setns needs CAP_SYS_ADMIN): {source}")]
    EnterNamespace { path: PathBuf, source: io::Error },
    #[error("creating a NETLINK_NETFILTER socket in {namespace}: {source}")]
    Socket {
        namespace: String,
        source: io::Error,
    },
    #[error(
        "subscribing to conntrack events in {namespace} (needs CAP_NET_ADMIN and ctnetlink): {source}"
    )]
    Subscribe {
        namespace: String,
        source: io::Error,
    },
    #[error(
        "setting a {bytes}-byte receive buffer on the conntrack socket in {namespace}: {source}"
    )]
    ReceiveBuffer {
        namespace: String,
        bytes: usize,
        source: io::Error,
    },
    #[error("receiving conntrack events in {namespace}: {source}")]
    Receive {
        namespace: String,
        source: io::Error,
    },
    #[error("dumping the conntrack table of {namespace}: {source}")]
    Dump {
        namespace: String,
        source: io::Error,
    },
}

/// What [`parse_datagram`] found in one datagram.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ParseStats {
    /// Events appended to the output.
    pub events: usize,
    /// Messages (or the unparseable rest of the datagram) skipped because they were truncated
    /// or inconsistent.
    pub malformed: usize,
    /// Well-formed messages that are not events we report: conntrack updates (CT_NEW without
    /// NLM_F_CREATE), other message types and subsystems, ACKs, NOOPs.
    pub ignored: usize,
    /// An `NLMSG_DONE` ended the datagram (the end of a dump).
    pub done: bool,
    /// The errno (positive) of an `NLMSG_ERROR` message that is not an ACK.
    pub error: Option<i32>,
}

/// A subscription to the NEW and DESTROY conntrack events of one network namespace.
pub struct ConntrackEvents {
    fd: OwnedFd,
    /// The namespace the socket lives in (kept open so dumps reach the same one even when its
    /// bind mount goes away); `None` for the caller's own namespace.
    netns: Option<(File, PathBuf)>,
    namespace: String,
    recv_buffer_bytes: usize,
    buf: Vec<u8>,
    overruns: u64,
    malformed: AtomicU64,
    seq: AtomicU32,
}

impl std::fmt::Debug for ConntrackEvents {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConntrackEvents")
            .field("namespace", &self.namespace)
            .field("fd", &self.fd.as_raw_fd())
            .field("overruns", &self.overruns)
            .field("malformed", &self.malformed())
            .finish()
    }
}

impl ConntrackEvents {
    /// Subscribes to NEW and DESTROY events (multicast groups NFNLGRP_CONNTRACK_NEW=1,
    /// NFNLGRP_CONNTRACK_DESTROY=3) of the network namespace at `netns` (a path such as
    /// /run/netns/x or /proc/PID/ns/net), or of the caller's own namespace when None.
    ///
    /// Entering another namespace does not move the calling thread: the socket is created on a
    /// short-lived thread that entered it (a socket stays in the namespace it was created in).
    /// The receive buffer is set to `recv_buffer_bytes` with SO_RCVBUFFORCE (past
    /// `net.core.rmem_max`, needs CAP_NET_ADMIN), falling back to SO_RCVBUF; 0 keeps the
    /// default. Needs CAP_NET_ADMIN in the namespace (and CAP_SYS_ADMIN to enter another).
    pub fn subscribe(
        netns: Option<&Path>,
        recv_buffer_bytes: usize,
    ) -> Result<Self, ConntrackError> {
        let (netns_file, namespace) = match netns {
            Some(path) => {
                let file = File::open(path).map_err(|source| ConntrackError::OpenNamespace {
                    path: path.to_path_buf(),
                    source,
                })?;
                (
                    Some((file, path.to_path_buf())),
                    format!("network namespace {}", path.display()),
                )
            }
            None => (None, "the caller's network namespace".to_string()),
        };
        let groups = (1 << (NFNLGRP_CONNTRACK_NEW - 1)) | (1 << (NFNLGRP_CONNTRACK_DESTROY - 1));
        let fd = in_namespace(netns_file.as_ref().map(|(f, p)| (f, p.as_path())), || {
            open_netlink(&namespace, groups, recv_buffer_bytes)
        })??;
        Ok(ConntrackEvents {
            fd,
            netns: netns_file,
            namespace,
            recv_buffer_bytes,
            buf: vec![0; RECV_BUFFER],
            overruns: 0,
            malformed: AtomicU64::new(0),
            seq: AtomicU32::new(1),
        })
    }

    /// Waits up to `timeout` for events and appends every event of the datagrams that arrived,
    /// draining what is queued without blocking after the first. Returns how many were
    /// appended (0 when the timeout passed without one).
    ///
    /// `ENOBUFS` (the kernel dropped events because we were slow) is not an error: it is
    /// counted in [`overruns`](Self::overruns) and reading continues.
    pub fn recv(
        &mut self,
        timeout: Duration,
        out: &mut Vec<ConntrackEvent>,
    ) -> Result<usize, ConntrackError> {
        let start_len = out.len();
        let deadline = Instant::now() + timeout;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let ready = poll_readable(self.fd.as_raw_fd(), remaining).map_err(|source| {
                ConntrackError::Receive {
                    namespace: self.namespace.clone(),
                    source,
                }
            })?;
            if ready {
                self.drain(out)?;
            }
            if out.len() > start_len || Instant::now() >= deadline {
                return Ok(out.len() - start_len);
            }
        }
    }

    /// Reads every queued datagram (up to [`MAX_DATAGRAMS_PER_RECV`]) without blocking.
    fn drain(&mut self, out: &mut Vec<ConntrackEvent>) -> Result<(), ConntrackError> {
        for _ in 0..MAX_DATAGRAMS_PER_RECV {
            match recv_datagram(self.fd.as_raw_fd(), &mut self.buf) {
                Ok(len) => {
                    let stats = parse(&self.buf[..len.min(self.buf.len())], out, false);
                    let mut malformed = stats.malformed as u64;
                    if len > self.buf.len() && stats.malformed == 0 {
                        malformed += 1;
                    }
                    if malformed > 0 {
                        self.malformed.fetch_add(malformed, Ordering::Relaxed);
                        tracing::debug!(
                            namespace = %self.namespace,
                            malformed,
                            datagram_bytes = len,
                            "skipped malformed conntrack messages"
                        );
                    }
                }
                Err(e) => match e.raw_os_error() {
                    Some(libc::EAGAIN) => return Ok(()),
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) => {
                        self.overruns += 1;
                        tracing::debug!(
                            namespace = %self.namespace,
                            overruns = self.overruns,
                            "conntrack event socket overrun: the kernel dropped events"
                        );
                        continue;
                    }
                    _ => {
                        return Err(ConntrackError::Receive {
                            namespace: self.namespace.clone(),
                            source: e,
                        });
                    }
                },
            }
        }
        Ok(())
    }

    /// Lists the connections that exist now, IPv4 and IPv6 (`IPCTNL_MSG_CT_GET` with
    /// `NLM_F_DUMP` on a separate socket in the same namespace), as `New` events, so an agent
    /// that starts late learns translations already in place. Returns how many were appended.
    ///
    /// Subscribe first, then dump: a connection created in between is then reported twice
    /// (harmless) rather than missed.
    pub fn dump_existing(&self, out: &mut Vec<ConntrackEvent>) -> Result<usize, ConntrackError> {
        let dump_err = |source: io::Error| ConntrackError::Dump {
            namespace: self.namespace.clone(),
            source,
        };
        let netns = self.netns.as_ref().map(|(f, p)| (f, p.as_path()));
        let fd = in_namespace(netns, || {
            open_netlink(&self.namespace, 0, self.recv_buffer_bytes)
        })??;

        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let mut request = Vec::with_capacity(NLMSG_HDRLEN + NFGENMSG_LEN);
        request.extend_from_slice(&((NLMSG_HDRLEN + NFGENMSG_LEN) as u32).to_ne_bytes());
        request
            .extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET).to_ne_bytes());
        request.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        request.extend_from_slice(&seq.to_ne_bytes());
        request.extend_from_slice(&0u32.to_ne_bytes());
        // nfgenmsg: AF_UNSPEC dumps every address family.
        request.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
        send_to_kernel(fd.as_raw_fd(), &request).map_err(dump_err)?;

        let start_len = out.len();
        let deadline = Instant::now() + DUMP_TIMEOUT;
        let mut buf = vec![0u8; RECV_BUFFER];
        let mut batch = Vec::new();
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(dump_err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!("no NLMSG_DONE within {DUMP_TIMEOUT:?}"),
                )));
            }
            if !poll_readable(fd.as_raw_fd(), remaining).map_err(dump_err)? {
                continue;
            }
            let len = match recv_datagram(fd.as_raw_fd(), &mut buf) {
                Ok(len) => len,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) => continue,
                Err(e) => return Err(dump_err(e)),
            };
            batch.clear();
            let stats = parse(&buf[..len.min(buf.len())], &mut batch, true);
            let mut malformed = stats.malformed as u64;
            if len > buf.len() && stats.malformed == 0 {
                malformed += 1;
            }
            self.malformed.fetch_add(malformed, Ordering::Relaxed);
            if let Some(errno) = stats.error {
                out.truncate(start_len);
                return Err(dump_err(io::Error::from_raw_os_error(errno)));
            }
            out.append(&mut batch);
            if stats.done {
                return Ok(out.len() - start_len);
            }
        }
    }

    /// How many times the kernel reported dropped events (`ENOBUFS`) since subscribing.
    pub fn overruns(&self) -> u64 {
        self.overruns
    }

    /// Messages that could not be parsed (counted, skipped).
    pub fn malformed(&self) -> u64 {
        self.malformed.load(Ordering::Relaxed)
    }
}

impl AsRawFd for ConntrackEvents {
    /// The event socket, for callers that poll several sources at once.
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

/// Runs `f` in the network namespace `netns` (on a short-lived thread that entered it) or on
/// the calling thread when `None`.
fn in_namespace<T: Send>(
    netns: Option<(&File, &Path)>,
    f: impl FnOnce() -> T + Send,
) -> Result<T, ConntrackError> {
    let Some((file, path)) = netns else {
        return Ok(f());
    };
    let ns_fd = file.as_raw_fd();
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("conntrack-netns".into())
            .spawn_scoped(scope, move || {
                // SAFETY: setns on a valid fd; it only changes this (temporary) thread's
                // network namespace.
                if unsafe { libc::setns(ns_fd, libc::CLONE_NEWNET) } != 0 {
                    return Err(ConntrackError::EnterNamespace {
                        path: path.to_path_buf(),
                        source: io::Error::last_os_error(),
                    });
                }
                Ok(f())
            })
            .map_err(|source| ConntrackError::EnterNamespace {
                path: path.to_path_buf(),
                source,
            })?;
        match worker.join() {
            Ok(result) => result,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

/// Creates a NETLINK_NETFILTER socket in the current thread's namespace, bound to `groups`
/// (a bitmask, group N = bit N-1), with the requested receive buffer.
fn open_netlink(
    namespace: &str,
    groups: u32,
    recv_buffer_bytes: usize,
) -> Result<OwnedFd, ConntrackError> {
    // SAFETY: plain socket(2); the result is checked before being owned.
    let raw = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_NETFILTER,
        )
    };
    if raw < 0 {
        return Err(ConntrackError::Socket {
            namespace: namespace.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `raw` is a freshly created, valid descriptor owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };

    if recv_buffer_bytes > 0 {
        let bytes = recv_buffer_bytes.min(i32::MAX as usize / 2) as libc::c_int;
        if setsockopt_int(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            bytes,
        )
        .is_err()
        {
            setsockopt_int(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_RCVBUF, bytes).map_err(
                |source| ConntrackError::ReceiveBuffer {
                    namespace: namespace.to_string(),
                    bytes: recv_buffer_bytes,
                    source,
                },
            )?;
        }
    }

    // SAFETY: sockaddr_nl is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    addr.nl_pid = 0; // let the kernel pick the port id
    addr.nl_groups = groups;
    // SAFETY: `addr` is a valid sockaddr_nl of the given length.
    let rc = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(ConntrackError::Subscribe {
            namespace: namespace.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(fd)
}

fn setsockopt_int(
    fd: RawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: passes a pointer to a c_int with its exact size.
    let rc = unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            &value as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Waits until `fd` is readable (or has a pending error) or `timeout` passed; EINTR counts as
/// "not yet" so callers re-check their deadline.
fn poll_readable(fd: RawFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // Round up so a sub-millisecond remainder still waits instead of spinning.
    let ms = timeout.as_nanos().div_ceil(1_000_000).min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(false);
        }
        return Err(e);
    }
    Ok(rc > 0)
}

/// Reads one datagram without blocking; returns its full length (MSG_TRUNC), which exceeds
/// `buf.len()` when it was cut.
fn recv_datagram(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is valid for writes of its length.
    let n = unsafe {
        libc::recv(
            fd,
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
            libc::MSG_DONTWAIT | libc::MSG_TRUNC,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

fn send_to_kernel(fd: RawFd, msg: &[u8]) -> io::Result<()> {
    // SAFETY: sockaddr_nl is plain data; zero = the kernel (port id 0), no groups.
    let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    loop {
        // SAFETY: `msg` and `kernel` are valid for the lengths given.
        let n = unsafe {
            libc::sendto(
                fd,
                msg.as_ptr() as *const libc::c_void,
                msg.len(),
                0,
                &kernel as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if n >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

/// Parses the netlink messages in one datagram (pure function, used by
/// [`ConntrackEvents::recv`] and by tests) and appends the events found to `out`.
///
/// `IPCTNL_MSG_CT_NEW` messages are reported as [`ConntrackEventKind::New`] when they announce
/// a fresh entry (`NLM_F_CREATE`) or are part of a dump reply (`NLM_F_MULTI`); other CT_NEW
/// messages are updates of existing entries and are ignored. `IPCTNL_MSG_CT_DELETE` messages
/// are [`ConntrackEventKind::Destroy`]. Truncated or inconsistent messages and attributes are
/// skipped and counted, never a panic; unknown attributes are ignored; `NLMSG_DONE` ends the
/// datagram and `NLMSG_ERROR` reports its errno (ACKs, errno 0, are ignored).
pub fn parse_datagram(buf: &[u8], out: &mut Vec<ConntrackEvent>) -> ParseStats {
    parse(buf, out, false)
}

/// `dump`: every CT_NEW message is an existing entry, whatever its flags.
fn parse(mut buf: &[u8], out: &mut Vec<ConntrackEvent>, dump: bool) -> ParseStats {
    let mut stats = ParseStats::default();
    while !buf.is_empty() {
        if buf.len() < NLMSG_HDRLEN {
            // Trailing bytes too short for a header: nothing more can be trusted.
            stats.malformed += 1;
            break;
        }
        let len = u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
        let ty = u16::from_ne_bytes([buf[4], buf[5]]);
        let flags = u16::from_ne_bytes([buf[6], buf[7]]);
        if len < NLMSG_HDRLEN || len > buf.len() {
            // A bogus length loses the message boundaries for the rest of the datagram.
            stats.malformed += 1;
            break;
        }
        let payload = &buf[NLMSG_HDRLEN..len];
        buf = &buf[align4(len).min(buf.len())..];

        match ty {
            NLMSG_DONE => {
                stats.done = true;
                break;
            }
            NLMSG_ERROR => {
                if payload.len() < 4 {
                    stats.malformed += 1;
                    continue;
                }
                let errno = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
                if errno == 0 {
                    stats.ignored += 1; // an ACK
                } else {
                    stats.error = Some(errno.checked_neg().unwrap_or(i32::MAX));
                }
                continue;
            }
            NLMSG_NOOP | NLMSG_OVERRUN => {
                stats.ignored += 1;
                continue;
            }
            _ => {}
        }
        if ty >> 8 != NFNL_SUBSYS_CTNETLINK {
            stats.ignored += 1;
            continue;
        }
        let kind = match ty & 0xff {
            IPCTNL_MSG_CT_NEW if dump || flags & (NLM_F_CREATE | NLM_F_MULTI) != 0 => {
                ConntrackEventKind::New
            }
            IPCTNL_MSG_CT_DELETE => ConntrackEventKind::Destroy,
            _ => {
                stats.ignored += 1;
                continue;
            }
        };
        if payload.len() < NFGENMSG_LEN {
            stats.malformed += 1;
            continue;
        }
        match parse_conntrack(kind, &payload[NFGENMSG_LEN..]) {
            Some(event) => {
                out.push(event);
                stats.events += 1;
            }
            None => stats.malformed += 1,
        }
    }
    stats
}

fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates over the attributes in `buf` as (type without flags, payload); yields `Err(())`
/// once (and stops) when an attribute header or length is inconsistent.
struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = Result<(u16, &'a [u8]), ()>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        if self.buf.len() < NLA_HDRLEN {
            self.buf = &[];
            return Some(Err(()));
        }
        let len = u16::from_ne_bytes([self.buf[0], self.buf[1]]) as usize;
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < NLA_HDRLEN || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(()));
        }
        let payload = &self.buf[NLA_HDRLEN..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some(Ok((ty, payload)))
    }
}

fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf }
}

#[derive(Default)]
struct Tuple {
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    src_port: u16,
    dst_port: u16,
}

fn be16(p: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(p.try_into().ok()?))
}

fn be32(p: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(p.try_into().ok()?))
}

fn ipv4(p: &[u8]) -> Option<IpAddr> {
    let octets: [u8; 4] = p.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(octets)))
}

fn ipv6(p: &[u8]) -> Option<IpAddr> {
    let octets: [u8; 16] = p.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(octets)))
}

/// Parses a CTA_TUPLE_ORIG/REPLY payload; `None` when inconsistent or incomplete.
fn parse_tuple(buf: &[u8]) -> Option<Tuple> {
    let mut tuple = Tuple::default();
    for attr in attrs(buf) {
        let (ty, payload) = attr.ok()?;
        match ty {
            CTA_TUPLE_IP => {
                for attr in attrs(payload) {
                    let (ty, p) = attr.ok()?;
                    match ty {
                        CTA_IP_V4_SRC => tuple.src = Some(ipv4(p)?),
                        CTA_IP_V4_DST => tuple.dst = Some(ipv4(p)?),
                        CTA_IP_V6_SRC => tuple.src = Some(ipv6(p)?),
                        CTA_IP_V6_DST => tuple.dst = Some(ipv6(p)?),
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for attr in attrs(payload) {
                    let (ty, p) = attr.ok()?;
                    match ty {
                        CTA_PROTO_NUM => tuple.protocol = Some(*p.first()?),
                        CTA_PROTO_SRC_PORT => tuple.src_port = be16(p)?,
                        CTA_PROTO_DST_PORT => tuple.dst_port = be16(p)?,
                        _ => {} // ICMP id/type/code and others
                    }
                }
            }
            _ => {} // CTA_TUPLE_ZONE and future attributes
        }
    }
    // Both addresses of one family.
    match (tuple.src?, tuple.dst?) {
        (IpAddr::V4(_), IpAddr::V4(_)) | (IpAddr::V6(_), IpAddr::V6(_)) => {}
        _ => return None,
    }
    tuple.protocol?;
    Some(tuple)
}

/// Parses the attributes of one conntrack message; `None` when malformed.
fn parse_conntrack(kind: ConntrackEventKind, buf: &[u8]) -> Option<ConntrackEvent> {
    let mut orig = None;
    let mut reply = None;
    let mut status = 0;
    let mut id = None;
    let mut zone = None;
    for attr in attrs(buf) {
        let (ty, payload) = attr.ok()?;
        match ty {
            CTA_TUPLE_ORIG => orig = Some(parse_tuple(payload)?),
            CTA_TUPLE_REPLY => reply = Some(parse_tuple(payload)?),
            CTA_STATUS => status = be32(payload)?,
            CTA_ID => id = Some(be32(payload)?),
            CTA_ZONE => zone = Some(be16(payload)?),
            _ => {}
        }
    }
    let (orig, reply) = (orig?, reply?);
    if orig.protocol != reply.protocol {
        return None;
    }
    Some(ConntrackEvent {
        kind,
        protocol: orig.protocol?,
        orig_src: orig.src?,
        orig_dst: orig.dst?,
        orig_src_port: orig.src_port,
        orig_dst_port: orig.dst_port,
        reply_src: reply.src?,
        reply_dst: reply.dst?,
        reply_src_port: reply.src_port,
        reply_dst_port: reply.dst_port,
        status,
        id,
        zone,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    // ---- a test-only ctnetlink encoder -------------------------------------------------------

    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((NLA_HDRLEN + payload.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(payload);
        while v.len() % 4 != 0 {
            v.push(0);
        }
        v
    }

    fn nested(ty: u16, children: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | NLA_F_NESTED, &children.concat())
    }

    fn ip_bytes(ip: IpAddr) -> Vec<u8> {
        match ip {
            IpAddr::V4(a) => a.octets().to_vec(),
            IpAddr::V6(a) => a.octets().to_vec(),
        }
    }

    fn tuple(ty: u16, src: IpAddr, dst: IpAddr, proto: u8, sport: u16, dport: u16) -> Vec<u8> {
        let (s, d) = if src.is_ipv4() {
            (CTA_IP_V4_SRC, CTA_IP_V4_DST)
        } else {
            (CTA_IP_V6_SRC, CTA_IP_V6_DST)
        };
        nested(
            ty,
            &[
                nested(
                    CTA_TUPLE_IP,
                    &[attr(s, &ip_bytes(src)), attr(d, &ip_bytes(dst))],
                ),
                nested(
                    CTA_TUPLE_PROTO,
                    &[
                        attr(CTA_PROTO_NUM, &[proto]),
                        attr(
                            CTA_PROTO_SRC_PORT | NLA_F_NET_BYTEORDER,
                            &sport.to_be_bytes(),
                        ),
                        attr(
                            CTA_PROTO_DST_PORT | NLA_F_NET_BYTEORDER,
                            &dport.to_be_bytes(),
                        ),
                    ],
                ),
            ],
        )
    }

    fn message(ty: u16, flags: u16, family: u8, attrs: &[Vec<u8>]) -> Vec<u8> {
        let body = attrs.concat();
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + body.len();
        let mut v = Vec::new();
        v.extend_from_slice(&(len as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&7u32.to_ne_bytes()); // seq
        v.extend_from_slice(&0u32.to_ne_bytes()); // port id
        v.extend_from_slice(&[family, 0, 0, 0]);
        v.extend_from_slice(&body);
        v
    }

    const NEW: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_NEW;
    const DELETE: u16 = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_DELETE;
    const NLM_F_EXCL: u16 = 0x200;

    fn sample(kind: ConntrackEventKind) -> ConntrackEvent {
        ConntrackEvent {
            kind,
            protocol: 6,
            orig_src: "10.244.1.7".parse().unwrap(),
            orig_dst: "93.184.216.34".parse().unwrap(),
            orig_src_port: 41000,
            orig_dst_port: 443,
            reply_src: "93.184.216.34".parse().unwrap(),
            reply_dst: "192.0.2.10".parse().unwrap(),
            reply_src_port: 443,
            reply_dst_port: 61000,
            status: IPS_SRC_NAT | (1 << 3) | (1 << 7), // SRC_NAT, CONFIRMED, SRC_NAT_DONE
            id: Some(0xdead_beef),
            zone: None,
        }
    }

    fn encode(e: &ConntrackEvent, ty: u16, flags: u16) -> Vec<u8> {
        let family = if e.orig_src.is_ipv4() { 2 } else { 10 };
        let mut attrs = vec![
            tuple(
                CTA_TUPLE_ORIG,
                e.orig_src,
                e.orig_dst,
                e.protocol,
                e.orig_src_port,
                e.orig_dst_port,
            ),
            tuple(
                CTA_TUPLE_REPLY,
                e.reply_src,
                e.reply_dst,
                e.protocol,
                e.reply_src_port,
                e.reply_dst_port,
            ),
            attr(CTA_STATUS, &e.status.to_be_bytes()),
            attr(7, &120u32.to_be_bytes()), // CTA_TIMEOUT: unknown to us, ignored
            nested(4, &[nested(1, &[attr(1, &[3])])]), // CTA_PROTOINFO: ignored
        ];
        if let Some(id) = e.id {
            attrs.push(attr(CTA_ID, &id.to_be_bytes()));
        }
        if let Some(zone) = e.zone {
            attrs.push(attr(CTA_ZONE, &zone.to_be_bytes()));
        }
        message(ty, flags, family, &attrs)
    }

    fn done() -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&20u32.to_ne_bytes());
        v.extend_from_slice(&NLMSG_DONE.to_ne_bytes());
        v.extend_from_slice(&NLM_F_MULTI.to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&0i32.to_ne_bytes());
        v
    }

    fn error(errno: i32) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&36u32.to_ne_bytes());
        v.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
        v.extend_from_slice(&0u16.to_ne_bytes());
        v.extend_from_slice(&[0; 8]);
        v.extend_from_slice(&(-errno).to_ne_bytes());
        v.extend_from_slice(&[0; 16]); // the request's header
        v
    }

    // ---- parser specifications ----------------------------------------------------------------

    #[test]
    fn ipv4_tcp_snat_new_event_is_parsed_exactly() {
        let expected = sample(ConntrackEventKind::New);
        let buf = encode(&expected, NEW, NLM_F_CREATE | NLM_F_EXCL);
        let mut out = Vec::new();
        let stats = parse_datagram(&buf, &mut out);
        assert_eq!(
            stats,
            ParseStats {
                events: 1,
                ..ParseStats::default()
            }
        );
        assert_eq!(out, vec![expected]);
        assert!(out[0].is_snat());
    }

    #[test]
    fn ipv6_event_with_zone_is_parsed() {
        let expected = ConntrackEvent {
            protocol: 17,
            orig_src: "fd00:10:244::7".parse().unwrap(),
            orig_dst: "2001:db8::53".parse().unwrap(),
            orig_src_port: 5353,
            orig_dst_port: 53,
            reply_src: "2001:db8::53".parse().unwrap(),
            reply_dst: "2001:db8:1::10".parse().unwrap(),
            reply_src_port: 53,
            reply_dst_port: 5353,
            zone: Some(3),
            id: None,
            ..sample(ConntrackEventKind::New)
        };
        let mut out = Vec::new();
        let stats = parse_datagram(&encode(&expected, NEW, NLM_F_CREATE), &mut out);
        assert_eq!(stats.events, 1);
        assert_eq!(out, vec![expected]);
    }

    #[test]
    fn destroy_event_is_parsed() {
        let expected = sample(ConntrackEventKind::Destroy);
        let mut out = Vec::new();
        let stats = parse_datagram(&encode(&expected, DELETE, 0), &mut out);
        assert_eq!(stats.events, 1);
        assert_eq!(out, vec![expected]);
    }

    #[test]
    fn several_messages_in_one_datagram() {
        let a = sample(ConntrackEventKind::New);
        let b = ConntrackEvent {
            orig_src_port: 41001,
            ..sample(ConntrackEventKind::Destroy)
        };
        let buf = [
            encode(&a, NEW, NLM_F_CREATE | NLM_F_EXCL),
            encode(&b, DELETE, 0),
        ]
        .concat();
        let mut out = Vec::new();
        assert_eq!(parse_datagram(&buf, &mut out).events, 2);
        assert_eq!(out, vec![a, b]);
    }

    #[test]
    fn update_without_create_flag_is_ignored() {
        let buf = encode(&sample(ConntrackEventKind::New), NEW, 0);
        let mut out = Vec::new();
        let stats = parse_datagram(&buf, &mut out);
        assert_eq!(
            stats,
            ParseStats {
                ignored: 1,
                ..ParseStats::default()
            }
        );
        assert!(out.is_empty());
    }

    #[test]
    fn dump_replies_are_new_and_done_ends_the_dump() {
        let e = sample(ConntrackEventKind::New);
        let buf = [
            encode(&e, NEW, NLM_F_MULTI),
            encode(&e, NEW, NLM_F_MULTI),
            done(),
        ]
        .concat();
        let mut out = Vec::new();
        let stats = parse_datagram(&buf, &mut out);
        assert_eq!(
            stats,
            ParseStats {
                events: 2,
                done: true,
                ..ParseStats::default()
            }
        );
        assert_eq!(out, vec![e, e]);
        // In a dump every CT_NEW is an existing entry, whatever its flags.
        let mut out = Vec::new();
        assert_eq!(parse(&encode(&e, NEW, 0), &mut out, true).events, 1);
    }

    #[test]
    fn nlmsg_error_reports_errno_and_ack_is_ignored() {
        let mut out = Vec::new();
        let stats = parse_datagram(&error(libc::EPERM), &mut out);
        assert_eq!(stats.error, Some(libc::EPERM));
        assert_eq!(stats.malformed, 0);
        let stats = parse_datagram(&error(0), &mut out);
        assert_eq!(stats.error, None);
        assert_eq!(stats.ignored, 1);
        assert!(out.is_empty());
    }

    #[test]
    fn is_snat_from_status_bit_or_tuples() {
        let mut e = sample(ConntrackEventKind::New);
        assert!(e.is_snat());
        e.status = 0;
        assert!(
            e.is_snat(),
            "reply destination differs from original source"
        );
        e.reply_dst = e.orig_src;
        assert!(!e.is_snat());
        e.status = IPS_SRC_NAT;
        assert!(e.is_snat(), "port-only SNAT is known from the status bit");
        e.status = IPS_DST_NAT;
        assert!(!e.is_snat(), "DNAT alone is not SNAT");
    }

    #[test]
    fn other_subsystems_and_message_types_are_ignored() {
        let e = sample(ConntrackEventKind::New);
        let expectation = (2u16 << 8) | IPCTNL_MSG_CT_NEW; // NFNL_SUBSYS_CTNETLINK_EXP
        let get = (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET;
        let buf = [encode(&e, expectation, NLM_F_CREATE), encode(&e, get, 0)].concat();
        let mut out = Vec::new();
        let stats = parse_datagram(&buf, &mut out);
        assert_eq!(stats.ignored, 2);
        assert_eq!(stats.events + stats.malformed, 0);
    }

    #[test]
    fn truncated_attribute_is_malformed_and_the_next_message_still_parses() {
        let e = sample(ConntrackEventKind::New);
        let mut bad = encode(&e, NEW, NLM_F_CREATE);
        // Claim a longer first attribute (the original tuple) than the message holds.
        let at = NLMSG_HDRLEN + NFGENMSG_LEN;
        bad[at..at + 2].copy_from_slice(&500u16.to_ne_bytes());
        let buf = [bad, encode(&e, DELETE, 0)].concat();
        let mut out = Vec::new();
        let stats = parse_datagram(&buf, &mut out);
        assert_eq!(stats.malformed, 1);
        assert_eq!(stats.events, 1);
        assert_eq!(out[0].kind, ConntrackEventKind::Destroy);
    }

    #[test]
    fn wrong_sized_or_missing_fields_are_malformed() {
        let e = sample(ConntrackEventKind::New);
        let orig = tuple(CTA_TUPLE_ORIG, e.orig_src, e.orig_dst, 6, 1, 2);
        let reply = tuple(CTA_TUPLE_REPLY, e.reply_src, e.reply_dst, 6, 2, 1);
        let cases = [
            // No reply tuple.
            message(NEW, NLM_F_CREATE, 2, std::slice::from_ref(&orig)),
            // A 3-byte IPv4 address.
            message(
                NEW,
                NLM_F_CREATE,
                2,
                &[
                    nested(
                        CTA_TUPLE_ORIG,
                        &[nested(
                            CTA_TUPLE_IP,
                            &[
                                attr(CTA_IP_V4_SRC, &[10, 0, 0]),
                                attr(CTA_IP_V4_DST, &[1, 2, 3, 4]),
                            ],
                        )],
                    ),
                    reply.clone(),
                ],
            ),
            // A 2-byte status.
            message(
                NEW,
                NLM_F_CREATE,
                2,
                &[orig.clone(), reply.clone(), attr(CTA_STATUS, &[0, 1])],
            ),
            // Mixed address families in one tuple.
            message(
                NEW,
                NLM_F_CREATE,
                2,
                &[
                    tuple(CTA_TUPLE_ORIG, e.orig_src, "::1".parse().unwrap(), 6, 1, 2),
                    reply.clone(),
                ],
            ),
            // An attribute length below the header size.
            message(NEW, NLM_F_CREATE, 2, &[orig.clone(), vec![2, 0, 3, 0]]),
            // No nfgenmsg.
            {
                let mut m = message(NEW, NLM_F_CREATE, 2, &[]);
                m.truncate(NLMSG_HDRLEN + 2);
                m[0..4].copy_from_slice(&((NLMSG_HDRLEN + 2) as u32).to_ne_bytes());
                m
            },
        ];
        for (i, case) in cases.iter().enumerate() {
            let mut out = Vec::new();
            let stats = parse_datagram(case, &mut out);
            assert_eq!((stats.events, stats.malformed), (0, 1), "case {i}");
            assert!(out.is_empty(), "case {i}");
        }
    }

    #[test]
    fn bogus_message_lengths_are_malformed() {
        let good = encode(&sample(ConntrackEventKind::New), NEW, NLM_F_CREATE);
        let mut out = Vec::new();
        for bogus_len in [0u32, 3, 15, good.len() as u32 + 1, u32::MAX] {
            let mut buf = good.clone();
            buf[0..4].copy_from_slice(&bogus_len.to_ne_bytes());
            let stats = parse_datagram(&buf, &mut out);
            assert_eq!(
                (stats.events, stats.malformed),
                (0, 1),
                "nlmsg_len {bogus_len}"
            );
        }
        // A datagram cut in the middle of the header, and trailing garbage after a message.
        assert_eq!(parse_datagram(&good[..10], &mut out).malformed, 1);
        let stats = parse_datagram(&[good.clone(), vec![1, 2, 3]].concat(), &mut out);
        assert_eq!((stats.events, stats.malformed), (1, 1));
        assert_eq!(parse_datagram(&[], &mut out), ParseStats::default());
    }

    /// xorshift64*: deterministic, good enough to mutate bytes.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    #[test]
    fn random_mutations_and_bytes_never_panic() {
        let v4 = sample(ConntrackEventKind::New);
        let v6 = ConntrackEvent {
            orig_src: "fd00::1".parse().unwrap(),
            orig_dst: "fd00::2".parse().unwrap(),
            reply_src: "fd00::2".parse().unwrap(),
            reply_dst: "fd00::3".parse().unwrap(),
            ..v4
        };
        let valid = [
            encode(&v4, NEW, NLM_F_CREATE),
            encode(&v6, DELETE, 0),
            encode(&v4, NEW, NLM_F_MULTI),
            done(),
        ]
        .concat();
        let messages = 4;
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut out = Vec::new();
        let mut saw_malformed = 0;
        for round in 0..20_000 {
            let mut buf = valid.clone();
            match round % 4 {
                // Flip a few random bytes.
                0 | 1 => {
                    for _ in 0..1 + rng.below(4) {
                        let i = rng.below(buf.len());
                        buf[i] = rng.next() as u8;
                    }
                }
                // Truncate anywhere.
                2 => buf.truncate(rng.below(buf.len())),
                // Pure random bytes, sometimes with a plausible header.
                _ => {
                    let len = rng.below(300);
                    buf = (0..len).map(|_| rng.next() as u8).collect();
                    if len >= NLMSG_HDRLEN && rng.below(2) == 0 {
                        buf[0..4].copy_from_slice(&(len as u32).to_ne_bytes());
                        buf[4..6].copy_from_slice(&NEW.to_ne_bytes());
                        buf[6..8].copy_from_slice(&NLM_F_CREATE.to_ne_bytes());
                    }
                }
            }
            out.clear();
            let stats = parse_datagram(&buf, &mut out);
            assert_eq!(stats.events, out.len());
            assert!(
                stats.events + stats.malformed + stats.ignored <= messages.max(buf.len() / 16 + 1)
            );
            saw_malformed += stats.malformed;
        }
        assert!(
            saw_malformed > 1000,
            "mutations were detected as malformed ({saw_malformed})"
        );
    }

    // ---- live: a real node with MASQUERADE in network namespaces ------------------------------

    /// Runs a command line (split on whitespace), panicking with its output when it fails.
    fn sh(line: &str) {
        let args: Vec<&str> = line.split_whitespace().collect();
        run(&args);
    }

    fn run(args: &[&str]) {
        let output = std::process::Command::new(args[0])
            .args(&args[1..])
            .output()
            .unwrap_or_else(|e| {
                panic!("running {args:?}: {e} (needs iproute2, iptables, conntrack, python3)")
            });
        assert!(
            output.status.success(),
            "{args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// pod (eth0 .2/30) → node (vpod .1/30 | vext .5/30, forwarding, MASQUERADE out of vext
    /// to ports 20000-29999) → ext (eth0 .6/30), in 10.202.0.0/16. Only namespaces made here
    /// are touched; they are deleted on drop, also when the test panics.
    struct LiveNode {
        pod: String,
        node: String,
        ext: String,
        pod_ip: Ipv4Addr,
        node_ext_ip: Ipv4Addr,
        ext_ip: Ipv4Addr,
    }

    impl Drop for LiveNode {
        fn drop(&mut self) {
            for ns in [&self.pod, &self.node, &self.ext] {
                let _ = std::process::Command::new("ip")
                    .args(["netns", "del", ns])
                    .output();
            }
        }
    }

    impl LiveNode {
        /// `tag` keeps the namespace names of the live tests (which run in parallel) apart.
        fn create(tag: char) -> LiveNode {
            let pid = std::process::id();
            // The namespaces are private; folding the pid in only keeps captures of parallel
            // runs distinguishable.
            let ip =
                |h: u32| Ipv4Addr::new(10, 202, (pid / 32 % 250) as u8, ((pid % 32) * 8 + h) as u8);
            let node = LiveNode {
                pod: format!("hkct{pid}{tag}p"),
                node: format!("hkct{pid}{tag}n"),
                ext: format!("hkct{pid}{tag}e"),
                pod_ip: ip(2),
                node_ext_ip: ip(5),
                ext_ip: ip(6),
            };
            let (pod, nd, ext) = (&node.pod, &node.node, &node.ext);
            for ns in [pod, nd, ext] {
                let out = std::process::Command::new("ip")
                    .args(["netns", "add", ns])
                    .output()
                    .expect("running `ip netns add` (install iproute2)");
                assert!(
                    out.status.success(),
                    "the live conntrack test needs root (CAP_SYS_ADMIN, CAP_NET_ADMIN) to create \
                     network namespaces (euid {}); `ip netns add {ns}` failed: {}",
                    // SAFETY: geteuid has no preconditions.
                    unsafe { libc::geteuid() },
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            for ns in [pod, nd, ext] {
                sh(&format!(
                    "ip netns exec {ns} sysctl -qw net.ipv6.conf.all.disable_ipv6=1"
                ));
                sh(&format!(
                    "ip netns exec {ns} sysctl -qw net.ipv6.conf.default.disable_ipv6=1"
                ));
                sh(&format!("ip -n {ns} link set lo up"));
            }
            sh(&format!(
                "ip -n {nd} link add vpod type veth peer name eth0 netns {pod}"
            ));
            sh(&format!(
                "ip -n {nd} link add vext type veth peer name eth0 netns {ext}"
            ));
            for (ns, dev, addr) in [
                (nd, "vpod", ip(1)),
                (nd, "vext", node.node_ext_ip),
                (pod, "eth0", node.pod_ip),
                (ext, "eth0", node.ext_ip),
            ] {
                sh(&format!("ip -n {ns} addr add {addr}/30 dev {dev}"));
                sh(&format!("ip -n {ns} link set {dev} up"));
            }
            sh(&format!("ip -n {pod} route add default via {}", ip(1)));
            sh(&format!(
                "ip netns exec {nd} sysctl -qw net.ipv4.ip_forward=1"
            ));
            sh(&format!(
                "ip netns exec {nd} iptables -t nat -A POSTROUTING -s {}/30 -o vext -p udp \
                 -j MASQUERADE --to-ports 20000-29999",
                node.pod_ip
            ));
            node
        }

        /// One UDP datagram from pod:`sport` to ext:9 (nothing listens; the entry is made anyway).
        fn send_udp(&self, sport: u16) {
            let script = format!(
                "import socket\ns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                 s.bind(('{}', {sport}))\ns.sendto(b'hawking', ('{}', 9))\n",
                self.pod_ip, self.ext_ip
            );
            run(&["ip", "netns", "exec", &self.pod, "python3", "-c", &script]);
        }

        /// One UDP datagram from each pod port in `ports`, in one process.
        fn send_udp_many(&self, ports: std::ops::Range<u16>) {
            let script = format!(
                "import socket\nfor port in range({}, {}):\n    \
                 s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n    \
                 s.bind(('{}', port))\n    s.sendto(b'hawking', ('{}', 9))\n    s.close()\n",
                ports.start, ports.end, self.pod_ip, self.ext_ip
            );
            run(&["ip", "netns", "exec", &self.pod, "python3", "-c", &script]);
        }

        fn delete_entry(&self, sport: u16) {
            sh(&format!(
                "ip netns exec {} conntrack -D -p udp --orig-src {} --orig-port-src {sport}",
                self.node, self.pod_ip
            ));
        }
    }

    fn wait_for(
        events: &mut ConntrackEvents,
        what: &str,
        matches: impl Fn(&ConntrackEvent) -> bool,
    ) -> ConntrackEvent {
        let deadline = Instant::now() + Duration::from_secs(3);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let mut batch = Vec::new();
            events
                .recv(Duration::from_millis(200), &mut batch)
                .expect("recv");
            if let Some(e) = batch.iter().find(|e| matches(e)) {
                return *e;
            }
            seen.extend(batch);
        }
        panic!("no {what} event within 3 s; saw {seen:#?}");
    }

    #[test]
    fn live_snat_events_and_dump_in_network_namespaces() {
        let node = LiveNode::create('a');
        let udp = |e: &ConntrackEvent, sport: u16| {
            e.protocol == 17 && e.orig_src == IpAddr::V4(node.pod_ip) && e.orig_src_port == sport
        };

        // A translation made before the agent subscribed: only the dump can tell about it.
        node.send_udp(40000);

        let path = PathBuf::from(format!("/run/netns/{}", node.node));
        let mut events = ConntrackEvents::subscribe(Some(&path), 1 << 20).expect("subscribe");

        node.send_udp(40001);
        let new = wait_for(&mut events, "NEW", |e| {
            e.kind == ConntrackEventKind::New && udp(e, 40001)
        });
        assert!(new.is_snat(), "{new:?}");
        assert_ne!(new.status & IPS_SRC_NAT, 0, "{new:?}");
        assert_eq!(new.orig_dst, IpAddr::V4(node.ext_ip));
        assert_eq!(new.orig_dst_port, 9);
        assert_eq!(new.reply_src, IpAddr::V4(node.ext_ip));
        assert_eq!(new.reply_src_port, 9);
        assert_eq!(new.reply_dst, IpAddr::V4(node.node_ext_ip));
        // MASQUERADE maps to 20000-29999 here, so the outside port differs from the pod's.
        assert!((20000..=29999).contains(&new.reply_dst_port), "{new:?}");
        assert!(new.id.is_some());
        assert_eq!(new.zone, None);

        let mut existing = Vec::new();
        events.dump_existing(&mut existing).expect("dump");
        assert!(existing.iter().all(|e| e.kind == ConntrackEventKind::New));
        let dumped = existing
            .iter()
            .find(|e| udp(e, 40001))
            .unwrap_or_else(|| panic!("the live entry is not in the dump: {existing:#?}"));
        assert_eq!(
            *dumped,
            ConntrackEvent {
                status: dumped.status, // the dump may show later status bits
                ..new
            }
        );
        let before = existing
            .iter()
            .find(|e| udp(e, 40000))
            .unwrap_or_else(|| panic!("the earlier entry is not in the dump: {existing:#?}"));
        assert!(before.is_snat(), "{before:?}");
        assert_eq!(before.reply_dst, IpAddr::V4(node.node_ext_ip));
        assert_ne!(before.id, new.id);

        node.delete_entry(40001);
        let destroy = wait_for(&mut events, "DESTROY", |e| {
            e.kind == ConntrackEventKind::Destroy && udp(e, 40001)
        });
        assert_eq!(destroy.id, new.id);
        assert_eq!(destroy.reply_dst, new.reply_dst);
        assert_eq!(destroy.reply_dst_port, new.reply_dst_port);
        assert!(destroy.is_snat());
        assert_eq!(events.overruns(), 0);
        assert_eq!(events.malformed(), 0);
    }

    #[test]
    fn own_namespace_subscription_reads_and_dumps_without_entering_one() {
        // Read-only use of the test process's namespace: nothing is configured there.
        let mut events = ConntrackEvents::subscribe(None, 1 << 16).expect("subscribe (needs root)");
        let mut out = Vec::new();
        events
            .recv(Duration::ZERO, &mut out)
            .expect("non-blocking recv");
        out.clear();
        let n = events.dump_existing(&mut out).expect("dump");
        assert_eq!(n, out.len());
        assert!(out.iter().all(|e| e.kind == ConntrackEventKind::New));
        assert_eq!(events.malformed(), 0);
    }

    #[test]
    fn subscribing_to_a_missing_namespace_says_which() {
        let err = ConntrackEvents::subscribe(Some(Path::new("/run/netns/hawking-no-such-ns")), 0)
            .expect_err("no such namespace");
        assert!(
            err.to_string().contains("/run/netns/hawking-no-such-ns"),
            "{err}"
        );
        assert!(
            matches!(err, ConntrackError::OpenNamespace { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn live_overrun_is_counted_and_not_an_error() {
        let node = LiveNode::create('b');
        let path = PathBuf::from(format!("/run/netns/{}", node.node));
        // The smallest receive buffer the kernel allows holds a handful of events.
        let mut events = ConntrackEvents::subscribe(Some(&path), 1).expect("subscribe");
        node.send_udp_many(41000..41400);

        let mut got = Vec::new();
        while events
            .recv(Duration::from_millis(300), &mut got)
            .expect("recv")
            > 0
        {}
        assert!(
            events.overruns() >= 1,
            "no overrun counted ({} events read)",
            got.len()
        );
        assert!(
            got.len() < 400,
            "all {} events fit: the buffer was not small",
            got.len()
        );

        // The subscription survives the overrun.
        node.send_udp(40002);
        wait_for(&mut events, "NEW after an overrun", |e| {
            e.kind == ConntrackEventKind::New
                && e.orig_src == IpAddr::V4(node.pod_ip)
                && e.orig_src_port == 40002
        });
        assert_eq!(events.malformed(), 0);
    }
}
