//! `attribute_batch`: every flow endpoint of a batch looked up in the history at the flow's
//! own time, in the clusters its exporter belongs to (through a source-NAT translation first,
//! when the endpoint is a NAT's outside end), and written out as the `src_*` and `dst_*`
//! attribution columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int32DictionaryArray, StringArray, StringBuilder, StringViewArray,
};
use arrow::datatypes::Int32Type;
use arrow::error::ArrowError;
use hawking_schemas::flow::FlowBatch;
use hawking_schemas::{Attribution, OwnerKind};

use crate::history::{IpHistory, MAX_CANDIDATES, Verdict};
use crate::nat::{ANY_CLUSTER, NatIndex};
use crate::owners::OwnerId;
use hawking_schemas::cidr::Cidr;

const NO_CLUSTER: u16 = u16::MAX;

/// Which clusters' history applies to flows from which exporters. Clusters may reuse the
/// same pod ranges, so the exporter (address, optionally observation domain) decides.
#[derive(Clone, Debug, Default)]
pub struct ClusterSelector {
    rules: Vec<(Cidr, Option<u32>, u16)>,
    all: Vec<u16>,
}

impl ClusterSelector {
    /// Flows from `exporter` (and `domain`, if given) belong to `cluster`.
    pub fn add_rule(&mut self, exporter: Cidr, domain: Option<u32>, cluster: u16) {
        self.rules.push((exporter, domain, cluster));
        self.add_cluster(cluster);
    }

    /// A cluster consulted for exporters no rule names.
    pub fn add_cluster(&mut self, cluster: u16) {
        if !self.all.contains(&cluster) {
            self.all.push(cluster);
        }
    }

    /// The clusters for a flow: those whose rules name its exporter, else every cluster.
    pub fn clusters_for(&self, exporter: u128, domain: u32, out: &mut Vec<u16>) {
        self.listing(exporter, domain, out);
        if out.is_empty() {
            out.extend_from_slice(&self.all);
        }
    }

    /// The clusters whose rules name `exporter` (and `domain`): none for an exporter no
    /// cluster lists. What a NAT reports counts only from a NAT some cluster lists.
    pub fn listing(&self, exporter: u128, domain: u32, out: &mut Vec<u16>) {
        out.clear();
        for (range, dom, cluster) in &self.rules {
            if range.contains(exporter) && dom.is_none_or(|d| d == domain) && !out.contains(cluster)
            {
                out.push(*cluster);
            }
        }
    }
}

/// One endpoint's resolved attribution.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resolved {
    pub attribution: Attribution,
    /// The cluster it was resolved in, when exactly one applies.
    pub cluster: u16,
    pub owner: Option<OwnerId>,
    pub candidates: [OwnerId; MAX_CANDIDATES],
    pub n_candidates: u8,
}

impl Resolved {
    fn plain(attribution: Attribution, cluster: u16) -> Self {
        Resolved {
            attribution,
            cluster,
            owner: None,
            candidates: [0; MAX_CANDIDATES],
            n_candidates: 0,
        }
    }
}

fn held(history: &IpHistory, owner: OwnerId, cluster: u16) -> Resolved {
    let attribution = match history.owners.kind(owner) {
        OwnerKind::Pod | OwnerKind::HostNetworkPod => Attribution::Pod,
        OwnerKind::Node => Attribution::Node,
        OwnerKind::Service => Attribution::Service,
    };
    Resolved {
        owner: Some(owner),
        ..Resolved::plain(attribution, cluster)
    }
}

