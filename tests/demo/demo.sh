#!/usr/bin/env bash
# The demo: the full pipeline on embedded defaults through real sockets.
#   softflowd (a real exporter) reads fixtures/traffic.pcap and exports IPFIX over UDP to
#   `hawking serve`, which decodes, attributes and commits the flows to a Parquet store;
#   then `hawking sql` answers questions about them.
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=target/release/hawking
DATA=target/demo-data
rm -rf "$DATA"
mkdir -p "$DATA"
OUT=$(mktemp)
"$BIN" serve --netflow 127.0.0.1:0 --metrics 127.0.0.1:0 --data "$DATA" --flush-interval 1 >"$OUT" 2>"$DATA/serve.log" &
PID=$!
trap 'kill $PID 2>/dev/null || true; rm -f "$OUT"' EXIT
for _ in $(seq 100); do grep -q "hawking serving" "$OUT" && break; sleep 0.1; done
NETFLOW=$(grep -o 'netflow=[^ ]*' "$OUT" | cut -d= -f2)
METRICS=$(grep -o 'metrics=[^ ]*' "$OUT" | cut -d= -f2)
echo "== hawking serve listening for NetFlow/IPFIX on $NETFLOW (metrics on http://$METRICS/metrics)"

echo "== softflowd exports fixtures/traffic.pcap as IPFIX to $NETFLOW"
# softflowd 1.1.0 hangs at EOF when its control socket path is longer than 12 characters.
CTL=/tmp/hd$$
/usr/sbin/softflowd -r fixtures/traffic.pcap -n "$NETFLOW" -v 10 -a -d -p "$DATA/softflowd.pid" -c "$CTL" >/dev/null 2>&1
rm -f "$CTL"
for _ in $(seq 100); do
  FLOWS=$(curl -s "http://$METRICS/metrics" | awk '/^hawking_flows_total/ {s+=$2} END {print s+0}')
  [ "$FLOWS" -ge 2610 ] && break
  sleep 0.1
done
echo "== $FLOWS flows decoded; stopping (SIGTERM commits every accepted flow)"
kill -TERM $PID
wait $PID || true
grep "hawking stopped" "$OUT"

q() { echo; echo "-- $1"; "$BIN" sql --data "$DATA" "$1"; }
q "SELECT count(*) AS flows, sum(bytes) AS bytes, sum(packets) AS packets, min(flow_start) AS first, max(flow_end) AS last FROM flows"
q "SELECT src_ip, dst_ip, dst_port, protocol, sum(bytes) AS bytes FROM flows GROUP BY src_ip, dst_ip, dst_port, protocol ORDER BY bytes DESC LIMIT 10"
q "SELECT date_bin(INTERVAL '5 minutes', flow_start) AS bucket, count(*) AS flows, sum(bytes) AS bytes FROM flows GROUP BY bucket ORDER BY bucket"
echo
echo "== store layout (hive-partitioned by hour):"
find "$DATA/flows" -name '*.parquet' | sed 's/^/  /'
