//! Templates compiled into decoders: a template's field list becomes a short list of
//! (offset, width, target) operations, so a data record is decoded by a handful of
//! big-endian loads straight into a [`RawRecord`], with no per-record allocation.

use serde::{Deserialize, Serialize};

use super::frame::{FrameError, FrameTuple};
use super::wire::{Version, be_uint};

#[inline]
fn v4(field: &[u8]) -> u128 {
    hawking_schemas::ip::v4_to_u128(be_uint(field) as u32)
}

#[inline]
fn v6(field: &[u8]) -> u128 {
    u128::from_be_bytes(field.try_into().unwrap_or([0; 16]))
}

/// One field specifier of a template as it came over the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldSpec {
    /// Information element ID (v9 field type); enterprise bit cleared.
    pub id: u16,
    /// Length in bytes; 65535 means variable length (IPFIX).
    pub length: u16,
    /// Private enterprise number, when the element is not IANA's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enterprise: Option<u32>,
}

/// A template or options template as announced by an exporter: what is persisted and what
/// is compiled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TemplateLayout {
    pub template_id: u16,
    /// Options templates: number of leading scope fields. Data templates: 0.
    #[serde(default)]
    pub scope_fields: u16,
    /// Whether this is an options template (its records describe the exporter, not flows).
    #[serde(default)]
    pub options: bool,
    pub fields: Vec<FieldSpec>,
}

pub const VARIABLE_LENGTH: u16 = 65535;

/// Where a decoded field goes. Scalar targets index [`RawRecord::values`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Target {
    SrcPort = 0,
    DstPort,
    Protocol,
    TcpFlags,
    /// octetDeltaCount (1)
    Bytes,
    /// packetDeltaCount (2)
    Packets,
    /// octetTotalCount (85)
    BytesTotal,
    /// packetTotalCount (86)
    PacketsTotal,
    /// postOctetDeltaCount (23)
    PostBytes,
    /// postPacketDeltaCount (24)
    PostPackets,
    InIf,
    OutIf,
    /// flowStartSysUpTime / v9 FIRST_SWITCHED (22): ms since the exporter booted.
    StartSysUp,
    EndSysUp,
    StartSec,
    EndSec,
    StartMs,
    EndMs,
    StartUsNtp,
    EndUsNtp,
    StartNsNtp,
    EndNsNtp,
    /// flowStartDeltaMicroseconds (158): µs before the export time.
    StartDeltaUs,
    EndDeltaUs,
    /// systemInitTimeMilliseconds (160): when the exporter booted, ms since the epoch.
    SysInitMs,
    DurationMs,
    DurationUs,
    /// samplerId / FLOW_SAMPLER_ID (48)
    SamplerId,
    /// samplingInterval (34)
    SamplingInterval,
    /// samplerRandomInterval / FLOW_SAMPLER_RANDOM_INTERVAL (50)
    SamplerRandomInterval,
    /// samplingPacketInterval (305)
    SamplingPacketInterval,
    /// samplingPacketSpace (306)
    SamplingPacketSpace,
    /// selectorId (302)
    SelectorId,
    /// samplingProbability (311), an IEEE float
    SamplingProbability,
    /// icmpTypeCodeIPv4 (32) / icmpTypeCodeIPv6 (139): type in the high byte.
    IcmpTypeCode,
    /// icmpTypeIPv4 (176) / icmpTypeIPv6 (178)
    IcmpType,
    /// icmpCodeIPv4 (177) / icmpCodeIPv6 (179)
    IcmpCode,
    /// natEvent (230): the record is a NAT session event (RFC 8158), not a flow.
    NatEvent,
    /// postNAPTSourceTransportPort (227)
    PostNaptSrcPort,
    /// postNAPTDestinationTransportPort (228)
    PostNaptDstPort,
    /// observationTimeMilliseconds (323): when a NAT event happened.
    ObservationTimeMs,
    /// ingressPhysicalInterface (252): the port, where ingressInterface (10) is absent.
    InPhysIf,
    /// egressPhysicalInterface (253)
    OutPhysIf,
    /// samplingSize (309): n packets selected out of every samplingPopulation (RFC 7014).
    SamplingSize,
    /// samplingPopulation (310)
    SamplingPopulation,
    /// flowDirection (61): 0 ingress, 1 egress at the observation point.
    FlowDirection,
    /// NetObserv's timeFlowRttNs (its enterprise element 7740): TCP handshake RTT in ns.
    RttNs,
    SrcV4,
    DstV4,
    SrcV6,
    DstV6,
    /// postNATSourceIPv4Address (225)
    PostSrcV4,
    /// postNATDestinationIPv4Address (226)
    PostDstV4,
    /// postNATSourceIPv6Address (281)
    PostSrcV6,
    /// postNATDestinationIPv6Address (282)
    PostDstV6,
    /// dataLinkFrameSection (315): the sampled frame's first bytes (RFC 7133).
    FrameSection,
    /// ipHeaderPacketSection (313): the sampled IP packet's first bytes.
    IpSection,
    /// interfaceName (82)
    InterfaceName,
    /// NetObserv's sourcePodNamespace (7733): the namespace of the source's Kubernetes
    /// object, whatever its kind (flowlogs-pipeline writes its `SrcK8S_Namespace`).
    SrcNamespace,
    /// NetObserv's sourcePodName (7734): the source object's name (`SrcK8S_Name`: a pod,
    /// node or service name; the element does not say which).
    SrcName,
    /// NetObserv's destinationPodNamespace (7735)
    DstNamespace,
    /// NetObserv's destinationPodName (7736)
    DstName,
    /// NetObserv's interfaces (7741): every interface the flow was seen on, comma-separated.
    Interfaces,
    /// Present in the template but not needed: skipped.
    Skip,
}

