//! Live history: list and watch Pods, Nodes and Services of a cluster with kube-rs, resolve
//! pods' owners to the workloads users think in, and report every change — and every stretch
//! the watch is down — as [`Observation`]s.
//!
//! The list/watch loop is driven here rather than by `kube::runtime::watcher` because the
//! gaps matter: the moment a watch fails and the moment it is back are what make flows in
//! between `unknown`, and the runtime watcher does not report either precisely.

use std::collections::{HashMap, VecDeque};
use std::sync::mpsc::Sender;
use std::time::Duration;

use futures::StreamExt;
use hawking_schemas::pipeline::SourceBatch;
use hawking_schemas::time::now_micros;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Node, Pod, Service};
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Resource as KubeResource};
use serde::de::DeserializeOwned;

use crate::config::ClusterConfig;
use crate::keeper::{Event, Observation};
use crate::objects::{
    ObservedObject, Resource, controller, node_observation, pod_observation, service_observation,
    workload_by_convention,
};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("cluster {cluster}: bad API server URL {url:?}: {source}")]
    Url {
        cluster: String,
        url: String,
        source: http::uri::InvalidUri,
    },
    #[error("cluster {cluster}: in-cluster configuration: {source}")]
    InCluster {
        cluster: String,
        source: kube::config::InClusterError,
    },
    #[error("cluster {cluster}: kubeconfig: {source}")]
    Kubeconfig {
        cluster: String,
        source: kube::config::KubeconfigError,
    },
    #[error("cluster {cluster}: API client: {source}")]
    Client {
        cluster: String,
        source: kube::Error,
    },
}

/// A kube-rs client for the configured cluster.
pub async fn client_for(c: &ClusterConfig) -> Result<Client, WatchError> {
    let cluster = || c.name.clone();
    let kubeconfig_err = |source| WatchError::Kubeconfig {
        cluster: cluster(),
        source,
    };
    let config = if let Some(url) = &c.api_url {
        let uri = url.parse().map_err(|source| WatchError::Url {
            cluster: cluster(),
            url: url.clone(),
            source,
        })?;
        let mut config = kube::Config::new(uri);
        // Retries would hide outages from the gap accounting; the loop below retries itself.
        config.default_retry = false;
        config
    } else if c.in_cluster {
        kube::Config::incluster().map_err(|source| WatchError::InCluster {
            cluster: cluster(),
            source,
        })?
    } else {
        let options = kube::config::KubeConfigOptions {
            context: c.context.clone(),
            ..Default::default()
        };
        match &c.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    kube::config::Kubeconfig::read_from(path).map_err(kubeconfig_err)?;
                kube::Config::from_custom_kubeconfig(kubeconfig, &options)
                    .await
                    .map_err(kubeconfig_err)?
            }
            None => kube::Config::from_kubeconfig(&options)
                .await
                .map_err(kubeconfig_err)?,
        }
    };
    Client::try_from(config).map_err(|source| WatchError::Client {
        cluster: cluster(),
        source,
    })
}

/// Resolves pods to workloads through ownerReferences (ReplicaSet → Deployment, Job →
/// CronJob), with a bounded cache. Falls back to what the pod itself tells when the owner
/// cannot be read (deleted, or no RBAC for it).
pub struct WorkloadResolver {
    client: Client,
    cache: HashMap<(String, String, String), Option<(String, String)>>,
    order: VecDeque<(String, String, String)>,
    capacity: usize,
}

impl WorkloadResolver {
    pub fn new(client: Client, capacity: usize) -> Self {
        WorkloadResolver {
            client,
            cache: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub async fn resolve(&mut self, pod: &Pod) -> (String, String) {
        let fallback = workload_by_convention(pod);
        let (Some(ns), Some(owner)) = (pod.metadata.namespace.clone(), controller(&pod.metadata))
        else {
            return fallback;
        };
        if owner.kind != "ReplicaSet" && owner.kind != "Job" {
            return fallback;
        }
        let key = (ns.clone(), owner.kind.clone(), owner.name.clone());
        if let Some(hit) = self.cache.get(&key) {
            return hit.clone().unwrap_or(fallback);
        }
        let meta = match owner.kind.as_str() {
            "ReplicaSet" => Api::<ReplicaSet>::namespaced(self.client.clone(), &ns)
                .get(&owner.name)
                .await
                .map(|r| r.metadata),
            _ => Api::<Job>::namespaced(self.client.clone(), &ns)
                .get(&owner.name)
                .await
                .map(|j| j.metadata),
        };
        let resolved = match meta {
            Ok(meta) => Some(
                controller(&meta)
                    .map(|o| (o.kind.clone(), o.name.clone()))
                    .unwrap_or((owner.kind.clone(), owner.name.clone())),
            ),
            Err(e) => {
                tracing::debug!(error = %e, kind = %owner.kind, name = %owner.name, "owner not readable; using the pod's own reference");
                None
            }
        };
        if self.order.len() >= self.capacity
            && let Some(old) = self.order.pop_front()
        {
            self.cache.remove(&old);
        }
        self.order.push_back(key.clone());
        self.cache.insert(key, resolved.clone());
        resolved.unwrap_or(fallback)
    }
}

/// Turns objects of one resource into observations.
trait Observer<K>: Send {
    fn observe(&mut self, object: &K) -> impl std::future::Future<Output = ObservedObject> + Send;
}

struct PodObserver(WorkloadResolver);
struct NodeObserver;
struct ServiceObserver;

impl Observer<Pod> for PodObserver {
    async fn observe(&mut self, pod: &Pod) -> ObservedObject {
        let workload = self.0.resolve(pod).await;
        pod_observation(pod, workload)
    }
}

impl Observer<Node> for NodeObserver {
    async fn observe(&mut self, node: &Node) -> ObservedObject {
        node_observation(node)
    }
}

impl Observer<Service> for ServiceObserver {
    async fn observe(&mut self, service: &Service) -> ObservedObject {
        service_observation(service)
    }
}

/// Retry pacing: doubling from 500 ms to 30 s, reset once a watch is established.
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Backoff(Duration::from_millis(500))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(30));
    }

    fn reset(&mut self) {
        *self = Backoff::new();
    }
}

