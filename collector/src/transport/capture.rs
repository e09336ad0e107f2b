//! The UDP datagrams inside a packet capture file (pcap or pcapng, as tcpdump, Wireshark or
//! a tap writes them), each with its sender, receiver and capture time: how exports recorded
//! on the wire reach a decoder offline, whatever UDP port they were sent to.
//!
//! Frames that carry no UDP datagram (other protocols, truncated captures, IP fragments,
//! which are not reassembled) are counted by why, never decoded from what is missing.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use pcap::{Capture, Linktype, Offline};

#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error("{path}: {source}")]
    Open { path: PathBuf, source: pcap::Error },
    #[error(
        "{path}: link type {link} is not one Hawking reads (Ethernet, Linux cooked, raw IP, loopback)"
    )]
    LinkType { path: PathBuf, link: String },
    #[error("{path}: reading a frame: {source}")]
    Read { path: PathBuf, source: pcap::Error },
}

/// What the frames of a capture held, by kind.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CaptureCounts {
    pub frames: u64,
    /// Whole UDP datagrams delivered.
    pub datagrams: u64,
    /// IP packets of other protocols, or frames that are not IP.
    pub not_udp: u64,
    /// IP fragments (not reassembled: their datagram is not delivered).
    pub fragments: u64,
    /// Frames cut short by the capture's snap length or damaged: their datagram is not
    /// whole.
    pub truncated: u64,
}

/// One frame of the capture, as captured.
#[derive(Clone, Copy, Debug)]
pub struct Frame<'a> {
    /// When it was captured, µs since the epoch.
    pub at_us: i64,
    /// Its bytes as captured (perhaps cut short by the snap length).
    pub data: &'a [u8],
    /// Its length on the wire.
    pub wire_len: usize,
}

/// One UDP datagram of the capture.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// When it was captured, µs since the epoch.
    pub at_us: i64,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy, Debug)]
pub enum Link {
    Ethernet,
    LinuxCooked,
    LinuxCooked2,
    RawIp,
    Null,
}

/// A capture file being read.
pub struct CaptureFile {
    path: PathBuf,
    capture: Capture<Offline>,
    link: Link,
    counts: CaptureCounts,
    /// The datagram last returned (libpcap's buffer is reused by the next read).
    payload: Vec<u8>,
}

impl CaptureFile {
    pub fn open(path: &Path) -> Result<CaptureFile, CaptureError> {
        let capture = Capture::from_file(path).map_err(|source| CaptureError::Open {
            path: path.to_path_buf(),
            source,
        })?;
        let link = match capture.get_datalink() {
            Linktype::ETHERNET => Link::Ethernet,
            Linktype::LINUX_SLL => Link::LinuxCooked,
            Linktype::LINUX_SLL2 => Link::LinuxCooked2,
            Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 | Linktype(12) | Linktype(14) => {
                Link::RawIp
            }
            Linktype::NULL | Linktype::LOOP => Link::Null,
            other => {
                return Err(CaptureError::LinkType {
                    path: path.to_path_buf(),
                    link: other.get_name().unwrap_or_else(|_| format!("{}", other.0)),
                });
            }
        };
        Ok(CaptureFile {
            path: path.to_path_buf(),
            capture,
            link,
            counts: CaptureCounts::default(),
            payload: Vec::new(),
        })
    }

    pub fn counts(&self) -> CaptureCounts {
        self.counts
    }

    pub fn link(&self) -> Link {
        self.link
    }