const SCALAR_TARGETS: usize = Target::SrcV4 as usize;
const FIRST_TEXT: usize = Target::InterfaceName as usize;
const TEXT_TARGETS: usize = Target::Skip as usize - FIRST_TEXT;
// Presence of scalar targets is one bit each in a u64.
const _: () = assert!(SCALAR_TARGETS <= 64 && TEXT_TARGETS <= 8);

/// The private-enterprise elements the decoder reads; every other enterprise element is
/// skipped (kept in the template, so records still decode).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EnterpriseElements {
    /// The enterprise number flowlogs-pipeline's IPFIX writer was configured with
    /// (`enterpriseId`): NetObserv has no registered PEN, so its operator picks one.
    pub netobserv: Option<u32>,
}

impl Target {
    /// Maps an IANA information element (or v9 field type, identical below 128 and for the
    /// elements here) of a given width to a target; `Skip` when Hawking does not use it or the
    /// width cannot hold it.
    fn of(id: u16, width: u16) -> Target {
        use Target::*;
        let t = match id {
            1 => Bytes,
            2 => Packets,
            4 => Protocol,
            6 => TcpFlags,
            7 => SrcPort,
            8 => SrcV4,
            10 => InIf,
            11 => DstPort,
            12 => DstV4,
            14 => OutIf,
            21 => EndSysUp,
            22 => StartSysUp,
            23 => PostBytes,
            24 => PostPackets,
            27 => SrcV6,
            28 => DstV6,
            34 => SamplingInterval,
            48 => SamplerId,
            50 => SamplerRandomInterval,
            85 => BytesTotal,
            86 => PacketsTotal,
            150 => StartSec,
            151 => EndSec,
            152 => StartMs,
            153 => EndMs,
            154 => StartUsNtp,
            155 => EndUsNtp,
            156 => StartNsNtp,
            157 => EndNsNtp,
            158 => StartDeltaUs,
            159 => EndDeltaUs,
            160 => SysInitMs,
            161 => DurationMs,
            162 => DurationUs,
            302 => SelectorId,
            305 => SamplingPacketInterval,
            306 => SamplingPacketSpace,
            311 => SamplingProbability,
            32 | 139 => IcmpTypeCode,
            176 | 178 => IcmpType,
            177 | 179 => IcmpCode,
            225 => PostSrcV4,
            226 => PostDstV4,
            227 => PostNaptSrcPort,
            228 => PostNaptDstPort,
            230 => NatEvent,
            281 => PostSrcV6,
            282 => PostDstV6,
            323 => ObservationTimeMs,
            252 => InPhysIf,
            253 => OutPhysIf,
            309 => SamplingSize,
            310 => SamplingPopulation,
            313 => IpSection,
            315 => FrameSection,
            61 => FlowDirection,
            82 => InterfaceName,
            _ => Skip,
        };
        t.if_fits(width)
    }