/// Resolves one endpoint across the applicable clusters. An owner is named only when one
/// cluster holds the address and every other says it is not theirs (`External`); anything
/// less certain stays `Ambiguous` or `Unknown`.
#[allow(clippy::too_many_arguments)]
pub fn resolve_endpoint(
    history: &IpHistory,
    clusters: &[u16],
    addr: u128,
    start: i64,
    end: i64,
    port: u16,
    protocol: u8,
) -> Resolved {
    match clusters {
        [] => Resolved::plain(Attribution::Unknown, NO_CLUSTER),
        [c] => match history.lookup(*c, addr, start, end, port, protocol) {
            Verdict::Held(o) => held(history, o, *c),
            Verdict::Ambiguous { candidates, n } => Resolved {
                candidates,
                n_candidates: n,
                ..Resolved::plain(Attribution::Ambiguous, *c)
            },
            Verdict::Unknown => Resolved::plain(Attribution::Unknown, *c),
            Verdict::External => Resolved::plain(Attribution::External, NO_CLUSTER),
        },
        many => {
            let mut holder: Option<(OwnerId, u16)> = None;
            let mut holders = 0;
            let mut candidates = [0; MAX_CANDIDATES];
            let mut n = 0usize;
            let mut unknown = false;
            let mut ambiguous = false;
            for c in many {
                match history.lookup(*c, addr, start, end, port, protocol) {
                    Verdict::Held(o) => {
                        holders += 1;
                        holder = Some((o, *c));
                        if n < MAX_CANDIDATES {
                            candidates[n] = o;
                            n += 1;
                        }
                    }
                    Verdict::Ambiguous {
                        candidates: cs,
                        n: k,
                    } => {
                        ambiguous = true;
                        for o in &cs[..k as usize] {
                            if n < MAX_CANDIDATES {
                                candidates[n] = *o;
                                n += 1;
                            }
                        }
                    }
                    Verdict::Unknown => unknown = true,
                    Verdict::External => {}
                }
            }
            match (holders, ambiguous, unknown, holder) {
                (1, false, false, Some((o, c))) => held(history, o, c),
                (h, a, _, _) if h > 1 || a => Resolved {
                    candidates,
                    n_candidates: n as u8,
                    ..Resolved::plain(Attribution::Ambiguous, NO_CLUSTER)
                },
                (_, _, true, _) | (1, _, _, _) => Resolved::plain(Attribution::Unknown, NO_CLUSTER),
                _ => Resolved::plain(Attribution::External, NO_CLUSTER),
            }
        }
    }
}

/// Resolves an endpoint that may be a NAT's outside end: a translation covering the flow
/// names the inside address, and the history names its owner (`snat`). Several covering
/// translations agree on an owner or leave the endpoint `ambiguous`. An inside address no
/// cluster holds leaves the outside address to speak for itself.
#[allow(clippy::too_many_arguments)]
pub fn resolve_through_nat(
    history: &IpHistory,
    nat: &NatIndex,
    clusters: &[u16],
    addr: u128,
    port: u16,
    remote: u128,
    remote_port: u16,
    start: i64,
    end: i64,
    protocol: u8,
) -> Resolved {
    let found = nat.lookup(
        clusters,
        protocol,
        addr,
        port,
        remote,
        remote_port,
        start,
        end,
    );
    if found.is_uncertain() {
        // The NAT may have translated this flow without Hawking hearing of it: the address
        // cannot speak for itself (it would name the node for a pod's traffic).
        return Resolved::plain(Attribution::Unknown, NO_CLUSTER);
    }
    resolve_translated(
        history,
        clusters,
        found.translations(),
        start,
        end,
        protocol,
    )
    .unwrap_or_else(|| resolve_endpoint(history, clusters, addr, start, end, port, protocol))
}

/// The owner behind `matches`, the translations that cover an endpoint between `start` and
/// `end`; `None` when there are none or no cluster holds their inside addresses (the
/// outside address then speaks for itself).
pub fn resolve_translated(
    history: &IpHistory,
    clusters: &[u16],
    matches: &[crate::nat::Translation],
    start: i64,
    end: i64,
    protocol: u8,
) -> Option<Resolved> {
    if matches.is_empty() {
        return None;
    }
    let n = matches.len();
    let inside = |t: &crate::nat::Translation| {
        let own = [t.cluster];
        let cs: &[u16] = if t.cluster == ANY_CLUSTER {
            clusters
        } else {
            &own
        };
        let r = resolve_endpoint(
            history,
            cs,
            t.inside_ip,
            start,
            end,
            t.inside_port,
            protocol,
        );
        match r.attribution {
            Attribution::Pod => Resolved {
                attribution: Attribution::Snat,
                ..r
            },
            _ => r,
        }
    };
    let mut resolved =
        [Resolved::plain(Attribution::External, NO_CLUSTER); crate::nat::MAX_MATCHES];
    for (slot, t) in resolved.iter_mut().zip(matches) {
        *slot = inside(t);
    }
    let resolved = &resolved[..n];
    if resolved
        .iter()
        .all(|r| r.attribution == Attribution::External)
    {
        return None;
    }
    let first = resolved[0];
    if resolved
        .iter()
        .all(|r| r.owner.is_some() && r.owner == first.owner && r.attribution == first.attribution)
    {
        return Some(first);
    }
    if n == 1 {
        return Some(first);
    }
    let mut out = Resolved::plain(Attribution::Ambiguous, NO_CLUSTER);
    let mut add = |o: OwnerId| {
        let k = out.n_candidates as usize;
        if k < MAX_CANDIDATES && !out.candidates[..k].contains(&o) {
            out.candidates[k] = o;
            out.n_candidates += 1;
        }
    };
    for r in resolved {
        if let Some(o) = r.owner {
            add(o);
        }
        for o in &r.candidates[..r.n_candidates as usize] {
            add(*o);
        }
    }
    Some(out)
}

