//! kube-rs against the fake API server (`kube_api.rs`) and the kubectl import fixtures: proves
//! the server speaks the wire format kube-rs expects and that the fixtures hold the ground
//! truth documented in fixtures/k8s/README.md.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use k8s_openapi::api::apps::v1::ReplicaSet;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, WatchEvent, WatchParams};
use kube::{Client, Config, ResourceExt};
use serde_json::Value;

use super::kube_api::FakeKubeApi;

fn k8s_fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/k8s")
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Whole seconds, `ahead` seconds after now (rounded up).
fn t0_ahead(ahead: i64) -> i64 {
    unix_now().ceil() as i64 + ahead
}

fn client(api: &FakeKubeApi) -> Client {
    let mut config = Config::new(api.url.parse().expect("server url"));
    config.default_retry = false;
    Client::try_from(config).expect("kube client")
}

fn at(t0: i64, offset: i64) -> Option<Time> {
    Some(Time(Timestamp::from_second(t0 + offset).unwrap()))
}

fn pod_ips(p: &Pod) -> Vec<String> {
    p.status
        .as_ref()
        .and_then(|s| s.pod_ips.as_ref())
        .map(|ips| ips.iter().map(|i| i.ip.clone()).collect())
        .unwrap_or_default()
}

fn pod_ip(p: &Pod) -> Option<String> {
    p.status.as_ref().and_then(|s| s.pod_ip.clone())
}

fn phase(p: &Pod) -> String {
    p.status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default()
}

fn start_time(p: &Pod) -> Option<Time> {
    p.status.as_ref().and_then(|s| s.start_time.clone())
}

fn node_name(p: &Pod) -> Option<String> {
    p.spec.as_ref().and_then(|s| s.node_name.clone())
}

fn controller(meta: &impl ResourceExt) -> (String, String, String) {
    let owners: Vec<_> = meta
        .owner_references()
        .iter()
        .filter(|o| o.controller == Some(true))
        .collect();
    assert_eq!(owners.len(), 1, "exactly one controller owner");
    let o = owners[0];
    (o.api_version.clone(), o.kind.clone(), o.name.clone())
}

/// Latest `finishedAt` over the pod's terminated containers.
fn finished_at(p: &Pod) -> Option<Time> {
    p.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .filter_map(|c| c.state.as_ref()?.terminated.as_ref()?.finished_at.clone())
        .max_by_key(|t| t.0)
}

fn by_name(pods: &[Pod]) -> BTreeMap<String, &Pod> {
    pods.iter()
        .map(|p| (format!("{}/{}", p.namespace().unwrap(), p.name_any()), p))
        .collect()
}

