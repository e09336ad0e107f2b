//! `replay --diff`: the flow endpoints whose attribution changed, the stored answer beside
//! today's, and why it changed.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringBuilder, UInt32Array};
use arrow::compute::{cast, take};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use hawking_enricher::attribute::{changed_endpoints, endpoint_columns};
use hawking_enricher::{BatchAttribution, IpHistory};
use hawking_schemas::flow::ENDPOINT_COLUMNS;

/// One row per changed endpoint.
pub fn diff_schema() -> SchemaRef {
    let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    Arc::new(Schema::new(vec![
        Field::new("flow_start", ts(), false),
        Field::new("flow_end", ts(), false),
        Field::new("exporter", DataType::Utf8, false),
        Field::new("src_ip", DataType::Utf8, false),
        Field::new("src_port", DataType::Int32, false),
        Field::new("dst_ip", DataType::Utf8, false),
        Field::new("dst_port", DataType::Int32, false),
        Field::new("protocol", DataType::Int16, false),
        Field::new("bytes", DataType::Int64, false),
        // Which endpoint changed: src or dst.
        Field::new("side", DataType::Utf8, false),
        Field::new("attribution_before", DataType::Utf8, true),
        Field::new("attribution_after", DataType::Utf8, true),
        Field::new("owner_before", DataType::Utf8, true),
        Field::new("owner_after", DataType::Utf8, true),
        Field::new("why", DataType::Utf8, false),
    ]))
}

/// The attribution of one endpoint side, read from the nine `{side}_*` columns.
struct Side<'a> {
    columns: Vec<&'a arrow::array::StringArray>,
}

/// One side's nine stored attribution columns, as read.
fn stored_columns(rows: &RecordBatch, side: &str) -> anyhow::Result<Vec<ArrayRef>> {
    ENDPOINT_COLUMNS
        .iter()
        .map(|c| {
            let name = format!("{side}_{c}");
            rows.column_by_name(&name)
                .cloned()
                .ok_or_else(|| anyhow::anyhow!("no column {name}"))
        })
        .collect()
}

/// `columns` at `rows`, as plain text.
fn text_at(columns: &[ArrayRef], rows: &UInt32Array) -> anyhow::Result<Vec<ArrayRef>> {
    columns
        .iter()
        .map(|c| Ok(cast(&take(c.as_ref(), rows, None)?, &DataType::Utf8)?))
        .collect()
}

impl<'a> Side<'a> {
    fn new(columns: &'a [ArrayRef]) -> Self {
        Side {
            columns: columns.iter().map(|c| c.as_string::<i32>()).collect(),
        }
    }

    fn get(&self, column: &str, row: usize) -> Option<&'a str> {
        let i = ENDPOINT_COLUMNS.iter().position(|c| *c == column)?;
        let c = self.columns[i];
        (!c.is_null(row)).then(|| c.value(row))
    }

    /// Who it names, as people read it: `namespace/pod (Kind workload)`, a node, a service,
    /// or the candidates of an ambiguous answer.
    fn owner(&self, row: usize) -> Option<String> {
        let ns = self
            .get("namespace", row)
            .map(|n| format!("{n}/"))
            .unwrap_or_default();
        if let Some(pod) = self.get("pod", row) {
            let workload = match (self.get("workload_kind", row), self.get("workload", row)) {
                (Some(k), Some(w)) => format!(" ({k} {w})"),
                _ => String::new(),
            };
            return Some(format!("{ns}{pod}{workload}"));
        }
        if let Some(service) = self.get("service", row) {
            return Some(format!("service {ns}{service}"));
        }
        if let Some(node) = self.get("node", row) {
            return Some(format!("node {node}"));
        }
        self.get("candidates", row).map(|c| format!("one of {c}"))
    }
}

/// Why an endpoint's answer moved from `before` to `after`.
fn why(before: Option<&str>, after: Option<&str>) -> &'static str {
    match (before.unwrap_or("none"), after.unwrap_or("none")) {
        ("none", _) => "never attributed before (stored without a cluster)",
        ("unknown", "unknown") => "the history now names other candidates",
        ("unknown", _) => "the history now covers that time (an import or a recovered watch gap)",
        (_, "unknown") => "the history no longer covers that time",
        ("external", _) => "the address is now in a cluster's history or ranges",
        (_, "external") => "the address is no longer in any cluster's history or ranges",
        ("node", "snat") => "a NAT translation now maps the node's address and port to a pod",
        ("snat", "node") => "no NAT translation covers the flow any more",
        ("ambiguous", _) => "the history no longer has two holders for that time",
        (_, "ambiguous") => "the history now has two holders for that time",
        (a, b) if a == b => "the history now names another holder",
        _ => "the history now tells another kind of holder",
    }
}

