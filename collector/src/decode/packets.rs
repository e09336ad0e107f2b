//! Meters captured packets into flows, as a probe such as softflowd does: one flow per
//! direction of a 5-tuple (VLANs apart), ended by an idle timeout, an active timeout or the
//! TCP FIN/RST that closes it, with layer-3 bytes and packets as NetFlow counts them.
//!
//! Headers come from etherparse. A frame whose IP and transport headers are not whole (cut
//! short by the snap length) is counted, and so are IP fragments, which are not reassembled:
//! neither is metered from what is missing. Frames that carry no IP are counted apart.

use etherparse::{LaxNetSlice, LaxSlicedPacket, TransportSlice};
use hawking_schemas::flow::{FlowBatch, FlowOrigin, FlowRecord};
use hawking_schemas::ip::ip_to_u128;
use rustc_hash::FxHashMap;

/// When a metered flow ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MeterConfig {
    /// A flow with no packet for this long has ended, µs (Cisco's inactive timeout: 15 s).
    pub idle_timeout_us: i64,
    /// A flow lasting this long is exported and continues as a new one, µs (Cisco's active
    /// timeout: 30 minutes).
    pub active_timeout_us: i64,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            idle_timeout_us: 15_000_000,
            active_timeout_us: 1_800_000_000,
        }
    }
}

/// What the meter did with the frames it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MeterCounts {
    pub packets: u64,
    /// Frames that carry no IP (ARP, LLDP, ...).
    pub not_ip: u64,
    /// IP fragments, not reassembled.
    pub fragments: u64,
    /// Frames whose IP or transport headers were cut short or damaged.
    pub truncated: u64,
    pub flows: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct Key {
    src: u128,
    dst: u128,
    src_port: u16,
    dst_port: u16,
    protocol: u8,
    vlan: u16,
}

#[derive(Clone, Copy, Debug)]
struct Active {
    first_us: i64,
    last_us: i64,
    bytes: u64,
    packets: u64,
    tcp_flags: u8,
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Packets being metered into flows.
pub struct PacketMeter {
    config: MeterConfig,
    active: FxHashMap<Key, Active>,
    counts: MeterCounts,
    /// Capture time of the last idle sweep.
    swept_us: i64,
}

impl PacketMeter {
    pub fn new(config: MeterConfig) -> Self {
        PacketMeter {
            config,
            active: FxHashMap::default(),
            counts: MeterCounts::default(),
            swept_us: i64::MIN,
        }
    }

    pub fn counts(&self) -> MeterCounts {
        self.counts
    }

    /// Meters one frame captured at `at_us` (headers sliced by the capture's link type;
    /// `None` when even those could not be read). Flows that ended go to `out`.
    pub fn packet(
        &mut self,
        at_us: i64,
        sliced: Option<LaxSlicedPacket<'_>>,
        origin: &FlowOrigin,
        out: &mut FlowBatch,
    ) {
        self.sweep(at_us, origin, out);
        let Some(sliced) = sliced else {
            self.counts.truncated += 1;
            return;
        };
        let vlan = sliced.vlan_ids().first().map_or(0, |v| v.value());
        let (src, dst, protocol, ip_len, payload) = match &sliced.net {
            Some(LaxNetSlice::Ipv4(v4)) => {
                let h = v4.header();
                (
                    ip_to_u128(h.source_addr().into()),
                    ip_to_u128(h.destination_addr().into()),
                    h.protocol().0,
                    u64::from(h.total_len()),
                    v4.payload(),
                )
            }
            Some(LaxNetSlice::Ipv6(v6)) => {
                let h = v6.header();
                (
                    ip_to_u128(h.source_addr().into()),
                    ip_to_u128(h.destination_addr().into()),
                    v6.payload().ip_number.0,
                    40 + u64::from(h.payload_length()),
                    v6.payload(),
                )
            }
            _ => {
                self.counts.not_ip += 1;
                return;
            }
        };
        if payload.fragmented {
            self.counts.fragments += 1;
            return;
        }
        let (src_port, dst_port, flags) = match &sliced.transport {
            Some(TransportSlice::Tcp(tcp)) => {
                let flags = (tcp.fin() as u8)
                    | (tcp.syn() as u8) << 1
                    | (tcp.rst() as u8) << 2
                    | (tcp.psh() as u8) << 3
                    | (tcp.ack() as u8) << 4
                    | (tcp.urg() as u8) << 5;
                (tcp.source_port(), tcp.destination_port(), flags)
            }
            Some(TransportSlice::Udp(udp)) => (udp.source_port(), udp.destination_port(), 0),
            // A protocol with ports whose header was cut short: no 5-tuple to meter.
            None if matches!(protocol, 6 | 17) => {
                self.counts.truncated += 1;
                return;
            }
            _ => (0, 0, 0),
        };
        self.counts.packets += 1;
        let key = Key {
            src,
            dst,
            src_port,
            dst_port,
            protocol,
            vlan,
        };
        let config = self.config;
        if let Some(a) = self.active.get(&key).copied()
            && (at_us - a.last_us > config.idle_timeout_us
                || at_us - a.first_us >= config.active_timeout_us)
        {
            self.active.remove(&key);
            self.export(&key, &a, origin, out);
        }
        let a = self.active.entry(key).or_insert(Active {
            first_us: at_us,
            last_us: at_us,
            bytes: 0,
            packets: 0,
            tcp_flags: 0,
        });
        a.last_us = a.last_us.max(at_us);
        a.bytes += ip_len;
        a.packets += 1;
        a.tcp_flags |= flags;
        if flags & (TCP_FIN | TCP_RST) != 0 {
            let a = *a;
            self.active.remove(&key);
            self.export(&key, &a, origin, out);
        }
    }