    /// Maps flowlogs-pipeline's enterprise elements (the IDs it registers under the PEN it
    /// was given).
    fn of_netobserv(id: u16, width: u16) -> Target {
        use Target::*;
        let t = match id {
            7733 => SrcNamespace,
            7734 => SrcName,
            7735 => DstNamespace,
            7736 => DstName,
            7740 => RttNs,
            7741 => Interfaces,
            // 7737/7738 (the endpoints' node names) and 7742 (per-interface directions)
            // have no column: the first flowDirection stands for the flow's direction.
            _ => Skip,
        };
        t.if_fits(width)
    }

    fn is_text(self) -> bool {
        (FIRST_TEXT..Target::Skip as usize).contains(&(self as usize))
    }

    /// Whether the target is one of the in-cluster exporters' details.
    fn is_detail(self) -> bool {
        self.is_text() || matches!(self, Target::FlowDirection | Target::RttNs)
    }

    fn if_fits(self, width: u16) -> Target {
        use Target::*;
        let t = self;
        let fits = match t {
            SrcV4 | DstV4 | PostSrcV4 | PostDstV4 => width == 4,
            SrcV6 | DstV6 | PostSrcV6 | PostDstV6 => width == 16,
            StartUsNtp | EndUsNtp | StartNsNtp | EndNsNtp => width == 8,
            SamplingProbability => width == 4 || width == 8,
            // Usually variable-length; any length is a (possibly empty) section or string.
            FrameSection | IpSection | Skip => true,
            _ if t.is_text() => true,
            _ => (1..=8).contains(&width),
        };
        if fits { t } else { Skip }
    }
}

#[derive(Clone, Copy, Debug)]
struct FieldOp {
    /// Byte offset in the record (fixed-length templates only).
    offset: u16,
    /// Width in bytes; `VARIABLE_LENGTH` for a variable-length field.
    width: u16,
    target: Target,
}

/// A template ready to decode records.
#[derive(Clone, Debug)]
pub struct CompiledTemplate {
    pub layout: TemplateLayout,
    /// Record length when every field has a fixed length.
    fixed_len: Option<usize>,
    /// Shortest possible record (variable-length fields counted as their 1-byte prefix).
    min_len: usize,
    /// Fixed-length templates: only the fields Hawking uses, with absolute offsets.
    /// Variable-length templates: every field in order (unused ones as `Skip`).
    ops: Vec<FieldOp>,
    /// The template carries natEvent: its records are NAT session events, not flows.
    nat_events: bool,
    /// The template carries details (direction, interface names, NetObserv's names and
    /// RTT): its flows get a details row.
    details: bool,
    /// The template carries NetObserv's enterprise elements: flowlogs-pipeline wrote it.
    netobserv: bool,
}

/// Refusal to compile a template that could not describe a real record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UncompilableTemplate;

impl CompiledTemplate {
    pub fn compile(
        layout: TemplateLayout,
        version: Version,
        enterprise: EnterpriseElements,
    ) -> Result<Self, UncompilableTemplate> {
        let mut ops = Vec::with_capacity(layout.fields.len());
        let mut offset = 0usize;
        let mut min_len = 0usize;
        let variable = layout.fields.iter().any(|f| f.length == VARIABLE_LENGTH);
        for (i, f) in layout.fields.iter().enumerate() {
            // v9 options scope fields have their own type namespace (system, interface, ...):
            // never read them as information elements.
            let v9_scope =
                version == Version::V9 && layout.options && i < layout.scope_fields as usize;
            // Variable-length fields other than packet sections fall out in `Target::of`.
            let target = match f.enterprise {
                _ if v9_scope => Target::Skip,
                None => Target::of(f.id, f.length),
                Some(pen) if Some(pen) == enterprise.netobserv => {
                    Target::of_netobserv(f.id, f.length)
                }
                Some(_) => Target::Skip,
            };
            if variable || target != Target::Skip {
                ops.push(FieldOp {
                    offset: offset.min(u16::MAX as usize) as u16,
                    width: f.length,
                    target,
                });
            }
            if f.length == VARIABLE_LENGTH {
                min_len += 1;
            } else {
                offset += f.length as usize;
                min_len += f.length as usize;
            }
        }
        if min_len == 0 || min_len > u16::MAX as usize {
            return Err(UncompilableTemplate);
        }
        let fixed_len = (!variable).then_some(offset);
        // natEvent without counters: session logging (RFC 8158). With counters the records
        // are flows that happen to carry it, and stay flows.
        let nat_events = ops.iter().any(|op| op.target == Target::NatEvent)
            && !ops.iter().any(|op| {
                matches!(
                    op.target,
                    Target::Bytes | Target::Packets | Target::BytesTotal | Target::PacketsTotal
                )
            });
        let details = ops.iter().any(|op| op.target.is_detail());
        let netobserv = enterprise.netobserv.is_some()
            && layout
                .fields
                .iter()
                .any(|f| f.enterprise == enterprise.netobserv);
        Ok(CompiledTemplate {
            details,
            netobserv,
            nat_events,
            layout,
            fixed_len,
            min_len,
            ops,
        })
    }

