#!/usr/bin/env bash
# What a capability adds to a fresh-instance request: one kv.get on SQLite
# and on Redis (if redis-server is installed), one fetch to a local
# upstream, each against the same handler's no-capability route in the
# same run (host/examples/bench_capabilities.rs).
#
#   scripts/bench-capabilities.sh [iterations]      (default 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
release="$(release_dir --example bench_capabilities)"
"$release/examples/bench_capabilities" "${1:-2000}"
