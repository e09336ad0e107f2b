//! What Kubernetes objects say about addresses: a Pod, Node or Service becomes an
//! [`ObservedObject`] — the addresses it holds, since when by its own timestamps, and when it
//! released them if it says so. Used by the live watch and by recording imports alike.

use std::collections::BTreeMap;

use hawking_schemas::OwnerKind;
use hawking_schemas::cidr::Cidr;
use hawking_schemas::ip::parse_ip;
pub use hawking_schemas::observation::{ObservedObject, Resource};
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference, Time};

pub fn time_us(t: &Time) -> i64 {
    t.0.as_microsecond()
}

fn meta_times(meta: &ObjectMeta, out: &mut Vec<i64>) {
    out.extend(meta.creation_timestamp.as_ref().map(time_us));
    out.extend(meta.deletion_timestamp.as_ref().map(time_us));
}

/// The controller of a pod (the ownerReference with `controller: true`, or the only one).
pub fn controller(meta: &ObjectMeta) -> Option<&OwnerReference> {
    let refs = meta.owner_references.as_deref()?;
    refs.iter()
        .find(|r| r.controller == Some(true))
        .or(if refs.len() == 1 { refs.first() } else { None })
}

/// The workload a pod belongs to as far as the pod itself tells: its controller, with a
/// ReplicaSet named `<deployment>-<pod-template-hash>` read as that Deployment (how the
/// Deployment controller names them), and a Job named `<cronjob>-<minutes>` whose pod was
/// created shortly after that minute as that CronJob (how the CronJob controller names
/// them). A pod without a controller is its own workload.
pub fn workload_by_convention(pod: &Pod) -> (String, String) {
    let meta = &pod.metadata;
    let name = meta.name.clone().unwrap_or_default();
    let Some(owner) = controller(meta) else {
        return ("Pod".into(), name);
    };
    if owner.kind == "ReplicaSet" {
        let hash = meta
            .labels
            .as_ref()
            .and_then(|l| l.get("pod-template-hash"));
        if let Some(deployment) = hash.and_then(|h| owner.name.strip_suffix(&format!("-{h}"))) {
            return ("Deployment".into(), deployment.to_string());
        }
    }
    if owner.kind == "Job"
        && let Some(cronjob) = cronjob_of_job(&owner.name, meta.creation_timestamp.as_ref())
    {
        return ("CronJob".into(), cronjob.to_string());
    }
    (owner.kind.clone(), owner.name.clone())
}

/// The CronJob that made a Job, by the CronJob controller's naming: `<cronjob>-<scheduled
/// time in minutes since the epoch>`. Only believed when the pod was created within a day
/// after that scheduled time, so a Job merely named with a number is left alone.
fn cronjob_of_job<'a>(job: &'a str, pod_created: Option<&Time>) -> Option<&'a str> {
    let (prefix, digits) = job.rsplit_once('-')?;
    if prefix.is_empty() || digits.len() < 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let scheduled = digits.parse::<i64>().ok()? * 60_000_000;
    let created = time_us(pod_created?);
    (created >= scheduled && created - scheduled <= 86_400_000_000).then_some(prefix)
}

fn declared_ports(pod: &Pod) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mut ports: Vec<String> = spec
        .containers
        .iter()
        .flat_map(|c| c.ports.iter().flatten())
        .flat_map(|p| {
            let proto = p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase();
            [Some(p.container_port), p.host_port]
                .into_iter()
                .flatten()
                .map(move |n| format!("{proto}/{n}"))
        })
        .collect();
    ports.sort();
    ports.dedup();
    (!ports.is_empty()).then(|| ports.join(" "))
}

