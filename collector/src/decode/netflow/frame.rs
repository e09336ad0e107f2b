//! Flows described by the sampled packet itself (RFC 7133): `dataLinkFrameSection` (IE 315)
//! carries the first bytes of the frame, `ipHeaderPacketSection` (IE 313) those of the IP
//! packet. Juniper and Cisco export sampled traffic this way instead of address fields, so
//! the 5-tuple has to be read from the headers, as tshark and akvorado do.
//!
//! Headers are sliced with etherparse in its lax mode: a section is a *prefix* of the packet,
//! so the IP total length always claims more than is there. What etherparse does not know is
//! done here: MPLS label stacks, with an Ethernet pseudowire behind a control word (RFC 4448),
//! and IP-in-IP (SRv6 and other tunnels), where the flow is the inner packet.

use etherparse::{EtherType, IpNumber, LaxNetSlice, LaxSlicedPacket};
use hawking_schemas::ip::ip_to_u128;

/// The 5-tuple read from a sampled packet's headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameTuple {
    pub src: u128,
    pub dst: u128,
    pub protocol: u8,
    /// Ports for TCP/UDP/SCTP/UDP-Lite; ICMP type << 8 | code in `dst_port`, as elsewhere.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
}

/// Why a section gave no 5-tuple.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("the section ends inside a header")]
    Truncated,
    #[error("the sampled packet is not IP")]
    NotIp,
}

/// MPLS ethertypes (RFC 5332), which etherparse does not name.
const MPLS_UNICAST: EtherType = EtherType(0x8847);
const MPLS_MULTICAST: EtherType = EtherType(0x8848);

/// Tunnels nested deeper than this are not followed (a crafted section could nest without end).
const MAX_DEPTH: u8 = 4;

/// Reads a `dataLinkFrameSection`: Ethernet, VLAN tags, MPLS, IP.
pub fn from_frame(frame: &[u8]) -> Result<FrameTuple, FrameError> {
    ethernet(frame, 0)
}

/// Reads an `ipHeaderPacketSection`: an IP packet's first bytes.
pub fn from_ip_packet(packet: &[u8]) -> Result<FrameTuple, FrameError> {
    ip(packet, 0)
}

fn ethernet(frame: &[u8], depth: u8) -> Result<FrameTuple, FrameError> {
    let sliced = LaxSlicedPacket::from_ethernet(frame).map_err(|_| FrameError::Truncated)?;
    if sliced.net.is_some() {
        return tuple(&sliced, depth);
    }
    let payload = sliced.ether_payload().ok_or(FrameError::Truncated)?;
    match payload.ether_type {
        MPLS_UNICAST | MPLS_MULTICAST => mpls(payload.payload, depth),
        EtherType::IPV4 | EtherType::IPV6 => Err(FrameError::Truncated),
        _ => Err(FrameError::NotIp),
    }
}

/// Skips the label stack to its bottom entry, then reads what the first nibble says follows:
/// IPv4 (4), IPv6 (6), or a pseudowire control word (0) before an Ethernet frame.
fn mpls(mut rest: &[u8], depth: u8) -> Result<FrameTuple, FrameError> {
    loop {
        let entry = rest.get(..4).ok_or(FrameError::Truncated)?;
        rest = &rest[4..];
        if entry[2] & 1 == 1 {
            break;
        }
    }
    match rest.first().ok_or(FrameError::Truncated)? >> 4 {
        4 | 6 => ip(rest, depth),
        0 if depth < MAX_DEPTH => ethernet(rest.get(4..).ok_or(FrameError::Truncated)?, depth + 1),
        _ => Err(FrameError::NotIp),
    }
}

fn ip(packet: &[u8], depth: u8) -> Result<FrameTuple, FrameError> {
    let sliced = LaxSlicedPacket::from_ip(packet).map_err(|_| FrameError::Truncated)?;
    tuple(&sliced, depth)
}

