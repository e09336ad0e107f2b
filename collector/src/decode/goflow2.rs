//! goflow2's flow messages (netsampler/goflow2 v2), as its users already collect them: JSON
//! lines (`-format=json`), text lines (`-format=text`, `key=value`), and protobuf
//! `flowpb.FlowMessage` (`-format=bin`), each message prefixed with its length as a varint,
//! as goflow2 writes them to Kafka. The message names the device that exported the flow
//! (`sampler_address`): it becomes the flow's exporter and observation domain, as if Hawking
//! had received the export itself, so the clusters' `exporters` rules apply unchanged.
//! goflow2 reports sampled counts with their sampling rate; they are scaled here, as every
//! stored flow's are.

use std::borrow::Cow;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use serde::Deserialize;

use super::Decoder;
use super::json_lines::{LineDrops, lenient_i64};

/// Which of goflow2's output formats a message is in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goflow2Format {
    /// One JSON object, or one `key=value` text line, per message (told apart by the first
    /// character).
    Lines,
    /// Length-prefixed protobuf `FlowMessage`s, one or more per message.
    Protobuf,
}

/// One flow as goflow2 reported it, whatever the format.
#[derive(Debug, Default, PartialEq, Eq)]
struct Reported {
    kind: Option<SourceKind>,
    received_ns: u64,
    sampling_rate: u64,
    sampler: Option<IpAddr>,
    start_ns: u64,
    end_ns: u64,
    bytes: u64,
    packets: u64,
    src: Option<IpAddr>,
    dst: Option<IpAddr>,
    protocol: Option<u8>,
    src_port: u64,
    dst_port: u64,
    in_if: u64,
    out_if: u64,
    tcp_flags: u64,
    icmp_type: u64,
    icmp_code: u64,
    observation_domain: u64,
}

/// goflow2's `type`, numbered as in its FlowType enum or named as in its JSON.
fn kind_of_number(n: u64) -> Option<SourceKind> {
    match n {
        1 => Some(SourceKind::Sflow),
        2 => Some(SourceKind::NetflowV5),
        3 => Some(SourceKind::NetflowV9),
        4 => Some(SourceKind::Ipfix),
        _ => None,
    }
}

fn kind_of_name(name: &str) -> Option<SourceKind> {
    match name {
        "SFLOW_5" => Some(SourceKind::Sflow),
        "NETFLOW_V5" => Some(SourceKind::NetflowV5),
        "NETFLOW_V9" => Some(SourceKind::NetflowV9),
        "IPFIX" => Some(SourceKind::Ipfix),
        _ => None,
    }
}

/// A protocol as goflow2's JSON and text name it (IANA keywords), or its number.
fn protocol_of(text: &str) -> Option<u8> {
    if let Ok(n) = text.parse::<u8>() {
        return Some(n);
    }
    Some(match text {
        "ICMP" => 1,
        "IGMP" => 2,
        "TCP" => 6,
        "UDP" => 17,
        "GRE" => 47,
        "ESP" => 50,
        "AH" => 51,
        "ICMPv6" | "IPv6-ICMP" => 58,
        "OSPF" | "OSPFIGP" => 89,
        "PIM" => 103,
        "SCTP" => 132,
        _ => return None,
    })
}

/// An address as goflow2's JSON and text write it; empty when the field was unset.
fn address_of(text: &str) -> Option<IpAddr> {
    text.parse().ok()
}

/// An address as protobuf bytes: 4 or 16 of them (goflow2 writes no others).
fn address_of_bytes(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(b).ok()?))),
        16 => {
            let v6 = Ipv6Addr::from(<[u8; 16]>::try_from(b).ok()?);
            Some(v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4))
        }
        _ => None,
    }
}

