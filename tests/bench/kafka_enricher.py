#!/usr/bin/env python3
"""An enricher consuming from Kafka: how many raw flows a second `hawking serve --role
enricher` attributes and stores, reading a backlog that a collector published.

A tansu broker on loopback (memory storage, topic `hawking.raw` with 3 partitions) is filled
by `hawking serve --role collector` while `hawking flowgen` sends it --flows v9 flows (4
exporters, so 4 keys) at --fill-rate. Then `hawking serve --role enricher` starts on a store
with netflow_ingest.py's `attributing` history (4,096 pods at flowgen's addresses, the
default 5 s grace period) and consumes the backlog from the start: its store as serve writes
it (Parquet, zstd 1). The store's committed flow rows are sampled every 0.2 s; the rate is
the slope between 10% and 90% of the backlog stored (steady state: neither the group join
nor the grace period at the start, nor the last commit, counts). CPU is the enricher
process's own (wait4), per million flows stored; tansu shares the two cores, and the CPU it
used while the enricher ran is shown beside it.

    tests/bench/kafka_enricher.py [--hawking target/release/hawking] [--flows 8000000]
                                  [--fill-rate 1000000] [--runs 2]
"""

import argparse
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import kafka_sink as ks  # noqa: E402  (tansu, metrics)
import netflow_ingest as ni  # noqa: E402  (the attributing set-up, flowgen, store count)

STORED = ("hawking_store_rows_written_total", {"table": "flows"})


def serve(role, data, config):
    proc = subprocess.Popen([ni.HAWKING, "serve", "--role", role, "--netflow", "127.0.0.1:0",
                             "--metrics", "127.0.0.1:0", "--data", data, "--config", config],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("hawking serving"):
        sys.exit(f"{role} did not start: {line!r}")
    return proc, line


def stop(proc):
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    if status != 0:
        sys.exit(f"serve exited with {status}: {out}")
    return out, rusage


def fill(tmp, config, flows, rate):
    """A collector publishes what flowgen sends; returns the flows it published."""
    proc, line = serve("collector", os.path.join(tmp, "collector"), config)
    addr = re.search(r"netflow=(\S+)", line).group(1)
    metrics = re.search(r"metrics=(\S+)", line).group(1)
    ni.send("v9", rate, flows, addr)
    # Published once the broker acknowledged every message the collector made.
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        made = ks.metric(metrics, "hawking_component_received_events_total", {"component": "kafka_raw"})
        acked = ks.metric(metrics, "hawking_component_sent_events_total", {"component": "kafka_raw"})
        if made > 0 and acked >= made:
            break
        time.sleep(0.2)
    out, _ = stop(proc)
    return int(re.search(r" flows=(\d+)", out).group(1))


def cpu_seconds(pid):
    """User + system CPU seconds `pid` has used so far (/proc/PID/stat)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def consume(tmp, config, backlog, group, broker_pid):
    data = os.path.join(tmp, "store")
    extra = ni.prepare("attributing", data, tmp)
    with open(extra[1]) as f, open(config) as roles, open(os.path.join(tmp, "enricher.toml"), "w") as out:
        out.write(f.read())
        out.write(f"\n{roles.read()}group_id = \"{group}\"\n")
    started = time.monotonic()
    broker_cpu = cpu_seconds(broker_pid)
    proc, line = serve("enricher", data, os.path.join(tmp, "enricher.toml"))
    metrics = re.search(r"metrics=(\S+)", line).group(1)
    samples = []
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        n = ks.metric(metrics, *STORED)
        samples.append((time.monotonic(), n))
        if n >= backlog:
            break
        time.sleep(0.2)
    broker_cpu = cpu_seconds(broker_pid) - broker_cpu
    _, rusage = stop(proc)
    stored, _, pod = ni.stored_in(data)
    if pod * 10 < stored * 9:
        sys.exit(f"only {pod} of {stored} flows attributed to pods")
    at = lambda frac: next(t for t, n in samples if n >= frac * backlog)  # noqa: E731
    t10, t90 = at(0.1), at(0.9)
    return {"stored": stored, "rate": 0.8 * backlog / (t90 - t10),
            "wall": samples[-1][0] - started, "cpu": ni.cpu_of(rusage), "broker_cpu": broker_cpu,
            "rss": rusage.ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hawking", default=ni.HAWKING)
    ap.add_argument("--flows", type=int, default=8_000_000)
    ap.add_argument("--fill-rate", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=2)
    ap.add_argument("--property", action="append", default=[], metavar="KEY=VALUE",
                    help="a librdkafka property for both roles ([roles] properties), repeatable")
    args = ap.parse_args()
    ni.HAWKING = os.path.abspath(args.hawking)
    with tempfile.TemporaryDirectory(prefix="hawking-enricher-bench-") as tmp:
        broker, port = ks.start_tansu(tmp, ("hawking.raw",))
        try:
            config = os.path.join(tmp, "roles.toml")
            with open(config, "w") as f:
                f.write(f'[roles]\nbrokers = "127.0.0.1:{port}"\n')
                if args.property:
                    pairs = ", ".join(
                        '"{}" = "{}"'.format(*p.split("=", 1)) for p in args.property
                    )
                    f.write(f"properties = {{ {pairs} }}\n")
            backlog = fill(tmp, config, args.flows, args.fill_rate)
            print(f"  backlog: {backlog} flows published", file=sys.stderr)
            runs = []
            for r in range(args.runs):
                # A new group each run reads the backlog from its start.
                runs.append(consume(tmp, config, backlog, f"bench-{r}", broker.pid))
                print(f"  run {r + 1}: {runs[-1]}", file=sys.stderr)
        finally:
            broker.kill()
            broker.wait()
    for m in runs:
        if m["stored"] != backlog:
            sys.exit(f"stored {m['stored']} of {backlog}")
    rate = statistics.median(m["rate"] for m in runs)
    cpu = statistics.median(m["cpu"] for m in runs)
    print("| enricher from Kafka | backlog flows | stored | flows/s (10%-90% of the backlog) | "
          "wall s | CPU s | CPU s per 1M flows | broker CPU s meanwhile | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    for i, m in enumerate(runs):
        print(f"| run {i + 1} | {backlog} | {m['stored']} | {m['rate']:,.0f} | {m['wall']:.1f} | "
              f"{m['cpu']:.2f} | {m['cpu'] / m['stored'] * 1e6:.3f} | {m['broker_cpu']:.2f} | "
              f"{m['rss']:.0f} |")
    print(f"\nmedian: {rate:,.0f} flows/s attributed and stored, {cpu / backlog * 1e6:.3f} CPU-s per "
          f"million (issue 17's target: at least 1,000,000 flows/s)")


if __name__ == "__main__":
    main()
