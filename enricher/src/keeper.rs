//! `HistoryKeeper`: turns what is observed of clusters (objects appearing, changing,
//! disappearing; watches going down and coming back) into intervals and gaps in the
//! [`IpHistory`], and into the rows that persist them.
//!
//! Boundaries come from the best evidence, leaning towards the longer interval where the
//! evidence is loose (an overlap makes an endpoint `ambiguous`, a too-short interval could
//! name the wrong owner): a live watch starts an interval at the object's own start time and
//! ends it when the release is observed; a recording, which has no observation times, ends it
//! at the object's own release timestamps plus [`RELEASE_MARGIN_US`].

use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use hawking_schemas::columns::{ColumnError, Columns};
use hawking_schemas::ip::{ip_text, parse_ip};
use hawking_schemas::{OwnerKind, history_gaps_schema};
use rustc_hash::FxHashMap;

use crate::history::{IpHistory, OPEN};
use crate::interval_rows::{IntervalRows, fnv};
use crate::owners::{OwnerId, OwnerSpec};
pub use hawking_schemas::observation::{Event, Observation, ObservedObject, Resource};

/// Slack added to a release time read from an object's own timestamps: the sandbox (and the
/// address) goes some seconds after the last container stops.
pub const RELEASE_MARGIN_US: i64 = 5_000_000;

/// The reason recorded for the gap after a recording's end.
pub const RECORDING_ENDS: &str = "recording ends";

/// Default of [`HistoryKeeper::set_lag_allowance`]: how late watch events may arrive.
pub const DEFAULT_LAG_ALLOWANCE_US: i64 = 5_000_000;

/// Where observations come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// A live watch: `at` is when the event was observed.
    Live,
    /// A recording: `at` is the latest timestamp the object carries.
    Import,
}

impl Mode {
    fn source(self) -> &'static str {
        match self {
            Mode::Live => "watch",
            Mode::Import => "import",
        }
    }
}

#[derive(Debug)]
struct Held {
    owner: OwnerId,
    addrs: Vec<u128>,
}

/// Pending `history_gaps_log` rows.
#[derive(Debug, Default)]
struct GapRows {
    id: Vec<i64>,
    cluster: Vec<String>,
    start: Vec<i64>,
    end: Vec<Option<i64>>,
    reason: Vec<String>,
    recorded_at: Vec<i64>,
}

fn resource_of(kind: OwnerKind) -> Resource {
    match kind {
        OwnerKind::Pod | OwnerKind::HostNetworkPod => Resource::Pods,
        OwnerKind::Node => Resource::Nodes,
        OwnerKind::Service => Resource::Services,
    }
}

/// Keeps the history of every cluster it hears of.
#[derive(Debug)]
pub struct HistoryKeeper {
    history: IpHistory,
    mode: Mode,
    held: FxHashMap<(u16, Resource, String), Held>,
    down: FxHashMap<u16, Vec<Resource>>,
    gap_reasons: FxHashMap<u16, String>,
    rows: IntervalRows,
    gap_rows: GapRows,
    now: fn() -> i64,
    lag_allowance: i64,
    /// Per address, the latest moment a pod demonstrably still held it (a container start
    /// or finish) and which pod: the next holder cannot have had it earlier.
    last_alive: FxHashMap<(u16, u128), (OwnerId, i64)>,
}

impl HistoryKeeper {
    pub fn new(mode: Mode) -> Self {
        HistoryKeeper {
            history: IpHistory::default(),
            mode,
            held: FxHashMap::default(),
            down: FxHashMap::default(),
            gap_reasons: FxHashMap::default(),
            rows: IntervalRows::default(),
            gap_rows: GapRows::default(),
            now: hawking_schemas::time::now_micros,
            lag_allowance: DEFAULT_LAG_ALLOWANCE_US,
            last_alive: FxHashMap::default(),
        }
    }