/// Attribution of both endpoints of every flow in a batch.
#[derive(Clone, Debug, Default)]
pub struct BatchAttribution {
    pub src: Vec<Resolved>,
    pub dst: Vec<Resolved>,
}

/// Looks up every endpoint of `batch` at its flow's own time, through `nat` where an
/// endpoint is a NAT's outside end.
pub fn attribute_batch(
    history: &IpHistory,
    nat: &NatIndex,
    selector: &ClusterSelector,
    batch: &FlowBatch,
) -> BatchAttribution {
    let n = batch.len();
    let mut out = BatchAttribution {
        src: Vec::with_capacity(n),
        dst: Vec::with_capacity(n),
    };
    let mut clusters = Vec::new();
    let mut last_exporter = None;
    let through_nat = !nat.is_empty();
    for i in 0..n {
        let exporter = (batch.exporter[i], batch.observation_domain[i]);
        if last_exporter != Some(exporter) {
            selector.clusters_for(exporter.0, exporter.1, &mut clusters);
            last_exporter = Some(exporter);
        }
        let (start, end, proto) = (batch.flow_start[i], batch.flow_end[i], batch.protocol[i]);
        let (src, dst) = (batch.src_ip[i], batch.dst_ip[i]);
        let (sport, dport) = (batch.src_port[i], batch.dst_port[i]);
        out.src.push(if through_nat && nat.is_outside(src) {
            resolve_through_nat(
                history, nat, &clusters, src, sport, dst, dport, start, end, proto,
            )
        } else {
            resolve_endpoint(history, &clusters, src, start, end, sport, proto)
        });
        out.dst.push(if through_nat && nat.is_outside(dst) {
            resolve_through_nat(
                history, nat, &clusters, dst, dport, src, sport, start, end, proto,
            )
        } else {
            resolve_endpoint(history, &clusters, dst, start, end, dport, proto)
        });
    }
    out
}

/// The nine attribution values of one endpoint, in `ENDPOINT_COLUMNS` order, as the
/// attribution columns hold them; `candidates` is where an ambiguous answer's list is
/// written.
fn endpoint_values<'a>(
    history: &'a IpHistory,
    r: &Resolved,
    candidates: &'a mut String,
) -> [Option<&'a str>; 9] {
    let owners = &history.owners;
    let mut v = [None; 9];
    v[0] = (r.cluster != NO_CLUSTER).then(|| history.cluster_name(r.cluster));
    if let Some(o) = r.owner {
        let owner = owners.get(o);
        let name = owners.name(o);
        v[1] = owners.text(owner.namespace);
        match owner.kind {
            OwnerKind::Pod | OwnerKind::HostNetworkPod => {
                v[2] = Some(name);
                v[5] = owners.text(owner.node);
            }
            OwnerKind::Node => v[5] = Some(name),
            OwnerKind::Service => v[6] = Some(name),
        }
        v[3] = owners.text(owner.workload_kind);
        v[4] = owners.text(owner.workload);
    }
    v[7] = Some(r.attribution.as_str());
    if r.n_candidates > 0 {
        candidates.clear();
        for (i, o) in r.candidates[..r.n_candidates as usize].iter().enumerate() {
            if i > 0 {
                candidates.push_str(", ");
            }
            candidates.push_str(&owners.display(*o));
        }
        v[8] = Some(candidates.as_str());
    }
    v
}