fn api_error_code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_lists_render_fixtures_relative_to_t0() {
    // Lists do not wait for anything: any t0 works; pick one well in the past.
    let t0 = t0_ahead(-1000);
    let api = FakeKubeApi::start(&k8s_fixtures().join("handover"), t0);
    assert_eq!(api.t0_secs, t0);
    let client = client(&api);

    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list pods");
    assert_eq!(pods.metadata.resource_version.as_deref(), Some("1000"));
    let names: Vec<String> = pods.items.iter().map(|p| p.name_any()).collect();
    assert_eq!(
        names,
        [
            "kube-proxy-n1abc",
            "backup-29400000-xk2lp",
            "api-5f6d7-qwert",
            "cache-0",
            "web-7d4b9-abcde"
        ]
    );
    let pods = by_name(&pods.items);
    for p in pods.values() {
        assert!(!p.resource_version().unwrap().is_empty());
        assert_eq!(p.uid().unwrap().len(), 36);
    }

    let web = pods["shop/web-7d4b9-abcde"];
    assert_eq!(phase(web), "Running");
    assert_eq!(node_name(web).as_deref(), Some("node-1"));
    assert_eq!(pod_ip(web).as_deref(), Some("10.4.1.10"));
    assert_eq!(pod_ips(web), ["10.4.1.10"]);
    assert_eq!(start_time(web), at(t0, -300));
    assert_eq!(web.metadata.creation_timestamp, at(t0, -301));
    assert_eq!(
        controller(web),
        ("apps/v1".into(), "ReplicaSet".into(), "web-7d4b9".into())
    );
    assert_eq!(web.labels()["pod-template-hash"], "7d4b9");
    assert_eq!(web.labels()["app"], "web");
    let container = &web.spec.as_ref().unwrap().containers[0];
    assert_eq!(container.name, "web");
    assert_eq!(container.ports.as_ref().unwrap()[0].container_port, 8080);
    assert!(
        web.status
            .as_ref()
            .unwrap()
            .container_statuses
            .as_ref()
            .unwrap()[0]
            .state
            .as_ref()
            .unwrap()
            .running
            .is_some()
    );

    let backup = pods["ops/backup-29400000-xk2lp"];
    assert_eq!(phase(backup), "Succeeded");
    assert_eq!(pod_ip(backup).as_deref(), Some("10.4.1.20"));
    assert_eq!(start_time(backup), at(t0, -200));
    assert_eq!(finished_at(backup), at(t0, -100));
    let term = backup
        .status
        .as_ref()
        .unwrap()
        .container_statuses
        .as_ref()
        .unwrap()[0]
        .state
        .as_ref()
        .unwrap()
        .terminated
        .clone()
        .unwrap();
    assert_eq!(term.reason.as_deref(), Some("Completed"));
    assert_eq!(term.exit_code, 0);
    assert_eq!(
        controller(backup),
        ("batch/v1".into(), "Job".into(), "backup-29400000".into())
    );
    assert_eq!(backup.labels()["job-name"], "backup-29400000");
    assert_eq!(
        backup.labels()["batch.kubernetes.io/job-name"],
        "backup-29400000"
    );

    let cache = pods["shop/cache-0"];
    assert_eq!(phase(cache), "Running");
    assert_eq!(pod_ips(cache), ["10.4.1.20"]);
    assert_eq!(start_time(cache), at(t0, -90));
    assert_eq!(
        controller(cache),
        ("apps/v1".into(), "StatefulSet".into(), "cache".into())
    );

    let proxy = pods["kube-system/kube-proxy-n1abc"];
    assert_eq!(proxy.spec.as_ref().unwrap().host_network, Some(true));
    assert_eq!(pod_ips(proxy), ["192.168.10.11"]);
    let port = &proxy.spec.as_ref().unwrap().containers[0]
        .ports
        .as_ref()
        .unwrap()[0];
    assert_eq!((port.host_port, port.container_port), (Some(10249), 10249));
    assert_eq!(
        controller(proxy),
        ("apps/v1".into(), "DaemonSet".into(), "kube-proxy".into())
    );

    let dual = pods["shop/api-5f6d7-qwert"];
    assert_eq!(node_name(dual).as_deref(), Some("node-2"));
    assert_eq!(pod_ips(dual), ["10.4.2.5", "fd00:10:4:2::5"]);
    assert_eq!(start_time(dual), at(t0, -50));
    assert_eq!(dual.labels()["pod-template-hash"], "5f6d7");

    let nodes = Api::<Node>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list nodes");
    assert_eq!(nodes.metadata.resource_version.as_deref(), Some("1000"));
    let summary: Vec<_> = nodes
        .items
        .iter()
        .map(|n| {
            let spec = n.spec.clone().unwrap();
            let addrs: Vec<_> = n
                .status
                .as_ref()
                .unwrap()
                .addresses
                .clone()
                .unwrap()
                .into_iter()
                .map(|a| (a.type_, a.address))
                .collect();
            (
                n.name_any(),
                spec.pod_cidr.unwrap(),
                spec.pod_cidrs.unwrap(),
                addrs,
            )
        })
        .collect();
    let node = |name: &str, ip: &str, cidr: &str| {
        (
            name.to_string(),
            cidr.to_string(),
            vec![cidr.to_string()],
            vec![
                ("InternalIP".to_string(), ip.to_string()),
                ("Hostname".to_string(), name.to_string()),
            ],
        )
    };
    assert_eq!(
        summary,
        [
            node("node-1", "192.168.10.11", "10.4.1.0/24"),
            node("node-2", "192.168.10.12", "10.4.2.0/24")
        ]
    );
    assert_eq!(nodes.items[0].metadata.creation_timestamp, at(t0, -90000));

    let services = Api::<Service>::all(client.clone())
        .list(&ListParams::default())
        .await
        .expect("list services");
    let svc: BTreeMap<_, _> = services
        .items
        .iter()
        .map(|s| {
            let spec = s.spec.clone().unwrap();
            let ingress: Vec<_> = s
                .status
                .as_ref()
                .and_then(|st| st.load_balancer.as_ref()?.ingress.clone())
                .unwrap_or_default()
                .into_iter()
                .filter_map(|i| i.ip)
                .collect();
            (
                format!("{}/{}", s.namespace().unwrap(), s.name_any()),
                (
                    spec.type_.unwrap(),
                    spec.cluster_ip.unwrap(),
                    spec.cluster_ips.unwrap(),
                    ingress,
                ),
            )
        })
        .collect();
    assert_eq!(svc.len(), 2);
    assert_eq!(
        svc["default/kubernetes"],
        (
            "ClusterIP".into(),
            "10.96.0.1".into(),
            vec!["10.96.0.1".into()],
            vec![]
        )
    );
    assert_eq!(
        svc["shop/web"],
        (
            "LoadBalancer".into(),
            "10.96.10.10".into(),
            vec!["10.96.10.10".into()],
            vec!["203.0.113.10".to_string()]
        )
    );

    // Each list step answers once; the services list was the last step served.
    tokio::task::block_in_place(|| {
        for step in ["pods-list-1", "nodes-list", "services-list"] {
            api.wait_for_step(step, Duration::from_secs(1));
        }
    });
    assert!(api.unscripted().is_empty(), "{:?}", api.unscripted());
    let requests = api.requests();
    assert_eq!(requests.len(), 3, "{requests:?}");
    assert!(requests[0].starts_with("GET /api/v1/pods"), "{requests:?}");
    assert!(requests[1].starts_with("GET /api/v1/nodes"), "{requests:?}");
    assert!(
        requests[2].starts_with("GET /api/v1/services"),
        "{requests:?}"
    );
    assert!(requests.iter().all(|r| !r.contains("watch=true")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_fallbacks_hold_and_unknown_paths() {
    // Bookmarks of the node/service watches are at t0+3: already past, so sent at once.
    let t0 = t0_ahead(-10);
    let api = FakeKubeApi::start(&k8s_fixtures().join("handover"), t0);
    let client = client(&api);
    let nodes = Api::<Node>::all(client.clone());

    // A watch while the next step is a list is not scripted: 500, and the step stays.
    let err = nodes
        .watch(&WatchParams::default(), "1000")
        .await
        .err()
        .expect("watch before list must fail");
    assert_eq!(api_error_code(&err), 500);
    let list = nodes.list(&ListParams::default()).await.expect("list");
    assert_eq!(list.items.len(), 2);

    // Watch with "end": "hold": the bookmark, then nothing, and the stream stays open.
    let mut stream = nodes
        .watch(&WatchParams::default(), "1000")
        .await
        .expect("watch nodes")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_eq!(b.metadata.resource_version, "1004");
            assert_eq!(b.types.kind, "Node");
        }
        other => panic!("expected a bookmark, got {other:?}"),
    }
    tokio::task::block_in_place(|| api.wait_for_step("nodes-watch", Duration::from_secs(2)));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), stream.next())
            .await
            .is_err(),
        "a held watch must neither end nor send more"
    );

    // No steps left: a list gets 500, a watch is held open with nothing on it.
    let err = nodes.list(&ListParams::default()).await.unwrap_err();
    assert_eq!(api_error_code(&err), 500);
    let mut idle = nodes
        .watch(&WatchParams::default(), "1004")
        .await
        .expect("idle watch is accepted")
        .boxed();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), idle.next())
            .await
            .is_err(),
        "an idle watch must stay open and silent"
    );

    // Unknown paths and unknown objects are 404 Status with "code".
    let err = Api::<ConfigMap>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert_eq!(api_error_code(&err), 404);
    let err = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .get("web-0000000")
        .await
        .unwrap_err();
    match &err {
        kube::Error::Api(s) => assert_eq!((s.code, s.reason.as_str()), (404, "NotFound")),
        other => panic!("{other:?}"),
    }

    let unscripted = api.unscripted();
    assert_eq!(unscripted.len(), 5, "{unscripted:#?}");
    assert_eq!(
        unscripted[..4],
        [
            "GET /api/v1/nodes?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1000",
            "GET /api/v1/nodes?",
            "GET /api/v1/nodes?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion=1004",
            "GET /api/v1/configmaps?",
        ]
    );
    assert_eq!(
        unscripted[4],
        "GET /apis/apps/v1/namespaces/shop/replicasets/web-0000000"
    );

    // wait_for_step fails for steps never served and for unknown names.
    let never = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        api.wait_for_step("pods-watch-1", Duration::from_millis(200))
    }));
    assert!(never.is_err(), "wait_for_step must panic on timeout");
    let unknown = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        api.wait_for_step("no-such-step", Duration::from_secs(5))
    }));
    assert!(
        unknown.is_err(),
        "wait_for_step must panic on unknown steps"
    );

    // Dropping the server closes the held streams and returns promptly.
    let started = Instant::now();
    drop(api);
    assert!(started.elapsed() < Duration::from_secs(2));
    for s in [&mut stream, &mut idle] {
        let end = tokio::time::timeout(Duration::from_secs(2), s.next())
            .await
            .expect("stream must end when the server stops");
        assert!(!matches!(end, Some(Ok(_))), "no event after stop: {end:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_objects_resolve_owner_chain() {
    let t0 = t0_ahead(-1000);
    let api = FakeKubeApi::start(&k8s_fixtures().join("handover"), t0);
    let client = client(&api);
    for (name, deployment) in [
        ("web-7d4b9", "web"),
        ("api-5f6d7", "api"),
        ("worker-6c8d9", "worker"),
    ] {
        let rs = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get rs {name}: {e}"));
        assert_eq!(rs.name_any(), name);
        assert_eq!(rs.namespace().as_deref(), Some("shop"));
        assert!(!rs.resource_version().unwrap().is_empty());
        assert_eq!(
            controller(&rs),
            ("apps/v1".into(), "Deployment".into(), deployment.into())
        );
        let hash = name.rsplit('-').next().unwrap();
        assert_eq!(rs.labels()["pod-template-hash"], hash);
    }
    let web_rs = Api::<ReplicaSet>::namespaced(client.clone(), "shop")
        .get("web-7d4b9")
        .await
        .unwrap();
    assert_eq!(web_rs.metadata.creation_timestamp, at(t0, -302));

    let job = Api::<Job>::namespaced(client.clone(), "ops")
        .get("backup-29400000")
        .await
        .expect("get job");
    assert_eq!(
        controller(&job),
        ("batch/v1".into(), "CronJob".into(), "backup".into())
    );

    // The pods' ownerReferences point at these very objects (uids match).
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default())
        .await
        .unwrap();
    let pods = by_name(&pods.items);
    let owner_uid = |p: &Pod| p.owner_references()[0].uid.clone();
    assert_eq!(
        owner_uid(pods["shop/web-7d4b9-abcde"]),
        web_rs.uid().unwrap()
    );
    assert_eq!(
        owner_uid(pods["ops/backup-29400000-xk2lp"]),
        job.uid().unwrap()
    );
    let job_uid = job.uid().unwrap();
    assert_eq!(
        pods["ops/backup-29400000-xk2lp"].labels()["batch.kubernetes.io/controller-uid"],
        job_uid
    );

    // Objects answer every GET (no steps consumed).
    let again = Api::<Job>::namespaced(client.clone(), "ops")
        .get("backup-29400000")
        .await
        .unwrap();
    assert_eq!(again.uid(), job.uid());
    assert!(api.unscripted().is_empty(), "{:?}", api.unscripted());
    assert_eq!(
        api.requests()
            .iter()
            .filter(|r| r.as_str() == "GET /apis/batch/v1/namespaces/ops/jobs/backup-29400000")
            .count(),
        2
    );
}

