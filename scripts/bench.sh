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
source scripts/lib.sh
release="$(release_dir --bin pycage --example bench)"
"$release/pycage" -q build fixtures/hello/hello.py >/dev/null
"$release/examples/bench" "$release/pycage" "$(dirname "$release")/bench/latest.json" "$iterations"
echo
scripts/bench-serve.sh "$seconds"
