//! Hawking's raw flows on the wire (`hawking.raw.v1`): what a collector (`hawking serve
//! --role collector`) publishes to Kafka and an enricher (`--role enricher`) consumes. One
//! message carries one exporter's part of a source batch, everything the enrichment stage
//! needs and nothing it computes: the flows as decoded (with the details in-cluster
//! exporters add), the NAT events and the NAT exporters' signs of life.
//!
//! Columnar and little-endian, so encoding and decoding are copies:
//!
//! ```text
//! "HKRW" · version u8 (1) · flags u8 (bit 0: details follow)
//! flows n u32 · then per column, n values: flow_start flow_end received_at i64 ·
//!   exporter u128 · observation_domain u32 · src_ip dst_ip u128 · src_port dst_port u16 ·
//!   protocol tcp_flags u8 · bytes packets u64 · sampling_rate in_if out_if u32 · source_kind u8
//! details (flag bit 0): 21 text columns, per row u32 length (0xffffffff: null) + UTF-8 ·
//!   6 integer columns, per row u8 presence + i64 · is_reply per row u8 (0 null, 1 no,
//!   2 yes) · counted per row u8
//! NAT events m u32 · per event: at i64 · kind u8 (0 unclassified, 1 create, 2 delete) ·
//!   exporter u128 · observation_domain u32 · protocol u8 · inside_ip u128 · inside_port u16 ·
//!   outside_ip u128 · outside_port u16 · remote_ip u128 · remote_port u16
//! NAT alive k u32 · per entry: exporter u128 · observation_domain u32 · at i64
//! ```
//!
//! Addresses are the `u128` form of [`crate::ip`]. A message that is short, long, or names
//! an unknown version or source kind is refused whole.

use crate::flow::{FlowBatch, SourceKind};
use crate::flow_details::{DetailRow, FlowDetails};
use crate::nat::{NatAlive, NatEvent, NatEventKind};
use crate::pipeline::SourceBatch;

/// The `hawking-schema` header of raw flow messages.
pub const RAW_SCHEMA: &str = "hawking.raw.v1";

const MAGIC: &[u8; 4] = b"HKRW";
const VERSION: u8 = 1;
const HAS_DETAILS: u8 = 1;
const NULL_TEXT: u32 = u32::MAX;

