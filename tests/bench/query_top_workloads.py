#!/usr/bin/env python3
"""Query benchmark: top-10 workloads by bytes over a time window, on a generated day of
flows (query/examples/gen_flows.rs), through `hawking sql`, through the PostgreSQL-wire
endpoint (`hawking serve --pg`; a failure to start it is an error, --no-pg leaves it out)
and with DuckDB on the same Parquet files, in the same run. Prints a markdown table and the pruning DataFusion did.

    tests/bench/query_top_workloads.py STORE_DIR [--runs 5] [--hawking target/release/hawking] [--no-pg]
                                       [--day-start '2026-11-24 00:00:00']

Run through tests/bench/query_top_workloads.sh, which builds and generates the store.
"""

import argparse
import datetime
import os
import re
import socket
import statistics
import subprocess
import sys
import time

DAY = "2026-11-24"

QUERY = """SELECT src_namespace, src_workload, sum(bytes) AS bytes
FROM flows
WHERE {filter}src_attribution = 'pod'
GROUP BY src_namespace, src_workload
ORDER BY bytes DESC, src_namespace, src_workload
LIMIT 10"""



def windows(day_start):
    """The three windows, as hours 06-12 of the day starting at `day_start` (UTC text)."""
    t0 = datetime.datetime.fromisoformat(day_start)
    at = lambda hours: (t0 + datetime.timedelta(hours=hours)).strftime("%Y-%m-%d %H:%M:%S")
    return {
        "6 of 24 hours": (at(6), at(12)),
        "5.5 hours (cuts an hour)": (at(6.5), at(12)),
        "whole day": None,
    }


def hawking_query(window):
    if window is None:
        return QUERY.format(filter="")
    lo, hi = window
    return QUERY.format(
        filter=f"flow_start >= TIMESTAMP '{lo}' AND flow_start < TIMESTAMP '{hi}'\n  AND "
    )


def duckdb_query(window, glob):
    source = f"read_parquet('{glob}', hive_partitioning = false)"
    q = hawking_query(window).replace("FROM flows", f"FROM {source}")
    # DuckDB reads the UTC-adjusted µs timestamps as TIMESTAMPTZ: compare with UTC instants.
    return re.sub(r"TIMESTAMP '([^']+)'", r"TIMESTAMPTZ '\1+00'", q)


def timed(fn, runs):
    fn()  # warm the page cache and any lazy state; not counted
    times = []
    result = None
    for _ in range(runs):
        t = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t)
    return times, result


def rows_of_csv(text):
    lines = [l for l in text.strip().splitlines()[1:] if l]
    return [tuple(l.split(",")) for l in lines]


def run_hawking_sql(hawking, store, sql):
    out = subprocess.run(
        [hawking, "sql", "--format", "csv", "--data", store, sql],
        check=True,
        capture_output=True,
        text=True,
    )
    return rows_of_csv(out.stdout)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def start_pg(hawking, store):
    """Starts `hawking serve --pg` on a free port and returns (process, port). An endpoint
    that does not come up ends the benchmark: its rows must not silently go missing from the
    table (pass --no-pg to leave them out on purpose)."""
    help_text = subprocess.run(
        [hawking, "serve", "--help"], capture_output=True, text=True
    ).stdout
    if "--pg" not in help_text:
        sys.exit(f"{hawking} serve has no --pg flag: cannot run the pg endpoint rows (--no-pg skips them)")
    port = free_port()
    log_path = os.path.join(store, "bench-pg.log")
    config = os.path.join(store, "bench-pg.toml")
    with open(config, "w") as f:
        f.write('[pg]\nusers = [{ name = "bench", password = "bench" }]\n')
    proc = subprocess.Popen(
        [
            hawking,
            "serve",
            "--config",
            config,
            "--data",
            store,
            "--netflow",
            "127.0.0.1:0",
            "--metrics",
            "127.0.0.1:0",
            "--pg",
            f"127.0.0.1:{port}",
        ],
        stdout=subprocess.PIPE,
        stderr=open(log_path, "w"),
        text=True,
    )
    proc.stdout.readline()  # the start-up line
    deadline = time.time() + 20
    while time.time() < deadline and proc.poll() is None:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            time.sleep(0.1)
    if proc.poll() is None:
        proc.terminate()
        proc.wait(timeout=30)
        why = "did not accept connections within 20 s"
    else:
        why = f"exited with status {proc.returncode}"
    with open(log_path) as f:
        log = f.read()[-4000:]
    sys.exit(f"the pg endpoint (hawking serve --pg 127.0.0.1:{port}) {why}; its log ({log_path}):\n{log}")


