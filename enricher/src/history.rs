//! `IpHistory`: who held each address when, per cluster, and the point-in-time lookup that
//! decides an endpoint's attribution. Wrong is worse than unknown: the lookup names an owner
//! only when exactly one could have held the address for the whole of the flow's time.

use std::sync::Arc;

use hawking_schemas::OwnerKind;
use rustc_hash::FxHashMap;

use crate::owners::{OwnerId, OwnerTable};
use hawking_schemas::cidr::Cidr;

/// `to` of an interval (or gap) that has not ended.
pub const OPEN: i64 = i64::MAX;

/// An owner held an address from `from` to `to` (µs since the epoch, both inclusive).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Interval {
    pub from: i64,
    pub to: i64,
    /// Largest `to` of this and every earlier interval of the address: a backwards scan
    /// stops once it falls below the lookup's start.
    max_to: i64,
    pub owner: OwnerId,
}

/// At most this many candidates are named for an ambiguous endpoint.
pub const MAX_CANDIDATES: usize = 4;

/// The answer for one endpoint in one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Exactly one owner could have held the address for the whole flow.
    Held(OwnerId),
    /// Several could have; the first `n` are named.
    Ambiguous {
        candidates: [OwnerId; MAX_CANDIDATES],
        n: u8,
    },
    /// A cluster address (or a time the cluster was not watched) that no history covers.
    Unknown,
    /// Not a cluster address: outside the cluster's ranges and never held by anyone.
    External,
}

/// One cluster's history.
#[derive(Debug)]
pub struct ClusterHistory {
    pub name: Arc<str>,
    addrs: FxHashMap<u128, Vec<Interval>>,
    /// Stretches the cluster was not observed, sorted by start; the last may be open.
    gaps: Vec<(i64, i64)>,
    /// Pod and service ranges (configured or learned from nodes): addresses in them that no
    /// interval covers are `Unknown`, not `External`.
    ranges: Vec<Cidr>,
    intervals: usize,
}

impl ClusterHistory {
    fn new(name: Arc<str>) -> Self {
        ClusterHistory {
            name,
            addrs: FxHashMap::default(),
            gaps: Vec::new(),
            ranges: Vec::new(),
            intervals: 0,
        }
    }

    fn in_gap(&self, start: i64, end: i64) -> bool {
        self.gaps.iter().any(|(gs, ge)| *gs <= end && *ge >= start)
    }

    fn in_ranges(&self, addr: u128) -> bool {
        self.ranges.iter().any(|c| c.contains(addr))
    }

    /// The gaps (start, end; end `OPEN` while ongoing).
    pub fn gaps(&self) -> &[(i64, i64)] {
        &self.gaps
    }

    /// The intervals of an address, sorted by start.
    pub fn intervals(&self, addr: u128) -> &[Interval] {
        self.addrs.get(&addr).map(Vec::as_slice).unwrap_or(&[])
    }
}

/// Every cluster's history plus the owners it names.
#[derive(Debug, Default)]
pub struct IpHistory {
    pub owners: OwnerTable,
    clusters: Vec<ClusterHistory>,
}

fn recompute_max_to(v: &mut [Interval], from: usize) {
    let mut running = if from == 0 {
        i64::MIN
    } else {
        v[from - 1].max_to
    };
    for iv in &mut v[from..] {
        running = running.max(iv.to);
        iv.max_to = running;
    }
}

impl IpHistory {
    /// The ID of the named cluster, created if new.
    pub fn cluster(&mut self, name: &str) -> u16 {
        if let Some(id) = self.find_cluster(name) {
            return id;
        }
        self.clusters.push(ClusterHistory::new(name.into()));
        (self.clusters.len() - 1) as u16
    }

    pub fn find_cluster(&self, name: &str) -> Option<u16> {
        self.clusters
            .iter()
            .position(|c| &*c.name == name)
            .map(|i| i as u16)
    }

    pub fn clusters(&self) -> &[ClusterHistory] {
        &self.clusters
    }

    pub fn cluster_name(&self, id: u16) -> &str {
        &self.clusters[id as usize].name
    }

    /// Intervals over all clusters.
    pub fn interval_count(&self) -> usize {
        self.clusters.iter().map(|c| c.intervals).sum()
    }

