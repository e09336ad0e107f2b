#!/usr/bin/env bash
# Every benchmark, release build, printing the tables recorded in BENCHMARKS.md.
#
#   tests/bench/run-all.sh [netflow_ingest.py args]
#
# COMPARE=/path/to/other/hawking also runs the ingest benchmark's before/after table (issue 16:
# `--rates 500000,1000000 --repeat 3 --compare "$COMPARE"`), e.g. a release build of cbd5be4.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "## Ingest path after decoding (cargo bench --bench store_encode)"
cargo bench --bench store_encode 2>/dev/null
echo
echo "## Address history: lookup, memory, batch enrichment (cargo bench -p hawking-enricher --bench history_index)"
cargo bench -p hawking-enricher --bench history_index 2>/dev/null
echo
echo "## Attribution accuracy on a churning cluster (cargo bench -p hawking-enricher --bench attribution_accuracy)"
for args in "" "--max-lag-ms 15000 --grace-ms 20000" "--pods 12000" "--max-lag-ms 15000 --grace-ms 5000"; do
  echo
  echo "### attribution_accuracy ${args:-(defaults)}"
  # shellcheck disable=SC2086
  cargo bench -p hawking-enricher --bench attribution_accuracy -- $args 2>/dev/null
done
echo
# With no arguments: v9 and IPFIX, storing and attributing, 250k to 4M flows/s, 4 s each
# (the issue 2 table's rates, 4M flows/s included).
echo "## NetFlow ingest, Hawking beside nfcapd (python3 tests/bench/netflow_ingest.py $*)"
python3 tests/bench/netflow_ingest.py "$@"
if [ -n "${COMPARE:-}" ]; then
  echo
  echo "## NetFlow ingest, this build beside $COMPARE (python3 tests/bench/netflow_ingest.py --rates 500000,1000000 --seconds 4 --repeat 3 --compare $COMPARE)"
  python3 tests/bench/netflow_ingest.py --rates 500000,1000000 --seconds 4 --repeat 3 --compare "$COMPARE"
fi
echo
echo "## Query: top-10 workloads on 100M flows beside DuckDB, gen_flows' one file per hour (tests/bench/query_top_workloads.sh)"
KEEP=1 tests/bench/query_top_workloads.sh
echo
echo "## Query: the same files on local disk and in a bucket of Garage on loopback (python3 tests/bench/query_s3.py)"
python3 tests/bench/query_s3.py "${BENCH_DIR:-/work/benchdata/query}"
if [ "${KEEP:-0}" = 0 ]; then
  rm -rf "${BENCH_DIR:-/work/benchdata/query}"
fi
echo
echo "## Query: the same on a day of flows hawking serve stored itself (python3 tests/bench/query_served_store.py)"
python3 tests/bench/query_served_store.py
echo
echo "## Capture metering: Hawking beside softflowd on the same raw capture (python3 tests/bench/capture_meter.py)"
python3 tests/bench/capture_meter.py
echo
echo "## In-cluster exports: Hubble JSON lines and IPFIX over TCP beside UDP (python3 tests/bench/flow_exports.py)"
python3 tests/bench/flow_exports.py
echo
echo "## Kafka sink: attributed ingest with [kafka] on beside off (python3 tests/bench/kafka_sink.py)"
python3 tests/bench/kafka_sink.py
echo
echo "## Enricher from Kafka: a collector's backlog attributed and stored (python3 tests/bench/kafka_enricher.py)"
python3 tests/bench/kafka_enricher.py
