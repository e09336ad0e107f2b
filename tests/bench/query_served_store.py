#!/usr/bin/env python3
"""Query benchmark on a store `hawking serve` wrote itself, not gen_flows' layout.

gen_flows (query/examples/gen_flows.rs) writes one time-ordered file per hour; `hawking serve`
writes one file per hour partition it touches at every commit, and its background compaction
merges closed hours later. This script makes such a store (background compaction off, so the
small files stay for the first measurement), runs the query benchmark's queries on it, then
compacts it with `hawking store compact` and runs them again:

1. imports the history of 4,096 running pods at flowgen's cluster hosts (the attributing
   mode of netflow_ingest.py: cluster `bench`, exporters 127.0.0.0/8, pods 10.0.0.0/12);
2. starts `hawking serve` with that cluster and `[store] flush_interval_secs = --flush`;
3. runs `hawking flowgen` (v9, 4 exporters, 24 records per packet) at --rate flows/s with
   its exporter clock starting 25 hours ago and running --speed times faster than the wall
   clock, for (86,400 - 180) / --speed seconds: the flows' times cover a day, and serve commits as
   it would on a live day, compressed. The defaults (100,000 flows/s, speed 100, a commit
   every 0.05 s) give what a day at 1,000 flows/s with 5 s commits makes: about 720 files
   per hour of about 5,000 flows each, 86.4M flows, in 14.4 minutes;
4. stops serve, reports the store (flows, files, files per hour), then runs
   tests/bench/query_top_workloads.py on it with that day's windows;
5. `hawking store compact --before now` (timed: CPU and wall seconds), then the same queries on
   the compacted store (--no-compact skips it);
6. re-attribution (issue 18): `hawking replay` of the whole day with serve's configuration,
   written as Parquet, then again with --diff, timed: flows per wall second and per
   CPU-second, peak memory (--no-replay skips it).

    tests/bench/query_served_store.py [--hawking target/release/hawking] [--rate 100000]
        [--speed 100] [--flush 0.05] [--runs 5] [--dir /work/benchdata/served] [--keep]
        [--no-queries] [--no-compact] [--no-replay]
"""

