//! The store over time: `hawking serve` merges closed hours in the background while queries
//! keep answering whole; `hawking store compact` killed mid-way leaves every hour either as
//! it was or merged, with no row lost or doubled; `hawking store prune` drops exactly the
//! expired hours; `hawking store stats` says what is where.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use serde_json::Value;

use crate::support::{
    Hawking, StoreArg, hawking_bin, hawking_over, kill_after_line, rfc3339, send_ipfix, sql_i64,
};

/// 2026-11-20T00:00:00Z.
const DAY: i64 = 1_795_132_800;

/// `per_hour` flows in each of `hours` hours from DAY, shifted by `round` so every round's
/// flows are new.
fn flows(hours: i64, per_hour: i64, round: i64) -> Vec<FlowRecord> {
    let step = 3_600_000_000 / per_hour;
    (0..hours * per_hour)
        .map(|i| {
            let start = DAY * 1_000_000
                + (i / per_hour) * 3_600_000_000
                + (i % per_hour) * step
                + round * 1000;
            FlowRecord {
                flow_start: start,
                flow_end: start + 1_000_000,
                src_ip: parse_ip("10.4.1.10").unwrap(),
                dst_ip: parse_ip("93.184.216.34").unwrap(),
                src_port: 30000 + (i % 20000) as u16,
                dst_port: 443,
                protocol: 6,
                tcp_flags: 0x1b,
                bytes: 1000 + i as u64 + round as u64,
                packets: 2,
                sampling_rate: 1,
                in_if: 1,
                out_if: 2,
            }
        })
        .collect()
}

