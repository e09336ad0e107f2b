//! The exporter side: encodes flows as NetFlow v5/v9 and IPFIX packets, and NAT session
//! events as IPFIX NAT logging records (RFC 8158). Used by the load generator (`hawking
//! flowgen`), the node agent (`hawking nat-agent`) and tests that need exact packets.

use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::as_v4;
use hawking_schemas::nat::{NatEvent, NatEventKind};

use crate::decode::netflow::template::{FieldSpec, TemplateLayout};
use crate::decode::netflow::wire::Version;

/// Seconds between the NTP and Unix epochs.
const NTP_UNIX_OFFSET_S: u64 = 2_208_988_800;

fn f(id: u16, length: u16) -> FieldSpec {
    FieldSpec {
        id,
        length,
        enterprise: None,
    }
}

/// How a template carries flow times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeEncoding {
    /// v9 FIRST/LAST_SWITCHED or IPFIX flowStart/EndSysUpTime (22/21), ms since boot.
    SysUpTime,
    /// flowStart/EndSeconds (150/151).
    Seconds,
    /// flowStart/EndMilliseconds (152/153).
    Milliseconds,
    /// flowStart/EndMicroseconds (154/155), NTP format.
    Microseconds,
    /// flowStart/EndNanoseconds (156/157), NTP format.
    Nanoseconds,
    /// flowStart/EndDeltaMicroseconds (158/159), before the export time.
    DeltaMicroseconds,
}

/// The usual flow template: IPv4 or IPv6 5-tuple, counters, interfaces and times.
pub fn flow_template(template_id: u16, ipv6: bool, times: TimeEncoding) -> TemplateLayout {
    let (src, dst, alen) = if ipv6 { (27, 28, 16) } else { (8, 12, 4) };
    let (start, end, tlen) = match times {
        TimeEncoding::SysUpTime => (22, 21, 4),
        TimeEncoding::Seconds => (150, 151, 4),
        TimeEncoding::Milliseconds => (152, 153, 8),
        TimeEncoding::Microseconds => (154, 155, 8),
        TimeEncoding::Nanoseconds => (156, 157, 8),
        TimeEncoding::DeltaMicroseconds => (158, 159, 4),
    };
    TemplateLayout {
        template_id,
        scope_fields: 0,
        options: false,
        fields: vec![
            f(src, alen),
            f(dst, alen),
            f(7, 2),
            f(11, 2),
            f(4, 1),
            f(6, 1),
            f(1, 8),
            f(2, 8),
            f(10, 4),
            f(14, 4),
            f(start, tlen),
            f(end, tlen),
        ],
    }
}

/// An options template announcing the sampling rate (IPFIX: samplingPacketInterval/Space,
/// v9: SAMPLING_INTERVAL) and the exporter's boot time (systemInitTimeMilliseconds).
pub fn sampling_options_template(template_id: u16, version: Version) -> TemplateLayout {
    match version {
        // v9 scope: System (1), 4 bytes.
        Version::V9 => TemplateLayout {
            template_id,
            scope_fields: 1,
            options: true,
            fields: vec![f(1, 4), f(34, 4)],
        },
        // IPFIX scope: meteringProcessId (143).
        _ => TemplateLayout {
            template_id,
            scope_fields: 1,
            options: true,
            fields: vec![f(143, 4), f(160, 8), f(305, 4), f(306, 4)],
        },
    }
}

/// The RFC 8158 NAT44 (or, with `ipv6`, NAT66-shaped) session template: observation time,
/// natEvent, protocol, the pre-NAT 5-tuple and the post-NAT source and destination.
pub fn nat_event_template(template_id: u16, ipv6: bool) -> TemplateLayout {
    let (src, dst, post_src, post_dst, alen) = if ipv6 {
        (27, 28, 281, 282, 16)
    } else {
        (8, 12, 225, 226, 4)
    };
    TemplateLayout {
        template_id,
        scope_fields: 0,
        options: false,
        fields: vec![
            f(323, 8),
            f(230, 1),
            f(4, 1),
            f(src, alen),
            f(7, 2),
            f(post_src, alen),
            f(227, 2),
            f(dst, alen),
            f(11, 2),
            f(post_dst, alen),
            f(228, 2),
        ],
    }
}

/// Bytes of one record of [`nat_event_template`].
pub fn nat_event_record_len(ipv6: bool) -> usize {
    nat_event_template(0, ipv6)
        .fields
        .iter()
        .map(|f| f.length as usize)
        .sum()
}

