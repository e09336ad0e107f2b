//! Source NAT end to end. A firewall outside the cluster sees only the node's address and a
//! masqueraded port; NAT session events (RFC 8158 IPFIX records, from a NAT gateway or from
//! `hawking nat-agent` following conntrack on the node) map those flows back to the pod, at
//! each flow's own time. The translations are queryable as `nat_history` and survive a
//! restart.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hawking_collector::decode::netflow::wire::Version;
use hawking_collector::export::{
    ExporterClock, PacketBuilder, TimeEncoding, flow_template, nat_event_template,
};
use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use hawking_schemas::nat::{NatEvent, NatEventKind};

use crate::kube_api::FakeKubeApi;
use crate::netns::SnatNode;
use crate::recorded_cluster::import;
use crate::support::{
    Hawking, exporter_socket, fixtures, hawking_bin, require_tool, softflowd_export, sql,
};

/// 2026-11-20T10:10:00Z, inside the demo recording (fixtures/k8s/import), where pod
/// shop/api-5f6d7-qwert holds 10.4.2.5 on node-2 (192.168.10.12).
const T: i64 = 1_795_169_400;
const NODE: &str = "192.168.10.12";
const REMOTE: &str = "93.184.216.34";

fn ip(s: &str) -> u128 {
    parse_ip(s).unwrap()
}

fn clock() -> ExporterClock {
    ExporterClock {
        boot_ms: (T - 3600) * 1000,
        export_ms: (T + 900) * 1000,
    }
}

/// The node's NAT reports the api pod's connection 10.4.2.5:40000 → REMOTE:443 as
/// NODE:61000 from T to T+120 s.
fn send_translation(to: SocketAddr) {
    let session = |kind, at_secs: i64| NatEvent {
        at: at_secs * 1_000_000,
        kind: Some(kind),
        protocol: 6,
        inside_ip: ip("10.4.2.5"),
        inside_port: 40000,
        outside_ip: ip(NODE),
        outside_port: 61000,
        remote_ip: ip(REMOTE),
        remote_port: 443,
        ..Default::default()
    };
    let t = nat_event_template(256, false);
    let mut p = PacketBuilder::new(Version::Ipfix, clock(), 0, 1);
    p.template(&t).nat_events(
        &t,
        &[
            session(NatEventKind::Create, T),
            session(NatEventKind::Delete, T + 120),
        ],
    );
    exporter_socket("127.0.0.7")
        .send_to(&p.finish(), to)
        .unwrap();
}

/// Flows as the firewall (127.0.0.9) saw them: (src, sport, dst, dport, start, end) with
/// times in seconds after T.
fn send_firewall_flows(to: SocketAddr, flows: &[(&str, u16, &str, u16, i64, i64)]) {
    let t = flow_template(300, false, TimeEncoding::Milliseconds);
    let records: Vec<FlowRecord> = flows
        .iter()
        .map(|&(src, sport, dst, dport, from, until)| FlowRecord {
            flow_start: (T + from) * 1_000_000,
            flow_end: (T + until) * 1_000_000,
            src_ip: ip(src),
            dst_ip: ip(dst),
            src_port: sport,
            dst_port: dport,
            protocol: 6,
            bytes: 4096,
            packets: 8,
            sampling_rate: 1,
            ..Default::default()
        })
        .collect();
    let mut p = PacketBuilder::new(Version::Ipfix, clock(), 0, 0);
    p.template(&t).flows(&t, clock(), &records);
    exporter_socket("127.0.0.9")
        .send_to(&p.finish(), to)
        .unwrap();
}

fn config(dir: &Path) -> std::path::PathBuf {
    let config = dir.join("hawking.toml");
    std::fs::write(
        &config,
        // The NAT and the firewall export from loopback: a cluster lists its NATs, or their
        // translations are dropped.
        "[enricher]\ngrace_secs = 0.5\n\n[[enricher.clusters]]\nname = \"demo\"\nwatch = false\n\
         pod_cidrs = [\"10.4.0.0/16\"]\nexporters = [\"127.0.0.0/8\"]\n",
    )
    .unwrap();
    config
}

/// (src_port, dst_port, src side, dst side) per flow, each side as "attribution pod", by
/// start time (the node's side first).
fn attributed(data: &Path, filter: &str) -> Vec<(i64, i64, String, String)> {
    sql(
        data,
        &format!(
            "SELECT src_port, dst_port, \
                    src_attribution || ' ' || coalesce(src_pod, '-') AS s, \
                    dst_attribution || ' ' || coalesce(dst_pod, '-') AS d \
             FROM flows WHERE {filter} ORDER BY flow_start, src_port DESC"
        ),
    )
    .into_iter()
    .map(|r| {
        (
            r["src_port"].as_i64().unwrap(),
            r["dst_port"].as_i64().unwrap(),
            r["s"].as_str().unwrap().to_string(),
            r["d"].as_str().unwrap().to_string(),
        )
    })
    .collect()
}