fn tuple(sliced: &LaxSlicedPacket<'_>, depth: u8) -> Result<FrameTuple, FrameError> {
    let (src, dst, payload) = match &sliced.net {
        Some(LaxNetSlice::Ipv4(v4)) => (
            v4.header().source_addr().into(),
            v4.header().destination_addr().into(),
            v4.payload(),
        ),
        Some(LaxNetSlice::Ipv6(v6)) => (
            v6.header().source_addr().into(),
            v6.header().destination_addr().into(),
            v6.payload(),
        ),
        Some(LaxNetSlice::Arp(_)) => return Err(FrameError::NotIp),
        None => return Err(FrameError::Truncated),
    };
    let next = payload.ip_number;
    let body = payload.payload;
    // IP-in-IP (SRv6 carries the customer packet behind its routing header): the flow is the
    // inner packet, as tshark shows it.
    if (next == IpNumber::IPV4 || next == IpNumber::IPV6) && depth < MAX_DEPTH {
        return ip(body, depth + 1);
    }
    let be16 = |at: usize| {
        body.get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let (src_port, dst_port) = match next {
        IpNumber::TCP | IpNumber::UDP | IpNumber::SCTP | IpNumber::UDP_LITE => (be16(0), be16(2)),
        IpNumber::ICMP | IpNumber::IPV6_ICMP => (Some(0), be16(0)),
        _ => (None, None),
    };
    Ok(FrameTuple {
        src: ip_to_u128(src),
        dst: ip_to_u128(dst),
        protocol: next.0,
        src_port,
        dst_port,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An Ethernet + IPv4 + UDP frame cut after `cut` bytes, built with etherparse.
    fn frame(cut: usize) -> Vec<u8> {
        let builder = etherparse::PacketBuilder::ethernet2([1; 6], [2; 6])
            .single_vlan(etherparse::VlanId::try_new(809).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .udp(5353, 53);
        let payload = [0u8; 200];
        let mut out = Vec::new();
        builder.write(&mut out, &payload).unwrap();
        out.truncate(cut);
        out
    }

    #[test]
    fn a_sampled_prefix_yields_the_tuple() {
        let t = from_frame(&frame(64)).unwrap();
        assert_eq!(
            (t.src, t.dst, t.protocol, t.src_port, t.dst_port),
            (
                ip_to_u128([10, 0, 0, 1].into()),
                ip_to_u128([10, 0, 0, 2].into()),
                17,
                Some(5353),
                Some(53)
            )
        );
    }

    #[test]
    fn mpls_with_a_control_word_reaches_the_inner_frame() {
        let inner = frame(80);
        // Ethernet header of the provider, MPLS ethertype, two labels (bottom one marked),
        // a zero control word, then the customer's frame.
        let mut f = vec![3; 12];
        f.extend_from_slice(&[0x88, 0x47]);
        f.extend_from_slice(&[0x49, 0x3e, 0xc0, 0x40, 0x00, 0x01, 0x11, 0x40]);
        f.extend_from_slice(&[0, 0, 0, 0]);
        f.extend_from_slice(&inner);
        assert_eq!(from_frame(&f), from_frame(&inner));
        assert!(from_frame(&inner).is_ok());
    }

    #[test]
    fn every_truncation_is_an_error_never_a_panic() {
        let whole = frame(80);
        for cut in 0..whole.len() {
            let r = from_frame(&whole[..cut]);
            if cut < 14 + 4 + 20 {
                assert!(r.is_err(), "cut at {cut}: {r:?}");
            }
        }
        // Ports cut off: addresses still read, ports unknown.
        let t = from_frame(&whole[..14 + 4 + 20 + 1]).unwrap();
        assert_eq!(t.src_port, None);
        assert_eq!(from_frame(&[0xff; 3]), Err(FrameError::Truncated));
        let mut arp = vec![0; 12];
        arp.extend_from_slice(&[0x08, 0x06]);
        arp.extend_from_slice(&[0; 28]);
        assert_eq!(from_frame(&arp), Err(FrameError::NotIp));
    }

    #[test]
    fn random_and_mutated_sections_never_panic() {
        // A small LCG: deterministic, no dependency. Sections start from real shapes (plain,
        // MPLS with control word) and get bytes flipped and cut, or are noise outright.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (state >> 33) as usize
        };
        let mut mpls = vec![3; 12];
        mpls.extend_from_slice(&[0x88, 0x47, 0, 0, 0, 0xff, 0, 0, 0, 0]);
        mpls.extend_from_slice(&frame(80));
        let seeds = [frame(80), mpls];
        for i in 0..20_000 {
            let mut f = if i % 4 == 0 {
                (0..next() % 200).map(|_| next() as u8).collect()
            } else {
                seeds[i % 2].clone()
            };
            for _ in 0..next() % 6 {
                if !f.is_empty() {
                    let at = next() % f.len();
                    f[at] = next() as u8;
                }
            }
            f.truncate(next() % (f.len() + 1));
            let _ = from_frame(&f);
            let _ = from_ip_packet(&f);
        }
    }
}