/// Exporter clock facts written into packet headers and relative times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExporterClock {
    /// When the exporter booted, ms since the epoch.
    pub boot_ms: i64,
    /// When the packet is sent, ms since the epoch. v9/IPFIX headers carry whole seconds:
    /// use a multiple of 1000 for exact round trips.
    pub export_ms: i64,
}

impl ExporterClock {
    fn uptime_ms(&self) -> u32 {
        (self.export_ms - self.boot_ms) as u32
    }
}

/// Builds one v9 or IPFIX packet set by set.
pub struct PacketBuilder {
    version: Version,
    buf: Vec<u8>,
    sets: u16,
    records: u16,
}

impl PacketBuilder {
    pub fn new(version: Version, clock: ExporterClock, sequence: u32, domain: u32) -> Self {
        let mut buf = Vec::with_capacity(1500);
        match version {
            Version::V9 => {
                buf.extend_from_slice(&9u16.to_be_bytes());
                buf.extend_from_slice(&0u16.to_be_bytes()); // count, patched in finish()
                buf.extend_from_slice(&clock.uptime_ms().to_be_bytes());
                buf.extend_from_slice(&((clock.export_ms / 1000) as u32).to_be_bytes());
                buf.extend_from_slice(&sequence.to_be_bytes());
                buf.extend_from_slice(&domain.to_be_bytes());
            }
            Version::Ipfix => {
                buf.extend_from_slice(&10u16.to_be_bytes());
                buf.extend_from_slice(&0u16.to_be_bytes()); // length, patched in finish()
                buf.extend_from_slice(&((clock.export_ms / 1000) as u32).to_be_bytes());
                buf.extend_from_slice(&sequence.to_be_bytes());
                buf.extend_from_slice(&domain.to_be_bytes());
            }
            Version::V5 => panic!("v5 packets are built by encode_v5"),
        }
        PacketBuilder {
            version,
            buf,
            sets: 0,
            records: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.buf.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sets == 0
    }

    /// Appends a template (or options template) set defining `t`.
    pub fn template(&mut self, t: &TemplateLayout) -> &mut Self {
        let set_id: u16 = match (self.version, t.options) {
            (Version::V9, false) => 0,
            (Version::V9, true) => 1,
            (_, false) => 2,
            (_, true) => 3,
        };
        let start = self.open_set(set_id);
        self.buf.extend_from_slice(&t.template_id.to_be_bytes());
        let specs = |buf: &mut Vec<u8>, fields: &[FieldSpec]| {
            for f in fields {
                let id = if f.enterprise.is_some() {
                    f.id | 0x8000
                } else {
                    f.id
                };
                buf.extend_from_slice(&id.to_be_bytes());
                buf.extend_from_slice(&f.length.to_be_bytes());
                if let Some(pen) = f.enterprise {
                    buf.extend_from_slice(&pen.to_be_bytes());
                }
            }
        };
        match (self.version, t.options) {
            (Version::V9, true) => {
                let scope = t.scope_fields as usize;
                self.buf
                    .extend_from_slice(&((scope * 4) as u16).to_be_bytes());
                self.buf
                    .extend_from_slice(&(((t.fields.len() - scope) * 4) as u16).to_be_bytes());
                specs(&mut self.buf, &t.fields);
            }
            (_, true) => {
                self.buf
                    .extend_from_slice(&(t.fields.len() as u16).to_be_bytes());
                self.buf.extend_from_slice(&t.scope_fields.to_be_bytes());
                specs(&mut self.buf, &t.fields);
            }
            (_, false) => {
                self.buf
                    .extend_from_slice(&(t.fields.len() as u16).to_be_bytes());
                specs(&mut self.buf, &t.fields);
            }
        }
        self.records += 1;
        self.close_set(start);
        self
    }

    /// Appends a data set of `flows` encoded with template `t`.
    pub fn flows(
        &mut self,
        t: &TemplateLayout,
        clock: ExporterClock,
        flows: &[FlowRecord],
    ) -> &mut Self {
        let start = self.open_set(t.template_id);
        for r in flows {
            for field in &t.fields {
                encode_field(&mut self.buf, field, r, clock);
            }
            self.records += 1;
        }
        self.close_set(start);
        self
    }

    /// Appends a data set of NAT session events encoded with [`nat_event_template`] `t`
    /// (natEvent 4/5, NAT44 session create/delete). The remote end is both the pre- and the
    /// post-NAT destination: source NAT leaves it unchanged.
    pub fn nat_events(&mut self, t: &TemplateLayout, events: &[NatEvent]) -> &mut Self {
        let start = self.open_set(t.template_id);
        for e in events {
            for field in &t.fields {
                let uint = |buf: &mut Vec<u8>, v: u64, len: u16| {
                    buf.extend_from_slice(&v.to_be_bytes()[8 - len.min(8) as usize..]);
                };
                let v4 = |ip: u128| as_v4(ip).unwrap_or(0) as u64;
                let buf = &mut self.buf;
                match field.id {
                    323 => uint(buf, e.at.div_euclid(1000) as u64, 8),
                    230 => uint(
                        buf,
                        match e.kind {
                            Some(NatEventKind::Create) => 4,
                            Some(NatEventKind::Delete) => 5,
                            None => 0,
                        },
                        1,
                    ),
                    4 => uint(buf, e.protocol as u64, field.length),
                    8 => uint(buf, v4(e.inside_ip), 4),
                    225 => uint(buf, v4(e.outside_ip), 4),
                    12 | 226 => uint(buf, v4(e.remote_ip), 4),
                    27 => buf.extend_from_slice(&e.inside_ip.to_be_bytes()),
                    281 => buf.extend_from_slice(&e.outside_ip.to_be_bytes()),
                    28 | 282 => buf.extend_from_slice(&e.remote_ip.to_be_bytes()),
                    7 => uint(buf, e.inside_port as u64, field.length),
                    227 => uint(buf, e.outside_port as u64, field.length),
                    11 | 228 => uint(buf, e.remote_port as u64, field.length),
                    _ => buf.extend(std::iter::repeat_n(0u8, field.length as usize)),
                }
            }
            self.records += 1;
        }
        self.close_set(start);
        self
    }

    /// Appends an options data set for [`sampling_options_template`].
    pub fn sampling_options(
        &mut self,
        t: &TemplateLayout,
        clock: ExporterClock,
        rate: u32,
    ) -> &mut Self {
        let start = self.open_set(t.template_id);
        match self.version {
            Version::V9 => {
                self.buf.extend_from_slice(&0u32.to_be_bytes());
                self.buf.extend_from_slice(&rate.to_be_bytes());
            }
            _ => {
                self.buf.extend_from_slice(&1u32.to_be_bytes());
                self.buf
                    .extend_from_slice(&(clock.boot_ms as u64).to_be_bytes());
                self.buf.extend_from_slice(&1u32.to_be_bytes());
                self.buf
                    .extend_from_slice(&rate.saturating_sub(1).to_be_bytes());
            }
        }
        self.records += 1;
        self.close_set(start);
        self
    }

    /// Appends raw bytes as a set with the given ID (for malformed-input tests).
    pub fn raw_set(&mut self, id: u16, body: &[u8]) -> &mut Self {
        let start = self.open_set(id);
        self.buf.extend_from_slice(body);
        self.close_set(start);
        self
    }

    fn open_set(&mut self, id: u16) -> usize {
        let start = self.buf.len();
        self.buf.extend_from_slice(&id.to_be_bytes());
        self.buf.extend_from_slice(&0u16.to_be_bytes());
        self.sets += 1;
        start
    }

    fn close_set(&mut self, start: usize) {
        // Pad to a 4-byte boundary, as RFC 3954 requires and many exporters do for IPFIX.
        while !(self.buf.len() - start).is_multiple_of(4) {
            self.buf.push(0);
        }
        let len = (self.buf.len() - start) as u16;
        self.buf[start + 2..start + 4].copy_from_slice(&len.to_be_bytes());
    }

    pub fn finish(mut self) -> Vec<u8> {
        match self.version {
            Version::V9 => {
                let count = self.records;
                self.buf[2..4].copy_from_slice(&count.to_be_bytes());
            }
            _ => {
                let len = self.buf.len() as u16;
                self.buf[2..4].copy_from_slice(&len.to_be_bytes());
            }
        }
        self.buf
    }
}

fn encode_field(buf: &mut Vec<u8>, field: &FieldSpec, r: &FlowRecord, clock: ExporterClock) {
    let ms = |us: i64| us.div_euclid(1000);
    let ntp = |us: i64| -> u64 {
        let secs = us.div_euclid(1_000_000) as u64 + NTP_UNIX_OFFSET_S;
        let frac = ((us.rem_euclid(1_000_000) as u64) << 32).div_ceil(1_000_000);
        (secs << 32) | frac
    };
    let uint = |buf: &mut Vec<u8>, v: u64, len: u16| {
        let bytes = v.to_be_bytes();
        buf.extend_from_slice(&bytes[8 - len.min(8) as usize..]);
    };
    let v4 = |ip: u128| as_v4(ip).unwrap_or(0) as u64;
    match field.id {
        8 => uint(buf, v4(r.src_ip), 4),
        12 => uint(buf, v4(r.dst_ip), 4),
        27 => buf.extend_from_slice(&r.src_ip.to_be_bytes()),
        28 => buf.extend_from_slice(&r.dst_ip.to_be_bytes()),
        7 => uint(buf, r.src_port as u64, field.length),
        11 => uint(buf, r.dst_port as u64, field.length),
        4 => uint(buf, r.protocol as u64, field.length),
        6 => uint(buf, r.tcp_flags as u64, field.length),
        1 => uint(buf, r.bytes, field.length),
        2 => uint(buf, r.packets, field.length),
        10 => uint(buf, r.in_if as u64, field.length),
        14 => uint(buf, r.out_if as u64, field.length),
        22 => uint(buf, (ms(r.flow_start) - clock.boot_ms) as u32 as u64, 4),
        21 => uint(buf, (ms(r.flow_end) - clock.boot_ms) as u32 as u64, 4),
        150 => uint(buf, r.flow_start.div_euclid(1_000_000) as u64, 4),
        151 => uint(buf, r.flow_end.div_euclid(1_000_000) as u64, 4),
        152 => uint(buf, ms(r.flow_start) as u64, 8),
        153 => uint(buf, ms(r.flow_end) as u64, 8),
        154 | 156 => uint(buf, ntp(r.flow_start), 8),
        155 | 157 => uint(buf, ntp(r.flow_end), 8),
        158 => uint(buf, (clock.export_ms * 1000 - r.flow_start) as u64, 4),
        159 => uint(buf, (clock.export_ms * 1000 - r.flow_end) as u64, 4),
        160 => uint(buf, clock.boot_ms as u64, 8),
        _ => buf.extend(std::iter::repeat_n(0u8, field.length as usize)),
    }
}

/// Encodes up to 30 IPv4 flows as one NetFlow v5 packet.
pub fn encode_v5(
    clock: ExporterClock,
    sequence: u32,
    sampling_interval: u16,
    flows: &[FlowRecord],
) -> Vec<u8> {
    assert!(
        !flows.is_empty() && flows.len() <= 30,
        "a v5 packet carries 1 to 30 flows"
    );
    let mut buf = Vec::with_capacity(24 + 48 * flows.len());
    buf.extend_from_slice(&5u16.to_be_bytes());
    buf.extend_from_slice(&(flows.len() as u16).to_be_bytes());
    buf.extend_from_slice(&clock.uptime_ms().to_be_bytes());
    buf.extend_from_slice(&((clock.export_ms / 1000) as u32).to_be_bytes());
    buf.extend_from_slice(&(((clock.export_ms % 1000) * 1_000_000) as u32).to_be_bytes());
    buf.extend_from_slice(&sequence.to_be_bytes());
    buf.extend_from_slice(&[0, 0]); // engine type, id
    buf.extend_from_slice(&sampling_interval.to_be_bytes());
    for r in flows {
        let up = |us: i64| (us.div_euclid(1000) - clock.boot_ms) as u32;
        buf.extend_from_slice(&as_v4(r.src_ip).unwrap_or(0).to_be_bytes());
        buf.extend_from_slice(&as_v4(r.dst_ip).unwrap_or(0).to_be_bytes());
        buf.extend_from_slice(&[0; 4]); // next hop
        buf.extend_from_slice(&(r.in_if as u16).to_be_bytes());
        buf.extend_from_slice(&(r.out_if as u16).to_be_bytes());
        buf.extend_from_slice(&(r.packets as u32).to_be_bytes());
        buf.extend_from_slice(&(r.bytes as u32).to_be_bytes());
        buf.extend_from_slice(&up(r.flow_start).to_be_bytes());
        buf.extend_from_slice(&up(r.flow_end).to_be_bytes());
        buf.extend_from_slice(&r.src_port.to_be_bytes());
        buf.extend_from_slice(&r.dst_port.to_be_bytes());
        buf.extend_from_slice(&[0, r.tcp_flags, r.protocol, 0]);
        buf.extend_from_slice(&[0; 8]); // AS numbers, masks, padding
    }
    buf
}
