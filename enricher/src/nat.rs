//! `NatIndex`: the time-indexed source-NAT translations, keyed by what a flow seen outside the
//! NAT carries (outside address and port, remote address and port, protocol), so such a flow
//! maps back to the inside address that really sent it.
//!
//! Translations come from NAT session events (RFC 8158 logging, or Hawking's node agent
//! reading conntrack). A create opens a translation, a delete closes it, and a create for a
//! 5-tuple whose previous translation is still open closes that one: conntrack and NATs keep
//! the outside 5-tuple unique, so a new session on it means the old one ended.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, Int16Builder, Int32Builder, Int64Builder, RecordBatch, StringBuilder,
    TimestampMicrosecondBuilder,
};
use arrow::datatypes::SchemaRef;
use hawking_schemas::columns::{ColumnError, Columns};
use hawking_schemas::ip::{ip_text, parse_ip};
use hawking_schemas::nat::{NatEvent, NatEventKind, nat_history_schema};
use hawking_schemas::protocol::has_ports;
use rustc_hash::{FxHashMap, FxHashSet};
use smallvec::SmallVec;

use crate::history::OPEN;

/// A translation not tied to one cluster (its NAT's exporter maps to several or none).
pub const ANY_CLUSTER: u16 = u16::MAX;

/// Most translations that may cover one flow and still be reported as candidates.
pub const MAX_MATCHES: usize = 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct NatKey {
    /// The cluster of the NAT that reported it ([`ANY_CLUSTER`] when its exporter is listed
    /// by several): clusters may reuse node addresses, and one cluster's translations must
    /// not explain another's flows.
    cluster: u16,
    outside_ip: u128,
    /// 0 when the mapping holds for every remote end.
    remote_ip: u128,
    outside_port: u16,
    remote_port: u16,
    protocol: u8,
}

/// One translation: from `from` to `to` (µs; `to` is [`OPEN`] while it lasts) the key's
/// outside end stood for `inside_ip:inside_port`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Translation {
    pub id: i64,
    pub from: i64,
    pub to: i64,
    pub inside_ip: u128,
    pub inside_port: u16,
    /// The cluster whose history names the inside address, or [`ANY_CLUSTER`].
    pub cluster: u16,
    /// The NAT that reported it.
    pub exporter: u128,
}

/// The translations that cover one flow endpoint (at most [`MAX_MATCHES`]); none means the
/// address stands for itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatMatch {
    matches: [Translation; MAX_MATCHES],
    n: u8,
    /// No translation covers the endpoint, but one may have without the index knowing: the
    /// NAT behind the address was silent then, or the translation of this very 5-tuple was
    /// closed by the idle bound rather than by a delete. The endpoint is then `unknown`,
    /// never the address itself.
    uncertain: bool,
}

impl NatMatch {
    const NONE: NatMatch = NatMatch {
        matches: [EMPTY; MAX_MATCHES],
        n: 0,
        uncertain: false,
    };

    /// Whether, with no translation found, the endpoint's owner cannot be told.
    pub fn is_uncertain(&self) -> bool {
        self.n == 0 && self.uncertain
    }

    pub fn translations(&self) -> &[Translation] {
        &self.matches[..self.n as usize]
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }
}

/// Counters of what the index did with the events it was given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NatCounters {
    pub opened: u64,
    pub closed: u64,
    /// A create for a 5-tuple whose translation was still open (that one ended then).
    pub superseded: u64,
    /// A create repeating the open translation exactly (e.g. a resync): ignored.
    pub duplicates: u64,
    /// A delete with no open translation to close (its create was never seen).
    pub unmatched_deletes: u64,
    /// Events of protocols without ports (ignored).
    pub portless: u64,
    /// Open translations closed by the idle bound: their delete never came.
    pub idle_closed: u64,
}

/// When the index stops trusting what it was told. Zero durations switch a rule off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NatTrust {
    /// How long a NAT's last sign of life (an event, its templates) vouches for it, µs: at a
    /// time further from any sign of life, a flow through its outside addresses that no
    /// translation covers is `unknown` (the translation may be among what was not heard).
    pub silent_after: i64,
    /// How long an open translation of TCP, UDP and other protocols lasts without its
    /// delete, µs (conntrack's defaults: an established TCP connection 5 days, a UDP stream
    /// 120 s, anything else 600 s).
    pub idle_tcp: i64,
    pub idle_udp: i64,
    pub idle_other: i64,
}

impl Default for NatTrust {
    fn default() -> Self {
        const S: i64 = 1_000_000;
        NatTrust {
            silent_after: 600 * S,
            idle_tcp: 432_000 * S,
            idle_udp: 120 * S,
            idle_other: 600 * S,
        }
    }
}

impl NatTrust {
    /// Trusts everything it is told, forever: for indexes loaded to answer one question
    /// about the past from stored translations, where liveness was not recorded.
    pub const STORED: NatTrust = NatTrust {
        silent_after: 0,
        idle_tcp: 0,
        idle_udp: 0,
        idle_other: 0,
    };

