//! The PostgreSQL-wire endpoint of `hawking serve`, with real clients: Debian's `psql`,
//! Python's psycopg (simple protocol with text results, as Grafana's pgx sends them, and the
//! extended protocol with parameters) and asyncpg (extended protocol, binary results).
//! - They log in with the configured password (SCRAM-SHA-256, or MD5), and only with it.
//! - They read attributed flows with PostgreSQL types: timestamps as timestamptz in
//!   PostgreSQL's ISO text style, addresses as text, numbers as integers.
//! - What Grafana sends on connect, for its health check, version and TimescaleDB probes and
//!   its query builder is answered; every panel of the shipped dashboard runs with its
//!   macros expanded as Grafana expands them.
//! - Writes and file access are refused with a clear error and change nothing.
//! - A query over its memory limit fails alone: a concurrent query and ingest go on;
//!   statements stop at their deadline.

#[path = "pgwire_grafana.rs"]
mod grafana;
#[path = "pgwire_support.rs"]
pub(crate) mod pg;

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::support::{hawking_bin, require_tool};
use pg::*;

fn ok(result: &Value, what: &str) -> Value {
    assert_eq!(result["ok"], true, "{what}: {result}");
    result.clone()
}

fn column_types(result: &Value) -> Vec<(String, String)> {
    result["columns"]
        .as_array()
        .unwrap_or_else(|| panic!("no columns: {result}"))
        .iter()
        .map(|c| {
            (
                c["name"].as_str().unwrap().to_string(),
                c["type"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn rows(result: &Value) -> &Vec<Value> {
    result["rows"]
        .as_array()
        .unwrap_or_else(|| panic!("no rows: {result}"))
}

fn texts(result: &Value) -> Vec<Vec<Option<String>>> {
    result["text"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .collect()
}

fn sqlstate(result: &Value) -> &str {
    assert_eq!(result["ok"], false, "expected an error: {result}");
    result["sqlstate"].as_str().unwrap_or("")
}

/// The flows of shop/web-7d4b9-k8m2p between 09:10 and 09:11:00, the same on every protocol.
const WEB_FLOWS: &str = "SELECT flow_start, src_ip, dst_ip, dst_port, protocol, bytes, \
     src_namespace, src_workload, src_attribution, dst_attribution \
     FROM flows WHERE src_ip = '10.4.1.10' \
     AND flow_start BETWEEN '2026-11-20T09:10:00Z' AND '2026-11-20T09:11:00Z' ORDER BY flow_start";

const WEB_TYPES: &[(&str, &str)] = &[
    ("flow_start", "timestamptz"),
    ("src_ip", "text"),
    ("dst_ip", "text"),
    ("dst_port", "int4"),
    ("protocol", "int2"),
    ("bytes", "int8"),
    ("src_namespace", "text"),
    ("src_workload", "text"),
    ("src_attribution", "text"),
    ("dst_attribution", "text"),
];

fn typed(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

#[test]
fn psql_psycopg_and_asyncpg_read_attributed_flows_with_postgresql_types() {
    let tmp = tempfile::tempdir().unwrap();
    clients_read_attributed_flows(attributed_store(tmp.path(), ""));
}

/// The same clients and answers with the store in a bucket of an S3 server.
#[test]
fn psql_psycopg_and_asyncpg_read_the_same_from_a_store_on_an_s3_server() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    clients_read_attributed_flows(attributed_store_at(&garage.store("pg"), tmp.path(), ""));
}

fn clients_read_attributed_flows(hawking: crate::support::Hawking) {
    // psql: what a person sees. Whole-second timestamps print without a fraction, as
    // PostgreSQL prints them.
    let out = psql(hawking.pg(), USER, PASSWORD, &["-c", WEB_FLOWS]);
    assert!(out.status.success(), "psql: {}", stderr(&out));
    assert_eq!(
        stdout(&out).lines().collect::<Vec<_>>(),
        vec![
            "2026-11-20 09:10:00+00|10.4.1.10|93.184.216.34|443|6|50000|shop|web|pod|external",
            "2026-11-20 09:10:30+00|10.4.1.10|93.184.216.34|443|6|50000|shop|web|pod|external",
            "2026-11-20 09:11:00+00|10.4.1.10|93.184.216.34|443|6|50000|shop|web|pod|external",
        ]
    );
    let described = psql(hawking.pg(), USER, PASSWORD, &["-c", "\\d flows"]);
    assert!(described.status.success(), "\\d: {}", stderr(&described));
    assert!(
        stdout(&described).contains("flow_start|timestamp with time zone"),
        "{}",
        stdout(&described)
    );

    // psycopg, simple protocol (no parameters) with text results, as Grafana's pgx: the
    // exact text PostgreSQL would send, and Python types from the type OIDs.
    let simple = ok(
        &run_sql("psycopg", hawking.pg(), &[json!({ "sql": WEB_FLOWS })])[0],
        "psycopg",
    );
    assert_eq!(column_types(&simple), typed(WEB_TYPES));
    assert_eq!(
        texts(&simple)[0],
        [
            "2026-11-20 09:10:00+00",
            "10.4.1.10",
            "93.184.216.34",
            "443",
            "6",
            "50000",
            "shop",
            "web",
            "pod",
            "external"
        ]
        .map(|s| Some(s.to_string()))
    );
    let first = &rows(&simple)[0];
    assert_eq!(first[0]["py"], "datetime");
    assert_eq!(first[0]["value"], "2026-11-20T09:10:00+00:00");
    assert_eq!(first[5], json!({ "py": "int", "value": 50000 }));
    assert_eq!(rows(&simple).len(), 3);

    // psycopg with parameters: the extended protocol, still text.
    let extended = ok(
        &run_sql(
            "psycopg",
            hawking.pg(),
            &[json!({
                "sql": "SELECT src_workload, count(*) AS flows, sum(bytes) AS bytes, min(flow_start) AS first \
                        FROM flows WHERE src_ip = %s AND flow_start >= %s AND flow_start < %s \
                        GROUP BY src_workload",
                "params": [
                    "10.4.1.10",
                    { "datetime": "2026-11-20T09:10:00+00:00" },
                    { "datetime": "2026-11-20T10:00:00+00:00" }
                ]
            })],
        )[0],
        "psycopg extended",
    );
    assert_eq!(
        column_types(&extended),
        typed(&[
            ("src_workload", "text"),
            ("flows", "int8"),
            ("bytes", "int8"),
            ("first", "timestamptz")
        ])
    );
    // Every 30 s from 09:10 to 10:00.
    let per_talker = 100;
    assert_eq!(
        texts(&extended),
        vec![vec![
            Some("web".to_string()),
            Some(per_talker.to_string()),
            Some((per_talker * 50_000).to_string()),
            Some("2026-11-20 09:10:00+00".to_string())
        ]]
    );

    // asyncpg: extended protocol, binary results decoded by their type OIDs.
    let binary = run_sql(
        "asyncpg",
        hawking.pg(),
        &[
            json!({ "sql": WEB_FLOWS }),
            json!({
                "sql": "SELECT src_workload, count(*) AS flows, avg(bytes) AS mean FROM flows \
                        WHERE src_ip = $1 AND flow_start >= $2 AND flow_start < $3 GROUP BY src_workload",
                "params": [
                    "10.4.1.10",
                    { "datetime": "2026-11-20T09:10:00+00:00" },
                    { "datetime": "2026-11-20T10:00:00+00:00" }
                ]
            }),
        ],
    );
    let web = ok(&binary[0], "asyncpg");
    assert_eq!(column_types(&web), typed(WEB_TYPES));
    assert_eq!(rows(&web).len(), 3);
    let first = &rows(&web)[0];
    assert_eq!(
        first[0],
        json!({ "py": "datetime", "value": "2026-11-20T09:10:00+00:00", "tz": "UTC" })
    );
    assert_eq!(first[1], json!({ "py": "str", "value": "10.4.1.10" }));
    assert_eq!(first[3], json!({ "py": "int", "value": 443 }));
    assert_eq!(first[5], json!({ "py": "int", "value": 50000 }));
    assert_eq!(first[7], json!({ "py": "str", "value": "web" }));
    let grouped = ok(&binary[1], "asyncpg with parameters");
    assert_eq!(
        rows(&grouped)[0],
        json!([
            { "py": "str", "value": "web" },
            { "py": "int", "value": per_talker },
            { "py": "float", "value": 50000.0 }
        ])
    );
    hawking.stop();
}

#[test]
fn grafana_health_check_version_probes_and_query_builder_are_answered() {
    let tmp = tempfile::tempdir().unwrap();
    let hawking = attributed_store(tmp.path(), "");
    let (from, to) = (T9, T9 + 2 * 3600);
    let statements = [
        // pgx's Ping, Grafana's health check: a comment only, answered EmptyQueryResponse.
        json!({ "sql": "-- ping" }),
        json!({ "sql": grafana::VERSION }),
        json!({ "sql": grafana::TIMESCALEDB }),
        json!({ "sql": grafana::show_schemas() }),
        json!({ "sql": grafana::show_tables(None) }),
        json!({ "sql": grafana::show_tables(Some("public")) }),
        json!({ "sql": grafana::get_schema("public.flows") }),
        json!({ "sql": "SELECT current_setting('search_path') AS search_path, current_setting('TimeZone') AS tz" }),
        json!({ "sql": "SHOW server_version" }),
        json!({ "sql": "SELECT version()" }),
        json!({ "sql": grafana::expand(
            "SELECT $__timeGroupAlias(flow_start, $__interval), sum(bytes) AS bytes FROM flows \
             WHERE $__timeFilter(flow_start) GROUP BY 1 ORDER BY 1",
            from, to, 300) }),
        json!({ "sql": grafana::expand(
            "SELECT $__time(flow_start), bytes FROM flows WHERE flow_start >= $__timeFrom() \
             AND flow_start < $__timeTo() AND src_ip = '10.4.2.5' ORDER BY 1 LIMIT 2",
            from, to, 300) }),
    ];
    let results = run_sql("psycopg", hawking.pg(), &statements);
    assert_eq!(results[0]["status"], "EMPTY_QUERY", "{}", results[0]);

    // Grafana reads the number (PostgreSQL would type it int4; an int8 reads the same).
    let version = ok(&results[1], "version");
    let (_, version_type) = &column_types(&version)[0];
    assert!(
        matches!(version_type.as_str(), "int4" | "int8"),
        "{version}"
    );
    assert_eq!(texts(&version), vec![vec![Some("1600".to_string())]]);
    let timescale = ok(&results[2], "timescaledb");
    assert!(rows(&timescale).is_empty(), "not TimescaleDB: {timescale}");

    let list = |r: &Value| -> Vec<String> {
        texts(r)
            .into_iter()
            .map(|row| row[0].clone().unwrap())
            .collect()
    };
    assert_eq!(
        list(&ok(&results[3], "schemata")),
        vec!["public".to_string()]
    );
    // `public` is on the search path, so its tables are offered unqualified, as PostgreSQL
    // offers them; the list is exactly the store's tables and views.
    let store_tables = store_tables(&tmp.path().join("data"));
    assert_eq!(list(&ok(&results[4], "tables")), store_tables);
    assert_eq!(list(&ok(&results[5], "tables in public")), store_tables);
    let columns = list(&ok(&results[6], "columns of public.flows"));
    for c in ["flow_start", "src_ip", "bytes", "src_workload"] {
        assert!(columns.contains(&c.to_string()), "{c} in {columns:?}");
    }
    assert_eq!(
        texts(&ok(&results[7], "settings")),
        vec![vec![
            Some("\"$user\", public".to_string()),
            Some("UTC".to_string())
        ]]
    );
    assert!(
        texts(&ok(&results[8], "SHOW"))[0][0]
            .as_deref()
            .is_some_and(|v| v.starts_with("16.6")),
        "{}",
        results[8]
    );
    assert!(
        texts(&ok(&results[9], "version()"))[0][0]
            .as_deref()
            .is_some_and(|v| v.starts_with("PostgreSQL 16.6")),
        "{}",
        results[9]
    );

    // A time series in 5-minute buckets: sorted by time, every bucket of the range that
    // has traffic, each with all four talkers' bytes (10 flows per bucket and talker).
    let series = ok(&results[10], "$__timeGroupAlias");
    assert_eq!(
        column_types(&series),
        typed(&[("time", "float8"), ("bytes", "int8")])
    );
    let buckets: Vec<(f64, i64)> = rows(&series)
        .iter()
        .map(|r| {
            (
                r[0]["value"].as_f64().unwrap(),
                r[1]["value"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(buckets.len() as i64, STEPS * 30 / 300);
    assert!(
        buckets.windows(2).all(|w| w[0].0 < w[1].0),
        "sorted: {buckets:?}"
    );
    assert_eq!(
        buckets[0],
        (T9 as f64, 10 * (50_000 + 8_000 + 300 + 30_000))
    );

    let times = ok(&results[11], "$__time");
    assert_eq!(
        column_types(&times),
        typed(&[("time", "timestamptz"), ("bytes", "int8")])
    );
    assert_eq!(
        texts(&times)
            .iter()
            .map(|r| r[0].clone().unwrap())
            .collect::<Vec<_>>(),
        vec!["2026-11-20 09:00:00+00", "2026-11-20 09:00:00+00"]
    );
    hawking.stop();
}

/// The store's tables and views in `public`, sorted, as `hawking sql` lists them (DataFusion's
/// own information_schema, independent of the endpoint's).
fn store_tables(data: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = crate::support::sql(
        data,
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'",
    )
    .iter()
    .map(|r| r["table_name"].as_str().unwrap().to_string())
    .collect();
    names.sort();
    names
}

/// The columns of `flows` with what Grafana reads of them: name, PostgreSQL data_type,
/// udt_name, precision, scale; in ordinal order.
type ColumnInfo = (String, String, String, Option<i64>, Option<i64>);

#[test]
fn grafanas_query_builder_and_schema_api_list_tables_and_columns_as_on_postgresql() {
    let tmp = tempfile::tempdir().unwrap();
    let hawking = attributed_store(tmp.path(), "");
    let data = tmp.path().join("data");
    let store_tables = store_tables(&data);
    let flow_columns: Vec<String> = crate::support::sql(
        &data,
        "SELECT column_name FROM information_schema.columns \
         WHERE table_schema = 'public' AND table_name = 'flows' ORDER BY ordinal_position",
    )
    .iter()
    .map(|r| r["column_name"].as_str().unwrap().to_string())
    .collect();
    assert!(flow_columns.len() > 20, "{flow_columns:?}");

    // The frontend (simple protocol, text results): the query builder's column list for the
    // table it offered unqualified, and for the qualified name.
    let frontend = run_sql(
        "psycopg",
        hawking.pg(),
        &[
            json!({ "sql": grafana::get_schema("flows") }),
            json!({ "sql": grafana::get_schema("public.flows") }),
            json!({ "sql": grafana::get_schema("other.flows") }),
            json!({ "sql": "SET search_path = other" }),
            json!({ "sql": grafana::show_tables(None) }),
            json!({ "sql": grafana::get_schema("flows") }),
        ],
    );
    for (i, what) in [(0, "flows"), (1, "public.flows")] {
        let r = ok(&frontend[i], what);
        let got: Vec<(String, String)> = texts(&r)
            .into_iter()
            .map(|row| (row[0].clone().unwrap(), row[1].clone().unwrap()))
            .collect();
        assert_eq!(
            got.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
            flow_columns,
            "{what}"
        );
        let type_of = |c: &str| got.iter().find(|(n, _)| n == c).unwrap().1.clone();
        assert_eq!(type_of("flow_start"), "timestamp with time zone");
        assert_eq!(type_of("bytes"), "bigint");
        assert_eq!(type_of("dst_port"), "integer");
        assert_eq!(type_of("protocol"), "smallint");
        assert_eq!(type_of("src_ip"), "text");
    }
    assert!(
        rows(&ok(&frontend[2], "other.flows")).is_empty(),
        "no schema other"
    );
    // With `public` off the search path, its tables are offered qualified and a bare name
    // finds no columns: the answer follows the connection's setting, as on PostgreSQL.
    ok(&frontend[3], "SET search_path");
    let qualified: Vec<String> = store_tables.iter().map(|t| format!("public.{t}")).collect();
    let listed: Vec<String> = texts(&ok(&frontend[4], "tables off the path"))
        .into_iter()
        .map(|r| r[0].clone().unwrap())
        .collect();
    assert_eq!(listed, qualified);
    assert!(rows(&ok(&frontend[5], "bare name off the path")).is_empty());

    // The backend schema API (pgx, extended protocol with parameters, binary results).
    let backend = run_sql(
        "asyncpg",
        hawking.pg(),
        &[
            json!({ "sql": grafana::SCHEMA_API_SCHEMAS }),
            json!({ "sql": grafana::SCHEMA_API_TABLES, "params": ["public"] }),
            json!({ "sql": grafana::SCHEMA_API_COLUMNS, "params": ["public", "flows"] }),
            json!({ "sql": grafana::schema_api_column_values("public", "flows", &["src_namespace", "protocol"]) }),
        ],
    );
    let first = |r: &Value| -> Vec<String> {
        rows(r)
            .iter()
            .map(|row| row[0]["value"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(
        first(&ok(&backend[0], "schemas")),
        vec!["public".to_string()]
    );
    assert_eq!(first(&ok(&backend[1], "tables")), store_tables);
    let columns: Vec<ColumnInfo> = rows(&ok(&backend[2], "columns"))
        .iter()
        .map(|r| {
            let text = |i: usize| r[i]["value"].as_str().unwrap().to_string();
            (
                text(0),
                text(1),
                text(2),
                r[3]["value"].as_i64(),
                r[4]["value"].as_i64(),
            )
        })
        .collect();
    assert_eq!(
        columns.iter().map(|c| c.0.clone()).collect::<Vec<_>>(),
        flow_columns
    );
    let info = |c: &str| columns.iter().find(|x| x.0 == c).unwrap().clone();
    let expect = |c: &str, data_type: &str, udt: &str, p: Option<i64>, s: Option<i64>| {
        assert_eq!(
            info(c),
            (c.to_string(), data_type.to_string(), udt.to_string(), p, s)
        )
    };
    expect(
        "flow_start",
        "timestamp with time zone",
        "timestamptz",
        None,
        None,
    );
    expect("bytes", "bigint", "int8", Some(64), Some(0));
    expect("src_ip", "text", "text", None, None);
    expect("protocol", "smallint", "int2", Some(16), Some(0));
    // Every column's udt_name is one Grafana maps to a type (not its string fallback for
    // numbers and times).
    for c in &columns {
        assert!(!c.2.is_empty() && !c.2.contains('('), "{c:?}");
    }
    let values = ok(&backend[3], "column values");
    let values = rows(&values);
    let of = |col: &str| -> Vec<String> {
        values
            .iter()
            .filter(|r| r[0]["value"] == col)
            .map(|r| r[1]["value"].as_str().unwrap().to_string())
            .collect()
    };
    let distinct = |col: &str| -> Vec<String> {
        crate::support::sql(
            &data,
            &format!("SELECT DISTINCT {col}::text AS v, {col} FROM flows WHERE {col} IS NOT NULL ORDER BY {col}"),
        )
        .iter()
        .map(|r| r["v"].as_str().unwrap().to_string())
        .collect()
    };
    for col in ["src_namespace", "protocol"] {
        let expected = distinct(col);
        assert!(!expected.is_empty(), "{col}");
        assert_eq!(of(col), expected, "{col}");
    }
    hawking.stop();
}

#[test]
fn every_dashboard_panel_runs_over_psycopg_and_asyncpg_with_macros_expanded() {
    let tmp = tempfile::tempdir().unwrap();
    dashboard_panels_run(attributed_store(tmp.path(), ""));
}

/// The same panels with the store in a bucket of an S3 server.
#[test]
fn every_dashboard_panel_runs_the_same_from_a_store_on_an_s3_server() {
    let tmp = tempfile::tempdir().unwrap();
    let garage = crate::garage::Garage::start(tmp.path());
    dashboard_panels_run(attributed_store_at(
        &garage.store("grafana"),
        tmp.path(),
        "",
    ));
}

fn dashboard_panels_run(hawking: crate::support::Hawking) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/grafana/dashboards");
    let mut panels = Vec::new();
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "json") {
            let dashboard: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            collect_sql_targets(&dashboard["panels"], &mut panels);
        }
    }
    assert!(
        !panels.is_empty(),
        "the dashboards in {} have SQL panels",
        dir.display()
    );

    // Two hours; Grafana's interval for such a range on a wide panel is 5 minutes.
    let (from, to, interval) = (T9, T9 + 2 * 3600, 300);
    let statements: Vec<Value> = panels
        .iter()
        .map(|(_, _, sql)| json!({ "sql": grafana::expand(sql, from, to, interval) }))
        .collect();
    let text = run_sql("psycopg", hawking.pg(), &statements);
    let binary = run_sql("asyncpg", hawking.pg(), &statements);
    for (((title, format, _), text), binary) in panels.iter().zip(&text).zip(&binary) {
        let what = format!("panel {title:?}");
        let text = ok(text, &format!("{what} over psycopg"));
        let binary = ok(binary, &format!("{what} over asyncpg"));
        assert!(!rows(&text).is_empty(), "{what}: no rows");
        assert_eq!(
            column_types(&text),
            column_types(&binary),
            "{what}: same types on both protocols"
        );
        assert_eq!(
            sorted_values(&text),
            sorted_values(&binary),
            "{what}: same rows on both protocols"
        );
        let types = column_types(&text);
        let numeric = |t: &str| {
            matches!(
                t,
                "int2" | "int4" | "int8" | "float4" | "float8" | "numeric"
            )
        };
        if format == "time_series" {
            // Grafana's long format: a time column, sorted, then labels and values.
            let time = types
                .iter()
                .position(|(n, _)| n == "time")
                .unwrap_or_else(|| panic!("{what}: no time column in {types:?}"));
            assert!(
                numeric(&types[time].1) || types[time].1 == "timestamptz",
                "{what}: time is {}",
                types[time].1
            );
            let times: Vec<f64> = rows(&text)
                .iter()
                .map(|r| r[time]["value"].as_f64().unwrap())
                .collect();
            assert!(
                times.windows(2).all(|w| w[0] <= w[1]),
                "{what}: sorted by time"
            );
            assert!(
                types.iter().any(|(n, t)| n != "time" && numeric(t)),
                "{what}: a value column in {types:?}"
            );
        } else {
            assert!(
                types.iter().any(|(_, t)| numeric(t)),
                "{what}: numbers in {types:?}"
            );
        }
        for (name, t) in &types {
            assert!(
                numeric(t) || t == "text" || t == "timestamptz",
                "{what}: column {name} has type {t}"
            );
        }
    }
    hawking.stop();
}

/// (title, format, rawSql) of every PostgreSQL target, rows' nested panels included.
fn collect_sql_targets(panels: &Value, out: &mut Vec<(String, String, String)>) {
    for panel in panels.as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            if let Some(sql) = target["rawSql"].as_str() {
                out.push((
                    panel["title"].as_str().unwrap_or("").to_string(),
                    target["format"].as_str().unwrap_or("table").to_string(),
                    sql.to_string(),
                ));
            }
        }
        collect_sql_targets(&panel["panels"], out);
    }
}

/// Row values as comparable text, in a stable order (ties in ORDER BY may come either way).
fn sorted_values(result: &Value) -> Vec<String> {
    let mut out: Vec<String> = rows(result)
        .iter()
        .map(|r| {
            r.as_array()
                .unwrap()
                .iter()
                .map(|v| match &v["value"] {
                    Value::Number(n) => format!("{:.6}", n.as_f64().unwrap()),
                    other => other.to_string(),
                })
                .collect::<Vec<_>>()
                .join("|")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn writes_and_file_access_are_refused_and_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let hawking = attributed_store(tmp.path(), "");
    let target = tmp.path().join("exfiltrated.csv");
    let outside = tmp.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("x.csv"), "a\n1\n").unwrap();
    let count = "SELECT count(*) AS n FROM flows";
    let attempts: Vec<(String, &[&str])> = vec![
        ("INSERT INTO flows (bytes) VALUES (1)".into(), &["25006"]),
        ("UPDATE flows SET bytes = 0".into(), &["25006"]),
        ("DELETE FROM flows".into(), &["25006"]),
        ("TRUNCATE flows".into(), &["25006"]),
        ("DROP TABLE flows".into(), &["25006"]),
        ("DROP VIEW ip_history".into(), &["25006"]),
        (
            "CREATE TABLE copy AS SELECT * FROM flows".into(),
            &["25006"],
        ),
        ("SELECT * INTO copy FROM flows".into(), &["25006"]),
        ("CREATE VIEW v AS SELECT 1".into(), &["25006"]),
        ("CREATE SCHEMA s".into(), &["25006"]),
        // Not even parsed in PostgreSQL syntax; refused either way.
        (
            format!(
                "CREATE EXTERNAL TABLE t STORED AS CSV LOCATION '{}'",
                outside.display()
            ),
            &["25006", "42601"],
        ),
        (format!("COPY flows TO '{}'", target.display()), &["0A000"]),
        (
            format!("COPY (SELECT 1) TO '{}'", target.display()),
            &["0A000"],
        ),
        (
            format!("COPY flows FROM '{}'", outside.join("x.csv").display()),
            &["0A000"],
        ),
        (
            "EXPLAIN ANALYZE INSERT INTO flows (bytes) VALUES (1)".into(),
            &["25006"],
        ),
        (
            "SET datafusion.runtime.memory_limit = '100G'".into(),
            &["42501"],
        ),
        (
            "SET datafusion.execution.target_partitions = 64".into(),
            &["42501"],
        ),
        ("SET default_transaction_read_only = off".into(), &["55P02"]),
        ("BEGIN READ WRITE".into(), &["25006"]),
        (
            "DECLARE c CURSOR FOR SELECT * FROM flows".into(),
            &["0A000"],
        ),
    ];
    // The server counts every failed statement once, by its SQLSTATE: 25006, 0A000, 42501
    // and 55P02 as `refused`, anything else as `error` (CREATE EXTERNAL TABLE may come back
    // as 42601, a syntax error, from the parser). Each attempt is sent by both clients, and
    // psql's INSERT below is one more refusal: 2 × attempts + 1 failures in all.
    let count_of = |outcome| hawking.metric("hawking_pg_statements_total", &[("outcome", outcome)]);
    let (refused_before, errors_before) = (count_of("refused"), count_of("error"));
    let refusal = |code: &str| ["25006", "0A000", "42501", "55P02"].contains(&code);
    let (mut refusals, mut errors) = (0, 0);
    for client in ["psycopg", "asyncpg"] {
        let mut statements: Vec<Value> = attempts
            .iter()
            .map(|(sql, _)| json!({ "sql": sql }))
            .collect();
        statements.push(json!({ "sql": count }));
        let results = run_sql(client, hawking.pg(), &statements);
        for ((sql, codes), result) in attempts.iter().zip(&results) {
            let code = sqlstate(result);
            assert!(
                codes.contains(&code),
                "{client}: {sql}: SQLSTATE {code}, wanted one of {codes:?}: {result}"
            );
            let message = result["message"].as_str().unwrap_or("");
            assert!(!message.is_empty(), "{client}: {sql}: a message");
            if refusal(code) {
                refusals += 1;
            } else {
                errors += 1;
            }
        }
        let rows_after = ok(results.last().unwrap(), "count after the attempts");
        assert_eq!(
            rows(&rows_after)[0][0]["value"],
            STEPS * TALKERS.len() as i64,
            "{client}: the connection still answers and nothing changed"
        );
    }
    let refused = psql(
        hawking.pg(),
        USER,
        PASSWORD,
        &["-c", "INSERT INTO flows (bytes) VALUES (1)"],
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused)
            .contains("cannot execute INSERT: Hawking's PostgreSQL endpoint is read-only"),
        "{}",
        stderr(&refused)
    );
    assert!(!target.exists(), "COPY wrote nothing");
    refusals += 1; // psql's INSERT
    assert_eq!(refusals + errors, 2 * attempts.len() + 1);
    assert_eq!(
        (
            count_of("refused") - refused_before,
            count_of("error") - errors_before
        ),
        (refusals as f64, errors as f64),
        "each refused statement counted once as refused, each other failure once as error"
    );
    hawking.stop();
}

#[test]
fn a_query_over_its_memory_limit_fails_alone_while_queries_and_ingest_go_on() {
    require_tool("python3");
    let tmp = tempfile::tempdir().unwrap();
    let hawking = attributed_store(
        tmp.path(),
        "query_memory_limit_bytes = 33554432\nquery_timeout_secs = 4.0",
    );
    let before = hawking.metric("hawking_store_rows_written_total", &[("table", "flows")]);

    // Ingest while the queries run: 8 s of synthetic flows.
    let flowgen = std::process::Command::new(hawking_bin())
        .args(["flowgen", "--to", &hawking.netflow.to_string()])
        .args([
            "--protocol",
            "ipfix",
            "--exporters",
            "2",
            "--rate",
            "2000",
            "--flows",
            "16000",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut flowgen = ChildGuard(flowgen);

    // A long CPU-bound query starts first; 0.3 s later a query that needs far more than
    // 32 MiB starts on another connection. It fails with out of memory (53200); the long
    // one, running all along, completes; both connections still answer.
    let race = python_client(
        "concurrent",
        hawking.pg(),
        USER,
        PASSWORD,
        &json!({
            "long": "SELECT count(*) AS n FROM generate_series(1, 6000000) t(v) WHERE md5(CAST(v AS text)) LIKE 'ab%'",
            "heavy": "SELECT array_agg(v) FROM generate_series(1, 50000000) t(v)",
            "delay": 0.3,
        }),
    );
    let (long, heavy) = (&race["long"], &race["heavy"]);
    assert_eq!(sqlstate(heavy), "53200", "{heavy}");
    assert!(
        heavy["message"]
            .as_str()
            .unwrap()
            .contains("query_memory_limit_bytes"),
        "{heavy}"
    );
    assert_eq!(long["ok"], true, "{long}");
    assert_eq!(long["rows"][0][0]["py"], "int", "{long}");
    // They ran at the same time (how much of the one covers the other depends on load).
    assert!(
        long["start"].as_f64() < heavy["end"].as_f64()
            && heavy["start"].as_f64() < long["end"].as_f64(),
        "the queries overlapped: {race}"
    );
    assert_eq!(
        (long["after"].as_i64(), heavy["after"].as_i64()),
        (Some(1), Some(1))
    );

    // Statements stop at their deadline: the client's shorter one, or the server's 4 s.
    let endless = "SELECT count(*) FROM generate_series(1, 100000000000) t(v) WHERE v % 7 = 3";
    let started = Instant::now();
    let timed = run_sql(
        "psycopg",
        hawking.pg(),
        &[
            json!({ "sql": "SET statement_timeout = '500ms'" }),
            json!({ "sql": endless }),
            json!({ "sql": "SET statement_timeout = '1h'" }),
            json!({ "sql": endless }),
            json!({ "sql": "SELECT 1 AS still_there" }),
        ],
    );
    let elapsed = started.elapsed();
    assert_eq!(sqlstate(&timed[1]), "57014", "{}", timed[1]);
    assert_eq!(sqlstate(&timed[3]), "57014", "{}", timed[3]);
    ok(&timed[4], "after the timeouts");
    assert!(
        elapsed >= Duration::from_millis(4500) && elapsed < Duration::from_secs(20),
        "0.5 s + 4 s of deadlines took {elapsed:?}"
    );

    // A cancel request (psql's Ctrl-C) stops a statement while it produces rows, long
    // before its deadline; the connection goes on.
    let canceled = python_client(
        "cancel",
        hawking.pg(),
        USER,
        PASSWORD,
        &json!({ "sql": endless, "delay": 0.5 }),
    );
    assert_eq!(sqlstate(&canceled), "57014", "{canceled}");
    assert!(
        canceled["message"]
            .as_str()
            .unwrap()
            .contains("user request"),
        "{canceled}"
    );
    assert!(canceled["seconds"].as_f64().unwrap() < 3.0, "{canceled}");
    assert_eq!(canceled["after"], 1, "{canceled}");

    let status = flowgen.0.wait().unwrap();
    assert!(status.success());
    hawking.wait_metric(
        "hawking_store_rows_written_total",
        &[("table", "flows")],
        before + 16_000.0,
    );
    assert!(hawking.metric("hawking_pg_statements_total", &[("outcome", "memory")]) >= 1.0);
    assert!(hawking.metric("hawking_pg_statements_total", &[("outcome", "timeout")]) >= 2.0);
    assert!(hawking.metric("hawking_pg_statements_total", &[("outcome", "canceled")]) >= 1.0);
    assert_eq!(hawking.metric("hawking_pg_statements_running", &[]), 0.0);
    hawking.stop();
}

/// Kills the child if the test fails before waiting for it.
struct ChildGuard(std::process::Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn only_the_configured_password_logs_in() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        format!(
            "[pg]\nusers = [{{ name = \"{USER}\", password = \"{PASSWORD}\" }}, \
             {{ name = \"reader\", password_env = \"HAWKING_TEST_READER_PW\" }}]\n"
        ),
    )
    .unwrap();
    let data = tmp.path().join("data");
    let hawking = pg::try_start_with_pg(
        &data,
        &config,
        &[("HAWKING_TEST_READER_PW", "from the env")],
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // An unknown user fails exactly like a wrong password: which names exist stays hidden.
    for (user, password) in [(USER, "wrong"), ("nobody", PASSWORD)] {
        let out = psql(hawking.pg(), user, password, &["-c", "SELECT 1"]);
        assert!(!out.status.success(), "{user}/{password:?} logged in");
        assert!(
            stderr(&out).contains(&format!("authentication failed for user \"{user}\"")),
            "{}",
            stderr(&out)
        );
        // psycopg reports a failed connection by message only; asyncpg by SQLSTATE.
        let refused = python_client("psycopg", hawking.pg(), user, password, &json!([]));
        assert!(
            refused["connect_error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains(&format!("authentication failed for user \"{user}\""))),
            "psycopg {user}/{password:?}: {refused}"
        );
        let refused = python_client("asyncpg", hawking.pg(), user, password, &json!([]));
        assert_eq!(
            refused["connect_error"]["sqlstate"], "28P01",
            "asyncpg {user}/{password:?}: {refused}"
        );
    }
    let out = psql(
        hawking.pg(),
        "reader",
        "from the env",
        &["-c", "SELECT session_user"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "reader");
    assert_eq!(hawking.metric("hawking_pg_auth_failures_total", &[]), 6.0);
    hawking.stop();

    // MD5 for old clients; still only the right password.
    std::fs::write(&config, pg_section("auth = \"md5\"")).unwrap();
    let hawking = pg::start_with_pg(&data, &config);
    let results = run_sql(
        "asyncpg",
        hawking.pg(),
        &[json!({ "sql": "SELECT 1 AS one" })],
    );
    ok(&results[0], "md5 login");
    let refused = python_client("asyncpg", hawking.pg(), USER, "wrong", &json!([]));
    assert_eq!(refused["connect_error"]["sqlstate"], "28P01", "{refused}");
    hawking.stop();

    // No users, no endpoint: --pg alone is a start-up error that says why.
    std::fs::write(&config, "").unwrap();
    let err = pg::try_start_with_pg(&data, &config, &[])
        .err()
        .expect("no start without users");
    assert!(err.contains("needs at least one user"), "{err}");
}

#[test]
fn with_tls_required_logins_without_it_are_refused() {
    require_tool("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (cert, key) = (tmp.path().join("tls.crt"), tmp.path().join("tls.key"));
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let config = tmp.path().join("hawking.toml");
    std::fs::write(
        &config,
        pg_section(&format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\nrequire_tls = true",
            cert.display(),
            key.display()
        )),
    )
    .unwrap();
    let hawking = pg::start_with_pg(&tmp.path().join("data"), &config);
    let conninfo = |mode: &str| {
        format!(
            "host=127.0.0.1 port={} user={USER} dbname=hawking sslmode={mode}",
            hawking.pg().port()
        )
    };
    let run = |mode: &str| {
        std::process::Command::new("psql")
            .arg(conninfo(mode))
            .args(["-X", "-A", "-t", "-c", "SELECT 1"])
            .env("PGPASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let secure = run("require");
    assert!(secure.status.success(), "{}", stderr(&secure));
    assert_eq!(stdout(&secure).trim(), "1");
    let plain = run("disable");
    assert!(!plain.status.success());
    assert!(
        stderr(&plain).contains("requires TLS"),
        "{}",
        stderr(&plain)
    );
    hawking.stop();
}