    /// How late a watch event may arrive after the change it reports (µs; the flows' grace
    /// period is sized for it). When a watch breaks or stops, the changes of that last stretch
    /// may never have been delivered, so the gap is taken to start that much earlier: flows
    /// then are `unknown` rather than attributed to an owner that had already left.
    pub fn set_lag_allowance(&mut self, micros: i64) {
        self.lag_allowance = micros.max(0);
    }

    pub fn history(&self) -> &IpHistory {
        &self.history
    }

    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// Ends a recording of `cluster` at `end`, its last timestamp: addresses still held then
    /// are recorded as held until `end` (what the recording knows, no more). With
    /// `unknown_after`, a gap opens at `end` so that later flows are `unknown` rather than
    /// judged by ranges (for clusters whose history comes only from recordings).
    pub fn finish_recording(&mut self, cluster: &str, end: i64, unknown_after: bool) {
        let c = self.history.cluster(cluster);
        let held: Vec<(u16, Resource, String)> =
            self.held.keys().filter(|k| k.0 == c).cloned().collect();
        for key in held {
            if let Some(h) = self.held.remove(&key) {
                for a in h.addrs {
                    self.close(c, a, h.owner, end);
                }
            }
        }
        if unknown_after && self.history.open_gap(c).is_none() {
            self.open_gap(c, end, RECORDING_ENDS);
        }
    }

    /// Ends the open gap of `cluster` that started at `start`, at `end`: a later recording
    /// covers what an earlier one left unknown.
    pub fn end_gap(&mut self, cluster: &str, start: i64, end: i64, reason: &str) {
        let c = self.history.cluster(cluster);
        self.gap_reasons.insert(c, reason.to_string());
        self.close_gap(c, start, end);
    }

    pub fn history_mut(&mut self) -> &mut IpHistory {
        &mut self.history
    }

    /// Whether the cluster is in a gap now.
    pub fn is_down(&self, cluster: &str) -> bool {
        self.history
            .find_cluster(cluster)
            .is_some_and(|c| self.history.open_gap(c).is_some())
    }

    /// Objects currently holding addresses.
    pub fn held_objects(&self) -> usize {
        self.held.len()
    }

    /// Opens a gap for a cluster whose watches are about to start: from `since` (when it was
    /// last known in sync, or now) until every watched resource is up.
    pub fn begin_watching(&mut self, cluster: &str, since: i64, reason: &str) {
        let c = self.history.cluster(cluster);
        self.down
            .insert(c, vec![Resource::Pods, Resource::Nodes, Resource::Services]);
        if self.history.open_gap(c).is_none() {
            self.open_gap(c, since - self.lag_allowance, reason);
        }
    }

    /// Hawking stops watching `cluster` at `at`: a gap opens that the next start closes
    /// once its watches are in sync.
    pub fn stop_watching(&mut self, cluster: &str, at: i64) {
        let c = self.history.cluster(cluster);
        if self.history.open_gap(c).is_none() {
            self.open_gap(c, at - self.lag_allowance, "collector stopped");
        }
    }