    /// Ends every flow still open (the end of the capture).
    pub fn finish(&mut self, origin: &FlowOrigin, out: &mut FlowBatch) {
        let mut ended: Vec<(Key, Active)> = self.active.drain().collect();
        ended.sort_by_key(|(_, a)| a.first_us);
        for (k, a) in ended {
            self.export(&k, &a, origin, out);
        }
    }

    /// Ends the flows idle at `now_us` (a live capture's clock, when no packet comes).
    pub fn expire(&mut self, now_us: i64, origin: &FlowOrigin, out: &mut FlowBatch) {
        self.swept_us = i64::MIN;
        self.sweep(now_us, origin, out);
    }

    /// Ends the flows idle at `now_us`, at most once a second of capture time.
    fn sweep(&mut self, now_us: i64, origin: &FlowOrigin, out: &mut FlowBatch) {
        if now_us.saturating_sub(self.swept_us) < 1_000_000 {
            return;
        }
        self.swept_us = now_us;
        let idle = self.config.idle_timeout_us;
        let mut ended: Vec<(Key, Active)> = Vec::new();
        self.active.retain(|k, a| {
            let keep = now_us - a.last_us <= idle;
            if !keep {
                ended.push((*k, *a));
            }
            keep
        });
        ended.sort_by_key(|(_, a)| a.first_us);
        for (k, a) in ended {
            self.export(&k, &a, origin, out);
        }
    }

    fn export(&mut self, k: &Key, a: &Active, origin: &FlowOrigin, out: &mut FlowBatch) {
        self.counts.flows += 1;
        out.push(
            origin,
            &FlowRecord {
                flow_start: a.first_us,
                flow_end: a.last_us,
                src_ip: k.src,
                dst_ip: k.dst,
                src_port: k.src_port,
                dst_port: k.dst_port,
                protocol: k.protocol,
                tcp_flags: a.tcp_flags,
                bytes: a.bytes,
                packets: a.packets,
                sampling_rate: 1,
                in_if: 0,
                out_if: 0,
            },
        );
    }
}

/// The meter as a source's decoder: each message is one captured frame of `link`, metered
/// at the time it was received; flows gone idle are handed on every second.
pub struct MeterDecoder {
    meter: PacketMeter,
    link: crate::transport::capture::Link,
    origin: FlowOrigin,
}

impl MeterDecoder {
    /// `exporter` is the observation point (the capturing host's address): it stands as
    /// the flows' exporter.
    pub fn new(config: MeterConfig, link: crate::transport::capture::Link, exporter: u128) -> Self {
        MeterDecoder {
            meter: PacketMeter::new(config),
            link,
            origin: FlowOrigin {
                received_at: 0,
                exporter,
                observation_domain: 0,
                source_kind: hawking_schemas::flow::SourceKind::Pcap,
            },
        }
    }
}

impl crate::decode::Decoder for MeterDecoder {
    fn name(&self) -> &'static str {
        "capture"
    }

    /// `from` is not used: a frame has no sender, the observation point is the exporter.
    fn decode(
        &mut self,
        _from: std::net::SocketAddr,
        frame: &[u8],
        received_at_us: i64,
        out: &mut hawking_schemas::pipeline::SourceBatch,
    ) {
        let origin = FlowOrigin {
            received_at: received_at_us,
            ..self.origin
        };
        let sliced = crate::transport::capture::slice(self.link, frame);
        self.meter
            .packet(received_at_us, sliced, &origin, &mut out.flows);
    }

