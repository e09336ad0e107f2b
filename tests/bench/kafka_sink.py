#!/usr/bin/env python3
"""The Kafka sink's cost: attributed ingest with `[kafka]` on beside the same ingest with it
off, side by side in one run.

Every run is a fresh `hawking serve` (release build) in netflow_ingest.py's `attributing`
set-up (cluster `bench`, 4,096 imported pods, the default 5 s grace period), its store as
serve writes it; `kafka` runs add a `[kafka]` section pointing at a tansu broker on loopback
(memory storage, topic `hawking.flows` with 3 partitions). `hawking flowgen` sends --flows
v9 flows at --rate; a `kafka` run is stopped only once the broker has acknowledged every
flow the store committed (the sink's sent counter), so its CPU includes delivery. The two
modes alternate, --runs times each. CPU seconds are the serve process's own (wait4: user +
system, all threads, start to exit); tansu's are not counted, but it shares the two cores.

    tests/bench/kafka_sink.py [--hawking target/release/hawking] [--rate 200000]
                              [--flows 2000000] [--runs 3] [--kafka-extra TOML]
"""

import argparse
import os
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netflow_ingest as ni  # noqa: E402  (its attributing set-up, sender and store count)


def free_tcp_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def metric(addr, name, labels):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


def start_tansu(tmp, topics=("hawking.flows",)):
    port = free_tcp_port()
    log = open(os.path.join(tmp, "tansu.log"), "w")
    proc = subprocess.Popen(["tansu", "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
                             "--advertised-listener-url", f"tcp://127.0.0.1:{port}",
                             "--storage-engine", "memory://tansu/"], stdout=log, stderr=log)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    for topic in topics:
        subprocess.run(["tansu", "topic", "create", topic, "--partitions", "3",
                        "--broker", f"tcp://127.0.0.1:{port}"], check=True, capture_output=True)
    return proc, port


def run(mode, args, tmp, broker_port):
    data = os.path.join(tmp, "data")
    extra = ni.prepare("attributing", data, tmp)
    if mode == "kafka":
        config = os.path.join(tmp, "kafka.toml")
        with open(extra[1]) as f, open(config, "w") as out:
            out.write(f.read())
            out.write(f'\n[kafka]\nbrokers = "127.0.0.1:{broker_port}"\n{args.kafka_extra}\n')
        extra = ["--config", config]
    proc = subprocess.Popen([ni.HAWKING, "serve", "--netflow", "127.0.0.1:0", "--metrics",
                             "127.0.0.1:0", "--data", data] + extra,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    addr = re.search(r"netflow=(\S+)", line).group(1)
    metrics = re.search(r"metrics=(\S+)", line).group(1)
    sent = ni.send("v9", args.rate, args.flows, addr)
    time.sleep(1.0)
    delivered = 0.0
    if mode == "kafka":
        # The store commits what the stage releases; wait until Kafka has acknowledged as much.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            stored = metric(metrics, "hawking_store_rows_written_total", {"table": "flows"})
            delivered = metric(metrics, "hawking_component_sent_events_total", {"component": "kafka"})
            if stored >= sent * 0.999 and delivered >= stored:
                break
            time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    proc.stdout.read()
    _, _, rusage = os.wait4(proc.pid, 0)
    stored, _, pod = ni.stored_in(data)
    if stored and pod * 10 < stored * 9:
        sys.exit(f"{mode}: only {pod} of {stored} flows attributed to pods")
    return {"sent": sent, "stored": stored, "delivered": int(delivered),
            "cpu": ni.cpu_of(rusage), "rss": rusage.ru_maxrss / 1024}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hawking", default=ni.HAWKING)
    ap.add_argument("--rate", type=int, default=200000)
    ap.add_argument("--flows", type=int, default=2000000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--kafka-extra", default="",
                    help='more [kafka] lines, e.g. properties = { "compression.type" = "none" }')
    args = ap.parse_args()
    ni.HAWKING = os.path.abspath(args.hawking)
    results = {"off": [], "kafka": []}
    with tempfile.TemporaryDirectory(prefix="hawking-kafka-bench-") as tmp:
        broker, port = start_tansu(tmp)
        try:
            for r in range(args.runs):
                for mode in (["off", "kafka"] if r % 2 == 0 else ["kafka", "off"]):
                    results[mode].append(run(mode, args, tmp, port))
                    m = results[mode][-1]
                    print(f"  run {r + 1} {mode}: {m}", file=sys.stderr)
        finally:
            broker.kill()
            broker.wait()
    print(f"| Kafka sink | offered flows/s | flows sent | stored (median) | delivered to Kafka | "
          f"CPU s (median) | CPU s per 1M flows stored | peak RSS MiB | vs off |")
    print("|---|---|---|---|---|---|---|---|---|")
    per_flow = {}
    for mode in ("off", "kafka"):
        runs = results[mode]
        cpu = statistics.median(m["cpu"] for m in runs)
        stored = statistics.median(m["stored"] for m in runs)
        per_flow[mode] = cpu / stored * 1e6
        ratio = "" if mode == "off" else f"{per_flow['kafka'] / per_flow['off']:.2f}"
        delivered = "" if mode == "off" else str(int(statistics.median(m["delivered"] for m in runs)))
        print(f"| {mode} | {args.rate} | {runs[0]['sent']} | {int(stored)} | {delivered} | {cpu:.2f} | "
              f"{per_flow[mode]:.3f} | {max(m['rss'] for m in runs):.0f} | {ratio} |")
    print(f"\nCPU per flow with the Kafka sink: {per_flow['kafka'] / per_flow['off']:.2f}x without it "
          f"(issue 17's target: at most 1.20x)")


if __name__ == "__main__":
    main()