    /// Applies one observation.
    pub fn apply(&mut self, obs: Observation) {
        let c = self.history.cluster(&obs.cluster);
        let at = obs.at;
        match obs.event {
            Event::Upsert(o) => self.upsert(c, at, o),
            Event::Delete(o) => {
                if o.kind == OwnerKind::Pod
                    && let Some(owner) = self.history.owners.find(c, o.kind, &o.uid)
                {
                    for a in &o.addrs {
                        self.apply_container_evidence(c, *a, owner, None, o.alive_until);
                    }
                }
                let end = self.end_time(at, &o);
                let key = (c, o.resource, o.uid.clone());
                match self.held.remove(&key) {
                    Some(h) => {
                        for a in h.addrs {
                            self.close(c, a, h.owner, end);
                        }
                    }
                    None if self.mode == Mode::Import => {
                        // Never seen alive in the recording: its own timestamps still say
                        // when it held its addresses.
                        let owner = self.owner(c, &o);
                        if let Some(since) = o.since {
                            for a in o.addrs.clone() {
                                self.insert_closed(c, a, owner, &o, since, end);
                            }
                        }
                    }
                    None => {}
                }
            }
            Event::Relisted { resource, objects } => {
                let listed: std::collections::HashSet<&str> =
                    objects.iter().map(|o| o.uid.as_str()).collect();
                let gone: Vec<(u16, Resource, String)> = self
                    .held
                    .keys()
                    .filter(|(hc, r, uid)| {
                        *hc == c && *r == resource && !listed.contains(uid.as_str())
                    })
                    .cloned()
                    .collect();
                for key in gone {
                    // Deleted while nobody watched: the gap that led to this relist covers
                    // the uncertainty, so the interval ends here.
                    if let Some(h) = self.held.remove(&key) {
                        for a in h.addrs {
                            self.close(c, a, h.owner, at);
                        }
                    }
                }
                for o in objects {
                    self.upsert(c, at, o);
                }
            }
            Event::Down { resource, reason } => {
                let down = self.down.entry(c).or_default();
                if !down.contains(&resource) {
                    down.push(resource);
                }
                if self.history.open_gap(c).is_none() {
                    self.open_gap(c, at - self.lag_allowance, &reason);
                }
            }
            Event::Up { resource } => {
                let down = self.down.entry(c).or_default();
                down.retain(|r| *r != resource);
                if down.is_empty()
                    && let Some(start) = self.history.open_gap(c)
                {
                    self.close_gap(c, start, at);
                }
            }
        }
    }

    fn end_time(&self, at: i64, o: &ObservedObject) -> i64 {
        match self.mode {
            Mode::Live => at,
            Mode::Import => o.released_by.map(|t| t + RELEASE_MARGIN_US).unwrap_or(at),
        }
    }

    fn owner(&mut self, c: u16, o: &ObservedObject) -> OwnerId {
        self.history.owners.upsert(
            c,
            o.kind,
            &OwnerSpec {
                namespace: o.namespace.as_deref(),
                name: &o.name,
                uid: &o.uid,
                workload_kind: o.workload_kind.as_deref(),
                workload: o.workload.as_deref(),
                node: o.node.as_deref(),
                ports: o.ports.as_deref(),
            },
        )
    }

    fn upsert(&mut self, c: u16, at: i64, o: ObservedObject) {
        let evidence =
            (o.kind == OwnerKind::Pod).then_some((o.alive_from, o.alive_until, o.addrs.clone()));
        let owner = self.owner(c, &o);
        self.upsert_intervals(c, at, owner, o);
        if let Some((alive_from, alive_until, addrs)) = evidence {
            for a in addrs {
                self.apply_container_evidence(c, a, owner, alive_from, alive_until);
            }
        }
    }

    /// What a pod's containers prove about an address it holds: running from `alive_from`,
    /// the pod had it then, so another pod's interval still open or ending later ends there;
    /// alive at `alive_until`, it still had it then, which bounds the next holder's start
    /// (see [`Self::start_after_previous`]). Evidence that contradicts another pod's (clocks
    /// of different nodes) is not used.
    fn apply_container_evidence(
        &mut self,
        c: u16,
        addr: u128,
        owner: OwnerId,
        alive_from: Option<i64>,
        alive_until: Option<i64>,
    ) {
        let last = self.last_alive.get(&(c, addr)).copied();
        if let Some(start) = alive_from {
            let contradicted = last.is_some_and(|(o, t)| o != owner && t > start);
            if !contradicted {
                let mut ended = Vec::new();
                self.history
                    .end_other_pods_at(c, addr, owner, start, &mut ended);
                for (other, from) in ended {
                    self.push_row(c, addr, other, from, Some(start));
                }
            }
        }
        if let Some(t) = alive_until
            && last.is_none_or(|(_, lt)| t >= lt)
        {
            self.last_alive.insert((c, addr), (owner, t));
        }
    }