    pub fn is_options(&self) -> bool {
        self.layout.options
    }

    /// Whether the records are NAT session events (the template has natEvent, IE 230).
    pub fn is_nat_events(&self) -> bool {
        self.nat_events
    }

    /// Whether the records carry details beyond NetFlow's fields ([`RawRecord::text`],
    /// [`Target::FlowDirection`], [`Target::RttNs`]).
    pub fn has_details(&self) -> bool {
        self.details
    }

    /// Whether flowlogs-pipeline wrote the template (it carries NetObserv's enterprise
    /// elements), so its values mean what NetObserv means by them.
    pub fn is_netobserv(&self) -> bool {
        self.netobserv
    }

    /// Decodes every record of a data set body, calling `each` per record. Returns the number
    /// of records, or an error if a variable-length record ran past the set (records before it
    /// are still delivered). Padding shorter than a record is ignored.
    #[inline]
    pub fn decode_set(
        &self,
        body: &[u8],
        mut each: impl FnMut(&RawRecord),
    ) -> Result<usize, super::wire::WireError> {
        let mut raw = RawRecord::default();
        let mut n = 0;
        if let Some(len) = self.fixed_len {
            for rec in body.chunks_exact(len) {
                raw.clear();
                for op in &self.ops {
                    let at = op.offset as usize;
                    raw.set(op.target, &rec[at..at + op.width as usize]);
                }
                each(&raw);
                n += 1;
            }
            return Ok(n);
        }
        let mut rest = body;
        while rest.len() >= self.min_len {
            raw.clear();
            let mut at = 0usize;
            for op in &self.ops {
                let width = if op.width == VARIABLE_LENGTH {
                    // RFC 7011 §7: one length byte, or 255 then a two-byte length.
                    let first = *rest
                        .get(at)
                        .ok_or(super::wire::WireError::TruncatedRecord)?;
                    at += 1;
                    if first < 255 {
                        first as usize
                    } else {
                        let hi = *rest
                            .get(at)
                            .ok_or(super::wire::WireError::TruncatedRecord)?;
                        let lo = *rest
                            .get(at + 1)
                            .ok_or(super::wire::WireError::TruncatedRecord)?;
                        at += 2;
                        u16::from_be_bytes([hi, lo]) as usize
                    }
                } else {
                    op.width as usize
                };
                let field = rest
                    .get(at..at + width)
                    .ok_or(super::wire::WireError::TruncatedRecord)?;
                if op.target != Target::Skip {
                    raw.set(op.target, field);
                }
                at += width;
            }
            each(&raw);
            n += 1;
            rest = &rest[at..];
        }
        Ok(n)
    }
}

/// The fields of one record that Hawking uses, before times and sampling are resolved.
#[derive(Clone, Debug)]
pub struct RawRecord {
    values: [u64; SCALAR_TARGETS],
    present: u64,
    pub src_ip: Option<u128>,
    pub dst_ip: Option<u128>,
    /// Post-NAT addresses (NAT event records).
    pub post_src_ip: Option<u128>,
    pub post_dst_ip: Option<u128>,
    /// What the record's packet section (IE 315 or 313) said, when it carried one.
    pub frame: Option<Result<FrameTuple, FrameError>>,
    /// The text fields' bytes, one after the other (reused across records: no allocation
    /// once it has grown to the longest record's).
    text: Vec<u8>,
    /// Each text target's (start, end) in `text`, valid where its bit of `text_set` is.
    text_at: [(u32, u32); TEXT_TARGETS],
    text_set: u8,
}