def explain_pruning(hawking, store, sql):
    """Per Parquet scan of the plan: the hour partitions listed and what statistics, the
    page index and filter pushdown pruned (DataFusion's EXPLAIN ANALYZE metrics)."""
    out = subprocess.run(
        [hawking, "sql", "--format", "csv", "--data", store, "EXPLAIN ANALYZE " + sql],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    scans = []
    for part in out.split("DataSourceExec:")[1:]:
        part = part.split("Exec:")[0] if "Exec:" in part else part
        # Date and hour: a served store's day spans two dates.
        hours = sorted(set(f"{d} {h}h" for d, h in re.findall(r"date=([\d-]+)/hour=(\d\d)", part)))
        metrics = {}
        for k in ["row_groups_pruned_statistics", "page_index_rows_pruned", "bytes_scanned"]:
            m = re.search(rf"{k}=([^,\]]+)", part)
            if m:
                metrics[k] = m.group(1).strip()
        if "..." in part.split("]]}")[0]:
            metrics["_abbreviated"] = "..."
        scans.append((hours, metrics))
    return scans


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hawking", default="target/release/hawking")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--day-start", default=f"{DAY} 00:00:00",
                    help="UTC start of the store's day (gen_flows writes 2026-11-24)")
    ap.add_argument("--no-pg", action="store_true",
                    help="leave out the pg endpoint rows (otherwise an endpoint that fails to start is an error)")
    args = ap.parse_args()

    import duckdb

    store = os.path.abspath(args.store)
    glob = os.path.join(store, "flows", "*", "*", "*.parquet")
    con = duckdb.connect()
    con.execute(f"SET threads = {args.threads}")
    total = con.execute(f"SELECT count(*) FROM read_parquet('{glob}')").fetchone()[0]
    files = len(
        [f for d, _, fs in os.walk(os.path.join(store, "flows")) for f in fs if f.endswith(".parquet")]
    )
    size = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, fs in os.walk(os.path.join(store, "flows"))
        for f in fs
    )
    print(
        f"store: {total:,} flows in {files} files, {size / 1e9:.2f} GB; {args.threads} threads; "
        f"best and median of {args.runs} runs after a warm-up\n"
    )

    pg_proc, pg_port = (None, None) if args.no_pg else start_pg(args.hawking, store)
    if args.no_pg:
        print("pg endpoint rows left out (--no-pg)\n")
    pg = None
    if pg_proc is not None:
        import psycopg

        pg = psycopg.connect(
            host="127.0.0.1",
            port=pg_port,
            user="bench",
            password="bench",
            dbname="hawking",
            autocommit=True,
        )

    rows = []
    pruning = {}
    try:
        for name, window in windows(args.day_start).items():
            sql = hawking_query(window)
            results = {}
            t, hk = timed(lambda: run_hawking_sql(args.hawking, store, sql), args.runs)
            results["hawking sql"] = (t, hk)
            if pg is not None:

                def via_pg():
                    with pg.cursor() as cur:
                        cur.execute(sql)
                        return [tuple(str(v) for v in r) for r in cur.fetchall()]

                results["pg endpoint (psycopg)"] = timed(via_pg, args.runs)
            dq = duckdb_query(window, glob)
            results["DuckDB " + duckdb.__version__] = timed(
                lambda: [tuple(str(v) for v in r) for r in con.execute(dq).fetchall()],
                args.runs,
            )
            want = [tuple(str(v) for v in r) for r in results["DuckDB " + duckdb.__version__][1]]
            for engine, (times, got) in results.items():
                same = [tuple(str(v) for v in r) for r in got] == want
                rows.append(
                    (name, engine, min(times), statistics.median(times), "yes" if same else "NO")
                )
            pruning[name] = explain_pruning(args.hawking, store, sql)
    finally:
        if pg is not None:
            pg.close()
        if pg_proc is not None:
            pg_proc.terminate()
            pg_proc.wait(timeout=30)

    print("| window | engine | best s | median s | same top 10 as DuckDB |")
    print("|---|---|---:|---:|---|")
    duck = {r[0]: r[3] for r in rows if r[1].startswith("DuckDB")}
    for name, engine, best, median, same in rows:
        print(f"| {name} | {engine} | {best:.3f} | {median:.3f} | {same} |")
    print()
    for name, engine, best, median, same in rows:
        if not engine.startswith("DuckDB"):
            print(f"{name}, {engine}: {median / duck[name]:.2f}x DuckDB's median")
    print("\nPruning (DataFusion EXPLAIN ANALYZE of the hawking sql query), per Parquet scan:")
    for name, scans in pruning.items():
        for hours, metrics in scans:
            listed = f"hours {hours[0]} to {hours[-1]} ({len(hours)} partitions)" if hours else "no files"
            if "..." in metrics.pop("_abbreviated", ""):
                listed = f"hours {hours[0]} to {hours[-1]} (the plan abbreviates its file list)"
            print(f"- {name}: {listed}; " + ", ".join(f"{k}: {v}" for k, v in metrics.items()))
    if any(r[4] == "NO" for r in rows):
        print("\nresults differ between engines", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