fn wait_for(hawking: &Hawking, metric: &str, labels: &[(&str, &str)], n: f64) {
    hawking.wait_metric(metric, labels, n);
}

#[test]
fn flows_seen_outside_the_node_are_attributed_through_nat_session_events() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    import(&data, "pods-snapshot.json");
    import(&data, "pods-watch.json");
    let config = config(tmp.path());
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    send_translation(hawking.netflow);
    wait_for(
        &hawking,
        "hawking_netflow_nat_events_total",
        &[("outcome", "accepted")],
        2.0,
    );
    send_firewall_flows(
        hawking.netflow,
        &[
            // The pod's connection, both directions.
            (NODE, 61000, REMOTE, 443, 1, 90),
            (REMOTE, 443, NODE, 61000, 1, 90),
            // The same outside port towards another remote end: another session.
            (NODE, 61000, "1.1.1.1", 443, 10, 20),
            // The same 5-tuple long after the session closed.
            (NODE, 61000, REMOTE, 443, 600, 610),
        ],
    );
    wait_for(&hawking, "hawking_flows_total", &[], 4.0);
    hawking.stop();

    let api = "snat api-5f6d7-qwert";
    let flows = attributed(&data, "exporter = '127.0.0.9'");
    assert_eq!(flows.len(), 4, "{flows:#?}");
    assert_eq!(
        (flows[0].2.as_str(), flows[1].3.as_str()),
        (api, api),
        "{flows:#?}"
    );
    assert!(flows[0].2 != flows[1].2, "{flows:#?}");
    for other in &flows[2..] {
        assert!(!other.2.starts_with("snat"), "{flows:#?}");
    }
    assert_eq!(
        sql(
            &data,
            "SELECT src_workload, src_namespace, src_node FROM flows \
             WHERE src_attribution = 'snat'"
        ),
        sql(
            &data,
            "SELECT 'api' AS src_workload, 'shop' AS src_namespace, 'node-2' AS src_node"
        )
    );

    // The translation as SQL users see it.
    let nat = sql(
        &data,
        "SELECT cluster_name, protocol, inside_ip, inside_port, outside_ip, outside_port, \
                remote_ip, remote_port, CAST(valid_from AS VARCHAR) AS valid_from, \
                CAST(valid_to AS VARCHAR) AS valid_to, exporter FROM nat_history",
    );
    assert_eq!(nat.len(), 1, "{nat:#?}");
    let row = serde_json::Value::Object(nat[0].clone());
    assert_eq!(
        row,
        serde_json::json!({
            "cluster_name": "demo", "protocol": 6, "inside_ip": "10.4.2.5", "inside_port": 40000,
            "outside_ip": NODE, "outside_port": 61000, "remote_ip": REMOTE, "remote_port": 443,
            "valid_from": "2026-11-20T10:10:00Z", "valid_to": "2026-11-20T10:12:00Z",
            "exporter": "127.0.0.7"
        })
    );
    // Traffic by workload counts the pod's egress through the node.
    let by_workload = sql(
        &data,
        "SELECT direction, workload, attribution, sum(bytes) AS bytes FROM flows_by_workload \
         WHERE exporter = '127.0.0.9' AND workload = 'api' GROUP BY 1, 2, 3 ORDER BY 1",
    );
    assert_eq!(
        by_workload,
        sql(
            &data,
            "SELECT * FROM (VALUES ('egress', 'api', 'snat', 4096), ('ingress', 'api', 'snat', 4096)) \
             AS t(direction, workload, attribution, bytes)"
        )
    );

    // Forensics: who was behind the node's port then, on the command line and in SQL.
    let out = Command::new(hawking_bin())
        .args([
            "whois",
            NODE,
            "--port",
            "61000",
            "--protocol",
            "tcp",
            "--json",
            "--at",
        ])
        .arg("2026-11-20T10:11:00Z")
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let whois: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(whois["attribution"], "snat", "{whois:#}");
    assert_eq!(whois["owner"]["name"], "api-5f6d7-qwert", "{whois:#}");
    assert_eq!(whois["held_from"], "2026-11-20T09:20:05Z", "{whois:#}");
    assert_eq!(
        whois["via_snat"],
        serde_json::json!([{
            "inside_ip": "10.4.2.5", "inside_port": 40000, "remote_ip": REMOTE,
            "remote_port": 443, "valid_from": "2026-11-20T10:10:00Z",
            "valid_until": "2026-11-20T10:12:00Z", "nat": "127.0.0.7"
        }])
    );
    let whois_sql = |at: &str| {
        sql(
            &data,
            &format!(
                "SELECT attribution, coalesce(pod, '-') AS pod \
                 FROM whois('{NODE}', TIMESTAMP '{at}', NULL, 61000, 'tcp')"
            ),
        )
    };
    let (during, after) = (
        whois_sql("2026-11-20 10:11:00"),
        whois_sql("2026-11-20 10:30:00"),
    );
    assert_eq!(
        (during[0]["attribution"].as_str(), during[0]["pod"].as_str()),
        (Some("snat"), Some("api-5f6d7-qwert"))
    );
    assert_ne!(
        after[0]["attribution"], "snat",
        "after the session: {after:?}"
    );

    // After a restart, the stored translation still explains late flows of its session.
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    send_firewall_flows(hawking.netflow, &[(NODE, 61000, REMOTE, 443, 95, 110)]);
    wait_for(&hawking, "hawking_flows_total", &[], 1.0);
    hawking.stop();
    let late = attributed(
        &data,
        "exporter = '127.0.0.9' AND src_port = 61000 AND flow_start > '2026-11-20T10:11:34'",
    );
    assert_eq!(late.len(), 2, "{late:#?}");
    assert_eq!(late[0].2, api, "{late:#?}");
    assert_eq!(
        sql(&data, "SELECT translation_id FROM nat_history").len(),
        1
    );
}

