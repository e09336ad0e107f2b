//! What the JSON-lines decoders (Hubble, NetObserv) share: reading a line as text, counting
//! what they drop or skip and why, the reported identity of an endpoint, and timestamps.

use std::net::SocketAddr;

use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
use hawking_schemas::flow_details::{DetailRow, Int, Text};
use hawking_schemas::ip::ip_to_u128;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::telemetry::Component;
use serde::Deserialize;

/// Counts of dropped and skipped lines, published to the source's component in batches
/// (a line is too small a unit to touch shared counters for).
pub struct LineDrops {
    component: Component,
    pending: Vec<(&'static str, u64)>,
    malformed: u64,
    last_error: Option<String>,
}

impl LineDrops {
    pub fn new(component: Component) -> Self {
        LineDrops {
            component,
            pending: Vec::new(),
            malformed: 0,
            last_error: None,
        }
    }

    /// The component the counts go to.
    pub fn component(&self) -> &Component {
        &self.component
    }

    /// The line as text without its line ending, or `None` (counted) when it is not UTF-8.
    /// Blank lines are skipped silently.
    pub fn line_text<'a>(&mut self, message: &'a [u8]) -> Option<&'a str> {
        let Ok(text) = std::str::from_utf8(message) else {
            self.drop("not_utf8");
            return None;
        };
        let text = text.trim_end_matches(['\n', '\r']);
        (!text.trim().is_empty()).then_some(text)
    }

    /// A line that is not the JSON it should be.
    pub fn malformed(&mut self, error: &serde_json::Error) {
        self.malformed += 1;
        if self.last_error.is_none() {
            self.last_error = Some(error.to_string());
        }
    }

    /// A line that yields no flow (`reason` is the metric's label): one that cannot be
    /// stored, or one that is not a flow at all (an agent event), so that the lines in
    /// always equal the flows out plus the drops.
    pub fn drop(&mut self, reason: &'static str) {
        match self.pending.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, n)) => *n += 1,
            None => self.pending.push((reason, 1)),
        }
    }

    /// Hands the counts to the component (about once a second, and at the end).
    pub fn publish(&mut self) {
        for (reason, n) in self.pending.drain(..) {
            self.component.dropped(n, reason);
        }
        if self.malformed > 0 {
            self.component.dropped(self.malformed, "malformed_json");
            if let Some(e) = self.last_error.take() {
                self.component
                    .errors_of(self.malformed, "malformed_json", &e);
            }
            self.malformed = 0;
        }
    }
}

/// An endpoint as the exporter named it at capture time.
#[derive(Clone, Copy, Debug, Default)]
pub struct Endpoint<'a> {
    /// `pod`, `node`, `service`, or a reserved identity (`host`, `world`, …).
    pub kind: Option<&'a str>,
    pub namespace: Option<&'a str>,
    pub name: Option<&'a str>,
    pub workload_kind: Option<&'a str>,
    pub workload: Option<&'a str>,
    /// Cilium's numeric security identity.
    pub identity: Option<i64>,
}

impl<'a> Endpoint<'a> {
    /// Writes the endpoint into the `src_reported_*` (`source`) or `dst_reported_*` columns.
    pub fn fill(&self, row: &mut DetailRow<'a>, source: bool, labels: Option<&'a str>) {
        let [kind, namespace, name, workload_kind, workload, label_col] = if source {
            [
                Text::SrcReportedKind,
                Text::SrcReportedNamespace,
                Text::SrcReportedName,
                Text::SrcReportedWorkloadKind,
                Text::SrcReportedWorkload,
                Text::SrcReportedLabels,
            ]
        } else {
            [
                Text::DstReportedKind,
                Text::DstReportedNamespace,
                Text::DstReportedName,
                Text::DstReportedWorkloadKind,
                Text::DstReportedWorkload,
                Text::DstReportedLabels,
            ]
        };
        row.set(kind, self.kind);
        row.set(namespace, self.namespace.filter(|n| !n.is_empty()));
        row.set(name, self.name.filter(|n| !n.is_empty()));
        row.set(workload_kind, self.workload_kind.filter(|n| !n.is_empty()));
        row.set(workload, self.workload.filter(|n| !n.is_empty()));
        row.set(label_col, labels);
        row.set_int(
            if source {
                Int::SrcReportedIdentity
            } else {
                Int::DstReportedIdentity
            },
            self.identity,
        );
    }
}

/// Appends one flow an in-cluster exporter reported, with its details, as coming from
/// `from` (the source's exporter address).
pub fn push_flow(
    out: &mut SourceBatch,
    from: SocketAddr,
    received_at_us: i64,
    source_kind: SourceKind,
    row: &DetailRow<'_>,
    record: &FlowRecord,
) {
    let origin = FlowOrigin {
        received_at: received_at_us,
        exporter: ip_to_u128(from.ip()),
        observation_domain: 0,
        source_kind,
    };
    out.flows.details_mut().push(row);
    out.flows.push(&origin, record);
}

/// A number that may come as JSON text (`"1"`: Loki hands NetObserv's labels back as
/// strings).
pub fn lenient_i64<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Number<'a> {
        Int(i64),
        Float(f64),
        Text(&'a str),
        Owned(String),
    }
    Ok(match Option::<Number<'de>>::deserialize(d)? {
        None => None,
        Some(Number::Int(v)) => Some(v),
        Some(Number::Float(v)) if v.is_finite() => Some(v as i64),
        Some(Number::Float(_)) => None,
        Some(Number::Text(t)) => t.trim().parse().ok(),
        Some(Number::Owned(t)) => t.trim().parse().ok(),
    })
}

/// An RFC 3339 time (`2021-06-16T16:52:13.136834446Z`, 0–9 fractional digits, any offset) in
/// µs since the epoch.
pub fn parse_rfc3339_us(text: &str) -> Option<i64> {
    let ts: jiff::Timestamp = text.parse().ok()?;
    Some(ts.as_microsecond())
}

/// Test helper: every line through `decoder`, from 127.0.0.1, received at 5 µs.
#[cfg(test)]
pub(crate) fn decode_lines(
    decoder: &mut impl super::Decoder,
    lines: &[&str],
) -> hawking_schemas::pipeline::SourceBatch {
    let mut out = hawking_schemas::pipeline::SourceBatch::default();
    let from: std::net::SocketAddr = "127.0.0.1:0".parse().unwrap();
    for l in lines {
        decoder.decode(from, l.as_bytes(), 5, &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_with_six_or_nine_digits_read_to_the_microsecond() {
        assert_eq!(
            parse_rfc3339_us("2021-06-16T16:52:13.136834446Z"),
            Some(1_623_862_333_136_834)
        );
        assert_eq!(
            parse_rfc3339_us("2021-06-16T16:52:13.136834Z"),
            Some(1_623_862_333_136_834)
        );
        assert_eq!(parse_rfc3339_us("yesterday"), None);
    }
}
