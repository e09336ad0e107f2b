//! Identities an in-cluster exporter reported at capture time, checked against Hawking's
//! attribution of the same endpoint at the same time: when they name different owners,
//! either the history or the export is wrong, and the flow says so.

use hawking_schemas::Attribution;
use hawking_schemas::OwnerKind;
use hawking_schemas::flow_details::{FlowDetails, Text};

use crate::attribute::Resolved;
use crate::history::IpHistory;

/// For each flow, whether the exporter's identity of the endpoint contradicts the
/// attribution (`None` where there is nothing to compare: the exporter named no owner, or
/// the attribution is `unknown` or `ambiguous`). `source` picks the `src_reported_*` side.
pub fn conflicts(
    history: &IpHistory,
    resolved: &[Resolved],
    details: &FlowDetails,
    source: bool,
) -> Vec<Option<bool>> {
    let (kind, namespace, name) = if source {
        (
            Text::SrcReportedKind,
            Text::SrcReportedNamespace,
            Text::SrcReportedName,
        )
    } else {
        (
            Text::DstReportedKind,
            Text::DstReportedNamespace,
            Text::DstReportedName,
        )
    };
    resolved
        .iter()
        .enumerate()
        .map(|(i, r)| {
            let (namespace, name) = (details.get_text(namespace, i), details.get_text(name, i));
            match details.get_text(kind, i) {
                Some(kind) => conflict(history, r, kind, namespace, name),
                None => kindless_conflict(history, r, namespace, name?),
            }
        })
        .collect()
}

/// A name without a kind (NetObserv's IPFIX elements carry any object's name): it agrees
/// when the attributed owner has that name in that namespace (nodes have none). Both sides
/// name the object that held the address, so the kinds match whenever the names do.
fn kindless_conflict(
    history: &IpHistory,
    r: &Resolved,
    namespace: Option<&str>,
    name: &str,
) -> Option<bool> {
    let owners = &history.owners;
    let Some(o) = r.owner else {
        // The exporter names a cluster object where the history says none held the address.
        return (r.attribution == Attribution::External).then_some(true);
    };
    let owner = owners.get(o);
    Some(!(name == owners.name(o) && namespace == owners.text(owner.namespace)))
}

fn conflict(
    history: &IpHistory,
    r: &Resolved,
    kind: &str,
    namespace: Option<&str>,
    name: Option<&str>,
) -> Option<bool> {
    let owners = &history.owners;
    let Some(o) = r.owner else {
        // The history covers the time and says no cluster object held the address, while
        // the exporter names a pod of its own cluster.
        return (r.attribution == Attribution::External && kind == "pod").then_some(true);
    };
    let owner = owners.get(o);
    let same_name = |n: Option<&str>| n == Some(owners.name(o));
    Some(match kind {
        "pod" => {
            name?;
            !(matches!(owner.kind, OwnerKind::Pod | OwnerKind::HostNetworkPod)
                && same_name(name)
                && namespace == owners.text(owner.namespace))
        }
        // `host` is Cilium's name for the observing node itself.
        "node" | "host" => {
            name?;
            !(owner.kind == OwnerKind::Node && same_name(name))
        }
        "service" => {
            name?;
            !(owner.kind == OwnerKind::Service
                && same_name(name)
                && namespace == owners.text(owner.namespace))
        }
        // Cilium says the address is outside the cluster; the history says a pod had it.
        "world" => owner.kind == OwnerKind::Pod,
        // Other reserved identities (remote-node, health, kube-apiserver, …) are not owners
        // the history names.
        _ => return None,
    })
}