/// Waits until `child` writes a line containing `needle` to stderr (it is ready), then keeps
/// draining its stderr so it never blocks on a full pipe.
fn wait_for_line(child: &mut std::process::Child, needle: &'static str) {
    use std::io::BufRead;
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut seen = String::new();
        for line in std::io::BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
        {
            if line.contains(needle) {
                let _ = tx.send(Ok(()));
            }
            seen.push_str(&line);
            seen.push('\n');
        }
        let _ = tx.send(Err(seen));
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(Ok(())) => {}
        other => panic!("never saw {needle:?}: {other:?}"),
    }
}

/// The fake API server's scenario for the namespaced node: fixtures/k8s/snat-node with the
/// namespaces' addresses filled in.
fn snat_node_scenario(dir: &Path, node: &SnatNode) -> std::path::PathBuf {
    let out = dir.join("snat-node");
    std::fs::create_dir_all(&out).unwrap();
    // The node's pod range: just the pod, as far as the history needs to know.
    let pod_cidr = format!("{}/32", node.pod_ip);
    for entry in std::fs::read_dir(fixtures().join("k8s/snat-node")).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path)
            .unwrap()
            .replace("{{pod_ip}}", &node.pod_ip.to_string())
            .replace("{{node_ip}}", &node.node_ext_ip.to_string())
            .replace("{{pod_cidr}}", &pod_cidr);
        std::fs::write(out.join(path.file_name().unwrap()), text).unwrap();
    }
    out
}

