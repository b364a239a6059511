#!/usr/bin/env bash
# HTTP throughput and latency of `pycage serve` with a fresh instance per
# request, for hello-world (GET /hello/bench, fixtures/hello) and a JSON echo
# (POST /echo, fixtures/api), at 1, 16 and 64 connections, on loopback only;
# side by side with the peer a user would pick instead, in the same run: the
# same handler exported (`pycage export --target wasi-http`) and served by
# host/examples/wasi_http_host (wasmtime-wasi-http 46.0.3, one Store per
# request, like `wasmtime serve -Scli`), and by the real `wasmtime serve`
# when one is installed (46.0.3: scripts/check-wasmtime-serve.sh installs it).
# Prints pycage ÷ peer for requests/s.
#
#   scripts/bench-serve.sh [seconds-per-run]      (needs wrk: apt-get install wrk)
#
# PYCAGE=/path/to/pycage measures that binary instead (e.g. an older build,
# for a before/after comparison in one sitting); WASMTIME=/path/to/wasmtime
# picks the wasmtime binary.
set -euo pipefail
cd "$(dirname "$0")/.."
duration="${1:-10}"
command -v wrk >/dev/null || { echo "wrk is not installed (apt-get install wrk)" >&2; exit 2; }

source scripts/lib.sh
release="$(release_dir --bin pycage --example wasi_http_host)"
pycage="$(realpath "${PYCAGE:-$release/pycage}")"
# Exports are made by this tree's pycage (an older one may have no `export`).
exporter="$release/pycage"
peer="$release/examples/wasi_http_host"
wasmtime="${WASMTIME:-$(command -v wasmtime || true)}"
[[ -n "$wasmtime" ]] && wasmtime="$(realpath "$wasmtime")"
if [[ -n "$wasmtime" ]] && ! "$wasmtime" --version | grep -q ' 46\.0\.3'; then
    echo "ignoring $wasmtime: not wasmtime 46.0.3" >&2
    wasmtime=""
fi
exports="$(target_dir)/bench/exports"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')

echo "pycage $("$pycage" --version | cut -d' ' -f2), $(nproc) cores, ${duration}s per run"
echo "peers: wasi_http_host (wasmtime-wasi-http 46.0.3)${wasmtime:+, $("$wasmtime" --version)}"

wait_for_port() { wait_for_http "$port" "$server"; }

# measure SERVER-NAME HANDLER-NAME PATH SCRIPT: one wrk run per connection
# count against the server on $port; fills rps_<server>_<c>.
measure() {
    local who="$1" name="$2" path="$3" script="$4"
    for c in 1 16 64; do
        threads=$(( c < 2 ? 1 : 2 ))
        out=$(wrk -t"$threads" -c"$c" -d"${duration}s" --latency ${script:+-s "$script"} "http://127.0.0.1:$port$path")
        rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
        rps="${rps:-0}"
        p50=$(awk '$1=="50%" {print $2}' <<<"$out")
        p99=$(awk '$1=="99%" {print $2}' <<<"$out")
        errors=$(grep -E 'Non-2xx|Socket errors' <<<"$out" || true)
        printf '%-10s %-16s %5s %12s %10s %10s %s\n' "$name" "$who" "$c" "$rps" "$p50" "$p99" "$errors"
        printf -v "rps_${who//-/_}_$c" '%s' "$rps"
    done
    rss_kb=$(awk '/VmRSS/ {print $2}' "/proc/$server/status")
    echo "$name: $who RSS after the runs: $((rss_kb / 1024)) MiB"
    kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true
}
# serve_export DIR WASMTIME: run the export's own serve.sh on $port, with
# WASMTIME as the `wasmtime` it calls.
bin_dir="$(mktemp -d)"
trap 'kill -TERM ${server:-0} 2>/dev/null || true; rm -rf "$bin_dir"' EXIT
serve_export() {
    local dir="$1" binary="$2"
    mkdir -p "$bin_dir/$(basename "$binary")-bin"
    ln -sf "$binary" "$bin_dir/$(basename "$binary")-bin/wasmtime"
    PATH="$bin_dir/$(basename "$binary")-bin:$PATH" ADDR="127.0.0.1:$port" "$dir/serve.sh" 2>/dev/null &
    server=$!
    wait_for_port
}

# ratio A B: A ÷ B to one decimal, or why there is none.
ratio() { python3 -c "print(f'{$1 / $2:.1f}×' if $2 else 'n/a (no requests)')"; }

# bench NAME HANDLER PATH [WRK-SCRIPT]
bench() {
    local name="$1" handler="$2" path="$3" script="${4:-}"
    printf '%-10s %-16s %5s %12s %10s %10s\n' handler server conns requests/s p50 p99
    "$pycage" -q build "$handler" >/dev/null
    "$pycage" serve "$handler" --listen "127.0.0.1:$port" 2>/dev/null &
    server=$!
    wait_for_port
    measure pycage "$name" "$path" "$script"

    local dir="$exports/$name"
    "$exporter" -q export "$handler" --target wasi-http -o "$dir" >/dev/null
    serve_export "$dir" "$peer"
    measure peer-host "$name" "$path" "$script"
    if [[ -n "$wasmtime" ]]; then
        serve_export "$dir" "$wasmtime"
        measure wasmtime-serve "$name" "$path" "$script"
    fi
    for c in 1 16 64; do
        ours="rps_pycage_$c"; theirs="rps_peer_host_$c"; real="rps_wasmtime_serve_$c"
        line="$name: pycage ÷ peer-host at $c connections: $(ratio "${!ours}" "${!theirs}")"
        if [[ -n "$wasmtime" ]]; then
            line+=", pycage ÷ wasmtime serve: $(ratio "${!ours}" "${!real}")"
        fi
        echo "$line"
    done
    echo
}

bench hello fixtures/hello/hello.py /hello/bench
bench json-echo fixtures/api /echo scripts/wrk-echo.lua
