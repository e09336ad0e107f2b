#!/usr/bin/env bash
# Every benchmark, release build, printing the tables recorded in BENCHMARKS.md.
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
echo "## NetFlow ingest, Hawking beside nfcapd (tests/bench/netflow_ingest.py)"
python3 tests/bench/netflow_ingest.py "$@"
echo
echo "## Query: top-10 workloads on 100M flows beside DuckDB (tests/bench/query_top_workloads.sh)"
KEEP=${KEEP:-0} tests/bench/query_top_workloads.sh