/// A pod's claim. `workload` is the resolved (kind, name) of the workload it belongs to.
pub fn pod_observation(pod: &Pod, workload: (String, String)) -> ObservedObject {
    let meta = &pod.metadata;
    let spec = pod.spec.as_ref();
    let status = pod.status.as_ref();
    let host_network = spec.and_then(|s| s.host_network).unwrap_or(false);
    let mut addrs: Vec<u128> = status
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().filter_map(|p| parse_ip(&p.ip)).collect())
        .unwrap_or_default();
    if addrs.is_empty() {
        addrs.extend(status.and_then(|s| s.pod_ip.as_deref()).and_then(parse_ip));
    }
    addrs.sort();
    addrs.dedup();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or("");
    let released = matches!(phase, "Succeeded" | "Failed");

    let mut times = Vec::new();
    meta_times(meta, &mut times);
    let mut finished = Vec::new();
    // Container starts and finishes: moments the sandbox (and its address) certainly existed.
    let mut alive: Vec<i64> = Vec::new();
    if let Some(s) = status {
        times.extend(s.start_time.as_ref().map(time_us));
        for c in s
            .container_statuses
            .iter()
            .flatten()
            .chain(s.init_container_statuses.iter().flatten())
        {
            let state = c.state.as_ref();
            if let Some(t) = state.and_then(|st| st.terminated.as_ref()) {
                alive.extend(t.started_at.as_ref().map(time_us));
                finished.extend(t.finished_at.as_ref().map(time_us));
            }
            if let Some(r) = state.and_then(|st| st.running.as_ref()) {
                alive.extend(r.started_at.as_ref().map(time_us));
            }
        }
        for c in s.conditions.iter().flatten() {
            times.extend(c.last_transition_time.as_ref().map(time_us));
        }
    }
    times.extend(alive.iter().copied());
    times.extend(finished.iter().copied());
    alive.extend(finished.iter().copied());
    if host_network {
        // Its address is the node's: holding it proves nothing about other pods.
        alive.clear();
    }
    // The API server sets deletionTimestamp to the request time plus the grace period: the
    // moment by which the kubelet kills the containers.
    let deletion_end = meta.deletion_timestamp.as_ref().map(time_us);
    let containers = status
        .and_then(|s| s.container_statuses.as_ref())
        .map_or(0, Vec::len);
    let all_finished = containers > 0 && finished.len() >= containers;
    let released_by = match (
        all_finished
            .then(|| finished.iter().max().copied())
            .flatten(),
        deletion_end,
    ) {
        (Some(f), Some(d)) => Some(f.max(d)),
        (f, d) => f.or(d),
    };
    let since = status
        .and_then(|s| s.start_time.as_ref())
        .map(time_us)
        .or_else(|| meta.creation_timestamp.as_ref().map(time_us));
    ObservedObject {
        resource: Resource::Pods,
        kind: if host_network {
            OwnerKind::HostNetworkPod
        } else {
            OwnerKind::Pod
        },
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        workload_kind: Some(workload.0),
        workload: Some(workload.1),
        node: spec.and_then(|s| s.node_name.clone()),
        ports: if host_network {
            declared_ports(pod)
        } else {
            None
        },
        addrs,
        ranges: Vec::new(),
        since,
        released,
        released_by,
        latest_timestamp: times.into_iter().max(),
        alive_from: alive.iter().min().copied(),
        alive_until: alive.iter().max().copied(),
    }
}

pub fn node_observation(node: &Node) -> ObservedObject {
    let meta = &node.metadata;
    let mut addrs: Vec<u128> = node
        .status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .map(|a| {
            a.iter()
                .filter(|a| a.type_ == "InternalIP" || a.type_ == "ExternalIP")
                .filter_map(|a| parse_ip(&a.address))
                .collect()
        })
        .unwrap_or_default();
    addrs.sort();
    addrs.dedup();
    let spec = node.spec.as_ref();
    let mut ranges: Vec<Cidr> = spec
        .and_then(|s| s.pod_cidrs.as_ref())
        .map(|c| c.iter().filter_map(|c| c.parse().ok()).collect())
        .unwrap_or_default();
    if let Some(c) = spec
        .and_then(|s| s.pod_cidr.as_deref())
        .and_then(|c| c.parse().ok())
        && !ranges.contains(&c)
    {
        ranges.push(c);
    }
    let mut times = Vec::new();
    meta_times(meta, &mut times);
    for c in node
        .status
        .iter()
        .flat_map(|s| s.conditions.iter().flatten())
    {
        times.extend(c.last_transition_time.as_ref().map(time_us));
        times.extend(c.last_heartbeat_time.as_ref().map(time_us));
    }
    let name = meta.name.clone().unwrap_or_default();
    ObservedObject {
        resource: Resource::Nodes,
        kind: OwnerKind::Node,
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: None,
        node: Some(name.clone()),
        name,
        workload_kind: None,
        workload: None,
        ports: None,
        addrs,
        ranges,
        since: meta.creation_timestamp.as_ref().map(time_us),
        released: false,
        released_by: meta.deletion_timestamp.as_ref().map(time_us),
        latest_timestamp: times.into_iter().max(),
        alive_from: None,
        alive_until: None,
    }
}