/// Asserts an item arrived no earlier than t0 + `sched` and not long after.
fn assert_on_time(what: &str, t0: i64, sched: f64, arrived: f64) {
    let due = t0 as f64 + sched;
    assert!(
        arrived >= due - 0.05,
        "{what} arrived {:.3}s before its time t0+{sched}",
        due - arrived
    );
    assert!(
        arrived <= due + 1.5,
        "{what} arrived {:.3}s late (t0+{sched})",
        arrived - due
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kube_api_pod_watch_handover_timeline() {
    let t0 = t0_ahead(2);
    let api = FakeKubeApi::start(&k8s_fixtures().join("handover"), t0);
    let pods = Api::<Pod>::all(client(&api));

    let list = pods.list(&ListParams::default()).await.expect("list");
    let rv = list.metadata.resource_version.clone().unwrap();
    assert_eq!(rv, "1000");

    // The response head comes at once, long before the first event (t0+2).
    let asked = unix_now();
    let mut stream = pods
        .watch(&WatchParams::default(), &rv)
        .await
        .expect("watch 1")
        .boxed();
    assert!(unix_now() - asked < 1.0, "watch head was delayed");

    // (offset, type, pod)
    let expected = [
        (2.0, "MODIFIED", "web-7d4b9-abcde"),
        (4.0, "DELETED", "web-7d4b9-abcde"),
        (5.0, "ADDED", "web-7d4b9-fghij"),
        (6.0, "MODIFIED", "web-7d4b9-fghij"),
    ];
    let mut seen = Vec::new();
    for (sched, ty, name) in expected {
        let ev = stream
            .next()
            .await
            .unwrap_or_else(|| panic!("stream ended before {ty} {name}"))
            .unwrap_or_else(|e| panic!("error before {ty} {name}: {e:?}"));
        let arrived = unix_now();
        let (got_ty, pod) = match ev {
            WatchEvent::Added(p) => ("ADDED", p),
            WatchEvent::Modified(p) => ("MODIFIED", p),
            WatchEvent::Deleted(p) => ("DELETED", p),
            other => panic!("expected {ty} {name}, got {other:?}"),
        };
        assert_eq!((got_ty, pod.name_any().as_str()), (ty, name));
        assert_on_time(&format!("{ty} {name}"), t0, sched, arrived);
        seen.push(pod);
    }
    // t+2: graceful deletion requested; deletionTimestamp = request time + 30 s grace.
    assert_eq!(seen[0].metadata.deletion_timestamp, at(t0, 32));
    assert_eq!(seen[0].metadata.deletion_grace_period_seconds, Some(30));
    assert_eq!(phase(&seen[0]), "Running");
    assert_eq!(pod_ip(&seen[0]).as_deref(), Some("10.4.1.10"));
    // t+4: the final state: containers finished at t+3, IP still reported.
    assert_eq!(finished_at(&seen[1]), at(t0, 3));
    assert_eq!(pod_ip(&seen[1]).as_deref(), Some("10.4.1.10"));
    // t+5: the replacement, Pending without an IP; t+6: Running with the recycled IP.
    assert_eq!(phase(&seen[2]), "Pending");
    assert_eq!(pod_ip(&seen[2]), None);
    assert_eq!(node_name(&seen[2]).as_deref(), Some("node-1"));
    assert_eq!(phase(&seen[3]), "Running");
    assert_eq!(pod_ips(&seen[3]), ["10.4.1.10"]);
    assert_eq!(start_time(&seen[3]), at(t0, 5));
    assert_eq!(
        controller(&seen[3]),
        ("apps/v1".into(), "ReplicaSet".into(), "web-7d4b9".into())
    );
    let rvs: Vec<u64> = seen
        .iter()
        .map(|p| p.resource_version().unwrap().parse().unwrap())
        .collect();
    assert!(
        rvs.windows(2).all(|w| w[0] < w[1]) && rvs[0] > 1000,
        "{rvs:?}"
    );

    let bookmark_rv = match stream.next().await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_on_time("BOOKMARK", t0, 7.0, unix_now());
            assert_eq!(b.types.kind, "Pod");
            b.metadata.resource_version
        }
        other => panic!("expected the bookmark, got {other:?}"),
    };
    assert_eq!(bookmark_rv, "1011");

    // t+8: the connection is cut without the terminating chunk. kube-rs classifies the cut as
    // a resumable EOF and just ends the stream: to the client a drop looks like a clean close
    // (the raw-wire test below checks that the server really does cut it).
    let end = stream.next().await;
    assert_on_time("connection drop", t0, 8.0, unix_now());
    assert!(
        end.is_none(),
        "kube-rs should end the stream on a cut: {end:?}"
    );
    tokio::task::block_in_place(|| api.wait_for_step("pods-watch-1", Duration::from_secs(1)));

    // Until t+12 every request gets HTTP 500 with a Status body; then the 410 ERROR event.
    let mut errors = 0;
    let mut stream = loop {
        let asked = unix_now();
        match pods.watch(&WatchParams::default(), &bookmark_rv).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 500, "{s:?}");
                assert_eq!(s.reason, "InternalError");
                assert!(asked < t0 as f64 + 12.05, "500 after the window: {s:?}");
                errors += 1;
                tokio::time::sleep(Duration::from_millis(700)).await;
            }
            Err(e) => panic!("unexpected error {e:?}"),
            Ok(s) => {
                assert_on_time("watch after the 500 window", t0, 12.0, unix_now());
                break s.boxed();
            }
        }
        assert!(errors < 20, "the error window never ended");
    };
    assert!(errors >= 3, "only {errors} watch attempts got 500");
    match stream.next().await {
        Some(Ok(WatchEvent::Error(s))) => {
            assert_eq!(s.code, 410);
            assert_eq!(s.reason, "Expired");
            assert!(s.message.starts_with("too old resource version"), "{s:?}");
        }
        other => panic!("expected ERROR 410, got {other:?}"),
    }
    // "end": "close": a clean end of the stream.
    let end = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("stream must end after the ERROR event");
    assert!(end.is_none(), "clean close must end the stream: {end:?}");
    tokio::task::block_in_place(|| {
        api.wait_for_step("pods-watch-500", Duration::from_secs(1));
        api.wait_for_step("pods-watch-410", Duration::from_secs(1));
    });

    // Relist: the current state, including the pod created during the gap.
    let relist = pods.list(&ListParams::default()).await.expect("relist");
    assert_eq!(relist.metadata.resource_version.as_deref(), Some("1042"));
    let current = by_name(&relist.items);
    assert_eq!(
        current.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "kube-system/kube-proxy-n1abc",
            "ops/backup-29400000-xk2lp",
            "shop/api-5f6d7-qwert",
            "shop/cache-0",
            "shop/web-7d4b9-fghij",
            "shop/worker-6c8d9-zzzzz"
        ]
    );
    let worker = current["shop/worker-6c8d9-zzzzz"];
    assert_eq!(pod_ips(worker), ["10.4.2.30"]);
    assert_eq!(node_name(worker).as_deref(), Some("node-2"));
    assert_eq!(start_time(worker), at(t0, 9));
    assert_eq!(worker.labels()["pod-template-hash"], "6c8d9");
    assert_eq!(
        controller(worker),
        ("apps/v1".into(), "ReplicaSet".into(), "worker-6c8d9".into())
    );
    assert_eq!(pod_ips(current["shop/web-7d4b9-fghij"]), ["10.4.1.10"]);
    assert_eq!(phase(current["ops/backup-29400000-xk2lp"]), "Succeeded");

    // The last watch: a bookmark at t+14, then held open.
    let mut stream = pods
        .watch(&WatchParams::default(), "1042")
        .await
        .expect("watch 3")
        .boxed();
    match stream.next().await {
        Some(Ok(WatchEvent::Bookmark(b))) => {
            assert_on_time("final BOOKMARK", t0, 14.0, unix_now());
            assert_eq!(b.metadata.resource_version, "1050");
        }
        other => panic!("expected the bookmark, got {other:?}"),
    }
    tokio::task::block_in_place(|| api.wait_for_step("pods-watch-3", Duration::from_secs(1)));
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err(),
        "held watch must stay open"
    );

    // The requests kube-rs sent, in order (note kube-rs's "?&" before the watch parameters).
    let watch = |rv: &str| {
        format!(
            "GET /api/v1/pods?&watch=true&timeoutSeconds=290&allowWatchBookmarks=true&resourceVersion={rv}"
        )
    };
    let mut want = vec!["GET /api/v1/pods?".to_string(), watch("1000")];
    want.extend(std::iter::repeat_n(watch("1011"), errors + 1));
    want.push("GET /api/v1/pods?".into());
    want.push(watch("1042"));
    assert_eq!(api.requests(), want);
    assert!(api.unscripted().is_empty(), "{:?}", api.unscripted());

    drop(api);
    let end = tokio::time::timeout(Duration::from_secs(2), stream.next())
        .await
        .expect("held watch must end when the server stops");
    assert!(!matches!(end, Some(Ok(_))), "{end:?}");
}