    fn idle_bound(&self, protocol: u8) -> i64 {
        match protocol {
            6 => self.idle_tcp,
            17 => self.idle_udp,
            _ => self.idle_other,
        }
    }
}

/// When a NAT was heard from: merged intervals of its signs of life, µs.
#[derive(Clone, Debug, Default)]
struct Liveness {
    /// Sorted, disjoint: `(first, last)` sign of life of each stretch without a silence
    /// longer than the bound.
    heard: Vec<(i64, i64)>,
}

impl Liveness {
    fn note(&mut self, at: i64, bound: i64) {
        let i = self.heard.partition_point(|(first, _)| *first <= at);
        // Joins the stretch before when within the bound of its last sign, and the one
        // after when within the bound of its first.
        let joins_prev = i > 0 && at <= self.heard[i - 1].1.saturating_add(bound);
        let joins_next = i < self.heard.len() && self.heard[i].0 <= at.saturating_add(bound);
        match (joins_prev, joins_next) {
            (true, true) => {
                self.heard[i - 1].1 = self.heard[i].1.max(at);
                self.heard.remove(i);
            }
            (true, false) => self.heard[i - 1].1 = self.heard[i - 1].1.max(at),
            (false, true) => self.heard[i].0 = at,
            (false, false) => self.heard.insert(i, (at, at)),
        }
    }

    /// Whether `at` lies within `bound` after a sign of life (or before the first one
    /// of a stretch by at most the bound: what a NAT announces is up to `bound` old).
    fn vouches(&self, at: i64, bound: i64) -> bool {
        let i = self
            .heard
            .partition_point(|(first, _)| *first <= at.saturating_add(bound));
        i > 0 && at <= self.heard[i - 1].1.saturating_add(bound)
    }

    fn forget_before(&mut self, before: i64) {
        self.heard.retain(|(_, last)| *last >= before);
    }
}

/// The source-NAT translations of every NAT Hawking hears from.
#[derive(Debug)]
pub struct NatIndex {
    /// Per outside 5-tuple, its translations sorted by start; nearly always just one.
    sessions: FxHashMap<NatKey, SmallVec<[Translation; 1]>>,
    /// Outside addresses with any translation: other addresses skip the map.
    outside: FxHashSet<u128>,
    /// The NATs (exporter addresses) that reported translations of each outside address.
    nats_of: FxHashMap<u128, SmallVec<[u128; 1]>>,
    /// When each NAT was heard from.
    liveness: FxHashMap<u128, Liveness>,
    /// Outside 5-tuples whose last translation the idle bound closed, with when.
    idle_closed: FxHashMap<NatKey, i64>,
    trust: NatTrust,
    /// How far apart the NAT's and the flow exporter's clocks may be, µs.
    skew: i64,
    next_id: i64,
    /// The latest event time seen: the index's clock (events may be replayed from the past).
    latest: i64,
    counters: NatCounters,
    /// Translations opened or closed since the last [`NatIndex::take_rows`].
    changed: Vec<(NatKey, Translation)>,
    cluster_names: Vec<String>,
}

impl Default for NatIndex {
    fn default() -> Self {
        NatIndex::new(1_000_000)
    }
}

impl NatIndex {
    /// An empty index matching flows to translations whose time is within `skew_us` of the
    /// flow's.
    pub fn new(skew_us: i64) -> Self {
        NatIndex {
            sessions: FxHashMap::default(),
            outside: FxHashSet::default(),
            nats_of: FxHashMap::default(),
            liveness: FxHashMap::default(),
            idle_closed: FxHashMap::default(),
            trust: NatTrust::default(),
            skew: skew_us.max(0),
            next_id: 1,
            latest: i64::MIN,
            counters: NatCounters::default(),
            changed: Vec::new(),
            cluster_names: Vec::new(),
        }
    }

    /// The index with `trust` as its rules for silence and lost deletes.
    pub fn with_trust(mut self, trust: NatTrust) -> Self {
        self.trust = trust;
        self
    }

    /// Notes that the NAT `exporter` was alive at `at` (µs): it sent events or announced its
    /// event templates.
    pub fn heard_from(&mut self, exporter: u128, at: i64) {
        if self.trust.silent_after > 0 {
            self.liveness
                .entry(exporter)
                .or_default()
                .note(at, self.trust.silent_after);
        }
    }

    fn note_outside(&mut self, outside_ip: u128, exporter: u128) {
        self.outside.insert(outside_ip);
        let nats = self.nats_of.entry(outside_ip).or_default();
        if !nats.contains(&exporter) {
            nats.push(exporter);
        }
    }

    /// Whether some NAT reporting `ip` as an outside address was silent at `at`.
    fn silent_at(&self, ip: u128, at: i64) -> bool {
        let bound = self.trust.silent_after;
        bound > 0
            && self.nats_of.get(&ip).is_some_and(|nats| {
                nats.iter()
                    .any(|n| self.liveness.get(n).is_none_or(|l| !l.vouches(at, bound)))
            })
    }

