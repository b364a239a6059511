#!/usr/bin/env bash
# Serve `pycage export --target wasi-http` output with the real
# `wasmtime serve` 46.0.3 and check it with curl: fixtures/hello and
# fixtures/api, through each export's own serve.sh.
#
#   scripts/check-wasmtime-serve.sh
#
# Uses WASMTIME=/path/to/wasmtime, else `wasmtime` on PATH if it is 46.0.3,
# else installs it with `cargo install wasmtime-cli --version 46.0.3 --locked`
# into target/wasmtime-cli (slow: about 30 minutes on 2 cores, so this is not
# part of CI). Prints one line per check and exits non-zero if one fails.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
target="$(target_dir)"

wasmtime="${WASMTIME:-}"
if [[ -z "$wasmtime" ]] && command -v wasmtime >/dev/null && wasmtime --version | grep -q ' 46\.0\.3'; then
    wasmtime="$(command -v wasmtime)"
fi
if [[ -z "$wasmtime" ]]; then
    wasmtime="$target/wasmtime-cli/bin/wasmtime"
    if [[ ! -x "$wasmtime" ]]; then
        echo "installing wasmtime-cli 46.0.3 into $target/wasmtime-cli (about 30 minutes)..." >&2
        cargo install wasmtime-cli --version 46.0.3 --locked --root "$target/wasmtime-cli" >&2
    fi
fi
wasmtime="$(realpath "$wasmtime")"
"$wasmtime" --version | grep -q ' 46\.0\.3' || { echo "$wasmtime is not wasmtime 46.0.3" >&2; exit 2; }
echo "using $("$wasmtime" --version) at $wasmtime"

pycage="$(release_dir --bin pycage)/pycage"
exports="$target/check-wasmtime-serve"
bin_dir="$(mktemp -d)"
ln -s "$wasmtime" "$bin_dir/wasmtime"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
server=""
trap 'kill -TERM $server 2>/dev/null || true; rm -rf "$bin_dir"' EXIT

failures=0
# check NAME EXPECTED-STATUS EXPECTED-BODY-SUBSTRING CURL-ARGS...
check() {
    local name="$1" status="$2" expected="$3"; shift 3
    local out code body
    out=$(curl -s -w '\n%{http_code}' "$@") || true
    code="${out##*$'\n'}"
    body="${out%$'\n'*}"
    local shown="${body//$'\r'/}"; shown="${shown//$'\n'/ }"; shown="${shown:0:160}"
    if [[ "$code" == "$status" && "$body" == *"$expected"* ]]; then
        echo "ok    $name: $code $shown"
    else
        echo "FAIL  $name: got $code $shown (wanted $status with \"$expected\")"
        failures=$((failures + 1))
    fi
}

# serve NAME HANDLER: export it and start its serve.sh with the real wasmtime.
serve() {
    local name="$1" handler="$2" dir="$exports/$1"
    "$pycage" -q export "$handler" --target wasi-http -o "$dir" >/dev/null
    PATH="$bin_dir:$PATH" ADDR="127.0.0.1:$port" "$dir/serve.sh" 2>"$exports/$name.log" &
    server=$!
    wait_for_http "$port" "$server" || { cat "$exports/$name.log" >&2; return 1; }
}

stop() { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; server=""; }

mkdir -p "$exports"
url="http://127.0.0.1:$port"
serve hello fixtures/hello/hello.py
check "hello: a route" 200 '"hello": "ada"' "$url/hello/ada"
check "hello: 404" 404 '{"error":"Not Found"}' "$url/nope"
check "hello: 405" 405 '{"error":"Method Not Allowed"}' -X POST "$url/hello/ada"
check "hello: HEAD" 200 '' -I "$url/hello/ada"
stop

serve api fixtures/api
check "api: JSON echo" 200 '"json": {"a": 1}' -H 'content-type: application/json' -d '{"a": 1}' "$url/echo"
check "api: Host from the authority" 200 '"host": "example.test"' -H 'host: example.test' -d '' "$url/echo"
check "api: a data file" 200 'greeting' "$url/data"
check "api: a lazy import" 200 '' "$url/lazy"
check "api: a fresh instance per request (1)" 200 '{"counter": 1}' "$url/counter"
check "api: a fresh instance per request (2)" 200 '{"counter": 1}' "$url/counter"
check "api: a handler error" 500 '{"error":"Internal Server Error"}' "$url/boom"
stop

if (( failures )); then
    echo "$failures check(s) failed"; exit 1
fi
echo "all checks passed with $("$wasmtime" --version)"