// ------------------------------------------------------------------ kubectl import fixtures

type Intervals = BTreeMap<(String, String), (String, Option<String>)>;

/// Who held which pod IP when, as the objects themselves tell it: from `status.startTime` to the
/// last container's `finishedAt` once the pod is terminal (open while it runs). hostNetwork pods
/// report the node's IP and hold nothing. Later states of the same pod refine the end.
fn ip_intervals<'a>(states: impl IntoIterator<Item = &'a Pod>) -> Intervals {
    let mut out = Intervals::new();
    for p in states {
        if p.spec.as_ref().and_then(|s| s.host_network) == Some(true) {
            continue;
        }
        let terminal = matches!(phase(p).as_str(), "Succeeded" | "Failed");
        let end = if terminal {
            Some(
                finished_at(p)
                    .expect("terminal pod has finishedAt")
                    .0
                    .to_string(),
            )
        } else {
            None
        };
        for ip in pod_ips(p) {
            let start = start_time(p).expect("pod with an IP has startTime");
            let key = (ip, format!("{}/{}", p.namespace().unwrap(), p.name_any()));
            let e = out.entry(key).or_insert((start.0.to_string(), None));
            e.1 = end.clone();
        }
    }
    out
}

fn expect_intervals(rows: &[(&str, &str, &str, Option<&str>)]) -> Intervals {
    rows.iter()
        .map(|(ip, pod, start, end)| {
            (
                (ip.to_string(), pod.to_string()),
                (start.to_string(), end.map(str::to_string)),
            )
        })
        .collect()
}