#[derive(Deserialize)]
struct JsonLine<'a> {
    #[serde(borrow, rename = "type")]
    kind: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_received_ns: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    sampling_rate: Option<i64>,
    #[serde(borrow)]
    sampler_address: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_start_ns: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    time_flow_end_ns: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    bytes: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    packets: Option<i64>,
    #[serde(borrow)]
    src_addr: Option<Cow<'a, str>>,
    #[serde(borrow)]
    dst_addr: Option<Cow<'a, str>>,
    #[serde(borrow, default, deserialize_with = "text_or_number")]
    proto: Option<Cow<'a, str>>,
    #[serde(default, deserialize_with = "lenient_i64")]
    src_port: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    dst_port: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    in_if: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    out_if: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    tcp_flags: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    icmp_type: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    icmp_code: Option<i64>,
    #[serde(default, deserialize_with = "lenient_i64")]
    observation_domain_id: Option<i64>,
}

/// `"TCP"` or `6`, as text.
fn text_or_number<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Cow<'de, str>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Value<'a> {
        Text(#[serde(borrow)] Cow<'a, str>),
        Number(u64),
    }
    Ok(match Option::<Value<'de>>::deserialize(d)? {
        None => None,
        Some(Value::Text(t)) => Some(t),
        Some(Value::Number(n)) => Some(Cow::Owned(n.to_string())),
    })
}

impl JsonLine<'_> {
    fn reported(&self) -> Reported {
        let n = |v: Option<i64>| v.unwrap_or(0).max(0) as u64;
        Reported {
            kind: self.kind.as_deref().and_then(kind_of_name),
            received_ns: n(self.time_received_ns),
            sampling_rate: n(self.sampling_rate),
            sampler: self.sampler_address.as_deref().and_then(address_of),
            start_ns: n(self.time_flow_start_ns),
            end_ns: n(self.time_flow_end_ns),
            bytes: n(self.bytes),
            packets: n(self.packets),
            src: self.src_addr.as_deref().and_then(address_of),
            dst: self.dst_addr.as_deref().and_then(address_of),
            protocol: self.proto.as_deref().and_then(protocol_of),
            src_port: n(self.src_port),
            dst_port: n(self.dst_port),
            in_if: n(self.in_if),
            out_if: n(self.out_if),
            tcp_flags: n(self.tcp_flags),
            icmp_type: n(self.icmp_type),
            icmp_code: n(self.icmp_code),
            observation_domain: n(self.observation_domain_id),
        }
    }
}

/// A `-format=text` line: `key=value` pairs separated by spaces (values hold no spaces;
/// lists are written `[a b]` only when empty, `[]`).
fn text_line(line: &str) -> Option<Reported> {
    let mut r = Reported::default();
    let mut fields = 0;
    for pair in line.split_ascii_whitespace() {
        let Some((key, value)) = pair.split_once('=') else {
            continue;
        };
        fields += 1;
        let n = || value.parse::<u64>().unwrap_or(0);
        match key {
            "type" => r.kind = kind_of_name(value),
            "time_received_ns" => r.received_ns = n(),
            "sampling_rate" => r.sampling_rate = n(),
            "sampler_address" => r.sampler = address_of(value),
            "time_flow_start_ns" => r.start_ns = n(),
            "time_flow_end_ns" => r.end_ns = n(),
            "bytes" => r.bytes = n(),
            "packets" => r.packets = n(),
            "src_addr" => r.src = address_of(value),
            "dst_addr" => r.dst = address_of(value),
            "proto" => r.protocol = protocol_of(value),
            "src_port" => r.src_port = n(),
            "dst_port" => r.dst_port = n(),
            "in_if" => r.in_if = n(),
            "out_if" => r.out_if = n(),
            "tcp_flags" => r.tcp_flags = n(),
            "icmp_type" => r.icmp_type = n(),
            "icmp_code" => r.icmp_code = n(),
            "observation_domain_id" => r.observation_domain = n(),
            _ => fields -= 1,
        }
    }
    (fields > 0).then_some(r)
}

/// Why a protobuf message could not be read.
#[derive(Debug, PartialEq, Eq)]
enum WireError {
    Truncated,
    BadWireType(u8),
}

/// A protobuf reader over one message's bytes: only what `FlowMessage` needs (varints and
/// length-delimited fields read; 32- and 64-bit fields skipped), borrowing every byte string.
struct Wire<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Wire<'a> {
    fn varint(&mut self) -> Result<u64, WireError> {
        let mut value = 0u64;
        for shift in (0..70).step_by(7) {
            let b = *self.bytes.get(self.at).ok_or(WireError::Truncated)?;
            self.at += 1;
            if shift < 64 {
                value |= u64::from(b & 0x7f) << shift;
            }
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(WireError::Truncated)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        let end = self.at.checked_add(n).ok_or(WireError::Truncated)?;
        let s = self.bytes.get(self.at..end).ok_or(WireError::Truncated)?;
        self.at = end;
        Ok(s)
    }
}