    /// The next frame whatever it holds (for metering packets into flows); `None` at the
    /// end of the file. Only `frames` is counted.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>, CaptureError> {
        match self.capture.next_packet() {
            Ok(packet) => {
                self.counts.frames += 1;
                Ok(Some(Frame {
                    at_us: timestamp_us(packet.header),
                    data: packet.data,
                    wire_len: packet.header.len as usize,
                }))
            }
            Err(pcap::Error::NoMorePackets) => Ok(None),
            Err(source) => Err(CaptureError::Read {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// The next whole UDP datagram, skipping (and counting) frames that hold none; `None`
    /// at the end of the file.
    pub fn next_datagram(&mut self) -> Result<Option<Datagram<'_>>, CaptureError> {
        loop {
            let packet = match self.capture.next_packet() {
                Ok(p) => p,
                Err(pcap::Error::NoMorePackets) => return Ok(None),
                Err(source) => {
                    return Err(CaptureError::Read {
                        path: self.path.clone(),
                        source,
                    });
                }
            };
            self.counts.frames += 1;
            let at_us = timestamp_us(packet.header);
            let truncated_by_snap = packet.header.caplen < packet.header.len;
            match udp_of(self.link, packet.data) {
                Content::Udp {
                    from,
                    to,
                    payload,
                    whole,
                } if whole && !truncated_by_snap => {
                    self.counts.datagrams += 1;
                    self.payload.clear();
                    self.payload.extend_from_slice(payload);
                    return Ok(Some(Datagram {
                        from,
                        to,
                        at_us,
                        payload: &self.payload,
                    }));
                }
                Content::Udp { .. } => self.counts.truncated += 1,
                Content::Fragment => self.counts.fragments += 1,
                Content::Truncated => self.counts.truncated += 1,
                Content::Other => self.counts.not_udp += 1,
            }
        }
    }
}

/// The link layers Hawking reads.
fn link_of(link: Linktype) -> Option<Link> {
    Some(match link {
        Linktype::ETHERNET => Link::Ethernet,
        Linktype::LINUX_SLL => Link::LinuxCooked,
        Linktype::LINUX_SLL2 => Link::LinuxCooked2,
        Linktype::RAW | Linktype::IPV4 | Linktype::IPV6 | Linktype(12) | Linktype(14) => {
            Link::RawIp
        }
        Linktype::NULL | Linktype::LOOP => Link::Null,
        _ => return None,
    })
}

/// µs since the epoch of a capture header's time.
fn timestamp_us(header: &pcap::PacketHeader) -> i64 {
    // time_t and suseconds_t are i64 here, narrower on some platforms.
    #[allow(clippy::useless_conversion)]
    let us = i64::from(header.ts.tv_sec) * 1_000_000 + i64::from(header.ts.tv_usec);
    us
}

/// The headers of a frame of `link`, as far as they could be read; `None` when the frame is
/// too short for its link header.
pub fn slice(link: Link, data: &[u8]) -> Option<LaxSlicedPacket<'_>> {
    match link {
        Link::Ethernet => LaxSlicedPacket::from_ethernet(data).ok(),
        // Linux cooked v1: a 16-byte header whose last field is the EtherType; v2: 20 bytes.
        Link::LinuxCooked => LaxSlicedPacket::from_ip(data.get(16..)?).ok(),
        Link::LinuxCooked2 => LaxSlicedPacket::from_ip(data.get(20..)?).ok(),
        Link::RawIp => LaxSlicedPacket::from_ip(data).ok(),
        // BSD loopback: a 4-byte address family, then IP.
        Link::Null => LaxSlicedPacket::from_ip(data.get(4..)?).ok(),
    }
}

enum Content<'a> {
    Udp {
        from: SocketAddr,
        to: SocketAddr,
        payload: &'a [u8],
        /// The UDP length and the bytes captured agree.
        whole: bool,
    },
    Fragment,
    Truncated,
    Other,
}

fn udp_of(link: Link, data: &[u8]) -> Content<'_> {
    let sliced = slice(link, data);
    let Some(sliced) = sliced else {
        return Content::Truncated;
    };
    let (src, dst, fragmented, incomplete) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => {
            let h = v4.header();
            (
                IpAddr::V4(h.source_addr()),
                IpAddr::V4(h.destination_addr()),
                v4.payload().fragmented,
                v4.payload().incomplete,
            )
        }
        Some(LaxNetSlice::Ipv6(v6)) => (
            IpAddr::V6(v6.header().source_addr()),
            IpAddr::V6(v6.header().destination_addr()),
            v6.payload().fragmented,
            v6.payload().incomplete,
        ),
        _ => return Content::Other,
    };
    if fragmented {
        return Content::Fragment;
    }
    match &sliced.transport {
        Some(TransportSlice::Udp(udp)) => {
            let payload = udp.payload();
            let declared = (udp.length() as usize).saturating_sub(8);
            Content::Udp {
                from: SocketAddr::new(src, udp.source_port()),
                to: SocketAddr::new(dst, udp.destination_port()),
                payload: &payload[..payload.len().min(declared)],
                whole: !incomplete && payload.len() >= declared,
            }
        }
        Some(_) => Content::Other,
        None if incomplete => Content::Truncated,
        None => Content::Other,
    }
}