/// (start, end, pod) of one holder of an IP.
type Holder<'a> = (&'a str, Option<&'a str>, &'a str);

/// For every IP, the holders' intervals do not overlap.
fn assert_no_overlap(iv: &Intervals) {
    let mut by_ip: BTreeMap<&str, Vec<Holder>> = BTreeMap::new();
    for ((ip, pod), (start, end)) in iv {
        by_ip
            .entry(ip)
            .or_default()
            .push((start, end.as_deref(), pod));
    }
    for (ip, mut v) in by_ip {
        v.sort();
        for w in v.windows(2) {
            let end = w[0]
                .1
                .unwrap_or_else(|| panic!("{ip}: {} never ends", w[0].2));
            assert!(end < w[1].0, "{ip}: {} and {} overlap", w[0].2, w[1].2);
        }
    }
}

const SNAPSHOT_TRUTH: &[(&str, &str, &str, Option<&str>)] = &[
    (
        "10.4.1.10",
        "shop/web-7d4b9-k8m2p",
        "2026-11-20T09:02:11Z",
        None,
    ),
    (
        "10.4.1.20",
        "ops/backup-29919420-h7x4q",
        "2026-11-20T09:00:02Z",
        Some("2026-11-20T09:04:48Z"),
    ),
    ("10.4.1.20", "shop/cache-1", "2026-11-20T09:31:40Z", None),
    (
        "10.4.1.31",
        "shop/web-7d4b9-v2x8c",
        "2026-11-20T09:59:58Z",
        None,
    ),
    (
        "10.4.2.14",
        "shop/web-7d4b9-r5t9w",
        "2026-11-20T09:02:15Z",
        None,
    ),
    (
        "10.4.2.2",
        "kube-system/coredns-668d6bf9bc-lx8hn",
        "2026-11-20T08:52:41Z",
        None,
    ),
    (
        "10.4.2.5",
        "shop/api-5f6d7-qwert",
        "2026-11-20T09:20:05Z",
        None,
    ),
    (
        "fd00:10:4:2::5",
        "shop/api-5f6d7-qwert",
        "2026-11-20T09:20:05Z",
        None,
    ),
];

