#!/usr/bin/env bash
# Every benchmark, release build, printing the tables recorded in BENCHMARKS.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
echo "## Ingest path after decoding (cargo bench --bench store_encode)"
cargo bench --bench store_encode 2>/dev/null
echo
echo "## NetFlow ingest, Hawking beside nfcapd (tests/bench/netflow_ingest.py)"
python3 tests/bench/netflow_ingest.py "$@"
