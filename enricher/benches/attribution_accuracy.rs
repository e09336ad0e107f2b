//! Attribution accuracy on a churning cluster (issue 3): Hawking's point-in-time history
//! beside a "current state only" enricher (how informer-cache enrichers work: an IP → pod
//! map kept from watch events, consulted when the flow record arrives).
//!
//! `cargo bench -p hawking-enricher --bench attribution_accuracy [-- --pods N --max-lag-ms N --grace-ms N --seed N]`
//!
//! The simulated cluster: 4 nodes, each with a /26 pod range (256 addresses in all) and
//! thousands of pods over two hours, so an address passes to another pod within minutes.
//! Three in four pods belong to Deployments (deleted after a few minutes, 30 s grace, SIGTERM
//! handled in up to 8 s); one in four to Jobs (run to completion, then the Succeeded pod
//! object lingers 1–20 minutes still showing its podIP while the address goes to other pods).
//! The kubelet's IPAM hands a free address of the node's range at random. Every object change
//! is a watch event whose delivery lags by up to `--max-lag-ms` (in order, as one watch
//! stream); timestamps in objects have Kubernetes' one-second resolution. Once, the watch is
//! down for 90 s and recovers by relisting.
//!
//! Flows come from running pods (a third at random in the pod's life, a third in its first
//! 20 s, a third in its last 20 s: where recycling bites), last up to 30 s, and arrive at the
//! collector 1–20 s after they end (exporter timeouts). The baseline looks each one up when
//! it arrives; Hawking holds it for `--grace-ms` and looks it up at the flow's own time.
//! Ground truth is the pod that held the address while the flow ran.

mod support;

use hawking_enricher::attribute::resolve_endpoint;
use hawking_enricher::objects::{pod_observation, workload_by_convention};
use hawking_enricher::{Event, HistoryKeeper, Mode, Observation, Resource};
use hawking_schemas::Attribution;
use hawking_schemas::ip::v4_to_u128;
use k8s_openapi::api::core::v1::Pod;
use rustc_hash::FxHashMap;
use serde_json::{Value, json};
use support::{Rng, arg, smoke_test};

const SECOND: i64 = 1_000_000;
/// 2026-11-20T00:00:00Z
const T0: i64 = 1_795_651_200 * SECOND;
const SPAN: i64 = 2 * 3600 * SECOND;
const NODES: usize = 4;
const PER_NODE: usize = 64;
const CLUSTER: &str = "sim";

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Deployment,
    Job,
}

/// One pod's true life. Times in µs.
struct SimPod {
    kind: Kind,
    uid: String,
    name: String,
    namespace: String,
    owner: String,
    hash: String,
    node: usize,
    created: i64,
    /// Scheduled and acknowledged by the kubelet: `status.startTime`.
    started: i64,
    /// The CNI assigned the address.
    addr_at: i64,
    addr: u128,
    /// The kubelet reported the address in status.
    addr_reported: i64,
    /// The container started; traffic may flow from here.
    running: i64,
    /// The container stopped; no traffic after this.
    terminated: i64,
    /// The sandbox is gone and the address free for the next pod.
    released: i64,
    /// Deletion requested (Deployment: scale-down/rollout; Job: TTL after finishing).
    delete_requested: i64,
    grace_secs: i64,
    /// The object is gone from the API.
    deleted: i64,
}

fn rfc3339(us: i64) -> String {
    // Kubernetes writes whole seconds.
    k8s_openapi::jiff::Timestamp::from_second(us.div_euclid(SECOND))
        .expect("time in range")
        .to_string()
}

fn ip_string(a: u128) -> String {
    std::net::Ipv4Addr::from(a as u32).to_string()
}

