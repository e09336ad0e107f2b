#!/usr/bin/env python3
"""In-cluster exports beside the UDP path: Hubble JSON lines and IPFIX over TCP.

Every run is a fresh `hawking serve` (release build) attributing, in netflow_ingest.py's
`attributing` set-up (cluster `bench`, 4,096 imported pods, default 5 s grace period), with its
Parquet store as serve writes it. In one run of this script, alternating, --runs times:

  hubble     `--hubble-file F`: F is the real Hubble corpus (../shared/real-exports/hubble, 1,922
             lines from four clusters) repeated to --lines lines; the whole file is read as
             fast as serve takes it.
  udp        `hawking flowgen --protocol ipfix` (4 exporters, 24 records per message) at --rate
             flows/s over UDP.
  tcp        the same at the same rate over IPFIX/TCP (`serve --listen-tcp`, `flowgen --tcp`,
             one connection per exporter).
  tcp-max    IPFIX/TCP with the sender unthrottled: TCP's flow control makes the collector
             set the pace, so flows / wall second is its ceiling on this machine.

CPU seconds are the serve process's own (user + system, all threads, start to exit, from
wait4), so per CPU-second figures are per core. Records stored are counted in the store.

    tests/bench/flow_exports.py [--hawking target/release/hawking] [--lines 400000]
                                [--flows 4000000] [--rate 500000] [--runs 3]
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
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netflow_ingest as ni  # noqa: E402  (its attributing set-up and store count)

ROOT = ni.ROOT
CORPUS = os.path.join(ROOT, "..", "shared", "real-exports", "hubble")


def hubble_file(path, lines):
    corpus = []
    for dirpath, _, files in sorted(os.walk(CORPUS)):
        for name in sorted(files):
            if name.endswith(".jsonl"):
                with open(os.path.join(dirpath, name)) as f:
                    corpus.extend(line for line in f if line.strip())
    if not corpus:
        sys.exit(f"{CORPUS} holds no Hubble lines: the real exports are not here")
    with open(path, "w") as out:
        for i in range(lines):
            out.write(corpus[i % len(corpus)])
    return len(corpus)


def metric(metrics_addr, name, label):
    text = urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + "{") and label in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def serve(tmp, extra):
    os.makedirs(tmp, exist_ok=True)
    data = os.path.join(tmp, "data")
    flags = ni.prepare("attributing", data, tmp)
    proc = subprocess.Popen(
        [ni.HAWKING, "serve", "--netflow", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--data", data]
        + flags + extra,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    if not line.startswith("hawking serving"):
        sys.exit(f"hawking serve did not start: {line!r}")
    field = lambda k: re.search(rf"{k}=(\S+)", line).group(1)  # noqa: E731
    return proc, data, field("netflow"), field("netflow_tcp"), field("metrics")


def stop(proc, data):
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    _, _, rusage = os.wait4(proc.pid, 0)
    stored, _, _ = ni.stored_in(data)
    return stored, ni.cpu_of(rusage), rusage.ru_maxrss / 1024


def run_hubble(tmp, path, lines):
    proc, data, _, _, metrics = serve(tmp, ["--hubble-file", path])
    start = time.monotonic()
    while metric(metrics, "hawking_component_sent_events_total", 'component="hubble_file_0"') < lines:
        time.sleep(0.05)
        if time.monotonic() - start > 600:
            sys.exit("the Hubble file was not read within 10 minutes")
    wall = time.monotonic() - start
    stored, cpu, rss = stop(proc, data)
    return lines, stored, cpu, wall, rss


def run_ipfix(tmp, transport, rate, flows):
    extra = ["--listen-tcp", "127.0.0.1:0"] if transport == "tcp" else []
    proc, data, udp, tcp, _ = serve(tmp, extra)
    to = tcp if transport == "tcp" else udp
    start = time.monotonic()
    out = subprocess.run([ni.HAWKING, "flowgen", "--to", to, "--protocol", "ipfix", "--rate", str(rate),
                          "--flows", str(flows), "--exporters", "4", "--records-per-packet", "24"]
                         + (["--tcp"] if transport == "tcp" else []),
                         capture_output=True, text=True, check=True).stdout
    wall = time.monotonic() - start
    sent = int(re.search(r"flows=(\d+)", out).group(1))
    time.sleep(1.0)  # the socket buffers drain before the signal
    stored, cpu, rss = stop(proc, data)
    return sent, stored, cpu, wall, rss


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hawking", default=os.path.join(ROOT, "target", "release", "hawking"))
    ap.add_argument("--lines", type=int, default=400_000)
    ap.add_argument("--flows", type=int, default=4_000_000)
    ap.add_argument("--rate", type=int, default=500_000)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    ni.HAWKING = args.hawking
    results = {k: [] for k in ("hubble", "udp", "tcp", "tcp-max")}
    with tempfile.TemporaryDirectory(prefix="hawking-exports-") as tmp:
        path = os.path.join(tmp, "events.log")
        distinct = hubble_file(path, args.lines)
        for _ in range(args.runs):
            results["hubble"].append(run_hubble(os.path.join(tmp, "h"), path, args.lines))
            results["udp"].append(run_ipfix(os.path.join(tmp, "u"), "udp", args.rate, args.flows))
            results["tcp"].append(run_ipfix(os.path.join(tmp, "t"), "tcp", args.rate, args.flows))
            results["tcp-max"].append(run_ipfix(os.path.join(tmp, "m"), "tcp", 0, args.flows))
    print(f"Hubble: {args.lines} lines ({distinct} distinct real lines repeated); IPFIX: {args.flows} flows, "
          f"4 exporters, 24 records per message; attributing; {args.runs} runs, median by CPU per record")
    print()
    print("| path | offered | records in | stored | serve CPU-s | records per CPU-s | CPU per record vs UDP "
          "| wall records/s | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|")
    median = {}
    for k, runs in results.items():
        runs = sorted(runs, key=lambda r: r[2] / max(r[1], 1))
        median[k] = runs[len(runs) // 2]
    udp_cost = median["udp"][2] / max(median["udp"][1], 1)
    offered = {"hubble": "file, unthrottled", "udp": f"{args.rate:,}/s", "tcp": f"{args.rate:,}/s",
               "tcp-max": "unthrottled"}
    for k, (sent, stored, cpu, wall, rss) in median.items():
        cost = cpu / max(stored, 1)
        print(f"| {k} | {offered[k]} | {sent:,} | {stored:,} | {cpu:.2f} | {stored / cpu:,.0f} | "
              f"{cost / udp_cost:.2f}x | {stored / wall:,.0f} | {rss:.0f} |")
    spread = {k: [round(r[1] / r[2]) for r in v] for k, v in results.items()}
    print()
    print("records per CPU-s, every run:", spread)
    lost = {k: v[0] - v[1] for k, v in median.items() if v[0] != v[1]}
    if lost:
        print("records not stored (median run):", lost)


if __name__ == "__main__":
    main()
