//! Turns a [`RawRecord`] into a [`FlowRecord`] (absolute UTC times from whichever time
//! elements the exporter used, counters scaled by the sampling rate in force) or, for NAT
//! logging templates, into a [`NatEvent`].

use hawking_schemas::flow::{FlowOrigin, FlowRecord};
use hawking_schemas::flow_details::{DetailRow, Int, Text};
use hawking_schemas::nat::NatEvent;

use super::template::{RawRecord, Target};

/// Seconds between the NTP epoch (1900) and the Unix epoch (1970).
const NTP_UNIX_OFFSET_S: i64 = 2_208_988_800;

/// What a record's times are relative to, from its packet header and its exporter's options.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeBase {
    /// Exporter clock at export, ms since the epoch.
    pub export_ms: i64,
    /// v5/v9: uptime at export (ms), so boot = export - uptime with wrap-around handled.
    pub sys_uptime_ms: Option<u32>,
    /// IPFIX: systemInitTimeMilliseconds announced in options data.
    pub system_init_ms: Option<i64>,
}

/// Sampling announced by an exporter in options data, per sampler/selector ID.
#[derive(Clone, Debug, Default)]
pub struct SamplingTable {
    /// Rate announced without a sampler ID (applies to every record of the scope).
    pub default_rate: Option<u32>,
    /// Rates by sampler/selector ID, for records that name one.
    pub by_id: Vec<(u64, u32)>,
}

impl SamplingTable {
    fn rate_for(&self, id: u64) -> Option<u32> {
        self.by_id.iter().find(|(k, _)| *k == id).map(|(_, r)| *r)
    }

    /// Learns from an options data record; returns true if it carried sampling information.
    pub fn learn(&mut self, raw: &RawRecord) -> bool {
        let Some(rate) = rate_in(raw) else {
            return false;
        };
        match raw
            .get(Target::SamplerId)
            .or_else(|| raw.get(Target::SelectorId))
        {
            Some(id) => match self.by_id.iter_mut().find(|(k, _)| *k == id) {
                Some(entry) => entry.1 = rate,
                None => {
                    // Bounded: exporters announce a handful of samplers; a flood of distinct
                    // IDs keeps the first ones.
                    if self.by_id.len() < 1024 {
                        self.by_id.push((id, rate));
                    }
                }
            },
            None => self.default_rate = Some(rate),
        }
        true
    }
}

/// The sampling rate ("1 in N") a record or an options record states, if any.
fn rate_in(raw: &RawRecord) -> Option<u32> {
    let rate = if let (Some(size), Some(population)) = (
        raw.get(Target::SamplingSize),
        raw.get(Target::SamplingPopulation),
    ) {
        // Random n-out-of-N (RFC 7014 §6.5.2.3): `size` packets out of every `population`.
        // Checked first: exporters send a samplingPacketInterval of 1 beside it.
        if size == 0 {
            return None;
        }
        population / size
    } else if let Some(n) = raw.get(Target::SamplingInterval) {
        n
    } else if let Some(n) = raw.get(Target::SamplerRandomInterval) {
        n
    } else if let Some(interval) = raw.get(Target::SamplingPacketInterval) {
        // Systematic count-based (RFC 5476): `interval` packets selected out of every
        // `interval + space`.
        let space = raw.get(Target::SamplingPacketSpace).unwrap_or(0);
        if interval == 0 {
            return None;
        }
        (interval + space) / interval
    } else if let Some(bits) = raw.get(Target::SamplingProbability) {
        let p = f64::from_bits(bits);
        if !(p > 0.0 && p <= 1.0) {
            return None;
        }
        (1.0 / p).round() as u64
    } else {
        return None;
    };
    Some(rate.clamp(1, u32::MAX as u64) as u32)
}

/// How a record's times were found, for the counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TimeSource {
    /// The record carried its own times.
    Record,
    /// The record had no usable time element: the export time was used.
    ExportTime,
}

