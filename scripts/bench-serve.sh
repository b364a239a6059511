#!/usr/bin/env bash
# HTTP throughput and latency of `pycage serve` with a fresh instance per
# request, for hello-world (GET /hello/bench, fixtures/hello) and a JSON echo
# (POST /echo, fixtures/api), at 1, 16 and 64 connections, on loopback only.
#
#   scripts/bench-serve.sh [seconds-per-run]      (needs wrk: apt-get install wrk)
#
# Builds pycage in release mode, starts it on a free port, runs wrk, stops it.
# PYCAGE=/path/to/pycage measures that binary instead (e.g. an older build,
# for a before/after comparison in one sitting).
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

if [[ -n "${PYCAGE:-}" ]]; then
    pycage="$PYCAGE"
else
    source scripts/lib.sh
    pycage="$(release_dir --bin pycage)/pycage"
fi
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "pycage $("$pycage" --version | cut -d' ' -f2), $(nproc) cores, ${duration}s per run"
printf '%-12s %-12s %12s %10s %10s %10s\n' handler connections requests/s p50 p90 p99

# bench NAME HANDLER PATH [WRK-SCRIPT]
bench() {
    local name="$1" handler="$2" path="$3" script="${4:-}"
    "$pycage" -q build "$handler" >/dev/null
    "$pycage" serve "$handler" --listen "127.0.0.1:$port" 2>/dev/null &
    server=$!
    for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
    for c in 1 16 64; do
        threads=$(( c < 2 ? 1 : 2 ))
        out=$(wrk -t"$threads" -c"$c" -d"${duration}s" --latency ${script:+-s "$script"} "http://127.0.0.1:$port$path")
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        p50=$(awk '$1=="50%" {print $2}' <<<"$out")
        p90=$(awk '$1=="90%" {print $2}' <<<"$out")
        p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)
        printf '%-12s %-12s %12s %10s %10s %10s %s\n' "$name" "$c" "$rps" "$p50" "$p90" "$p99" "$errors"
    done
    rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    echo "$name: server RSS after the runs: $((rss_kb / 1024)) MiB"
    kill -TERM "$server"; wait "$server" 2>/dev/null || true
}
trap 'kill -TERM ${server:-0} 2>/dev/null || true' EXIT

bench hello fixtures/hello/hello.py /hello/bench
bench json-echo fixtures/api /echo scripts/wrk-echo.lua