/// The pod object as the API server shows it at time `t`.
fn pod_at(p: &SimPod, t: i64) -> Value {
    let owner = match p.kind {
        Kind::Deployment => json!({"apiVersion": "apps/v1", "kind": "ReplicaSet",
            "name": format!("{}-{}", p.owner, p.hash), "uid": format!("rs-{}", p.owner), "controller": true}),
        Kind::Job => json!({"apiVersion": "batch/v1", "kind": "Job",
            "name": p.owner, "uid": format!("job-{}", p.owner), "controller": true}),
    };
    let mut meta = json!({
        "name": p.name, "namespace": p.namespace, "uid": p.uid,
        "creationTimestamp": rfc3339(p.created),
        "labels": {"app": p.owner, "pod-template-hash": p.hash},
        "ownerReferences": [owner],
    });
    if t >= p.delete_requested {
        meta["deletionTimestamp"] = json!(rfc3339(p.delete_requested + p.grace_secs * SECOND));
        meta["deletionGracePeriodSeconds"] = json!(p.grace_secs);
    }
    let mut spec = json!({"containers": [{"name": "app", "image": "registry.local/app:1"}]});
    let mut status = json!({"phase": "Pending"});
    if t >= p.started {
        spec["nodeName"] = json!(format!("node-{}", p.node));
        status["startTime"] = json!(rfc3339(p.started));
    }
    if t >= p.addr_reported {
        status["podIP"] = json!(ip_string(p.addr));
        status["podIPs"] = json!([{"ip": ip_string(p.addr)}]);
    }
    let finished = t >= p.terminated + SECOND / 2;
    if finished {
        status["containerStatuses"] = json!([{"name": "app", "ready": false, "restartCount": 0,
            "image": "registry.local/app:1", "imageID": "", "state": {"terminated": {
                "exitCode": if p.kind == Kind::Job { 0 } else { 143 },
                "startedAt": rfc3339(p.running), "finishedAt": rfc3339(p.terminated)}}}]);
        status["phase"] = json!(if p.kind == Kind::Job {
            "Succeeded"
        } else {
            "Running"
        });
    } else if t >= p.running + SECOND / 2 {
        status["containerStatuses"] = json!([{"name": "app", "ready": true, "restartCount": 0,
            "image": "registry.local/app:1", "imageID": "",
            "state": {"running": {"startedAt": rfc3339(p.running)}}}]);
        status["phase"] = json!("Running");
    }
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec, "status": status})
}

fn simulate_pods(n: usize, rng: &mut Rng) -> Vec<SimPod> {
    let namespaces = ["shop", "payments", "search", "batch", "platform", "ml"];
    let mut pods: Vec<SimPod> = (0..n)
        .map(|i| {
            let kind = if rng.next().is_multiple_of(4) {
                Kind::Job
            } else {
                Kind::Deployment
            };
            let w = rng.next() % 60;
            let namespace = namespaces[w as usize % namespaces.len()].to_string();
            let (owner, hash) = match kind {
                Kind::Deployment => (format!("svc-{w:02}"), format!("{:08x}", w * 7919 + 13)),
                Kind::Job => (format!("report-{w:02}-{:05}", i), String::new()),
            };
            let created = T0 + rng.between(0, SPAN);
            let started = created + rng.between(SECOND / 10, SECOND);
            let r = rng.next();
            SimPod {
                kind,
                uid: format!(
                    "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
                    r as u32,
                    (r >> 32) as u16,
                    i & 0xfff,
                    (r >> 48) & 0xfff,
                    i
                ),
                name: format!("{owner}-{:05x}", r & 0xfffff),
                namespace,
                owner,
                hash,
                node: (rng.next() % NODES as u64) as usize,
                created,
                started,
                addr_at: started + rng.between(SECOND / 2, 3 * SECOND),
                addr: 0,
                addr_reported: 0,
                running: 0,
                terminated: 0,
                released: 0,
                delete_requested: 0,
                grace_secs: 30,
                deleted: 0,
            }
        })
        .collect();
    // The IPAM: addresses go in the order pods ask for them, a random free one of the node's
    // range; a pod waits for a release when the range is full.
    pods.sort_by_key(|p| p.addr_at);
    let mut free_at = vec![[i64::MIN; PER_NODE]; NODES];
    for p in &mut pods {
        let ranges = &mut free_at[p.node];
        let free: Vec<usize> = (0..PER_NODE).filter(|a| ranges[*a] <= p.addr_at).collect();
        let slot = if free.is_empty() {
            let (slot, at) = ranges
                .iter()
                .enumerate()
                .min_by_key(|(_, t)| **t)
                .map(|(s, t)| (s, *t))
                .expect("range");
            p.addr_at = at + rng.between(SECOND / 5, SECOND);
            slot
        } else {
            free[(rng.next() % free.len() as u64) as usize]
        };
        p.addr = v4_to_u128(0x0af4_0000 | ((p.node as u32) << 6) | slot as u32);
        p.addr_reported = p.addr_at + rng.between(SECOND / 20, SECOND / 2);
        p.running = p.addr_at + rng.between(SECOND / 2, 5 * SECOND);
        match p.kind {
            Kind::Deployment => {
                p.delete_requested = p.running + (10 * SECOND).max(rng.exp(4 * 60 * SECOND));
                p.terminated = p.delete_requested + rng.between(SECOND / 5, 8 * SECOND);
                p.released = p.terminated + rng.between(SECOND / 5, 3 * SECOND / 2);
                p.deleted = p.released + rng.between(SECOND / 10, SECOND);
            }
            Kind::Job => {
                p.terminated = p.running + rng.between(10 * SECOND, 5 * 60 * SECOND);
                p.released = p.terminated + rng.between(SECOND / 5, 3 * SECOND / 2);
                p.delete_requested = p.terminated + rng.between(60 * SECOND, 20 * 60 * SECOND);
                p.grace_secs = 0;
                p.deleted = p.delete_requested + rng.between(SECOND / 10, SECOND);
            }
        }
        ranges[slot] = p.released;
    }
    pods
}

