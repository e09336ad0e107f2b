//! `hawking replay` over a stored store: two days of one pod's flows stored while the
//! history had a gap (the first recording stopped after half an hour: everything later was
//! `unknown`, both ends), then a recording that covers the gap is imported. `--diff` lists
//! exactly the gap's flows moving from `unknown` to the pod (and their remote end to
//! `external`); `--rewrite` makes `hawking sql` and the
//! PostgreSQL endpoint show them, hour by hour in one step each, and a SIGKILL in the middle
//! of it leaves every hour either as it was or rewritten, with no row lost or doubled.

use std::path::Path;
use std::process::Command;

use hawking_schemas::flow::FlowRecord;
use hawking_schemas::ip::parse_ip;
use serde_json::json;

use crate::pgwire::pg::{PASSWORD, USER, pg_section, psql, start_with_pg, stdout};
use crate::support::{
    StoreArg, hawking_bin, hawking_over, kill_after_line, rfc3339, send_ipfix, sql, sql_i64,
};

/// 2026-11-20T00:00:00Z.
pub(crate) const DAY: i64 = 1_795_132_800;
const HOURS: i64 = 48;
const FLOWS_PER_HOUR: i64 = 600;
/// The first recording stops here (its `--until`): after it, the history knows nothing.
const FIRST_RECORDING_ENDS: i64 = DAY + 1800;

pub(crate) fn recording(path: &Path) {
    let started = rfc3339(DAY - 3600);
    let pod = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": "web-5f6d7c8b9-k8m2p", "namespace": "shop",
            "uid": "3b5c7e9a-0000-4000-8000-000000000001", "creationTimestamp": started,
            "labels": {"app": "web", "pod-template-hash": "5f6d7c8b9"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                                 "name": "web-5f6d7c8b9", "uid": "3b5c7e9a-0000-4000-8000-000000000002",
                                 "controller": true}]
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "web", "image": "web:1"}]},
        "status": {
            "phase": "Running", "podIP": "10.4.1.10", "podIPs": [{"ip": "10.4.1.10"}],
            "startTime": started,
            "containerStatuses": [{"name": "web", "ready": true, "restartCount": 0, "image": "web:1",
                                   "imageID": "", "state": {"running": {"startedAt": started}}}]
        }
    });
    std::fs::write(
        path,
        json!({"apiVersion": "v1", "kind": "List", "items": [pod]}).to_string(),
    )
    .unwrap();
}

/// Flow `i` from `src` to 93.184.216.34:443 (TCP) starting at `start` µs and lasting
/// `duration` µs, of `1000 + i` bytes (its identity in the checks) from port 30000 + i.
pub(crate) fn flow_to_the_web(i: i64, start: i64, duration: i64, src: &str) -> FlowRecord {
    FlowRecord {
        flow_start: start,
        flow_end: start + duration,
        src_ip: parse_ip(src).unwrap(),
        dst_ip: parse_ip("93.184.216.34").unwrap(),
        src_port: 30000 + (i % 20000) as u16,
        dst_port: 443,
        protocol: 6,
        tcp_flags: 0x1b,
        bytes: 1000 + i as u64,
        packets: 2,
        sampling_rate: 1,
        in_if: 1,
        out_if: 2,
    }
}