/// Longest text value read: a batch of 8,192 flows with every text column this long still
/// fits the 2 GiB a text column can hold.
pub const MAX_TEXT_BYTES: usize = 8192;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RawError {
    #[error("not a raw flow message")]
    NotRaw,
    #[error("raw flow message version {0} (this Hawking reads 1)")]
    Version(u8),
    #[error("raw flow message ends early")]
    Truncated,
    #[error("raw flow message has {0} bytes after its end")]
    Trailing(usize),
    #[error("raw flow message: {0}")]
    Invalid(&'static str),
}

/// Appends to `out` one message holding the flows of `batch` at `rows` and the given NAT
/// events and signs of life.
pub fn encode(
    batch: &FlowBatch,
    rows: &[usize],
    nat_events: &[NatEvent],
    nat_alive: &[NatAlive],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(MAGIC);
    out.push(VERSION);
    let details = batch.details.as_deref();
    out.push(if details.is_some() { HAS_DETAILS } else { 0 });
    out.extend_from_slice(&(rows.len() as u32).to_le_bytes());
    macro_rules! column {
        ($($c:ident),*) => {$(
            out.reserve(rows.len() * size_of_val(&batch.$c.first().copied().unwrap_or_default()));
            for &i in rows {
                out.extend_from_slice(&batch.$c[i].to_le_bytes());
            }
        )*};
    }
    column!(
        flow_start,
        flow_end,
        received_at,
        exporter,
        observation_domain,
        src_ip,
        dst_ip
    );
    column!(src_port, dst_port, protocol, tcp_flags, bytes, packets);
    column!(sampling_rate, in_if, out_if);
    out.extend(rows.iter().map(|&i| batch.source_kind[i] as u8));
    if let Some(d) = details {
        // Rows past the details' end (flows pushed after the last with details) are null.
        let has = |i: usize| i < d.len();
        for text in &d.text {
            for &i in rows {
                match has(i).then(|| text.get(i)).flatten() {
                    Some(s) => {
                        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        out.extend_from_slice(s.as_bytes());
                    }
                    None => out.extend_from_slice(&NULL_TEXT.to_le_bytes()),
                }
            }
        }
        for ints in &d.ints {
            for &i in rows {
                let v = ints.get(i).copied().flatten();
                out.push(v.is_some() as u8);
                out.extend_from_slice(&v.unwrap_or(0).to_le_bytes());
            }
        }
        out.extend(
            rows.iter()
                .map(|&i| match d.is_reply.get(i).copied().flatten() {
                    None => 0,
                    Some(false) => 1,
                    Some(true) => 2,
                }),
        );
        out.extend(
            rows.iter()
                .map(|&i| d.counted.get(i).copied().unwrap_or(false) as u8),
        );
    }
    out.extend_from_slice(&(nat_events.len() as u32).to_le_bytes());
    for e in nat_events {
        out.extend_from_slice(&e.at.to_le_bytes());
        out.push(match e.kind {
            None => 0,
            Some(NatEventKind::Create) => 1,
            Some(NatEventKind::Delete) => 2,
        });
        out.extend_from_slice(&e.exporter.to_le_bytes());
        out.extend_from_slice(&e.observation_domain.to_le_bytes());
        out.push(e.protocol);
        out.extend_from_slice(&e.inside_ip.to_le_bytes());
        out.extend_from_slice(&e.inside_port.to_le_bytes());
        out.extend_from_slice(&e.outside_ip.to_le_bytes());
        out.extend_from_slice(&e.outside_port.to_le_bytes());
        out.extend_from_slice(&e.remote_ip.to_le_bytes());
        out.extend_from_slice(&e.remote_port.to_le_bytes());
    }
    out.extend_from_slice(&(nat_alive.len() as u32).to_le_bytes());
    for a in nat_alive {
        out.extend_from_slice(&a.exporter.to_le_bytes());
        out.extend_from_slice(&a.observation_domain.to_le_bytes());
        out.extend_from_slice(&a.at.to_le_bytes());
    }
}

/// Reads little-endian values off the front of a message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], RawError> {
        if self.bytes.len() < n {
            return Err(RawError::Truncated);
        }
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], RawError> {
        Ok(self.take(N)?.try_into().expect("N bytes"))
    }

    fn u8(&mut self) -> Result<u8, RawError> {
        Ok(self.array::<1>()?[0])
    }

    fn count(&mut self, each: usize) -> Result<usize, RawError> {
        let n = u32::from_le_bytes(self.array()?) as usize;
        // What the count claims must be there: a hostile count cannot make us reserve memory.
        if self.bytes.len() < n.saturating_mul(each) {
            return Err(RawError::Truncated);
        }
        Ok(n)
    }
}

macro_rules! read_column {
    ($r:expr, $n:expr, $out:expr, $t:ty) => {{
        const W: usize = size_of::<$t>();
        let bytes = $r.take($n * W)?;
        $out.extend(
            bytes
                .chunks_exact(W)
                .map(|c| <$t>::from_le_bytes(c.try_into().expect("W bytes"))),
        );
    }};
}

fn source_kind(v: u8) -> Result<SourceKind, RawError> {
    use SourceKind::*;
    [
        NetflowV5, NetflowV9, Ipfix, Pcap, Ebpf, Hubble, NetObserv, Sflow, Goflow2,
    ]
    .into_iter()
    .find(|k| *k as u8 == v)
    .ok_or(RawError::Invalid("unknown source kind"))
}