    /// Closes open translations older than their protocol's idle bound at the index's
    /// clock (the latest event): their delete was lost. Flows on such a 5-tuple after it
    /// closed are `unknown`, since the session may in truth go on.
    pub fn close_idle(&mut self) {
        if self.latest == i64::MIN {
            return;
        }
        let latest = self.latest;
        let trust = self.trust;
        for (key, list) in self.sessions.iter_mut() {
            let bound = trust.idle_bound(key.protocol);
            if bound <= 0 {
                continue;
            }
            if let Some(t) = list.last_mut().filter(|t| t.to == OPEN) {
                let ends = t.from.saturating_add(bound);
                if ends < latest {
                    t.to = ends;
                    self.counters.idle_closed += 1;
                    self.changed.push((*key, *t));
                    self.idle_closed.insert(*key, ends);
                }
            }
        }
    }

    /// New translations get IDs above `id` (the highest ever stored, also among those not
    /// loaded), so a stored translation is never shadowed by a new one.
    pub fn continue_ids_after(&mut self, id: i64) {
        self.next_id = self.next_id.max(id.saturating_add(1));
    }

    /// Names of clusters by ID (as the address history numbers them), for persisted rows.
    pub fn set_cluster_names(&mut self, names: Vec<String>) {
        self.cluster_names = names;
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Whether any translation has `ip` as its outside address: the cheap test that lets
    /// every other endpoint skip the translation lookup.
    #[inline]
    pub fn is_outside(&self, ip: u128) -> bool {
        self.outside.contains(&ip)
    }

    pub fn translation_count(&self) -> usize {
        self.sessions.values().map(|list| list.len()).sum()
    }

    pub fn counters(&self) -> NatCounters {
        self.counters
    }

    fn key(e: &NatEvent, cluster: u16) -> NatKey {
        NatKey {
            cluster,
            outside_ip: e.outside_ip,
            remote_ip: e.remote_ip,
            outside_port: e.outside_port,
            remote_port: e.remote_port,
            protocol: e.protocol,
        }
    }

    /// Applies one session event; `cluster` is the cluster of the NAT that reported it.
    /// Events of protocols without ports (ICMP, ...) are ignored: their outside end would be
    /// one key for every inside host talking to the same remote, so it names no one.
    pub fn apply(&mut self, e: &NatEvent, cluster: u16) {
        let Some(kind) = e.kind else { return };
        if !has_ports(e.protocol) {
            self.counters.portless += 1;
            return;
        }
        self.latest = self.latest.max(e.at);
        self.heard_from(e.exporter, e.at);
        let key = Self::key(e, cluster);
        let list = self.sessions.entry(key).or_default();
        match kind {
            NatEventKind::Create => {
                // A create arriving after a later one (reordered datagrams) ends where the
                // later one begins, rather than closing it.
                let mut to = OPEN;
                if let Some(last) = list.last_mut().filter(|t| t.to == OPEN) {
                    if last.inside_ip == e.inside_ip && last.inside_port == e.inside_port {
                        self.counters.duplicates += 1;
                        return;
                    }
                    if e.at < last.from {
                        to = last.from;
                    } else {
                        last.to = e.at;
                        self.changed.push((key, *last));
                    }
                    self.counters.superseded += 1;
                }
                let t = Translation {
                    id: self.next_id,
                    from: e.at,
                    to,
                    inside_ip: e.inside_ip,
                    inside_port: e.inside_port,
                    cluster,
                    exporter: e.exporter,
                };
                self.next_id += 1;
                // Events arrive nearly in order; keep each list sorted by start.
                let at = list.partition_point(|x| x.from <= t.from);
                list.insert(at, t);
                self.idle_closed.remove(&key);
                self.note_outside(e.outside_ip, e.exporter);
                self.counters.opened += 1;
                self.changed.push((key, t));
            }
            NatEventKind::Delete => {
                let open = list.iter_mut().rev().find(|t| {
                    t.to == OPEN && t.inside_ip == e.inside_ip && t.inside_port == e.inside_port
                });
                match open {
                    Some(t) => {
                        t.to = e.at.max(t.from);
                        self.counters.closed += 1;
                        self.changed.push((key, *t));
                    }
                    None => {
                        self.counters.unmatched_deletes += 1;
                        if list.is_empty() {
                            self.sessions.remove(&key);
                        }
                    }
                }
            }
        }
    }

    /// The translations that cover a flow endpoint `ip:port` talking to `remote:remote_port`
    /// between `start` and `end`, among those of the flow's `clusters` and of NATs no one
    /// cluster owns: first those naming that remote end, else those for every remote end.
    /// None found at a time the NAT was silent, or on a 5-tuple the idle bound closed, is
    /// [`NatMatch::is_uncertain`].
    #[allow(clippy::too_many_arguments)]
    #[inline]
    pub fn lookup(
        &self,
        clusters: &[u16],
        protocol: u8,
        ip: u128,
        port: u16,
        remote_ip: u128,
        remote_port: u16,
        start: i64,
        end: i64,
    ) -> NatMatch {
        if self.outside.is_empty() || !self.outside.contains(&ip) {
            return NatMatch::NONE;
        }
        let mut found = NatMatch::NONE;
        let mut n = 0usize;
        let mut idle_closed = false;
        for remote in [(remote_ip, remote_port), (0, 0)] {
            for &cluster in clusters.iter().chain(&[ANY_CLUSTER]) {
                let key = NatKey {
                    cluster,
                    outside_ip: ip,
                    remote_ip: remote.0,
                    outside_port: port,
                    remote_port: remote.1,
                    protocol,
                };
                self.covering(&key, start, end, &mut found, &mut n);
                idle_closed |= self
                    .idle_closed
                    .get(&key)
                    .is_some_and(|closed| start > *closed);
            }
            if n > 0 {
                break;
            }
        }
        found.n = n.min(MAX_MATCHES) as u8;
        found.uncertain = n == 0 && (idle_closed || self.silent_at(ip, start));
        found
    }

    /// Like [`NatIndex::lookup`] for an endpoint whose remote end is not known (forensics:
    /// "who was behind this address and port then"): translations towards any remote end.
    /// Scans every 5-tuple, so it is for indexes loaded for one question, not for flows.
    pub fn lookup_any_remote(
        &self,
        protocol: u8,
        ip: u128,
        port: u16,
        start: i64,
        end: i64,
    ) -> NatMatch {
        let mut out = NatMatch::NONE;
        let mut n = 0usize;
        for key in self
            .sessions
            .keys()
            .filter(|k| k.outside_ip == ip && k.outside_port == port && k.protocol == protocol)
        {
            self.covering(key, start, end, &mut out, &mut n);
        }
        out.n = n.min(MAX_MATCHES) as u8;
        out
    }

    /// The remote end of translation `id`, if it names one (for reports).
    pub fn remote_of(&self, id: i64) -> Option<(u128, u16)> {
        self.sessions.iter().find_map(|(k, list)| {
            list.iter()
                .any(|t| t.id == id)
                .then_some((k.remote_ip, k.remote_port))
                .filter(|r| *r != (0, 0))
        })
    }

    /// Adds the translations of `key` that cover `start..end` to `found` (`n` counts them,
    /// also past [`MAX_MATCHES`]).
    fn covering(&self, key: &NatKey, start: i64, end: i64, found: &mut NatMatch, n: &mut usize) {
        let Some(list) = self.sessions.get(key) else {
            return;
        };
        // Translations starting after the flow's end (plus skew) cannot cover it.
        let upto = list.partition_point(|t| t.from <= end.saturating_add(self.skew));
        for t in list[..upto].iter().rev() {
            if t.to.saturating_add(self.skew) < start {
                continue;
            }
            if *n < MAX_MATCHES {
                found.matches[*n] = *t;
            }
            *n += 1;
        }
    }

    /// Forgets translations that closed more than `keep` µs before the latest event: flows
    /// that old have been attributed. Open translations stay.
    pub fn prune_closed(&mut self, keep: i64) {
        if self.latest != i64::MIN {
            self.prune_ended_before(self.latest.saturating_sub(keep));
        }
    }

    /// Forgets translations that ended before `before` (µs). Open translations stay.
    pub fn prune_ended_before(&mut self, before: i64) {
        self.sessions.retain(|_, list| {
            list.retain(|t| t.to >= before);
            !list.is_empty()
        });
        self.outside = self.sessions.keys().map(|k| k.outside_ip).collect();
        let outside = &self.outside;
        self.nats_of.retain(|ip, _| outside.contains(ip));
        self.idle_closed.retain(|_, closed| *closed >= before);
        for l in self.liveness.values_mut() {
            l.forget_before(before.saturating_sub(self.trust.silent_after));
        }
    }

    /// Rows for `nat_history_log` describing every translation opened or closed since the
    /// last call (`recorded_at` = `now`).
    pub fn take_rows(&mut self, now: i64) -> Option<RecordBatch> {
        if self.changed.is_empty() {
            return None;
        }
        let changed = std::mem::take(&mut self.changed);
        let rows = changed.iter().map(|(k, t)| NatRow {
            translation_id: t.id,
            cluster: (t.cluster != ANY_CLUSTER)
                .then(|| self.cluster_names.get(t.cluster as usize).cloned())
                .flatten(),
            protocol: k.protocol,
            inside_ip: t.inside_ip,
            inside_port: t.inside_port,
            outside_ip: k.outside_ip,
            outside_port: k.outside_port,
            remote: (k.remote_ip != 0 || k.remote_port != 0)
                .then_some((k.remote_ip, k.remote_port)),
            valid_from: t.from,
            valid_to: (t.to != OPEN).then_some(t.to),
            exporter: t.exporter,
            recorded_at: now,
        });
        Some(nat_rows_batch(nat_history_schema(), rows))
    }

    /// Restores translations persisted earlier (rows of the `nat_history` view: one per
    /// translation, the closed version where there is one). Open ones stay open until a
    /// delete or a new create for their 5-tuple closes them. IDs continue after the highest.
    pub fn load(
        &mut self,
        batches: &[RecordBatch],
        cluster_id: impl Fn(&str) -> u16,
    ) -> Result<usize, ColumnError> {
        let mut loaded = 0;
        for b in batches {
            for r in nat_rows(b)? {
                let cluster = r.cluster.as_deref().map_or(ANY_CLUSTER, &cluster_id);
                let key = NatKey {
                    cluster,
                    outside_ip: r.outside_ip,
                    remote_ip: r.remote.map_or(0, |x| x.0),
                    outside_port: r.outside_port,
                    remote_port: r.remote.map_or(0, |x| x.1),
                    protocol: r.protocol,
                };
                let t = Translation {
                    id: r.translation_id,
                    from: r.valid_from,
                    to: r.valid_to.unwrap_or(OPEN),
                    inside_ip: r.inside_ip,
                    inside_port: r.inside_port,
                    cluster,
                    exporter: r.exporter,
                };
                let list = self.sessions.entry(key).or_default();
                let at = list.partition_point(|x| x.from <= t.from);
                list.insert(at, t);
                self.note_outside(key.outside_ip, r.exporter);
                // What was stored shows the NAT alive then.
                self.heard_from(r.exporter, t.from);
                if let Some(to) = r.valid_to {
                    self.heard_from(r.exporter, to);
                }
                self.next_id = self.next_id.max(t.id + 1);
                self.latest = self.latest.max(t.from).max(r.valid_to.unwrap_or(t.from));
                loaded += 1;
            }
        }
        Ok(loaded)
    }
}

/// Decodes rows of `nat_history` (or its log); rows whose addresses do not parse are skipped.
pub fn nat_rows(b: &RecordBatch) -> Result<Vec<NatRow>, ColumnError> {
    use arrow::array::Array;
    let c = Columns::new("nat_history", b);
    let id = c.int64("translation_id")?;
    let protocol = c.int16("protocol")?;
    let (cluster, inside_ip, outside_ip, remote_ip, exporter) = (
        c.text("cluster_name")?,
        c.text("inside_ip")?,
        c.text("outside_ip")?,
        c.text("remote_ip")?,
        c.text("exporter")?,
    );
    let (inside_port, outside_port, remote_port) = (
        c.int32("inside_port")?,
        c.int32("outside_port")?,
        c.int32("remote_port")?,
    );
    let (from, to, recorded) = (
        c.timestamp("valid_from")?,
        c.timestamp("valid_to")?,
        c.timestamp("recorded_at")?,
    );
    let mut out = Vec::with_capacity(b.num_rows());
    for i in 0..b.num_rows() {
        let (Some(inside), Some(outside), Some(exp)) = (
            parse_ip(inside_ip.value(i)),
            parse_ip(outside_ip.value(i)),
            parse_ip(exporter.value(i)),
        ) else {
            continue;
        };
        let remote = (!remote_ip.is_null(i))
            .then(|| parse_ip(remote_ip.value(i)))
            .flatten()
            .map(|ip| (ip, remote_port.value(i) as u16));
        out.push(NatRow {
            translation_id: id.value(i),
            cluster: (!cluster.is_null(i)).then(|| cluster.value(i).to_string()),
            protocol: protocol.value(i) as u8,
            inside_ip: inside,
            inside_port: inside_port.value(i) as u16,
            outside_ip: outside,
            outside_port: outside_port.value(i) as u16,
            remote,
            valid_from: from.value(i),
            valid_to: (!to.is_null(i)).then(|| to.value(i)),
            exporter: exp,
            recorded_at: recorded.value(i),
        });
    }
    Ok(out)
}

const EMPTY: Translation = Translation {
    id: 0,
    from: 0,
    to: 0,
    inside_ip: 0,
    inside_port: 0,
    cluster: ANY_CLUSTER,
    exporter: 0,
};

/// One row of `nat_history_log`, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NatRow {
    pub translation_id: i64,
    pub cluster: Option<String>,
    pub protocol: u8,
    pub inside_ip: u128,
    pub inside_port: u16,
    pub outside_ip: u128,
    pub outside_port: u16,
    pub remote: Option<(u128, u16)>,
    pub valid_from: i64,
    pub valid_to: Option<i64>,
    pub exporter: u128,
    pub recorded_at: i64,
}

