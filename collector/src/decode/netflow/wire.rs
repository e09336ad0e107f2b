//! Zero-copy views of NetFlow v5/v9 and IPFIX packet headers and sets (RFC 3954, RFC 7011):
//! just enough structure to route each set, with every length checked against the datagram.

use std::fmt;

pub const V5_HEADER_LEN: usize = 24;
pub const V5_RECORD_LEN: usize = 48;
pub const V9_HEADER_LEN: usize = 20;
pub const IPFIX_HEADER_LEN: usize = 16;
const SET_HEADER_LEN: usize = 4;

/// Set IDs below this carry templates (v9: 0, 1; IPFIX: 2, 3); at or above it, data.
pub const MIN_DATA_SET_ID: u16 = 256;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Version {
    V5,
    V9,
    Ipfix,
}

/// Why a datagram (or the rest of it) could not be decoded. The variant name is the
/// `reason` label of the decode-error counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WireError {
    /// Shorter than the header of the version it claims.
    TooShort,
    /// Version field is not 5, 9 or 10.
    UnsupportedVersion(u16),
    /// v5 record count is 0, above 30, or does not match the datagram length.
    BadRecordCount,
    /// IPFIX message length field disagrees with the datagram.
    BadMessageLength,
    /// A set header claims fewer than 4 or more bytes than remain.
    BadSetLength,
    /// A template set could not be parsed (rejected by the template parser or malformed).
    BadTemplate,
    /// A data record ran past the end of its set, or a variable-length field was malformed.
    TruncatedRecord,
}

impl WireError {
    pub fn reason(self) -> &'static str {
        match self {
            WireError::TooShort => "too_short",
            WireError::UnsupportedVersion(_) => "unsupported_version",
            WireError::BadRecordCount => "bad_record_count",
            WireError::BadMessageLength => "bad_message_length",
            WireError::BadSetLength => "bad_set_length",
            WireError::BadTemplate => "bad_template",
            WireError::TruncatedRecord => "truncated_record",
        }
    }
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::UnsupportedVersion(v) => write!(f, "unsupported NetFlow version {v}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for WireError {}

/// The facts of a packet header that decoding its records needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub version: Version,
    /// The exporter's clock when it sent the packet, ms since the Unix epoch.
    pub export_ms: i64,
    /// v5/v9: the exporter's uptime when it sent the packet (ms); IPFIX has none.
    pub sys_uptime_ms: Option<u32>,
    /// v9 source ID, IPFIX observation domain, v5 engine type and ID (`type << 8 | id`).
    pub domain: u32,
    pub sequence: u32,
    /// v5 only: the raw sampling field (mode in the top 2 bits, interval in the low 14).
    pub v5_sampling: u16,
    /// v5 only: number of records.
    pub count: u16,
}

#[inline]
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Reads a big-endian unsigned integer of 1..=8 bytes (RFC 7011 §6.2 reduced-size encoding).
#[inline]
pub fn be_uint(b: &[u8]) -> u64 {
    let mut v = 0u64;
    for x in b {
        v = (v << 8) | *x as u64;
    }
    v
}

/// Parses the header and returns it with the bytes that follow it (the v5 records, or the
/// v9/IPFIX sets; for IPFIX, bounded by the message length).
pub fn parse_header(pkt: &[u8]) -> Result<(Header, &[u8]), WireError> {
    if pkt.len() < 2 {
        return Err(WireError::TooShort);
    }
    match be16(pkt, 0) {
        5 => {
            if pkt.len() < V5_HEADER_LEN {
                return Err(WireError::TooShort);
            }
            let count = be16(pkt, 2);
            if count == 0
                || count > 30
                || pkt.len() < V5_HEADER_LEN + count as usize * V5_RECORD_LEN
            {
                return Err(WireError::BadRecordCount);
            }
            let secs = be32(pkt, 8) as i64;
            let nsecs = be32(pkt, 12) as i64;
            let header = Header {
                version: Version::V5,
                export_ms: secs * 1000 + nsecs / 1_000_000,
                sys_uptime_ms: Some(be32(pkt, 4)),
                domain: (pkt[20] as u32) << 8 | pkt[21] as u32,
                sequence: be32(pkt, 16),
                v5_sampling: be16(pkt, 22),
                count,
            };
            Ok((
                header,
                &pkt[V5_HEADER_LEN..V5_HEADER_LEN + count as usize * V5_RECORD_LEN],
            ))
        }
        9 => {
            if pkt.len() < V9_HEADER_LEN {
                return Err(WireError::TooShort);
            }
            let header = Header {
                version: Version::V9,
                export_ms: be32(pkt, 8) as i64 * 1000,
                sys_uptime_ms: Some(be32(pkt, 4)),
                domain: be32(pkt, 16),
                sequence: be32(pkt, 12),
                v5_sampling: 0,
                count: be16(pkt, 2),
            };
            Ok((header, &pkt[V9_HEADER_LEN..]))
        }
        10 => {
            if pkt.len() < IPFIX_HEADER_LEN {
                return Err(WireError::TooShort);
            }
            let len = be16(pkt, 2) as usize;
            if len < IPFIX_HEADER_LEN || len > pkt.len() {
                return Err(WireError::BadMessageLength);
            }
            let header = Header {
                version: Version::Ipfix,
                export_ms: be32(pkt, 4) as i64 * 1000,
                sys_uptime_ms: None,
                domain: be32(pkt, 12),
                sequence: be32(pkt, 8),
                v5_sampling: 0,
                count: 0,
            };
            Ok((header, &pkt[IPFIX_HEADER_LEN..len]))
        }
        other => Err(WireError::UnsupportedVersion(other)),
    }
}

