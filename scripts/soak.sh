#!/usr/bin/env bash
# Soak test: REQUESTS requests (default 100000) at CONCURRENCY (default 64)
# against `pycage serve --config fixtures/soak.toml` on loopback, a mix of
# normal and hostile handlers. Prints wrong answers, server RSS and open fds
# after warm-up and at the end; exits non-zero on any wrong answer or leak.
#
#   scripts/soak.sh [REQUESTS] [CONCURRENCY]
set -euo pipefail
cd "$(dirname "$0")/.."
requests="${1:-100000}"
concurrency="${2:-64}"

source scripts/lib.sh
release="$(release_dir --bin pycage --example soak)"
log="$(mktemp)"
"$release/pycage" serve --config fixtures/soak.toml 2>"$log" &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do
    grep -q "listening on" "$log" && break
    kill -0 "$server" 2>/dev/null || { echo "the server did not start:" >&2; cat "$log" >&2; exit 1; }
    sleep 0.5
done
line="$(grep -m1 "listening on" "$log")" || { echo "the server did not start in time:" >&2; cat "$log" >&2; exit 1; }
addr="$(sed -E 's/.*listening on http:\/\/([^ ]+).*/\1/' <<<"$line")"
metrics="$(sed -E 's/.*metrics on http:\/\/([^/]+)\/metrics.*/\1/' <<<"$line")"
echo "server pid $server at $addr, metrics at $metrics"
"$release/examples/soak" "$addr" "$server" "$metrics" "$requests" "$concurrency"
