//! Source-NAT translations: the session events exporters report (RFC 8158 NAT logging, or
//! Hawking's node agent reading conntrack) and the schema of the persisted `nat_history`.
//!
//! A translation says: from `valid_from` to `valid_to`, traffic of `protocol` from the inside
//! address and port left the NAT as the outside address and port (towards `remote`, when the
//! NAT is per-destination, as Linux conntrack is). A flow seen outside the NAT is mapped back
//! through it to the inside address, whose owner the address history then names.

use std::sync::OnceLock;

use arrow::datatypes::{DataType, Field, SchemaRef};

/// Whether a NAT session began or ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum NatEventKind {
    Create,
    Delete,
}

/// One NAT session event as decoded from an exporter. Addresses are in the `u128` form of
/// [`crate::ip`]; `remote_ip` is 0 (and `remote_port` 0) when the event names no remote end,
/// i.e. the mapping holds for every destination (endpoint-independent mapping).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatEvent {
    /// When the event happened at the NAT, µs since the Unix epoch (the record's observation
    /// time, else the export time).
    pub at: i64,
    /// `None` for events the decoder could not classify (not stored).
    pub kind: Option<NatEventKind>,
    pub exporter: u128,
    pub observation_domain: u32,
    pub protocol: u8,
    pub inside_ip: u128,
    pub inside_port: u16,
    pub outside_ip: u128,
    pub outside_port: u16,
    pub remote_ip: u128,
    pub remote_port: u16,
}

/// A NAT logging exporter showed it is alive at `at` (µs, its own clock): it announced its NAT
/// event templates (exporters re-send them periodically over UDP) or sent events. While a
/// NAT is silent, flows through its outside addresses cannot be mapped back with confidence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatAlive {
    pub exporter: u128,
    pub observation_domain: u32,
    pub at: i64,
}

/// IANA natEvent (information element 230) values Hawking reads (RFC 8158 §4 and the IANA
/// registry): session and BIB create/delete for NAT44 and NAT64, plus the historic
/// "NAT translation create/delete" that older exporters send.
pub fn nat_event_kind(nat_event: u64) -> Option<NatEventKind> {
    match nat_event {
        1 | 4 | 6 | 8 | 10 => Some(NatEventKind::Create),
        2 | 5 | 7 | 9 | 11 => Some(NatEventKind::Delete),
        _ => None,
    }
}

/// Schema of the `nat_history_log` table (and of the `nat_history` view over it). Like
/// `ip_history_log`, a translation is written when it opens, with `valid_to` null, and again
/// under the same `translation_id` when it closes.
pub fn nat_history_schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            crate::history::with_version(vec![
                Field::new("translation_id", DataType::Int64, false),
                // The cluster whose address history names the inside address; null when the
                // NAT's exporter is not tied to one cluster.
                Field::new("cluster_name", DataType::Utf8, true),
                Field::new("protocol", DataType::Int16, false),
                Field::new("inside_ip", DataType::Utf8, false),
                Field::new("inside_port", DataType::Int32, false),
                Field::new("outside_ip", DataType::Utf8, false),
                Field::new("outside_port", DataType::Int32, false),
                // Null when the mapping holds for every remote end.
                Field::new("remote_ip", DataType::Utf8, true),
                Field::new("remote_port", DataType::Int32, true),
                Field::new("valid_from", crate::history::ts(), false),
                // Null while the translation is open.
                Field::new("valid_to", crate::history::ts(), true),
                // The NAT that reported it (a NAT gateway, or a node's agent).
                Field::new("exporter", DataType::Utf8, false),
                Field::new("recorded_at", crate::history::ts(), false),
            ])
        })
        .clone()
}
