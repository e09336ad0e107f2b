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

/// One UDP datagram of the capture.
#[derive(Clone, Copy, Debug)]
pub struct Datagram<'a> {
    pub from: SocketAddr,
    pub to: SocketAddr,
    /// When it was captured, µs since the epoch.
    pub at_us: i64,
    pub payload: &'a [u8],
}

#[derive(Clone, Copy)]
enum Link {
    Ethernet,
    LinuxCooked,
    LinuxCooked2,
    RawIp,
    /// BSD loopback: a 4-byte address family, then IP.
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
            // time_t and suseconds_t are i64 here, narrower on some platforms.
            #[allow(clippy::useless_conversion)]
            let at_us = i64::from(packet.header.ts.tv_sec) * 1_000_000
                + i64::from(packet.header.ts.tv_usec);
            let truncated_by_snap = packet.header.caplen < packet.header.len;
            match udp_of(self.link, packet.data) {
                Frame::Udp {
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
                Frame::Udp { .. } => self.counts.truncated += 1,
                Frame::Fragment => self.counts.fragments += 1,
                Frame::Truncated => self.counts.truncated += 1,
                Frame::Other => self.counts.not_udp += 1,
            }
        }
    }
}

enum Frame<'a> {
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

fn udp_of(link: Link, data: &[u8]) -> Frame<'_> {
    let sliced = match link {
        Link::Ethernet => LaxSlicedPacket::from_ethernet(data).ok(),
        Link::LinuxCooked => {
            // 16-byte header; its protocol field (bytes 14..16) is the EtherType.
            match data.get(16..) {
                Some(rest) => LaxSlicedPacket::from_ip(rest).ok(),
                None => return Frame::Truncated,
            }
        }
        Link::LinuxCooked2 => match data.get(20..) {
            Some(rest) => LaxSlicedPacket::from_ip(rest).ok(),
            None => return Frame::Truncated,
        },
        Link::RawIp => LaxSlicedPacket::from_ip(data).ok(),
        Link::Null => match data.get(4..) {
            Some(rest) => LaxSlicedPacket::from_ip(rest).ok(),
            None => return Frame::Truncated,
        },
    };
    let Some(sliced) = sliced else {
        return Frame::Truncated;
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
        _ => return Frame::Other,
    };
    if fragmented {
        return Frame::Fragment;
    }
    match &sliced.transport {
        Some(TransportSlice::Udp(udp)) => {
            let payload = udp.payload();
            let declared = (udp.length() as usize).saturating_sub(8);
            Frame::Udp {
                from: SocketAddr::new(src, udp.source_port()),
                to: SocketAddr::new(dst, udp.destination_port()),
                payload: &payload[..payload.len().min(declared)],
                whole: !incomplete && payload.len() >= declared,
            }
        }
        Some(_) => Frame::Other,
        None if incomplete => Frame::Truncated,
        None => Frame::Other,
    }
}