    /// Heap bytes of the index and owner table (for the memory benchmark and metrics).
    pub fn heap_bytes(&self) -> usize {
        let per_entry = std::mem::size_of::<(u128, Vec<Interval>)>() + 1;
        self.owners.heap_bytes()
            + self
                .clusters
                .iter()
                .map(|c| {
                    c.addrs.capacity() * per_entry
                        + c.addrs
                            .values()
                            .map(|v| v.capacity() * std::mem::size_of::<Interval>())
                            .sum::<usize>()
                })
                .sum::<usize>()
    }

    /// Records that `owner` held `addr` from `from` to `to` (`OPEN` if it still does).
    pub fn insert(&mut self, cluster: u16, addr: u128, owner: OwnerId, from: i64, to: i64) {
        let c = &mut self.clusters[cluster as usize];
        let v = c.addrs.entry(addr).or_default();
        let at = v.partition_point(|iv| iv.from <= from);
        v.insert(
            at,
            Interval {
                from,
                to: to.max(from),
                max_to: 0,
                owner,
            },
        );
        recompute_max_to(v, at);
        c.intervals += 1;
    }

    /// Ends `owner`'s open interval on `addr` at `to`; returns its start, if it had one.
    pub fn close(&mut self, cluster: u16, addr: u128, owner: OwnerId, to: i64) -> Option<i64> {
        let v = self.clusters[cluster as usize].addrs.get_mut(&addr)?;
        let i = v
            .iter()
            .rposition(|iv| iv.owner == owner && iv.to == OPEN)?;
        v[i].to = to.max(v[i].from);
        recompute_max_to(v, i);
        Some(v[i].from)
    }

    /// Ends at `at` every interval on `addr` of a pod other than `keep` that began before
    /// `at` and lasts past it (`keep` demonstrably held the address from `at`). Appends each
    /// changed interval's (owner, start) to `ended`.
    pub fn end_other_pods_at(
        &mut self,
        cluster: u16,
        addr: u128,
        keep: OwnerId,
        at: i64,
        ended: &mut Vec<(OwnerId, i64)>,
    ) {
        let Some(v) = self.clusters[cluster as usize].addrs.get_mut(&addr) else {
            return;
        };
        let mut first = None;
        for (i, iv) in v.iter_mut().enumerate() {
            if iv.owner != keep
                && iv.from < at
                && iv.to > at
                && self.owners.kind(iv.owner) == OwnerKind::Pod
            {
                iv.to = at;
                ended.push((iv.owner, iv.from));
                first.get_or_insert(i);
            }
        }
        if let Some(i) = first {
            recompute_max_to(v, i);
        }
    }

    /// The start of `owner`'s open interval on `addr`.
    pub fn open_since(&self, cluster: u16, addr: u128, owner: OwnerId) -> Option<i64> {
        self.clusters[cluster as usize]
            .intervals(addr)
            .iter()
            .rev()
            .find(|iv| iv.owner == owner && iv.to == OPEN)
            .map(|iv| iv.from)
    }

    /// Records a stretch the cluster was not observed (`end` `OPEN` while it lasts).
    pub fn insert_gap(&mut self, cluster: u16, start: i64, end: i64) {
        let gaps = &mut self.clusters[cluster as usize].gaps;
        if let Some(g) = gaps.iter_mut().find(|g| g.0 == start) {
            g.1 = end;
            return;
        }
        let at = gaps.partition_point(|g| g.0 <= start);
        gaps.insert(at, (start, end));
    }

    /// Whether the cluster has a gap still open.
    pub fn open_gap(&self, cluster: u16) -> Option<i64> {
        self.clusters[cluster as usize]
            .gaps
            .iter()
            .find(|g| g.1 == OPEN)
            .map(|g| g.0)
    }

    /// Adds a pod or service range of the cluster.
    pub fn add_range(&mut self, cluster: u16, range: Cidr) {
        let ranges = &mut self.clusters[cluster as usize].ranges;
        if !ranges.contains(&range) {
            ranges.push(range);
        }
    }