/// Frames captured live on an interface (libpcap), as a transport: each frame is one
/// message. Capturing needs CAP_NET_RAW (root in tests).
pub struct LiveCapture {
    interface: String,
    capture: Capture<pcap::Active>,
    link: Link,
}

#[derive(Debug, thiserror::Error)]
pub enum LiveCaptureError {
    #[error("capturing on {interface}: {source}")]
    Open {
        interface: String,
        source: pcap::Error,
    },
    #[error("capture filter {filter:?}: {source}")]
    Filter { filter: String, source: pcap::Error },
    #[error("{interface}: link type {link} is not one Hawking reads")]
    LinkType { interface: String, link: String },
}

impl LiveCapture {
    /// Opens `interface` (not promiscuous: a node sees its own traffic; a tap port is
    /// promiscuous by nature) with `filter` (BPF, as tcpdump takes it) when given.
    pub fn open(interface: &str, filter: Option<&str>) -> Result<LiveCapture, LiveCaptureError> {
        let open_err = |source| LiveCaptureError::Open {
            interface: interface.to_string(),
            source,
        };
        // Non-blocking, waited on with poll(2): in immediate mode libpcap's read timeout does
        // not bound a read on Linux, and shutdown must not wait for the next frame.
        let mut capture = Capture::from_device(interface)
            .map_err(open_err)?
            .snaplen(262_144)
            .immediate_mode(true)
            .open()
            .map_err(open_err)?
            .setnonblock()
            .map_err(open_err)?;
        if let Some(f) = filter {
            capture
                .filter(f, true)
                .map_err(|source| LiveCaptureError::Filter {
                    filter: f.to_string(),
                    source,
                })?;
        }
        let link = link_of(capture.get_datalink()).ok_or_else(|| LiveCaptureError::LinkType {
            interface: interface.to_string(),
            link: format!("{:?}", capture.get_datalink()),
        })?;
        Ok(LiveCapture {
            interface: interface.to_string(),
            capture,
            link,
        })
    }

    pub fn link(&self) -> Link {
        self.link
    }

    pub fn interface(&self) -> &str {
        &self.interface
    }
}

/// The largest number of frames one receive call delivers: the runner checks its batch and
/// the time between calls.
const FRAMES_PER_RECEIVE: usize = 1024;

/// Longest a receive call waits for a first frame, ms.
const POLL_MS: libc::c_int = 100;

impl super::Transport for LiveCapture {
    fn local_addr(&self) -> Option<SocketAddr> {
        None
    }

    fn receive(
        &mut self,
        wait: super::Wait,
        on_message: &mut dyn FnMut(SocketAddr, &[u8]),
    ) -> Result<super::Received, super::TransportError> {
        // Frames have no sender; the meter does not read it.
        let nobody = SocketAddr::from(([0, 0, 0, 0], 0));
        let (mut count, mut bytes) = (0, 0);
        let mut waited = false;
        while count < FRAMES_PER_RECEIVE {
            match self.capture.next_packet() {
                Ok(p) => {
                    count += 1;
                    bytes += p.data.len();
                    on_message(nobody, p.data);
                }
                // Nothing buffered: wait once for the first frame, then hand over.
                Err(pcap::Error::TimeoutExpired) => {
                    if count > 0 || waited || wait == super::Wait::Never {
                        break;
                    }
                    waited = true;
                    let mut fd = libc::pollfd {
                        fd: std::os::fd::AsRawFd::as_raw_fd(&self.capture),
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd for the call's duration.
                    unsafe { libc::poll(&mut fd, 1, POLL_MS) };
                }
                Err(e) => {
                    return Err(super::TransportError::Capture {
                        interface: self.interface.clone(),
                        message: e.to_string(),
                    });
                }
            }
        }
        Ok(if count == 0 {
            super::Received::Idle
        } else {
            super::Received::Messages { count, bytes }
        })
    }
}
