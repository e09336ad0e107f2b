//! Point-in-time attribution end to end: `hawking serve` watches a (recorded) Kubernetes API
//! server through kube-rs while flows arrive over IPFIX; an address handed from one pod to
//! another, a completed Job pod whose address was reused, a dropped watch with a 410 Gone
//! relist, and bookmarks. Flows before and after the hand-over name different pods; flows in
//! the gap are unknown. The same answers survive a restart and come from `hawking whois`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{ExporterClock, PacketBuilder, TimeEncoding, flow_template};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use serde_json::Value;

use crate::kube_api::FakeKubeApi;
use crate::support::*;

/// A flow to send and what its endpoints must be attributed to.
struct Case {
    name: &'static str,
    src: &'static str,
    dst: &'static str,
    dst_port: u16,
    /// Seconds relative to the scenario's t0.
    from: f64,
    to: f64,
    /// (attribution, pod or service or node name, workload) for src and dst.
    want_src: (&'static str, Option<&'static str>, Option<&'static str>),
    want_dst: (&'static str, Option<&'static str>, Option<&'static str>),
}

fn cases() -> Vec<Case> {
    let ext = ("external", None, None);
    vec![
        Case {
            name: "before the hand-over",
            src: "10.4.1.10",
            dst: "93.184.216.34",
            dst_port: 443,
            from: -60.0,
            to: -30.0,
            want_src: ("pod", Some("web-7d4b9-abcde"), Some("web")),
            want_dst: ext,
        },
        Case {
            name: "after the hand-over",
            src: "10.4.1.10",
            dst: "93.184.216.34",
            dst_port: 443,
            from: 6.2,
            to: 6.8,
            want_src: ("pod", Some("web-7d4b9-fghij"), Some("web")),
            want_dst: ext,
        },
        Case {
            name: "spanning the hand-over",
            src: "10.4.1.10",
            dst: "93.184.216.34",
            dst_port: 443,
            from: 3.0,
            to: 6.0,
            want_src: ("ambiguous", None, None),
            want_dst: ext,
        },
        Case {
            name: "in the watch gap",
            src: "10.4.1.10",
            dst: "93.184.216.34",
            dst_port: 443,
            from: 9.0,
            to: 10.0,
            want_src: ("unknown", None, None),
            want_dst: ("unknown", None, None),
        },
        Case {
            name: "a pod created during the gap, in the gap",
            src: "10.4.2.30",
            dst: "10.96.10.10",
            dst_port: 80,
            from: 10.0,
            to: 11.0,
            want_src: ("unknown", None, None),
            want_dst: ("unknown", None, None),
        },
        Case {
            name: "a pod created during the gap, after the relist",
            src: "10.4.2.30",
            dst: "10.96.10.10",
            dst_port: 80,
            from: 20.0,
            to: 21.0,
            want_src: ("pod", Some("worker-6c8d9-zzzzz"), Some("worker")),
            want_dst: ("service", Some("web"), None),
        },
        Case {
            name: "the completed job pod while it ran",
            src: "10.4.1.20",
            dst: "203.0.113.10",
            dst_port: 443,
            from: -150.0,
            to: -140.0,
            want_src: ("pod", Some("backup-29400000-xk2lp"), Some("backup")),
            want_dst: ("service", Some("web"), None),
        },
        Case {
            name: "the job pod's address reused",
            src: "10.4.1.20",
            dst: "203.0.113.10",
            dst_port: 443,
            from: -50.0,
            to: -40.0,
            want_src: ("pod", Some("cache-0"), Some("cache")),
            want_dst: ("service", Some("web"), None),
        },
        Case {
            name: "dual-stack pod over IPv6",
            src: "fd00:10:4:2::5",
            dst: "2001:db8::1",
            dst_port: 443,
            from: -30.0,
            to: -20.0,
            want_src: ("pod", Some("api-5f6d7-qwert"), Some("api")),
            want_dst: ext,
        },
        Case {
            name: "a host-network pod's declared port",
            src: "10.4.2.5",
            dst: "192.168.10.11",
            dst_port: 10249,
            from: -20.0,
            to: -10.0,
            want_src: ("pod", Some("api-5f6d7-qwert"), Some("api")),
            want_dst: ("pod", Some("kube-proxy-n1abc"), Some("kube-proxy")),
        },
        Case {
            name: "a node address on another port",
            src: "10.4.2.5",
            dst: "192.168.10.11",
            dst_port: 22,
            from: -20.0,
            to: -10.0,
            want_src: ("pod", Some("api-5f6d7-qwert"), Some("api")),
            want_dst: ("ambiguous", None, None),
        },
        Case {
            // The watch broke at 8 s; changes of its last grace period (1 s) may never have
            // been delivered.
            name: "just before the watch broke",
            src: "10.4.1.10",
            dst: "93.184.216.34",
            dst_port: 443,
            from: 7.3,
            to: 7.7,
            want_src: ("unknown", None, None),
            want_dst: ("unknown", None, None),
        },
    ]
}

fn write_config(dir: &Path, api_url: &str) -> std::path::PathBuf {
    let path = dir.join("hawking.toml");
    std::fs::write(
        &path,
        format!(
            "[enricher]\ngrace_secs = 1.0\n\n[[enricher.clusters]]\nname = \"prod\"\napi_url = \"{api_url}\"\nexporters = [\"127.0.0.0/8\"]\nservice_cidrs = [\"10.96.0.0/12\"]\n"
        ),
    )
    .unwrap();
    path
}

fn send_cases(to: SocketAddr, t0_secs: i64, cases: &[Case]) {
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = ExporterClock {
        boot_ms: now_ms / 1000 * 1000 - 3_600_000,
        export_ms: now_ms / 1000 * 1000,
    };
    let socket = exporter_socket("127.0.0.1");
    for (ipv6, seq) in [(false, 0), (true, 1)] {
        let t = flow_template(300 + ipv6 as u16, ipv6, TimeEncoding::Milliseconds);
        let flows: Vec<FlowRecord> = cases
            .iter()
            .enumerate()
            .filter(|(_, c)| c.src.contains(':') == ipv6)
            .map(|(i, c)| FlowRecord {
                flow_start: t0_secs * 1_000_000 + (c.from * 1e6) as i64,
                flow_end: t0_secs * 1_000_000 + (c.to * 1e6) as i64,
                src_ip: parse_ip(c.src).unwrap(),
                dst_ip: parse_ip(c.dst).unwrap(),
                src_port: 40000 + i as u16,
                dst_port: c.dst_port,
                protocol: 6,
                tcp_flags: 0x1b,
                bytes: 1000,
                packets: 10,
                sampling_rate: 1,
                in_if: 1,
                out_if: 2,
            })
            .collect();
        let mut p = PacketBuilder::new(Version::Ipfix, clock, seq, 0);
        p.template(&t).flows(&t, clock, &flows);
        socket.send_to(&p.finish(), to).unwrap();
    }
}

fn check(data: &(impl StoreArg + ?Sized), cases: &[Case], when: &str) {
    let rows = sql(
        data,
        "SELECT src_port, src_attribution, src_pod, src_service, src_node, src_workload, src_candidates, src_cluster, \
                dst_attribution, dst_pod, dst_service, dst_node, dst_workload, dst_candidates \
         FROM flows ORDER BY src_port",
    );
    assert_eq!(rows.len(), cases.len(), "{when}: every flow stored once");
    for (i, c) in cases.iter().enumerate() {
        let r = rows
            .iter()
            .find(|r| r["src_port"] == 40000 + i as i64)
            .unwrap_or_else(|| panic!("{when}: {} missing", c.name));
        let s = |k: &str| r.get(k).and_then(Value::as_str).map(str::to_string);
        let side = |p: &str| {
            let name = s(&format!("{p}_pod"))
                .or_else(|| s(&format!("{p}_service")))
                .or_else(|| s(&format!("{p}_node")));
            (
                s(&format!("{p}_attribution")).unwrap_or_default(),
                name,
                s(&format!("{p}_workload")),
            )
        };
        let want = |w: (&str, Option<&str>, Option<&str>)| {
            (
                w.0.to_string(),
                w.1.map(str::to_string),
                w.2.map(str::to_string),
            )
        };
        let (src, dst) = (side("src"), side("dst"));
        // A service endpoint has no workload; a node endpoint's name is the node.
        assert_eq!(
            (src.0.clone(), src.1.clone()),
            (want(c.want_src).0, want(c.want_src).1),
            "{when}: src of {}",
            c.name
        );
        if c.want_src.2.is_some() {
            assert_eq!(
                src.2,
                want(c.want_src).2,
                "{when}: src workload of {}",
                c.name
            );
        }
        assert_eq!(
            (dst.0.clone(), dst.1.clone()),
            (want(c.want_dst).0, want(c.want_dst).1),
            "{when}: dst of {}",
            c.name
        );
        if c.want_dst.2.is_some() {
            assert_eq!(
                dst.2,
                want(c.want_dst).2,
                "{when}: dst workload of {}",
                c.name
            );
        }
        if src.0 == "ambiguous" {
            assert!(
                s("src_candidates")
                    .is_some_and(|c| c.contains("shop/web-7d4b9-abcde")
                        && c.contains("shop/web-7d4b9-fghij")),
                "{when}: candidates of {}: {r:?}",
                c.name
            );
        }
        if src.0 == "pod" {
            assert_eq!(s("src_cluster").as_deref(), Some("prod"));
        }
    }
}

#[test]
fn flows_attribute_to_whoever_held_the_address_at_their_own_time() {
    let tmp = tempfile::tempdir().unwrap();
    attribute_over(&tmp.path().join("data"), tmp.path());
}

/// The same, with the store in a bucket of an S3 server: ingest writes objects, and
/// `hawking sql`, `whois` and the restarted enricher's history read them back.
#[test]
fn flows_attribute_the_same_with_the_store_on_an_s3_server() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    attribute_over(&garage.store("attribution"), tmp.path());
}

fn attribute_over(data: &(impl StoreArg + ?Sized), tmp: &Path) {
    let t0 = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 2;
    let api = FakeKubeApi::start(&fixtures().join("k8s/handover"), t0);
    let config = write_config(tmp, &api.url);
    let hawking = Hawking::start(data, &["--config", config.to_str().unwrap()]);
    // The watch fails at t0+8 and its retries (backing off from 0.5 s) reach the 410 and the
    // relist at about t0+15.5.
    api.wait_for_step("pods-relist", Duration::from_secs(30));
    let wait = (t0 + 22)
        - SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
    std::thread::sleep(Duration::from_secs(wait.max(0) as u64));
    let cases = cases();
    send_cases(hawking.netflow, t0, &cases);
    hawking.wait_metric("hawking_flows_total", &[], cases.len() as f64);
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        cases.len() as f64,
    );
    // The watch is back after the relist.
    hawking.wait_metric_eq(
        "hawking_history_cluster_in_gap",
        &[("cluster", "prod")],
        0.0,
    );
    hawking.stop();
    check(data, &cases, "live");