impl Default for RawRecord {
    fn default() -> Self {
        RawRecord {
            values: [0; SCALAR_TARGETS],
            present: 0,
            src_ip: None,
            dst_ip: None,
            post_src_ip: None,
            post_dst_ip: None,
            frame: None,
            text: Vec::new(),
            text_at: [(0, 0); TEXT_TARGETS],
            text_set: 0,
        }
    }
}

/// `::` or `0.0.0.0`: what an exporter writes in the address fields of the family a record
/// does not use.
#[inline]
pub(crate) fn is_unspecified(ip: u128) -> bool {
    ip == 0 || ip == hawking_schemas::ip::v4_to_u128(0)
}

/// Keeps the first specified address: templates carrying both IPv4 and IPv6 fields fill the
/// unused family with zeros, and those zeros must not win over the real address, wherever
/// they sit in the template. Between two unspecified values `::` wins, so a record whose
/// every address field is zero has no address whatever the field order; `0.0.0.0` survives
/// only from an IPv4-only template, where it is what the packet said (DHCP discovery).
#[inline]
fn set_address(slot: &mut Option<u128>, ip: u128) {
    match *slot {
        None => *slot = Some(ip),
        Some(old) if is_unspecified(old) && (!is_unspecified(ip) || ip == 0) => *slot = Some(ip),
        Some(_) => {}
    }
}

impl RawRecord {
    #[inline]
    fn clear(&mut self) {
        self.present = 0;
        self.src_ip = None;
        self.dst_ip = None;
        self.post_src_ip = None;
        self.post_dst_ip = None;
        self.frame = None;
        self.text.clear();
        self.text_set = 0;
    }

    #[inline]
    fn set(&mut self, target: Target, field: &[u8]) {
        match target {
            Target::SrcV4 => set_address(&mut self.src_ip, v4(field)),
            Target::DstV4 => set_address(&mut self.dst_ip, v4(field)),
            Target::SrcV6 => set_address(&mut self.src_ip, v6(field)),
            Target::DstV6 => set_address(&mut self.dst_ip, v6(field)),
            Target::PostSrcV4 => set_address(&mut self.post_src_ip, v4(field)),
            Target::PostDstV4 => set_address(&mut self.post_dst_ip, v4(field)),
            Target::PostSrcV6 => set_address(&mut self.post_src_ip, v6(field)),
            Target::PostDstV6 => set_address(&mut self.post_dst_ip, v6(field)),
            Target::FrameSection if self.frame.is_none() => {
                self.frame = Some(super::frame::from_frame(field))
            }
            Target::IpSection if self.frame.is_none() => {
                self.frame = Some(super::frame::from_ip_packet(field))
            }
            Target::FrameSection | Target::IpSection => {}
            Target::Skip => {}
            text if text.is_text() => {
                let i = text as usize - FIRST_TEXT;
                if self.text_set & (1 << i) == 0 {
                    let start = self.text.len() as u32;
                    self.text.extend_from_slice(field);
                    self.text_at[i] = (start, self.text.len() as u32);
                    self.text_set |= 1 << i;
                }
            }
            Target::SamplingProbability => {
                let p = if field.len() == 4 {
                    f32::from_bits(be_uint(field) as u32) as f64
                } else {
                    f64::from_bits(be_uint(field))
                };
                self.put(target, p.to_bits());
            }
            scalar => self.put(scalar, be_uint(field)),
        }
    }

    #[inline]
    fn put(&mut self, target: Target, v: u64) {
        let i = target as usize;
        // First occurrence wins: a template that repeats an element keeps its first value,
        // as nfdump and netflow_parser's first-match lookups do.
        if self.present & (1 << i) == 0 {
            self.values[i] = v;
            self.present |= 1 << i;
        }
    }

    /// The value of a scalar target, if the record carried it.
    #[inline]
    pub fn get(&self, target: Target) -> Option<u64> {
        let i = target as usize;
        (i < SCALAR_TARGETS && self.present & (1 << i) != 0).then(|| self.values[i])
    }