/// A watch event, in the order the API server wrote it.
struct WatchEvent {
    pod: usize,
    happened: i64,
    observed: i64,
    deleted: bool,
}

fn watch_events(pods: &[SimPod], max_lag: i64, rng: &mut Rng) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let mut times = vec![
            p.created,
            p.started,
            p.addr_reported,
            p.running + SECOND / 2,
            p.terminated + SECOND / 2,
        ];
        if p.delete_requested < p.deleted {
            times.push(p.delete_requested);
        }
        for t in times {
            events.push((t, i, false));
        }
        events.push((p.deleted, i, true));
    }
    events.sort_by_key(|e| (e.0, e.2));
    // One stream: delivered in order, each after a lag of up to `max_lag`.
    let mut last = i64::MIN;
    events
        .into_iter()
        .map(|(happened, pod, deleted)| {
            last = last.max(happened + rng.between(SECOND / 20, max_lag.max(SECOND / 20 + 1)));
            WatchEvent {
                pod,
                happened,
                observed: last,
                deleted,
            }
        })
        .collect()
}

struct Flow {
    pod: usize,
    start: i64,
    end: i64,
    arrives: i64,
}

fn simulate_flows(pods: &[SimPod], per_pod: usize, rng: &mut Rng) -> Vec<Flow> {
    let mut flows = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let (life_from, life_to) = (p.running, p.terminated);
        for k in 0..per_pod {
            let (lo, hi) = match k % 3 {
                0 => (life_from, life_to),
                1 => (life_from, (life_from + 20 * SECOND).min(life_to)),
                _ => ((life_to - 20 * SECOND).max(life_from), life_to),
            };
            let start = rng.between(lo, hi);
            let end = (start + rng.between(SECOND / 10, 30 * SECOND)).min(life_to);
            flows.push(Flow {
                pod: i,
                start,
                end,
                arrives: end + rng.between(SECOND, 20 * SECOND),
            });
        }
    }
    flows
}

#[derive(Default, Clone, Copy)]
struct Tally {
    correct: usize,
    ambiguous: usize,
    ambiguous_with_truth: usize,
    unknown: usize,
    wrong: usize,
}

impl Tally {
    fn total(&self) -> usize {
        self.correct + self.ambiguous + self.unknown + self.wrong
    }
}

/// When the simulated watch drops, and how long until it relists.
const OUTAGE_AT: i64 = T0 + 3600 * SECOND;
const OUTAGE_LEN: i64 = 90 * SECOND;