struct Reporter {
    cluster: String,
    resource: Resource,
    tx: Sender<SourceBatch>,
    down: bool,
}

impl Reporter {
    fn send(&self, event: Event) -> bool {
        self.tx
            .send(SourceBatch::observations(vec![Observation {
                cluster: self.cluster.clone(),
                at: now_micros(),
                event,
            }]))
            .is_ok()
    }

    fn down(&mut self, reason: String) -> bool {
        tracing::warn!(cluster = %self.cluster, resource = self.resource.as_str(), %reason, "watch down: flows from now until it is back are unknown");
        self.down = true;
        self.send(Event::Down {
            resource: self.resource,
            reason,
        })
    }

    fn up(&mut self) -> bool {
        if self.down {
            tracing::info!(cluster = %self.cluster, resource = self.resource.as_str(), "watch back");
        }
        self.down = false;
        self.send(Event::Up {
            resource: self.resource,
        })
    }
}

async fn list_all<K>(api: &Api<K>) -> kube::Result<(Vec<K>, String)>
where
    K: KubeResource + Clone + DeserializeOwned + std::fmt::Debug,
{
    let mut items = Vec::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let page = api.list(&params).await?;
        items.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok((items, page.metadata.resource_version.unwrap_or_default())),
        }
    }
}

/// Lists then watches one resource until the receiver is gone, reporting gaps.
async fn run_resource<K, O>(api: Api<K>, mut observer: O, mut reporter: Reporter)
where
    K: KubeResource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
    O: Observer<K>,
{
    let mut backoff = Backoff::new();
    'relist: loop {
        let (items, mut rv) = match list_all(&api).await {
            Ok(listed) => listed,
            Err(e) => {
                if !reporter.down && !reporter.down(format!("list failed: {e}")) {
                    return;
                }
                backoff.wait().await;
                continue 'relist;
            }
        };
        let mut objects = Vec::with_capacity(items.len());
        for item in &items {
            objects.push(observer.observe(item).await);
        }
        if !reporter.send(Event::Relisted {
            resource: reporter.resource,
            objects,
        }) || !reporter.up()
        {
            return;
        }
        loop {
            let params = WatchParams::default().timeout(290);
            let mut stream = match api.watch(&params, &rv).await {
                Ok(s) => s.boxed(),
                Err(kube::Error::Api(status)) if status.code == 410 => {
                    if !reporter.down("resourceVersion expired (410 Gone): relisting".into()) {
                        return;
                    }
                    continue 'relist;
                }
                Err(e) => {
                    if !reporter.down && !reporter.down(format!("watch failed: {e}")) {
                        return;
                    }
                    backoff.wait().await;
                    continue;
                }
            };
            if reporter.down && !reporter.up() {
                return;
            }
            backoff.reset();
            while let Some(event) = stream.next().await {
                let sent = match event {
                    Ok(WatchEvent::Added(o)) | Ok(WatchEvent::Modified(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        let observed = observer.observe(&o).await;
                        reporter.send(Event::Upsert(observed))
                    }
                    Ok(WatchEvent::Deleted(o)) => {
                        rv = o.meta().resource_version.clone().unwrap_or(rv);
                        let observed = observer.observe(&o).await;
                        reporter.send(Event::Delete(observed))
                    }
                    Ok(WatchEvent::Bookmark(b)) => {
                        rv = b.metadata.resource_version;
                        true
                    }
                    Ok(WatchEvent::Error(status)) if status.code == 410 => {
                        if !reporter.down("resourceVersion expired (410 Gone): relisting".into()) {
                            return;
                        }
                        continue 'relist;
                    }
                    Ok(WatchEvent::Error(status)) => {
                        reporter.down(format!("watch error {}: {}", status.code, status.message))
                    }
                    Err(e) => reporter.down(format!("watch stream broke: {e}")),
                };
                if !sent {
                    return;
                }
                if reporter.down {
                    break;
                }
            }
            if reporter.down {
                backoff.wait().await;
            }
            // A stream that simply ended (server timeout) resumes from `rv`: nothing missed.
        }
    }
}

/// Watches a cluster's Pods, Nodes and Services until `tx`'s receiver is dropped (or the
/// returned tasks are aborted).
pub fn spawn_cluster_watch(
    cluster: String,
    client: Client,
    tx: Sender<SourceBatch>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let reporter = |resource| Reporter {
        cluster: cluster.clone(),
        resource,
        tx: tx.clone(),
        down: true,
    };
    vec![
        tokio::spawn(run_resource(
            Api::<Pod>::all(client.clone()),
            PodObserver(WorkloadResolver::new(client.clone(), 10_000)),
            reporter(Resource::Pods),
        )),
        tokio::spawn(run_resource(
            Api::<Node>::all(client.clone()),
            NodeObserver,
            reporter(Resource::Nodes),
        )),
        tokio::spawn(run_resource(
            Api::<Service>::all(client),
            ServiceObserver,
            reporter(Resource::Services),
        )),
    ]
}