    /// The start of `owner`'s interval on `addr`, given its own evidence `from`: not before
    /// the previous pod on the address was last seen alive, unless that contradicts what
    /// `owner`'s containers say.
    fn start_after_previous(
        &self,
        c: u16,
        addr: u128,
        o: &ObservedObject,
        owner: OwnerId,
        from: i64,
    ) -> i64 {
        if o.kind != OwnerKind::Pod {
            return from;
        }
        match self.last_alive.get(&(c, addr)) {
            Some((prev, t))
                if *prev != owner && *t > from && o.alive_from.is_none_or(|s| *t <= s) =>
            {
                *t
            }
            _ => from,
        }
    }

    fn upsert_intervals(&mut self, c: u16, at: i64, owner: OwnerId, o: ObservedObject) {
        for r in &o.ranges {
            self.history.add_range(c, *r);
        }
        let key = (c, o.resource, o.uid.clone());
        let prev = self.held.remove(&key);
        if o.released {
            let end = match (self.mode, &prev) {
                // Seen holding, now seen released: the observation is the latest it can be.
                (Mode::Live, Some(_)) => at,
                _ => o.released_by.map(|t| t + RELEASE_MARGIN_US).unwrap_or(at),
            };
            match prev {
                Some(h) => {
                    for a in h.addrs {
                        self.close(c, a, h.owner, end);
                    }
                }
                None => {
                    if let Some(since) = o.since.or((self.mode == Mode::Live).then_some(at)) {
                        for a in o.addrs.clone() {
                            self.insert_closed(c, a, owner, &o, since.min(end), end);
                        }
                    }
                }
            }
            return;
        }
        let prev_addrs = prev.as_ref().map(|h| h.addrs.clone()).unwrap_or_default();
        for a in &prev_addrs {
            if !o.addrs.contains(a) {
                let end = if self.mode == Mode::Live {
                    at
                } else {
                    o.latest_timestamp.unwrap_or(at)
                };
                self.close(c, *a, owner, end);
            }
        }
        for a in &o.addrs {
            if prev_addrs.contains(a) || self.history.open_since(c, *a, owner).is_some() {
                continue;
            }
            // A first sight starts at the object's own start; an address an object we knew
            // gains later starts when observed (live) or at its latest timestamp (recording).
            let from = match (&prev, o.since) {
                // Live: the API server's clock may run ahead of ours; never start in our future.
                (None, Some(since)) if self.mode == Mode::Live => since.min(at),
                (None, Some(since)) => since,
                _ if self.mode == Mode::Live => at,
                _ => o.latest_timestamp.or(o.since).unwrap_or(at),
            };
            self.open(c, *a, owner, &o, from);
        }
        if !o.addrs.is_empty() {
            self.held.insert(
                key,
                Held {
                    owner,
                    addrs: o.addrs,
                },
            );
        }
    }

    fn push_row(&mut self, c: u16, addr: u128, owner: OwnerId, from: i64, to: Option<i64>) {
        let owners = &self.history.owners;
        let o = owners.get(owner);
        let cluster = self.history.cluster_name(c).to_string();
        let ip = ip_text(addr);
        let uid = owners.uid(owner);
        let kind = o.kind.as_str();
        let r = &mut self.rows;
        r.id.push(fnv(&[
            cluster.as_bytes(),
            kind.as_bytes(),
            uid.as_bytes(),
            &addr.to_be_bytes(),
            &from.to_be_bytes(),
        ]));
        r.cluster.push(cluster);
        r.ip.push(ip);
        r.kind.push(kind);
        r.namespace
            .push(owners.text(o.namespace).map(str::to_string));
        r.name.push(owners.name(owner).to_string());
        r.uid.push(Some(uid));
        r.workload_kind
            .push(owners.text(o.workload_kind).map(str::to_string));
        r.workload.push(owners.text(o.workload).map(str::to_string));
        r.node.push(owners.text(o.node).map(str::to_string));
        r.ports.push(owners.text(o.ports).map(str::to_string));
        r.from.push(from);
        r.to.push(to);
        r.source.push(self.mode.source());
        r.recorded_at.push((self.now)());
    }