pub(crate) fn import(data: &(impl StoreArg + ?Sized), file: &Path, until: i64) {
    let out = hawking_over(data, &["history", "import"])
        .arg(file)
        .args(["--cluster", "prod", "--until", &rfc3339(until)])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `hawking replay` over the two stored days of `data`, with `config`'s clusters.
fn replay_command(data: &Path, config: &Path) -> Command {
    replay_between(data, config, DAY, DAY + HOURS * 3600)
}

/// `hawking replay` of the flows of `data` that started from `from` to `to` (seconds).
fn replay_between(data: &Path, config: &Path, from: i64, to: i64) -> Command {
    let mut c = Command::new(hawking_bin());
    c.arg("replay")
        .args(["--from", &rfc3339(from), "--to", &rfc3339(to)])
        .arg("--data")
        .arg(data)
        .arg("--config")
        .arg(config);
    c
}

fn replay(data: &Path, config: &Path, args: &[&str]) -> std::process::Output {
    succeeded(replay_command(data, config), args)
}

/// The output of `command` with `args`, which must succeed.
fn succeeded(mut command: Command, args: &[&str]) -> std::process::Output {
    let out = command.args(args).output().unwrap();
    assert!(
        out.status.success(),
        "replay {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Per hour (µs since the epoch), how many stored flows from the pod are `pod` and how many
/// `unknown`.
fn by_hour(data: &Path) -> Vec<(i64, i64, i64)> {
    sql(
        data,
        "SELECT CAST(date_trunc('hour', flow_start) AS BIGINT) AS h, \
                sum(CASE WHEN src_attribution = 'pod' THEN 1 ELSE 0 END) AS pod, \
                sum(CASE WHEN src_attribution = 'unknown' THEN 1 ELSE 0 END) AS unknown \
         FROM flows GROUP BY 1 ORDER BY 1",
    )
    .iter()
    .map(|r| {
        (
            r["h"].as_i64().unwrap(),
            r["pod"].as_i64().unwrap(),
            r["unknown"].as_i64().unwrap(),
        )
    })
    .collect()
}

#[test]
fn replay_shows_and_rewrites_what_a_late_import_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pods = tmp.path().join("pods.json");
    recording(&pods);
    import(&data, &pods, FIRST_RECORDING_ENDS);
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[enricher]\ngrace_secs = 0.2\n\n[[enricher.clusters]]\nname = \"prod\"\nwatch = false\n\
             exporters = [\"127.0.0.0/8\"]\npod_cidrs = [\"10.4.0.0/16\"]\n\n{}",
            pg_section("")
        ),
    )
    .unwrap();
    let hawking = start_with_pg(&data, &config);
    let step = 3_600_000_000 / FLOWS_PER_HOUR;
    let flows: Vec<FlowRecord> = (0..HOURS * FLOWS_PER_HOUR)
        .map(|i| {
            let start = DAY * 1_000_000 + i * step + 500_000;
            flow_to_the_web(i, start, 1_000_000, "10.4.1.10")
        })
        .collect();
    send_ipfix(hawking.netflow, "127.0.0.1", &flows);
    let total = flows.len() as f64;
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        total,
    );
    let in_first_recording = (FIRST_RECORDING_ENDS - DAY) * 1_000_000 / step;
    let pod_before = sql_i64(
        &data,
        "SELECT count(*) FROM flows WHERE src_attribution = 'pod'",
    );
    assert_eq!(
        pod_before, in_first_recording,
        "only the recorded half hour is attributed"
    );

    // The recording that covers the rest arrives.
    import(&data, &pods, DAY + HOURS * 3600);

    // --diff: exactly the gap's flows, unknown -> the pod, and nothing else.
    let out = replay(&data, &config, &["--diff", "--format", "json"]);
    let changes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let in_gap = HOURS * FLOWS_PER_HOUR - in_first_recording;
    assert_eq!(
        changes.len() as i64,
        2 * in_gap,
        "each flow of the gap, both ends: {:#?}",
        &changes[..3.min(changes.len())]
    );
    for pair in changes.chunks(2) {
        let (src, dst) = (&pair[0], &pair[1]);
        assert_eq!(src["flow_start"], dst["flow_start"], "{pair:?}");
        assert_eq!((&src["side"], &dst["side"]), (&json!("src"), &json!("dst")));
        assert!(
            src["flow_start"].as_str().unwrap() >= "2026-11-20T00:30:00",
            "{src}"
        );
        assert_eq!(src["attribution_before"], "unknown", "{src}");
        assert_eq!(src["attribution_after"], "pod", "{src}");
        assert_eq!(
            src["owner_after"],
            "shop/web-5f6d7c8b9-k8m2p (Deployment web)"
        );
        assert_eq!(dst["attribution_before"], "unknown", "{dst}");
        assert_eq!(dst["attribution_after"], "external", "{dst}");
        for c in pair {
            assert!(c["why"].as_str().unwrap().contains("now covers"), "{c}");
        }
    }
    // --where may select by the stored attribution, with --diff as without it.
    let selected = "src_port % 2 = 0 AND src_attribution = 'unknown'";
    let out = replay(
        &data,
        &config,
        &["--diff", "--format", "json", "--where", selected],
    );
    let changes: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let even_in_gap = sql_i64(
        &data,
        &format!("SELECT count(*) FROM flows WHERE {selected}"),
    );
    assert!(even_in_gap > 0 && even_in_gap < in_gap);
    assert_eq!(changes.len() as i64, 2 * even_in_gap);
    assert!(
        changes
            .iter()
            .all(|c| c["src_port"].as_i64().unwrap() % 2 == 0)
    );
    // A plain replay to Parquet: the flows of a window that --where picks, with today's
    // attribution, in time order, whole.
    let window = tmp.path().join("window.parquet");
    succeeded(
        replay_between(&data, &config, DAY + 1200, DAY + 11_400),
        &[
            "--where",
            "src_port % 2 = 0",
            "--format",
            "parquet",
            "--out",
            window.to_str().unwrap(),
        ],
    );
    let (mut starts, mut pods) = (Vec::new(), 0);
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&window).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    for batch in reader {
        use arrow::array::AsArray;
        let batch = batch.unwrap();
        let start = batch.column_by_name("flow_start").unwrap();
        let start = start.as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
        starts.extend(start.values().iter().copied());
        let pod = batch.column_by_name("src_attribution").unwrap();
        pods += pod
            .as_string::<i32>()
            .iter()
            .filter(|a| *a == Some("pod"))
            .count();
    }
    // Flow i starts at 6i + 0.5 s into the day and has source port 30000 + i: the window
    // holds flows 200 to 1899, the even ones pass --where.
    assert_eq!(starts.len(), 850);
    assert_eq!(pods, 850, "the import covers the window");
    assert!(
        starts.windows(2).all(|w| w[0] < w[1]),
        "in flow_start order"
    );
    assert_eq!(starts[0], (DAY + 1200) * 1_000_000 + 500_000);
    // The same window to Parquet selected by what the store said: the gap's flows in it
    // (from 1800 s on: flows 300 to 1899, the even ones), now the pod's.
    succeeded(
        replay_between(&data, &config, DAY + 1200, DAY + 11_400),
        &[
            "--where",
            selected,
            "--format",
            "parquet",
            "--out",
            window.to_str().unwrap(),
        ],
    );
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
        std::fs::File::open(&window).unwrap(),
    )
    .unwrap()
    .build()
    .unwrap();
    let (mut rows, mut pods) = (0, 0);
    for batch in reader {
        use arrow::array::AsArray;
        let batch = batch.unwrap();
        rows += batch.num_rows();
        let pod = batch.column_by_name("src_attribution").unwrap();
        pods += pod
            .as_string::<i32>()
            .iter()
            .filter(|a| *a == Some("pod"))
            .count();
    }
    assert_eq!((rows, pods), (800, 800));

    // The store is untouched by --diff and by a replay.
    assert_eq!(
        sql_i64(
            &data,
            "SELECT count(*) FROM flows WHERE src_attribution = 'pod'"
        ),
        pod_before
    );

    // A rewrite killed after its first hour: each hour is whole, old or new; nothing lost or
    // doubled; the store reads back.
    kill_after_line(
        replay_command(&data, &config).arg("--rewrite"),
        "rewrote hour",
        "rewriting an hour",
    );
    let hours = by_hour(&data);
    assert_eq!(hours.len() as i64, HOURS);
    let mut rewritten = 0;
    for (i, (hour, pod, unknown)) in hours.iter().enumerate() {
        assert_eq!(
            pod + unknown,
            FLOWS_PER_HOUR,
            "hour {hour}: no flow lost or doubled"
        );
        let recorded = if i == 0 { in_first_recording } else { 0 };
        match (*pod, *unknown) {
            (p, _) if p == FLOWS_PER_HOUR => rewritten += 1,
            (p, _) if p == recorded => {}
            other => panic!("hour {hour} is half rewritten: {other:?}"),
        }
    }
    assert!(
        (1..HOURS).contains(&rewritten),
        "killed mid-way: {rewritten} hours rewritten"
    );

    // The rest: every flow is the pod's now, in SQL and over the PostgreSQL endpoint the
    // running server serves (it lists the new files at its next query).
    let out = replay(&data, &config, &["--rewrite"]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(summary.contains("hour partitions rewritten"), "{summary}");
    assert_eq!(
        sql_i64(
            &data,
            "SELECT count(*) FROM flows WHERE src_attribution = 'pod'"
        ),
        HOURS * FLOWS_PER_HOUR
    );
    assert_eq!(
        sql_i64(&data, "SELECT count(*) FROM flows"),
        HOURS * FLOWS_PER_HOUR
    );
    let out = psql(
        hawking.pg(),
        USER,
        PASSWORD,
        &[
            "-c",
            "SELECT count(*) FROM flows WHERE src_attribution = 'pod' AND src_workload = 'web'",
        ],
    );
    assert_eq!(
        stdout(&out).trim(),
        (HOURS * FLOWS_PER_HOUR).to_string(),
        "{out:?}"
    );
    // A second rewrite has nothing left to change.
    let out = replay(&data, &config, &["--rewrite"]);
    let summary = String::from_utf8_lossy(&out.stderr);
    assert!(
        summary.contains("0 flows' attribution changed"),
        "{summary}"
    );
    hawking.stop();
}