/// Owners and their names are scattered over a large table: fetch them ahead (the owner 32
/// rows on, the name of the owner 16 rows on, whose record is cached by then) so a loop over
/// `resolved` does not wait on two memory reads per row.
#[inline(always)]
fn prefetch_owner(history: &IpHistory, resolved: &[Resolved], i: usize) {
    let owners = &history.owners;
    if let Some(o) = resolved.get(i + 32).and_then(|r| r.owner) {
        prefetch(owners.get(o));
    }
    if let Some(o) = resolved.get(i + 16).and_then(|r| r.owner) {
        prefetch(owners.name(o).as_ptr());
    }
}

/// The nine attribution columns of one endpoint side, in `ENDPOINT_COLUMNS` order.
pub fn endpoint_columns(history: &IpHistory, resolved: &[Resolved]) -> Vec<ArrayRef> {
    let n = resolved.len();
    let mut b: Vec<StringBuilder> = (0..9)
        .map(|_| StringBuilder::with_capacity(n, n * 8))
        .collect();
    let mut candidates = String::new();
    for (i, r) in resolved.iter().enumerate() {
        prefetch_owner(history, resolved, i);
        for (column, value) in b
            .iter_mut()
            .zip(endpoint_values(history, r, &mut candidates))
        {
            column.append_option(value);
        }
    }
    b.into_iter()
        .map(|mut c| Arc::new(c.finish()) as ArrayRef)
        .collect()
}

