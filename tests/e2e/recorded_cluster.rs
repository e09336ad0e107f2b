//! The `make demo` path as a test: a cluster's history imported from kubectl recordings
//! (fixtures/k8s/import/), that cluster's traffic (fixtures/demo-cluster.pcap) exported by
//! softflowd as IPFIX to `hawking serve`, and every flow attributed at its own time — across
//! an address handed from one pod to another, the stretch nobody held it, and a finished Job
//! pod whose lingering object still shows an address another pod holds.

use std::path::Path;
use std::process::Command;

use crate::support::{
    Hawking, fixtures, hawking_bin, rfc3339, softflowd_export, sql, sql_i64, whois_json,
};

pub(crate) fn import(data: &Path, file: &str) {
    let out = import_with(data, file, &[]);
    assert!(
        out.status.success(),
        "import {file}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn import_with(data: &Path, file: &str, extra: &[&str]) -> std::process::Output {
    Command::new(hawking_bin())
        .args(["history", "import"])
        .arg(fixtures().join("k8s/import").join(file))
        .args(["--cluster", "demo", "--data"])
        .arg(data)
        .args(extra)
        .output()
        .unwrap()
}

/// The open `recording ends` gap's start, and the gaps' ends, in µs.
fn recording_gaps(data: &Path) -> Vec<(i64, Option<i64>)> {
    sql(
        data,
        "SELECT CAST(gap_start AS BIGINT) AS s, CAST(gap_end AS BIGINT) AS e FROM history_gaps \
         WHERE reason = 'recording ends' ORDER BY s",
    )
    .iter()
    .map(|r| {
        (
            r["s"].as_i64().unwrap(),
            r.get("e").and_then(|e| e.as_i64()),
        )
    })
    .collect()
}

#[test]
fn a_recording_holds_until_the_time_the_user_says_it_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let plain = tmp.path().join("plain");
    import(&plain, "pods-watch.json");
    let [(end, None)] = recording_gaps(&plain)[..] else {
        panic!("{:?}", recording_gaps(&plain));
    };
    // A pod still running when the recording ends: its interval ends with the recording.
    let held = sql(
        &plain,
        &format!(
            "SELECT ip, name FROM ip_history WHERE owner_kind = 'pod' \
             AND CAST(valid_to AS BIGINT) = {end} ORDER BY ip LIMIT 1"
        ),
    );
    let (ip, pod) = (
        held[0]["ip"].as_str().unwrap(),
        held[0]["name"].as_str().unwrap(),
    );
    let later = rfc3339(end / 1_000_000 + 1800);
    assert_eq!(whois_json(&plain, ip, &later)["attribution"], "unknown");

    let until_us = end + 3_600_000_000;
    let until = rfc3339(until_us / 1_000_000);
    let extended = tmp.path().join("extended");
    let out = import_with(&extended, "pods-watch.json", &["--until", &until]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(recording_gaps(&extended), [(until_us, None)]);
    let answer = whois_json(&extended, ip, &later);
    assert_eq!(answer["attribution"], "pod", "{answer}");
    assert_eq!(answer["owner"]["name"], pod, "{answer}");
    assert_eq!(
        whois_json(&extended, ip, &rfc3339(until_us / 1_000_000 + 60))["attribution"],
        "unknown"
    );

    // A stop before the recording's own last event is refused, naming the flag.
    let early = rfc3339(end / 1_000_000 - 3600);
    let refused = import_with(
        &tmp.path().join("refused"),
        "pods-watch.json",
        &["--until", &early],
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success() && stderr.contains("--until"),
        "{stderr}"
    );
    let unreadable = import_with(
        &tmp.path().join("refused"),
        "pods-watch.json",
        &["--from", "soon"],
    );
    let stderr = String::from_utf8_lossy(&unreadable.stderr);
    assert!(
        !unreadable.status.success() && stderr.contains("--from"),
        "{stderr}"
    );
}

#[test]
fn a_later_recording_closes_the_earlier_ones_gap_where_it_says_it_began() {
    let tmp = tempfile::tempdir().unwrap();
    // Without --from, the gap ends at the watch's opening list.
    let plain = tmp.path().join("plain");
    import(&plain, "pods-snapshot.json");
    import(&plain, "pods-watch.json");
    let gaps = recording_gaps(&plain);
    let (snapshot_end, Some(opening)) = gaps[0] else {
        panic!("{gaps:?}");
    };
    // The watch says it began a minute later: the gap lasts until then.
    let began = opening + 60_000_000;
    let stated = tmp.path().join("stated");
    import(&stated, "pods-snapshot.json");
    let out = import_with(
        &stated,
        "pods-watch.json",
        &["--from", &rfc3339(began / 1_000_000)],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let gaps = recording_gaps(&stated);
    assert_eq!(gaps[0], (snapshot_end, Some(began)), "{gaps:?}");
}

/// (attribution, pod, workload) of the flows matching `filter`, one row per distinct answer,
/// with the time range of those flows.
fn answers(data: &Path, side: &str, filter: &str) -> Vec<(String, String, String, String, String)> {
    sql(
        data,
        &format!(
            "SELECT {side}_attribution AS a, coalesce({side}_pod, '') AS pod, \
                    coalesce({side}_workload, '') AS workload, \
                    CAST(min(flow_start) AS VARCHAR) AS first, CAST(max(flow_end) AS VARCHAR) AS last \
             FROM flows WHERE {filter} GROUP BY 1, 2, 3 ORDER BY first"
        ),
    )
    .into_iter()
    .map(|r| {
        let s = |k: &str| r[k].as_str().unwrap_or_default().to_string();
        (s("a"), s("pod"), s("workload"), s("first"), s("last"))
    })
    .collect()
}

#[test]
fn recorded_cluster_traffic_is_attributed_at_each_flows_own_time() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    import(&data, "pods-snapshot.json");
    import(&data, "pods-watch.json");
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        "[enricher]\ngrace_secs = 0.5\n\n[[enricher.clusters]]\nname = \"demo\"\nwatch = false\n\
         pod_cidrs = [\"10.4.0.0/16\", \"fd00:10:4::/48\"]\n",
    )
    .unwrap();
    let hawking = Hawking::start(&data, &["--config", config.to_str().unwrap()]);
    softflowd_export(
        &fixtures().join("demo-cluster.pcap"),
        10,
        hawking.netflow,
        &[],
        tmp.path(),
    );
    // softflowd has exported everything when it exits; wait until the flows stop coming.
    let mut last = -1.0;
    for _ in 0..100 {
        let now = hawking.metric("hawking_flows_total", &[]);
        if now > 0.0 && now == last {
            break;
        }
        last = now;
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let report = hawking.stop();
    assert!(report.rows_committed > 500, "{report:?}");

    // 10.4.2.14: web-7d4b9-r5t9w until 10:00:26, nobody until 10:12:30, then the worker.
    let recycled = answers(&data, "src", "src_ip = '10.4.2.14'");
    let who: Vec<(&str, &str)> = recycled
        .iter()
        .map(|r| (r.0.as_str(), r.1.as_str()))
        .collect();
    assert_eq!(
        who,
        [
            ("pod", "web-7d4b9-r5t9w"),
            ("unknown", ""),
            ("pod", "worker-6c8d9-b7n4k")
        ],
        "{recycled:#?}"
    );
    assert!(
        recycled[0].4.as_str() < "2026-11-20T10:00:26",
        "{recycled:#?}"
    );
    // The one session at 10:06, between the two tenants (exporter clocks round to the ms).
    assert!(
        recycled[1].3.as_str() > "2026-11-20T10:05:59"
            && recycled[1].4.as_str() < "2026-11-20T10:06:01",
        "{recycled:#?}"
    );
    assert!(
        recycled[2].3.as_str() > "2026-11-20T10:12:30",
        "{recycled:#?}"
    );
    assert_eq!(recycled[2].2, "worker");

    // 10.4.1.20: the backup Job's pod while it ran; cache-1 afterwards, although the finished
    // Job pod's object kept showing the address until 10:24:49.
    let job = answers(&data, "src", "src_ip = '10.4.1.20' AND dst_port = 443");
    assert_eq!(job.len(), 1, "{job:#?}");
    assert_eq!(
        (job[0].0.as_str(), job[0].1.as_str(), job[0].2.as_str()),
        ("pod", "backup-29919420-h7x4q", "backup"),
        "a Job's pod is attributed to its CronJob"
    );
    let cache = answers(&data, "dst", "dst_ip = '10.4.1.20' AND dst_port = 6379");
    assert_eq!(cache.len(), 1, "{cache:#?}");
    assert_eq!(
        (
            cache[0].0.as_str(),
            cache[0].1.as_str(),
            cache[0].2.as_str()
        ),
        ("pod", "cache-1", "cache")
    );

    // Pod to pod and pod to outside, over both address families.
    let api = sql(
        &data,
        "SELECT DISTINCT src_workload, dst_workload, dst_attribution FROM flows \
         WHERE src_ip IN ('10.4.2.5', 'fd00:10:4:2::5') AND dst_port = 443 ORDER BY 1",
    );
    assert!(!api.is_empty(), "the api pod's HTTPS flows were stored");
    assert!(
        api.iter()
            .all(|r| r["src_workload"] == "api" && r["dst_attribution"] == "external"),
        "{api:?}"
    );
    let families = sql_i64(
        &data,
        "SELECT count(DISTINCT src_ip) FROM flows \
         WHERE src_ip IN ('10.4.2.5', 'fd00:10:4:2::5') AND dst_port = 443",
    );
    assert_eq!(families, 2, "both of the api pod's addresses sent");
    let web_to_api = sql(
        &data,
        "SELECT count(*) AS n FROM flows WHERE src_workload = 'web' AND dst_workload = 'api' \
         AND src_attribution = 'pod' AND dst_attribution = 'pod'",
    );
    assert!(web_to_api[0]["n"].as_i64().unwrap() > 50, "{web_to_api:?}");
    // For no address do two holders' intervals overlap in this recording.
    let ambiguous = sql(
        &data,
        "SELECT count(*) AS n FROM flows \
         WHERE src_attribution = 'ambiguous' OR dst_attribution = 'ambiguous'",
    );
    assert_eq!(ambiguous[0]["n"], 0, "{ambiguous:?}");
}
