//! goflow2 in: an existing goflow2 deployment's output (its JSON and text lines, as its
//! file transport writes them) read by `hawking serve --goflow2-file`, stored and attributed
//! at each flow's own time, with the device goflow2 names as the flow's exporter.

use serde_json::json;

use crate::replay::{DAY, import, recording};
use crate::support::{Hawking, sql, sql_i64};

#[test]
fn goflow2_lines_are_stored_and_attributed_as_the_devices_exports() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pods = tmp.path().join("pods.json");
    recording(&pods);
    import(&data, &pods, DAY + 86_400);
    let config = tmp.path().join("hawking.toml");
    // The router goflow2 collects from (127.0.0.2) belongs to the cluster; the file's own
    // stand-in exporter (127.0.0.1, the default) is never what a flow is stored under.
    std::fs::write(
        &config,
        "[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
         exporters = [\"127.0.0.2/32\"]\npod_cidrs = [\"10.4.0.0/16\"]\n",
    )
    .unwrap();
    let ns = |s: i64| (DAY + s) as u128 * 1_000_000_000;
    let mut lines = String::new();
    for i in 0..300i64 {
        let line = json!({
            "type": "NETFLOW_V9", "time_received_ns": ns(i + 60), "sequence_num": i,
            "sampling_rate": 0, "sampler_address": "127.0.0.2",
            "time_flow_start_ns": ns(i), "time_flow_end_ns": ns(i + 1),
            "bytes": 1000 + i, "packets": 2, "src_addr": "10.4.1.10", "dst_addr": "93.184.216.34",
            "etype": "IPv4", "proto": "TCP", "src_port": 30000 + i, "dst_port": 443,
            "in_if": 1, "out_if": 2, "tcp_flags": 27, "observation_domain_id": 9,
            "next_hop": "", "as_path": [], "bgp_communities": []
        });
        lines.push_str(&line.to_string());
        lines.push('\n');
    }
    // sFlow samples as `-format=text` writes them: 1 in 100, no flow times of their own.
    for i in 0..100i64 {
        lines.push_str(&format!(
            "type=SFLOW_5 time_received_ns={} sequence_num={i} sampling_rate=100 \
             sampler_address=127.0.0.2 time_flow_start_ns={} time_flow_end_ns={} bytes=1500 \
             packets=1 src_addr=93.184.216.34 dst_addr=10.4.1.10 etype=IPv4 proto=UDP \
             src_port=53 dst_port={} in_if=2 out_if=1 next_hop= as_path=[] mpls_ip=[]\n",
            ns(400 + i),
            ns(400 + i),
            ns(400 + i),
            40000 + i
        ));
    }
    // A line goflow2 never wrote: counted, not stored.
    lines.push_str("{\"type\":\"IPFIX\",\"src_addr\":\"\"}\n");
    let file = tmp.path().join("goflow2.log");
    std::fs::write(&file, lines).unwrap();
    let hawking = Hawking::start(
        &data,
        &[
            "--config",
            config.to_str().unwrap(),
            "--goflow2-file",
            file.to_str().unwrap(),
        ],
    );
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        400.0,
    );
    let rows = sql(
        &data,
        "SELECT source_kind, exporter, observation_domain, count(*) AS n, sum(bytes) AS bytes, \
         sum(packets) AS packets, min(sampling_rate) AS rate, \
         sum(CASE WHEN src_pod = 'web-5f6d7c8b9-k8m2p' OR dst_pod = 'web-5f6d7c8b9-k8m2p' \
         THEN 1 ELSE 0 END) AS pod \
         FROM flows GROUP BY 1, 2, 3 ORDER BY 1",
    );
    let got: Vec<_> = rows
        .iter()
        .map(|r| {
            (
                r["source_kind"].as_str().unwrap().to_string(),
                r["exporter"].as_str().unwrap().to_string(),
                r["observation_domain"].as_i64().unwrap(),
                r["n"].as_i64().unwrap(),
                r["bytes"].as_i64().unwrap(),
                r["packets"].as_i64().unwrap(),
                r["rate"].as_i64().unwrap(),
                r["pod"].as_i64().unwrap(),
            )
        })
        .collect();
    let v9_bytes: i64 = (0..300).map(|i| 1000 + i).sum();
    assert_eq!(
        got,
        [
            (
                "netflow_v9".into(),
                "127.0.0.2".into(),
                9,
                300,
                v9_bytes,
                600,
                1,
                300
            ),
            (
                "sflow".into(),
                "127.0.0.2".into(),
                0,
                100,
                100 * 1500 * 100,
                100 * 100,
                100,
                100
            ),
        ]
    );
    assert_eq!(
        sql_i64(
            &data,
            "SELECT count(*) FROM flows WHERE src_attribution = 'pod' AND src_workload = 'web' \
             AND dst_attribution = 'external'"
        ),
        300,
        "the pod's flows out, attributed at their own time"
    );
    let dropped = crate::support::metric_sum(
        &hawking.metrics_text(),
        "hawking_component_dropped_events_total",
        &[("reason", "bad_address")],
    );
    assert_eq!(dropped, 1.0);
    hawking.stop();
}