    /// The flow's source and destination: the address fields when they hold an address, else
    /// what the packet section's headers say. `None` when neither gives one: such a record
    /// cannot be attributed, and an invented address would be worse than none.
    #[inline]
    pub fn flow_addresses(&self) -> Option<(u128, u128)> {
        let frame = self.frame.and_then(Result::ok);
        let pick = |field: Option<u128>, from_frame: Option<u128>| {
            field
                .filter(|ip| !is_unspecified(*ip))
                .or(from_frame)
                .or(field)
                .filter(|ip| *ip != 0)
        };
        Some((
            pick(self.src_ip, frame.map(|f| f.src))?,
            pick(self.dst_ip, frame.map(|f| f.dst))?,
        ))
    }

    /// A scalar target, or for protocol and ports, the packet section's value when the
    /// record has no such field.
    #[inline]
    pub fn get_or_frame(&self, target: Target) -> Option<u64> {
        self.get(target).or_else(|| {
            let f = self.frame?.ok()?;
            match target {
                Target::Protocol => Some(f.protocol as u64),
                Target::SrcPort => f.src_port.map(u64::from),
                Target::DstPort => f.dst_port.map(u64::from),
                _ => None,
            }
        })
    }

    /// A text target's value, when the record carried one that says something: valid UTF-8,
    /// fixed-length padding (NULs, spaces) trimmed, not empty, and not flowlogs-pipeline's
    /// `none` (what it writes where its record had no name).
    pub fn text(&self, target: Target) -> Option<&str> {
        if !target.is_text() {
            return None;
        }
        let i = target as usize - FIRST_TEXT;
        if self.text_set & (1 << i) == 0 {
            return None;
        }
        let (start, end) = self.text_at[i];
        let bytes = self.text.get(start as usize..end as usize)?;
        let s = std::str::from_utf8(bytes).ok()?;
        let s = s.trim_end_matches(['\0', ' ']);
        (!s.is_empty() && s != "none").then_some(s)
    }