fn read_snapshot() -> (String, Vec<Pod>) {
    let text = std::fs::read_to_string(k8s_fixtures().join("import/pods-snapshot.json")).unwrap();
    let v: Value = serde_json::from_str(&text).expect("snapshot is JSON");
    assert_eq!(v["apiVersion"], "v1");
    assert_eq!(v["kind"], "List");
    assert_eq!(v["metadata"]["resourceVersion"], "");
    let pods: Vec<Pod> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            assert_eq!(
                (&i["apiVersion"], &i["kind"]),
                (&Value::from("v1"), &Value::from("Pod"))
            );
            serde_json::from_value(i.clone()).expect("item is a Pod")
        })
        .collect();
    (text, pods)
}

#[test]
fn kube_api_import_snapshot_ground_truth() {
    let (text, pods) = read_snapshot();
    // kubectl's printer: sorted keys, 4-space indentation.
    assert!(
        text.starts_with("{\n    \"apiVersion\": \"v1\",\n    \"items\": [\n        {\n"),
        "not kubectl -o json layout"
    );
    assert_eq!(pods.len(), 9);
    let iv = ip_intervals(&pods);
    assert_eq!(iv, expect_intervals(SNAPSHOT_TRUTH));
    assert_no_overlap(&iv);

    let by = by_name(&pods);
    // The terminating pod: deletion requested at 09:59:57 with 30 s grace.
    let term = by["shop/web-7d4b9-r5t9w"];
    assert_eq!(
        term.metadata
            .deletion_timestamp
            .as_ref()
            .unwrap()
            .0
            .to_string(),
        "2026-11-20T10:00:27Z"
    );
    assert_eq!(term.metadata.deletion_grace_period_seconds, Some(30));
    assert_eq!(phase(term), "Running");
    // hostNetwork pods report their node's IP.
    for (name, ip, node) in [
        ("kube-system/kube-proxy-x7k2d", "192.168.10.11", "node-1"),
        ("kube-system/kube-proxy-p9w4n", "192.168.10.12", "node-2"),
    ] {
        let p = by[name];
        assert_eq!(p.spec.as_ref().unwrap().host_network, Some(true));
        assert_eq!(pod_ips(p), [ip]);
        assert_eq!(node_name(p).as_deref(), Some(node));
        assert_eq!(
            p.status.as_ref().unwrap().host_ip.as_deref(),
            Some(ip),
            "{name}"
        );
    }
    assert_eq!(
        controller(by["ops/backup-29919420-h7x4q"]),
        ("batch/v1".into(), "Job".into(), "backup-29919420".into())
    );
    assert_eq!(
        controller(by["shop/cache-1"]),
        ("apps/v1".into(), "StatefulSet".into(), "cache".into())
    );
}

