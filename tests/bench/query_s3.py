#!/usr/bin/env python3
"""Query benchmark on object storage: the top-10 workloads query of query_top_workloads.py
through `hawking sql`, over the same Parquet files read from local disk and from a bucket of
a Garage server on loopback (a real S3-compatible object store, `cargo install garage`),
alternating run by run. Prints a markdown table; the answers must be the same.

    tests/bench/query_s3.py STORE_DIR [--runs 5] [--hawking target/release/hawking]

STORE_DIR is a store with a `flows` table (query_top_workloads.sh generates 100M flows into
/work/benchdata/query); its files are uploaded once per run of this script with curl's
SigV4 signing, into a Garage that lives in a temporary directory and is removed afterwards.
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from query_top_workloads import DAY, free_port, hawking_query, run_hawking_sql, windows  # noqa: E402

BUCKET = "bench"
KEY_ID = "GK0123456789abcdef01234567"
SECRET = "5ec7e7" * 10 + "5ec7"
REGION = "us-east-1"


def garage(dir):
    """Starts a single-node Garage under `dir` with bucket `bench`; returns (process, S3 port)."""
    s3, rpc = free_port(), free_port()
    config = os.path.join(dir, "garage.toml")
    with open(config, "w") as f:
        f.write(
            f'metadata_dir = "{dir}/meta"\ndata_dir = "{dir}/data"\ndb_engine = "sqlite"\n'
            f'replication_factor = 1\nrpc_bind_addr = "127.0.0.1:{rpc}"\n'
            f'rpc_public_addr = "127.0.0.1:{rpc}"\nrpc_secret = "{"be17" * 16}"\n'
            f'[s3_api]\ns3_region = "{REGION}"\napi_bind_addr = "127.0.0.1:{s3}"\n'
        )
    proc = subprocess.Popen(
        ["garage", "-c", config, "server"],
        stdout=subprocess.DEVNULL,
        stderr=open(os.path.join(dir, "garage.log"), "w"),
        env={**os.environ, "RUST_LOG": "warn"},
    )
    cli = lambda *a: subprocess.run(["garage", "-c", config, *a], capture_output=True, text=True)
    deadline = time.time() + 30
    while True:
        out = cli("node", "id", "-q")
        if out.returncode == 0:
            break
        if time.time() > deadline:
            sys.exit(f"garage did not start: {out.stderr}")
        time.sleep(0.2)
    node = out.stdout.strip().split("@")[0]
    for args in (
        ["layout", "assign", "-z", "bench", "-c", "100G", node],
        ["layout", "apply", "--version", "1"],
        ["bucket", "create", BUCKET],
        ["key", "import", "--yes", "-n", "bench", KEY_ID, SECRET],
        ["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "bench"],
    ):
        done = cli(*args)
        if done.returncode != 0:
            sys.exit(f"garage {' '.join(args)}: {done.stderr}")
    return proc, s3


def upload(store, s3_port, prefix):
    """PUTs every file of the store's `flows` table under `prefix/` of the bucket."""
    files = 0
    size = 0
    root = os.path.join(store, "flows")
    for d, _, names in os.walk(root):
        for name in sorted(names):
            if not name.endswith(".parquet") or name.startswith("."):
                continue
            path = os.path.join(d, name)
            key = f"{prefix}/flows/{os.path.relpath(path, root)}"
            subprocess.run(
                [
                    "curl", "-sf", "-X", "PUT", "--aws-sigv4", f"aws:amz:{REGION}:s3",
                    "--user", f"{KEY_ID}:{SECRET}", "-H", "x-amz-content-sha256: UNSIGNED-PAYLOAD",
                    # SigV4 signs the path as sent: '=' of date=/hour= goes percent-encoded.
                    "--upload-file", path,
                    f"http://127.0.0.1:{s3_port}/{BUCKET}/{urllib.parse.quote(key, safe='/')}",
                ],
                check=True,
            )
            files += 1
            size += os.path.getsize(path)
    return files, size


def cpu_seconds(pid):
    """User + system CPU seconds the process `pid` has used so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("store")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--hawking", default="target/release/hawking")
    ap.add_argument("--day-start", default=f"{DAY} 00:00:00")
    args = ap.parse_args()
    if shutil.which("garage") is None:
        sys.exit("garage is not installed: `make deps` installs it (cargo install garage)")
    store = os.path.abspath(args.store)
    work = tempfile.mkdtemp(prefix="hawking-s3-bench-")
    proc = None
    try:
        proc, port = garage(work)
        t = time.perf_counter()
        files, size = upload(store, port, "store")
        print(
            f"store: {files} files, {size / 1e9:.2f} GB of flows, uploaded to Garage on loopback "
            f"in {time.perf_counter() - t:.0f} s; best and median of {args.runs} runs after a "
            f"warm-up, local and S3 alternating\n"
        )
        os.environ.update(
            AWS_ENDPOINT_URL=f"http://127.0.0.1:{port}",
            AWS_ACCESS_KEY_ID=KEY_ID,
            AWS_SECRET_ACCESS_KEY=SECRET,
            AWS_ALLOW_HTTP="true",
            AWS_REGION=REGION,
        )
        bucket = f"s3://{BUCKET}/store"
        print(
            "| window | local disk: best / median s | S3 (Garage): best / median s | S3 / local (median) "
            "| CPU-s per query, local | CPU-s per query on S3: hawking + Garage | same answer |"
        )
        print("|---|---|---|---|---|---|---|")
        for name, window in windows(args.day_start).items():
            sql = hawking_query(window)
            run = lambda at: run_hawking_sql(args.hawking, at, sql)
            want, got = run(store), run(bucket)  # warm-up, not counted
            local, remote = [], []
            cpu = {store: 0.0, bucket: 0.0, "garage": 0.0}
            for _ in range(args.runs):
                for at, times in ((store, local), (bucket, remote)):
                    c, g = children_cpu(), cpu_seconds(proc.pid)
                    t = time.perf_counter()
                    rows = run(at)
                    times.append(time.perf_counter() - t)
                    cpu[at] += children_cpu() - c
                    if at == bucket:
                        got = rows
                        cpu["garage"] += cpu_seconds(proc.pid) - g
            ratio = statistics.median(remote) / statistics.median(local)
            print(
                f"| {name} | {min(local):.2f} / {statistics.median(local):.2f} | "
                f"{min(remote):.2f} / {statistics.median(remote):.2f} | {ratio:.2f}x | "
                f"{cpu[store] / args.runs:.2f} | {cpu[bucket] / args.runs:.2f} + "
                f"{cpu['garage'] / args.runs:.2f} | {'yes' if got == want and want else 'NO'} |"
            )
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