fn nat_rows_batch(schema: SchemaRef, rows: impl Iterator<Item = NatRow>) -> RecordBatch {
    let mut id = Int64Builder::new();
    let mut cluster = StringBuilder::new();
    let mut protocol = Int16Builder::new();
    let mut inside_ip = StringBuilder::new();
    let mut inside_port = Int32Builder::new();
    let mut outside_ip = StringBuilder::new();
    let mut outside_port = Int32Builder::new();
    let mut remote_ip = StringBuilder::new();
    let mut remote_port = Int32Builder::new();
    let utc = || TimestampMicrosecondBuilder::new().with_timezone("UTC");
    let (mut from, mut to, mut recorded) = (utc(), utc(), utc());
    let mut exporter = StringBuilder::new();
    for r in rows {
        id.append_value(r.translation_id);
        cluster.append_option(r.cluster.as_deref());
        protocol.append_value(r.protocol as i16);
        inside_ip.append_value(ip_text(r.inside_ip));
        inside_port.append_value(r.inside_port as i32);
        outside_ip.append_value(ip_text(r.outside_ip));
        outside_port.append_value(r.outside_port as i32);
        remote_ip.append_option(r.remote.map(|(ip, _)| ip_text(ip)));
        remote_port.append_option(r.remote.map(|(_, port)| port as i32));
        from.append_value(r.valid_from);
        to.append_option(r.valid_to);
        exporter.append_value(ip_text(r.exporter));
        recorded.append_value(r.recorded_at);
    }
    let columns: Vec<ArrayRef> = vec![
        Arc::new(id.finish()),
        Arc::new(cluster.finish()),
        Arc::new(protocol.finish()),
        Arc::new(inside_ip.finish()),
        Arc::new(inside_port.finish()),
        Arc::new(outside_ip.finish()),
        Arc::new(outside_port.finish()),
        Arc::new(remote_ip.finish()),
        Arc::new(remote_port.finish()),
        Arc::new(from.finish()),
        Arc::new(to.finish()),
        Arc::new(exporter.finish()),
        Arc::new(recorded.finish()),
    ];
    RecordBatch::try_new(schema, columns).expect("columns follow nat_history_schema")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hawking_schemas::ip::v4_to_u128;

    const NODE: u128 = 0xffff_c0a8_050a; // ::ffff:192.168.5.10
    const REMOTE: u128 = 0xffff_5db8_d822; // ::ffff:93.184.216.34
    const S: i64 = 1_000_000;

    fn event(
        kind: NatEventKind,
        at: i64,
        inside: u32,
        inside_port: u16,
        outside_port: u16,
    ) -> NatEvent {
        NatEvent {
            at,
            kind: Some(kind),
            exporter: v4_to_u128(0xc0a8_050a),
            observation_domain: 0,
            protocol: 6,
            inside_ip: v4_to_u128(inside),
            inside_port,
            outside_ip: NODE,
            outside_port,
            remote_ip: REMOTE,
            remote_port: 443,
        }
    }

    fn inside_of(m: NatMatch) -> Vec<(u128, u16)> {
        m.translations()
            .iter()
            .map(|t| (t.inside_ip, t.inside_port))
            .collect()
    }

    #[test]
    fn a_translation_covers_flows_of_its_5_tuple_while_it_lasts() {
        let mut nat = NatIndex::new(S);
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        nat.apply(
            &event(NatEventKind::Delete, 200 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        let pod = vec![(v4_to_u128(0x0a04_0005), 40000)];
        let at = |start, end| inside_of(nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, start, end));
        assert_eq!(at(150 * S, 160 * S), pod);
        // Within the clock skew of its ends.
        assert_eq!(at(99 * S + 1, 99 * S + 2), pod);
        assert_eq!(at(201 * S - 1, 201 * S), pod);
        assert_eq!(at(300 * S, 310 * S), vec![], "long after it closed");
        assert_eq!(at(10 * S, 20 * S), vec![], "long before it opened");
        // Other remote ends, ports or protocols are other sessions.
        assert_eq!(
            inside_of(nat.lookup(&[0], 6, NODE, 61000, REMOTE, 80, 150 * S, 160 * S)),
            vec![]
        );
        assert_eq!(
            inside_of(nat.lookup(&[0], 17, NODE, 61000, REMOTE, 443, 150 * S, 160 * S)),
            vec![]
        );
        assert_eq!(
            inside_of(nat.lookup(&[0], 6, NODE, 61001, REMOTE, 443, 150 * S, 160 * S)),
            vec![]
        );
    }

    #[test]
    fn a_reused_outside_port_maps_each_flow_to_the_session_of_its_time() {
        let mut nat = NatIndex::new(S);
        let (a, b) = (0x0a04_0005, 0x0a04_0006);
        nat.apply(&event(NatEventKind::Create, 100 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Delete, 200 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Create, 205 * S, b, 50000, 61000), 0);
        let at = |nat: &NatIndex, t| inside_of(nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, t, t));
        assert_eq!(at(&nat, 150 * S), vec![(v4_to_u128(a), 40000)]);
        assert_eq!(at(&nat, 210 * S), vec![(v4_to_u128(b), 50000)]);
        // Reused within the skew: a flow then could be either session's.
        nat.apply(&event(NatEventKind::Delete, 300 * S, b, 50000, 61000), 0);
        nat.apply(
            &event(NatEventKind::Create, 300 * S + S / 2, a, 40001, 61000),
            0,
        );
        assert_eq!(at(&nat, 300 * S + S / 4).len(), 2);
    }

    #[test]
    fn a_new_session_on_an_open_5_tuple_ends_the_old_one_and_repeats_are_ignored() {
        let mut nat = NatIndex::new(0);
        let (a, b) = (0x0a04_0005, 0x0a04_0006);
        nat.apply(&event(NatEventKind::Create, 100 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Create, 101 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Create, 150 * S, b, 50000, 61000), 0);
        nat.apply(&event(NatEventKind::Delete, 160 * S, a, 9, 61000), 0);
        let c = nat.counters();
        assert_eq!(
            (c.opened, c.duplicates, c.superseded, c.unmatched_deletes),
            (2, 1, 1, 1)
        );
        let at = |t| inside_of(nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, t, t));
        assert_eq!(at(149 * S), vec![(v4_to_u128(a), 40000)]);
        assert_eq!(at(151 * S), vec![(v4_to_u128(b), 50000)]);
    }

    #[test]
    fn mappings_without_a_remote_end_cover_every_remote() {
        let mut nat = NatIndex::new(S);
        let mut e = event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000);
        (e.remote_ip, e.remote_port) = (0, 0);
        nat.apply(&e, 0);
        let found = nat.lookup(
            &[0],
            6,
            NODE,
            61000,
            v4_to_u128(0x0808_0808),
            53,
            150 * S,
            150 * S,
        );
        assert_eq!(inside_of(found), vec![(v4_to_u128(0x0a04_0005), 40000)]);
    }

    #[test]
    fn rows_written_then_loaded_give_the_same_answers() {
        let mut nat = NatIndex::new(S);
        nat.set_cluster_names(vec!["eu".into()]);
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        nat.apply(
            &event(NatEventKind::Create, 120 * S, 0x0a04_0006, 40000, 61001),
            ANY_CLUSTER,
        );
        nat.apply(
            &event(NatEventKind::Delete, 200 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        let rows = nat.take_rows(300 * S).unwrap();
        assert_eq!(rows.num_rows(), 3, "two opened, one closed");
        assert!(nat.take_rows(301 * S).is_none());
        // What the nat_history view keeps: the closed row of translation 1, the open one of 2.
        let folded = rows.slice(1, 2);
        let mut loaded = NatIndex::new(S);
        assert_eq!(
            loaded
                .load(&[folded], |name| if name == "eu" { 0 } else { ANY_CLUSTER })
                .unwrap(),
            2
        );
        for t in [150 * S, 250 * S, 500 * S] {
            for port in [61000, 61001] {
                let (mine, theirs) = (
                    nat.lookup(&[0], 6, NODE, port, REMOTE, 443, t, t),
                    loaded.lookup(&[0], 6, NODE, port, REMOTE, 443, t, t),
                );
                assert_eq!(inside_of(mine), inside_of(theirs), "port {port} at {t}");
            }
        }
        let matches = loaded
            .lookup(&[0], 6, NODE, 61000, REMOTE, 443, 150 * S, 150 * S)
            .translations()
            .to_vec();
        assert_eq!((matches[0].id, matches[0].cluster), (1, 0));
        // New translations continue the IDs.
        loaded.apply(
            &event(NatEventKind::Create, 600 * S, 0x0a04_0007, 1, 61002),
            0,
        );
        let matches = loaded
            .lookup(&[0], 6, NODE, 61002, REMOTE, 443, 601 * S, 601 * S)
            .translations()
            .to_vec();
        assert_eq!(matches[0].id, 3);
    }

    #[test]
    fn pruning_forgets_only_translations_closed_before_the_cut() {
        let mut nat = NatIndex::new(0);
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        nat.apply(
            &event(NatEventKind::Delete, 200 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0006, 40000, 61001),
            0,
        );
        nat.prune_ended_before(250 * S);
        assert_eq!(nat.translation_count(), 1);
        assert!(
            inside_of(nat.lookup(&[0], 6, NODE, 61001, REMOTE, 443, 900 * S, 900 * S)).len() == 1
        );
    }

    #[test]
    fn a_create_that_arrives_late_does_not_close_the_later_session() {
        let mut nat = NatIndex::new(0);
        let (a, b) = (0x0a04_0005, 0x0a04_0006);
        nat.apply(&event(NatEventKind::Create, 200 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Create, 150 * S, b, 50000, 61000), 0);
        let at = |t| inside_of(nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, t, t));
        assert_eq!(at(300 * S), vec![(v4_to_u128(a), 40000)]);
        assert_eq!(at(170 * S), vec![(v4_to_u128(b), 50000)]);
    }

    #[test]
    fn portless_protocols_name_no_one() {
        let mut nat = NatIndex::new(0);
        let mut ping = event(NatEventKind::Create, 100 * S, 0x0a04_0005, 0, 0);
        ping.protocol = 1;
        nat.apply(&ping, 0);
        assert!(nat.is_empty());
        assert_eq!(nat.counters().portless, 1);
    }

    #[test]
    fn clusters_reusing_a_node_address_keep_their_translations_apart() {
        let mut nat = NatIndex::new(S);
        let (a, b) = (0x0a04_0005, 0x0a04_0006);
        nat.apply(&event(NatEventKind::Create, 100 * S, a, 40000, 61000), 0);
        nat.apply(&event(NatEventKind::Create, 100 * S, b, 50000, 61000), 1);
        let at = |clusters: &[u16]| {
            inside_of(nat.lookup(clusters, 6, NODE, 61000, REMOTE, 443, 150 * S, 150 * S))
        };
        assert_eq!(at(&[0]), vec![(v4_to_u128(a), 40000)]);
        assert_eq!(at(&[1]), vec![(v4_to_u128(b), 50000)]);
        // A flow whose exporter no cluster lists could be either's.
        assert_eq!(at(&[0, 1]).len(), 2);
        assert_eq!(nat.translation_count(), 2, "neither superseded the other");
    }

    #[test]
    fn a_flow_while_its_nat_was_silent_is_uncertain() {
        let trust = NatTrust {
            silent_after: 60 * S,
            ..NatTrust::default()
        };
        let mut nat = NatIndex::new(S).with_trust(trust);
        let exporter = v4_to_u128(0xc0a8_050a);
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        nat.apply(
            &event(NatEventKind::Delete, 110 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        // Heard every 30 s until 200 s, then nothing until 500 s.
        for t in [130, 160, 190, 200, 500] {
            nat.heard_from(exporter, t * S);
        }
        let other_port = |t: i64| nat.lookup(&[0], 6, NODE, 62000, REMOTE, 443, t * S, t * S);
        // No translation while the NAT talked: the address speaks for itself.
        assert!(!other_port(150).is_uncertain());
        assert!(
            !other_port(250).is_uncertain(),
            "within the bound of its last word"
        );
        assert!(other_port(300).is_uncertain(), "silent for 100 s then");
        assert!(other_port(420).is_uncertain());
        assert!(
            !other_port(490).is_uncertain(),
            "its next word was only 10 s later"
        );
        assert!(other_port(900).is_uncertain(), "silent since 500 s");
        // A covering translation is an answer whatever the NAT's silence.
        assert!(
            !nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, 105 * S, 105 * S)
                .is_uncertain()
        );
        // Addresses no NAT reported are not its business.
        assert!(
            !nat.lookup(&[0], 6, REMOTE, 1, NODE, 2, 900 * S, 900 * S)
                .is_uncertain()
        );
        // Silence tolerated: a bound of 0.
        let mut trusting = NatIndex::new(S).with_trust(NatTrust::STORED);
        trusting.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000, 61000),
            0,
        );
        assert!(
            !trusting
                .lookup(&[0], 6, NODE, 62000, REMOTE, 443, 900 * S, 900 * S)
                .is_uncertain()
        );
    }

    #[test]
    fn an_open_translation_whose_delete_was_lost_closes_after_its_idle_bound() {
        let trust = NatTrust {
            silent_after: 0,
            idle_udp: 120 * S,
            ..NatTrust::default()
        };
        let mut nat = NatIndex::new(0).with_trust(trust);
        let udp = |kind, at, inside, port| NatEvent {
            protocol: 17,
            ..event(kind, at, inside, port, 61000)
        };
        nat.apply(&udp(NatEventKind::Create, 100 * S, 0x0a04_0005, 40000), 0);
        // A TCP session opened at the same time stays: its bound is days.
        nat.apply(
            &event(NatEventKind::Create, 100 * S, 0x0a04_0006, 40000, 61000),
            0,
        );
        nat.close_idle();
        assert_eq!(nat.counters().idle_closed, 0, "nothing is idle yet");
        // The index's clock moves with events (here another NAT session, much later).
        nat.apply(
            &event(NatEventKind::Create, 400 * S, 0x0a04_0007, 1, 63000),
            0,
        );
        nat.close_idle();
        assert_eq!(nat.counters().idle_closed, 1);
        let at =
            |nat: &NatIndex, t: i64| nat.lookup(&[0], 17, NODE, 61000, REMOTE, 443, t * S, t * S);
        assert_eq!(
            inside_of(at(&nat, 150)),
            vec![(v4_to_u128(0x0a04_0005), 40000)]
        );
        assert!(
            at(&nat, 300).is_uncertain(),
            "after the guessed end: the session may go on"
        );
        let tcp = nat.lookup(&[0], 6, NODE, 61000, REMOTE, 443, 300 * S, 300 * S);
        assert_eq!(inside_of(tcp).len(), 1);
        // The closing is recorded in nat_history like a delete.
        let rows = nat.take_rows(500 * S).unwrap();
        let closed = nat_rows(&rows)
            .unwrap()
            .into_iter()
            .filter(|r| r.valid_to == Some(220 * S))
            .count();
        assert_eq!(closed, 1);
        // A new create on the 5-tuple is a fresh answer.
        nat.apply(&udp(NatEventKind::Create, 450 * S, 0x0a04_0008, 41000), 0);
        assert_eq!(
            inside_of(at(&nat, 460)),
            vec![(v4_to_u128(0x0a04_0008), 41000)]
        );
    }
}