/// One `FlowMessage` (goflow2's pb/flow.proto field numbers).
fn flow_message(bytes: &[u8]) -> Result<Reported, WireError> {
    let mut w = Wire { bytes, at: 0 };
    let mut r = Reported::default();
    let mut kind = 0;
    while w.at < bytes.len() {
        let key = w.varint()?;
        let (field, wire_type) = (key >> 3, (key & 7) as u8);
        match wire_type {
            0 => {
                let v = w.varint()?;
                match field {
                    1 => kind = v,
                    110 => r.received_ns = v,
                    3 => r.sampling_rate = v,
                    111 => r.start_ns = v,
                    112 => r.end_ns = v,
                    9 => r.bytes = v,
                    10 => r.packets = v,
                    20 => r.protocol = u8::try_from(v).ok(),
                    21 => r.src_port = v,
                    22 => r.dst_port = v,
                    18 => r.in_if = v,
                    19 => r.out_if = v,
                    26 => r.tcp_flags = v,
                    31 => r.icmp_type = v,
                    32 => r.icmp_code = v,
                    70 => r.observation_domain = v,
                    _ => {}
                }
            }
            2 => {
                let len = w.varint()? as usize;
                let v = w.take(len)?;
                match field {
                    11 => r.sampler = address_of_bytes(v),
                    6 => r.src = address_of_bytes(v),
                    7 => r.dst = address_of_bytes(v),
                    _ => {}
                }
            }
            1 => {
                w.take(8)?;
            }
            5 => {
                w.take(4)?;
            }
            other => return Err(WireError::BadWireType(other)),
        }
    }
    // proto3 leaves the protocol out when it is 0 (HOPOPT): absent reads as 0.
    r.protocol.get_or_insert(0);
    r.kind = kind_of_number(kind);
    Ok(r)
}

/// Decodes goflow2's messages into flows.
pub struct Goflow2Decoder {
    format: Goflow2Format,
    drops: LineDrops,
    /// Whether a flow whose message names no device is dropped (the transport's sender
    /// stands for no exporter) rather than stored under the sender's address.
    sampler_required: bool,
}

impl Goflow2Decoder {
    /// Drops are counted on `component` (the source's).
    pub fn new(format: Goflow2Format, component: Component) -> Self {
        Goflow2Decoder {
            format,
            drops: LineDrops::new(component),
            sampler_required: false,
        }
    }

    /// Flows whose message names no `sampler_address` are dropped and counted
    /// (`no_sampler_address`): for transports whose sender is not the exporter (Kafka).
    pub fn requiring_sampler_address(mut self) -> Self {
        self.sampler_required = true;
        self
    }

