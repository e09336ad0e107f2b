//! The objects that hold addresses, stored compactly: names many owners share (namespaces,
//! workloads, nodes) are interned once, names unique to one owner live in an append-only
//! arena, and UUID uids are kept as 16 bytes, so an owner costs about 50 bytes plus its name.

use hawking_schemas::OwnerKind;
use rustc_hash::FxHashMap;

/// Index of an owner in an [`OwnerTable`].
pub type OwnerId = u32;

/// An interned string; `NONE` for an absent value.
pub type StrId = u32;
const NONE: StrId = u32::MAX;

/// What is known of an owner.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub kind: OwnerKind,
    pub cluster: u16,
    pub namespace: StrId,
    pub workload_kind: StrId,
    pub workload: StrId,
    pub node: StrId,
    /// Host-network pods: declared ports as "tcp/10249 udp/53".
    pub ports: StrId,
    name: (u32, u32),
    uid: Uid,
}

/// A Kubernetes uid: a UUID kept as its 16 bytes, or any other text kept interned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Uid {
    Uuid([u8; 16]),
    Text(StrId),
}

/// The strings of an owner, for building one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OwnerSpec<'a> {
    pub namespace: Option<&'a str>,
    pub name: &'a str,
    pub uid: &'a str,
    pub workload_kind: Option<&'a str>,
    pub workload: Option<&'a str>,
    pub node: Option<&'a str>,
    pub ports: Option<&'a str>,
}

/// Owners, their strings, and an index by (cluster, uid, kind) so an object seen again
/// (after a restart or a relist) maps to the same owner.
#[derive(Debug, Default)]
pub struct OwnerTable {
    owners: Vec<Owner>,
    /// Each owner's kind again, one byte apiece: lookups test it on every endpoint, and this
    /// stays in cache where `owners` would not.
    kinds: Vec<OwnerKind>,
    names: String,
    interned: String,
    spans: Vec<(u32, u32)>,
    index: FxHashMap<Box<str>, StrId>,
    by_uid: FxHashMap<(u16, Uid, OwnerKind), OwnerId>,
}

fn parse_uuid(s: &str) -> Option<[u8; 16]> {
    let b = s.as_bytes();
    if b.len() != 36 || b[8] != b'-' || b[13] != b'-' || b[18] != b'-' || b[23] != b'-' {
        return None;
    }
    let mut out = [0u8; 16];
    let mut n = 0;
    let mut hi = None;
    for c in b.iter().copied().filter(|c| *c != b'-') {
        let v = (c as char).to_digit(16)? as u8;
        match hi.take() {
            None => hi = Some(v),
            Some(h) => {
                out[n] = h << 4 | v;
                n += 1;
            }
        }
    }
    // Only the canonical lower-case form round-trips to the same text.
    (s.bytes().all(|c| !c.is_ascii_uppercase())).then_some(out)
}

fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl OwnerTable {
    pub fn len(&self) -> usize {
        self.owners.len()
    }

    pub fn is_empty(&self) -> bool {
        self.owners.is_empty()
    }

    /// Heap bytes held by the table (for the memory benchmark and metrics).
    pub fn heap_bytes(&self) -> usize {
        self.owners.capacity() * std::mem::size_of::<Owner>()
            + self.kinds.capacity()
            + self.names.capacity()
            + self.interned.capacity()
            + self.spans.capacity() * 8
            + self.index.capacity() * (std::mem::size_of::<(Box<str>, StrId)>() + 1)
            + self.index.keys().map(|k| k.len()).sum::<usize>()
            + self.by_uid.capacity() * (std::mem::size_of::<((u16, Uid, OwnerKind), OwnerId)>() + 1)
    }

    /// Interns a string many owners share.
    pub fn intern(&mut self, s: Option<&str>) -> StrId {
        let Some(s) = s else { return NONE };
        if let Some(id) = self.index.get(s) {
            return *id;
        }
        let id = self.spans.len() as StrId;
        self.spans
            .push((self.interned.len() as u32, s.len() as u32));
        self.interned.push_str(s);
        self.index.insert(s.into(), id);
        id
    }

    /// The text of an interned string; `None` for an absent value.
    pub fn text(&self, id: StrId) -> Option<&str> {
        let (start, len) = *self.spans.get(id as usize)?;
        Some(&self.interned[start as usize..(start + len) as usize])
    }

    fn uid_of(&mut self, uid: &str) -> Uid {
        match parse_uuid(uid) {
            Some(u) => Uid::Uuid(u),
            None => Uid::Text(self.intern(Some(uid))),
        }
    }

    /// The owner with this cluster, uid and kind, created from `spec` if new. An existing
    /// owner gains a workload it lacked (owner resolution can finish after first sight).
    pub fn upsert(&mut self, cluster: u16, kind: OwnerKind, spec: &OwnerSpec<'_>) -> OwnerId {
        let uid = self.uid_of(spec.uid);
        if let Some(id) = self.by_uid.get(&(cluster, uid, kind)).copied() {
            if self.owners[id as usize].workload == NONE && spec.workload.is_some() {
                let workload_kind = self.intern(spec.workload_kind);
                let workload = self.intern(spec.workload);
                let o = &mut self.owners[id as usize];
                o.workload_kind = workload_kind;
                o.workload = workload;
            }
            return id;
        }
        let start = self.names.len() as u32;
        self.names.push_str(spec.name);
        let owner = Owner {
            kind,
            cluster,
            namespace: self.intern(spec.namespace),
            workload_kind: self.intern(spec.workload_kind),
            workload: self.intern(spec.workload),
            node: self.intern(spec.node),
            ports: self.intern(spec.ports.filter(|p| !p.is_empty())),
            name: (start, spec.name.len() as u32),
            uid,
        };
        let id = self.owners.len() as OwnerId;
        self.owners.push(owner);
        self.kinds.push(kind);
        self.by_uid.insert((cluster, uid, kind), id);
        id
    }

    /// The existing owner with this cluster, uid and kind.
    pub fn find(&self, cluster: u16, kind: OwnerKind, uid: &str) -> Option<OwnerId> {
        let uid = match parse_uuid(uid) {
            Some(u) => Uid::Uuid(u),
            None => Uid::Text(*self.index.get(uid)?),
        };
        self.by_uid.get(&(cluster, uid, kind)).copied()
    }

    /// The kind of an owner (cheaper than `get(id).kind`).
    #[inline]
    pub fn kind(&self, id: OwnerId) -> OwnerKind {
        self.kinds[id as usize]
    }

    pub fn get(&self, id: OwnerId) -> &Owner {
        &self.owners[id as usize]
    }

    pub fn name(&self, id: OwnerId) -> &str {
        let (start, len) = self.get(id).name;
        &self.names[start as usize..(start + len) as usize]
    }

    pub fn uid(&self, id: OwnerId) -> String {
        match self.get(id).uid {
            Uid::Uuid(u) => format_uuid(&u),
            Uid::Text(t) => self.text(t).unwrap_or_default().to_string(),
        }
    }

    /// Whether a host-network pod declared `proto/port`.
    pub fn declares_port(&self, id: OwnerId, protocol: u8, port: u16) -> bool {
        let Some(proto) = hawking_schemas::protocol::port_protocol_name(protocol) else {
            return false;
        };
        let Some(ports) = self.text(self.get(id).ports) else {
            return false;
        };
        ports.split(' ').any(|p| {
            p.split_once('/')
                .is_some_and(|(pr, n)| pr == proto && n.parse() == Ok(port))
        })
    }

    /// "namespace/name", or "node/name", for candidate lists.
    pub fn display(&self, id: OwnerId) -> String {
        let o = self.get(id);
        let name = self.name(id);
        match (o.kind, self.text(o.namespace)) {
            (OwnerKind::Node, _) => format!("node/{name}"),
            (_, Some(ns)) => format!("{ns}/{name}"),
            (_, None) => name.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod<'a>(name: &'a str, uid: &'a str) -> OwnerSpec<'a> {
        OwnerSpec {
            namespace: Some("shop"),
            name,
            uid,
            workload_kind: Some("Deployment"),
            workload: Some("web"),
            node: Some("node-1"),
            ports: None,
        }
    }

    #[test]
    fn the_same_object_maps_to_the_same_owner_and_shared_names_are_stored_once() {
        let mut t = OwnerTable::default();
        let u1 = "5f0c2b1e-8a3d-4c1e-9b7a-0d2e4f6a8b1c";
        let a = t.upsert(0, OwnerKind::Pod, &pod("web-1", u1));
        let b = t.upsert(0, OwnerKind::Pod, &pod("web-2", "not-a-uuid"));
        assert_ne!(a, b);
        assert_eq!(t.upsert(0, OwnerKind::Pod, &pod("web-1", u1)), a);
        assert_eq!(t.find(0, OwnerKind::Pod, u1), Some(a));
        assert_ne!(
            t.upsert(1, OwnerKind::Pod, &pod("web-1", u1)),
            a,
            "another cluster, another owner"
        );
        assert_eq!(t.get(a).namespace, t.get(b).namespace);
        assert_eq!(t.name(b), "web-2");
        assert_eq!(t.uid(a), u1);
        assert_eq!(t.uid(b), "not-a-uuid");
        assert_eq!(t.display(a), "shop/web-1");
        assert!(
            std::mem::size_of::<Owner>() <= 56,
            "{}",
            std::mem::size_of::<Owner>()
        );
    }

    #[test]
    fn a_workload_resolved_later_is_kept() {
        let mut t = OwnerTable::default();
        let bare = OwnerSpec {
            workload_kind: None,
            workload: None,
            ..pod("web-1", "u1")
        };
        let id = t.upsert(0, OwnerKind::Pod, &bare);
        t.upsert(0, OwnerKind::Pod, &pod("web-1", "u1"));
        assert_eq!(t.text(t.get(id).workload), Some("web"));
    }

    #[test]
    fn host_network_ports_are_evidence() {
        let mut t = OwnerTable::default();
        let spec = OwnerSpec {
            ports: Some("tcp/10249 udp/53"),
            ..pod("kube-proxy-x", "u9")
        };
        let id = t.upsert(0, OwnerKind::HostNetworkPod, &spec);
        assert!(t.declares_port(id, 6, 10249));
        assert!(t.declares_port(id, 17, 53));
        assert!(!t.declares_port(id, 6, 53));
        assert!(!t.declares_port(id, 1, 0));
    }
}