fn hawking(pods: &[SimPod], events: &[WatchEvent], flows: &[Flow], grace: i64) -> Tally {
    let mut keeper = HistoryKeeper::new(Mode::Live);
    keeper.set_lag_allowance(grace);
    let c = keeper.history_mut().cluster(CLUSTER);
    keeper
        .history_mut()
        .add_range(c, "10.244.0.0/24".parse().expect("range"));
    let observe = |p: &SimPod, t: i64| {
        let pod: Pod = serde_json::from_value(pod_at(p, t)).expect("pod json");
        pod_observation(&pod, workload_by_convention(&pod))
    };
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by_key(|i| flows[*i].arrives + grace);
    let mut next_event = 0;
    let mut outage = 0; // 0 before, 1 during, 2 after
    let mut tally = Tally::default();
    for i in order {
        let f = &flows[i];
        let now = f.arrives + grace;
        while next_event < events.len() && events[next_event].observed <= now {
            let e = &events[next_event];
            if outage == 0 && e.observed >= OUTAGE_AT {
                keeper.apply(Observation {
                    cluster: CLUSTER.into(),
                    at: OUTAGE_AT,
                    event: Event::Down {
                        resource: Resource::Pods,
                        reason: "watch stream ended".into(),
                    },
                });
                outage = 1;
            }
            if outage == 1 && e.observed >= OUTAGE_AT + OUTAGE_LEN {
                // The relist: every pod that exists now, as it is now.
                let at = OUTAGE_AT + OUTAGE_LEN;
                let objects = pods
                    .iter()
                    .filter(|p| p.created <= at && p.deleted > at)
                    .map(|p| observe(p, at))
                    .collect();
                keeper.apply(Observation {
                    cluster: CLUSTER.into(),
                    at,
                    event: Event::Relisted {
                        resource: Resource::Pods,
                        objects,
                    },
                });
                keeper.apply(Observation {
                    cluster: CLUSTER.into(),
                    at,
                    event: Event::Up {
                        resource: Resource::Pods,
                    },
                });
                outage = 2;
            }
            // Events the relist already accounted for are not delivered again.
            if outage == 0 || (outage == 2 && e.happened >= OUTAGE_AT + OUTAGE_LEN) {
                let p = &pods[e.pod];
                let o = observe(p, e.happened);
                keeper.apply(Observation {
                    cluster: CLUSTER.into(),
                    at: e.observed,
                    event: if e.deleted {
                        Event::Delete(o)
                    } else {
                        Event::Upsert(o)
                    },
                });
            }
            next_event += 1;
        }
        let h = keeper.history();
        let truth = &pods[f.pod];
        let r = resolve_endpoint(h, &[c], truth.addr, f.start, f.end, 0, 6);
        match r.attribution {
            Attribution::Ambiguous => {
                tally.ambiguous += 1;
                let named = r.candidates[..r.n_candidates as usize]
                    .iter()
                    .any(|o| h.owners.uid(*o) == truth.uid);
                tally.ambiguous_with_truth += named as usize;
                if std::env::var_os("ACCURACY_DEBUG_AMBIGUOUS").is_some() && tally.ambiguous < 6 {
                    let names: Vec<String> = r.candidates[..r.n_candidates as usize]
                        .iter()
                        .map(|o| {
                            let uid = h.owners.uid(*o);
                            let p = pods.iter().find(|p| p.uid == uid).expect("pod");
                            let ivs: Vec<(i64, i64)> = h.clusters()[c as usize]
                                .intervals(truth.addr)
                                .iter()
                                .filter(|iv| iv.owner == *o)
                                .map(|iv| (iv.from - T0, iv.to.saturating_sub(T0)))
                                .collect();
                            format!(
                                "{} [start {} addr {} run {} term {} rel {} del {}] intervals {ivs:?}",
                                p.name, p.started - T0, p.addr_at - T0, p.running - T0,
                                p.terminated - T0, p.released - T0, p.deleted - T0
                            )
                        })
                        .collect();
                    eprintln!(
                        "ambiguous: flow {}..{} (processed {}) truth {}: {names:#?}",
                        f.start - T0,
                        f.end - T0,
                        now - T0,
                        truth.name
                    );
                }
            }
            Attribution::Unknown => tally.unknown += 1,
            _ => match r.owner {
                Some(o) if h.owners.uid(o) == truth.uid => tally.correct += 1,
                got => {
                    tally.wrong += 1;
                    if std::env::var_os("ACCURACY_DEBUG").is_some() {
                        let other = got.and_then(|o| {
                            let uid = h.owners.uid(o);
                            pods.iter().find(|p| p.uid == uid)
                        });
                        eprintln!(
                            "wrong: flow {}..{} (processed {}) truth {} [addr {} run {} term {} rel {} del {}] got {:?}",
                            f.start - T0,
                            f.end - T0,
                            now - T0,
                            truth.name,
                            truth.addr_at - T0,
                            truth.running - T0,
                            truth.terminated - T0,
                            truth.released - T0,
                            truth.deleted - T0,
                            other.map(|p| (
                                p.name.clone(),
                                p.addr_at - T0,
                                p.running - T0,
                                p.terminated - T0,
                                p.released - T0,
                                p.deleted - T0
                            ))
                        );
                    }
                }
            },
        }
    }
    tally
}