/// One side's stored attribution column as read back from the store, in any of the text
/// encodings a reader may give (dictionary-encoded is what replay reads: the values are
/// then not copied out of the file's dictionary pages).
enum StoredText<'a> {
    Plain(&'a StringArray),
    View(&'a StringViewArray),
    Dictionary(&'a Int32DictionaryArray, &'a StringArray),
}

impl<'a> StoredText<'a> {
    fn new(column: &'a dyn Array) -> Result<StoredText<'a>, ArrowError> {
        if let Some(c) = column.as_string_opt::<i32>() {
            return Ok(StoredText::Plain(c));
        }
        if let Some(c) = column.as_string_view_opt() {
            return Ok(StoredText::View(c));
        }
        if let Some(d) = column.as_dictionary_opt::<Int32Type>()
            && let Some(values) = d.values().as_string_opt::<i32>()
        {
            return Ok(StoredText::Dictionary(d, values));
        }
        Err(ArrowError::InvalidArgumentError(format!(
            "an attribution column of type {} is not text",
            column.data_type()
        )))
    }

    #[inline]
    fn get(&self, row: usize) -> Option<&'a str> {
        match self {
            StoredText::Plain(c) => c.is_valid(row).then(|| c.value(row)),
            StoredText::View(c) => c.is_valid(row).then(|| c.value(row)),
            StoredText::Dictionary(d, values) => d.is_valid(row).then(|| {
                let key = d.keys().values()[row] as usize;
                values.value(key)
            }),
        }
    }
}

/// The rows of `resolved` whose stored attribution (`stored`: one side's nine columns in
/// `ENDPOINT_COLUMNS` order, row for row) differs from what [`endpoint_columns`] would
/// build for them now — a null beside a value differs, two nulls do not — compared value by
/// value, without building today's columns.
pub fn changed_endpoints(
    history: &IpHistory,
    resolved: &[Resolved],
    stored: &[ArrayRef],
) -> Result<Vec<u32>, ArrowError> {
    if stored.len() != 9 || stored.iter().any(|c| c.len() != resolved.len()) {
        return Err(ArrowError::InvalidArgumentError(format!(
            "{} stored attribution columns for {} endpoints",
            stored.len(),
            resolved.len()
        )));
    }
    let stored = stored
        .iter()
        .map(|c| StoredText::new(c.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let mut changed = Vec::new();
    let mut candidates = String::new();
    for (i, r) in resolved.iter().enumerate() {
        prefetch_owner(history, resolved, i);
        let now = endpoint_values(history, r, &mut candidates);
        if now.iter().zip(&stored).any(|(now, was)| *now != was.get(i)) {
            changed.push(i as u32);
        }
    }
    Ok(changed)
}

/// Hints the CPU to load `p`'s cache line.
#[inline(always)]
fn prefetch<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint; it never faults, even on an invalid address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// `src_*` then `dst_*` attribution columns for a batch.
pub fn attribution_columns(history: &IpHistory, attribution: &BatchAttribution) -> Vec<ArrayRef> {
    let mut cols = endpoint_columns(history, &attribution.src);
    cols.extend(endpoint_columns(history, &attribution.dst));
    cols
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::OPEN;
    use crate::owners::OwnerSpec;
    use arrow::array::{Array, AsArray};
    use hawking_schemas::flow::{FlowOrigin, FlowRecord, SourceKind};
    use hawking_schemas::ip::v4_to_u128;

    fn two_clusters_with_the_same_pod_range() -> (IpHistory, ClusterSelector, OwnerId, OwnerId) {
        let mut h = IpHistory::default();
        let (eu, us) = (h.cluster("eu"), h.cluster("us"));
        for c in [eu, us] {
            h.add_range(c, "10.4.0.0/16".parse().unwrap());
        }
        let spec = |name, uid| OwnerSpec {
            namespace: Some("shop"),
            name,
            uid,
            workload_kind: Some("Deployment"),
            workload: Some("web"),
            node: Some("node-1"),
            ports: None,
        };
        let a = h.owners.upsert(eu, OwnerKind::Pod, &spec("web-eu", "u-eu"));
        let b = h.owners.upsert(us, OwnerKind::Pod, &spec("web-us", "u-us"));
        let ip = v4_to_u128(0x0a04_010a);
        h.insert(eu, ip, a, 0, OPEN);
        h.insert(us, ip, b, 0, OPEN);
        let mut sel = ClusterSelector::default();
        sel.add_rule("192.168.1.0/24".parse().unwrap(), None, eu);
        sel.add_rule("192.168.2.0/24".parse().unwrap(), None, us);
        (h, sel, a, b)
    }

    #[test]
    fn the_exporter_decides_between_clusters_with_overlapping_ranges() {
        let (h, sel, a, b) = two_clusters_with_the_same_pod_range();
        let mut clusters = vec![];
        sel.clusters_for(v4_to_u128(0xc0a8_0105), 0, &mut clusters);
        let r = resolve_endpoint(&h, &clusters, v4_to_u128(0x0a04_010a), 10, 20, 80, 6);
        assert_eq!((r.attribution, r.owner), (Attribution::Pod, Some(a)));
        sel.clusters_for(v4_to_u128(0xc0a8_0205), 0, &mut clusters);
        assert_eq!(
            resolve_endpoint(&h, &clusters, v4_to_u128(0x0a04_010a), 10, 20, 80, 6).owner,
            Some(b)
        );
        // An exporter no rule names: both clusters claim the address, so it is ambiguous.
        sel.clusters_for(v4_to_u128(0x0101_0101), 0, &mut clusters);
        let r = resolve_endpoint(&h, &clusters, v4_to_u128(0x0a04_010a), 10, 20, 80, 6);
        assert_eq!((r.attribution, r.n_candidates), (Attribution::Ambiguous, 2));
        let r = resolve_endpoint(&h, &clusters, v4_to_u128(0x0808_0808), 10, 20, 80, 6);
        assert_eq!(r.attribution, Attribution::External);
    }

    #[test]
    fn batch_columns_name_the_workload_and_candidates() {
        let (h, sel, _, _) = two_clusters_with_the_same_pod_range();
        let mut batch = FlowBatch::default();
        for exporter in [0xc0a8_0105u32, 0x0101_0101] {
            let origin = FlowOrigin {
                received_at: 0,
                exporter: v4_to_u128(exporter),
                observation_domain: 0,
                source_kind: SourceKind::Ipfix,
            };
            batch.push(
                &origin,
                &FlowRecord {
                    flow_start: 10,
                    flow_end: 20,
                    src_ip: v4_to_u128(0x0a04_010a),
                    dst_ip: v4_to_u128(0x0808_0808),
                    protocol: 6,
                    ..Default::default()
                },
            );
        }
        let attribution = attribute_batch(&h, &NatIndex::default(), &sel, &batch);
        let cols = attribution_columns(&h, &attribution);
        let rb = batch.to_record_batch(Some(cols)).unwrap();
        let s = |name: &str, row: usize| {
            let c = rb.column_by_name(name).unwrap().as_string::<i32>();
            (!c.is_null(row)).then(|| c.value(row).to_string())
        };
        assert_eq!(s("src_cluster", 0).as_deref(), Some("eu"));
        assert_eq!(s("src_pod", 0).as_deref(), Some("web-eu"));
        assert_eq!(s("src_workload", 0).as_deref(), Some("web"));
        assert_eq!(s("src_workload_kind", 0).as_deref(), Some("Deployment"));
        assert_eq!(s("src_node", 0).as_deref(), Some("node-1"));
        assert_eq!(s("src_attribution", 0).as_deref(), Some("pod"));
        assert_eq!(s("dst_attribution", 0).as_deref(), Some("external"));
        assert_eq!(s("dst_cluster", 0), None);
        assert_eq!(s("src_attribution", 1).as_deref(), Some("ambiguous"));
        assert_eq!(
            s("src_candidates", 1).as_deref(),
            Some("shop/web-eu, shop/web-us")
        );
        assert_eq!(s("src_pod", 1), None, "an ambiguous endpoint names no pod");
    }

    #[test]
    fn stored_answers_are_compared_with_todays_in_every_text_encoding() {
        use arrow::array::{DictionaryArray, StringArray};
        use arrow::compute::cast;
        use arrow::datatypes::DataType;
        let (h, sel, _, _) = two_clusters_with_the_same_pod_range();
        let mut batch = FlowBatch::default();
        // A pod (one owner), an ambiguous address (candidates), an external address.
        for (exporter, src) in [
            (0xc0a8_0105u32, 0x0a04_010au32),
            (0x0101_0101, 0x0a04_010a),
            (0xc0a8_0105, 0x0808_0808),
        ] {
            let origin = FlowOrigin {
                received_at: 0,
                exporter: v4_to_u128(exporter),
                observation_domain: 0,
                source_kind: SourceKind::Ipfix,
            };
            let record = FlowRecord {
                flow_start: 10,
                flow_end: 20,
                src_ip: v4_to_u128(src),
                dst_ip: v4_to_u128(0x0808_0808),
                protocol: 6,
                ..Default::default()
            };
            batch.push(&origin, &record);
        }
        let attribution = attribute_batch(&h, &NatIndex::default(), &sel, &batch);
        let built = endpoint_columns(&h, &attribution.src);
        let as_type = |columns: &[ArrayRef], t: &DataType| -> Vec<ArrayRef> {
            columns.iter().map(|c| cast(c, t).unwrap()).collect()
        };
        let dictionary = DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8));
        for stored in [
            built.clone(),
            as_type(&built, &DataType::Utf8View),
            as_type(&built, &dictionary),
        ] {
            assert_eq!(
                changed_endpoints(&h, &attribution.src, &stored).unwrap(),
                Vec::<u32>::new(),
                "{} columns as built say what is resolved now",
                stored[0].data_type()
            );
        }
        // What the store held: row 0 another pod, row 1 no candidates (a null where today
        // names some), row 2 as today.
        let mut stored = built.clone();
        stored[2] = Arc::new(StringArray::from(vec![Some("web-old"), None, None]));
        stored[8] = Arc::new(StringArray::from(vec![None::<&str>, None, None]));
        assert_eq!(
            changed_endpoints(&h, &attribution.src, &stored).unwrap(),
            [0, 1]
        );
        let keys: DictionaryArray<Int32Type> =
            vec![Some("web-old"), None, None].into_iter().collect();
        stored[2] = Arc::new(keys);
        assert_eq!(
            changed_endpoints(&h, &attribution.src, &stored).unwrap(),
            [0, 1]
        );
        // Columns that do not line up with the endpoints are an error, not a guess.
        assert!(changed_endpoints(&h, &attribution.src[..2], &stored).is_err());
        assert!(changed_endpoints(&h, &attribution.src, &stored[..8]).is_err());
    }

    /// A node (192.168.5.10) masquerading pod 10.4.1.10's connection to 93.184.216.34:443.
    fn masquerading_node() -> (IpHistory, NatIndex, ClusterSelector, OwnerId, OwnerId) {
        use hawking_schemas::nat::{NatEvent, NatEventKind};
        let (mut h, sel, pod, _) = two_clusters_with_the_same_pod_range();
        let eu = h.find_cluster("eu").unwrap();
        let node = h.owners.upsert(
            eu,
            OwnerKind::Node,
            &OwnerSpec {
                namespace: None,
                name: "node-1",
                uid: "n1",
                workload_kind: None,
                workload: None,
                node: None,
                ports: None,
            },
        );
        h.insert(eu, v4_to_u128(0xc0a8_050a), node, 0, OPEN);
        let mut nat = NatIndex::new(1_000_000);
        let session = |kind, at| NatEvent {
            at,
            kind: Some(kind),
            exporter: v4_to_u128(0xc0a8_050a),
            observation_domain: 0,
            protocol: 6,
            inside_ip: v4_to_u128(0x0a04_010a),
            inside_port: 40000,
            outside_ip: v4_to_u128(0xc0a8_050a),
            outside_port: 61000,
            remote_ip: v4_to_u128(0x5db8_d822),
            remote_port: 443,
        };
        nat.apply(&session(NatEventKind::Create, 100_000_000), eu);
        nat.apply(&session(NatEventKind::Delete, 200_000_000), eu);
        (h, nat, sel, pod, node)
    }

    #[test]
    fn flows_seen_outside_a_masquerading_node_are_attributed_to_the_pod_behind_it() {
        let (h, nat, sel, pod, node) = masquerading_node();
        let mut clusters = vec![];
        // A firewall no cluster names: both clusters are consulted for the flow's endpoints,
        // but the translation says which cluster's history names its inside address.
        sel.clusters_for(v4_to_u128(0x0101_0101), 0, &mut clusters);
        let (node_ip, remote) = (v4_to_u128(0xc0a8_050a), v4_to_u128(0x5db8_d822));
        let t = 150_000_000;
        let out = resolve_through_nat(&h, &nat, &clusters, node_ip, 61000, remote, 443, t, t, 6);
        assert_eq!((out.attribution, out.owner), (Attribution::Snat, Some(pod)));
        // The reply direction: the node's address is the destination.
        let back = resolve_through_nat(
            &h,
            &nat,
            &clusters,
            node_ip,
            61000,
            remote,
            443,
            t,
            t + 5,
            6,
        );
        assert_eq!(back.owner, Some(pod));
        // The node's own traffic (another port) and traffic after the session: the node.
        for (port, at) in [(22, t), (61000, 400_000_000)] {
            let r = resolve_through_nat(&h, &nat, &clusters, node_ip, port, remote, 443, at, at, 6);
            assert_eq!(
                (r.attribution, r.owner),
                (Attribution::Node, Some(node)),
                "port {port}"
            );
        }
    }

    #[test]
    fn batches_attribute_both_directions_through_the_translation() {
        let (h, nat, sel, _, _) = masquerading_node();
        let mut batch = FlowBatch::default();
        let origin = FlowOrigin {
            received_at: 0,
            exporter: v4_to_u128(0xc0a8_0105),
            observation_domain: 0,
            source_kind: SourceKind::Ipfix,
        };
        let flow = |src, sport, dst, dport| FlowRecord {
            flow_start: 150_000_000,
            flow_end: 151_000_000,
            src_ip: v4_to_u128(src),
            dst_ip: v4_to_u128(dst),
            src_port: sport,
            dst_port: dport,
            protocol: 6,
            ..Default::default()
        };
        batch.push(&origin, &flow(0xc0a8_050a, 61000, 0x5db8_d822, 443));
        batch.push(&origin, &flow(0x5db8_d822, 443, 0xc0a8_050a, 61000));
        let a = attribute_batch(&h, &nat, &sel, &batch);
        let rb = batch
            .to_record_batch(Some(attribution_columns(&h, &a)))
            .unwrap();
        let s = |name: &str, row: usize| {
            let c = rb.column_by_name(name).unwrap().as_string::<i32>();
            (!c.is_null(row)).then(|| c.value(row).to_string())
        };
        for (side, row) in [("src", 0), ("dst", 1)] {
            assert_eq!(
                s(&format!("{side}_attribution"), row).as_deref(),
                Some("snat")
            );
            assert_eq!(s(&format!("{side}_pod"), row).as_deref(), Some("web-eu"));
            assert_eq!(s(&format!("{side}_workload"), row).as_deref(), Some("web"));
            assert_eq!(s(&format!("{side}_node"), row).as_deref(), Some("node-1"));
        }
    }
}