/// `hawking store stats --json` rows.
fn stats(data: &(impl StoreArg + ?Sized), extra: &[&str]) -> Vec<Value> {
    let out = hawking_over(data, &["store", "stats", "--json"])
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Per flows hour: (files, compacted files, rows).
fn flow_hours(data: &(impl StoreArg + ?Sized)) -> Vec<(u64, u64, u64)> {
    stats(data, &["--table", "flows"])
        .iter()
        .map(|h| {
            (
                h["files"].as_u64().unwrap(),
                h["compacted_files"].as_u64().unwrap(),
                h["rows"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// Serves a store of `hours` hours with `rounds` files per hour (compaction off).
fn store_with_small_files(data: &Path, config: &Path, hours: i64, per_hour: i64, rounds: i64) {
    std::fs::write(config, "[store.compaction]\nenabled = false\n").unwrap();
    let hawking = Hawking::start(data, &["--config", config.to_str().unwrap()]);
    for round in 0..rounds {
        send_ipfix(hawking.netflow, "127.0.0.1", &flows(hours, per_hour, round));
        hawking.wait_metric(
            "hawking_store_rows_written_total",
            &[("table", "flows")],
            ((round + 1) * hours * per_hour) as f64,
        );
    }
    hawking.stop();
}

#[test]
fn serve_compacts_closed_hours_while_queries_answer_whole() {
    let tmp = tempfile::tempdir().unwrap();
    compacts_while_queries_answer(&tmp.path().join("data"), tmp.path());
}

/// The same in a bucket of an S3 server, where an hour is replaced by a marker object.
#[test]
fn serve_compacts_closed_hours_in_a_bucket_while_queries_answer_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    compacts_while_queries_answer(&garage.store("upkeep"), tmp.path());
}

fn compacts_while_queries_answer(data: &(impl StoreArg + ?Sized), tmp: &Path) {
    let config = tmp.join("hawking.toml");
    // Every ended hour is closed at once, a pass every second.
    std::fs::write(
        &config,
        "[store.compaction]\nsettle_secs = 0\ninterval_secs = 1\n",
    )
    .unwrap();
    let hawking = Hawking::start(data, &["--config", config.to_str().unwrap()]);
    let (hours, per_hour, rounds) = (3, 400, 4);
    for round in 0..rounds {
        send_ipfix(hawking.netflow, "127.0.0.1", &flows(hours, per_hour, round));
        hawking.wait_metric(
            "hawking_store_rows_written_total",
            &[("table", "flows")],
            ((round + 1) * hours * per_hour) as f64,
        );
    }
    let total = hours * per_hour * rounds;
    let bytes: i64 = (0..rounds)
        .flat_map(|r| flows(hours, per_hour, r))
        .map(|f| f.bytes as i64)
        .sum();
    // Until every hour is one compacted file, queries racing the merges see every row once.
    let start = Instant::now();
    let mut queries = 0;
    loop {
        assert_eq!(sql_i64(data, "SELECT count(*) FROM flows"), total);
        assert_eq!(sql_i64(data, "SELECT sum(bytes) FROM flows"), bytes);
        queries += 1;
        let by_hour = flow_hours(data);
        if by_hour.len() == hours as usize && by_hour.iter().all(|h| h.0 == 1 && h.1 == 1) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "hours not compacted: {by_hour:?}"
        );
    }
    assert!(queries >= 1);
    assert!(
        hawking.metric("hawking_store_hours_compacted_total", &[("table", "flows")]) >= 3.0,
        "compactions show in /metrics"
    );
    let rows: Vec<u64> = flow_hours(data).iter().map(|h| h.2).collect();
    assert_eq!(rows, vec![(per_hour * rounds) as u64; hours as usize]);
    hawking.stop();
}

#[test]
fn a_compaction_killed_midway_leaves_every_hour_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("hawking.toml");
    let (hours, per_hour, rounds) = (48, 200, 3);
    store_with_small_files(&data, &config, hours, per_hour, rounds);
    assert!(flow_hours(&data).iter().all(|h| h.0 == 3 && h.1 == 0));

    kill_after_line(
        Command::new(hawking_bin())
            .args(["store", "compact", "--before", "now", "--data"])
            .arg(&data),
        "compacted hour",
        "merging an hour",
    );
    let by_hour = flow_hours(&data);
    assert_eq!(by_hour.len(), hours as usize);
    let merged = by_hour.iter().filter(|h| (h.0, h.1) == (1, 1)).count();
    for h in &by_hour {
        assert_eq!(
            h.2,
            (per_hour * rounds) as u64,
            "no row lost or doubled: {h:?}"
        );
        assert!(
            (h.0, h.1) == (1, 1) || (h.0, h.1) == (3, 0),
            "an hour half merged: {h:?}"
        );
    }
    assert!(
        (1..hours as usize).contains(&merged),
        "killed mid-way: {merged} merged"
    );
    assert_eq!(
        sql_i64(&data, "SELECT count(*) FROM flows"),
        hours * per_hour * rounds
    );

    // A second run finishes the rest and leaves the merged hours alone.
    let out = Command::new(hawking_bin())
        .args(["store", "compact", "--before", "now", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(
        text.contains(&format!("{} hours compacted", hours as usize - merged)),
        "{text}"
    );
    assert!(flow_hours(&data).iter().all(|h| (h.0, h.1) == (1, 1)));
    assert_eq!(
        sql_i64(&data, "SELECT count(*) FROM flows"),
        hours * per_hour * rounds
    );
}

#[test]
fn prune_drops_exactly_the_expired_hours() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let config = tmp.path().join("hawking.toml");
    store_with_small_files(&data, &config, 6, 50, 1);
    // Two days kept, as of 2026-11-22 03:20: the horizon is 2026-11-20 03:00, so hours
    // 00:00, 01:00 and 02:00 go; 03:00, 04:00 and 05:00 stay.
    let out = Command::new(hawking_bin())
        .args(["store", "prune", "--flows-days", "2", "--now"])
        .arg(rfc3339(DAY + 2 * 86_400 + 3 * 3600 + 1200))
        .arg("--data")
        .arg(&data)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("3 hours pruned"), "{text}");
    let left: Vec<String> = stats(&data, &["--table", "flows"])
        .iter()
        .map(|h| h["hour"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        left,
        ["03", "04", "05"].map(|h| format!("2026-11-20T{h}:00:00Z"))
    );
    assert_eq!(
        sql_i64(
            &data,
            &format!(
                "SELECT count(*) FROM flows WHERE flow_start < TIMESTAMP '{}'",
                rfc3339(DAY + 3 * 3600)
            )
        ),
        0
    );
    assert_eq!(sql_i64(&data, "SELECT count(*) FROM flows"), 150);
    // Zero days is refused, naming the table.
    let out = Command::new(hawking_bin())
        .args(["store", "prune", "--flows-days", "0", "--data"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("flows"));
}

/// In a bucket one process maintains the store: `hawking store compact` is refused while a
/// `serve` holds the maintenance lease, and works once that `serve` has stopped and given it
/// back.
#[test]
fn in_a_bucket_store_compact_waits_for_the_serve_that_maintains_it() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    let data = garage.store("lease");
    let config = tmp.path().join("hawking.toml");
    // Passes every second; no hour is closed yet, so the serve compacts nothing itself.
    std::fs::write(
        &config,
        "[store.compaction]\nsettle_secs = 86400000\ninterval_secs = 1\n",
    )
    .unwrap();
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    send_ipfix(hawking.netflow, "127.0.0.1", &flows(2, 100, 0));
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        200.0,
    );
    send_ipfix(hawking.netflow, "127.0.0.1", &flows(2, 100, 1));
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        400.0,
    );
    // The serve's first pass takes the lease: one interval, then 5 s to read it back.
    std::thread::sleep(Duration::from_secs(8));
    let compact = || {
        hawking_over(
            &data,
            &["store", "compact", "--before", &rfc3339(DAY + 2 * 3600)],
        )
        .output()
        .unwrap()
    };
    let refused = compact();
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("another process maintains this store"),
        "{err}"
    );
    assert!(
        flow_hours(&data).iter().all(|h| h.1 == 0),
        "nothing compacted"
    );
    hawking.stop();
    let done = compact();
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let hours = flow_hours(&data);
    assert_eq!(
        hours,
        vec![(1, 1, 200), (1, 1, 200)],
        "both hours merged, every row kept"
    );
    assert_eq!(sql_i64(&data, "SELECT count(*) FROM flows"), 400);
}