pub fn service_observation(service: &Service) -> ObservedObject {
    let meta = &service.metadata;
    let spec = service.spec.as_ref();
    let mut ips: Vec<&str> = spec
        .and_then(|s| s.cluster_ips.as_ref())
        .map(|v| v.iter().map(String::as_str).collect())
        .unwrap_or_default();
    ips.extend(spec.and_then(|s| s.cluster_ip.as_deref()));
    ips.extend(
        service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref())
            .into_iter()
            .flatten()
            .filter_map(|i| i.ip.as_deref()),
    );
    let mut addrs: Vec<u128> = ips.into_iter().filter_map(parse_ip).collect();
    addrs.sort();
    addrs.dedup();
    let mut times = Vec::new();
    meta_times(meta, &mut times);
    ObservedObject {
        resource: Resource::Services,
        kind: OwnerKind::Service,
        uid: meta.uid.clone().unwrap_or_default(),
        namespace: meta.namespace.clone(),
        name: meta.name.clone().unwrap_or_default(),
        workload_kind: None,
        workload: None,
        node: None,
        ports: None,
        addrs,
        ranges: Vec::new(),
        since: meta.creation_timestamp.as_ref().map(time_us),
        released: false,
        released_by: meta.deletion_timestamp.as_ref().map(time_us),
        latest_timestamp: times.into_iter().max(),
        alive_from: None,
        alive_until: None,
    }
}

