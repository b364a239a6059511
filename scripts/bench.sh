#!/usr/bin/env bash
# The benchmark suite: what a fresh interpreter per request costs, against a
# reused instance and a native python3 process, plus memory and cold paths
# (host/examples/bench.rs), then HTTP throughput (scripts/bench-serve.sh).
# Prints tables and writes target/bench/latest.json.
#
#   scripts/bench.sh [iterations] [seconds-per-http-run]     (defaults 2000, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
iterations="${1:-2000}"
seconds="${2:-10}"
cargo build --release --quiet --bin pycage --example bench
source scripts/lib.sh
target_dir="$(target_dir)"
"$target_dir/release/pycage" -q build fixtures/hello/hello.py >/dev/null
"$target_dir/release/examples/bench" "$target_dir/release/pycage" "$target_dir/bench/latest.json" "$iterations"
echo
scripts/bench-serve.sh "$seconds"
