#!/usr/bin/env python3
"""NetFlow ingest benchmark: Hawking beside nfcapd, same packets, same run.

For each protocol (v9, IPFIX) and each offered rate, `hawking flowgen` (4 exporters, 24 records
per packet, templates every 20 packets) sends a fixed number of flows over loopback to a fresh
collector: `hawking serve` (release build, Parquet store) or Debian's `nfcapd` (32 MiB socket
buffer, like Hawking's default). The collector's CPU time comes from the kernel's accounting of
the whole process (os.wait4 rusage: user + system, all threads, start to exit, including
Hawking's final commit). Flows stored are counted from what each wrote: Hawking's committed
rows, nfdump's count of nfcapd's files.

Reported per run: CPU seconds per million flows stored, and loss (sent - stored). "Highest rate
with no loss" is the highest offered rate at which stored == sent.

Usage: netflow_ingest.py [--rates 250000,500000,...] [--seconds 4] [--protocols v9,ipfix]
"""
import argparse
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


def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def cpu_of(rusage):
    return rusage.ru_utime + rusage.ru_stime


def run_hawking(protocol, rate, flows, tmp):
    data = os.path.join(tmp, "hawking-data")
    shutil.rmtree(data, ignore_errors=True)
    proc = subprocess.Popen(
        [HAWKING, "serve", "--netflow", "127.0.0.1:0", "--metrics", "127.0.0.1:0", "--data", data],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = proc.stdout.readline()
    addr = re.search(r"netflow=(\S+)", line).group(1)
    sent = send(protocol, rate, flows, addr)
    time.sleep(1.0)  # let the listener drain its socket buffer before the signal
    proc.send_signal(signal.SIGTERM)
    out = proc.stdout.read()
    _, status, rusage = os.wait4(proc.pid, 0)
    stored = int(re.search(r"rows_committed=(\d+)", out).group(1))
    return sent, stored, cpu_of(rusage)


def run_nfcapd(protocol, rate, flows, tmp):
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
    return sent, stored, cpu_of(rusage)


def send(protocol, rate, flows, addr):
    out = subprocess.run([HAWKING, "flowgen", "--to", addr, "--protocol", protocol, "--rate", str(rate),
                          "--flows", str(flows), "--exporters", "4", "--records-per-packet", "24"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"flows=(\d+)", out).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rates", default="250000,500000,1000000,2000000,3000000")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--protocols", default="v9,ipfix")
    args = ap.parse_args()
    rates = [int(r) for r in args.rates.split(",")]
    print("| protocol | offered flows/s | collector | flows sent | flows stored | lost | CPU s | CPU s per 1M flows | Hawking/nfcapd |")
    print("|---|---|---|---|---|---|---|---|---|")
    best = {}
    with tempfile.TemporaryDirectory() as tmp:
        for protocol in args.protocols.split(","):
            for rate in rates:
                flows = int(rate * args.seconds)
                results = {}
                for name, run in (("nfcapd", run_nfcapd), ("hawking", run_hawking)):
                    sent, stored, cpu = run(protocol, rate, flows, tmp)
                    per_m = cpu / max(stored, 1) * 1e6
                    results[name] = per_m
                    lost = sent - stored
                    if lost == 0:
                        best[(protocol, name)] = max(best.get((protocol, name), 0), rate)
                    ratio = f"{results['hawking'] / results['nfcapd']:.2f}" if name == "hawking" else ""
                    print(f"| {protocol} | {rate} | {name} | {sent} | {stored} | {lost} | {cpu:.2f} | {per_m:.3f} | {ratio} |",
                          flush=True)
    print()
    print("| protocol | collector | highest offered rate with no loss (flows/s) |")
    print("|---|---|---|")
    for protocol in args.protocols.split(","):
        for name in ("nfcapd", "hawking"):
            print(f"| {protocol} | {name} | {best.get((protocol, name), 'none of the rates tried')} |")


if __name__ == "__main__":
    sys.exit(main())