/// Labels as a sorted map (for tests and owner resolution).
pub fn labels(meta: &ObjectMeta) -> BTreeMap<String, String> {
    meta.labels.clone().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(v: serde_json::Value) -> Pod {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_job_named_by_the_cronjob_controller_is_read_as_its_cronjob() {
        let job_pod = |job: &str, created: &str| {
            workload_by_convention(&pod(
                json!({"metadata": {"name": "p", "creationTimestamp": created,
                "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": job, "uid": "u", "controller": true}]}}),
            ))
        };
        // 29919420 minutes after the epoch is 2026-11-20T09:00:00Z.
        assert_eq!(
            job_pod("backup-29919420", "2026-11-20T09:00:02Z"),
            ("CronJob".into(), "backup".into())
        );
        // A number that is not the pod's scheduled minute, or no number: the Job itself.
        assert_eq!(
            job_pod("backup-29919420", "2026-11-23T09:00:02Z"),
            ("Job".into(), "backup-29919420".into())
        );
        assert_eq!(
            job_pod("migrate-v2", "2026-11-20T09:00:02Z"),
            ("Job".into(), "migrate-v2".into())
        );
    }

    fn us(s: &str) -> i64 {
        s.parse::<k8s_openapi::jiff::Timestamp>()
            .unwrap()
            .as_microsecond()
    }

    #[test]
    fn a_replicaset_named_after_its_template_hash_is_a_deployment() {
        let p = pod(
            json!({"metadata": {"name": "web-7d4b9-abcde", "labels": {"pod-template-hash": "7d4b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "web-7d4b9", "uid": "u", "controller": true}]}}),
        );
        assert_eq!(
            workload_by_convention(&p),
            ("Deployment".into(), "web".into())
        );
        let p = pod(
            json!({"metadata": {"name": "x-abc", "labels": {"pod-template-hash": "zzz"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": "x", "uid": "u", "controller": true}]}}),
        );
        assert_eq!(
            workload_by_convention(&p),
            ("ReplicaSet".into(), "x".into()),
            "no guess when the name does not fit"
        );
        let p = pod(json!({"metadata": {"name": "lonely"}}));
        assert_eq!(workload_by_convention(&p), ("Pod".into(), "lonely".into()));
    }

    #[test]
    fn a_completed_job_pod_has_released_its_address_at_container_termination() {
        let p = pod(json!({
            "metadata": {"name": "backup-1-x", "namespace": "ops", "uid": "u1", "creationTimestamp": "2026-11-20T09:00:00Z"},
            "spec": {"nodeName": "node-1", "containers": [{"name": "backup"}]},
            "status": {"phase": "Succeeded", "podIP": "10.4.1.20", "podIPs": [{"ip": "10.4.1.20"}],
                "startTime": "2026-11-20T09:00:01Z",
                "containerStatuses": [{"name": "backup", "image": "b", "imageID": "", "ready": false, "restartCount": 0,
                    "state": {"terminated": {"exitCode": 0, "reason": "Completed", "startedAt": "2026-11-20T09:00:05Z", "finishedAt": "2026-11-20T09:10:00Z"}}}]}
        }));
        let o = pod_observation(&p, ("Job".into(), "backup-1".into()));
        assert!(o.released);
        assert_eq!(o.since, Some(us("2026-11-20T09:00:01Z")));
        assert_eq!(o.released_by, Some(us("2026-11-20T09:10:00Z")));
        assert_eq!(o.addrs, vec![parse_ip("10.4.1.20").unwrap()]);
    }

    #[test]
    fn a_terminating_pod_holds_its_address_until_its_deletion_deadline() {
        // Deletion requested at 09:30:00 with 30 s grace: the API server writes 09:30:30.
        let p = pod(json!({
            "metadata": {"name": "web-1", "uid": "u2", "deletionTimestamp": "2026-11-20T09:30:30Z", "deletionGracePeriodSeconds": 30},
            "spec": {"containers": [{"name": "web"}]},
            "status": {"phase": "Running", "podIPs": [{"ip": "10.4.1.10"}, {"ip": "fd00:10:4:1::a"}], "startTime": "2026-11-20T09:00:00Z"}
        }));
        let o = pod_observation(&p, ("Deployment".into(), "web".into()));
        assert!(!o.released);
        assert_eq!(o.released_by, Some(us("2026-11-20T09:30:30Z")));
        assert_eq!(o.addrs.len(), 2, "dual-stack");
    }

    #[test]
    fn host_network_pods_carry_their_declared_ports() {
        let p = pod(json!({
            "metadata": {"name": "kube-proxy-x", "namespace": "kube-system", "uid": "u3"},
            "spec": {"hostNetwork": true, "nodeName": "node-1", "containers": [{"name": "kp", "ports": [{"containerPort": 10249, "hostPort": 10249}, {"containerPort": 53, "protocol": "UDP"}]}]},
            "status": {"phase": "Running", "podIP": "192.168.10.11", "startTime": "2026-11-20T08:00:00Z"}
        }));
        let o = pod_observation(&p, ("DaemonSet".into(), "kube-proxy".into()));
        assert_eq!(o.kind, OwnerKind::HostNetworkPod);
        assert_eq!(o.ports.as_deref(), Some("tcp/10249 udp/53"));
    }

    #[test]
    fn nodes_and_services_claim_their_addresses() {
        let n: Node = serde_json::from_value(json!({
            "metadata": {"name": "node-1", "uid": "n1", "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": {"podCIDR": "10.4.1.0/24", "podCIDRs": ["10.4.1.0/24", "fd00:10:4:1::/64"]},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.10.11"}, {"type": "Hostname", "address": "node-1"}]}
        }))
        .unwrap();
        let o = node_observation(&n);
        assert_eq!(o.addrs, vec![parse_ip("192.168.10.11").unwrap()]);
        assert_eq!(o.ranges.len(), 2);
        let s: Service = serde_json::from_value(json!({
            "metadata": {"name": "web", "namespace": "shop", "uid": "s1", "creationTimestamp": "2026-11-01T00:00:00Z"},
            "spec": {"clusterIP": "10.96.10.10", "clusterIPs": ["10.96.10.10"], "type": "LoadBalancer"},
            "status": {"loadBalancer": {"ingress": [{"ip": "203.0.113.10"}]}}
        }))
        .unwrap();
        assert_eq!(service_observation(&s).addrs.len(), 2);
        let headless: Service = serde_json::from_value(
            json!({"metadata": {"name": "h", "uid": "s2"}, "spec": {"clusterIP": "None"}}),
        )
        .unwrap();
        assert!(service_observation(&headless).addrs.is_empty());
    }
}