/// One set (v9 "FlowSet") of a v9 or IPFIX packet: its ID and its body without the header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawSet<'a> {
    pub id: u16,
    pub body: &'a [u8],
}

impl RawSet<'_> {
    /// Template and options-template sets (v9 0/1, IPFIX 2/3; IPFIX messages carrying v9-style
    /// 0/1 sets included).
    pub fn is_template(&self) -> bool {
        self.id < 4
    }

    pub fn is_data(&self) -> bool {
        self.id >= MIN_DATA_SET_ID
    }
}

/// Iterates the sets of a v9/IPFIX packet body. Stops at the first malformed set header and
/// reports it once; trailing bytes shorter than a set header are padding and are ignored.
pub struct Sets<'a> {
    rest: &'a [u8],
}

impl<'a> Sets<'a> {
    pub fn new(body: &'a [u8]) -> Self {
        Sets { rest: body }
    }
}

impl<'a> Iterator for Sets<'a> {
    type Item = Result<RawSet<'a>, WireError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.len() < SET_HEADER_LEN {
            return None;
        }
        let id = be16(self.rest, 0);
        let len = be16(self.rest, 2) as usize;
        if len < SET_HEADER_LEN || len > self.rest.len() {
            self.rest = &[];
            return Some(Err(WireError::BadSetLength));
        }
        let body = &self.rest[SET_HEADER_LEN..len];
        self.rest = &self.rest[len..];
        Some(Ok(RawSet { id, body }))
    }
}

/// Template IDs withdrawn by an IPFIX template or options-template set (RFC 7011 §8.1: a
/// record with field count 0). A withdrawal of the set's own ID (2 or 3) withdraws all.
pub fn ipfix_withdrawals(set: &RawSet<'_>, mut on_withdraw: impl FnMut(u16)) {
    if set.id != 2 && set.id != 3 {
        return;
    }
    let b = set.body;
    let mut at = 0;
    while at + 4 <= b.len() {
        let id = be16(b, at);
        let count = be16(b, at + 2) as usize;
        if count == 0 {
            on_withdraw(id);
            at += 4;
            continue;
        }
        // Skip the record: options templates carry a scope count, then each field spec is
        // 4 bytes, plus 4 when the enterprise bit is set.
        at += if set.id == 3 { 6 } else { 4 };
        for _ in 0..count {
            if at + 4 > b.len() {
                return;
            }
            let enterprise = be16(b, at) & 0x8000 != 0;
            at += if enterprise { 8 } else { 4 };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rejects_what_it_cannot_frame() {
        assert_eq!(parse_header(&[]).unwrap_err(), WireError::TooShort);
        assert_eq!(
            parse_header(&[0, 7, 0, 0]).unwrap_err(),
            WireError::UnsupportedVersion(7)
        );
        assert_eq!(
            parse_header(&[0, 9, 0, 1]).unwrap_err(),
            WireError::TooShort
        );
        let mut v5 = vec![0u8; V5_HEADER_LEN];
        v5[1] = 5;
        v5[3] = 1; // claims one record but carries none
        assert_eq!(parse_header(&v5).unwrap_err(), WireError::BadRecordCount);
        let mut ipfix = vec![0u8; 16];
        ipfix[1] = 10;
        ipfix[3] = 40; // message length beyond the datagram
        assert_eq!(
            parse_header(&ipfix).unwrap_err(),
            WireError::BadMessageLength
        );
    }

    #[test]
    fn set_walk_stops_at_a_lying_length_and_ignores_padding() {
        let body = [1, 0, 0, 8, 9, 9, 9, 9, 1, 1, 0, 200, 0];
        let mut sets = Sets::new(&body);
        let first = sets.next().unwrap().unwrap();
        assert_eq!((first.id, first.body), (256, &[9u8, 9, 9, 9][..]));
        assert_eq!(sets.next().unwrap().unwrap_err(), WireError::BadSetLength);
        assert!(sets.next().is_none());
        let padded = [1, 0, 0, 4, 0, 0];
        assert_eq!(Sets::new(&padded).count(), 1);
    }

    #[test]
    fn finds_ipfix_withdrawals_between_live_templates() {
        // template 300 with one enterprise field, then a withdrawal of 301
        let body = [1, 44, 0, 1, 0x80, 1, 0, 4, 0, 0, 0, 9, 1, 45, 0, 0];
        let mut ids = vec![];
        ipfix_withdrawals(&RawSet { id: 2, body: &body }, |id| ids.push(id));
        assert_eq!(ids, vec![301]);
    }
}