#[test]
fn replay_names_the_flag_at_fault_and_leaves_no_partial_output() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let pods = tmp.path().join("pods.json");
    recording(&pods);
    import(&data, &pods, FIRST_RECORDING_ENDS);
    let run = |args: &[&str]| {
        Command::new(hawking_bin())
            .arg("replay")
            .arg("--data")
            .arg(&data)
            .args(args)
            .output()
            .unwrap()
    };
    let cases: [(&[&str], &str); 4] = [
        (&["--from", "yesterday", "--to", "now"], "--from"),
        (
            &["--from", "2026-11-20 00:00", "--to", "2026-11-19 00:00"],
            "not before --to",
        ),
        (
            &[
                "--from",
                "2026-11-20 00:00",
                "--to",
                "2026-11-21 00:00",
                "--where",
                "no_such_column = 1",
            ],
            "--where",
        ),
        (
            &[
                "--from",
                "2026-11-20 00:00",
                "--to",
                "2026-11-21 00:00",
                "--format",
                "parquet",
            ],
            "--out",
        ),
    ];
    for (args, names) in cases {
        let out = run(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(names), "{args:?}: {stderr}");
    }
    let missing = Command::new(hawking_bin())
        .args([
            "replay",
            "--from",
            "2026-11-20 00:00",
            "--to",
            "2026-11-21 00:00",
            "--data",
        ])
        .arg(tmp.path().join("nothing-here"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no Hawking store"));
    // An output file appears whole: parquet of the (empty) result, readable by the reader.
    let file = tmp.path().join("out.parquet");
    let out = run(&[
        "--from",
        "2026-11-20 00:00",
        "--to",
        "2026-11-21 00:00",
        "--format",
        "parquet",
        "--out",
        file.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reader =
        parquet::file::reader::SerializedFileReader::new(std::fs::File::open(&file).unwrap());
    assert!(reader.is_ok());
    assert_eq!(
        std::fs::read_dir(tmp.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".partial")
            })
            .count(),
        0
    );
}