/// Every timestamp string inside a JSON value.
fn timestamps(v: &Value, out: &mut Vec<Timestamp>) {
    match v {
        Value::String(s) if s.len() == 20 && s.ends_with('Z') => {
            if let Ok(t) = s.parse::<Timestamp>() {
                out.push(t);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| timestamps(x, out)),
        Value::Object(o) => o.values().for_each(|x| timestamps(x, out)),
        _ => {}
    }
}

#[test]
fn kube_api_import_watch_ground_truth() {
    let text = std::fs::read_to_string(k8s_fixtures().join("import/pods-watch.json")).unwrap();
    assert!(text.starts_with("{\n    \"type\": \"ADDED\",\n    \"object\": {\n"));
    let raw: Vec<Value> = serde_json::Deserializer::from_str(&text)
        .into_iter::<Value>()
        .collect::<Result<_, _>>()
        .expect("a sequence of JSON objects");
    let events: Vec<(String, Pod)> = raw
        .iter()
        .map(|v| {
            let o = v.as_object().unwrap();
            assert_eq!(o.len(), 2, "only type and object: {:?}", o.keys());
            (
                o["type"].as_str().unwrap().to_string(),
                serde_json::from_value(o["object"].clone()).expect("object is a Pod"),
            )
        })
        .collect();

    // First the existing pods as ADDED, exactly the snapshot's.
    let (_, snapshot) = read_snapshot();
    let initial = snapshot.len();
    for ((ty, p), s) in events.iter().zip(&snapshot) {
        assert_eq!(ty, "ADDED");
        assert_eq!(p, s);
    }
    let tail: Vec<(&str, String, Option<String>, String)> = events[initial..]
        .iter()
        .map(|(ty, p)| {
            (
                ty.as_str(),
                format!("{}/{}", p.namespace().unwrap(), p.name_any()),
                pod_ip(p),
                phase(p),
            )
        })
        .collect();
    let row = |ty: &'static str, pod: &str, ip: Option<&str>, phase: &str| {
        (
            ty,
            pod.to_string(),
            ip.map(str::to_string),
            phase.to_string(),
        )
    };
    assert_eq!(
        tail,
        [
            row(
                "MODIFIED",
                "shop/web-7d4b9-r5t9w",
                Some("10.4.2.14"),
                "Succeeded"
            ),
            row(
                "DELETED",
                "shop/web-7d4b9-r5t9w",
                Some("10.4.2.14"),
                "Succeeded"
            ),
            row("ADDED", "shop/worker-6c8d9-b7n4k", None, "Pending"),
            row("MODIFIED", "shop/worker-6c8d9-b7n4k", None, "Pending"),
            row("MODIFIED", "shop/worker-6c8d9-b7n4k", None, "Pending"),
            row(
                "MODIFIED",
                "shop/worker-6c8d9-b7n4k",
                Some("10.4.2.14"),
                "Running"
            ),
            row(
                "MODIFIED",
                "ops/backup-29919420-h7x4q",
                Some("10.4.1.20"),
                "Succeeded"
            ),
            row(
                "DELETED",
                "ops/backup-29919420-h7x4q",
                Some("10.4.1.20"),
                "Succeeded"
            ),
        ]
    );
    // resourceVersions increase along the watch.
    let rvs: Vec<u64> = events[initial..]
        .iter()
        .map(|(_, p)| p.resource_version().unwrap().parse().unwrap())
        .collect();
    assert!(rvs.windows(2).all(|w| w[0] < w[1]), "{rvs:?}");

    // Everything the watch adds after the initial ADDEDs happens in 10:00–10:30.
    let mut before = Vec::new();
    raw[..initial]
        .iter()
        .for_each(|v| timestamps(v, &mut before));
    let (lo, hi): (Timestamp, Timestamp) = (
        "2026-11-20T10:00:00Z".parse().unwrap(),
        "2026-11-20T10:30:00Z".parse().unwrap(),
    );
    let mut fresh = Vec::new();
    raw[initial..]
        .iter()
        .for_each(|v| timestamps(v, &mut fresh));
    fresh.retain(|t| !before.contains(t));
    assert!(fresh.len() >= 5);
    for t in &fresh {
        assert!(lo <= *t && *t <= hi, "{t} outside the watch window");
    }

    let iv = ip_intervals(events.iter().map(|(_, p)| p));
    let mut truth: Vec<_> = SNAPSHOT_TRUTH
        .iter()
        .filter(|r| r.1 != "shop/web-7d4b9-r5t9w")
        .copied()
        .collect();
    truth.push((
        "10.4.2.14",
        "shop/web-7d4b9-r5t9w",
        "2026-11-20T09:02:15Z",
        Some("2026-11-20T10:00:26Z"),
    ));
    truth.push((
        "10.4.2.14",
        "shop/worker-6c8d9-b7n4k",
        "2026-11-20T10:12:30Z",
        None,
    ));
    assert_eq!(iv, expect_intervals(&truth));
    assert_no_overlap(&iv);

    // The order tells the handover: the old holder is gone before the new one gets the IP,
    // and the late DELETED of the completed Job pod comes while shop/cache-1 holds 10.4.1.20.
    let pos = |ty: &str, pod: &str, ip: Option<&str>| {
        tail.iter()
            .position(|r| r.0 == ty && r.1 == pod && r.2.as_deref() == ip)
            .unwrap()
    };
    assert!(
        pos("DELETED", "shop/web-7d4b9-r5t9w", Some("10.4.2.14"))
            < pos("MODIFIED", "shop/worker-6c8d9-b7n4k", Some("10.4.2.14"))
    );
    let deleted_job =
        &events[initial + pos("DELETED", "ops/backup-29919420-h7x4q", Some("10.4.1.20"))].1;
    assert_eq!(
        deleted_job
            .metadata
            .deletion_timestamp
            .as_ref()
            .unwrap()
            .0
            .to_string(),
        "2026-11-20T10:24:49Z"
    );
}