/// Appends what one message carries to `out`. `scratch` holds the message's flows on the
/// way (kept by the caller, so its buffers are reused). A refused message adds nothing.
pub fn decode(
    message: &[u8],
    scratch: &mut FlowBatch,
    out: &mut SourceBatch,
) -> Result<(), RawError> {
    scratch.clear();
    let mut r = Reader { bytes: message };
    if r.take(4).ok() != Some(&MAGIC[..]) {
        return Err(RawError::NotRaw);
    }
    let version = r.u8()?;
    if version != VERSION {
        return Err(RawError::Version(version));
    }
    let flags = r.u8()?;
    if flags & !HAS_DETAILS != 0 {
        return Err(RawError::Invalid("unknown flags"));
    }
    // The fixed columns alone take 111 bytes a flow.
    let n = r.count(111)?;
    let f = &mut *scratch;
    read_column!(r, n, f.flow_start, i64);
    read_column!(r, n, f.flow_end, i64);
    read_column!(r, n, f.received_at, i64);
    read_column!(r, n, f.exporter, u128);
    read_column!(r, n, f.observation_domain, u32);
    read_column!(r, n, f.src_ip, u128);
    read_column!(r, n, f.dst_ip, u128);
    read_column!(r, n, f.src_port, u16);
    read_column!(r, n, f.dst_port, u16);
    read_column!(r, n, f.protocol, u8);
    read_column!(r, n, f.tcp_flags, u8);
    read_column!(r, n, f.bytes, u64);
    read_column!(r, n, f.packets, u64);
    read_column!(r, n, f.sampling_rate, u32);
    read_column!(r, n, f.in_if, u32);
    read_column!(r, n, f.out_if, u32);
    for &k in r.take(n)? {
        f.source_kind.push(source_kind(k)?);
    }
    // What every decoder guarantees of the flows it hands on, checked again: a collector
    // of another version (or anyone who can publish) may not.
    let times_hold = (0..n)
        .all(|i| f.flow_start[i] > 0 && f.flow_end[i] >= f.flow_start[i] && f.received_at[i] > 0);
    if !times_hold {
        return Err(RawError::Invalid("a flow time out of range"));
    }
    if f.sampling_rate.contains(&0) {
        return Err(RawError::Invalid("a sampling rate of 0"));
    }
    if flags & HAS_DETAILS != 0 {
        f.details = Some(Box::new(read_details(&mut r, n)?));
    }
    let mut nat_events = Vec::new();
    for _ in 0..r.count(84)? {
        nat_events.push(NatEvent {
            at: i64::from_le_bytes(r.array()?),
            kind: match r.u8()? {
                0 => None,
                1 => Some(NatEventKind::Create),
                2 => Some(NatEventKind::Delete),
                _ => return Err(RawError::Invalid("unknown NAT event kind")),
            },
            exporter: u128::from_le_bytes(r.array()?),
            observation_domain: u32::from_le_bytes(r.array()?),
            protocol: r.u8()?,
            inside_ip: u128::from_le_bytes(r.array()?),
            inside_port: u16::from_le_bytes(r.array()?),
            outside_ip: u128::from_le_bytes(r.array()?),
            outside_port: u16::from_le_bytes(r.array()?),
            remote_ip: u128::from_le_bytes(r.array()?),
            remote_port: u16::from_le_bytes(r.array()?),
        });
    }
    let mut nat_alive = Vec::new();
    for _ in 0..r.count(28)? {
        nat_alive.push(NatAlive {
            exporter: u128::from_le_bytes(r.array()?),
            observation_domain: u32::from_le_bytes(r.array()?),
            at: i64::from_le_bytes(r.array()?),
        });
    }
    if !r.bytes.is_empty() {
        return Err(RawError::Trailing(r.bytes.len()));
    }
    out.flows.extend_from(scratch);
    out.nat_events.extend(nat_events);
    out.nat_alive.extend(nat_alive);
    Ok(())
}