/// Resolves a flow record's times (µs since the epoch) and sampling.
#[inline]
pub fn resolve_flow(
    raw: &RawRecord,
    base: &TimeBase,
    sampling: &SamplingTable,
) -> (FlowRecord, TimeSource) {
    let start = start_us(raw, base);
    let end = end_us(raw, base);
    let duration_us = raw
        .get(Target::DurationUs)
        .and_then(|d| i64::try_from(d).ok())
        .or_else(|| {
            raw.get(Target::DurationMs)
                .and_then(|d| i64::try_from(d).ok()?.checked_mul(1000))
        });
    let (flow_start, flow_end, source) = match (start, end) {
        (Some(s), Some(e)) => (s, e, TimeSource::Record),
        (Some(s), None) => (s, s + duration_us.unwrap_or(0), TimeSource::Record),
        (None, Some(e)) => (e - duration_us.unwrap_or(0), e, TimeSource::Record),
        (None, None) => (
            base.export_ms * 1000,
            base.export_ms * 1000,
            TimeSource::ExportTime,
        ),
    };

    let rate = rate_in(raw)
        .or_else(|| {
            raw.get(Target::SamplerId)
                .or_else(|| raw.get(Target::SelectorId))
                .and_then(|id| sampling.rate_for(id))
        })
        .or(sampling.default_rate)
        .unwrap_or(1);

    let bytes = raw
        .get(Target::Bytes)
        .or_else(|| raw.get(Target::BytesTotal))
        .or_else(|| raw.get(Target::PostBytes))
        .unwrap_or(0);
    let packets = raw
        .get(Target::Packets)
        .or_else(|| raw.get(Target::PacketsTotal))
        .or_else(|| raw.get(Target::PostPackets))
        .unwrap_or(0);

    let protocol = raw.get_or_frame(Target::Protocol).unwrap_or(0) as u8;
    let mut dst_port = raw.get_or_frame(Target::DstPort).unwrap_or(0) as u16;
    if (protocol == 1 || protocol == 58) && dst_port == 0 {
        // ICMP type and code go where NetFlow v5 and nfdump keep them: type << 8 | code in the
        // destination port.
        if let Some(tc) = raw.get(Target::IcmpTypeCode) {
            dst_port = tc as u16;
        } else if let Some(t) = raw.get(Target::IcmpType) {
            dst_port = ((t as u16) << 8) | raw.get(Target::IcmpCode).unwrap_or(0) as u16;
        }
    }

    // Callers drop records without addresses before resolving them (counted as no_address).
    let (src_ip, dst_ip) = raw.flow_addresses().unwrap_or((0, 0));
    let record = FlowRecord {
        flow_start,
        flow_end,
        src_ip,
        dst_ip,
        src_port: raw.get_or_frame(Target::SrcPort).unwrap_or(0) as u16,
        dst_port,
        protocol,
        tcp_flags: raw.get(Target::TcpFlags).unwrap_or(0) as u8,
        bytes: bytes.saturating_mul(rate as u64),
        packets: packets.saturating_mul(rate as u64),
        sampling_rate: rate,
        // The physical port stands in for the interface when the exporter names only that.
        in_if: raw
            .get(Target::InIf)
            .or_else(|| raw.get(Target::InPhysIf))
            .unwrap_or(0) as u32,
        out_if: raw
            .get(Target::OutIf)
            .or_else(|| raw.get(Target::OutPhysIf))
            .unwrap_or(0) as u32,
    };
    (record, source)
}

