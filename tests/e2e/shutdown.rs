//! Stopping loses nothing that was accepted: SIGTERM while an exporter is mid-burst drains
//! the socket, hands over the last batch and commits it before the process exits.

use crate::support::*;
use std::process::Command;

#[test]
fn sigterm_during_a_burst_commits_every_accepted_flow() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A long flush interval: nothing is committed before the signal, so everything counted
    // below was committed by the shutdown path.
    let hawking = Hawking::start(&data, &["--flush-interval", "3600"]);
    let sender = Command::new(hawking_bin())
        .args([
            "flowgen",
            "--to",
            &hawking.netflow.to_string(),
            "--protocol",
            "ipfix",
            "--flows",
            "200000",
            "--rate",
            "100000",
        ])
        // It fails once the collector is gone (connection refused): expected here.
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    hawking.wait_metric("hawking_flows_total", &[], 20_000.0);
    let report = hawking.stop();
    let mut sender = sender;
    let _ = sender.kill();
    let _ = sender.wait();
    assert!(report.flows >= 20_000, "{report:?}");
    assert_eq!(report.rows_committed, report.flows, "accepted = committed");
    assert_eq!(
        sql_i64(&data, "SELECT count(*) FROM flows") as u64,
        report.flows
    );
    // The data is readable in full: every row has its exporter and times.
    assert_eq!(
        sql_i64(
            &data,
            "SELECT count(*) FROM flows WHERE exporter = '127.0.0.1' AND flow_end >= flow_start"
        ) as u64,
        report.flows
    );
}
