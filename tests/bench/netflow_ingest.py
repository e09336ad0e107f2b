#!/usr/bin/env python3
"""NetFlow ingest benchmark: Hawking beside nfcapd, same packets, same run.

For each protocol (v9, IPFIX), mode and offered rate, `hawking flowgen` (4 exporters, 24 records
per packet, templates every 20 packets) sends a fixed number of flows over loopback to a fresh
collector: Debian's `nfcapd` (32 MiB socket buffer, like Hawking's default) and `hawking serve`
(release build, Parquet store as serve writes it), and, with --compare OLD, a second Hawking
binary on the same traffic, in turn.

Modes:
  storing      `hawking serve` with no cluster configured: flows are stored unattributed.
  attributing  a cluster `bench` whose history holds 4,096 running pods at exactly the cluster
               host addresses flowgen draws from (10.0.0.0/12, see synthetic_flow in
               src/commands/flowgen.rs), imported with `hawking history import --until` (a
               day from now), exporters 127.0.0.0/8, pod range 10.0.0.0/12: every flow's
               endpoints are looked up at the flow's time, half the flows pod to pod, half pod
               to an external address, with the default 5 s grace period.

The collector's CPU time comes from the kernel's accounting of the whole process (os.wait4
rusage: user + system, all threads, start to exit, including Hawking's final commit); peak RSS
from the same rusage. Flows stored are counted from what each collector wrote: `SELECT count(*)
FROM flows` over Hawking's store, nfdump's count of nfcapd's files.

Traffic: flowgen's default load, every record drawn afresh per send (see `hawking flowgen
--help`); --flowgen-repeat sends its older load, a pre-encoded pool re-sent unchanged.

Usage: netflow_ingest.py [--rates 250000,500000,...] [--seconds 4] [--protocols v9,ipfix]
                         [--modes storing,attributing] [--compare PATH_TO_OTHER_HAWKING]
                         [--repeat N] [--flowgen-repeat]
"""
import argparse
import datetime
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
HAWKING = os.path.join(ROOT, "target", "release", "hawking")
PODS = 4096


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_of(rusage):
    return rusage.ru_utime + rusage.ru_stime


def rfc3339(t):
    return datetime.datetime.fromtimestamp(t, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod_address(i):
    # flowgen's cluster hosts: 0x0a000000 | (i * 251 % 0xfffff) for i in 0..4096.
    a = 0x0A000000 | (i * 251 % 0xFFFFF)
    return ".".join(str((a >> s) & 0xFF) for s in (24, 16, 8, 0))


def pods_recording(path, started_at=None):
    """`kubectl get pods -A -o json` of 4,096 running pods at flowgen's cluster hosts, started a
    day ago (or at `started_at`, seconds since the epoch), spread over 40 namespaces, 400
    deployments and 64 nodes."""
    started = rfc3339(time.time() - 86400 if started_at is None else started_at)
    items = []
    for i in range(PODS):
        ns, deploy, node = f"ns-{i % 40}", f"app-{i % 400}", f"node-{i % 64}"
        rs = f"{deploy}-5f6d7c8b9"
        items.append({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": f"{rs}-{i:05d}", "namespace": ns, "uid": f"00000000-0000-4000-8000-{i:012d}",
                "creationTimestamp": started,
                "labels": {"app": deploy, "pod-template-hash": "5f6d7c8b9"},
                "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs,
                                     "uid": f"10000000-0000-4000-8000-{i % 400:012d}", "controller": True}],
            },
            "spec": {"nodeName": node, "containers": [{"name": "app", "image": "app:1"}]},
            "status": {
                "phase": "Running", "podIP": pod_address(i), "podIPs": [{"ip": pod_address(i)}],
                "startTime": started,
                "containerStatuses": [{"name": "app", "ready": True, "restartCount": 0, "image": "app:1",
                                       "imageID": "", "state": {"running": {"startedAt": started}}}],
            },
        })
    with open(path, "w") as f:
        json.dump({"apiVersion": "v1", "kind": "List", "items": items}, f)


def prepare(mode, data, tmp):
    """The store and config `hawking serve` starts with in `mode`; returns extra serve flags."""
    shutil.rmtree(data, ignore_errors=True)
    if mode == "storing":
        return []
    recording = os.path.join(tmp, "pods.json")
    if not os.path.exists(recording):
        pods_recording(recording)
    subprocess.run([HAWKING, "history", "import", recording, "--cluster", "bench",
                    "--until", rfc3339(time.time() + 86400), "--data", data],
                   check=True, capture_output=True)
    config = os.path.join(tmp, "attributing.toml")
    with open(config, "w") as f:
        f.write('[[enricher.clusters]]\nname = "bench"\nwatch = false\n'
                'exporters = ["127.0.0.0/8"]\npod_cidrs = ["10.0.0.0/12"]\n')
    return ["--config", config]


def stored_in(data):
    out = subprocess.run([HAWKING, "sql", "--data", data, "--format", "csv",
                          "SELECT count(*) AS n, count(src_attribution) AS attributed, "
                          "sum(CASE WHEN src_attribution = 'pod' THEN 1 ELSE 0 END) AS pod FROM flows"],
                         check=True, capture_output=True, text=True).stdout.strip().splitlines()
    n, attributed, pod = (int(x or 0) for x in out[-1].split(","))
    return n, attributed, pod