/// Resolves a NAT session event record (RFC 8158): inside = the pre-NAT source, outside = the
/// post-NAT source (its port, when the NAT did not translate ports, is the inside port),
/// remote = the post-NAT destination if given, else the destination. The event's time is its
/// observationTimeMilliseconds, else its flow start time, else the export time.
pub fn resolve_nat_event(raw: &RawRecord, base: &TimeBase, origin: &FlowOrigin) -> NatEvent {
    let at = raw
        .get(Target::ObservationTimeMs)
        .and_then(|ms| i64::try_from(ms).ok()?.checked_mul(1000))
        .filter(|t| (0..MAX_SANE_US).contains(t))
        .or_else(|| start_us(raw, base))
        .unwrap_or(base.export_ms * 1000);
    let inside_port = raw.get(Target::SrcPort).unwrap_or(0) as u16;
    let kind = raw
        .get(Target::NatEvent)
        .and_then(hawking_schemas::nat::nat_event_kind)
        // An event without both addresses cannot map anything back.
        .filter(|_| raw.src_ip.is_some() && raw.post_src_ip.is_some());
    NatEvent {
        at,
        kind,
        exporter: origin.exporter,
        observation_domain: origin.observation_domain,
        protocol: raw.get(Target::Protocol).unwrap_or(0) as u8,
        inside_ip: raw.src_ip.unwrap_or(0),
        inside_port,
        outside_ip: raw.post_src_ip.unwrap_or(0),
        outside_port: raw
            .get(Target::PostNaptSrcPort)
            .map_or(inside_port, |p| p as u16),
        remote_ip: raw.post_dst_ip.or(raw.dst_ip).unwrap_or(0),
        remote_port: raw
            .get(Target::PostNaptDstPort)
            .or_else(|| raw.get(Target::DstPort))
            .unwrap_or(0) as u16,
    }
}

/// The translation a flow record shows when it carries both tuples: firewalls (Cisco ASA's
/// NSEL, and others exporting postNAT*/postNAPT* beside the 5-tuple) report the pre-NAT
/// source in 8/7 and the post-NAT source in 225/227 on the flow itself, and no separate
/// session event. The flow is evidence the mapping held from its start, so it becomes a
/// create event then: the firewall's own flows (and anyone else's seen outside it) map back
/// through it. No delete is derived: a flow record does not say when the session ended, and
/// a later translation of the same outside address and port supersedes this one. Records
/// whose source was not translated (destination NAT only, or the same tuple) show none.
pub fn translation_in_flow(
    raw: &RawRecord,
    flow: &FlowRecord,
    origin: &FlowOrigin,
) -> Option<NatEvent> {
    let outside_ip = raw
        .post_src_ip
        .filter(|ip| !super::template::is_unspecified(*ip))?;
    let outside_port = raw
        .get(Target::PostNaptSrcPort)
        .map_or(flow.src_port, |p| p as u16);
    if (outside_ip, outside_port) == (flow.src_ip, flow.src_port) {
        return None;
    }
    Some(NatEvent {
        at: flow.flow_start,
        kind: Some(hawking_schemas::nat::NatEventKind::Create),
        exporter: origin.exporter,
        observation_domain: origin.observation_domain,
        protocol: flow.protocol,
        inside_ip: flow.src_ip,
        inside_port: flow.src_port,
        outside_ip,
        outside_port,
        remote_ip: raw
            .post_dst_ip
            .filter(|ip| !super::template::is_unspecified(*ip))
            .unwrap_or(flow.dst_ip),
        remote_port: raw
            .get(Target::PostNaptDstPort)
            .map_or(flow.dst_port, |p| p as u16),
    })
}

/// What a record says beyond NetFlow's fields: the direction, the interfaces, and what
/// NetObserv's flowlogs-pipeline adds under its enterprise number (the endpoints' names and
/// the TCP RTT). Names come without a kind (the elements carry any Kubernetes object's
/// name), so the kind stays null rather than guessed. `netobserv`: flowlogs-pipeline wrote
/// the record, and its flowDirection 2 means `inner` (between two interfaces of a node);
/// for anyone else 2 is an unassigned value and says nothing.
pub fn details(raw: &RawRecord, netobserv: bool) -> DetailRow<'_> {
    let mut row = DetailRow {
        counted: true,
        ..DetailRow::default()
    };
    row.set(
        Text::Direction,
        match raw.get(Target::FlowDirection) {
            Some(0) => Some("ingress"),
            Some(1) => Some("egress"),
            Some(2) if netobserv => Some("inner"),
            _ => None,
        },
    );
    row.set(
        Text::Interfaces,
        raw.text(Target::Interfaces)
            .or_else(|| raw.text(Target::InterfaceName)),
    );
    row.set(Text::SrcReportedNamespace, raw.text(Target::SrcNamespace));
    row.set(Text::SrcReportedName, raw.text(Target::SrcName));
    row.set(Text::DstReportedNamespace, raw.text(Target::DstNamespace));
    row.set(Text::DstReportedName, raw.text(Target::DstName));
    row.set_int(
        Int::RttNs,
        raw.get(Target::RttNs)
            .and_then(|ns| i64::try_from(ns).ok())
            .filter(|ns| *ns > 0),
    );
    row
}