fn read_details(r: &mut Reader<'_>, n: usize) -> Result<FlowDetails, RawError> {
    let mut texts: Vec<Vec<Option<&str>>> = Vec::with_capacity(21);
    for _ in 0..21 {
        let mut column = Vec::with_capacity(n);
        for _ in 0..n {
            let len = u32::from_le_bytes(r.array()?);
            column.push(match len {
                NULL_TEXT => None,
                len if len as usize > MAX_TEXT_BYTES => {
                    return Err(RawError::Invalid("a text value over 8192 bytes"));
                }
                len => Some(
                    std::str::from_utf8(r.take(len as usize)?)
                        .map_err(|_| RawError::Invalid("text that is not UTF-8"))?,
                ),
            });
        }
        texts.push(column);
    }
    let mut ints: Vec<Vec<Option<i64>>> = Vec::with_capacity(6);
    for _ in 0..6 {
        let mut column = Vec::with_capacity(n);
        for _ in 0..n {
            let present = r.u8()? != 0;
            let v = i64::from_le_bytes(r.array()?);
            column.push(present.then_some(v));
        }
        ints.push(column);
    }
    let is_reply = r.take(n)?;
    let counted = r.take(n)?;
    let mut details = FlowDetails::default();
    for i in 0..n {
        let mut row = DetailRow {
            is_reply: match is_reply[i] {
                0 => None,
                1 => Some(false),
                2 => Some(true),
                _ => return Err(RawError::Invalid("unknown reply flag")),
            },
            counted: counted[i] != 0,
            ..Default::default()
        };
        for (c, column) in texts.iter().enumerate() {
            row.text[c] = column[i];
        }
        for (c, column) in ints.iter().enumerate() {
            row.ints[c] = column[i];
        }
        details.push(&row);
    }
    Ok(details)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flow::{FlowOrigin, FlowRecord};
    use crate::flow_details::Text;
    use crate::ip::parse_ip;

    /// Five flows from two exporters; with `details`, the third carries some.
    fn flows_with(details: bool) -> FlowBatch {
        let mut b = FlowBatch::default();
        for i in 0..5u64 {
            if details && i == 2 {
                let mut row = DetailRow {
                    is_reply: Some(true),
                    counted: false,
                    ..Default::default()
                };
                row.set(Text::SrcReportedNamespace, Some("shop"));
                row.set(Text::Verdict, Some(""));
                b.details_mut().push(&row);
            }
            let origin = FlowOrigin {
                received_at: 1_796_083_260_000_000 + i as i64,
                exporter: parse_ip(if i % 2 == 0 {
                    "192.0.2.1"
                } else {
                    "2001:db8::1"
                })
                .unwrap(),
                observation_domain: i as u32,
                source_kind: SourceKind::Ipfix,
            };
            b.push(
                &origin,
                &FlowRecord {
                    flow_start: 1_796_083_200_000_000 + i as i64,
                    flow_end: 1_796_083_230_000_000,
                    src_ip: parse_ip("10.4.1.10").unwrap(),
                    dst_ip: parse_ip("2001:db8::9").unwrap(),
                    src_port: 40000 + i as u16,
                    dst_port: 443,
                    protocol: 6,
                    tcp_flags: 0x1b,
                    bytes: u64::MAX - i,
                    packets: 3,
                    sampling_rate: 1,
                    in_if: u32::MAX,
                    out_if: 2,
                },
            );
        }
        b
    }

    fn flows() -> FlowBatch {
        flows_with(false)
    }

    fn nat() -> (Vec<NatEvent>, Vec<NatAlive>) {
        let event = NatEvent {
            at: 1_796_083_199_000_000,
            kind: Some(NatEventKind::Delete),
            exporter: parse_ip("192.0.2.1").unwrap(),
            observation_domain: 7,
            protocol: 17,
            inside_ip: parse_ip("10.4.1.10").unwrap(),
            inside_port: 5353,
            outside_ip: parse_ip("198.51.100.4").unwrap(),
            outside_port: 61000,
            remote_ip: 0,
            remote_port: 0,
        };
        let alive = NatAlive {
            exporter: event.exporter,
            observation_domain: 7,
            at: 1_796_083_100_000_000,
        };
        (
            vec![
                event,
                NatEvent {
                    kind: None,
                    ..event
                },
            ],
            vec![alive],
        )
    }

    #[test]
    fn a_batch_goes_through_a_message_unchanged() {
        let (events, alive) = nat();
        let batch = flows_with(true);
        let all: Vec<usize> = (0..batch.len()).collect();
        let mut message = Vec::new();
        encode(&batch, &all, &events, &alive, &mut message);
        let (mut scratch, mut out) = (FlowBatch::default(), SourceBatch::default());
        decode(&message, &mut scratch, &mut out).unwrap();
        assert_eq!(out.flows, batch);
        let d = out.flows.details.as_ref().unwrap();
        assert_eq!(d.get_text(Text::SrcReportedNamespace, 2), Some("shop"));
        assert_eq!(d.get_text(Text::Verdict, 2), Some(""), "empty is not null");
        assert_eq!(d.get_text(Text::Verdict, 1), None);
        assert_eq!(out.nat_events, events);
        assert_eq!(out.nat_alive, alive);
    }

    #[test]
    fn a_message_holds_the_rows_it_was_given_and_appends_to_what_is_there() {
        let batch = flows();
        let mut message = Vec::new();
        encode(&batch, &[1, 3], &[], &[], &mut message);
        let (mut scratch, mut out) = (FlowBatch::default(), SourceBatch::default());
        decode(&message, &mut scratch, &mut out).unwrap();
        decode(&message, &mut scratch, &mut out).unwrap();
        assert_eq!(out.flows.len(), 4);
        assert_eq!(out.flows.src_port, [40001, 40003, 40001, 40003]);
        assert_eq!(out.flows.exporter[0], parse_ip("2001:db8::1").unwrap());
        assert!(out.flows.details.is_none());
    }

    #[test]
    fn a_damaged_message_is_refused_whole() {
        let (events, alive) = nat();
        let batch = flows();
        let mut message = Vec::new();
        encode(&batch, &[0, 1, 2], &events, &alive, &mut message);
        let refused = |m: &[u8]| {
            let (mut scratch, mut out) = (FlowBatch::default(), SourceBatch::default());
            let e = decode(m, &mut scratch, &mut out).unwrap_err();
            assert!(!out.has_content(), "{e}: nothing kept");
            e
        };
        for cut in 0..message.len() {
            refused(&message[..cut]);
        }
        let mut longer = message.clone();
        longer.push(0);
        assert_eq!(refused(&longer), RawError::Trailing(1));
        let mut later = message.clone();
        later[4] = 2;
        assert_eq!(refused(&later), RawError::Version(2));
        assert_eq!(refused(b"{\"bytes\":1}"), RawError::NotRaw);
        let mut flagged = message.clone();
        flagged[5] |= 0x80;
        assert_eq!(refused(&flagged), RawError::Invalid("unknown flags"));
        // Flow times a decoder would not have handed on (a partition's hour from them
        // would overflow).
        let mut timeless = batch.clone();
        timeless.flow_start[1] = i64::MIN;
        let mut bad = Vec::new();
        encode(&timeless, &[0, 1], &[], &[], &mut bad);
        assert_eq!(refused(&bad), RawError::Invalid("a flow time out of range"));
        let mut unsampled = batch.clone();
        unsampled.sampling_rate[0] = 0;
        bad.clear();
        encode(&unsampled, &[0], &[], &[], &mut bad);
        assert_eq!(refused(&bad), RawError::Invalid("a sampling rate of 0"));
        // A text value too long for a batch's column to hold many of.
        let mut wordy = FlowBatch::default();
        let mut row = DetailRow::default();
        let long = "x".repeat(MAX_TEXT_BYTES + 1);
        row.set(Text::Verdict, Some(&long));
        wordy.details_mut().push(&row);
        wordy.push(
            &FlowOrigin {
                received_at: 1,
                exporter: 1,
                observation_domain: 0,
                source_kind: SourceKind::Hubble,
            },
            &FlowRecord {
                flow_start: 1,
                flow_end: 1,
                sampling_rate: 1,
                ..Default::default()
            },
        );
        bad.clear();
        encode(&wordy, &[0], &[], &[], &mut bad);
        assert_eq!(
            refused(&bad),
            RawError::Invalid("a text value over 8192 bytes")
        );
        // A count far beyond the message reserves nothing.
        let mut huge = message.clone();
        huge[6..10].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(refused(&huge), RawError::Truncated);
    }
}