    /// Appends `r` to `out`, or counts why it cannot be stored. `from` stands for the
    /// exporter when the message names none.
    fn push(&mut self, r: &Reported, from: SocketAddr, received_at_us: i64, out: &mut SourceBatch) {
        let (Some(src), Some(dst)) = (r.src, r.dst) else {
            return self.drops.drop("bad_address");
        };
        let Some(protocol) = r.protocol else {
            return self.drops.drop("unknown_protocol");
        };
        // An all-zero sampler address is what an unset field decodes to: no device named.
        let exporter = match r.sampler.filter(|a| !a.is_unspecified()) {
            Some(sampler) => sampler,
            None if self.sampler_required => return self.drops.drop("no_sampler_address"),
            None => from.ip(),
        };
        let us = |ns: u64| i64::try_from(ns / 1000).ok().filter(|t| *t > 0);
        let received = us(r.received_ns).unwrap_or(received_at_us);
        // sFlow samples carry no flow times: goflow2 writes the time it received them.
        let Some(start) = us(r.start_ns).or(us(r.received_ns)) else {
            return self.drops.drop("bad_time");
        };
        let end = us(r.end_ns).unwrap_or(start).max(start);
        let sampling = r.sampling_rate.clamp(1, u64::from(u32::MAX));
        let port = |p: u64| u16::try_from(p).unwrap_or(0);
        let mut record = FlowRecord {
            flow_start: start,
            flow_end: end,
            src_ip: ip_to_u128(src),
            dst_ip: ip_to_u128(dst),
            src_port: port(r.src_port),
            dst_port: port(r.dst_port),
            protocol,
            tcp_flags: (r.tcp_flags & 0xff) as u8,
            bytes: r.bytes.saturating_mul(sampling),
            packets: r.packets.saturating_mul(sampling),
            sampling_rate: sampling as u32,
            in_if: u32::try_from(r.in_if).unwrap_or(u32::MAX),
            out_if: u32::try_from(r.out_if).unwrap_or(u32::MAX),
        };
        if matches!(protocol, 1 | 58) {
            record.src_port = 0;
            record.dst_port = (((r.icmp_type & 0xff) << 8) | (r.icmp_code & 0xff)) as u16;
        }
        let origin = FlowOrigin {
            received_at: received,
            exporter: ip_to_u128(exporter),
            observation_domain: u32::try_from(r.observation_domain).unwrap_or(0),
            source_kind: r.kind.unwrap_or(SourceKind::Goflow2),
        };
        out.flows.push(&origin, &record);
    }
}