    /// Test and builder helper: sets a scalar target.
    pub fn with(mut self, target: Target, v: u64) -> Self {
        self.put(target, v);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(id: u16, length: u16) -> FieldSpec {
        FieldSpec {
            id,
            length,
            enterprise: None,
        }
    }

    #[test]
    fn fixed_template_decodes_reduced_size_counters() {
        let layout = TemplateLayout {
            template_id: 256,
            scope_fields: 0,
            options: false,
            fields: vec![spec(8, 4), spec(1, 3), spec(2, 1), spec(999, 2), spec(7, 2)],
        };
        let t = CompiledTemplate::compile(layout, Version::Ipfix, EnterpriseElements::default())
            .unwrap();
        let rec = [10, 0, 0, 1, 0x01, 0x00, 0x00, 7, 0xaa, 0xbb, 0x1f, 0x90];
        let mut seen = vec![];
        let n = t
            .decode_set(&[&rec[..], &rec[..], &[0, 0][..]].concat(), |r| {
                seen.push((
                    r.src_ip,
                    r.get(Target::Bytes),
                    r.get(Target::Packets),
                    r.get(Target::SrcPort),
                ))
            })
            .unwrap();
        assert_eq!(n, 2, "two records, trailing padding ignored");
        assert_eq!(
            seen[0],
            (
                Some(hawking_schemas::ip::v4_to_u128(0x0a000001)),
                Some(65536),
                Some(7),
                Some(8080)
            )
        );
    }

    #[test]
    fn variable_length_fields_are_walked_and_truncation_reported() {
        let layout = TemplateLayout {
            template_id: 300,
            scope_fields: 0,
            options: false,
            fields: vec![spec(7, 2), spec(82, VARIABLE_LENGTH), spec(11, 2)],
        };
        let t = CompiledTemplate::compile(layout, Version::Ipfix, EnterpriseElements::default())
            .unwrap();
        let mut body = vec![0, 80, 3, b'e', b't', b'h', 1, 187];
        body.extend_from_slice(&[0, 81, 255, 0, 2, b'x', b'y', 0, 53]);
        let mut ports = vec![];
        assert_eq!(
            t.decode_set(&body, |r| ports
                .push((r.get(Target::SrcPort), r.get(Target::DstPort)))),
            Ok(2)
        );
        assert_eq!(ports, vec![(Some(80), Some(443)), (Some(81), Some(53))]);
        body.extend_from_slice(&[0, 82, 200, 1, 2, 3]);
        let mut n = 0;
        assert!(t.decode_set(&body, |_| n += 1).is_err());
        assert_eq!(n, 2, "records before the truncated one are delivered");
    }

    #[test]
    fn refuses_templates_without_bytes() {
        let layout = TemplateLayout {
            template_id: 256,
            scope_fields: 0,
            options: false,
            fields: vec![spec(8, 0)],
        };
        assert!(
            CompiledTemplate::compile(layout, Version::V9, EnterpriseElements::default()).is_err()
        );
    }

    #[test]
    fn v9_option_scope_fields_are_not_information_elements() {
        // Scope type 1 (System) must not be read as octetDeltaCount (IE 1).
        let layout = TemplateLayout {
            template_id: 257,
            scope_fields: 1,
            options: true,
            fields: vec![spec(1, 4), spec(34, 4)],
        };
        let t =
            CompiledTemplate::compile(layout, Version::V9, EnterpriseElements::default()).unwrap();
        let mut got = None;
        t.decode_set(&[0, 0, 0, 9, 0, 0, 0, 100], |r| {
            got = Some((r.get(Target::Bytes), r.get(Target::SamplingInterval)))
        })
        .unwrap();
        assert_eq!(got, Some((None, Some(100))));
    }

    #[test]
    fn unused_address_family_zeros_never_win_and_no_address_is_none() {
        // physicalinterfaces.pcap's shape: IPv4 and IPv6 fields, the unused family zero, in
        // either order.
        let layout = TemplateLayout {
            template_id: 256,
            scope_fields: 0,
            options: false,
            fields: vec![spec(27, 16), spec(8, 4), spec(12, 4), spec(28, 16)],
        };
        let t = CompiledTemplate::compile(layout, Version::Ipfix, EnterpriseElements::default())
            .unwrap();
        let mut rec = vec![0u8; 16];
        rec.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2]);
        rec.extend_from_slice(&[0u8; 16]);
        let mut got = None;
        t.decode_set(&rec, |r| got = r.flow_addresses()).unwrap();
        let v4 = hawking_schemas::ip::v4_to_u128;
        assert_eq!(got, Some((v4(0x0a000001), v4(0x0a000002))));
        // Every address field zero and nothing else to read from: no address, not `::` nor
        // `0.0.0.0`, for either endpoint (the source has IPv6 first, the destination IPv4).
        let zeros = vec![0u8; 40];
        let mut got = (Some(1), Some(1), Some((1, 1)));
        t.decode_set(&zeros, |r| got = (r.src_ip, r.dst_ip, r.flow_addresses()))
            .unwrap();
        assert_eq!(got, (Some(0), Some(0), None));
        // An IPv4-only template's 0.0.0.0 is what the packet said.
        let layout = TemplateLayout {
            template_id: 257,
            scope_fields: 0,
            options: false,
            fields: vec![spec(8, 4), spec(12, 4)],
        };
        let t = CompiledTemplate::compile(layout, Version::Ipfix, EnterpriseElements::default())
            .unwrap();
        let mut got = None;
        t.decode_set(&[0, 0, 0, 0, 255, 255, 255, 255], |r| {
            got = r.flow_addresses()
        })
        .unwrap();
        assert_eq!(got, Some((v4(0), v4(0xffff_ffff))));
    }

    #[test]
    fn packet_sections_fill_the_tuple_the_fields_leave_out() {
        let layout = TemplateLayout {
            template_id: 384,
            scope_fields: 0,
            options: false,
            fields: vec![spec(10, 4), spec(315, VARIABLE_LENGTH)],
        };
        let t = CompiledTemplate::compile(layout, Version::Ipfix, EnterpriseElements::default())
            .unwrap();
        let mut frame = vec![2; 12];
        frame.extend_from_slice(&[0x08, 0x00, 0x45, 0, 0, 60, 0, 0, 0, 0, 64, 17, 0, 0]);
        frame.extend_from_slice(&[10, 0, 0, 1, 10, 0, 0, 2, 0x14, 0xe9, 0, 53]);
        let mut body = vec![0, 0, 2, 0x46, frame.len() as u8];
        body.extend_from_slice(&frame);
        // A second record whose section is cut inside the IP header.
        body.extend_from_slice(&[0, 0, 0, 1, 20]);
        body.extend_from_slice(&frame[..20]);
        let mut seen = vec![];
        t.decode_set(&body, |r| {
            seen.push((
                r.flow_addresses(),
                r.get_or_frame(Target::SrcPort),
                r.get_or_frame(Target::DstPort),
                r.get_or_frame(Target::Protocol),
                r.frame.is_some_and(|f| f.is_err()),
            ))
        })
        .unwrap();
        let v4 = hawking_schemas::ip::v4_to_u128;
        assert_eq!(
            seen,
            vec![
                (
                    Some((v4(0x0a000001), v4(0x0a000002))),
                    Some(5353),
                    Some(53),
                    Some(17),
                    false
                ),
                (None, None, None, None, true),
            ]
        );
    }

    #[test]
    fn netobserv_elements_are_read_only_under_the_configured_enterprise_number() {
        let pen = |id, length| FieldSpec {
            id,
            length,
            enterprise: Some(2),
        };
        let layout = TemplateLayout {
            template_id: 256,
            scope_fields: 0,
            options: false,
            fields: vec![
                spec(61, 1),
                spec(82, VARIABLE_LENGTH),
                pen(7733, VARIABLE_LENGTH),
                pen(7734, VARIABLE_LENGTH),
                pen(7737, VARIABLE_LENGTH),
                pen(7740, 8),
                pen(7741, VARIABLE_LENGTH),
            ],
        };
        let mut body = vec![1, 4];
        body.extend_from_slice(b"eth0");
        body.push(0); // no namespace: a node
        body.push(4);
        body.extend_from_slice(b"none"); // flowlogs-pipeline's word for no name
        body.push(6);
        body.extend_from_slice(b"node-a");
        body.extend_from_slice(&4_047_000u64.to_be_bytes());
        body.push(10);
        body.extend_from_slice(b"eth0,br-ex");
        let mut record = body.clone();
        // A second record: a pod's names, the interface name padded as fixed strings are.
        record[1] = 6;
        record.splice(2..6, b"eth0\0\0".iter().copied());
        let at = 8;
        record.splice(at..at + 1, [7, b'd', b'e', b'f', b'a', b'u', b'l', b't']);
        body.extend_from_slice(&record);
        let decode = |netobserv| {
            let t = CompiledTemplate::compile(
                layout.clone(),
                Version::Ipfix,
                EnterpriseElements { netobserv },
            )
            .unwrap();
            let mut seen = vec![];
            t.decode_set(&body, |r| {
                seen.push((
                    r.get(Target::FlowDirection),
                    r.text(Target::InterfaceName).map(str::to_string),
                    r.text(Target::SrcNamespace).map(str::to_string),
                    r.text(Target::SrcName).map(str::to_string),
                    r.get(Target::RttNs),
                    r.text(Target::Interfaces).map(str::to_string),
                ))
            })
            .unwrap();
            (t.has_details(), t.is_netobserv(), seen)
        };
        let s = |v: &str| Some(v.to_string());
        let (details, netobserv, seen) = decode(Some(2));
        assert!(details && netobserv);
        assert_eq!(
            seen,
            vec![
                (
                    Some(1),
                    s("eth0"),
                    None,
                    None,
                    Some(4_047_000),
                    s("eth0,br-ex")
                ),
                (
                    Some(1),
                    s("eth0"),
                    s("default"),
                    None,
                    Some(4_047_000),
                    s("eth0,br-ex")
                ),
            ]
        );
        // Another enterprise's elements (or none configured) are skipped, records still read.
        let (details, netobserv, seen) = decode(Some(9));
        assert!(
            details && !netobserv,
            "flowDirection and interfaceName are IANA's"
        );
        assert_eq!(seen.len(), 2);
        assert!(
            seen.iter()
                .all(|r| r.2.is_none() && r.4.is_none() && r.5.is_none())
        );
        assert_eq!(seen[1].1, s("eth0"));
    }
}