    /// Who held `addr` in `cluster` for the whole of `start..=end`. `port` and `protocol` are
    /// the flow's port on this endpoint: evidence that tells a host-network pod from its node.
    pub fn lookup(
        &self,
        cluster: u16,
        addr: u128,
        start: i64,
        end: i64,
        port: u16,
        protocol: u8,
    ) -> Verdict {
        let c = &self.clusters[cluster as usize];
        if !c.gaps.is_empty() && c.in_gap(start, end) {
            return Verdict::Unknown;
        }
        let Some(v) = c.addrs.get(&addr) else {
            return if c.in_ranges(addr) {
                Verdict::Unknown
            } else {
                Verdict::External
            };
        };
        let mut found = [0 as OwnerId; MAX_CANDIDATES];
        let mut n = 0usize;
        let mut more = false;
        // Intervals that start by `end`. Most addresses have a few dozen intervals and most
        // lookups are for recent times: a backward scan reads the last cache line or two in
        // order, where a binary search waits on one miss after another.
        let k = if v.len() <= 32 {
            v.len() - v.iter().rev().take_while(|iv| iv.from > end).count()
        } else {
            v.partition_point(|iv| iv.from <= end)
        };
        for iv in v[..k].iter().rev() {
            if iv.max_to < start {
                break;
            }
            if iv.to >= start && !found[..n].contains(&iv.owner) {
                if n < MAX_CANDIDATES {
                    found[n] = iv.owner;
                    n += 1;
                } else {
                    more = true;
                }
            }
        }
        match n {
            0 => Verdict::Unknown,
            // A host-network pod shares its node's address, whether or not the node is in
            // the history: only its declared port tells its traffic from the node's.
            1 if self.owners.kind(found[0]) == OwnerKind::HostNetworkPod => {
                self.resolve_shared_address(&found[..1], port, protocol)
            }
            1 => Verdict::Held(found[0]),
            _ if !more => self.resolve_shared_address(&found[..n], port, protocol),
            _ => Verdict::Ambiguous {
                candidates: found,
                n: n as u8,
            },
        }
    }

