//! What in-cluster exporters' identities say about who held an address, kept as
//! `ip_history` rows of their own (`source` = the exporter): a run of sightings of one pod on
//! one address becomes one interval from its first sighting to its last. This is evidence
//! beside the history, for forensics and for checking it; it is not used to attribute (the
//! stretch between two sightings is not observed).

use hawking_schemas::flow::FlowBatch;
use hawking_schemas::flow_details::{FlowDetails, Text};
use hawking_schemas::ip::ip_text;
use rustc_hash::FxHashMap;

use crate::interval_rows::{IntervalRows, fnv};

/// A run not seen again for this long is closed at its last sighting.
const IDLE_US: i64 = 300_000_000;

/// Who an exporter said held an address.
#[derive(Clone, Debug)]
struct Holder {
    kind: &'static str,
    namespace: Option<String>,
    name: String,
    workload_kind: Option<String>,
    workload: Option<String>,
}

#[derive(Debug)]
struct Run {
    holder: Holder,
    first: i64,
    last: i64,
    source: &'static str,
    /// When the run was last extended, by the clock flows arrive on.
    touched: i64,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct Sightings {
    /// Per (cluster, address), keyed by the cluster's index in `clusters`.
    runs: FxHashMap<(u16, u128), Run>,
    clusters: Vec<String>,
    rows: IntervalRows,
}

/// A holder as read from a flow's details, before it is worth keeping.
#[derive(Clone, Copy)]
struct HolderRef<'a> {
    kind: &'static str,
    namespace: Option<&'a str>,
    name: &'a str,
    workload_kind: Option<&'a str>,
    workload: Option<&'a str>,
}

impl HolderRef<'_> {
    fn is(&self, h: &Holder) -> bool {
        self.kind == h.kind
            && self.name == h.name
            && self.namespace == h.namespace.as_deref()
            && self.workload_kind == h.workload_kind.as_deref()
            && self.workload == h.workload.as_deref()
    }

    fn to_owned(self) -> Holder {
        Holder {
            kind: self.kind,
            namespace: self.namespace.map(str::to_string),
            name: self.name.to_string(),
            workload_kind: self.workload_kind.map(str::to_string),
            workload: self.workload.map(str::to_string),
        }
    }
}

fn holder_kind(kind: &str) -> Option<&'static str> {
    match kind {
        "pod" => Some("pod"),
        "node" => Some("node"),
        "service" => Some("service"),
        _ => None,
    }
}

impl Sightings {
    /// Runs still open.
    pub fn open_runs(&self) -> usize {
        self.runs.len()
    }

    /// Records the identities the flows of `batch` carry, in the cluster `cluster_of` writes
    /// into its buffer for each flow, given the cluster the exporter named (false: the
    /// flow's cluster is not known, its identities are not kept). Returns how many endpoints
    /// were sighted.
    pub fn record(
        &mut self,
        batch: &FlowBatch,
        cluster_of: &mut dyn FnMut(usize, Option<&str>, &mut String) -> bool,
        now: i64,
    ) -> u64 {
        let mut cluster = String::new();
        let Some(d) = &batch.details else {
            return 0;
        };
        let mut sighted = 0;
        for i in 0..batch.len() {
            let source = batch.source_kind[i].as_str();
            for (addr, side) in [(batch.src_ip[i], true), (batch.dst_ip[i], false)] {
                let Some(holder) = holder_at(d, i, side) else {
                    continue;
                };
                cluster.clear();
                if !cluster_of(i, d.get_text(Text::ReportedCluster, i), &mut cluster) {
                    continue;
                }
                sighted += 1;
                let c = match self.clusters.iter().position(|c| *c == cluster) {
                    Some(c) => c as u16,
                    None => {
                        self.clusters.push(cluster.clone());
                        (self.clusters.len() - 1) as u16
                    }
                };
                self.sight(c, addr, holder, batch.flow_start[i], source, now);
            }
        }
        sighted
    }

    fn sight(
        &mut self,
        cluster: u16,
        addr: u128,
        holder: HolderRef<'_>,
        at: i64,
        source: &'static str,
        now: i64,
    ) {
        let key = (cluster, addr);
        if let Some(run) = self.runs.get_mut(&key) {
            if holder.is(&run.holder) {
                run.first = run.first.min(at);
                run.last = run.last.max(at);
                run.touched = now;
                return;
            }
            let old = self.runs.remove(&key).expect("present");
            self.push_row(cluster, addr, old);
        }
        self.runs.insert(
            key,
            Run {
                holder: holder.to_owned(),
                first: at,
                last: at,
                source,
                touched: now,
            },
        );
    }

    /// Closes the runs not extended for a while (all of them when `all`), so that their rows
    /// can be handed out.
    pub fn close_idle(&mut self, now: i64, all: bool) {
        let idle: Vec<(u16, u128)> = self
            .runs
            .iter()
            .filter(|(_, r)| all || now - r.touched >= IDLE_US)
            .map(|(k, _)| *k)
            .collect();
        for key in idle {
            let run = self.runs.remove(&key).expect("present");
            self.push_row(key.0, key.1, run);
        }
    }

    fn push_row(&mut self, cluster: u16, addr: u128, run: Run) {
        let cluster = self.clusters[cluster as usize].as_str();
        let r = &mut self.rows;
        let h = run.holder;
        r.id.push(fnv(&[
            run.source.as_bytes(),
            cluster.as_bytes(),
            h.kind.as_bytes(),
            h.namespace.as_deref().unwrap_or_default().as_bytes(),
            h.name.as_bytes(),
            &addr.to_be_bytes(),
            &run.first.to_be_bytes(),
        ]));
        r.cluster.push(cluster.to_string());
        r.ip.push(ip_text(addr));
        r.kind.push(h.kind);
        r.namespace.push(h.namespace);
        r.name.push(h.name);
        r.uid.push(None);
        r.workload_kind.push(h.workload_kind);
        r.workload.push(h.workload);
        r.node.push(None);
        r.ports.push(None);
        r.from.push(run.first);
        r.to.push(Some(run.last));
        r.source.push(run.source);
        r.recorded_at.push(run.touched);
    }

    /// The rows of closed runs not yet handed out.
    pub fn take_rows(&mut self) -> Option<arrow::array::RecordBatch> {
        std::mem::take(&mut self.rows).into_batch()
    }
}

/// The owner the exporter named for one side of flow `i`, when it named a pod, node or
/// service by name.
fn holder_at(d: &FlowDetails, i: usize, source: bool) -> Option<HolderRef<'_>> {
    let [kind, namespace, name, workload_kind, workload] = if source {
        [
            Text::SrcReportedKind,
            Text::SrcReportedNamespace,
            Text::SrcReportedName,
            Text::SrcReportedWorkloadKind,
            Text::SrcReportedWorkload,
        ]
    } else {
        [
            Text::DstReportedKind,
            Text::DstReportedNamespace,
            Text::DstReportedName,
            Text::DstReportedWorkloadKind,
            Text::DstReportedWorkload,
        ]
    };
    let kind = holder_kind(d.get_text(kind, i)?)?;
    let name = d.get_text(name, i)?;
    Some(HolderRef {
        kind,
        namespace: d.get_text(namespace, i),
        name,
        workload_kind: d.get_text(workload_kind, i),
        workload: d.get_text(workload, i),
    })
}