import argparse
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import netflow_ingest  # noqa: E402  (the pod recording and the attributing set-up)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hawking", default=os.path.join(netflow_ingest.ROOT, "target", "release", "hawking"))
    ap.add_argument("--rate", type=int, default=100_000, help="flows per second sent")
    ap.add_argument("--speed", type=float, default=100.0, help="exporter seconds per real second")
    ap.add_argument("--flush", type=float, default=0.05, help="serve's [store] flush_interval_secs")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--dir", default="/work/benchdata/served")
    ap.add_argument("--keep", action="store_true", help="keep the store afterwards")
    ap.add_argument("--no-compact", action="store_true", help="skip step 5")
    ap.add_argument("--no-replay", action="store_true", help="skip step 6")
    ap.add_argument("--no-queries", action="store_true",
                    help="skip the query runs of steps 4 and 5 (the store, compaction and replay only)")
    args = ap.parse_args()
    hawking = os.path.abspath(args.hawking)
    netflow_ingest.HAWKING = hawking

    shutil.rmtree(args.dir, ignore_errors=True)
    os.makedirs(args.dir)
    data = os.path.join(args.dir, "store")
    now = time.time()
    # The day: 24 whole hours ending an hour before the last whole hour, so a sender that
    # falls behind its rate (its clock then runs past the day) still sends no future flows.
    day_end = int(now // 3600) * 3600 - 3600
    day_start = day_end - 86400
    # The clock runs from 90 s into the day to 90 s before its end: flows (up to 90 s long
    # and ending before the clock) stay inside its 24 hour partitions.
    seconds = (86400 - 180) / args.speed
    flows = int(args.rate * seconds)

    recording = os.path.join(args.dir, "pods.json")
    netflow_ingest.pods_recording(recording, started_at=day_start - 3600)
    subprocess.run([hawking, "history", "import", recording, "--cluster", "bench",
                    "--until", netflow_ingest.rfc3339(now + 86400), "--data", data],
                   check=True, capture_output=True)
    config = os.path.join(args.dir, "serve.toml")
    with open(config, "w") as f:
        f.write(f"[store]\nflush_interval_secs = {args.flush}\n\n"
                "[store.compaction]\nenabled = false\n\n"
                '[[enricher.clusters]]\nname = "bench"\nwatch = false\n'
                'exporters = ["127.0.0.0/8"]\npod_cidrs = ["10.0.0.0/12"]\n')

    log_path = os.path.join(args.dir, "serve.log")
    with open(log_path, "w") as log:
        proc = subprocess.Popen([hawking, "serve", "--netflow", "127.0.0.1:0", "--metrics", "127.0.0.1:0",
                                 "--data", data, "--config", config],
                                stdout=subprocess.PIPE, stderr=log, text=True)
    line = proc.stdout.readline()
    m = re.search(r"netflow=(\S+)", line)
    if not m:
        proc.kill()
        sys.exit(f"hawking serve did not start ({line!r}); see {log_path}")
    print(f"sending {flows:,} flows at {args.rate:,}/s for {seconds:.0f} s, exporter clock from "
          f"{netflow_ingest.rfc3339(day_start)} at {args.speed:g}x; serve commits every {args.flush} s",
          file=sys.stderr)
    sent_out = subprocess.run(
        [hawking, "flowgen", "--to", m.group(1), "--protocol", "v9", "--exporters", "4",
         "--records-per-packet", "24", "--rate", str(args.rate), "--flows", str(flows),
         "--clock-start", netflow_ingest.rfc3339(day_start + 90), "--clock-speed", str(args.speed)],
        capture_output=True, text=True, check=True).stdout
    sent = int(re.search(r"flows=(\d+)", sent_out).group(1))
    time.sleep(1.0)  # let the listener drain its socket buffer before the signal
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    if proc.wait() != 0:
        sys.exit(f"hawking serve exited with status {proc.returncode}; see {log_path}")

    stored, _, pod = netflow_ingest.stored_in(data)
    per_hour = {}
    flows_dir = os.path.join(data, "flows")
    for d, _, fs in os.walk(flows_dir):
        n = sum(1 for f in fs if f.endswith(".parquet"))
        if n:
            per_hour[os.path.relpath(d, flows_dir)] = n
    files = sum(per_hour.values())
    if not files:
        sys.exit(f"serve stored no flow files; see {log_path}")
    print(f"store written by hawking serve: {stored:,} of {sent:,} flows sent ({sent - stored:,} lost), "
          f"{pod:,} with a pod source; {files:,} files in {len(per_hour)} hour partitions "
          f"(files per hour: median {statistics.median(per_hour.values()):.0f}, "
          f"min {min(per_hour.values())}, max {max(per_hour.values())}; "
          f"{stored / files:,.0f} flows per file)\n")
    if pod * 10 < stored * 9:
        sys.exit(f"only {pod} of {stored} source endpoints attributed to pods: the history does not cover the flows")

    day = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(day_start))
    queries = [sys.executable, os.path.join(HERE, "query_top_workloads.py"), data,
               "--runs", str(args.runs), "--hawking", hawking, "--day-start", day]
    status = 0 if args.no_queries else subprocess.run(queries).returncode
    if status == 0 and not args.no_compact:
        before = os.times()
        wall = time.monotonic()
        subprocess.run([hawking, "store", "compact", "--before", "now", "--data", data],
                       check=True, capture_output=True)
        after = os.times()
        cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
        files_after = sum(1 for _, _, fs in os.walk(flows_dir) for f in fs if f.endswith(".parquet"))  # the tree engines glob
        print(f"\nhawking store compact: {files:,} files -> {files_after:,} in {time.monotonic() - wall:.1f} s "
              f"wall, {cpu:.1f} CPU-s ({cpu * 1e6 / max(stored, 1):.2f} CPU-s per million flows)\n")
        status = 0 if args.no_queries else subprocess.run(queries).returncode
    if status == 0 and not args.no_replay:
        out = os.path.join(args.dir, "replayed")
        for what, flags in [("re-attributed flows written as Parquet", ["--format", "parquet", "--out", out]),
                            ("--diff: the endpoints whose attribution changed, as CSV",
                             ["--diff", "--format", "csv", "--out", out])]:
            wall = time.monotonic()
            proc = subprocess.Popen([hawking, "replay", "--from", netflow_ingest.rfc3339(day_start),
                                     "--to", netflow_ingest.rfc3339(day_end), "--data", data, "--config", config]
                                    + flags, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            _, st, usage = os.wait4(proc.pid, 0)
            wall = time.monotonic() - wall
            err = proc.stderr.read().decode(errors="replace")
            if os.waitstatus_to_exitcode(st) != 0:
                sys.exit(f"hawking replay failed: {err}")
            cpu = usage.ru_utime + usage.ru_stime
            print(f"\nhawking replay of the day ({what}): {stored:,} flows in {wall:.1f} s wall, "
                  f"{cpu:.1f} CPU-s, max RSS {usage.ru_maxrss / 1024:.0f} MiB: {stored / wall / 1e6:.2f}M flows/s, "
                  f"{stored / cpu / 1e6:.2f}M flows per CPU-s")
            os.remove(out)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