// ------------------------------------------------------------------ raw wire format

/// One request on a fresh connection; everything the server sends until it closes.
fn raw_request(api: &FakeKubeApi, method: &str, target: &str) -> (String, Vec<u8>) {
    use std::io::{Read, Write};
    let addr = api.url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: application/json\r\n\r\n"
    )
    .unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)
        .expect("server closes the connection");
    let split = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    (
        String::from_utf8(buf[..split].to_vec()).unwrap(),
        buf[split + 4..].to_vec(),
    )
}

/// Decodes a chunked body: (chunks, whether the terminating zero chunk came).
fn dechunk(mut body: &[u8]) -> (Vec<String>, bool) {
    let mut chunks = Vec::new();
    loop {
        let Some(eol) = body.windows(2).position(|w| w == b"\r\n") else {
            assert!(body.is_empty(), "trailing garbage {body:?}");
            return (chunks, false);
        };
        let size = usize::from_str_radix(std::str::from_utf8(&body[..eol]).unwrap(), 16).unwrap();
        body = &body[eol + 2..];
        if size == 0 {
            assert_eq!(body, b"\r\n");
            return (chunks, true);
        }
        chunks.push(String::from_utf8(body[..size].to_vec()).unwrap());
        assert_eq!(&body[size..size + 2], b"\r\n");
        body = &body[size + 2..];
    }
}

#[test]
fn kube_api_raw_wire_format() {
    // Everything in the scenario is already due: lines go out at once, the error window
    // (until t+12) has passed before the first request.
    let t0 = t0_ahead(-100);
    let api = FakeKubeApi::start(&k8s_fixtures().join("handover"), t0);

    let (head, body) = raw_request(&api, "GET", "/api/v1/pods?limit=500");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let headers: Vec<&str> = head.split("\r\n").collect();
    assert!(
        headers.contains(&"Content-Type: application/json"),
        "{head}"
    );
    assert!(headers.contains(&"Connection: close"), "{head}");
    assert!(headers.contains(&format!("Content-Length: {}", body.len()).as_str()));
    let body = String::from_utf8(body).unwrap();
    assert!(
        body.ends_with("}\n") && body.matches('\n').count() == 1,
        "compact, one line"
    );
    assert!(!body.contains("{{"), "placeholders left");
    let created = Timestamp::from_second(t0 - 301).unwrap().to_string();
    assert!(body.contains(&format!("\"creationTimestamp\":\"{created}\"")));

    // "end": "drop": chunked, one event line per chunk, no terminating chunk.
    let started = Instant::now();
    let (head, body) = raw_request(&api, "GET", "/api/v1/pods?watch=true&resourceVersion=1000");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "past lines must go out at once"
    );
    assert!(
        head.split("\r\n")
            .any(|h| h == "Transfer-Encoding: chunked"),
        "{head}"
    );
    assert!(!head.contains("Content-Length"));
    let (chunks, terminated) = dechunk(&body);
    assert!(!terminated, "a dropped watch must not end cleanly");
    let types: Vec<String> = chunks
        .iter()
        .map(|c| {
            assert!(c.ends_with('\n') && c.matches('\n').count() == 1, "{c:?}");
            let v: Value = serde_json::from_str(c).unwrap();
            v["type"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(
        types,
        ["MODIFIED", "DELETED", "ADDED", "MODIFIED", "BOOKMARK"]
    );
    api.wait_for_step("pods-watch-1", Duration::from_secs(1));

    // The error window passed without a request: skipped. "end": "close" ends cleanly.
    let (head, body) = raw_request(&api, "GET", "/api/v1/pods?watch=true&resourceVersion=1011");
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
    let (chunks, terminated) = dechunk(&body);
    assert!(terminated, "a closed watch ends with the zero chunk");
    assert_eq!(chunks.len(), 1);
    let status: Value = serde_json::from_str(&chunks[0]).unwrap();
    assert_eq!(status["type"], "ERROR");
    assert_eq!(status["object"]["code"], 410);
    api.wait_for_step("pods-watch-410", Duration::from_secs(1));
    let skipped = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        api.wait_for_step("pods-watch-500", Duration::from_secs(5))
    }));
    assert!(
        skipped.is_err(),
        "a skipped error step must not count as served"
    );

    // Fallback answers are Status objects with "code", sized by Content-Length.
    for (method, target, code, reason) in [
        ("GET", "/api/v1/pods?watch=true", 500, "InternalError"),
        ("GET", "/api/v1/secrets", 404, "NotFound"),
        (
            "DELETE",
            "/api/v1/namespaces/shop/pods/cache-0",
            405,
            "MethodNotAllowed",
        ),
    ] {
        let (head, body) = raw_request(&api, method, target);
        assert!(head.starts_with(&format!("HTTP/1.1 {code} ")), "{head}");
        let length = format!("Content-Length: {}", body.len());
        assert!(head.split("\r\n").any(|h| h == length), "{head}");
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            (&v["kind"], &v["status"], &v["code"], &v["reason"]),
            (
                &Value::from("Status"),
                &Value::from("Failure"),
                &Value::from(code),
                &Value::from(reason)
            ),
            "{v}"
        );
    }
    assert_eq!(api.unscripted().len(), 3);
    assert_eq!(
        api.requests()[..2],
        [
            "GET /api/v1/pods?limit=500",
            "GET /api/v1/pods?watch=true&resourceVersion=1000"
        ]
    );
}