#[test]
fn a_masquerading_node_reported_by_nat_agent_attributes_outside_flows_to_its_pod() {
    for tool in ["tcpdump", "conntrack", "iptables", "softflowd"] {
        require_tool(tool);
    }
    let node = SnatNode::create("agent");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let t0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let api = FakeKubeApi::start(&snat_node_scenario(tmp.path(), &node), t0);
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[enricher]\ngrace_secs = 0.5\n\n[[enricher.clusters]]\nname = \"lab\"\n\
             api_url = \"{}\"\nexporters = [\"127.0.0.0/8\"]\n",
            api.url
        ),
    )
    .unwrap();
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    // The pod and the node are in the history once the watch has listed them.
    hawking.wait_metric("hawking_history_intervals", &[], 2.0);

    // Connections older than the agent: it finds them in the table; their end comes with no
    // destroy event (nf_conntrack_events=2, the default), so it sees them vanish instead.
    let older = node.pod_talks_to_ext(8444, 1);
    // The agent runs outside the node's namespace and follows its conntrack table.
    let mut agent = Command::new(hawking_bin())
        .args([
            "nat-agent",
            "--max-delay-ms",
            "20",
            "--resync-secs",
            "1",
            "--collector",
        ])
        .arg(hawking.netflow.to_string())
        .arg("--netns")
        .arg(node.netns_path(&node.node))
        .env("HAWKING_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_line(&mut agent, "following conntrack");
    // What the outside sees: the capture on the external namespace's interface.
    let pcap = tmp.path().join("outside.pcap");
    let mut capture = node.spawn(
        &node.ext,
        &[
            "tcpdump",
            "-n",
            "-U",
            "-s",
            "256",
            "-i",
            &node.ext_if,
            "-w",
            pcap.to_str().unwrap(),
        ],
    );
    wait_for_line(&mut capture, "listening on");
    let talks = node.pod_talks_to_ext(8443, 3);
    std::thread::sleep(Duration::from_millis(500));
    // Close the translations: their destroy events end them in nat_history. `conntrack -D`
    // reports on stderr whatever happens, so what is checked is the table itself: the
    // connections to port 8443 are in it before the flush and gone after it.
    let to_8443 = |ns: &str| -> usize {
        let listed = node.exec_ok(ns, &["conntrack", "-L"]);
        String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|l| l.contains(" dport=8443 "))
            .count()
    };
    let before_flush = to_8443(&node.node);
    assert!(
        before_flush >= talks.len(),
        "{before_flush} conntrack entries to port 8443 before the flush, {} connections made",
        talks.len()
    );
    let flushed = node.exec(&node.node, &["conntrack", "-D"]);
    assert!(
        flushed.status.success(),
        "conntrack -D: {}",
        String::from_utf8_lossy(&flushed.stderr)
    );
    assert_eq!(
        to_8443(&node.node),
        0,
        "conntrack -D left entries to port 8443"
    );
    std::thread::sleep(Duration::from_millis(2500));
    for child in [&mut capture, &mut agent] {
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    }
    capture.wait().unwrap();
    let agent_out = agent.wait_with_output().unwrap();
    let agent_report = String::from_utf8_lossy(&agent_out.stdout).to_string();
    assert!(agent_out.status.success(), "{agent_report}");

    softflowd_export(&pcap, 10, hawking.netflow, &[], tmp.path());
    hawking.wait_metric("hawking_flows_total", &[], (talks.len() * 2) as f64);
    hawking.stop();

    let node_ip = node.node_ext_ip.to_string();
    // Every flow the outside saw from the node's address is the pod's, through its translation.
    let egress = sql(
        &data,
        &format!(
            "SELECT protocol, src_port, src_attribution, src_namespace, src_pod, src_workload, \
                    src_node FROM flows WHERE src_ip = '{node_ip}' ORDER BY protocol, src_port"
        ),
    );
    assert_eq!(
        egress.len(),
        talks.len(),
        "{egress:#?}\nagent: {agent_report}"
    );
    for row in &egress {
        assert_eq!(
            (
                row["src_attribution"].as_str(),
                row["src_namespace"].as_str(),
                row["src_pod"].as_str(),
                row["src_workload"].as_str(),
                row["src_node"].as_str()
            ),
            (
                Some("snat"),
                Some("shop"),
                Some("checkout-5c9f7-x2kqp"),
                Some("checkout"),
                Some("node-a")
            ),
            "{row:?}"
        );
    }
    // The replies, towards the node's address, too.
    let replies = sql(
        &data,
        &format!(
            "SELECT count(*) AS n FROM flows WHERE dst_ip = '{node_ip}' \
             AND dst_attribution = 'snat' AND dst_workload = 'checkout'"
        ),
    );
    assert_eq!(replies[0]["n"], talks.len() as i64, "{replies:?}");

    // Each connection's translation, from the pod's own port, closed by its destroy event.
    let translations = sql(
        &data,
        &format!(
            "SELECT protocol, inside_port FROM nat_history WHERE inside_ip = '{}' \
             AND outside_ip = '{node_ip}' AND remote_ip = '{}' AND remote_port = 8443 \
             AND valid_to IS NOT NULL ORDER BY protocol, inside_port",
            node.pod_ip, node.ext_ip
        ),
    );
    let mut expected: Vec<(i64, i64)> = talks
        .iter()
        .map(|&(p, port)| (p as i64, port as i64))
        .collect();
    expected.sort();
    let got: Vec<(i64, i64)> = translations
        .iter()
        .map(|r| {
            (
                r["protocol"].as_i64().unwrap(),
                r["inside_port"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(got, expected, "agent: {agent_report}");
    let older_closed = sql(
        &data,
        &format!(
            "SELECT count(*) AS n FROM nat_history WHERE inside_ip = '{}' AND remote_port = 8444 \
             AND valid_to IS NOT NULL",
            node.pod_ip
        ),
    );
    assert_eq!(
        older_closed[0]["n"],
        older.len() as i64,
        "agent: {agent_report}"
    );
    assert_eq!(
        sql(
            &data,
            "SELECT count(*) AS n FROM nat_history WHERE valid_to IS NULL"
        )[0]["n"],
        0,
        "every translation closed"
    );
}
