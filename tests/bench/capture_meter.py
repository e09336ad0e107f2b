#!/usr/bin/env python3
"""Capture metering: packets per CPU-second, Hawking beside softflowd on the same file.

Both read one raw-traffic capture and meter its packets into flows under the same timeouts
(15 s idle, 1800 s active), in the same run, alternating:

- softflowd (Debian) reads the file (`-r`) and exports IPFIX (`-v 10 -a`) to a UDP socket this
  script drains;
- `hawking replay --capture FILE --meter ADDR` meters it and writes the flows as CSV (its
  attribution stage runs; no history is given, so endpoints are `external`/unattributed).

The capture is fixtures/traffic.pcap repeated --copies times, each copy shifted by its span
(editcap -t, mergecap -a), so flows do not merge across copies. CPU seconds are each child's
own (user + system, from wait4).

    tests/bench/capture_meter.py [--hawking target/release/hawking] [--copies 40] [--runs 3]
"""

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SPAN = 900  # seconds covered by fixtures/traffic.pcap


def run(cmd):
    """Runs cmd; returns (wall seconds, CPU seconds of the child)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.monotonic() - start
    err = proc.stderr.read().decode(errors="replace")
    if os.waitstatus_to_exitcode(status) != 0:
        sys.exit(f"{cmd[0]} failed: {err}")
    return wall, usage.ru_utime + usage.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--hawking", default=os.path.join(ROOT, "target", "release", "hawking"))
    ap.add_argument("--copies", type=int, default=40)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    for tool in ("softflowd", "editcap", "mergecap", "capinfos"):
        if not shutil.which(tool) and not os.path.exists(f"/usr/sbin/{tool}"):
            sys.exit(f"{tool} is not installed (make test installs it)")
    softflowd = shutil.which("softflowd") or "/usr/sbin/softflowd"
    tmp = tempfile.mkdtemp(prefix="hawking-meter-")
    try:
        parts = []
        for i in range(args.copies):
            part = os.path.join(tmp, f"part{i}.pcap")
            subprocess.run(["editcap", "-t", str(i * SPAN), os.path.join(ROOT, "fixtures", "traffic.pcap"), part],
                           check=True, capture_output=True)
            parts.append(part)
        pcap = os.path.join(tmp, "traffic.pcap")
        subprocess.run(["mergecap", "-a", "-w", pcap] + parts, check=True, capture_output=True)
        for p in parts:
            os.remove(p)
        packets = int(subprocess.run(["capinfos", "-c", "-M", "-T", pcap], check=True, capture_output=True,
                                     text=True).stdout.strip().splitlines()[-1].split("\t")[-1])

        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        sink.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        stop = threading.Event()

        def drain():
            sink.settimeout(0.2)
            while not stop.is_set():
                try:
                    sink.recv(65535)
                except socket.timeout:
                    pass

        threading.Thread(target=drain, daemon=True).start()
        port = sink.getsockname()[1]
        ctl = f"/tmp/hm{os.getpid() & 0xffff:04x}"
        tools = {
            "softflowd 1.1": [softflowd, "-r", pcap, "-n", f"127.0.0.1:{port}", "-v", "10", "-a", "-d",
                              "-t", "general=15", "-t", "maxlife=1800", "-c", ctl,
                              "-p", os.path.join(tmp, "softflowd.pid")],
            "hawking replay --meter": [args.hawking, "replay", "--capture", pcap, "--meter", "192.0.2.1",
                                       "--idle-timeout", "15", "--active-timeout", "1800",
                                       "--format", "csv", "--out", os.path.join(tmp, "flows.csv")],
        }
        cpu = {name: [] for name in tools}
        wall = {name: [] for name in tools}
        for _ in range(args.runs):
            for name, cmd in tools.items():
                w, c = run(cmd)
                wall[name].append(w)
                cpu[name].append(c)
                if os.path.exists(ctl):
                    os.remove(ctl)
        stop.set()
        flows = sum(1 for _ in open(os.path.join(tmp, "flows.csv"))) - 1
        print(f"capture: fixtures/traffic.pcap x{args.copies}, {packets:,} packets; "
              f"hawking metered {flows:,} flows; {args.runs} runs each, alternating, median\n")
        print("| meter | wall s | CPU s | packets per CPU-s | CPU vs softflowd |")
        print("|---|---|---|---|---|")
        base = statistics.median(cpu["softflowd 1.1"])
        for name in tools:
            c = statistics.median(cpu[name])
            print(f"| {name} | {statistics.median(wall[name]):.2f} | {c:.2f} | {packets / c:,.0f} | {c / base:.2f}x |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