/// The changed endpoints of `before` (stored rows) against `after` (today's answer for
/// the same rows), or `None` when nothing changed. Only the changed endpoints' answers are
/// turned into text.
pub fn diff(
    before: &RecordBatch,
    history: &IpHistory,
    after: &BatchAttribution,
) -> anyhow::Result<Option<RecordBatch>> {
    struct Change<'a> {
        row: u32,
        side: &'static str,
        was: Option<&'a str>,
        is: Option<&'a str>,
        owner_was: Option<String>,
        owner_is: Option<String>,
    }
    let mut texts = Vec::new();
    for (side, resolved) in [("src", &after.src), ("dst", &after.dst)] {
        let stored = stored_columns(before, side)?;
        let rows = changed_endpoints(history, resolved, &stored)?;
        let changed: Vec<_> = rows.iter().map(|r| resolved[*r as usize]).collect();
        let rows = UInt32Array::from(rows);
        let was = text_at(&stored, &rows)?;
        let is = endpoint_columns(history, &changed);
        texts.push((side, rows, was, is));
    }
    let mut changes = Vec::new();
    for (side, rows, was, is) in &texts {
        let (b, a) = (Side::new(was), Side::new(is));
        for (i, row) in rows.values().iter().enumerate() {
            changes.push(Change {
                row: *row,
                side,
                was: b.get("attribution", i),
                is: a.get("attribution", i),
                owner_was: b.owner(i),
                owner_is: a.owner(i),
            });
        }
    }
    // In the flows' order, each flow's src before its dst.
    changes.sort_by_key(|c| (c.row, c.side != "src"));
    let mut side_name = StringBuilder::new();
    let (mut att_before, mut att_after) = (StringBuilder::new(), StringBuilder::new());
    let (mut owner_before, mut owner_after) = (StringBuilder::new(), StringBuilder::new());
    let mut reason = StringBuilder::new();
    let mut rows = Vec::with_capacity(changes.len());
    for c in &changes {
        rows.push(c.row);
        side_name.append_value(c.side);
        att_before.append_option(c.was);
        att_after.append_option(c.is);
        owner_before.append_option(c.owner_was.as_deref());
        owner_after.append_option(c.owner_is.as_deref());
        reason.append_value(why(c.was, c.is));
    }
    if rows.is_empty() {
        return Ok(None);
    }
    let order = UInt32Array::from(rows);
    let pick = |name: &str| -> anyhow::Result<ArrayRef> {
        let c = before
            .column_by_name(name)
            .ok_or_else(|| anyhow::anyhow!("no column {name}"))?;
        let c = take(c.as_ref(), &order, None)?;
        Ok(match c.data_type() {
            DataType::Utf8View => cast(&c, &DataType::Utf8)?,
            _ => c,
        })
    };
    let columns: Vec<ArrayRef> = vec![
        pick("flow_start")?,
        pick("flow_end")?,
        pick("exporter")?,
        pick("src_ip")?,
        pick("src_port")?,
        pick("dst_ip")?,
        pick("dst_port")?,
        pick("protocol")?,
        pick("bytes")?,
        Arc::new(side_name.finish()),
        Arc::new(att_before.finish()),
        Arc::new(att_after.finish()),
        Arc::new(owner_before.finish()),
        Arc::new(owner_after.finish()),
        Arc::new(reason.finish()),
    ];
    Ok(Some(RecordBatch::try_new(diff_schema(), columns)?))
}

#[cfg(test)]
mod tests {
    use super::why;

    #[test]
    fn reasons_name_what_the_history_now_says() {
        assert!(why(Some("unknown"), Some("pod")).contains("now covers"));
        assert!(why(Some("pod"), Some("unknown")).contains("no longer covers"));
        assert!(why(Some("node"), Some("snat")).contains("NAT translation"));
        assert!(why(Some("pod"), Some("pod")).contains("another holder"));
        assert!(why(None, Some("pod")).contains("without a cluster"));
    }
}