/// The record's start time from whichever start element it carries.
#[inline]
fn start_us(raw: &RawRecord, base: &TimeBase) -> Option<i64> {
    time_us(
        raw,
        base,
        Target::StartMs,
        Target::StartUsNtp,
        Target::StartNsNtp,
        Target::StartSec,
        Target::StartSysUp,
        Target::StartDeltaUs,
    )
}

/// The record's end time from whichever end element it carries.
#[inline]
fn end_us(raw: &RawRecord, base: &TimeBase) -> Option<i64> {
    time_us(
        raw,
        base,
        Target::EndMs,
        Target::EndUsNtp,
        Target::EndNsNtp,
        Target::EndSec,
        Target::EndSysUp,
        Target::EndDeltaUs,
    )
}

#[allow(clippy::too_many_arguments)]
#[inline]
fn time_us(
    raw: &RawRecord,
    base: &TimeBase,
    ms: Target,
    us_ntp: Target,
    ns_ntp: Target,
    sec: Target,
    sys_up: Target,
    delta_us: Target,
) -> Option<i64> {
    let us = if let Some(v) = raw.get(ms) {
        i64::try_from(v).ok()?.checked_mul(1000)
    } else if let Some(v) = raw.get(us_ntp).or_else(|| raw.get(ns_ntp)) {
        Some(ntp_to_us(v))
    } else if let Some(v) = raw.get(sec) {
        i64::try_from(v).ok()?.checked_mul(1_000_000)
    } else if let Some(v) = raw.get(sys_up) {
        let v = v as u32;
        if let Some(uptime) = base.sys_uptime_ms {
            // The record's uptime is at most a few hours older than the header's; reading the
            // difference as a signed 32-bit value survives the 49.7-day uptime wrap.
            let age_ms = uptime.wrapping_sub(v) as i32 as i64;
            (base.export_ms - age_ms).checked_mul(1000)
        } else {
            let init = match raw.get(Target::SysInitMs) {
                Some(i) => i64::try_from(i).ok()?,
                None => base.system_init_ms?,
            };
            init.checked_add(v as i64)?.checked_mul(1000)
        }
    } else if let Some(v) = raw.get(delta_us) {
        (base.export_ms * 1000).checked_sub(i64::try_from(v).ok()?)
    } else {
        None
    };
    // A time outside 1970..2100 is a broken or hostile record, not a flow: it is treated as
    // absent (and the flow timed by its export) rather than stored in an absurd partition.
    us.filter(|t| (0..MAX_SANE_US).contains(t))
}

/// 2100-01-01T00:00:00Z in µs.
const MAX_SANE_US: i64 = 4_102_444_800_000_000;