impl Decoder for Goflow2Decoder {
    fn name(&self) -> &'static str {
        "goflow2"
    }

    fn decode(
        &mut self,
        from: SocketAddr,
        message: &[u8],
        received_at_us: i64,
        out: &mut SourceBatch,
    ) {
        match self.format {
            Goflow2Format::Lines => {
                let Some(text) = self.drops.line_text(message) else {
                    return;
                };
                let reported = if text.trim_start().starts_with('{') {
                    match serde_json::from_str::<JsonLine<'_>>(text) {
                        Ok(line) => line.reported(),
                        Err(e) => return self.drops.malformed(&e),
                    }
                } else {
                    match text_line(text) {
                        Some(r) => r,
                        None => return self.drops.drop("malformed_text"),
                    }
                };
                self.push(&reported, from, received_at_us, out);
            }
            Goflow2Format::Protobuf => {
                let mut w = Wire {
                    bytes: message,
                    at: 0,
                };
                while w.at < message.len() {
                    let one = w.varint().and_then(|len| w.take(len as usize));
                    match one.and_then(flow_message) {
                        Ok(r) => self.push(&r, from, received_at_us, out),
                        Err(_) => {
                            // The rest of the message cannot be framed: what came before stays.
                            return self.drops.drop("malformed_protobuf");
                        }
                    }
                }
            }
        }
    }

    fn housekeeping(&mut self) {
        self.drops.publish();
    }

    fn finish(&mut self) -> Result<(), super::DecoderError> {
        self.drops.publish();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use hawking_schemas::ip::parse_ip;
    use hawking_schemas::telemetry::{ComponentKind, Telemetry};

    fn real_exports() -> Option<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/real-exports");
        dir.join("goflow2_expected.tsv").is_file().then_some(dir)
    }

    fn decoder(format: Goflow2Format) -> (Goflow2Decoder, Telemetry) {
        let telemetry = Telemetry::detached();
        let component = telemetry.component(ComponentKind::Source, "goflow2");
        (Goflow2Decoder::new(format, component), telemetry)
    }

    const FROM: &str = "192.0.2.9:0";

    fn decode_all(d: &mut Goflow2Decoder, messages: &[&[u8]]) -> SourceBatch {
        let mut out = SourceBatch::default();
        for m in messages {
            d.decode(FROM.parse().unwrap(), m, 1, &mut out);
        }
        d.housekeeping();
        out
    }

    fn dropped(t: &Telemetry, reason: &str) -> f64 {
        t.registry()
            .gather()
            .iter()
            .filter(|f| f.name() == "hawking_component_dropped_events_total")
            .flat_map(|f| f.get_metric().to_vec())
            .filter(|m| m.get_label().iter().any(|l| l.value() == reason))
            .map(|m| m.get_counter().get_value())
            .sum()
    }

    #[test]
    fn real_goflow2_json_lines_decode_as_goflow2_printed_them() {
        let Some(dir) = real_exports() else {
            eprintln!("../shared/real-exports is absent: the real goflow2 lines are not checked");
            return;
        };
        let expected = std::fs::read_to_string(dir.join("goflow2_expected.tsv")).unwrap();
        let lines = std::fs::read_to_string(dir.join("goflow2/issue-292-sflow5.jsonl")).unwrap();
        let lines: Vec<&[u8]> = lines.lines().map(str::as_bytes).collect();
        let (mut d, _) = decoder(Goflow2Format::Lines);
        let out = decode_all(&mut d, &lines);
        let names: Vec<&str> = expected.lines().next().unwrap().split('\t').collect();
        let at = |name: &str| names.iter().position(|h| *h == name).unwrap();
        let rows: Vec<Vec<&str>> = expected
            .lines()
            .skip(1)
            .map(|l| l.split('\t').collect())
            .filter(|c: &Vec<&str>| c[0] == "goflow2/issue-292-sflow5.jsonl")
            .collect();
        let f = &out.flows;
        assert_eq!(f.len(), rows.len());
        for (i, row) in rows.iter().enumerate() {
            let n = |name: &str| row[at(name)].parse::<u64>().unwrap();
            let rate = n("sampling_rate");
            assert_eq!(f.exporter[i], parse_ip(row[at("sampler_address")]).unwrap());
            assert_eq!(f.src_ip[i], parse_ip(row[at("src_addr")]).unwrap());
            assert_eq!(f.dst_ip[i], parse_ip(row[at("dst_addr")]).unwrap());
            assert_eq!(u64::from(f.src_port[i]), n("src_port"));
            assert_eq!(u64::from(f.dst_port[i]), n("dst_port"));
            assert_eq!(f.protocol[i], 6, "{}", row[at("proto")]);
            assert_eq!(
                f.bytes[i],
                n("bytes") * rate,
                "sampled bytes scaled by the rate"
            );
            assert_eq!(f.packets[i], n("packets") * rate);
            assert_eq!(u64::from(f.sampling_rate[i]), rate);
            assert_eq!(f.flow_start[i] as u64, n("time_flow_start_ns") / 1000);
            assert_eq!(f.flow_end[i] as u64, n("time_flow_end_ns") / 1000);
            assert_eq!(f.received_at[i] as u64, n("time_received_ns") / 1000);
            assert_eq!(u64::from(f.in_if[i]), n("in_if"));
            assert_eq!(u64::from(f.out_if[i]), n("out_if"));
            assert_eq!(f.source_kind[i], SourceKind::Sflow);
        }
    }

    #[test]
    fn real_goflow2_text_lines_decode_like_its_json() {
        let Some(dir) = real_exports() else {
            eprintln!("../shared/real-exports is absent: the real goflow2 lines are not checked");
            return;
        };
        let text = std::fs::read_to_string(dir.join("goflow2/issue-text-format.txt")).unwrap();
        let lines: Vec<&[u8]> = text.lines().map(str::as_bytes).collect();
        let (mut d, _) = decoder(Goflow2Format::Lines);
        let f = decode_all(&mut d, &lines).flows;
        assert_eq!(f.len(), 2);
        // The sFlow sample: 118 bytes at 1 in 1024, flow times those of its reception.
        assert_eq!(f.exporter[0], parse_ip("10.10.26.5").unwrap());
        assert_eq!(
            (f.src_port[0], f.dst_port[0], f.protocol[0]),
            (57444, 16443, 6)
        );
        assert_eq!((f.bytes[0], f.packets[0]), (118 * 1024, 1024));
        assert_eq!(f.flow_start[0], 1_709_064_876_419_634);
        assert_eq!(f.tcp_flags[0], 24);
        // The NetFlow v9 flow: unsampled (rate 0 reads as 1), its own start time, domain.
        assert_eq!(f.source_kind[1], SourceKind::NetflowV9);
        assert_eq!(f.exporter[1], parse_ip("10.143.143.254").unwrap());
        assert_eq!(f.observation_domain[1], 33025);
        assert_eq!((f.bytes[1], f.packets[1], f.sampling_rate[1]), (64, 1, 1));
        assert_eq!(f.flow_start[1], 1_713_765_006_000_000);
        assert_eq!(f.received_at[1], 1_713_794_993_921_309);
        assert_eq!(f.dst_ip[1], parse_ip("142.250.184.202").unwrap());
    }

    /// goflow2's `FlowMessage`, declared from its pb/flow.proto field numbers, encoded by
    /// prost: an encoder other than the reader under test.
    #[derive(Clone, PartialEq, prost::Message)]
    struct FlowMessage {
        #[prost(int32, tag = "1")]
        kind: i32,
        #[prost(uint64, tag = "110")]
        time_received_ns: u64,
        #[prost(uint32, tag = "4")]
        sequence_num: u32,
        #[prost(uint64, tag = "3")]
        sampling_rate: u64,
        #[prost(bytes = "vec", tag = "11")]
        sampler_address: Vec<u8>,
        #[prost(uint64, tag = "111")]
        time_flow_start_ns: u64,
        #[prost(uint64, tag = "112")]
        time_flow_end_ns: u64,
        #[prost(uint64, tag = "9")]
        bytes: u64,
        #[prost(uint64, tag = "10")]
        packets: u64,
        #[prost(bytes = "vec", tag = "6")]
        src_addr: Vec<u8>,
        #[prost(bytes = "vec", tag = "7")]
        dst_addr: Vec<u8>,
        #[prost(uint32, tag = "30")]
        etype: u32,
        #[prost(uint32, tag = "20")]
        proto: u32,
        #[prost(uint32, tag = "21")]
        src_port: u32,
        #[prost(uint32, tag = "22")]
        dst_port: u32,
        #[prost(uint32, tag = "18")]
        in_if: u32,
        #[prost(uint32, tag = "19")]
        out_if: u32,
        #[prost(uint64, tag = "27")]
        src_mac: u64,
        #[prost(uint32, tag = "26")]
        tcp_flags: u32,
        #[prost(uint32, tag = "31")]
        icmp_type: u32,
        #[prost(uint32, tag = "32")]
        icmp_code: u32,
        #[prost(repeated, uint32, tag = "102")]
        as_path: Vec<u32>,
        #[prost(uint32, tag = "70")]
        observation_domain_id: u32,
    }

    fn v9_flow(src: [u8; 4], bytes: u64) -> FlowMessage {
        FlowMessage {
            kind: 3,
            time_received_ns: 1_796_083_260_000_000_000,
            sequence_num: 7,
            sampling_rate: 0,
            sampler_address: vec![192, 0, 2, 1],
            time_flow_start_ns: 1_796_083_200_000_000_000,
            time_flow_end_ns: 1_796_083_230_500_000_000,
            bytes,
            packets: 3,
            src_addr: src.to_vec(),
            dst_addr: [0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1].to_vec(),
            etype: 0x86dd,
            proto: 6,
            src_port: 40000,
            dst_port: 443,
            in_if: 3,
            out_if: 4,
            src_mac: 0x3cec_effc_f738,
            tcp_flags: 0x1b,
            icmp_type: 0,
            icmp_code: 0,
            as_path: vec![64512, 64513],
            observation_domain_id: 256,
        }
    }

    #[test]
    fn length_prefixed_protobuf_messages_decode_field_for_field() {
        use prost::Message;
        let mut kafka_message = Vec::new();
        v9_flow([10, 4, 1, 10], 1200)
            .encode_length_delimited(&mut kafka_message)
            .unwrap();
        let mut icmp = v9_flow([10, 4, 1, 11], 84);
        (
            icmp.proto,
            icmp.src_port,
            icmp.dst_port,
            icmp.icmp_type,
            icmp.icmp_code,
        ) = (1, 0, 0, 8, 0);
        icmp.kind = 1;
        icmp.sampling_rate = 512;
        icmp.time_flow_start_ns = 0;
        icmp.time_flow_end_ns = 0;
        icmp.encode_length_delimited(&mut kafka_message).unwrap();
        let (mut d, t) = decoder(Goflow2Format::Protobuf);
        let f = decode_all(&mut d, &[&kafka_message]).flows;
        assert_eq!(f.len(), 2, "two messages in one Kafka record");
        assert_eq!(f.exporter[0], parse_ip("192.0.2.1").unwrap());
        assert_eq!(f.observation_domain[0], 256);
        assert_eq!(f.source_kind[0], SourceKind::NetflowV9);
        assert_eq!(f.src_ip[0], parse_ip("10.4.1.10").unwrap());
        assert_eq!(f.dst_ip[0], parse_ip("2001:db8::1").unwrap());
        assert_eq!(
            (f.src_port[0], f.dst_port[0], f.protocol[0], f.tcp_flags[0]),
            (40000, 443, 6, 0x1b)
        );
        assert_eq!((f.bytes[0], f.packets[0], f.sampling_rate[0]), (1200, 3, 1));
        assert_eq!(
            (f.flow_start[0], f.flow_end[0]),
            (1_796_083_200_000_000, 1_796_083_230_500_000)
        );
        assert_eq!(f.received_at[0], 1_796_083_260_000_000);
        assert_eq!((f.in_if[0], f.out_if[0]), (3, 4));
        // An sFlow ICMP sample: no flow times (its reception's), counts scaled, type/code
        // where NetFlow puts them.
        assert_eq!(f.source_kind[1], SourceKind::Sflow);
        assert_eq!(f.flow_start[1], 1_796_083_260_000_000);
        assert_eq!((f.bytes[1], f.packets[1]), (84 * 512, 3 * 512));
        assert_eq!(
            (f.protocol[1], f.src_port[1], f.dst_port[1]),
            (1, 0, 0x0800)
        );
        assert_eq!(dropped(&t, "malformed_protobuf"), 0.0);
    }

    #[test]
    fn broken_messages_are_counted_and_what_came_before_is_kept() {
        use prost::Message;
        let mut message = Vec::new();
        v9_flow([10, 4, 1, 10], 1200)
            .encode_length_delimited(&mut message)
            .unwrap();
        let whole = message.len();
        v9_flow([10, 4, 1, 12], 1300)
            .encode_length_delimited(&mut message)
            .unwrap();
        message.truncate(whole + 10);
        let (mut d, t) = decoder(Goflow2Format::Protobuf);
        let mut no_address = v9_flow([10, 4, 1, 13], 1);
        no_address.src_addr.clear();
        let lone = no_address.encode_length_delimited_to_vec();
        let f = decode_all(&mut d, &[&message, &lone, &[0xff, 0xff, 0xff]]).flows;
        assert_eq!(f.len(), 1);
        assert_eq!(f.bytes[0], 1200);
        assert_eq!(dropped(&t, "malformed_protobuf"), 2.0);
        assert_eq!(
            dropped(&t, "bad_address"),
            1.0,
            "an absent address is not stored as ::"
        );

        let (mut d, t) = decoder(Goflow2Format::Lines);
        let lines: [&[u8]; 5] = [
            b"{\"type\":\"IPFIX\",\"src_addr\":\"10.0.0.1\"",
            b"{\"type\":\"IPFIX\",\"src_addr\":\"\",\"dst_addr\":\"10.0.0.2\",\"time_received_ns\":5000}",
            b"{\"type\":\"IPFIX\",\"src_addr\":\"10.0.0.1\",\"dst_addr\":\"10.0.0.2\",\"proto\":\"XYZ\",\"time_received_ns\":5000}",
            b"{\"type\":\"IPFIX\",\"src_addr\":\"10.0.0.1\",\"dst_addr\":\"10.0.0.2\",\"proto\":17}",
            b"no pairs here",
        ];
        let f = decode_all(&mut d, &lines).flows;
        assert_eq!(f.len(), 0);
        assert_eq!(dropped(&t, "malformed_json"), 1.0);
        assert_eq!(dropped(&t, "bad_address"), 1.0);
        assert_eq!(dropped(&t, "unknown_protocol"), 1.0);
        assert_eq!(
            dropped(&t, "bad_time"),
            1.0,
            "no time at all is not stored as 1970"
        );
        assert_eq!(dropped(&t, "malformed_text"), 1.0);
    }
}