    // The history is in the store: the gap, and the hand-over, by SQL.
    let gaps = sql(
        data,
        "SELECT reason, gap_start, gap_end FROM history_gaps ORDER BY gap_start",
    );
    assert!(
        gaps.iter().any(|g| g["reason"]
            .as_str()
            .is_some_and(|r| r.contains("watch failed") || r.contains("410"))),
        "{gaps:?}"
    );
    let holders = sql(
        data,
        "SELECT name FROM ip_history WHERE ip = '10.4.1.10' ORDER BY valid_from",
    );
    let names: Vec<&str> = holders
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["web-7d4b9-abcde", "web-7d4b9-fghij"]);

    // whois answers from the same history.
    for (offset, want) in [(-60i64, "web-7d4b9-abcde"), (7, "web-7d4b9-fghij")] {
        let out = whois(data, "10.4.1.10", t0 + offset);
        assert_eq!(out["attribution"], "pod", "{out}");
        assert_eq!(out["owner"]["name"], want, "{out}");
        assert_eq!(out["owner"]["workload"], "web");
    }
    let in_gap = whois(data, "10.4.1.10", t0 + 10);
    assert_eq!(in_gap["attribution"], "unknown", "{in_gap}");
    assert!(
        in_gap["gaps"].as_array().is_some_and(|g| !g.is_empty()),
        "the gap is named: {in_gap}"
    );

    // After a restart the stored history attributes the same way (the watch resumes too).
    let api2 = FakeKubeApi::start(&fixtures().join("k8s/handover"), t0);
    let config2 = write_config(tmp, &api2.url);
    let restarted = Hawking::start(data, &["--config", config2.to_str().unwrap()]);
    let again: Vec<Case> = cases.into_iter().filter(|c| c.to < 0.0).collect();
    let port = restarted.netflow;
    std::thread::sleep(Duration::from_millis(1500));
    let before = sql_i64(data, "SELECT count(*) FROM flows");
    send_cases(port, t0, &again);
    restarted.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        again.len() as f64,
    );
    restarted.stop();
    let after = sql(
        data,
        &format!(
            "SELECT src_attribution, src_pod FROM flows ORDER BY received_at DESC, src_port LIMIT {}",
            again.len()
        ),
    );
    assert_eq!(
        sql_i64(data, "SELECT count(*) FROM flows"),
        before + again.len() as i64
    );
    let mut got: Vec<(String, String)> = after
        .iter()
        .map(|r| {
            (
                r["src_attribution"].as_str().unwrap_or("").to_string(),
                r["src_pod"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    got.sort();
    let mut want: Vec<(String, String)> = again
        .iter()
        .map(|c| {
            (
                c.want_src.0.to_string(),
                c.want_src.1.unwrap_or("").to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want, "after a restart");
}

fn whois(data: &(impl StoreArg + ?Sized), ip: &str, at_secs: i64) -> Value {
    whois_json(data, ip, &rfc3339(at_secs))
}