/// NTP 64-bit timestamp (seconds since 1900 in the high word, binary fraction in the low)
/// to µs since the Unix epoch.
#[inline]
fn ntp_to_us(v: u64) -> i64 {
    // At most 2^32 s after 1900: no overflow.
    let secs = (v >> 32) as i64 - NTP_UNIX_OFFSET_S;
    let frac_us = ((v & 0xffff_ffff) * 1_000_000) >> 32;
    secs * 1_000_000 + frac_us as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> TimeBase {
        TimeBase {
            export_ms: 1_795_168_800_000,
            sys_uptime_ms: Some(10_000),
            system_init_ms: None,
        }
    }

    #[test]
    fn v9_uptime_times_are_anchored_at_export_and_survive_wrap() {
        let raw = RawRecord::default()
            .with(Target::StartSysUp, 4_000)
            .with(Target::EndSysUp, 9_500);
        let (r, src) = resolve_flow(&raw, &base(), &SamplingTable::default());
        assert_eq!(src, TimeSource::Record);
        assert_eq!(r.flow_start, (1_795_168_800_000 - 6_000) * 1000);
        assert_eq!(r.flow_end, (1_795_168_800_000 - 500) * 1000);
        // Uptime wrapped after the flow started: first = 2^32 - 1000 ms, header uptime 500 ms.
        let wrapped = TimeBase {
            sys_uptime_ms: Some(500),
            ..base()
        };
        let raw = RawRecord::default().with(Target::StartSysUp, (u32::MAX - 999) as u64);
        let (r, _) = resolve_flow(&raw, &wrapped, &SamplingTable::default());
        assert_eq!(r.flow_start, (1_795_168_800_000 - 1_500) * 1000);
    }

    #[test]
    fn ipfix_time_elements_all_resolve_to_the_same_instant() {
        let t_ms: i64 = 1_795_168_801_234;
        let t_ntp = (((t_ms / 1000 + NTP_UNIX_OFFSET_S) as u64) << 32)
            | (((t_ms % 1000) as u64 * (1u64 << 32)) / 1000 + 1);
        let ipfix = TimeBase {
            export_ms: 1_795_168_802_000,
            sys_uptime_ms: None,
            system_init_ms: Some(t_ms - 60_000),
        };
        let table = SamplingTable::default();
        let cases = [
            RawRecord::default().with(Target::StartMs, t_ms as u64),
            RawRecord::default().with(Target::StartUsNtp, t_ntp),
            RawRecord::default().with(Target::StartNsNtp, t_ntp),
            RawRecord::default().with(Target::StartSysUp, 60_000),
            RawRecord::default().with(Target::StartDeltaUs, 766_000),
        ];
        for raw in cases {
            let (r, _) = resolve_flow(&raw, &ipfix, &table);
            assert_eq!(r.flow_start, t_ms * 1000, "{raw:?}");
            assert_eq!(
                r.flow_end, r.flow_start,
                "no end and no duration: zero-length flow"
            );
        }
        let secs = RawRecord::default()
            .with(Target::StartSec, 1_795_168_801)
            .with(Target::DurationMs, 1500);
        let (r, _) = resolve_flow(&secs, &ipfix, &table);
        assert_eq!(
            (r.flow_start, r.flow_end),
            (1_795_168_801_000_000, 1_795_168_802_500_000)
        );
    }

    #[test]
    fn records_without_times_fall_back_to_export_time_and_say_so() {
        let (r, src) = resolve_flow(&RawRecord::default(), &base(), &SamplingTable::default());
        assert_eq!(src, TimeSource::ExportTime);
        assert_eq!(r.flow_start, 1_795_168_800_000_000);
    }

    #[test]
    fn sampling_scales_counters_by_the_rate_in_force() {
        let mut table = SamplingTable::default();
        assert!(
            table.learn(
                &RawRecord::default()
                    .with(Target::SamplerId, 2)
                    .with(Target::SamplerRandomInterval, 100)
            )
        );
        assert!(
            table.learn(
                &RawRecord::default()
                    .with(Target::SamplingPacketInterval, 1)
                    .with(Target::SamplingPacketSpace, 9)
            )
        );
        assert!(!table.learn(&RawRecord::default().with(Target::SysInitMs, 5)));
        let flow = RawRecord::default()
            .with(Target::Bytes, 1500)
            .with(Target::Packets, 1);
        let (r, _) = resolve_flow(&flow, &base(), &table);
        assert_eq!((r.sampling_rate, r.bytes, r.packets), (10, 15_000, 10));
        let (r, _) = resolve_flow(&flow.clone().with(Target::SamplerId, 2), &base(), &table);
        assert_eq!((r.sampling_rate, r.bytes), (100, 150_000));
        let (r, _) = resolve_flow(&flow.with(Target::SamplingInterval, 4), &base(), &table);
        assert_eq!(r.sampling_rate, 4, "a rate in the record itself wins");
    }

    #[test]
    fn icmp_type_and_code_land_in_the_destination_port() {
        let table = SamplingTable::default();
        let raw = RawRecord::default()
            .with(Target::Protocol, 58)
            .with(Target::IcmpTypeCode, 0x8100);
        assert_eq!(resolve_flow(&raw, &base(), &table).0.dst_port, 0x8100);
        let raw = RawRecord::default()
            .with(Target::Protocol, 1)
            .with(Target::IcmpType, 3)
            .with(Target::IcmpCode, 1);
        assert_eq!(resolve_flow(&raw, &base(), &table).0.dst_port, 0x0301);
        let raw = RawRecord::default()
            .with(Target::Protocol, 6)
            .with(Target::IcmpTypeCode, 0x0800)
            .with(Target::DstPort, 443);
        assert_eq!(
            resolve_flow(&raw, &base(), &table).0.dst_port,
            443,
            "only for ICMP"
        );
    }

    #[test]
    fn absurd_times_are_not_stored_as_flow_times() {
        let raw = RawRecord::default()
            .with(Target::StartMs, u64::MAX)
            .with(Target::EndSec, 1 << 40);
        let (r, src) = resolve_flow(&raw, &base(), &SamplingTable::default());
        assert_eq!(src, TimeSource::ExportTime);
        assert_eq!(
            (r.flow_start, r.flow_end),
            (1_795_168_800_000_000, 1_795_168_800_000_000)
        );
    }

    #[test]
    fn delta_counters_are_preferred_over_totals() {
        let raw = RawRecord::default()
            .with(Target::BytesTotal, 9)
            .with(Target::Bytes, 5)
            .with(Target::PacketsTotal, 3);
        let (r, _) = resolve_flow(&raw, &base(), &SamplingTable::default());
        assert_eq!((r.bytes, r.packets), (5, 3));
    }

    #[test]
    fn physical_ports_stand_in_for_missing_interfaces() {
        let raw = RawRecord::default()
            .with(Target::InPhysIf, 1_342_177_291)
            .with(Target::OutPhysIf, 7);
        let (r, _) = resolve_flow(&raw, &base(), &SamplingTable::default());
        assert_eq!((r.in_if, r.out_if), (1_342_177_291, 7));
        let (r, _) = resolve_flow(
            &raw.with(Target::InIf, 3).with(Target::OutIf, 4),
            &base(),
            &SamplingTable::default(),
        );
        assert_eq!((r.in_if, r.out_if), (3, 4), "the logical interface wins");
    }

    #[test]
    fn random_n_out_of_n_sampling_is_population_over_size() {
        // As Cisco announces it: samplingPacketInterval 1 beside size 1 of population 256.
        let mut table = SamplingTable::default();
        assert!(
            table.learn(
                &RawRecord::default()
                    .with(Target::SelectorId, 1)
                    .with(Target::SamplingPacketInterval, 1)
                    .with(Target::SamplingSize, 1)
                    .with(Target::SamplingPopulation, 256)
            )
        );
        let flow = RawRecord::default()
            .with(Target::SelectorId, 1)
            .with(Target::Bytes, 72)
            .with(Target::Packets, 1);
        let (r, _) = resolve_flow(&flow, &base(), &table);
        assert_eq!((r.sampling_rate, r.bytes, r.packets), (256, 72 * 256, 256));
        assert!(
            !SamplingTable::default().learn(
                &RawRecord::default()
                    .with(Target::SamplingSize, 0)
                    .with(Target::SamplingPopulation, 256)
            ),
            "a zero size states no rate"
        );
    }
}