    fn open(&mut self, c: u16, addr: u128, owner: OwnerId, o: &ObservedObject, from: i64) {
        let from = self.start_after_previous(c, addr, o, owner, from);
        self.history.insert(c, addr, owner, from, OPEN);
        self.push_row(c, addr, owner, from, None);
    }

    fn insert_closed(
        &mut self,
        c: u16,
        addr: u128,
        owner: OwnerId,
        o: &ObservedObject,
        from: i64,
        to: i64,
    ) {
        // A recording replayed twice must not double its intervals.
        let exists = self.history.clusters()[c as usize]
            .intervals(addr)
            .iter()
            .any(|iv| iv.owner == owner && iv.from >= from && iv.from <= to);
        if exists {
            return;
        }
        let from = self.start_after_previous(c, addr, o, owner, from).min(to);
        self.history.insert(c, addr, owner, from, to);
        self.push_row(c, addr, owner, from, Some(to));
    }

    fn close(&mut self, c: u16, addr: u128, owner: OwnerId, to: i64) {
        if let Some(from) = self.history.close(c, addr, owner, to) {
            self.push_row(c, addr, owner, from, Some(to.max(from)));
        }
    }

    fn open_gap(&mut self, c: u16, start: i64, reason: &str) {
        self.history.insert_gap(c, start, OPEN);
        self.gap_reasons.insert(c, reason.to_string());
        self.push_gap_row(c, start, None, reason.to_string());
    }

    fn close_gap(&mut self, c: u16, start: i64, end: i64) {
        let end = end.max(start);
        self.history.insert_gap(c, start, end);
        let reason = self
            .gap_reasons
            .remove(&c)
            .unwrap_or_else(|| "watch down".into());
        self.push_gap_row(c, start, Some(end), reason);
    }

    fn push_gap_row(&mut self, c: u16, start: i64, end: Option<i64>, reason: String) {
        let cluster = self.history.cluster_name(c).to_string();
        let g = &mut self.gap_rows;
        g.id.push(fnv(&[cluster.as_bytes(), &start.to_be_bytes()]));
        g.cluster.push(cluster);
        g.start.push(start);
        g.end.push(end);
        g.reason.push(reason);
        g.recorded_at.push((self.now)());
    }

    /// Rows not yet persisted, as `ip_history_log` and `history_gaps_log` batches.
    pub fn take_rows(&mut self) -> (Option<RecordBatch>, Option<RecordBatch>) {
        let intervals = std::mem::take(&mut self.rows);
        let gaps = std::mem::take(&mut self.gap_rows);
        let ts = |v: Vec<i64>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let ts_opt = |v: Vec<Option<i64>>| -> ArrayRef {
            Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
        };
        let interval_batch = intervals.into_batch();
        let gap_batch = (!gaps.id.is_empty()).then(|| {
            RecordBatch::try_new(
                history_gaps_schema(),
                vec![
                    Arc::new(Int64Array::from(gaps.id)),
                    Arc::new(StringArray::from(gaps.cluster)),
                    ts(gaps.start),
                    ts_opt(gaps.end),
                    Arc::new(StringArray::from(gaps.reason)),
                    ts(gaps.recorded_at),
                ],
            )
            .expect("columns match history_gaps_schema")
        });
        (interval_batch, gap_batch)
    }