def run_hawking(binary, mode, protocol, rate, flows, tmp):
    data = os.path.join(tmp, "hawking-data")
    extra = prepare(mode, data, tmp)
    proc = subprocess.Popen(
        [binary, "serve", "--netflow", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--data", data] + extra,
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    addr = re.search(r"netflow=(\S+)", line).group(1)
    sent = send(protocol, rate, flows, addr)
    time.sleep(1.0)  # let the listener drain its socket buffer before the signal
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    stored, attributed, pod = stored_in(data)
    if mode == "attributing" and stored and pod * 10 < stored * 9:
        sys.exit(f"attributing run: only {pod} of {stored} source endpoints attributed to pods")
    if mode == "storing" and attributed:
        sys.exit("storing run: flows were attributed")
    return sent, stored, cpu_of(rusage), rusage.ru_maxrss / 1024


def run_nfcapd(mode, protocol, rate, flows, tmp):
    d = os.path.join(tmp, "nfcapd")
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    port = free_port()
    proc = subprocess.Popen(["nfcapd", "-w", d, "-b", "127.0.0.1", "-p", str(port), "-B", str(32 << 20)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):  # wait until it has bound the port
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            probe.bind(("127.0.0.1", port))
            probe.close()
            time.sleep(0.05)
        except OSError:
            break
    sent = send(protocol, rate, flows, f"127.0.0.1:{port}")
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    _, status, rusage = os.wait4(proc.pid, 0)
    info = subprocess.run(["nfdump", "-R", d, "-I"], capture_output=True, text=True).stdout
    stored = int(re.search(r"^Flows: (\d+)", info, re.M).group(1))
    return sent, stored, cpu_of(rusage), rusage.ru_maxrss / 1024


FLOWGEN_EXTRA = []


def send(protocol, rate, flows, addr):
    out = subprocess.run([HAWKING, "flowgen", "--to", addr, "--protocol", protocol, "--rate", str(rate),
                          "--flows", str(flows), "--exporters", "4", "--records-per-packet", "24"]
                         + FLOWGEN_EXTRA,
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"flows=(\d+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="250000,500000,1000000,2000000,3000000,4000000")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--protocols", default="v9,ipfix")
    ap.add_argument("--modes", default="storing,attributing")
    ap.add_argument("--compare", help="another hawking binary to run on the same traffic (e.g. the previous commit's)")
    ap.add_argument("--repeat", type=int, default=1,
                    help="runs per collector and rate; the two Hawking binaries alternate which goes first, "
                         "and the row shows the run with the median CPU per flow")
    ap.add_argument("--flowgen-repeat", action="store_true",
                    help="send flowgen's older load (--repeat: its packet pool re-sent unchanged) "
                         "instead of freshly drawn records, to compare with figures measured that way")
    args = ap.parse_args()
    if args.flowgen_repeat:
        FLOWGEN_EXTRA.append("--repeat")
    rates = [int(r) for r in args.rates.split(",")]
    collectors = [("nfcapd", run_nfcapd),
                  ("hawking", lambda *a: run_hawking(HAWKING, *a))]
    if args.compare:
        collectors.append(("hawking-compared", lambda *a: run_hawking(args.compare, *a)))
    print("| protocol | mode | offered flows/s | collector | flows sent | flows stored | lost | CPU s "
          "| CPU s per 1M flows | peak RSS MiB | /nfcapd | /compared |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in args.protocols.split(","):
            for mode in args.modes.split(","):
                for rate in rates:
                    flows = int(rate * args.seconds)
                    per_m = {}
                    runs = {name: [] for name, _ in collectors}
                    for r in range(args.repeat):
                        order = collectors if r % 2 == 0 else [collectors[0]] + collectors[1:][::-1]
                        for name, run in order:
                            sent, stored, cpu, rss = run(mode, protocol, rate, flows, tmp)
                            runs[name].append((cpu / max(stored, 1) * 1e6, sent, stored, cpu, rss))
                    for name, _ in collectors:
                        results = sorted(runs[name])
                        per_m[name], sent, stored, cpu, rss = results[len(results) // 2]
                        lost = sent - stored
                        if lost == 0:
                            key = (protocol, mode, name)
                            best[key] = max(best.get(key, 0), rate)
                        vs_nfcapd = f"{per_m[name] / per_m['nfcapd']:.2f}" if name != "nfcapd" else ""
                        vs_compared = ""
                        if name == "hawking-compared":
                            vs_compared = f"{per_m['hawking'] / per_m[name]:.2f}"
                        print(f"| {protocol} | {mode} | {rate} | {name} | {sent} | {stored} | {lost} | {cpu:.2f} "
                              f"| {per_m[name]:.3f} | {rss:.0f} | {vs_nfcapd} | {vs_compared} |", flush=True)
    print()
    print("`/nfcapd`: CPU per flow stored over nfcapd's in the same run; `/compared`: this build's "
          "CPU per flow over the compared binary's (below 1: cheaper).")
    print()
    print("| protocol | mode | collector | highest offered rate with no loss (flows/s) |")
    print("|---|---|---|---|")
    for protocol in args.protocols.split(","):
        for mode in args.modes.split(","):
            for name, _ in collectors:
                print(f"| {protocol} | {mode} | {name} | {best.get((protocol, mode, name), 'none of the rates tried')} |")


if __name__ == "__main__":
    sys.exit(main())
