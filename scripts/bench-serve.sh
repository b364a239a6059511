#!/usr/bin/env bash
# HTTP throughput and latency of `pycage serve` (hello-world handler, fresh
# instance per request) at 1, 16 and 64 connections, on loopback only.
#
#   scripts/bench-serve.sh [seconds-per-run]      (needs wrk: apt-get install wrk)
#
# Builds pycage in release mode, starts it on a free port, runs wrk, stops it.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

cargo build --release --quiet
target_dir="$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')"
pycage="$target_dir/release/pycage"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

"$pycage" -q build fixtures/hello/hello.py >/dev/null
"$pycage" serve fixtures/hello/hello.py --listen "127.0.0.1:$port" 2>/dev/null &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null' EXIT
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$port/hello/warmup" >/dev/null && break; sleep 0.1; done

echo "pycage $("$pycage" --version | cut -d' ' -f2), $(nproc) cores, ${duration}s per run, GET /hello/bench"
printf '%-12s %12s %10s %10s %10s\n' connections requests/s p50 p90 p99
for c in 1 16 64; do
    threads=$(( c < 2 ? 1 : 2 ))
    out=$(wrk -t"$threads" -c"$c" -d"${duration}s" --latency "http://127.0.0.1:$port/hello/bench")
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p50=$(awk '$1=="50%" {print $2}' <<<"$out")
    p90=$(awk '$1=="90%" {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {print $2}' <<<"$out")
    errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)
    printf '%-12s %12s %10s %10s %10s %s\n' "$c" "$rps" "$p50" "$p90" "$p99" "$errors"
done
rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
echo "server RSS after the runs: $((rss_kb / 1024)) MiB"