    /// Several owners overlap. The one case with a rightful single answer: a node and the
    /// host-network pods on it share the node's address, and the flow's port is declared by
    /// exactly one of those pods.
    fn resolve_shared_address(&self, owners: &[OwnerId], port: u16, protocol: u8) -> Verdict {
        let ambiguous = || {
            let mut candidates = [0; MAX_CANDIDATES];
            candidates[..owners.len()].copy_from_slice(owners);
            Verdict::Ambiguous {
                candidates,
                n: owners.len() as u8,
            }
        };
        let all_node_address = owners.iter().all(|o| {
            matches!(
                self.owners.kind(*o),
                OwnerKind::Node | OwnerKind::HostNetworkPod
            )
        });
        if !all_node_address {
            return ambiguous();
        }
        let mut declared = owners.iter().filter(|o| {
            self.owners.kind(**o) == OwnerKind::HostNetworkPod
                && self.owners.declares_port(**o, protocol, port)
        });
        match (declared.next(), declared.next()) {
            (Some(pod), None) => Verdict::Held(*pod),
            _ => ambiguous(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::owners::OwnerSpec;
    use hawking_schemas::ip::v4_to_u128;

    fn ip(last: u8) -> u128 {
        v4_to_u128(0x0a04_0100 | last as u32)
    }

    fn pod(h: &mut IpHistory, name: &str) -> OwnerId {
        h.owners.upsert(
            0,
            OwnerKind::Pod,
            &OwnerSpec {
                namespace: Some("shop"),
                name,
                uid: name,
                ..Default::default()
            },
        )
    }

    fn setup() -> (IpHistory, OwnerId, OwnerId) {
        let mut h = IpHistory::default();
        let c = h.cluster("prod");
        h.add_range(c, "10.4.0.0/16".parse().unwrap());
        let a = pod(&mut h, "web-a");
        let b = pod(&mut h, "web-b");
        h.insert(c, ip(10), a, 100, OPEN);
        h.close(c, ip(10), a, 200);
        h.insert(c, ip(10), b, 190, OPEN);
        (h, a, b)
    }

    #[test]
    fn a_recycled_address_resolves_to_the_holder_at_the_flows_time() {
        let (h, a, b) = setup();
        assert_eq!(h.lookup(0, ip(10), 120, 150, 0, 6), Verdict::Held(a));
        assert_eq!(h.lookup(0, ip(10), 250, 900, 0, 6), Verdict::Held(b));
    }

    #[test]
    fn overlap_from_event_lag_and_flows_spanning_a_handover_are_ambiguous() {
        let (h, a, b) = setup();
        let Verdict::Ambiguous { candidates, n } = h.lookup(0, ip(10), 195, 196, 0, 6) else {
            panic!()
        };
        assert_eq!(&candidates[..n as usize], &[b, a]);
        assert!(matches!(
            h.lookup(0, ip(10), 150, 300, 0, 6),
            Verdict::Ambiguous { .. }
        ));
    }

    #[test]
    fn before_anyone_held_it_a_cluster_address_is_unknown_and_others_external() {
        let (h, _, _) = setup();
        assert_eq!(h.lookup(0, ip(10), 10, 20, 0, 6), Verdict::Unknown);
        assert_eq!(
            h.lookup(0, ip(99), 10, 20, 0, 6),
            Verdict::Unknown,
            "in the pod range"
        );
        assert_eq!(
            h.lookup(0, v4_to_u128(0x0808_0808), 10, 20, 0, 6),
            Verdict::External
        );
    }

    #[test]
    fn flows_touching_a_gap_are_unknown() {
        let (mut h, _, _) = setup();
        h.insert_gap(0, 400, 500);
        assert_eq!(h.lookup(0, ip(10), 450, 460, 0, 6), Verdict::Unknown);
        assert_eq!(
            h.lookup(0, ip(10), 350, 410, 0, 6),
            Verdict::Unknown,
            "overlapping its start"
        );
        assert!(matches!(
            h.lookup(0, ip(10), 501, 600, 0, 6),
            Verdict::Held(_)
        ));
        h.insert_gap(0, 700, OPEN);
        assert_eq!(h.open_gap(0), Some(700));
        assert_eq!(h.lookup(0, ip(10), 800, 810, 0, 6), Verdict::Unknown);
        h.insert_gap(0, 700, 750);
        assert_eq!(h.open_gap(0), None);
        assert!(matches!(
            h.lookup(0, ip(10), 800, 810, 0, 6),
            Verdict::Held(_)
        ));
    }

    #[test]
    fn a_node_address_with_host_network_pods_needs_port_evidence() {
        let mut h = IpHistory::default();
        let c = h.cluster("prod");
        let node_ip = v4_to_u128(0xc0a8_0a0b);
        let node = h.owners.upsert(
            c,
            OwnerKind::Node,
            &OwnerSpec {
                name: "node-1",
                uid: "n1",
                ..Default::default()
            },
        );
        let proxy = h.owners.upsert(
            c,
            OwnerKind::HostNetworkPod,
            &OwnerSpec {
                namespace: Some("kube-system"),
                name: "kube-proxy",
                uid: "p1",
                ports: Some("tcp/10249"),
                ..Default::default()
            },
        );
        h.insert(c, node_ip, node, 0, OPEN);
        assert_eq!(
            h.lookup(c, node_ip, 10, 20, 22, 6),
            Verdict::Held(node),
            "no host-network pod: the node"
        );
        h.insert(c, node_ip, proxy, 5, OPEN);
        assert_eq!(h.lookup(c, node_ip, 10, 20, 10249, 6), Verdict::Held(proxy));
        assert!(matches!(
            h.lookup(c, node_ip, 10, 20, 22, 6),
            Verdict::Ambiguous { n: 2, .. }
        ));
        assert!(
            matches!(
                h.lookup(c, node_ip, 10, 20, 10249, 17),
                Verdict::Ambiguous { .. }
            ),
            "wrong protocol"
        );
    }

    #[test]
    fn an_early_long_interval_is_still_found_behind_many_short_ones() {
        let mut h = IpHistory::default();
        let c = h.cluster("prod");
        let long = pod(&mut h, "long");
        h.insert(c, ip(1), long, 0, 10_000);
        for i in 0..50 {
            let p = pod(&mut h, &format!("short-{i}"));
            h.insert(c, ip(1), p, 20_000 + i * 100, 20_000 + i * 100 + 50);
        }
        assert_eq!(h.lookup(c, ip(1), 9_000, 9_500, 0, 6), Verdict::Held(long));
        assert_eq!(h.interval_count(), 51);
    }
}