    fn expire(&mut self, now_us: i64, out: &mut hawking_schemas::pipeline::SourceBatch) {
        let origin = FlowOrigin {
            received_at: now_us,
            ..self.origin
        };
        self.meter.expire(now_us, &origin, &mut out.flows);
    }

    fn flush(&mut self, out: &mut hawking_schemas::pipeline::SourceBatch) {
        let origin = FlowOrigin {
            received_at: hawking_schemas::time::now_micros(),
            ..self.origin
        };
        self.meter.finish(&origin, &mut out.flows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::PacketBuilder;
    use hawking_schemas::flow::SourceKind;

    const S: i64 = 1_000_000;

    fn origin() -> FlowOrigin {
        FlowOrigin {
            received_at: 0,
            exporter: 1,
            observation_domain: 0,
            source_kind: SourceKind::Pcap,
        }
    }

    /// An Ethernet frame of a TCP segment 10.0.0.1:1000 -> 10.0.0.2:80 with `payload` bytes,
    /// FIN set when `fin`, on `vlan` when given.
    fn tcp(vlan: Option<u16>, payload: usize, fin: bool) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        let ip = |b: etherparse::PacketBuilderStep<etherparse::Ethernet2Header>| {
            b.ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
        };
        let ip = match vlan {
            Some(v) => {
                eth.single_vlan(v.try_into().unwrap())
                    .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            }
            None => ip(eth),
        };
        let mut t = ip.tcp(1000, 80, 1, 65535).ack(1);
        if fin {
            t = t.fin();
        }
        let body = vec![0u8; payload];
        let mut out = Vec::new();
        t.write(&mut out, &body).unwrap();
        out
    }

    fn meter(frames: &[(i64, Vec<u8>)], config: MeterConfig) -> (FlowBatch, MeterCounts) {
        let mut m = PacketMeter::new(config);
        let mut out = FlowBatch::default();
        for (at, f) in frames {
            m.packet(
                *at,
                LaxSlicedPacket::from_ethernet(f).ok(),
                &origin(),
                &mut out,
            );
        }
        m.finish(&origin(), &mut out);
        (out, m.counts())
    }

    #[test]
    fn a_direction_is_one_flow_until_idle_fin_or_active_timeout() {
        let config = MeterConfig {
            idle_timeout_us: 15 * S,
            active_timeout_us: 60 * S,
        };
        let frames = [
            (0, tcp(None, 100, false)),
            (S, tcp(None, 100, false)),
            // 20 s of silence: the flow ended; a new one starts, and its FIN ends it.
            (21 * S, tcp(None, 10, true)),
            (22 * S, tcp(None, 10, false)),
        ];
        let (out, counts) = meter(&frames, config);
        assert_eq!(counts.flows, 3);
        assert_eq!(counts.packets, 4);
        let (starts, packets, bytes) = (&out.flow_start, &out.packets, &out.bytes);
        assert_eq!(starts, &vec![0, 21 * S, 22 * S]);
        assert_eq!(packets, &vec![2, 1, 1]);
        // Layer-3 bytes: 20 (IPv4) + 20 (TCP) + payload.
        assert_eq!(bytes, &vec![280, 50, 50]);
        // Active timeout: packets every 10 s for 2 minutes make flows of at most 60 s.
        let steady: Vec<(i64, Vec<u8>)> =
            (0..13).map(|i| (i * 10 * S, tcp(None, 0, false))).collect();
        let (out, _) = meter(&steady, config);
        assert_eq!(out.flow_start, vec![0, 60 * S, 120 * S]);
    }

    #[test]
    fn vlans_fragments_and_cut_frames_are_told_apart() {
        let mut fragment = tcp(None, 100, false);
        // More-fragments set: the IPv4 flags byte follows the identification.
        fragment[14 + 6] |= 0x20;
        let mut cut = tcp(None, 100, false);
        cut.truncate(14 + 20 + 8);
        let frames = [
            (0, tcp(Some(10), 100, false)),
            (0, tcp(Some(20), 100, false)),
            (0, tcp(None, 100, false)),
            (0, fragment),
            (0, cut),
            (0, vec![0xff; 6]),
        ];
        let (out, counts) = meter(&frames, MeterConfig::default());
        assert_eq!(out.len(), 3, "each VLAN its own flow");
        assert_eq!(
            (counts.packets, counts.fragments, counts.truncated),
            (3, 1, 2)
        );
    }
}
