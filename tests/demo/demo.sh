#!/usr/bin/env bash
# The demo: the full pipeline on embedded defaults through real sockets.
#   1. The history of a small cluster is imported from kubectl recordings
#      (fixtures/k8s/import/: a `kubectl get pods -A -o json` snapshot and a
#      `kubectl get pods -A -w -o json --output-watch-events` stream).
#   2. softflowd (a real exporter) reads fixtures/demo-cluster.pcap, that cluster's traffic,
#      and exports it as IPFIX over UDP to `hawking serve`, which decodes the flows,
#      attributes each endpoint to the workload that held the address at the flow's own time,
#      and commits them to a Parquet store.
#   3. `hawking sql` and `hawking whois` answer questions about them.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/hawking
DATA=target/demo-data
rm -rf "$DATA"
mkdir -p "$DATA"
OUT=$(mktemp)
trap 'kill $PID 2>/dev/null || true; rm -f "$OUT"' EXIT
PID=

echo "== importing the history of cluster 'demo' from kubectl recordings"
"$BIN" history import fixtures/k8s/import/pods-snapshot.json --cluster demo --data "$DATA"
"$BIN" history import fixtures/k8s/import/pods-watch.json --cluster demo --data "$DATA"

cat >"$DATA/hawking.toml" <<TOML
[enricher]
grace_secs = 1.0

[[enricher.clusters]]
name = "demo"
# History comes from the imported recordings, not from a live API server.
watch = false
pod_cidrs = ["10.4.0.0/16", "fd00:10:4::/48"]
TOML

"$BIN" serve --config "$DATA/hawking.toml" --netflow 127.0.0.1:0 --metrics 127.0.0.1:0 --data "$DATA" --flush-interval 1 >"$OUT" 2>"$DATA/serve.log" &
PID=$!
for _ in $(seq 100); do grep -q "hawking serving" "$OUT" && break; sleep 0.1; done
NETFLOW=$(grep -o 'netflow=[^ ]*' "$OUT" | cut -d= -f2)
METRICS=$(grep -o 'metrics=[^ ]*' "$OUT" | cut -d= -f2)
echo "== hawking serve listening for NetFlow/IPFIX on $NETFLOW (metrics on http://$METRICS/metrics)"

echo "== softflowd exports fixtures/demo-cluster.pcap as IPFIX to $NETFLOW"
# softflowd 1.1.0 hangs at EOF when its control socket path is longer than 12 characters.
CTL=/tmp/hd$$
/usr/sbin/softflowd -r fixtures/demo-cluster.pcap -n "$NETFLOW" -v 10 -a -d -p "$DATA/softflowd.pid" -c "$CTL" >/dev/null 2>&1
rm -f "$CTL"
flows() { curl -s "http://$METRICS/metrics" | awk '/^hawking_flows_total/ {s+=$2} END {print s+0}'; }
LAST=-1
for _ in $(seq 50); do
  FLOWS=$(flows)
  [ "$FLOWS" -gt 0 ] && [ "$FLOWS" -eq "$LAST" ] && break
  LAST=$FLOWS
  sleep 0.2
done
echo "== $FLOWS flows decoded; stopping (SIGTERM attributes and commits every accepted flow)"
kill -TERM $PID
wait $PID || true
PID=
grep "hawking stopped" "$OUT"

q() { echo; echo "-- $1"; "$BIN" sql --data "$DATA" "$1"; }
q "SELECT src_attribution, dst_attribution, count(*) AS flows, sum(bytes) AS bytes FROM flows GROUP BY src_attribution, dst_attribution ORDER BY flows DESC"
q "SELECT src_namespace || '/' || src_workload AS client, coalesce(dst_namespace || '/' || dst_workload, dst_ip) AS server, dst_port, count(*) AS flows, sum(bytes) AS bytes FROM flows WHERE src_attribution = 'pod' AND dst_port < 32768 GROUP BY 1, 2, 3 ORDER BY bytes DESC"
echo
echo "== 10.4.2.14 was recycled: one address, three stretches of time, attributed at each flow's own time"
q "SELECT src_attribution, src_pod, src_workload_kind, src_workload, min(flow_start) AS first_flow, max(flow_end) AS last_flow, count(*) AS flows FROM flows WHERE src_ip = '10.4.2.14' GROUP BY 1, 2, 3, 4 ORDER BY first_flow"
echo
echo "== 10.4.1.20: a finished Job pod's object still showed the address while shop/cache-1 held it"
q "SELECT CASE WHEN src_ip = '10.4.1.20' THEN src_pod ELSE dst_pod END AS holder, CASE WHEN src_ip = '10.4.1.20' THEN src_workload_kind || ' ' || src_workload ELSE dst_workload_kind || ' ' || dst_workload END AS workload, min(flow_start) AS first_flow, max(flow_end) AS last_flow, count(*) AS flows FROM flows WHERE dst_ip = '10.4.1.20' OR src_ip = '10.4.1.20' GROUP BY 1, 2 ORDER BY first_flow"
for T in "2026-11-20 09:50:00" "2026-11-20 10:06:00" "2026-11-20 10:20:00"; do
  echo
  echo "-- hawking whois 10.4.2.14 --at '$T'"
  "$BIN" whois 10.4.2.14 --at "$T" --data "$DATA"
done
echo
echo "-- hawking whois 10.4.1.20 --at '2026-11-20 10:00:00' --around"
"$BIN" whois 10.4.1.20 --at "2026-11-20 10:00:00" --around --data "$DATA"
echo
echo "== store layout (hive-partitioned by hour):"
find "$DATA/flows" -name '*.parquet' | sed 's/^/  /'
