#!/usr/bin/env bash
# Query benchmark: top-10 workloads by bytes over 6 of 24 hours and over the whole day, on a
# generated day of attributed flows, through `hawking sql`, the pg-wire endpoint (when built)
# and DuckDB on the same Parquet files. Prints a markdown table and DataFusion's pruning.
#
#   tests/bench/query_top_workloads.sh            # 100M flows under /work/benchdata/query
#   ROWS=10000000 BENCH_DIR=/tmp/q tests/bench/query_top_workloads.sh
#
# The store is generated once per ROWS and kept for reruns; KEEP=0 deletes it afterwards.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROWS=${ROWS:-100000000}
BENCH_DIR=${BENCH_DIR:-/work/benchdata/query}
RUNS=${RUNS:-5}
KEEP=${KEEP:-1}

cargo build --release --bin hawking
cargo build --release -p hawking-query --example gen_flows

if [ ! -f "$BENCH_DIR/.generated-$ROWS" ]; then
    rm -rf "$BENCH_DIR"
    mkdir -p "$BENCH_DIR"
    echo "generating $ROWS flows in $BENCH_DIR ..." >&2
    target/release/examples/gen_flows "$BENCH_DIR" "$ROWS" 2> "$BENCH_DIR/generate.log"
    tail -1 "$BENCH_DIR/generate.log" >&2
    touch "$BENCH_DIR/.generated-$ROWS"
fi

python3 tests/bench/query_top_workloads.py "$BENCH_DIR" --runs "$RUNS" --hawking target/release/hawking

if [ "$KEEP" = 0 ]; then
    rm -rf "$BENCH_DIR"
fi