fn current_state(pods: &[SimPod], events: &[WatchEvent], flows: &[Flow]) -> Tally {
    // The informer's index: the last pod seen with an address holds it, until that pod's
    // delete event removes the entry.
    let mut by_ip: FxHashMap<u128, usize> = FxHashMap::default();
    let mut order: Vec<usize> = (0..flows.len()).collect();
    order.sort_by_key(|i| flows[*i].arrives);
    let mut next_event = 0;
    let mut relisted = false;
    let mut tally = Tally::default();
    for i in order {
        let f = &flows[i];
        while next_event < events.len() && events[next_event].observed <= f.arrives {
            let e = &events[next_event];
            let in_outage =
                e.observed >= OUTAGE_AT && e.observed < OUTAGE_AT + OUTAGE_LEN && !relisted;
            if !relisted && e.observed >= OUTAGE_AT + OUTAGE_LEN {
                // Relist: the index is rebuilt from what exists now.
                let at = OUTAGE_AT + OUTAGE_LEN;
                by_ip.clear();
                for (k, p) in pods.iter().enumerate() {
                    if p.created <= at && p.deleted > at && p.addr_reported <= at {
                        by_ip.insert(p.addr, k);
                    }
                }
                relisted = true;
            }
            let stale = relisted && e.happened < OUTAGE_AT + OUTAGE_LEN;
            if !in_outage && !stale {
                let p = &pods[e.pod];
                if e.deleted {
                    if by_ip.get(&p.addr) == Some(&e.pod) {
                        by_ip.remove(&p.addr);
                    }
                } else if e.happened >= p.addr_reported {
                    by_ip.insert(p.addr, e.pod);
                }
            }
            next_event += 1;
        }
        match by_ip.get(&pods[f.pod].addr) {
            Some(k) if *k == f.pod => tally.correct += 1,
            Some(_) => tally.wrong += 1,
            None => tally.unknown += 1,
        }
    }
    tally
}

fn main() {
    let n_pods = arg("--pods", if smoke_test() { 1500 } else { 6000 }) as usize;
    let max_lag = arg("--max-lag-ms", 4000) * 1000;
    let grace = arg("--grace-ms", 5000) * 1000;
    let seed = arg("--seed", 1) as u64;
    let per_pod = arg("--flows-per-pod", 30) as usize;

    let mut rng = Rng(seed);
    let pods = simulate_pods(n_pods, &mut rng);
    let events = watch_events(&pods, max_lag, &mut rng);
    let flows = simulate_flows(&pods, per_pod, &mut rng);

    // How hard the simulated cluster is: how soon an address goes to the next pod.
    let mut by_addr: FxHashMap<u128, Vec<(i64, i64)>> = FxHashMap::default();
    for p in &pods {
        by_addr
            .entry(p.addr)
            .or_default()
            .push((p.addr_at, p.released));
    }
    let mut reuse_gaps: Vec<i64> = by_addr
        .values_mut()
        .flat_map(|v| {
            v.sort();
            v.windows(2).map(|w| w[1].0 - w[0].1).collect::<Vec<_>>()
        })
        .collect();
    reuse_gaps.sort();
    let median_reuse = reuse_gaps.get(reuse_gaps.len() / 2).copied().unwrap_or(0);
    let jobs = pods.iter().filter(|p| p.kind == Kind::Job).count();

    let h = hawking(&pods, &events, &flows, grace);
    let b = current_state(&pods, &events, &flows);
    assert_eq!(h.total(), flows.len());
    if grace >= max_lag {
        // The property the design promises: when flows wait out the watch's lag, no flow is
        // attributed to a pod that did not hold the address then.
        assert_eq!(h.wrong, 0, "Hawking attributed flows to the wrong pod");
    }
    assert_eq!(b.total(), flows.len());

    println!(
        "cluster: {} pods ({} Job pods) over 2 h on {} addresses; an address passes to the next pod \
         a median {:.1} s after release ({} hand-overs); watch lag up to {} ms, one 90 s watch outage; \
         {} flows, Hawking grace {} ms",
        pods.len(),
        jobs,
        NODES * PER_NODE,
        median_reuse as f64 / SECOND as f64,
        reuse_gaps.len(),
        max_lag / 1000,
        flows.len(),
        grace / 1000
    );
    println!();
    println!("| enricher | correct | ambiguous (truth named) | unknown | wrong |");
    println!("|---|---|---|---|---|");
    let pct = |n: usize| 100.0 * n as f64 / flows.len() as f64;
    for (name, t) in [
        ("Hawking (point-in-time history)", h),
        ("current state only (informer cache)", b),
    ] {
        println!(
            "| {name} | {} ({:.2}%) | {} ({:.2}%; {}) | {} ({:.2}%) | {} ({:.2}%) |",
            t.correct,
            pct(t.correct),
            t.ambiguous,
            pct(t.ambiguous),
            t.ambiguous_with_truth,
            t.unknown,
            pct(t.unknown),
            t.wrong,
            pct(t.wrong)
        );
    }
}