    /// Rebuilds the history from persisted rows (the `ip_history` and `history_gaps` views:
    /// one row per interval or gap, the closed version where there is one). Open intervals
    /// become held addresses again, so a relist can tell what vanished meanwhile.
    pub fn load(
        &mut self,
        intervals: &[RecordBatch],
        gaps: &[RecordBatch],
    ) -> Result<usize, ColumnError> {
        use arrow::array::Array;
        let mut loaded = 0;
        for b in intervals {
            let c = Columns::new("ip_history", b);
            let (cluster, ip, kind, ns, name, uid) = (
                c.text("cluster_name")?,
                c.text("ip")?,
                c.text("owner_kind")?,
                c.text("namespace")?,
                c.text("name")?,
                c.text("uid")?,
            );
            let (wk, w, node, ports) = (
                c.text("workload_kind")?,
                c.text("workload")?,
                c.text("node")?,
                c.text("ports")?,
            );
            let (from, to) = (c.timestamp("valid_from")?, c.timestamp("valid_to")?);
            fn opt(a: &StringArray, i: usize) -> Option<&str> {
                (!a.is_null(i)).then(|| a.value(i))
            }
            for i in 0..b.num_rows() {
                let Some(kind) = OwnerKind::parse(kind.value(i)) else {
                    continue;
                };
                let Some(addr) = parse_ip(ip.value(i)) else {
                    continue;
                };
                let c = self.history.cluster(cluster.value(i));
                let owner = self.history.owners.upsert(
                    c,
                    kind,
                    &OwnerSpec {
                        namespace: opt(ns, i),
                        name: name.value(i),
                        uid: uid.value(i),
                        workload_kind: opt(wk, i),
                        workload: opt(w, i),
                        node: opt(node, i),
                        ports: opt(ports, i),
                    },
                );
                let end = if to.is_null(i) { OPEN } else { to.value(i) };
                self.history.insert(c, addr, owner, from.value(i), end);
                if end == OPEN {
                    let h = self
                        .held
                        .entry((c, resource_of(kind), uid.value(i).to_string()))
                        .or_insert(Held {
                            owner,
                            addrs: Vec::new(),
                        });
                    h.addrs.push(addr);
                }
                loaded += 1;
            }
        }
        for b in gaps {
            let c = Columns::new("history_gaps", b);
            let (cluster, start, end, reason) = (
                c.text("cluster_name")?,
                c.timestamp("gap_start")?,
                c.timestamp("gap_end")?,
                c.text("reason")?,
            );
            for i in 0..b.num_rows() {
                let c = self.history.cluster(cluster.value(i));
                let e = if end.is_null(i) { OPEN } else { end.value(i) };
                self.history.insert_gap(c, start.value(i), e);
                if e == OPEN {
                    self.gap_reasons.insert(c, reason.value(i).to_string());
                }
            }
        }
        Ok(loaded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Verdict;
    use hawking_schemas::ip::v4_to_u128;

    fn pod(uid: &str, name: &str, ip: &str, since: i64) -> ObservedObject {
        ObservedObject {
            resource: Resource::Pods,
            kind: OwnerKind::Pod,
            uid: uid.into(),
            namespace: Some("shop".into()),
            name: name.into(),
            workload_kind: Some("Deployment".into()),
            workload: Some("web".into()),
            node: Some("node-1".into()),
            ports: None,
            addrs: vec![parse_ip(ip).unwrap()],
            ranges: vec!["10.4.1.0/24".parse().unwrap()],
            since: Some(since),
            released: false,
            released_by: None,
            latest_timestamp: Some(since),
            alive_from: None,
            alive_until: None,
        }
    }

    fn obs(at: i64, event: Event) -> Observation {
        Observation {
            cluster: "prod".into(),
            at,
            event,
        }
    }

    fn ip10() -> u128 {
        v4_to_u128(0x0a04_010a)
    }

    #[test]
    fn container_times_tighten_a_hand_over_that_pod_timestamps_leave_loose() {
        // B was scheduled (startTime 50 s) long before A gave up the address: it waited for
        // one. A's containers ran until 100 s, B's started at 104 s; A's deletion is observed
        // only at 110 s. Without container evidence, 50..110 s would be ambiguous.
        const S: i64 = 1_000_000;
        let mut k = HistoryKeeper::new(Mode::Live);
        let mut a = pod("a", "web-a", "10.4.1.10", 0);
        a.alive_from = Some(10 * S);
        a.alive_until = Some(10 * S);
        k.apply(obs(11 * S, Event::Upsert(a.clone())));
        a.alive_until = Some(100 * S);
        k.apply(obs(101 * S, Event::Upsert(a.clone())));
        let mut b = pod("b", "worker-b", "10.4.1.10", 50 * S);
        b.alive_from = Some(104 * S);
        b.alive_until = Some(104 * S);
        k.apply(obs(105 * S, Event::Upsert(b)));
        k.apply(obs(110 * S, Event::Delete(a)));
        let h = k.history();
        let name = |v| match v {
            Verdict::Held(o) => h.owners.name(o).to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(name(h.lookup(0, ip10(), 60 * S, 70 * S, 0, 6)), "web-a");
        assert_eq!(
            name(h.lookup(0, ip10(), 106 * S, 108 * S, 0, 6)),
            "worker-b"
        );
        assert!(
            matches!(
                h.lookup(0, ip10(), 101 * S, 103 * S, 0, 6),
                Verdict::Ambiguous { n: 2, .. }
            ),
            "between A's last container and B's first, either could hold it"
        );
        let (rows, _) = k.take_rows();
        let rows = rows.expect("rows");
        let to = rows
            .column_by_name("valid_to")
            .unwrap()
            .as_any()
            .downcast_ref::<TimestampMicrosecondArray>()
            .unwrap();
        assert!(
            (0..rows.num_rows())
                .any(|i| arrow::array::Array::is_valid(to, i) && to.value(i) == 104 * S),
            "A's persisted interval ends where B's containers prove B had the address"
        );
    }

    #[test]
    fn live_handover_closes_at_observation_and_overlap_is_ambiguous() {
        let mut k = HistoryKeeper::new(Mode::Live);
        k.apply(obs(
            1000,
            Event::Upsert(pod("a", "web-a", "10.4.1.10", 100)),
        ));
        k.apply(obs(
            2000,
            Event::Delete(pod("a", "web-a", "10.4.1.10", 100)),
        ));
        k.apply(obs(
            2100,
            Event::Upsert(pod("b", "web-b", "10.4.1.10", 1900)),
        ));
        let h = k.history();
        let name = |v: Verdict| match v {
            Verdict::Held(o) => h.owners.name(o).to_string(),
            other => format!("{other:?}"),
        };
        assert_eq!(name(h.lookup(0, ip10(), 500, 600, 0, 6)), "web-a");
        assert_eq!(name(h.lookup(0, ip10(), 2500, 2600, 0, 6)), "web-b");
        assert!(
            matches!(
                h.lookup(0, ip10(), 1950, 1960, 0, 6),
                Verdict::Ambiguous { .. }
            ),
            "B started before A's deletion was seen"
        );
        let (rows, _) = k.take_rows();
        let rows = rows.unwrap();
        // a opened, a closed, b opened: the open and closed rows of a share an interval_id.
        assert_eq!(rows.num_rows(), 3);
        let ids = rows
            .column(0)
            .as_any()
            .downcast_ref::<Int64Array>()
            .unwrap();
        assert_eq!(ids.value(0), ids.value(1));
        assert_ne!(ids.value(0), ids.value(2));
    }

    #[test]
    fn a_relist_after_a_gap_ends_what_vanished_and_the_gap_makes_flows_unknown() {
        let mut k = HistoryKeeper::new(Mode::Live);
        k.set_lag_allowance(20);
        k.begin_watching("prod", 0, "starting");
        k.apply(obs(
            10,
            Event::Relisted {
                resource: Resource::Pods,
                objects: vec![pod("a", "web-a", "10.4.1.10", 5)],
            },
        ));
        for r in [Resource::Pods, Resource::Nodes, Resource::Services] {
            k.apply(obs(10, Event::Up { resource: r }));
        }
        assert!(!k.is_down("prod"));
        k.apply(obs(
            100,
            Event::Down {
                resource: Resource::Pods,
                reason: "watch dropped".into(),
            },
        ));
        assert!(k.is_down("prod"));
        k.apply(obs(
            200,
            Event::Relisted {
                resource: Resource::Pods,
                objects: vec![pod("c", "web-c", "10.4.1.30", 150)],
            },
        ));
        k.apply(obs(
            200,
            Event::Up {
                resource: Resource::Pods,
            },
        ));
        assert!(!k.is_down("prod"));
        let h = k.history();
        assert!(matches!(
            h.lookup(0, ip10(), 50, 60, 0, 6),
            Verdict::Held(_)
        ));
        assert_eq!(
            h.lookup(0, ip10(), 120, 130, 0, 6),
            Verdict::Unknown,
            "in the gap"
        );
        assert_eq!(
            h.lookup(0, ip10(), 85, 90, 0, 6),
            Verdict::Unknown,
            "changes of the last lag allowance before the break may never have been delivered"
        );
        assert_eq!(
            h.lookup(0, ip10(), 300, 310, 0, 6),
            Verdict::Unknown,
            "a ended at the relist"
        );
        assert!(matches!(
            h.lookup(0, v4_to_u128(0x0a04_011e), 300, 310, 0, 6),
            Verdict::Held(_)
        ));
        let (_, gaps) = k.take_rows();
        assert_eq!(
            gaps.unwrap().num_rows(),
            4,
            "startup gap opened+closed, watch gap opened+closed"
        );
    }

    #[test]
    fn a_completed_job_pod_seen_first_in_a_recording_ends_at_its_termination() {
        let mut k = HistoryKeeper::new(Mode::Import);
        let mut job = pod("j", "backup-x", "10.4.1.20", 1_000_000);
        job.released = true;
        job.released_by = Some(9_000_000);
        k.apply(obs(20_000_000, Event::Upsert(job)));
        k.apply(obs(
            20_000_000,
            Event::Upsert(pod("d", "cache-0", "10.4.1.20", 30_000_000)),
        ));
        let h = k.history();
        let ip20 = v4_to_u128(0x0a04_0114);
        let held = |t| match h.lookup(0, ip20, t, t, 0, 6) {
            Verdict::Held(o) => h.owners.name(o).to_string(),
            v => format!("{v:?}"),
        };
        assert_eq!(held(5_000_000), "backup-x");
        assert_eq!(
            held(9_000_000 + RELEASE_MARGIN_US),
            "backup-x",
            "margin after termination"
        );
        assert_eq!(held(20_000_000), "Unknown", "released, not yet reused");
        assert_eq!(held(40_000_000), "cache-0");
    }

    #[test]
    fn persisted_rows_rebuild_the_same_history() {
        let mut k = HistoryKeeper::new(Mode::Live);
        k.begin_watching("prod", 0, "starting");
        k.apply(obs(
            1000,
            Event::Upsert(pod("a", "web-a", "10.4.1.10", 100)),
        ));
        k.apply(obs(
            2000,
            Event::Delete(pod("a", "web-a", "10.4.1.10", 100)),
        ));
        k.apply(obs(
            2100,
            Event::Upsert(pod("b", "web-b", "10.4.1.10", 2050)),
        ));
        let (rows, gaps) = k.take_rows();
        // What the ip_history view returns: per interval the closed row if any.
        let rows = rows.unwrap();
        let keep: Vec<u32> = vec![1, 2];
        let rows = arrow::compute::take_record_batch(&rows, &arrow::array::UInt32Array::from(keep))
            .unwrap();
        let mut restored = HistoryKeeper::new(Mode::Live);
        assert_eq!(restored.load(&[rows], &[gaps.unwrap()]).unwrap(), 2);
        assert_eq!(restored.held_objects(), 1, "b still holds its address");
        assert!(restored.is_down("prod"), "the startup gap never closed");
        let a = restored.history().lookup(0, ip10(), 500, 600, 0, 6);
        assert!(
            matches!(a, Verdict::Unknown),
            "inside the still-open gap: {a:?}"
        );
        // After the relist without b, b's interval ends.
        restored.apply(obs(
            3000,
            Event::Relisted {
                resource: Resource::Pods,
                objects: vec![],
            },
        ));
        for r in [Resource::Pods, Resource::Nodes, Resource::Services] {
            restored.apply(obs(3000, Event::Up { resource: r }));
        }
        assert_eq!(restored.held_objects(), 0);
    }
}
